//! profile.pb.gz: the outstanding and allocated memory as a pprof profile, which `go tool pprof` and
//! Grafana Pyroscope read.
//!
//! Sample types come in one set of four per traced source, named after it: `resident_` (page faults),
//! `mapped_` (mmap), `brk_`, `malloc_`, each followed by `inuse_space`, `inuse_objects`, `alloc_space`,
//! `alloc_objects`. The same memory is counted by several sources (pages are mapped and resident, the
//! allocator's blocks lie in both), so a sample carries values of its own source only and the sets are
//! never added: `go tool pprof -sample_index=mapped_inuse_space` picks one. The resident set is the
//! default when page faults were traced (else the primary source's). Objects are allocations for mapped memory and the allocator,
//! pages for resident memory.
//!
//! One sample per stack and birth turns (label `turn`: one id, ids joined by `,` for memory allocated
//! while turns overlapped); in-use and allocated figures share it. Allocated figures are not kept per
//! turn: they are on the stack's sample without a turn label, with what is in use from outside turns.
//! Each sample type therefore sums to the report's totals for its source. Label `source` names it too.
//!
//! Locations carry the frames' addresses (a return address minus one, inside its call, as the tracer
//! looked it up; 0 for JIT-compiled JavaScript, named from the jitdump) in Mappings that give each file's
//! path, build id and address range, so pprof can re-symbolize a stripped file's frames from an unstripped
//! build (a mapping whose frames the tracer could not all name says it has no functions, so pprof
//! symbolizes it when given the file). Functions keep the tracer's names, and the file and line of
//! JavaScript frames located in their sources. As in the other reports, a stack's leaf is the code that
//! called the C runtime's allocator or syscall wrapper, not the wrapper.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    path::Path,
};

use anyhow::Result;
use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::stacks::{Frame, primary_source_of_totals};
use crate::{
    collector::Trace,
    ledger::{Source, StackKey, StackStats},
    procfs::{
        maps::Mapping as MemoryMapping,
        untrusted::{self, Origin},
    },
    symbolizer::{FrameName, jit_frames::JIT_FRAME, lookup_address},
};

/// The messages of pprof's profile.proto that we write (field numbers from that file).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// The four figures of each source, in the order of its set.
const KINDS: [(&str, &str); 4] =
    [("inuse_space", "bytes"), ("inuse_objects", "count"), ("alloc_space", "bytes"), ("alloc_objects", "count")];

/// The order of the sets: resident memory first, the view that holds what the process really uses.
const SOURCE_ORDER: [Source; 4] = [Source::PageFault, Source::Malloc, Source::Mmap, Source::Brk];

/// The prefix of a source's sample types.
pub fn sample_type_prefix(source: Source) -> &'static str {
    match source {
        Source::PageFault => "resident",
        Source::Mmap => "mapped",
        Source::Brk => "brk",
        Source::Malloc => "malloc",
    }
}

/// Reading more than the start of a file to find its build id is not worth it: linkers put the note
/// among the first headers.
const BUILD_ID_SEARCH_BYTES: u64 = 64 << 10;

/// Builds a profile: strings, functions, locations and mappings interned.
struct Builder<'t> {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<Frame, u64>,
    /// By address and name: after an exec the same address names other code.
    locations: HashMap<(u64, Frame), u64>,
    /// By the start of the process's mapping.
    mappings: HashMap<u64, u64>,
    /// By path: a file is mapped in several segments.
    build_ids: HashMap<String, Option<String>>,
    memory: &'t crate::procfs::maps::MemoryMap,
}

