//! profile.pb.gz: the outstanding and allocated memory as a pprof profile (sample types inuse_space,
//! inuse_objects, alloc_space, alloc_objects; labels `source` and `turn`), which `go tool pprof` and
//! Grafana Pyroscope read.
//!
//! Objects are allocations for mapped memory and the allocator, pages for resident memory.
//! In-use figures are split by the turns the memory was allocated in (label `turn`: one id, ids joined by
//! `,` for memory allocated while turns overlapped, none outside turns); allocated figures, which are not
//! kept per turn, are on samples of their own. Each sample type therefore sums to the report's totals.

use std::{collections::HashMap, io::Write};

use anyhow::Result;
use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::stacks::{ReportStack, merge_by_names};
use crate::{collector::Trace, ledger::StackKey};

/// The messages of pprof's profile.proto that we write (field numbers from that file).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
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
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
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

use proto::{Function, Label, Line, Location, Profile, Sample, ValueType};

/// Builds a profile: strings, functions and locations interned (one location per frame name).
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    locations: HashMap<String, u64>,
}

impl Builder {
    fn new() -> Self {
        let mut builder = Self { profile: Profile::default(), strings: HashMap::new(), locations: HashMap::new() };
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

    fn location(&mut self, frame: &str) -> u64 {
        if let Some(&id) = self.locations.get(frame) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let name = self.string(frame);
        // A JavaScript frame located in its sources (`appendToHistory (server.ts:28)`): the file and line
        // go where pprof's tools look for them.
        let (filename, line) = match super::frames::file_and_line(frame) {
            Some((file, line)) => (self.string(file), i64::from(line)),
            None => (0, 0),
        };
        self.profile.function.push(Function { id, name, system_name: name, filename, start_line: line });
        self.profile.location.push(Location { id, line: vec![Line { function_id: id, line }] });
        self.locations.insert(frame.to_string(), id);
        id
    }

    fn sample(&mut self, stack: &ReportStack, values: [i64; 4], turn: Option<&str>) {
        // pprof lists a sample's locations leaf first.
        let location_id = stack.frames.iter().rev().map(|frame| self.location(frame)).collect();
        let mut label = vec![Label { key: self.string("source"), str: self.string(stack.source.name()) }];
        if let Some(turn) = turn {
            label.push(Label { key: self.string("turn"), str: self.string(turn) });
        }
        self.profile.sample.push(Sample { location_id, value: values.to_vec(), label });
    }
}

/// The profile, before compression.
pub fn profile(trace: &Trace<'_>, stacks: &[ReportStack]) -> Profile {
    let mut builder = Builder::new();
    for (kind, unit) in
        [("inuse_space", "bytes"), ("inuse_objects", "count"), ("alloc_space", "bytes"), ("alloc_objects", "count")]
    {
        let value_type = ValueType { r#type: builder.string(kind), unit: builder.string(unit) };
        builder.profile.sample_type.push(value_type);
    }
    builder.profile.default_sample_type = builder.string("inuse_space");
    builder.profile.time_nanos = nanos_since_epoch(trace.started_at);
    builder.profile.duration_nanos =
        trace.ended_at.duration_since(trace.started_at).unwrap_or_default().as_nanos() as i64;

    // In-use bytes by birth turns, where the ledger keeps them (mapped and resident memory).
    let mut by_turns: HashMap<String, Vec<(StackKey, u64)>> = HashMap::new();
    let mut objects_by_turns: HashMap<String, Vec<(StackKey, u64)>> = HashMap::new();
    for (key, born, bytes, objects) in trace.ledger.live_by_birth() {
        let ids: Vec<&str> = trace
            .ledger
            .turns
            .turns_of(born)
            .iter()
            .filter_map(|ix| trace.turns.iter().find(|t| t.index == *ix).map(|t| t.id.as_str()))
            .collect();
        let turns = ids.join(",");
        by_turns.entry(turns.clone()).or_default().push((key, bytes));
        objects_by_turns.entry(turns).or_default().push((key, objects));
    }
    let mut split: HashMap<_, Vec<(String, u64, u64)>> = HashMap::new();
    for (turns, values) in by_turns {
        let objects = merge_by_names(trace, objects_by_turns.remove(&turns).unwrap_or_default());
        for (name, (_, bytes)) in merge_by_names(trace, values) {
            let count = objects.get(&name).map_or(0, |(_, count)| *count);
            split.entry(name).or_default().push((turns.clone(), bytes, count));
        }
    }
    for stack in stacks {
        match split.get(&(stack.source, stack.frames.clone())) {
            Some(parts) => {
                for (turns, bytes, objects) in parts.iter().filter(|(_, bytes, _)| *bytes > 0) {
                    let turn = (!turns.is_empty()).then_some(turns.as_str());
                    builder.sample(stack, [*bytes as i64, *objects as i64, 0, 0], turn);
                }
            }
            None if stack.stats.outstanding_bytes > 0 => builder.sample(
                stack,
                [stack.stats.outstanding_bytes as i64, stack.stats.outstanding_allocs as i64, 0, 0],
                None,
            ),
            None => {}
        }
        if stack.stats.allocated_bytes > 0 {
            builder.sample(
                stack,
                [0, 0, stack.stats.allocated_bytes as i64, stack.stats.allocated_allocs as i64],
                None,
            );
        }
    }
    builder.profile
}

pub fn render(trace: &Trace<'_>, stacks: &[ReportStack]) -> Result<Vec<u8>> {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&profile(trace, stacks).encode_to_vec())?;
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
        collector::{Trace, timeline::Timeline, turns::TurnRecord},
        ledger::{Backing, Ledger, Source, StackKey},
        procfs::ProcessInfo,
        reports::stacks::report_stacks,
        symbolizer::FrameName,
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
        ledger.fault(1, 0x40000, page, touched);
        ledger.turns.end(turn);
        ledger.map(1, 0x80000, page, Backing::Anonymous, mapped);
        ledger.unmap(1, 0x80000, page);

        let target = ProcessInfo { pid: 1, exe: PathBuf::from("/bin/x"), cmdline: vec![] };
        let frames =
            vec![vec![], vec![frame("map_it"), frame("main")], vec![frame("touch_it (server.ts:28)"), frame("main")]];
        let timeline = Timeline::default();
        let turns =
            [TurnRecord { id: "t1".into(), start: SystemTime::now(), end: Some(SystemTime::now()), index: turn }];
        let trace = Trace {
            target: &target,
            started_at: SystemTime::now(),
            ended_at: SystemTime::now(),
            ending: None,
            ledger: &ledger,
            frames: &frames,
            kernel_counters: vec![],
            skipped_program_runs: 0,
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
            live_stacks: 0,
            execs: &[],
            interval: std::time::Duration::from_secs(10),
            jit_tiers: &Default::default(),
            javascript: Default::default(),
        };
        let stacks = report_stacks(&trace);
        let mut bytes = Vec::new();
        GzDecoder::new(&render(&trace, &stacks).unwrap()[..]).read_to_end(&mut bytes).unwrap();
        let profile = Profile::decode(&bytes[..]).unwrap();

        let string = |i: i64| profile.string_table[i as usize].as_str();
        let types: Vec<&str> = profile.sample_type.iter().map(|t| string(t.r#type)).collect();
        assert_eq!(types, ["inuse_space", "inuse_objects", "alloc_space", "alloc_objects"]);
        let total = |index: usize, source: &str| -> i64 {
            profile
                .sample
                .iter()
                .filter(|s| s.label.iter().any(|l| string(l.key) == "source" && string(l.str) == source))
                .map(|s| s.value[index])
                .sum()
        };
        let p = page as i64;
        assert_eq!((total(0, "mmap"), total(1, "mmap"), total(2, "mmap"), total(3, "mmap")), (5 * p, 2, 6 * p, 3));
        assert_eq!((total(0, "page-fault"), total(1, "page-fault")), (p, 1));
        // What turn t1 allocated carries its label; the leaf comes first in a sample's locations.
        let in_turn: i64 = profile
            .sample
            .iter()
            .filter(|s| s.label.iter().any(|l| string(l.key) == "turn" && string(l.str) == "t1"))
            .map(|s| s.value[0])
            .sum();
        assert_eq!(in_turn, 4 * p);
        let first = &profile.sample[0];
        let leaf = profile.function.iter().find(|f| f.id == first.location_id[0]).unwrap();
        assert!(["map_it", "touch_it (server.ts:28)"].contains(&string(leaf.name)));
        // A located JavaScript frame carries its file and line; a native one none.
        let located = profile.function.iter().find(|f| string(f.name) == "touch_it (server.ts:28)").unwrap();
        assert_eq!((string(located.filename), located.start_line), ("server.ts", 28));
        let location = profile.location.iter().find(|l| l.id == located.id).unwrap();
        assert_eq!(location.line[0].line, 28);
        let native = profile.function.iter().find(|f| string(f.name) == "main").unwrap();
        assert_eq!((native.filename, native.start_line), (0, 0));
    }
}
