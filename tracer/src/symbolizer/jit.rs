// Nothing calls this API yet: the collector wires it in next.
#![allow(dead_code)]
//! Names for JIT-compiled frames: JavaScriptCore's perf jitdump files (and perf map files, which other
//! runtimes write), read incrementally while the target keeps appending, looked up by address and time.
//!
//! # What Bun 1.3.13 writes (checked on the npm build, x86-64)
//! - Switched on by `BUN_JSC_useJITDump` (or `JSC_useJITDump`) = `1`, `true` or `yes` (any case); `0` and
//!   `false` leave it off. When both prefixes are set, the `BUN_JSC_` one wins, for the directory too.
//! - One file per process (JSC's PerfLog is a singleton), created at the first JIT code, named after the
//!   thread that created it *then* the pid: `/tmp/jit-<tid>-<pid>-XXXXXX` (random suffix, mode 0600) by
//!   default, `DIR/jit-<tid>-<pid>.dump` (mode 0644) with `BUN_JSC_jitDumpDirectory=DIR`. A relative DIR
//!   is relative to the process's working directory; a DIR that does not exist makes Bun abort at start
//!   (SIGTRAP). Newer WebKit names it `jit-<pid>.dump`. Discovery accepts all of these.
//! - The file is mapped once, one page, as perf's marker:
//!   `7fe6c1c33000-7fe6c1c34000 r-xp 00000000 fe:00 10010673   /tmp/jit-23744-23741-pzUivg`.
//! - Header: magic 0x4A695444 in host order ("DTiJ" on disk), version 1, total size 40, elf_mach 0x3e,
//!   the pid, and flags 0: no JITDUMP_FLAGS_ARCH_TIMESTAMP, so timestamps are not TSC ticks.
//! - Clock: CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns, so no conversion is needed.
//!   JSC's ProfilerSupport::generateTimestamp is WTF's MonotonicTime::now(), which on Linux is
//!   clock_gettime(CLOCK_MONOTONIC) (through a double: a few nanoseconds of rounding at most). Measured:
//!   CLOCK_MONOTONIC read just before and after a 1.6 s run bracketed the header's and all 181 records'
//!   timestamps (1735608552134 <= 1735624272328 .. 1737131462472 <= 1737221624513); CLOCK_REALTIME was
//!   1.8e18. (CLOCK_BOOTTIME equalled CLOCK_MONOTONIC on that machine, so the measurement alone cannot
//!   tell those two apart; the source can.)
//! - A record's timestamp is taken when the code is linked, before it can run, but the record is written
//!   later by a queue: the first record can be older than the header's timestamp, and records from
//!   different compiler threads may be slightly out of order. Nothing here relies on file order.
//! - Only JIT_CODE_LOAD records (JSC can also write DEBUG_INFO ones when asked for IR or source dumps);
//!   no MOVE and no CLOSE, so an address is reused silently: in a 1.6 s run, the 2 KiB of `runTurn`'s DFG
//!   code were freed and reused by an FTL OSR exit stub. Hence lookups by (address, time).
//! - Names are `JSC-<profile>: <what>`. Seen: `JSC-Baseline:`, `JSC-DFG:`, `JSC-FTL:` followed by
//!   `buildMessage#EOhoyY` (inferred name, '#', 6-character code block hash), `#ASrMsw` (an anonymous
//!   function), `/tmp/script.js#BMmy9a` (a script's top-level code); `JSC-Thunk: DefaultCall`,
//!   `JSC-LLIntThunk: arityFixup`, `JSC-ExtraCTIThunk: handleException`, `JSC-DFGThunk: unspecified`,
//!   `JSC-FTLThunk: unspecified`, `JSC-InlineCache: GetById Load handler`, `JSC-DFGOSREntry: unspecified`,
//!   `JSC-FTLOSRExit: unspecified`, `JSC-YarrJIT: /a(b+)c/`. JSC's list of profiles also has DFGOSRExit,
//!   JumpIsland, WasmThunk, WasmBBQ, WasmOMG, CSSJIT and Uncategorized.
//!
//! # Lookup by time
//! A lookup returns the newest load (largest timestamp) whose code covers the address and whose timestamp
//! is at or before the sample's time. When every covering load is newer than the sample, the answer is
//! None, not the oldest covering load: the code was linked before it could run, on the same clock the
//! kernel stamps samples with, so code that ran at that time has a load at or before it, and a later load
//! at the address names whatever replaced that code: a confident wrong name is worse than an address.
//! Without close records nothing says when code died: where a later load covers only part of an earlier
//! one, the rest still names the earlier one. Sources without comparable times (perf maps, jitdumps with
//! architecture timestamps) count as loaded at time 0: they always qualify, the newest line or record wins
//! among them, and any timed load covering the address wins over them.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::OsStr,
    fs::{self, File},
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Result, bail};

use crate::procfs::{
    maps::MemoryMap,
    untrusted::{self, Cap, Origin},
};

const JITDUMP_MAGIC: u32 = 0x4A69_5444;
const JITDUMP_VERSION: u32 = 1;
/// magic, version, total_size, elf_mach, pad1, pid (u32 each), timestamp, flags (u64 each).
const FILE_HEADER_SIZE: u32 = 40;
/// id, total_size (u32 each), timestamp (u64).
const RECORD_HEADER_SIZE: u64 = 16;
/// After the record header: pid, tid (u32 each), vma, code_addr, code_size, code_index (u64 each).
const CODE_LOAD_FIELDS_SIZE: u64 = 40;
const JIT_CODE_LOAD: u32 = 0;
/// Header flag: timestamps come from an architecture clock (the TSC on x86), not CLOCK_MONOTONIC.
pub const JITDUMP_FLAGS_ARCH_TIMESTAMP: u64 = 1;

/// The most of a source read in one refresh, so that a large file is read over several ticks rather than
/// in one long pause of the collector.
const READ_PER_REFRESH: u64 = 16 << 20;
/// The longest name kept from a jitdump record, and the longest perf map line: the rest is passed over.
const MAX_NAME: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    fn u32(self, bytes: &[u8]) -> u32 {
        let array = bytes[..4].try_into().expect("four bytes");
        match self {
            ByteOrder::Little => u32::from_le_bytes(array),
            ByteOrder::Big => u32::from_be_bytes(array),
        }
    }

    fn u64(self, bytes: &[u8]) -> u64 {
        let array = bytes[..8].try_into().expect("eight bytes");
        match self {
            ByteOrder::Little => u64::from_le_bytes(array),
            ByteOrder::Big => u64::from_be_bytes(array),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitdumpHeader {
    /// Written big endian ("JiTD" on disk); every field is then read in that order.
    pub big_endian: bool,
    pub version: u32,
    /// Where the first record starts.
    pub header_size: u32,
    pub elf_mach: u32,
    pub pid: u32,
    pub timestamp: u64,
    pub flags: u64,
}

impl JitdumpHeader {
    /// The header at the start of `bytes`, or None while fewer bytes than a header have been written.
    pub fn parse(bytes: &[u8]) -> Result<Option<Self>> {
        if bytes.len() < 4 {
            return Ok(None);
        }
        let magic: [u8; 4] = bytes[..4].try_into().expect("four bytes");
        let order = if u32::from_le_bytes(magic) == JITDUMP_MAGIC {
            ByteOrder::Little
        } else if u32::from_be_bytes(magic) == JITDUMP_MAGIC {
            ByteOrder::Big
        } else {
            bail!("not a perf jitdump file (starts with {magic:02x?}, not \"DTiJ\" or \"JiTD\")");
        };
        if bytes.len() < 8 {
            return Ok(None);
        }
        let version = order.u32(&bytes[4..]);
        if version != JITDUMP_VERSION {
            bail!("perf jitdump version {version} is not supported (only version {JITDUMP_VERSION})");
        }
        if bytes.len() < FILE_HEADER_SIZE as usize {
            return Ok(None);
        }
        let header_size = order.u32(&bytes[8..]);
        if header_size < FILE_HEADER_SIZE {
            bail!("perf jitdump header of {header_size} bytes is shorter than the {FILE_HEADER_SIZE} of version 1");
        }
        Ok(Some(Self {
            big_endian: order == ByteOrder::Big,
            version,
            header_size,
            elf_mach: order.u32(&bytes[12..]),
            pid: order.u32(&bytes[20..]),
            timestamp: order.u64(&bytes[24..]),
            flags: order.u64(&bytes[32..]),
        }))
    }

    /// Timestamps are architecture clock ticks (JITDUMP_FLAGS_ARCH_TIMESTAMP), not comparable with
    /// kernel timestamps without a calibration this reader does not attempt. JSC never sets it.
    pub fn uses_arch_timestamps(&self) -> bool {
        self.flags & JITDUMP_FLAGS_ARCH_TIMESTAMP != 0
    }

    fn byte_order(&self) -> ByteOrder {
        if self.big_endian { ByteOrder::Big } else { ByteOrder::Little }
    }
}

/// A JIT_CODE_LOAD record without its code bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeLoad {
    /// Record timestamp, as written (CLOCK_MONOTONIC nanoseconds for JSC).
    pub timestamp: u64,
    pub pid: u32,
    pub tid: u32,
    pub vma: u64,
    /// Where the code runs (perf uses this one; JSC writes the same value as `vma`).
    pub code_addr: u64,
    pub code_size: u64,
    pub code_index: u64,
    pub name: String,
}

/// What one incremental read found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadProgress {
    /// Code loads (jitdump) or entries (perf map) passed on.
    pub loads: usize,
    /// Other jitdump records (move, debug info, close, unwinding info, unknown kinds) or unparsable
    /// perf map lines.
    pub skipped: usize,
}

/// Reads a jitdump file a piece at a time while its writer appends to it: each call reads the records
/// complete at that moment and remembers where the first unread one starts. Code bytes are skipped by
/// seeking (a buffer's worth at most passes through memory), never kept.
#[derive(Clone, Debug, Default)]
pub struct JitdumpReader {
    header: Option<JitdumpHeader>,
    next_offset: u64,
}