impl<'t> Builder<'t> {
    fn new(memory: &'t crate::procfs::maps::MemoryMap) -> Self {
        let mut builder = Self {
            profile: Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            mappings: HashMap::new(),
            build_ids: HashMap::new(),
            memory,
        };
        builder.string(""); // index 0 is the empty string, as pprof requires
        builder
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_string());
        self.strings.insert(text.to_string(), index);
        index
    }

    /// The profile's mapping for the process's file-backed mapping, made on first use.
    fn mapping(&mut self, mapping: &MemoryMapping) -> u64 {
        if let Some(&id) = self.mappings.get(&mapping.start) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let filename = self.string(mapping.file_path());
        let path = mapping.file_path();
        let build_id = self.build_ids.entry(path.to_string()).or_insert_with(|| build_id(path)).clone();
        let build_id = build_id.map_or(0, |id| self.string(&id));
        self.profile.mapping.push(Mapping {
            id,
            memory_start: mapping.start,
            memory_limit: mapping.end,
            file_offset: mapping.offset,
            filename,
            build_id,
            // Cleared when one of its frames is unnamed, so that pprof may symbolize them.
            has_functions: true,
            ..Mapping::default()
        });
        self.mappings.insert(mapping.start, id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        if let Some(&id) = self.functions.get(frame) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.string(frame);
        // A JavaScript frame located in its sources (`appendToHistory (server.ts:28)`): the file and line
        // go where pprof's tools look for them.
        let (filename, line) = match super::frames::file_and_line(frame) {
            Some((file, line)) => (self.string(file), i64::from(line)),
            None => (0, 0),
        };
        self.profile.function.push(Function { id, name, system_name: name, filename, start_line: line });
        self.functions.insert(frame.clone(), id);
        id
    }

    /// The location of the frame at `index` (0 innermost) whose instruction pointer is `ip` (0 unknown).
    fn location(&mut self, frame: &FrameName, ip: u64, index: usize) -> u64 {
        let address = if ip == 0 || ip & JIT_FRAME != 0 { 0 } else { lookup_address(ip, index) };
        if let Some(&id) = self.locations.get(&(address, frame.name.clone())) {
            return id;
        }
        let memory = self.memory;
        let mapping = memory.find(address).filter(|m| address != 0 && m.is_file());
        let mapping_id = match mapping {
            Some(mapping) => {
                let id = self.mapping(mapping);
                if is_unnamed(&frame.name, mapping) {
                    self.profile.mapping[id as usize - 1].has_functions = false;
                }
                id
            }
            None => 0,
        };
        let function_id = self.function(&frame.name);
        let line = self.profile.function[function_id as usize - 1].start_line;
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location { id, mapping_id, address, line: vec![Line { function_id, line }] });
        self.locations.insert((address, frame.name.clone()), id);
        id
    }
}

/// The symbolizer names a frame it could not name `file+0xoffset`.
fn is_unnamed(name: &str, mapping: &MemoryMapping) -> bool {
    let file = Path::new(mapping.file_path()).file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.strip_prefix(file.as_ref()).is_some_and(|rest| rest.starts_with("+0x"))
}

/// The GNU build id of an ELF file, in hex, when its notes come early in the file.
fn build_id(path: &str) -> Option<String> {
    use object::elf::{FileHeader64, PT_NOTE};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::{Endianness, elf::NT_GNU_BUILD_ID};

    let file = untrusted::open(Path::new(path), Origin::Target).ok()?;
    let mut head = Vec::new();
    file.take(BUILD_ID_SEARCH_BYTES).read_to_end(&mut head).ok()?;
    let data = head.as_slice();
    let header = FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    for segment in header.program_headers(endian, data).ok()? {
        if segment.p_type(endian) != PT_NOTE {
            continue;
        }
        let Ok(Some(mut notes)) = segment.notes(endian, data) else { continue };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"GNU" && note.n_type(endian) == NT_GNU_BUILD_ID {
                return Some(note.desc().iter().map(|byte| format!("{byte:02x}")).collect());
            }
        }
    }
    None
}