impl JitdumpReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// None until the whole header has been written.
    pub fn header(&self) -> Option<&JitdumpHeader> {
        self.header.as_ref()
    }

    /// File offset of the first record not read yet (0 before the header has been read).
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Reads the header if it has not been read yet; None while it is not fully written.
    pub fn read_header<R: Read + Seek>(&mut self, input: &mut R) -> Result<Option<&JitdumpHeader>> {
        if self.header.is_none() {
            let len = input.seek(SeekFrom::End(0))?;
            let mut bytes = [0u8; FILE_HEADER_SIZE as usize];
            input.seek(SeekFrom::Start(0))?;
            let read = read_up_to(input, &mut bytes)?;
            match JitdumpHeader::parse(&bytes[..read])? {
                Some(header) if len >= u64::from(header.header_size) => {
                    self.next_offset = u64::from(header.header_size);
                    self.header = Some(header);
                }
                _ => return Ok(None),
            }
        }
        Ok(self.header.as_ref())
    }

    /// Passes every code load complete in `input` after the last read to `on_load`, and skips every other
    /// record. A record cut short by the end of the input (the writer is mid-way) ends the read without
    /// error; the next call starts with it. A bad magic, an unsupported version or a malformed record is
    /// an error; records before a malformed one have been passed on.
    pub fn read_new<R: Read + Seek>(
        &mut self,
        input: &mut R,
        mut on_load: impl FnMut(CodeLoad),
    ) -> Result<ReadProgress> {
        let mut progress = ReadProgress::default();
        let Some(header) = self.read_header(input)? else { return Ok(progress) };
        let order = header.byte_order();
        // Past the cap the file is not read (a record crossing it counts as still being written); records
        // starting past this call's share are left for the next.
        let len = input.seek(SeekFrom::End(0))?.min(Cap::JIT.0);
        let share_end = self.next_offset.saturating_add(READ_PER_REFRESH);
        let mut offset = self.next_offset;
        input.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::with_capacity(64 * 1024, input);
        while len.saturating_sub(offset) >= RECORD_HEADER_SIZE && offset < share_end {
            let mut head = [0u8; RECORD_HEADER_SIZE as usize];
            reader.read_exact(&mut head)?;
            let (id, total_size, timestamp) =
                (order.u32(&head), u64::from(order.u32(&head[4..])), order.u64(&head[8..]));
            if total_size < RECORD_HEADER_SIZE {
                bail!("jitdump record at offset {offset}: size {total_size} is smaller than a record header");
            }
            if total_size > len - offset {
                break; // still being written
            }
            if id == JIT_CODE_LOAD {
                if total_size < RECORD_HEADER_SIZE + CODE_LOAD_FIELDS_SIZE + 1 {
                    bail!("jitdump code load at offset {offset}: size {total_size} leaves no room for a name");
                }
                let mut fields = [0u8; CODE_LOAD_FIELDS_SIZE as usize];
                reader.read_exact(&mut fields)?;
                let mut name = Vec::new();
                let room = total_size - RECORD_HEADER_SIZE - CODE_LOAD_FIELDS_SIZE;
                (&mut reader).take(room.min(MAX_NAME as u64 + 1)).read_until(0, &mut name)?;
                let used = RECORD_HEADER_SIZE + CODE_LOAD_FIELDS_SIZE + name.len() as u64;
                if name.last() == Some(&0) {
                    name.pop();
                } else if name.len() > MAX_NAME {
                    // A name longer than any real one: keep its start.
                    name.truncate(MAX_NAME);
                } else {
                    bail!("jitdump code load at offset {offset}: the name is not NUL-terminated within the record");
                }
                reader.seek_relative((total_size - used) as i64)?;
                on_load(CodeLoad {
                    timestamp,
                    pid: order.u32(&fields),
                    tid: order.u32(&fields[4..]),
                    vma: order.u64(&fields[8..]),
                    code_addr: order.u64(&fields[16..]),
                    code_size: order.u64(&fields[24..]),
                    code_index: order.u64(&fields[32..]),
                    name: String::from_utf8_lossy(&name).into_owned(),
                });
                progress.loads += 1;
            } else {
                reader.seek_relative((total_size - RECORD_HEADER_SIZE) as i64)?;
                progress.skipped += 1;
            }
            offset += total_size;
            self.next_offset = offset;
        }
        Ok(progress)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// One line of a perf map file (`/tmp/perf-PID.map`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerfMapEntry {
    pub start: u64,
    pub size: u64,
    pub name: String,
}

/// `START SIZE name`: start and size in hex, with or without `0x`; the name is the rest of the line and may
/// hold spaces. None for anything else (blank lines, bad numbers, no name).
pub fn parse_perf_map_line(line: &str) -> Option<PerfMapEntry> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (start, rest) = line.trim_start().split_once(char::is_whitespace)?;
    let (size, name) = rest.trim_start().split_once(char::is_whitespace)?;
    let name = name.trim_start();
    if name.is_empty() {
        return None;
    }
    Some(PerfMapEntry { start: parse_hex(start)?, size: parse_hex(size)?, name: name.to_string() })
}

fn parse_hex(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

/// Reads a perf map a piece at a time, like [`JitdumpReader`]: a last line without its newline is being
/// written and is left for the next call.
#[derive(Clone, Debug, Default)]
pub struct PerfMapReader {
    next_offset: u64,
    /// Within a line longer than [`MAX_NAME`], passed over up to its newline.
    in_long_line: bool,
}

impl PerfMapReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// File offset of the first line not read yet.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn read_new<R: Read + Seek>(
        &mut self,
        input: &mut R,
        mut on_entry: impl FnMut(PerfMapEntry),
    ) -> io::Result<ReadProgress> {
        let mut progress = ReadProgress::default();
        let end = Cap::JIT.0.min(self.next_offset.saturating_add(READ_PER_REFRESH));
        input.seek(SeekFrom::Start(self.next_offset))?;
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        while self.next_offset < end {
            line.clear();
            // A line is read whole up to MAX_NAME bytes; a longer one is passed over in pieces that size.
            let read = (&mut reader).take(MAX_NAME as u64 + 1).read_until(b'\n', &mut line)?;
            let complete = line.last() == Some(&b'\n');
            if read == 0 || (!complete && read <= MAX_NAME && !self.in_long_line) {
                // Nothing more, or a line still being written: read it whole next time.
                return Ok(progress);
            }
            self.next_offset += read as u64;
            if self.in_long_line || !complete {
                // A piece of a line too long to be a perf map entry.
                self.in_long_line = !complete;
                if complete {
                    progress.skipped += 1;
                }
                continue;
            }
            match parse_perf_map_line(&String::from_utf8_lossy(&line)) {
                Some(entry) => {
                    on_entry(entry);
                    progress.loads += 1;
                }
                None => progress.skipped += 1,
            }
        }
        Ok(progress)
    }
}

/// What kind of JIT code a frame is in, from JSC's profile name (`JSC-<profile>: ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JitTier {
    /// JavaScript, by tier: LLInt (JSC writes no LLInt loads today, but the name is mapped if it appears),
    /// Baseline, DFG, FTL.
    LLInt,
    Baseline,
    Dfg,
    Ftl,
    WasmBbq,
    WasmOmg,
    /// Shared stubs: Thunk, LLIntThunk, DFGThunk, FTLThunk, WasmThunk, ExtraCTIThunk, JumpIsland.
    Thunk,
    /// Inline cache stubs and handlers.
    InlineCache,
    /// Code entering optimized code from a lower tier (DFGOSREntry).
    OsrEntry,
    /// Code leaving optimized code for a lower tier (DFGOSRExit, FTLOSRExit).
    OsrExit,
    /// A compiled regular expression (YarrJIT).
    RegExp,
    /// Anything else: CSSJIT, Uncategorized, unknown profiles, names not from JSC (perf maps).
    Other,
}

impl JitTier {
    /// Code compiled from a JavaScript function (any tier), not a stub.
    pub fn is_javascript(self) -> bool {
        matches!(self, JitTier::LLInt | JitTier::Baseline | JitTier::Dfg | JitTier::Ftl)
    }

    /// A JavaScript tier's name, as JSC writes it.
    pub fn label(self) -> Option<&'static str> {
        match self {
            JitTier::LLInt => Some("LLInt"),
            JitTier::Baseline => Some("Baseline"),
            JitTier::Dfg => Some("DFG"),
            JitTier::Ftl => Some("FTL"),
            _ => None,
        }
    }
}

/// The name to show for a raw jitdump name, and its tier:
/// `JSC-DFG: buildMessage#BrhwuA` -> `buildMessage [JS:DFG]`, `JSC-Baseline: #ASrMsw` ->
/// `(anonymous) [JS:Baseline]`, `JSC-Thunk: DefaultCall` -> `[JSC thunk] DefaultCall`,
/// `JSC-LLIntThunk: arityFixup` -> `[JSC thunk] arityFixup (LLInt)`, `JSC-FTLThunk: unspecified` ->
/// `[JSC thunk] (FTL)`, `JSC-InlineCache: GetById Load handler` -> `[JSC IC] GetById Load handler`,
/// `JSC-FTLOSRExit: unspecified` -> `[JSC OSR exit] (FTL)`, `JSC-YarrJIT: /a(b+)c/` -> `[JSC regexp] /a(b+)c/`.
/// A name that is not JSC's shape is shown as it is.
pub fn display_name(raw: &str) -> (String, JitTier) {
    let Some((profile, what)) = raw.strip_prefix("JSC-").and_then(|rest| rest.split_once(": ")) else {
        return (raw.to_string(), JitTier::Other);
    };
    let function = |label: &str, tier| {
        let name = strip_code_block_hash(what);
        let name = if name.is_empty() || name == "<anonymous>" { "(anonymous)" } else { name };
        (format!("{name} [{label}]"), tier)
    };
    match profile {
        "LLInt" => function("JS:LLInt", JitTier::LLInt),
        "Baseline" => function("JS:Baseline", JitTier::Baseline),
        "DFG" => function("JS:DFG", JitTier::Dfg),
        "FTL" => function("JS:FTL", JitTier::Ftl),
        "WasmBBQ" => function("Wasm:BBQ", JitTier::WasmBbq),
        "WasmOMG" => function("Wasm:OMG", JitTier::WasmOmg),
        "InlineCache" => (stub("[JSC IC]", what, ""), JitTier::InlineCache),
        "YarrJIT" => (stub("[JSC regexp]", what, ""), JitTier::RegExp),
        "JumpIsland" => (stub("[JSC thunk]", what, "jump island"), JitTier::Thunk),
        "CSSJIT" => (stub("[JSC CSS]", what, ""), JitTier::Other),
        _ => {
            if let Some(sub) = profile.strip_suffix("Thunk") {
                (stub("[JSC thunk]", what, sub), JitTier::Thunk)
            } else if let Some(sub) = profile.strip_suffix("OSREntry") {
                (stub("[JSC OSR entry]", what, sub), JitTier::OsrEntry)
            } else if let Some(sub) = profile.strip_suffix("OSRExit") {
                (stub("[JSC OSR exit]", what, sub), JitTier::OsrExit)
            } else {
                (stub(&format!("[JSC {profile}]"), what, ""), JitTier::Other)
            }
        }
    }
}

/// `[kind] name (sub)`, leaving out JSC's placeholder name `unspecified` and an empty sub-kind.
fn stub(kind: &str, what: &str, sub: &str) -> String {
    let mut text = kind.to_string();
    if !what.is_empty() && what != "unspecified" {
        text.push(' ');
        text.push_str(what);
    }
    if !sub.is_empty() {
        text.push_str(&format!(" ({sub})"));
    }
    text
}

/// JSC appends `#` and the code block's hash (6 letters and digits, or `<no-hash>`) to a function's name.
fn strip_code_block_hash(what: &str) -> &str {
    match what.rsplit_once('#') {
        Some((name, hash))
            if hash == "<no-hash>"
                || (!hash.is_empty() && hash.len() <= 16 && hash.bytes().all(|b| b.is_ascii_alphanumeric())) =>
        {
            name
        }
        _ => what,
    }
}

/// A named JIT frame: the code load that covered an address at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitFrame {
    /// For reports: `buildMessage [JS:DFG]`, `[JSC thunk] DefaultCall`, ...
    pub name: Arc<str>,
    /// As the jitdump or perf map wrote it: `JSC-DFG: buildMessage#BrhwuA`.
    pub raw: Arc<str>,
    pub tier: JitTier,
    /// The code's first address and size.
    pub start: u64,
    pub size: u64,
    /// When the code was loaded (CLOCK_MONOTONIC, as events' times): older events ran what was there before.
    pub loaded_ns: u64,
}

struct InternedName {
    raw: Arc<str>,
    display: Arc<str>,
    tier: JitTier,
}

#[derive(Clone, Copy)]
struct Load {
    start: u64,
    size: u64,
    time: u64,
    name: u32,
}

/// The loads of one power-of-two size class, `[2^k, 2^(k+1))` bytes, by start address.
#[derive(Default)]
struct SizeClass {
    largest: u64,
    starts: BTreeSet<(u64, u32)>,
}

/// Code ranges and names from any number of jitdump files and perf maps, looked up by (address, time).
/// Only ranges, times and one copy of each distinct name are kept.
///
/// Loads are filed by size class and start address. A load of class k that covers an address starts less
/// than 2^(k+1) bytes before it, so a lookup visits each class in use (a few dozen at most) and, in it,
/// the loads starting in that window: the covering generations of the address plus a neighbour or two,
/// since code live at one time does not overlap.
pub struct JitIndex {
    loads: Vec<Load>,
    classes: Vec<SizeClass>,
    /// Bit k set: class k holds loads.
    classes_in_use: u64,
    names: Vec<InternedName>,
    name_ids: HashMap<Arc<str>, u32>,
}

impl Default for JitIndex {
    fn default() -> Self {
        Self {
            loads: Vec::new(),
            classes: (0..64).map(|_| SizeClass::default()).collect(),
            classes_in_use: 0,
            names: Vec::new(),
            name_ids: HashMap::new(),
        }
    }
}

impl JitIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files code `[start, start + size)` named `raw_name`, loaded at `time_ns` (0 when unknown). Empty
    /// code covers no address and is not kept.
    pub fn insert(&mut self, start: u64, size: u64, time_ns: u64, raw_name: &str) {
        if size == 0 {
            return;
        }
        let name = self.intern(raw_name);
        let id = u32::try_from(self.loads.len()).expect("fewer than 2^32 code loads");
        self.loads.push(Load { start, size, time: time_ns, name });
        let class_index = 63 - size.leading_zeros() as usize;
        let class = &mut self.classes[class_index];
        class.largest = class.largest.max(size);
        class.starts.insert((start, id));
        self.classes_in_use |= 1 << class_index;
    }

    /// The newest load covering `addr` at or before `time_ns` (pass `u64::MAX` for the newest of all),
    /// or None; see the module documentation for why there is no fallback to a later load.
    pub fn lookup(&self, addr: u64, time_ns: u64) -> Option<JitFrame> {
        let mut best: Option<(u64, u32)> = None;
        let mut classes = self.classes_in_use;
        while classes != 0 {
            let class = &self.classes[classes.trailing_zeros() as usize];
            classes &= classes - 1;
            let lowest = addr.saturating_sub(class.largest - 1);
            for &(start, id) in class.starts.range((lowest, 0)..=(addr, u32::MAX)) {
                let load = &self.loads[id as usize];
                // Later file order breaks a tie in time.
                if addr - start < load.size && load.time <= time_ns && best.is_none_or(|b| (load.time, id) > b) {
                    best = Some((load.time, id));
                }
            }
        }
        best.map(|(_, id)| self.frame(id))
    }

    /// Code loads kept (empty ones are not).
    pub fn len(&self) -> usize {
        self.loads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }

    /// Distinct raw names kept.
    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    fn frame(&self, id: u32) -> JitFrame {
        let load = &self.loads[id as usize];
        let name = &self.names[load.name as usize];
        JitFrame {
            name: name.display.clone(),
            raw: name.raw.clone(),
            tier: name.tier,
            start: load.start,
            size: load.size,
            loaded_ns: load.time,
        }
    }

    fn intern(&mut self, raw: &str) -> u32 {
        if let Some(&id) = self.name_ids.get(raw) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 names");
        let (display, tier) = display_name(raw);
        let raw: Arc<str> = raw.into();
        self.names.push(InternedName { raw: raw.clone(), display: display.into(), tier });
        self.name_ids.insert(raw, id);
        id
    }
}

/// What to tell the user when the target runs without a jitdump.
pub const JITDUMP_ENABLE_HINT: &str = "set Environment=BUN_JSC_useJITDump=1 in the systemd unit";

/// Bun's prefix first: when both are set, Bun 1.3.13 follows `BUN_JSC_`.
const USE_JIT_DUMP_VARIABLES: [&str; 2] = ["BUN_JSC_useJITDump", "JSC_useJITDump"];
const JIT_DUMP_DIRECTORY_VARIABLES: [&str; 2] = ["BUN_JSC_jitDumpDirectory", "JSC_jitDumpDirectory"];

/// The target's jitdump settings from its environment. Only the four variables above are looked at;
/// every other one is passed over without being copied, logged or kept (the environment holds secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JitEnv {
    /// `useJITDump` parsed as JSC parses a boolean option; None when unset or unparsable.
    pub use_jit_dump: Option<bool>,
    /// `jitDumpDirectory` when set and not empty; relative to the target's working directory.
    pub jit_dump_directory: Option<PathBuf>,
}

impl JitEnv {
    /// From `/proc/PID/environ`: the environment the target started with, which is what JSC read.
    pub fn read(pid: u32) -> io::Result<Self> {
        let path = PathBuf::from(format!("/proc/{pid}/environ"));
        Ok(Self::from_environ(&untrusted::read(&path, Origin::Proc, Cap::PROC_TEXT)?))
    }

    /// From raw `/proc/PID/environ` bytes: `KEY=value` entries separated by NUL.
    pub fn from_environ(raw: &[u8]) -> Self {
        Self::from_vars(raw.split(|b| *b == 0).filter_map(|entry| {
            let equals = entry.iter().position(|b| *b == b'=')?;
            Some((OsStr::from_bytes(&entry[..equals]), OsStr::from_bytes(&entry[equals + 1..])))
        }))
    }

    /// From `(key, value)` pairs, such as `std::env::vars_os()`.
    pub fn from_vars<K: AsRef<OsStr>, V: AsRef<OsStr>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut use_jit_dump = [None, None];
        let mut directory = [None, None];
        for (key, value) in vars {
            let key = key.as_ref().as_bytes();
            if let Some(i) = USE_JIT_DUMP_VARIABLES.iter().position(|name| key == name.as_bytes()) {
                use_jit_dump[i] = parse_jsc_bool(value.as_ref().as_bytes());
            } else if let Some(i) = JIT_DUMP_DIRECTORY_VARIABLES.iter().position(|name| key == name.as_bytes()) {
                let value = value.as_ref();
                directory[i] = (!value.is_empty()).then(|| PathBuf::from(value));
            }
        }
        let [bun_use, jsc_use] = use_jit_dump;
        let [bun_directory, jsc_directory] = directory;
        Self { use_jit_dump: bun_use.or(jsc_use), jit_dump_directory: bun_directory.or(jsc_directory) }
    }

    /// The target writes a jitdump. When false, warn: "started without jitdump; " + [`JITDUMP_ENABLE_HINT`].
    pub fn jitdump_enabled(&self) -> bool {
        self.use_jit_dump == Some(true)
    }
}

/// JSC's boolean options: `true`, `yes`, `1` and `false`, `no`, `0`, in any case (checked on Bun 1.3.13
/// for 1, true, TRUE, yes, 0 and false).
fn parse_jsc_bool(value: &[u8]) -> Option<bool> {
    match value.to_ascii_lowercase().as_slice() {
        b"1" | b"true" | b"yes" => Some(true),
        b"0" | b"false" | b"no" => Some(false),
        _ => None,
    }
}

/// Where a jitdump file was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitdumpOrigin {
    /// JSC's one-page marker mapping in /proc/PID/maps: the target's own file, certainly.
    MarkerMapping,
    /// A `jit-*` file naming the pid in `jitDumpDirectory`.
    EnvDirectory,
    /// A `jit-*` file naming the pid in /tmp.
    DefaultDirectory,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundJitdump {
    /// A path to open from the tracer: through `/proc/PID/root` (the target's view of the file system,
    /// which differs under systemd's PrivateTmp= or in a container), or `/proc/PID/map_files/START-END`
    /// for a mapped file that has been deleted.
    pub path: PathBuf,
    pub origin: JitdumpOrigin,
}

/// The target's jitdump files (JSC writes one per process, but one per thread would be found as well).
/// The first of these that finds any wins: (a) marker mappings in the target's maps; (b) files in
/// `jitDumpDirectory` whose name holds the pid; (c) if no directory is set, such files in /tmp. In (b)
/// and (c) a file whose header names another process is passed over (a stale file, or a thread id of
/// another process equal to the pid), and so is one that is not a jitdump. Empty while the target has
/// not compiled anything yet: call again later.
pub fn find_jitdumps(pid: u32, maps: &MemoryMap, env: &JitEnv) -> Vec<FoundJitdump> {
    find_jitdumps_under(Path::new("/proc"), pid, maps, env)
}