/// The profile, before compression.
pub fn profile(trace: &Trace<'_>) -> Profile {
    let mut builder = Builder::new(trace.mappings);
    // pprof takes the first mapping for the main binary (its "File:"): the target's code comes first.
    let exe = trace.target.exe.to_string_lossy();
    if let Some(main) = trace.mappings.iter().find(|m| m.is_file() && m.executable && m.file_path() == exe) {
        builder.mapping(main);
    }
    let totals = trace.ledger.by_source();
    let mut sources: Vec<Source> = SOURCE_ORDER.into_iter().filter(|s| totals.contains_key(s)).collect();
    if sources.is_empty() {
        sources.push(Source::PageFault);
    }
    for source in &sources {
        for (kind, unit) in KINDS {
            let name = format!("{}_{kind}", sample_type_prefix(*source));
            let value_type = ValueType { r#type: builder.string(&name), unit: builder.string(unit) };
            builder.profile.sample_type.push(value_type);
        }
    }
    let default = if totals.contains_key(&Source::PageFault) {
        Source::PageFault
    } else {
        primary_source_of_totals(&totals).unwrap_or(sources[0])
    };
    builder.profile.default_sample_type = builder.string(&format!("{}_inuse_space", sample_type_prefix(default)));
    // Nothing is sampled: every value is a count of bytes or objects as is.
    let period_type = ValueType { r#type: builder.string("space"), unit: builder.string("bytes") };
    builder.profile.period_type = Some(period_type);
    builder.profile.period = 1;
    for comment in [
        "dispatch-leaktrace: one set of sample types per source (resident_, malloc_, mapped_, brk_); \
         the sources count the same memory, never add them",
        "allocated figures are not kept per turn: they are on each stack's sample without a turn label",
    ] {
        let index = builder.string(comment);
        builder.profile.comment.push(index);
    }
    builder.profile.time_nanos = nanos_since_epoch(trace.started_at);
    builder.profile.duration_nanos =
        trace.ended_at.duration_since(trace.started_at).unwrap_or_default().as_nanos() as i64;

    // In-use bytes and objects by birth turns, where the ledger keeps them (mapped and resident memory).
    let mut by_turns: BTreeMap<StackKey, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for (key, born, bytes, objects) in trace.ledger.live_by_birth() {
        let ids: Vec<&str> = trace
            .ledger
            .turns
            .turns_of(born)
            .iter()
            .filter_map(|ix| trace.turns.iter().find(|t| t.index == *ix).map(|t| t.id.as_str()))
            .collect();
        if ids.is_empty() {
            continue;
        }
        let entry = by_turns.entry(key).or_default().entry(ids.join(",")).or_default();
        entry.0 += bytes;
        entry.1 += objects;
    }

    let mut stats: Vec<(&StackKey, &StackStats)> = trace.ledger.stats().collect();
    stats.sort_by_key(|(key, _)| **key);
    let width = sources.len() * KINDS.len();
    for (key, stats) in stats {
        let Some(set) = sources.iter().position(|s| *s == key.source) else { continue };
        let location_id = stack_locations(&mut builder, trace, key.stack);
        let source_label = Label { key: builder.string("source"), str: builder.string(key.source.name()) };
        let sample = |builder: &mut Builder, figures: [u64; 4], turn: Option<&str>| {
            if figures == [0; 4] {
                return;
            }
            let mut value = vec![0; width];
            for (slot, figure) in value[set * KINDS.len()..][..KINDS.len()].iter_mut().zip(figures) {
                *slot = figure as i64;
            }
            let mut label = vec![source_label.clone()];
            if let Some(turn) = turn {
                label.push(Label { key: builder.string("turn"), str: builder.string(turn) });
            }
            builder.profile.sample.push(Sample { location_id: location_id.clone(), value, label });
        };
        let (mut turned_bytes, mut turned_objects) = (0, 0);
        for (turns, (bytes, objects)) in by_turns.get(key).into_iter().flatten() {
            sample(&mut builder, [*bytes, *objects, 0, 0], Some(turns));
            turned_bytes += bytes;
            turned_objects += objects;
        }
        let outside_turns = [
            stats.outstanding_bytes.saturating_sub(turned_bytes),
            stats.outstanding_allocs.saturating_sub(turned_objects),
            stats.allocated_bytes,
            stats.allocated_allocs,
        ];
        sample(&mut builder, outside_turns, None);
    }
    builder.profile
}

/// A stack's locations, leaf first as pprof lists them, without the C runtime's frames at the leaf (the
/// allocator or syscall wrapper: the reports' leaf is the code that called them).
fn stack_locations(builder: &mut Builder, trace: &Trace<'_>, stack: crate::ledger::StackIx) -> Vec<u64> {
    let names = trace.frames.get(stack as usize).map(Vec::as_slice).unwrap_or(&[]);
    if names.is_empty() {
        let unknown = FrameName { name: "[stack unavailable]".into(), in_runtime: false, javascript: false };
        return vec![builder.location(&unknown, 0, 0)];
    }
    let ips = trace.stack_ips.ips(stack);
    let runtime = names.iter().take_while(|f| f.in_runtime).count();
    let skip = if runtime == names.len() { 0 } else { runtime };
    names
        .iter()
        .enumerate()
        .skip(skip)
        .map(|(index, frame)| {
            // Names and addresses line up one to one; a stack without addresses (tests) gets 0.
            let ip = if ips.len() == names.len() { ips[index] } else { 0 };
            builder.location(frame, ip, index)
        })
        .collect()
}

pub fn render(trace: &Trace<'_>) -> Result<Vec<u8>> {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&profile(trace).encode_to_vec())?;
    Ok(gzip.finish()?)
}

fn nanos_since_epoch(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as i64
}

#[cfg(test)]
mod tests {
    use std::{io::Read, path::PathBuf, time::SystemTime};

    use flate2::read::GzDecoder;

    use super::*;
    use crate::{
        collector::{Trace, stacks::StackTable, timeline::Timeline, turns::TurnRecord},
        ledger::{Backing, Ledger, Source, StackKey},
        procfs::{ProcessInfo, maps::MemoryMap},
    };

    fn frame(name: &str) -> FrameName {
        FrameName { name: name.into(), in_runtime: false, javascript: false }
    }

    #[test]
    fn the_profile_decodes_and_each_sample_type_sums_to_the_totals() {
        let page = crate::procfs::page_size();
        let mut ledger = Ledger::new(page);
        let mapped = StackKey { source: Source::Mmap, stack: 1 };
        let touched = StackKey { source: Source::PageFault, stack: 2 };
        ledger.map(1, 0x10000, 2 * page, Backing::Anonymous, mapped);
        let turn = ledger.turns.begin();
        ledger.map(1, 0x40000, 3 * page, Backing::Anonymous, mapped);
        ledger.fault(1, 0x40000, page, touched, 1);
        ledger.turns.end(turn);
        ledger.map(1, 0x80000, page, Backing::Anonymous, mapped);
        ledger.unmap(1, 0x80000, page);

        let target = ProcessInfo { pid: 1, exe: PathBuf::from("/nonexistent/app"), cmdline: vec![] };
        let frames =
            vec![vec![], vec![frame("map_it"), frame("main")], vec![frame("touch_it (server.ts:28)"), frame("main")]];
        let timeline = Timeline::default();
        // Stack 1 in a library called from the executable; stack 2 a JIT frame (named from the jitdump, no
        // address) over the executable.
        let mut stack_ips = StackTable::default();
        assert_eq!(stack_ips.intern(vec![0x7f0000000010, 0x401100]), 1);
        assert_eq!(stack_ips.intern(vec![JIT_FRAME | 5, 0x401100]), 2);
        let mappings = MemoryMap::parse(
            "00400000-00402000 r-xp 00001000 08:01 1234 /nonexistent/app\n\
             7f0000000000-7f0000001000 r-xp 00000000 08:01 99 /nonexistent/lib.so\n",
        );
        let turns =
            [TurnRecord { id: "t1".into(), start: SystemTime::now(), end: Some(SystemTime::now()), index: turn }];
        let trace = Trace {
            target: &target,
            started_at: SystemTime::now(),
            ended_at: SystemTime::now(),
            ending: None,
            ledger: &ledger,
            frames: &frames,
            names: Default::default(),
            threads: &Default::default(),
            kernel_counters: vec![],
            skipped_program_runs: 0,
            caller_rules_full: 0,
            rss_bytes: 0,
            events: 0,
            timeline: &timeline,
            regions: Default::default(),
            turns: &turns,
            markers: &[],
            unmatched_turn_ends: 0,
            negative_figures: 0,
            memory_budget: 0,
            peak_memory: 0,
            over_budget: false,
            blocks_sampled_since: None,
            overhead: None,
            live_stacks: 0,
            execs: &[],
            interval: std::time::Duration::from_secs(10),
            jit_tiers: &Default::default(),
            javascript: Default::default(),
            stack_ips: &stack_ips,
            mappings: &mappings,
        };
        let mut bytes = Vec::new();
        GzDecoder::new(&render(&trace).unwrap()[..]).read_to_end(&mut bytes).unwrap();
        let profile = Profile::decode(&bytes[..]).unwrap();

        let string = |i: i64| profile.string_table[i as usize].as_str();
        let types: Vec<&str> = profile.sample_type.iter().map(|t| string(t.r#type)).collect();
        let mut expected = Vec::new();
        for source in ["resident", "mapped"] {
            for kind in ["inuse_space", "inuse_objects", "alloc_space", "alloc_objects"] {
                expected.push(format!("{source}_{kind}"));
            }
        }
        assert_eq!(types, expected);
        assert_eq!(string(profile.default_sample_type), "resident_inuse_space");
        let period_type = profile.period_type.as_ref().unwrap();
        assert_eq!((string(period_type.r#type), string(period_type.unit), profile.period), ("space", "bytes", 1));
        let total = |index: usize| -> i64 { profile.sample.iter().map(|s| s.value[index]).sum() };
        let figures = |set: usize| (total(4 * set), total(4 * set + 1), total(4 * set + 2), total(4 * set + 3));
        // Each set sums to its source's totals, and a sample carries one source's values only.
        let p = page as i64;
        assert_eq!(figures(0), (p, 1, p, 1));
        assert_eq!(figures(1), (5 * p, 2, 6 * p, 3));
        for sample in &profile.sample {
            let sets = (0..2).filter(|set| sample.value[4 * set..][..4].iter().any(|v| *v != 0)).count();
            assert_eq!(sets, 1);
        }
        // What turn t1 allocated carries its label; allocated figures sit with the in-use figures from
        // outside turns, on the sample without a label.
        let labelled = |turn: Option<&str>, index: usize| -> i64 {
            profile
                .sample
                .iter()
                .filter(|s| {
                    let label = s.label.iter().find(|l| string(l.key) == "turn").map(|l| string(l.str));
                    label == turn
                })
                .map(|s| s.value[index])
                .sum()
        };
        assert_eq!((labelled(Some("t1"), 0), labelled(Some("t1"), 4)), (p, 3 * p));
        assert_eq!((labelled(None, 4), labelled(None, 6)), (2 * p, 6 * p));
        assert_eq!(labelled(Some("t1"), 6), 0);
        let unlabelled_mapped =
            profile.sample.iter().filter(|s| s.value[4] > 0 && !s.label.iter().any(|l| string(l.key) == "turn"));
        assert!(unlabelled_mapped.clone().all(|s| s.value[6] > 0), "in-use and allocated share samples");
        assert_eq!(unlabelled_mapped.count(), 1);
        let first = &profile.sample[0];
        let leaf_location = profile.location.iter().find(|l| l.id == first.location_id[0]).unwrap();
        let leaf = profile.function.iter().find(|f| f.id == leaf_location.line[0].function_id).unwrap();
        assert!(["map_it", "touch_it (server.ts:28)"].contains(&string(leaf.name)));
        // A located JavaScript frame carries its file and line; a native one none.
        let located = profile.function.iter().find(|f| string(f.name) == "touch_it (server.ts:28)").unwrap();
        assert_eq!((string(located.filename), located.start_line), ("server.ts", 28));
        let location = profile.location.iter().find(|l| l.line[0].function_id == located.id).unwrap();
        assert_eq!(location.line[0].line, 28);
        let native = profile.function.iter().find(|f| string(f.name) == "main").unwrap();
        assert_eq!((native.filename, native.start_line), (0, 0));

        // Addresses: the leaf's instruction pointer, a caller's return address minus one, 0 for JIT code;
        // in the file's mapping with its range and offset (no build id: the file is not there). The target's
        // executable is the first mapping, though a library's frame came first.
        let address_of = |name: &str| -> Vec<(u64, u64)> {
            let function = profile.function.iter().find(|f| string(f.name) == name).unwrap();
            let at = profile.location.iter().filter(|l| l.line[0].function_id == function.id);
            at.map(|l| (l.address, l.mapping_id)).collect()
        };
        assert_eq!(address_of("map_it"), [(0x7f0000000010, 2)]);
        assert_eq!(address_of("main"), [(0x4010ff, 1)]);
        assert_eq!(address_of("touch_it (server.ts:28)"), [(0, 0)]);
        let [mapping, library] = profile.mapping.as_slice() else { panic!("two mappings: {:?}", profile.mapping) };
        assert_eq!(
            (mapping.id, mapping.memory_start, mapping.memory_limit, mapping.file_offset),
            (1, 0x400000, 0x402000, 0x1000)
        );
        assert_eq!((string(mapping.filename), mapping.build_id, mapping.has_functions), ("/nonexistent/app", 0, true));
        assert_eq!((library.id, string(library.filename)), (2, "/nonexistent/lib.so"));
    }

    #[test]
    fn a_frame_named_by_its_offset_is_unnamed() {
        let mapping = MemoryMap::parse("00400000-00402000 r-xp 00001000 08:01 1234 /usr/bin/bun (deleted)\n");
        let mapping = mapping.find(0x400000).unwrap();
        assert!(is_unnamed("bun+0x2c6d3a1", mapping));
        assert!(!is_unnamed("bun_main", mapping));
        assert!(!is_unnamed("bunny+0x10", mapping));
    }
}