/// [`find_jitdumps`] with `proc_root` for /proc (tests use a directory laid out like it).
pub fn find_jitdumps_under(proc_root: &Path, pid: u32, maps: &MemoryMap, env: &JitEnv) -> Vec<FoundJitdump> {
    let process = proc_root.join(pid.to_string());
    let mut found: Vec<FoundJitdump> = Vec::new();
    for mapping in maps.iter() {
        let path = mapping.file_path();
        let basename = path.rsplit('/').next().unwrap_or(path);
        // The name is not matched against the pid: in a pid namespace it holds the namespace's pid.
        if !path.starts_with('/') || jitdump_name_numbers(basename).is_none() {
            continue;
        }
        let path = if mapping.pathname.ends_with(" (deleted)") {
            process.join("map_files").join(format!("{:x}-{:x}", mapping.start, mapping.end))
        } else {
            in_root(&process, Path::new(path))
        };
        if !found.iter().any(|f| f.path == path) {
            found.push(FoundJitdump { path, origin: JitdumpOrigin::MarkerMapping });
        }
    }
    if !found.is_empty() {
        return found;
    }
    // With jitDumpDirectory set, JSC writes nothing to /tmp (checked): a /tmp file could only be stale.
    let (directory, origin) = match &env.jit_dump_directory {
        Some(directory) if directory.is_absolute() => (in_root(&process, directory), JitdumpOrigin::EnvDirectory),
        Some(directory) => (process.join("cwd").join(directory), JitdumpOrigin::EnvDirectory),
        None => (in_root(&process, Path::new("/tmp")), JitdumpOrigin::DefaultDirectory),
    };
    let Ok(entries) = fs::read_dir(&directory) else { return found };
    for entry in entries.flatten() {
        // JSC creates plain files; opening a FIFO or following a symlink someone left in /tmp is no good.
        if !entry.file_type().is_ok_and(|kind| kind.is_file()) {
            continue;
        }
        let name = entry.file_name();
        let names_pid = name
            .to_str()
            .and_then(jitdump_name_numbers)
            .is_some_and(|(first, second)| first == pid || second == Some(pid));
        if names_pid && header_may_be_of(&entry.path(), pid) {
            found.push(FoundJitdump { path: entry.path(), origin });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// `/tmp/perf-PID.map`, seen from the target's root.
pub fn perf_map_path(pid: u32) -> PathBuf {
    perf_map_path_under(Path::new("/proc"), pid)
}

pub fn perf_map_path_under(proc_root: &Path, pid: u32) -> PathBuf {
    in_root(&proc_root.join(pid.to_string()), Path::new(&format!("/tmp/perf-{pid}.map")))
}

/// `path` as the process sees it, through `/proc/PID/root`.
fn in_root(process: &Path, path: &Path) -> PathBuf {
    process.join("root").join(path.strip_prefix("/").unwrap_or(path))
}

/// The numbers in a jitdump file name: `jit-<tid>-<pid>-XXXXXX` and `jit-<tid>-<pid>.dump` (Bun 1.3.13),
/// `jit-<pid>.dump` (newer WebKit, and perf's convention), `jit-<pid>-<tid>...`. None for other names.
fn jitdump_name_numbers(basename: &str) -> Option<(u32, Option<u32>)> {
    let rest = basename.strip_prefix("jit-")?;
    let rest = rest.strip_suffix(".dump").unwrap_or(rest);
    let mut parts = rest.split('-');
    let first = parts.next()?.parse().ok()?;
    Some((first, parts.next().and_then(|part| part.parse().ok())))
}

/// False when the file's header shows another process or no jitdump at all; true when it shows `pid`, is
/// not fully written yet, or cannot be read here (reading it later will say why).
fn header_may_be_of(path: &Path, pid: u32) -> bool {
    let Ok(mut file) = untrusted::open(path, Origin::Target) else { return true };
    let mut bytes = [0u8; FILE_HEADER_SIZE as usize];
    let Ok(read) = read_up_to(&mut file, &mut bytes) else { return true };
    match JitdumpHeader::parse(&bytes[..read]) {
        Ok(Some(header)) => header.pid == pid,
        Ok(None) => true,
        Err(_) => false,
    }
}

enum SourceKind {
    Jitdump(JitdumpReader),
    PerfMap(PerfMapReader),
}

struct Source {
    path: PathBuf,
    /// Opened at the first refresh and kept: the file stays readable after the target deletes it or
    /// exits (a `/proc/PID/...` path stops resolving then).
    file: Option<File>,
    kind: SourceKind,
    /// Not read, for good: not a regular file, a link, or on FUSE.
    refused: bool,
    /// What to tell about it (why it is refused, or that it is read only up to [`Cap::JIT`]), once.
    warning: Option<String>,
    /// Said that it is larger than the cap.
    told_capped: bool,
}

/// JIT names for one target: its jitdump files (one per writing thread, if a runtime does that) and a perf
/// map, in one index. Read as they grow with [`JitSymbols::refresh`].
#[derive(Default)]
pub struct JitSymbols {
    sources: Vec<Source>,
    index: JitIndex,
}

impl JitSymbols {
    pub fn new() -> Self {
        Self::default()
    }

    /// The target's jitdump files and perf map as found now; nothing is read before [`Self::refresh`].
    pub fn for_process(pid: u32, maps: &MemoryMap, env: &JitEnv) -> Self {
        let mut symbols = Self::new();
        symbols.discover(pid, maps, env);
        symbols
    }

    /// Adds the target's jitdump files and perf map not known yet (a target may create its jitdump after
    /// the tracer attached); returns how many were added.
    pub fn discover(&mut self, pid: u32, maps: &MemoryMap, env: &JitEnv) -> usize {
        self.discover_under(Path::new("/proc"), pid, maps, env)
    }

    /// [`Self::discover`] with `proc_root` for /proc.
    pub fn discover_under(&mut self, proc_root: &Path, pid: u32, maps: &MemoryMap, env: &JitEnv) -> usize {
        let mut added = 0;
        for found in find_jitdumps_under(proc_root, pid, maps, env) {
            added += usize::from(self.add_jitdump(found.path));
        }
        let perf_map = perf_map_path_under(proc_root, pid);
        // Whatever is there, a link included, is a source: reading it says why it is refused.
        if fs::symlink_metadata(&perf_map).is_ok() {
            added += usize::from(self.add_perf_map(perf_map));
        }
        added
    }

    /// False if the path is already a source.
    pub fn add_jitdump(&mut self, path: impl Into<PathBuf>) -> bool {
        self.add(path.into(), SourceKind::Jitdump(JitdumpReader::new()))
    }

    /// False if the path is already a source.
    pub fn add_perf_map(&mut self, path: impl Into<PathBuf>) -> bool {
        self.add(path.into(), SourceKind::PerfMap(PerfMapReader::new()))
    }

    fn add(&mut self, path: PathBuf, kind: SourceKind) -> bool {
        if self.sources.iter().any(|source| source.path == path) {
            return false;
        }
        self.sources.push(Source { path, file: None, kind, refused: false, warning: None, told_capped: false });
        true
    }

    /// What to tell about the sources since the last call (refused ones, capped ones), each once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        self.sources.iter_mut().filter_map(|source| source.warning.take()).collect()
    }

    /// How many sources were refused.
    pub fn refused_count(&self) -> usize {
        self.sources.iter().filter(|source| source.refused).count()
    }

    /// Reads what every source gained since the last refresh; returns how many code ranges were added.
    /// A source that fails does not stop the others; the first failure is returned after all were read.
    /// A source that is not a regular file the target could have written (a FIFO, a device, a link) is
    /// refused for good, and so is what lies past [`Cap::JIT`].
    pub fn refresh(&mut self) -> Result<usize> {
        let mut added = 0;
        let mut first_error = None;
        for source in &mut self.sources {
            if source.refused {
                continue;
            }
            match refresh_source(source, &mut self.index) {
                Ok(progress) => added += progress.loads,
                Err(error) => {
                    first_error.get_or_insert(error.context(format!("reading {}", source.path.display())));
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(added),
        }
    }

    /// The frame covering `addr` at `time_ns` (CLOCK_MONOTONIC nanoseconds, as from bpf_ktime_get_ns);
    /// see [`JitIndex::lookup`].
    pub fn lookup(&self, addr: u64, time_ns: u64) -> Option<JitFrame> {
        self.index.lookup(addr, time_ns)
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.sources.iter().map(|source| source.path.as_path())
    }

    pub fn index(&self) -> &JitIndex {
        &self.index
    }

    #[cfg(test)]
    pub fn index_mut(&mut self) -> &mut JitIndex {
        &mut self.index
    }
}

fn refresh_source(source: &mut Source, index: &mut JitIndex) -> Result<ReadProgress> {
    let file = match &mut source.file {
        Some(file) => file,
        None => match untrusted::open(&source.path, Origin::of_target_path(&source.path)) {
            Ok(file) => source.file.insert(file),
            Err(error) if error.is_not_found() => return Err(error.into()),
            Err(error) => {
                source.refused = true;
                source.warning = Some(format!("{error}: JIT names from it are not read"));
                return Ok(ReadProgress::default());
            }
        },
    };
    if !source.told_capped && file.metadata()?.len() > Cap::JIT.0 {
        source.told_capped = true;
        source.warning = Some(format!(
            "{} is larger than {} MiB: JIT names are read from its first {} MiB only",
            source.path.display(),
            Cap::JIT.0 >> 20,
            Cap::JIT.0 >> 20
        ));
    }
    match &mut source.kind {
        SourceKind::Jitdump(reader) => {
            let Some(header) = reader.read_header(file)? else { return Ok(ReadProgress::default()) };
            let comparable_times = !header.uses_arch_timestamps();
            reader.read_new(file, |load| {
                let time = if comparable_times { load.timestamp } else { 0 };
                index.insert(load.code_addr, load.code_size, time, &load.name);
            })
        }
        SourceKind::PerfMap(reader) => {
            Ok(reader.read_new(file, |entry| index.insert(entry.start, entry.size, 0, &entry.name))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    const LE: ByteOrder = ByteOrder::Little;

    fn u32_bytes(order: ByteOrder, value: u32) -> [u8; 4] {
        match order {
            ByteOrder::Little => value.to_le_bytes(),
            ByteOrder::Big => value.to_be_bytes(),
        }
    }

    fn u64_bytes(order: ByteOrder, value: u64) -> [u8; 8] {
        match order {
            ByteOrder::Little => value.to_le_bytes(),
            ByteOrder::Big => value.to_be_bytes(),
        }
    }

    fn header(order: ByteOrder, pid: u32, flags: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for field in [JITDUMP_MAGIC, 1, 40, 0x3e, 0, pid] {
            bytes.extend(u32_bytes(order, field));
        }
        bytes.extend(u64_bytes(order, 1_000));
        bytes.extend(u64_bytes(order, flags));
        bytes
    }

    fn record(order: ByteOrder, id: u32, time: u64, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(u32_bytes(order, id));
        bytes.extend(u32_bytes(order, 16 + payload.len() as u32));
        bytes.extend(u64_bytes(order, time));
        bytes.extend(payload);
        bytes
    }

    /// A JIT_CODE_LOAD with `size` bytes of code (0xcc) and code_index = `time`.
    fn load(order: ByteOrder, time: u64, tid: u32, addr: u64, size: u64, name: &str) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend(u32_bytes(order, 4242));
        payload.extend(u32_bytes(order, tid));
        for field in [addr, addr, size, time] {
            payload.extend(u64_bytes(order, field));
        }
        payload.extend(name.as_bytes());
        payload.push(0);
        payload.extend(std::iter::repeat_n(0xcc, size as usize));
        record(order, JIT_CODE_LOAD, time, &payload)
    }

    fn code_load(time: u64, tid: u32, addr: u64, size: u64, name: &str) -> CodeLoad {
        CodeLoad {
            timestamp: time,
            pid: 4242,
            tid,
            vma: addr,
            code_addr: addr,
            code_size: size,
            code_index: time,
            name: name.into(),
        }
    }

    fn read_all(reader: &mut JitdumpReader, bytes: &[u8]) -> Result<(ReadProgress, Vec<CodeLoad>)> {
        let mut loads = Vec::new();
        let progress = reader.read_new(&mut Cursor::new(bytes), |load| loads.push(load))?;
        Ok((progress, loads))
    }

    #[test]
    fn reads_the_header_and_every_code_load_and_skips_the_other_records() {
        let mut bytes = header(LE, 4242, 0);
        bytes.extend(load(LE, 10, 7, 0x7000_0000, 32, "JSC-Thunk: DefaultCall"));
        bytes.extend(record(LE, 2, 11, &[0u8; 40])); // debug info
        bytes.extend(load(LE, 12, 8, 0x7000_1000, 1360, "JSC-Baseline: runTurn#CsYAmg"));
        bytes.extend(record(LE, 1, 13, &[0u8; 48])); // move
        bytes.extend(record(LE, 4, 14, &[0u8; 24])); // unwinding info
        bytes.extend(record(LE, 9, 15, &[1, 2, 3])); // unknown kind
        bytes.extend(load(LE, 16, 7, 0x7000_2000, 1, "JSC-DFG: buildMessage#BrhwuA"));
        bytes.extend(record(LE, 3, 17, &[])); // close
        let mut reader = JitdumpReader::new();
        let (progress, loads) = read_all(&mut reader, &bytes).unwrap();
        assert_eq!(
            reader.header(),
            Some(&JitdumpHeader {
                big_endian: false,
                version: 1,
                header_size: 40,
                elf_mach: 0x3e,
                pid: 4242,
                timestamp: 1_000,
                flags: 0
            })
        );
        assert_eq!(progress, ReadProgress { loads: 3, skipped: 5 });
        assert_eq!(
            loads,
            vec![
                code_load(10, 7, 0x7000_0000, 32, "JSC-Thunk: DefaultCall"),
                code_load(12, 8, 0x7000_1000, 1360, "JSC-Baseline: runTurn#CsYAmg"),
                code_load(16, 7, 0x7000_2000, 1, "JSC-DFG: buildMessage#BrhwuA"),
            ]
        );
        assert_eq!(reader.next_offset(), bytes.len() as u64);
        // Nothing new: nothing read.
        assert_eq!(read_all(&mut reader, &bytes).unwrap(), (ReadProgress::default(), vec![]));
    }

    #[test]
    fn big_endian_files_are_read_in_their_order() {
        let order = ByteOrder::Big;
        let mut bytes = header(order, 77, 0);
        assert_eq!(&bytes[..4], b"JiTD");
        bytes.extend(load(order, 5, 78, 0x1234_5678, 64, "JSC-FTL: f#AbCdEf"));
        let mut reader = JitdumpReader::new();
        let (_, loads) = read_all(&mut reader, &bytes).unwrap();
        assert!(reader.header().unwrap().big_endian);
        assert_eq!(reader.header().unwrap().pid, 77);
        assert_eq!(loads, vec![CodeLoad { pid: 4242, ..code_load(5, 78, 0x1234_5678, 64, "JSC-FTL: f#AbCdEf") }]);
    }

    /// Counts the bytes a reader actually reads.
    struct CountingReader<R> {
        inner: R,
        read: u64,
    }

    impl<R: Read> Read for CountingReader<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl<R: Seek> Seek for CountingReader<R> {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn code_bytes_are_skipped_by_seeking() {
        let mut bytes = header(LE, 1, 0);
        bytes.extend(load(LE, 1, 1, 0x10_0000, 4 << 20, "JSC-FTL: huge#AAAAAA"));
        bytes.extend(load(LE, 2, 1, 0x90_0000, 16, "JSC-Thunk: after"));
        let mut input = CountingReader { inner: Cursor::new(&bytes), read: 0 };
        let mut names = Vec::new();
        JitdumpReader::new().read_new(&mut input, |load| names.push(load.name)).unwrap();
        assert_eq!(names, ["JSC-FTL: huge#AAAAAA", "JSC-Thunk: after"]);
        // The header, a buffer around each record start; not the 4 MiB of code.
        assert!(input.read < 256 << 10, "read {} bytes of a {} byte file", input.read, bytes.len());
    }

    #[test]
    fn a_record_cut_short_is_read_once_the_rest_is_written() {
        let mut bytes = header(LE, 4242, 0);
        let mut starts = Vec::new();
        for (i, name) in ["JSC-Thunk: a", "JSC-DFG: b#AAAAAA", "JSC-FTL: c#BBBBBB"].iter().enumerate() {
            starts.push(bytes.len() as u64);
            bytes.extend(load(LE, i as u64, 1, 0x1000 * (i as u64 + 1), 100, name));
        }
        let all: Vec<CodeLoad> = read_all(&mut JitdumpReader::new(), &bytes).unwrap().1;
        assert_eq!(all.len(), 3);
        // Cut everywhere: inside the file header, a record header, a name, code bytes.
        let boundaries: Vec<u64> = starts.iter().copied().chain([bytes.len() as u64]).collect();
        for cut in 0..=bytes.len() {
            let mut reader = JitdumpReader::new();
            let (_, mut loads) = read_all(&mut reader, &bytes[..cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let last_boundary = boundaries.iter().rposition(|b| *b <= cut as u64);
            assert_eq!(loads.len(), last_boundary.unwrap_or(0), "cut at {cut}");
            assert_eq!(reader.next_offset(), last_boundary.map_or(0, |i| boundaries[i]), "cut at {cut}");
            loads.extend(read_all(&mut reader, &bytes).unwrap().1);
            assert_eq!(loads, all, "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_magic_or_version_or_record_is_an_error() {
        let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let error = read_all(&mut JitdumpReader::new(), elf).unwrap_err().to_string();
        assert!(error.contains("not a perf jitdump file"), "{error}");
        // Known after four bytes already.
        assert!(read_all(&mut JitdumpReader::new(), b"\x7fELF").is_err());
        assert!(read_all(&mut JitdumpReader::new(), b"DTi").unwrap().1.is_empty());

        let mut version_2 = header(LE, 1, 0);
        version_2[4] = 2;
        let error = read_all(&mut JitdumpReader::new(), &version_2).unwrap_err().to_string();
        assert_eq!(error, "perf jitdump version 2 is not supported (only version 1)");

        let mut tiny_record = header(LE, 1, 0);
        tiny_record.extend(u32_bytes(LE, 0));
        tiny_record.extend(u32_bytes(LE, 8));
        tiny_record.extend(u64_bytes(LE, 0));
        let error = read_all(&mut JitdumpReader::new(), &tiny_record).unwrap_err().to_string();
        assert_eq!(error, "jitdump record at offset 40: size 8 is smaller than a record header");

        let mut unterminated = header(LE, 1, 0);
        unterminated.extend(load(LE, 1, 1, 0x1000, 0, "JSC-Thunk: ok"));
        let bad_at = unterminated.len();
        let mut bad = load(LE, 2, 1, 0x2000, 0, "JSC-Thunk: no end");
        bad.pop(); // drop the NUL, shrink the record by one
        bad[4] -= 1;
        unterminated.extend(bad);
        let mut reader = JitdumpReader::new();
        let mut names = Vec::new();
        let error = reader.read_new(&mut Cursor::new(&unterminated), |load| names.push(load.name)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("jitdump code load at offset {bad_at}: the name is not NUL-terminated within the record")
        );
        assert_eq!(names, ["JSC-Thunk: ok"]);
        assert_eq!(reader.next_offset(), bad_at as u64);
    }

    #[test]
    fn a_reused_address_is_named_by_the_newest_load_at_or_before_the_time() {
        let mut index = JitIndex::new();
        index.insert(0x1000, 0x100, 100, "JSC-DFG: first#AAAAAA");
        index.insert(0x1000, 0x80, 200, "JSC-FTL: second#BBBBBB");
        let name_at = |addr, time| index.lookup(addr, time).map(|frame| frame.name.to_string());
        assert_eq!(name_at(0x1010, 99), None, "before any load: nothing, not a later load");
        assert_eq!(name_at(0x1010, 100).as_deref(), Some("first [JS:DFG]"));
        assert_eq!(name_at(0x1010, 199).as_deref(), Some("first [JS:DFG]"));
        assert_eq!(name_at(0x1010, 200).as_deref(), Some("second [JS:FTL]"));
        assert_eq!(name_at(0x107f, u64::MAX).as_deref(), Some("second [JS:FTL]"));
        // Past the second load's end, only the first covers.
        assert_eq!(name_at(0x1080, u64::MAX).as_deref(), Some("first [JS:DFG]"));
        assert_eq!(name_at(0x10ff, 150).as_deref(), Some("first [JS:DFG]"));
        assert_eq!(name_at(0x1100, u64::MAX), None);
        assert_eq!(name_at(0xfff, u64::MAX), None);
        let frame = index.lookup(0x1010, 300).unwrap();
        assert_eq!(
            frame,
            JitFrame {
                name: "second [JS:FTL]".into(),
                raw: "JSC-FTL: second#BBBBBB".into(),
                tier: JitTier::Ftl,
                start: 0x1000,
                size: 0x80,
                loaded_ns: 200
            }
        );
    }

    #[test]
    fn loads_may_arrive_out_of_time_order_and_ties_go_to_the_later_one() {
        let mut index = JitIndex::new();
        index.insert(0x5000, 0x40, 200, "JSC-FTL: newer#AAAAAA");
        index.insert(0x5000, 0x40, 100, "JSC-DFG: older#BBBBBB");
        index.insert(0x6000, 0x40, 100, "JSC-DFG: one#CCCCCC");
        index.insert(0x6000, 0x40, 100, "JSC-DFG: two#DDDDDD");
        index.insert(0x7000, 0, 100, "JSC-Thunk: empty");
        let raw_at = |addr, time| index.lookup(addr, time).map(|frame| frame.raw.to_string());
        assert_eq!(raw_at(0x5000, 150).as_deref(), Some("JSC-DFG: older#BBBBBB"));
        assert_eq!(raw_at(0x5000, 250).as_deref(), Some("JSC-FTL: newer#AAAAAA"));
        assert_eq!(raw_at(0x6020, 100).as_deref(), Some("JSC-DFG: two#DDDDDD"));
        assert_eq!(raw_at(0x7000, u64::MAX), None, "empty code covers nothing");
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn loads_of_different_sizes_overlapping() {
        let mut index = JitIndex::new();
        index.insert(0x10000, 0x10000, 10, "JSC-FTL: big#AAAAAA"); // [0x10000, 0x20000)
        index.insert(0x18000, 0x20, 20, "JSC-InlineCache: GetById"); // inside it, later
        index.insert(0x1ffff, 0x2, 30, "JSC-Thunk: edge"); // over its end
        index.insert(u64::MAX - 0xf, 0x10, 40, "JSC-Thunk: top");
        let name_at = |addr, time| index.lookup(addr, time).map(|frame| frame.name.to_string());
        assert_eq!(name_at(0x18010, 15).as_deref(), Some("big [JS:FTL]"));
        assert_eq!(name_at(0x18010, 25).as_deref(), Some("[JSC IC] GetById"));
        assert_eq!(name_at(0x18020, 25).as_deref(), Some("big [JS:FTL]"));
        assert_eq!(name_at(0x10000, 25).as_deref(), Some("big [JS:FTL]"));
        assert_eq!(name_at(0x1fffe, 30).as_deref(), Some("big [JS:FTL]"));
        assert_eq!(name_at(0x1ffff, 30).as_deref(), Some("[JSC thunk] edge"));
        assert_eq!(name_at(0x20000, 30).as_deref(), Some("[JSC thunk] edge"));
        assert_eq!(name_at(0x20001, 30), None);
        assert_eq!(name_at(u64::MAX, 40).as_deref(), Some("[JSC thunk] top"), "no overflow at the top");
    }

    #[test]
    fn many_loads_with_reuse_match_a_brute_force_search() {
        // A 64 MiB arena of code reused over and over (about 15 times by the end), sizes from 16 bytes to
        // 64 KiB, times mostly rising.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let names: Vec<String> = (0..500).map(|i| format!("JSC-DFG: f{i}#AAAAAA")).collect();
        let mut index = JitIndex::new();
        let mut loads = Vec::new();
        for i in 0..100_000u64 {
            let size = 16u64 << (next() % 13);
            let start = 0x7f00_0000_0000 + (next() % (64 << 20)) / 16 * 16;
            let time = i * 10 + next() % 25;
            let name = &names[(next() % 500) as usize];
            index.insert(start, size, time, name);
            loads.push((start, size, time, name.as_str()));
        }
        assert_eq!(index.len(), 100_000);
        assert_eq!(index.name_count(), 500);
        let mut hits = 0;
        for _ in 0..400 {
            let addr = 0x7f00_0000_0000 + next() % ((64 << 20) + 0x20000);
            // Half of them early, while most of the arena is still unused.
            let time = if next() % 2 == 0 { next() % 20_000 } else { next() % 1_100_000 };
            let expected = loads
                .iter()
                .enumerate()
                .filter(|(_, (start, size, t, _))| addr >= *start && addr - start < *size && *t <= time)
                .max_by_key(|(i, (_, _, t, _))| (*t, *i))
                .map(|(_, (start, _, _, name))| (*start, name.to_string()));
            let found = index.lookup(addr, time).map(|frame| (frame.start, frame.raw.to_string()));
            assert_eq!(found, expected, "addr {addr:#x} time {time}");
            hits += usize::from(found.is_some());
        }
        // Both answers were exercised.
        assert!((150..380).contains(&hits), "{hits} of 400 lookups found a load");
    }

    #[test]
    fn jsc_names_become_display_names_and_tiers() {
        let cases = [
            ("JSC-DFG: buildMessage#BrhwuA", "buildMessage [JS:DFG]", JitTier::Dfg),
            ("JSC-Baseline: runTurn#CsYAmg", "runTurn [JS:Baseline]", JitTier::Baseline),
            ("JSC-FTL: runTurn#EVtQZ8", "runTurn [JS:FTL]", JitTier::Ftl),
            ("JSC-LLInt: boot#AAAAAA", "boot [JS:LLInt]", JitTier::LLInt),
            ("JSC-Baseline: #ASrMsw", "(anonymous) [JS:Baseline]", JitTier::Baseline),
            ("JSC-DFG: <anonymous>#ASrMsw", "(anonymous) [JS:DFG]", JitTier::Dfg),
            ("JSC-DFG: ", "(anonymous) [JS:DFG]", JitTier::Dfg),
            ("JSC-DFG: lazy#<no-hash>", "lazy [JS:DFG]", JitTier::Dfg),
            ("JSC-FTL: #secret#Ab12Cd", "#secret [JS:FTL]", JitTier::Ftl),
            ("JSC-FTL: /tmp/script.js#BMmy9a", "/tmp/script.js [JS:FTL]", JitTier::Ftl),
            ("JSC-DFG: get x", "get x [JS:DFG]", JitTier::Dfg),
            ("JSC-WasmBBQ: wasm-function[3]", "wasm-function[3] [Wasm:BBQ]", JitTier::WasmBbq),
            ("JSC-WasmOMG: wasm-function[3]", "wasm-function[3] [Wasm:OMG]", JitTier::WasmOmg),
            ("JSC-Thunk: DefaultCall", "[JSC thunk] DefaultCall", JitTier::Thunk),
            ("JSC-Thunk: unspecified", "[JSC thunk]", JitTier::Thunk),
            ("JSC-LLIntThunk: arityFixup", "[JSC thunk] arityFixup (LLInt)", JitTier::Thunk),
            ("JSC-ExtraCTIThunk: handleException", "[JSC thunk] handleException (ExtraCTI)", JitTier::Thunk),
            ("JSC-DFGThunk: unspecified", "[JSC thunk] (DFG)", JitTier::Thunk),
            ("JSC-FTLThunk: unspecified", "[JSC thunk] (FTL)", JitTier::Thunk),
            ("JSC-WasmThunk: unspecified", "[JSC thunk] (Wasm)", JitTier::Thunk),
            ("JSC-JumpIsland: unspecified", "[JSC thunk] (jump island)", JitTier::Thunk),
            ("JSC-InlineCache: GetById Load handler", "[JSC IC] GetById Load handler", JitTier::InlineCache),
            ("JSC-InlineCache: VirtualCall", "[JSC IC] VirtualCall", JitTier::InlineCache),
            ("JSC-DFGOSREntry: unspecified", "[JSC OSR entry] (DFG)", JitTier::OsrEntry),
            ("JSC-DFGOSRExit: unspecified", "[JSC OSR exit] (DFG)", JitTier::OsrExit),
            ("JSC-FTLOSRExit: unspecified", "[JSC OSR exit] (FTL)", JitTier::OsrExit),
            ("JSC-YarrJIT: /a(b+)c/", "[JSC regexp] /a(b+)c/", JitTier::RegExp),
            ("JSC-CSSJIT: unspecified", "[JSC CSS]", JitTier::Other),
            ("JSC-Uncategorized: stub", "[JSC Uncategorized] stub", JitTier::Other),
            ("JSC-Future: thing", "[JSC Future] thing", JitTier::Other),
            ("LazyCompile:*main /srv/app.js:1", "LazyCompile:*main /srv/app.js:1", JitTier::Other),
            ("JSC-DFG no colon", "JSC-DFG no colon", JitTier::Other),
        ];
        for (raw, display, tier) in cases {
            assert_eq!(display_name(raw), (display.to_string(), tier), "{raw}");
        }
        assert!(JitTier::Ftl.is_javascript() && JitTier::LLInt.is_javascript());
        assert!(!JitTier::Thunk.is_javascript() && !JitTier::WasmBbq.is_javascript());
    }

    #[test]
    fn perf_map_lines() {
        let entry = |start, size, name: &str| Some(PerfMapEntry { start, size, name: name.into() });
        assert_eq!(
            parse_perf_map_line("7f3a2c001000 40 LazyCompile:*main app.js:1\n"),
            entry(0x7f3a2c001000, 0x40, "LazyCompile:*main app.js:1")
        );
        assert_eq!(
            parse_perf_map_line("0x7f3a2c001000 0X1f0 py::f:/app/x.py"),
            entry(0x7f3a2c001000, 0x1f0, "py::f:/app/x.py")
        );
        assert_eq!(parse_perf_map_line("1000\t10\tname\r\n"), entry(0x1000, 0x10, "name"));
        assert_eq!(parse_perf_map_line("1000 10 "), None);
        assert_eq!(parse_perf_map_line("1000 10"), None);
        assert_eq!(parse_perf_map_line("zz 10 name"), None);
        assert_eq!(parse_perf_map_line(""), None);
    }

    #[test]
    fn perf_maps_are_read_line_by_line_as_they_grow() {
        let text = b"1000 100 first\nnot a line\n1000 80 second\n2000 10 par";
        let mut reader = PerfMapReader::new();
        let mut index = JitIndex::new();
        let progress =
            reader.read_new(&mut Cursor::new(&text[..]), |e| index.insert(e.start, e.size, 0, &e.name)).unwrap();
        assert_eq!(progress, ReadProgress { loads: 2, skipped: 1 });
        assert_eq!(reader.next_offset(), 41);
        assert_eq!(index.lookup(0x1010, 0).unwrap().name.as_ref(), "second", "the newest line wins");
        assert_eq!(index.lookup(0x1090, 0).unwrap().name.as_ref(), "first");
        assert_eq!(index.lookup(0x2000, u64::MAX), None, "a line without its newline is not read");
        let grown = b"1000 100 first\nnot a line\n1000 80 second\n2000 10 partial\n";
        let progress =
            reader.read_new(&mut Cursor::new(&grown[..]), |e| index.insert(e.start, e.size, 0, &e.name)).unwrap();
        assert_eq!(progress, ReadProgress { loads: 1, skipped: 0 });
        assert_eq!(index.lookup(0x2005, 7).unwrap().name.as_ref(), "partial");
    }

    #[test]
    fn a_perf_map_line_too_long_is_passed_over_without_being_kept() {
        let mut text = b"1000 10 before\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 3 * MAX_NAME + 7));
        text.extend(b"\n2000 10 after\n");
        let mut reader = PerfMapReader::new();
        let mut names = Vec::new();
        let progress = reader.read_new(&mut Cursor::new(&text[..]), |e| names.push(e.name)).unwrap();
        assert_eq!(names, ["before", "after"]);
        assert_eq!(progress, ReadProgress { loads: 2, skipped: 1 });
        assert_eq!(reader.next_offset(), text.len() as u64);

        // A long line still being written is passed over as it grows, never held whole.
        let mut reader = PerfMapReader::new();
        let mut growing = std::iter::repeat_n(b'y', MAX_NAME + 10).collect::<Vec<u8>>();
        assert_eq!(reader.read_new(&mut Cursor::new(&growing[..]), |_| panic!()).unwrap(), ReadProgress::default());
        assert_eq!(reader.next_offset(), growing.len() as u64);
        growing.extend(b"yyy\n3000 10 next\n");
        let mut names = Vec::new();
        reader.read_new(&mut Cursor::new(&growing[..]), |e| names.push(e.name)).unwrap();
        assert_eq!(names, ["next"]);
    }

    #[test]
    fn one_refresh_reads_a_share_of_a_large_perf_map() {
        let line = format!("1000 10 {}\n", "n".repeat(1000));
        let text = line.repeat((READ_PER_REFRESH as usize / line.len()) + 100);
        let mut reader = PerfMapReader::new();
        let mut count = 0;
        reader.read_new(&mut Cursor::new(text.as_bytes()), |_| count += 1).unwrap();
        assert!(reader.next_offset() >= READ_PER_REFRESH && reader.next_offset() < text.len() as u64);
        reader.read_new(&mut Cursor::new(text.as_bytes()), |_| count += 1).unwrap();
        assert_eq!(reader.next_offset(), text.len() as u64);
        assert_eq!(count * line.len(), text.len());
    }

    #[test]
    fn a_jitdump_name_longer_than_any_real_one_keeps_its_start() {
        let long_name = format!("JSC-DFG: {}", "a".repeat(2 * MAX_NAME));
        let mut bytes = header(LE, 4242, 0);
        bytes.extend(load(LE, 100, 1, 0x1000, 0x10, &long_name));
        bytes.extend(load(LE, 200, 1, 0x2000, 0x10, "JSC-DFG: next#AAAAAA"));
        let (progress, loads) = read_all(&mut JitdumpReader::new(), &bytes).unwrap();
        assert_eq!(progress.loads, 2);
        assert_eq!(loads[0].name.len(), MAX_NAME);
        assert_eq!(loads[1].name, "JSC-DFG: next#AAAAAA");
    }

    #[test]
    fn a_fifo_or_a_link_in_place_of_a_perf_map_is_refused_and_told_once() {
        let dir = Scratch::new("refused");
        let fifo = dir.0.join("perf-1.map");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let link = dir.0.join("perf-2.map");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let mut symbols = JitSymbols::new();
        symbols.add_perf_map(&fifo);
        symbols.add_perf_map(&link);
        assert_eq!(symbols.refresh().unwrap(), 0);
        let warnings = symbols.take_warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("(it is a FIFO)"), "{warnings:?}");
        assert!(warnings[1].contains("(it is a symbolic link)"), "{warnings:?}");
        assert_eq!(symbols.refresh().unwrap(), 0);
        assert!(symbols.take_warnings().is_empty());
        assert_eq!(symbols.refused_count(), 2);
    }

    #[test]
    fn the_environment_gives_only_the_jitdump_settings() {
        let environ = b"PATH=/usr/bin\0DATABASE_URL=postgres://u:hunter2@db/x\0BUN_JSC_useJITDump=1\0\
                        JSC_jitDumpDirectory=/var/jsc\0BUN_JSC_jitDumpDirectory=/var/bun\0NOEQUALS\0";
        let env = JitEnv::from_environ(environ);
        assert_eq!(env, JitEnv { use_jit_dump: Some(true), jit_dump_directory: Some("/var/bun".into()) });
        assert!(!format!("{env:?}").contains("hunter2"));
        assert!(env.jitdump_enabled());

        let env = JitEnv::from_vars([("JSC_useJITDump", "TRUE"), ("JSC_jitDumpDirectory", "dumps")]);
        assert_eq!(env, JitEnv { use_jit_dump: Some(true), jit_dump_directory: Some("dumps".into()) });
        // Bun's variable wins over JSC's, as Bun 1.3.13 does.
        let env = JitEnv::from_vars([("JSC_useJITDump", "1"), ("BUN_JSC_useJITDump", "0")]);
        assert!(!env.jitdump_enabled());
        for (value, parsed) in
            [("yes", Some(true)), ("true", Some(true)), ("false", Some(false)), ("no", Some(false)), ("on", None)]
        {
            assert_eq!(JitEnv::from_vars([("BUN_JSC_useJITDump", value)]).use_jit_dump, parsed, "{value}");
        }
        let env = JitEnv::from_vars([("BUN_JSC_jitDumpDirectory", "")]);
        assert_eq!(env, JitEnv::default());
        assert!(!env.jitdump_enabled());
    }

    #[test]
    fn jitdump_file_names() {
        assert_eq!(jitdump_name_numbers("jit-23744-23741-pzUivg"), Some((23744, Some(23741))));
        assert_eq!(jitdump_name_numbers("jit-25852-25850.dump"), Some((25852, Some(25850))));
        assert_eq!(jitdump_name_numbers("jit-25850.dump"), Some((25850, None)));
        assert_eq!(jitdump_name_numbers("jit-25850-abc.dump"), Some((25850, None)));
        assert_eq!(jitdump_name_numbers("jit-x.dump"), None);
        assert_eq!(jitdump_name_numbers("perf-25850.map"), None);
        assert_eq!(jitdump_name_numbers("libjit-1.so"), None);
    }

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("leaktrace-jit-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, path: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn jitdumps_are_found_by_marker_mapping_then_directory() {
        let proc = Scratch::new("discovery");
        let pid = 23741;
        let dump = header(LE, pid, 0);
        let maps = MemoryMap::parse(
            "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dispatch-server\n\
             7fe6c1c33000-7fe6c1c34000 r-xp 00000000 fe:00 10010673   /tmp/jit-23744-23741-pzUivg\n\
             7fe6c1c35000-7fe6c1c36000 r-xp 00000000 fe:00 10010674   /var/jit/jit-23745-23741.dump (deleted)\n\
             7fe6c1c37000-7fe6c1c38000 r--p 00000000 fe:00 10010675   /usr/lib/libjit-1.so\n",
        );
        let found = find_jitdumps_under(&proc.0, pid, &maps, &JitEnv::default());
        assert_eq!(
            found,
            vec![
                FoundJitdump {
                    path: proc.0.join("23741/root/tmp/jit-23744-23741-pzUivg"),
                    origin: JitdumpOrigin::MarkerMapping
                },
                FoundJitdump {
                    path: proc.0.join("23741/map_files/7fe6c1c35000-7fe6c1c36000"),
                    origin: JitdumpOrigin::MarkerMapping
                },
            ]
        );

        // No marker yet: the default directory, as the target sees it. Files naming the pid whose header
        // names it too, or is not written yet.
        let no_marker = MemoryMap::parse("00400000-00452000 r-xp 00000000 08:02 173521  /usr/bin/dispatch-server\n");
        let tmp = proc.0.join("23741/root/tmp");
        proc.write("23741/root/tmp/jit-23744-23741-pzUivg", &dump);
        proc.write("23741/root/tmp/jit-23741.dump", &dump[..10]);
        proc.write("23741/root/tmp/jit-23741-23800-Ab3dEf", &header(LE, 99, 0)); // stale: another pid
        proc.write("23741/root/tmp/jit-1-2-XXXXXX", &header(LE, 2, 0)); // another process
        proc.write("23741/root/tmp/jit-23741-notadump", b"hello, world");
        proc.write("23741/root/tmp/perf-23741.map", b"");
        std::os::unix::fs::symlink(tmp.join("jit-23744-23741-pzUivg"), tmp.join("jit-23741-link.dump")).unwrap();
        let found = find_jitdumps_under(&proc.0, pid, &no_marker, &JitEnv::default());
        let expected = |names: &[&str], dir: &Path, origin| -> Vec<FoundJitdump> {
            names.iter().map(|name| FoundJitdump { path: dir.join(name), origin }).collect()
        };
        assert_eq!(
            found,
            expected(&["jit-23741.dump", "jit-23744-23741-pzUivg"], &tmp, JitdumpOrigin::DefaultDirectory)
        );

        // With jitDumpDirectory set, only there (absolute: in the target's root; relative: its cwd).
        proc.write("23741/root/srv/dumps/jit-23744-23741.dump", &dump);
        let env = JitEnv::from_vars([("BUN_JSC_jitDumpDirectory", "/srv/dumps")]);
        let found = find_jitdumps_under(&proc.0, pid, &no_marker, &env);
        let dumps = proc.0.join("23741/root/srv/dumps");
        assert_eq!(found, expected(&["jit-23744-23741.dump"], &dumps, JitdumpOrigin::EnvDirectory));
        proc.write("23741/cwd/rel/jit-23750-23741.dump", &dump);
        let env = JitEnv::from_vars([("JSC_jitDumpDirectory", "rel")]);
        let found = find_jitdumps_under(&proc.0, pid, &no_marker, &env);
        assert_eq!(
            found,
            expected(&["jit-23750-23741.dump"], &proc.0.join("23741/cwd/rel"), JitdumpOrigin::EnvDirectory)
        );
        let env = JitEnv::from_vars([("JSC_jitDumpDirectory", "/nowhere")]);
        assert_eq!(find_jitdumps_under(&proc.0, pid, &no_marker, &env), vec![]);

        // The perf map comes along in JitSymbols.
        let mut symbols = JitSymbols::new();
        assert_eq!(symbols.discover_under(&proc.0, pid, &no_marker, &JitEnv::default()), 3);
        assert_eq!(symbols.discover_under(&proc.0, pid, &no_marker, &JitEnv::default()), 0);
        let paths: Vec<&Path> = symbols.paths().collect();
        assert_eq!(paths[2], proc.0.join("23741/root/tmp/perf-23741.map"));
    }

    /// The start of a real jitdump: Bun 1.3.13 running, with BUN_JSC_useJITDump=1 and
    /// BUN_JSC_jitDumpDirectory=/tmp/jitcheck, this script (/tmp/jitcheck_script.js):
    /// ```js
    /// function buildMessage(i) { return { id: i, text: "msg" + i, parts: [i, i * 2, i * 3] }; }
    /// function runTurn(n) { let s = 0; for (let i = 0; i < n; i++) { s += buildMessage(i).parts[2]; } return s; }
    /// const anon = [1,2,3].map((x) => x);
    /// let t = 0;
    /// const start = Date.now();
    /// while (Date.now() - start < 1500) { t += runTurn(10000); t += (function () { return 1; })(); t+= /a(b+)c/.exec("xabbbc" + t)[1].length; }
    /// console.log(t, process.pid);
    /// ```
    /// Kept: the header and 16 of the 181 code loads, unchanged but for their code bytes, zeroed.
    const BUN_JITDUMP: &[u8] = include_bytes!("../../tests/fixtures/bun-1.3.13-jit.dump");

    #[test]
    fn a_real_bun_jitdump() {
        let mut reader = JitdumpReader::new();
        let (progress, loads) = read_all(&mut reader, BUN_JITDUMP).unwrap();
        let header = reader.header().unwrap();
        assert_eq!((header.version, header.header_size, header.elf_mach, header.pid), (1, 40, 0x3e, 23033));
        assert_eq!((header.timestamp, header.flags), (1735624764467, 0));
        assert_eq!(&BUN_JITDUMP[..4], b"DTiJ");
        assert_eq!(progress, ReadProgress { loads: 16, skipped: 0 });
        let summary: Vec<(u64, u32, u64, u64, u64, &str)> = loads
            .iter()
            .inspect(|load| assert_eq!((load.pid, load.vma), (23033, load.code_addr)))
            .map(|l| (l.timestamp, l.tid, l.code_addr, l.code_size, l.code_index, l.name.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (1735624272328, 23033, 0x7f849d200000, 32, 0, "JSC-Thunk: DefaultCall"),
                (1735624601272, 23033, 0x7f849d204000, 128, 1, "JSC-LLIntThunk: arityFixup"),
                (1735626860014, 23033, 0x7f849d208000, 96, 2, "JSC-ExtraCTIThunk: handleException"),
                (1735626901236, 23033, 0x7f849d204100, 128, 14, "JSC-InlineCache: VirtualCall"),
                (1735626917720, 23033, 0x7f849d210000, 64, 22, "JSC-InlineCache: GetById Load handler"),
                (1735632575916, 23037, 0x7f849d230000, 1360, 135, "JSC-Baseline: buildMessage#EOhoyY"),
                (1735632878150, 23037, 0x7f849d230550, 1360, 140, "JSC-Baseline: runTurn#EVtQZ8"),
                (1735633691812, 23037, 0x7f849d240000, 1536, 143, "JSC-DFG: buildMessage#EOhoyY"),
                (1735633726023, 23033, 0x7f849d20d080, 192, 144, "JSC-DFGOSREntry: unspecified"),
                (1735634020344, 23037, 0x7f849d240600, 2048, 145, "JSC-DFG: runTurn#EVtQZ8"),
                (1735634244041, 23033, 0x7f849d2241c0, 448, 146, "JSC-YarrJIT: /a(b+)c/"),
                (1735649429793, 23037, 0x7f849d240e00, 4096, 149, "JSC-FTL: runTurn#EVtQZ8"),
                (1735661352325, 23037, 0x7f849d264000, 224, 160, "JSC-Baseline: #ASrMsw"),
                (1735686587465, 23037, 0x7f849d2640e0, 224, 161, "JSC-DFG: #ASrMsw"),
                (1736497108109, 23038, 0x7f849d244200, 2304, 172, "JSC-FTL: /tmp/jitcheck_script.js#BMmy9a"),
                (1737131462472, 23033, 0x7f849d240600, 2048, 180, "JSC-FTLOSRExit: unspecified"),
            ]
        );

        let mut index = JitIndex::new();
        for load in &loads {
            index.insert(load.code_addr, load.code_size, load.timestamp, &load.name);
        }
        let name_at = |addr, time| index.lookup(addr, time).map(|frame| frame.name.to_string());
        // runTurn's DFG code was freed and its 2 KiB reused by an FTL OSR exit stub.
        assert_eq!(name_at(0x7f849d240700, 1735634020343), None);
        assert_eq!(name_at(0x7f849d240700, 1735634020344).as_deref(), Some("runTurn [JS:DFG]"));
        assert_eq!(name_at(0x7f849d240700, 1737131462471).as_deref(), Some("runTurn [JS:DFG]"));
        assert_eq!(name_at(0x7f849d240700, 1737131462472).as_deref(), Some("[JSC OSR exit] (FTL)"));
        assert_eq!(name_at(0x7f849d2405ff, u64::MAX).as_deref(), Some("buildMessage [JS:DFG]"));
        assert_eq!(name_at(0x7f849d240e00, u64::MAX).as_deref(), Some("runTurn [JS:FTL]"));
        assert_eq!(name_at(0x7f849d241e00, u64::MAX), None);
        assert_eq!(name_at(0x7f849d264010, u64::MAX).as_deref(), Some("(anonymous) [JS:Baseline]"));
        assert_eq!(name_at(0x7f849d244300, u64::MAX).as_deref(), Some("/tmp/jitcheck_script.js [JS:FTL]"));
        assert_eq!(name_at(0x7f849d2241c0, u64::MAX).as_deref(), Some("[JSC regexp] /a(b+)c/"));
        assert_eq!(name_at(0x7f849d210000, u64::MAX).as_deref(), Some("[JSC IC] GetById Load handler"));
    }

    #[test]
    fn jit_symbols_combine_sources_and_read_what_they_gain() {
        let dir = Scratch::new("symbols");
        // Two threads' jitdumps, the second cut mid-record; a perf map; a jitdump with TSC timestamps.
        let mut first = header(LE, 4242, 0);
        first.extend(load(LE, 100, 1, 0x1000, 0x100, "JSC-DFG: buildMessage#BrhwuA"));
        let mut second = header(LE, 4242, 0);
        second.extend(load(LE, 150, 2, 0x2000, 0x100, "JSC-Baseline: runTurn#CsYAmg"));
        let reuse = load(LE, 300, 2, 0x1000, 0x100, "JSC-FTL: buildMessage#BrhwuA");
        second.extend(&reuse[..30]);
        let mut tsc = header(LE, 4242, JITDUMP_FLAGS_ARCH_TIMESTAMP);
        tsc.extend(load(LE, 987_654_321_000, 3, 0x4000, 0x10, "JSC-Thunk: fromTsc"));
        let first_path = dir.write("jit-1-4242.dump", &first);
        let second_path = dir.write("jit-2-4242.dump", &second);
        let tsc_path = dir.write("jit-3-4242.dump", &tsc);
        let map_path = dir.write("perf-4242.map", b"3000 20 native_stub\n");

        let mut symbols = JitSymbols::new();
        assert!(symbols.add_jitdump(&first_path));
        assert!(!symbols.add_jitdump(&first_path));
        assert!(symbols.add_jitdump(&second_path));
        assert!(symbols.add_jitdump(&tsc_path));
        assert!(symbols.add_perf_map(&map_path));
        assert_eq!(symbols.refresh().unwrap(), 4);
        let name_at = |symbols: &JitSymbols, addr, time| symbols.lookup(addr, time).map(|frame| frame.name.to_string());
        assert_eq!(name_at(&symbols, 0x1010, 400).as_deref(), Some("buildMessage [JS:DFG]"));
        assert_eq!(name_at(&symbols, 0x2010, 400).as_deref(), Some("runTurn [JS:Baseline]"));
        assert_eq!(name_at(&symbols, 0x2010, 149), None);
        assert_eq!(name_at(&symbols, 0x3010, 1).as_deref(), Some("native_stub"));
        assert_eq!(name_at(&symbols, 0x4000, 1).as_deref(), Some("[JSC thunk] fromTsc"), "TSC times count as 0");
        assert_eq!(symbols.lookup(0x3010, 1).unwrap().tier, JitTier::Other);

        // The writers go on: the cut record completes, the perf map grows.
        second.extend(&reuse[30..]);
        fs::write(&second_path, &second).unwrap();
        fs::OpenOptions::new().append(true).open(&map_path).unwrap().write_all(b"5000 8 later_stub\n").unwrap();
        assert_eq!(symbols.refresh().unwrap(), 2);
        assert_eq!(symbols.refresh().unwrap(), 0);
        assert_eq!(name_at(&symbols, 0x1010, 299).as_deref(), Some("buildMessage [JS:DFG]"));
        assert_eq!(name_at(&symbols, 0x1010, 300).as_deref(), Some("buildMessage [JS:FTL]"));
        assert_eq!(name_at(&symbols, 0x5004, 0).as_deref(), Some("later_stub"));
        assert_eq!(symbols.index().len(), 6);

        // A source that goes bad is named in the error; the others are still read.
        let bad_path = dir.write("jit-9-4242.dump", b"garbage!");
        symbols.add_jitdump(&bad_path);
        fs::OpenOptions::new().append(true).open(&map_path).unwrap().write_all(b"6000 8 after_error\n").unwrap();
        let error = format!("{:#}", symbols.refresh().unwrap_err());
        assert!(error.starts_with(&format!("reading {}: not a perf jitdump file", bad_path.display())), "{error}");
        assert_eq!(name_at(&symbols, 0x6000, 0).as_deref(), Some("after_error"));
    }
}
