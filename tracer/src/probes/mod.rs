//! Loads the kernel programs, attaches them, and hands their maps to the collector. Dropping [`Probes`]
//! detaches every program; nothing is pinned, so the kernel also detaches them if this process dies.

pub mod allocators;
mod batch;
pub mod libraries;
pub mod misses;
pub mod placement;
pub mod tracefs;

use anyhow::{Context, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader, VerifierLogLevel,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        BtfTracePoint, ProgramError, TracePoint, UProbe,
        tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use placement::Placement;
use serde::Serialize;
use std::{
    io::IsTerminal,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use tracer_common::{
    alloc::{
        AT_INSTRUCTION, AllocCall, AllocCookie, AllocShape, AllocSite, Block, BlockKey, CallerRule, RuledCode,
        SITES_PAST_THE_TABLE, StackAllocStats,
    },
    events::{InlineStack, Target, stop_at},
    map_names,
};

/// `LEAKTRACE_STOP_AT`: where the benchmark's account of an event's cost stops recording events (see
/// [`stop_at`]); None when not set.
fn stop_at_from_env() -> Result<Option<u32>> {
    let Some(value) = std::env::var_os("LEAKTRACE_STOP_AT") else { return Ok(None) };
    let names = || stop_at::NAMES.map(|(name, _)| name).join(", ");
    let stage = stop_at::NAMES.iter().find(|(name, _)| value.to_str() == Some(*name)).map(|&(_, stage)| stage);
    let stage =
        stage.ok_or_else(|| anyhow!("LEAKTRACE_STOP_AT={}: give one of {}", value.to_string_lossy(), names()))?;
    Ok(Some(stage))
}

/// A map update's flag: only an existing entry.
const BPF_EXIST: u64 = 2;

/// The kernel object built by `cargo xtask build-ebpf` (see build.rs).
static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LEAKTRACE_EBPF_OBJECT"));

/// Syscall tracepoints: (program name in the object, category, event).
const SYSCALL_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_mmap", "syscalls", "sys_enter_mmap"),
    ("sys_exit_mmap", "syscalls", "sys_exit_mmap"),
    ("sys_enter_munmap", "syscalls", "sys_enter_munmap"),
    ("sys_exit_munmap", "syscalls", "sys_exit_munmap"),
    ("sys_enter_mremap", "syscalls", "sys_enter_mremap"),
    ("sys_exit_mremap", "syscalls", "sys_exit_mremap"),
    ("sys_enter_brk", "syscalls", "sys_enter_brk"),
    ("sys_exit_brk", "syscalls", "sys_exit_brk"),
    ("sys_enter_madvise", "syscalls", "sys_enter_madvise"),
    ("sys_exit_madvise", "syscalls", "sys_exit_madvise"),
];

/// User page faults, and page allocations to learn which faults brought in a huge page.
const FAULT_TRACEPOINTS: &[(&str, &str, &str)] =
    &[("page_fault_user", "exceptions", "page_fault_user"), ("mm_page_alloc", "kmem", "mm_page_alloc")];

/// The same hooks as BTF tracepoints (see `faults.rs` in tracer-ebpf): (program name, category, event).
const FAULT_BTF_TRACEPOINTS: &[(&str, &str, &str)] =
    &[("page_fault_user_btf", "exceptions", "page_fault_user"), ("mm_page_alloc_btf", "kmem", "mm_page_alloc")];

/// How the target's image ends: fatal signals, the OOM killer's choice, and exec.
const EXIT_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("signal_deliver", "signal", "signal_deliver"),
    ("mark_victim", "oom", "mark_victim"),
    ("process_exec", "sched", "sched_process_exec"),
];

/// Log writes, for turn markers.
const WRITE_TRACEPOINTS: &[(&str, &str, &str)] =
    &[("sys_enter_write", "syscalls", "sys_enter_write"), ("sys_enter_writev", "syscalls", "sys_enter_writev")];

/// The maps the collector reads and writes, taken out of the loaded object so they outlive the programs.
pub struct KernelMaps {
    /// Traced processes, with what their programs need to know of them (see [`Target`]).
    pub targets: HashMap<MapData, u32, Target>,
    pub stacks: StackTraceMap<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Live allocator blocks: the preallocated table, then the one past it (see [`block_table_entries`]).
    blocks: HashMap<MapData, BlockKey, Block>,
    more_blocks: HashMap<MapData, BlockKey, Block>,
    /// Allocator figures per allocation site.
    pub alloc_stats: HashMap<MapData, AllocSite, StackAllocStats>,
    /// (tgid << 32 | fd) of the descriptors whose writes are log lines.
    pub log_fds: HashMap<MapData, u64, u8>,
    /// `--sample-bytes` for the allocator probes.
    pub sampling: Array<MapData, u64>,
    /// Allocator calls under way, by thread.
    pub alloc_calls: HashMap<MapData, u64, AllocCall>,
    /// `--sample-pages` for the page-fault program.
    pub page_sampling: Array<MapData, u64>,
    /// Allocation stacks whose bucket in the stack map held another stack (see alloc.rs in tracer-ebpf).
    pub spilled_stacks: HashMap<MapData, u32, InlineStack>,
    /// CFI rules of functions without frame pointers, by return address (see alloc.rs in tracer-ebpf).
    pub caller_rules: HashMap<MapData, u64, CallerRule>,
    /// Where those rules are, and whether every frame is looked up (see [`RuledCode`]).
    ruled_code_map: Array<MapData, RuledCode>,
    /// What the kernel was last told in it.
    ruled_code: RuledCode,
    /// The attached programs, whose skipped runs count as losses (see [`misses`]).
    pub program_ids: Vec<u32>,
    /// The kernel programs' log, with `-v`.
    pub kernel_log: Option<aya_log::EbpfLogger<KernelLog>>,
}

/// aya-log's level for the kernel programs' messages with `-v`: warnings (losses as they begin).
const KERNEL_LOG_LEVEL: u8 = 2;

/// Writes the kernel programs' messages to stderr, as the tracer's other messages.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Over the status line, if one is shown; it is drawn again at its next update.
        let erase = if std::io::stderr().is_terminal() { "\r\x1b[2K" } else { "" };
        eprintln!("{erase}dispatch-leaktrace: {}", record.args());
    }

    fn flush(&self) {}
}

impl KernelMaps {
    /// Every live allocator block the kernel holds, in both tables, read as it goes (millions of them).
    pub fn live_blocks(&self) -> impl Iterator<Item = (BlockKey, Block)> + '_ {
        self.blocks.iter().chain(self.more_blocks.iter()).filter_map(Result::ok)
    }

    /// Takes a live block out of whichever table holds it.
    pub fn remove_block(&mut self, key: &BlockKey) {
        if self.blocks.remove(key).is_err() {
            let _ = self.more_blocks.remove(key);
        }
    }

    /// The allocator's figures of every site, read in batches (they are read every tick).
    pub fn read_alloc_stats(&self) -> Vec<(AllocSite, StackAllocStats)> {
        batch::read_all(&self.alloc_stats)
    }

    /// Writes what the kernel programs logged since the last call (nothing without `-v`).
    pub fn flush_kernel_log(&mut self) {
        if let Some(logger) = &mut self.kernel_log {
            logger.flush();
        }
    }

    pub fn add_target(&mut self, tgid: u32) -> Result<()> {
        self.targets.insert(tgid, Target::default(), 0).context("cannot add the target to the kernel's target map")
    }

    /// Descriptors of `tgid` whose writes are log lines (see `writes.rs`).
    pub fn add_log_descriptors(&mut self, tgid: u32, fds: &[u32]) -> Result<()> {
        for fd in fds {
            self.log_fds.insert((tgid as u64) << 32 | *fd as u64, 1, 0).context("cannot add a log descriptor")?;
        }
        Ok(())
    }

    /// Allocator byte sampling: a mean of `bytes` between recorded blocks (0: record every block).
    pub fn set_sample_bytes(&mut self, bytes: u64) -> Result<()> {
        self.sampling.set(0, bytes, 0).context("cannot set the sampling interval")
    }

    /// The byte sampling interval in force (0: every block recorded).
    pub fn sample_bytes(&self) -> u64 {
        self.sampling.get(&0, 0).unwrap_or(0)
    }

    /// The CFI rules and the walk by rules are about one image's code: another process, or the image an
    /// exec brings, has its own.
    pub fn forget_code_rules(&mut self) {
        let callers: Vec<u64> = self.caller_rules.keys().filter_map(Result::ok).collect();
        for caller in callers {
            let _ = self.caller_rules.remove(&caller);
        }
        self.ruled_code = RuledCode::default();
        let _ = self.ruled_code_map.set(0, self.ruled_code, 0);
    }

    /// Gives the kernel the CFI rule at `key` (a return address, or an instruction with `AT_INSTRUCTION`),
    /// which lies in the executable mapping [start, end): the rule first, then the mapping among those the
    /// kernel looks rules up in, so that a walk between the two only misses the rule, as before it was given.
    pub fn add_caller_rule(&mut self, key: u64, rule: CallerRule, (start, end): (u64, u64)) -> Result<()> {
        self.caller_rules.insert(key, rule, 0).context("cannot add a rule to the kernel's table")?;
        if !self.ruled_code.contains(key & !AT_INSTRUCTION) {
            self.ruled_code.add(start, end);
            self.ruled_code_map.set(0, self.ruled_code, 0).context("cannot update where the kernel's rules are")?;
        }
        Ok(())
    }

    /// From now on the kernel walks every allocator stack by the CFI rules it was given (the program has
    /// code without frame pointers of its own).
    pub fn walk_by_rules(&mut self) -> Result<()> {
        self.ruled_code.every_frame = 1;
        self.ruled_code_map.set(0, self.ruled_code, 0).context("cannot turn on the walk by rules")
    }

    /// Page-fault sampling: one page in `pages` (a power of two; 1: every page).
    pub fn set_sample_pages(&mut self, pages: u64) -> Result<()> {
        self.page_sampling.set(0, pages.saturating_sub(1), 0).context("cannot set the page sampling")
    }

    /// The C runtime's code ranges in `tgid` (the first [`tracer_common::events::RUNTIME_TEXT_RANGES`]). Only a
    /// process still in the target map is updated: one that left it (gone, or forgotten) is not traced again.
    pub fn set_runtime_text(&mut self, tgid: u32, ranges: &[(u64, u64)]) -> Result<()> {
        let mut target = Target { runtime_text_known: 1, ..Target::default() };
        for (slot, (start, end)) in target.runtime_text.iter_mut().zip(ranges) {
            *slot = [*start, *end];
        }
        self.targets.insert(tgid, target, BPF_EXIST).context("cannot update the runtime code ranges")
    }

    /// Forgets a process that is gone, so that the next one (a followed program's restart) starts clean:
    /// its entry in every per-process map, the allocator's blocks and figures, the stacks, the counters.
    pub fn forget_target(&mut self, tgid: u32) -> Result<()> {
        let _ = self.targets.remove(&tgid);
        let log_keys: Vec<u64> =
            self.log_fds.keys().filter_map(Result::ok).filter(|k| (k >> 32) as u32 == tgid).collect();
        for key in log_keys {
            let _ = self.log_fds.remove(&key);
        }
        let blocks: Vec<BlockKey> = self.live_blocks().map(|(key, _)| key).filter(|key| key.tgid == tgid).collect();
        for key in blocks {
            self.remove_block(&key);
        }
        let calls: Vec<u64> =
            self.alloc_calls.keys().filter_map(Result::ok).filter(|k| (k >> 32) as u32 == tgid).collect();
        for key in calls {
            let _ = self.alloc_calls.remove(&key);
        }
        let sites: Vec<AllocSite> = self.alloc_stats.keys().filter_map(Result::ok).collect();
        for site in sites {
            let _ = self.alloc_stats.remove(&site);
        }
        let spilled: Vec<u32> = self.spilled_stacks.keys().filter_map(Result::ok).collect();
        for id in spilled {
            let _ = self.spilled_stacks.remove(&id);
        }
        self.forget_code_rules();
        let stack_ids: Vec<u32> = self.stacks.stack_ids().filter_map(Result::ok).collect();
        for id in stack_ids {
            let _ = self.stacks.remove(&id);
        }
        for counter in tracer_common::counters::Counter::ALL {
            let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; aya::util::nr_cpus().map_err(|(_, e)| e)?])?;
            self.counters.set(counter as u32, zeros, 0).context("cannot reset the counters")?;
        }
        Ok(())
    }

    /// Removes the allocator calls of `tgid`'s threads that have died inside one (an exception or a
    /// longjmp out of it, then the thread's end): a plain map would keep them for ever.
    pub fn reap_alloc_calls(&mut self, tgid: u32) {
        let dead: Vec<u64> = self
            .alloc_calls
            .keys()
            .filter_map(Result::ok)
            .filter(|key| (key >> 32) as u32 == tgid)
            .filter(|key| !std::path::Path::new(&format!("/proc/{tgid}/task/{}", *key as u32)).exists())
            .collect();
        for key in dead {
            let _ = self.alloc_calls.remove(&key);
        }
    }

    /// Runs of our programs the kernel skipped so far.
    pub fn skipped_runs(&self) -> u64 {
        misses::skipped_runs(&self.program_ids)
    }

    /// Each counter summed over the CPUs, in [`tracer_common::counters::Counter::ALL`] order.
    pub fn read_counters(&self) -> Vec<u64> {
        tracer_common::counters::Counter::ALL
            .iter()
            .map(|counter| self.counters.get(&(*counter as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0))
            .collect()
    }
}

/// What was attached where, for the report and for checking that everything is detached afterwards.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeRecord {
    pub kind: &'static str,
    pub attach_point: String,
    pub program_id: u32,
    /// For uprobes: the ELF object, the function, its allocator family and the file offset probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
    /// For allocator entry probes: where in the function the probe went, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

impl ProbeRecord {
    /// A program on the tracepoint `category/event`, classic or BTF (`kind`).
    fn tracepoint(kind: &'static str, category: &str, event: &str, program_id: u32) -> Self {
        Self {
            kind,
            attach_point: format!("{category}/{event}"),
            program_id,
            object: None,
            symbol: None,
            family: None,
            file_offset: None,
            placement: None,
        }
    }
}

/// What was attached, for the reports.
#[derive(Clone, Debug, Default)]
pub struct ProbeInfo {
    pub records: Vec<ProbeRecord>,
    /// The allocator entry points found, per object; `None` when allocator tracing was off.
    pub allocators: Option<allocators::AllocatorSummary>,
    /// `--sample-bytes`: allocator figures are estimates from blocks sampled by bytes.
    pub sample_bytes: Option<u64>,
    /// `--sample-pages`.
    pub sample_pages: Option<u64>,
}

/// An allocator function to probe.
pub struct AllocatorProbe<'a> {
    pub object: &'a Path,
    pub symbol: &'a str,
    pub family: &'static str,
    pub file_offset: u64,
    /// The function's size (0: unknown), for decoding it.
    pub size: u64,
    pub cookie: AllocCookie,
}

pub struct Probes {
    ebpf: Ebpf,
    pub records: Vec<ProbeRecord>,
    links: Vec<Link>,
}

/// What one live block costs in the kernel's table (key, value and the hash element around them), as the
/// kernel accounts it: 134,218,864 bytes for 1,048,576 entries.
pub const BLOCK_ENTRY_BYTES: u64 = 128;

/// The live allocator blocks the kernel's tables hold: half of the memory budget (`--max-memory`), the
/// other half being the collector's.
pub fn block_table_entries(max_memory: u64) -> u32 {
    (max_memory / 2 / BLOCK_ENTRY_BYTES).clamp(1 << 12, u32::MAX as u64 >> 1) as u32
}

/// Of [`block_table_entries`], those in the preallocated table, which costs its memory from the start but
/// about 500 ns less per malloc (alloc.rs in tracer-ebpf): an eighth of them, a sixteenth of the budget
/// (262,144 blocks, 32 MiB, by default). The rest are in a table that takes memory only for live blocks.
pub fn preallocated_block_entries(max_memory: u64) -> u32 {
    block_table_entries(max_memory) / 8
}

/// What one allocation site costs in the kernel's table of sites (key, figures and the hash element).
pub const SITE_ENTRY_BYTES: u64 = 128;

/// The allocation sites (distinct stack and caller) the kernel's table holds: a sixteenth of the memory
/// budget (262,144 by default; jq on a 20 MB file makes about 40,000). Past it, blocks are charged to one
/// site that stands for the rest (`site_table_full`). Not preallocated either.
pub fn site_table_entries(max_memory: u64) -> u32 {
    // For the tests: a table of a few sites, so that it fills.
    if let Some(entries) = std::env::var("LEAKTRACE_SITE_TABLE_ENTRIES").ok().and_then(|text| text.parse().ok()) {
        return entries;
    }
    (max_memory / 16 / SITE_ENTRY_BYTES).clamp(1 << 14, 1 << 22) as u32
}

/// The kernel's event ring buffer, in bytes: a sixteenth of the memory budget, a power of two from 4 MiB to
/// 32 MiB (32 MiB by default, 8 MiB at 128M). The tracer maps it twice over (the kernel's trick for records
/// that wrap), so it weighs twice its size in the tracer's RSS once events have gone round it. A burst it
/// cannot hold is counted (`lost_events`).
pub fn ring_buffer_bytes(max_memory: u64) -> u32 {
    let share = (max_memory / 16).clamp(4 << 20, 32 << 20);
    // A power of two at most the share, as the kernel requires.
    (1u64 << (u64::BITS - 1 - share.leading_zeros())) as u32
}

/// What one stack costs in the kernel's stack maps: its 127 frames and the element around them.
pub const STACK_ENTRY_BYTES: u64 = 1024;

/// The stacks the kernel's stack map holds (`bpf_get_stackid`'s buckets, preallocated, a power of two), and
/// the stacks its spill table holds beside it (a stack whose bucket another took, made as they come): each
/// a sixteenth of the memory budget, 32,768 and 32,768 by default. jq reading a 20 MB file makes about
/// 40,000 distinct allocation stacks; past both, a stack is unknown (`map_full`).
pub fn stack_table_entries(max_memory: u64) -> (u32, u32) {
    let share = max_memory / 16 / STACK_ENTRY_BYTES;
    let buckets = share.clamp(1 << 12, 1 << 18);
    // A power of two at most the share: the kernel rounds the stack map's size up to one.
    let buckets = 1u64 << (u64::BITS - 1 - buckets.leading_zeros());
    (buckets as u32, share.clamp(1 << 12, 1 << 20) as u32)
}

/// An attachment, kept so that detaching can be done in parallel (see [`Probes::detach`]).
enum Link {
    TracePoint(&'static str, TracePointLinkId),
    BtfTracePoint(&'static str, BtfTracePointLinkId),
    UProbe(&'static str, UProbeLinkId),
}

impl Probes {
    /// The ids of every program loaded, attached or not (an unattached one has not run).
    pub fn all_program_ids(&self) -> Vec<u32> {
        self.ebpf.programs().filter_map(|(_, program)| program.info().ok()).map(|info| info.id()).collect()
    }

    /// Loads the kernel object with its tables sized from the memory budget (see [`block_table_entries`],
    /// [`site_table_entries`] and [`stack_table_entries`]), and takes its maps out; the event ring buffer
    /// comes apart, for the collector to poll. With `kernel_log`, the programs' rare conditions (losses as
    /// they begin) come through aya-log; without, the programs do not even write them.
    pub fn load(max_memory: u64, kernel_log: bool) -> Result<(Self, KernelMaps, RingBuf<MapData>)> {
        let mut loader = EbpfLoader::new();
        let preallocated = preallocated_block_entries(max_memory);
        loader.map_max_entries(map_names::ALLOCS, preallocated);
        loader.map_max_entries(map_names::MORE_ALLOCS, block_table_entries(max_memory) - preallocated);
        loader.map_max_entries(map_names::ALLOC_STATS, site_table_entries(max_memory));
        let (stack_buckets, spilled_stacks) = stack_table_entries(max_memory);
        loader.map_max_entries(map_names::STACKS, stack_buckets);
        loader.map_max_entries(map_names::SPILLED_STACKS, spilled_stacks);
        loader.map_max_entries(map_names::EVENTS, ring_buffer_bytes(max_memory));
        let stop_at = stop_at_from_env()?;
        if let Some(stage) = &stop_at {
            loader.override_global("STOP_AT", stage, true);
        }
        let log_level: u8 = if kernel_log { KERNEL_LOG_LEVEL } else { 0 };
        loader.override_global(aya_log::LEVEL, &log_level, true);
        if std::env::var_os("LEAKTRACE_VERIFIER_LOG").is_some() {
            loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        }
        // For the tests: fewer slots for the allocator calls under way (0: one, shared by every thread), so
        // that their hash-map fallback runs (see alloc.rs in tracer-ebpf).
        let slot_mask: Option<u32> = std::env::var("LEAKTRACE_CALL_SLOT_MASK").ok().and_then(|text| text.parse().ok());
        if let Some(mask) = &slot_mask {
            loader.override_global("CALL_SLOT_MASK", mask, true);
        }
        // For the tests and the benchmark: allocator stacks by the kernel's walk, not ours, to compare them.
        if std::env::var_os("LEAKTRACE_KERNEL_WALK").is_some() {
            loader.override_global("KERNEL_WALK", &1u32, true);
        }
        // For the tests: a stack map of a few buckets, so that stacks must share them.
        if let Some(entries) = std::env::var("LEAKTRACE_STACK_MAP_ENTRIES").ok().and_then(|text| text.parse().ok()) {
            loader.map_max_entries(map_names::STACKS, entries);
        }
        let mut ebpf = loader.load(KERNEL_OBJECT).map_err(explain_load_error)?;
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("the kernel object has no map {name}"));
        let mut maps = KernelMaps {
            targets: HashMap::try_from(take(map_names::TARGETS)?)?,
            stacks: StackTraceMap::try_from(take(map_names::STACKS)?)?,
            counters: PerCpuArray::try_from(take(map_names::COUNTERS)?)?,
            blocks: HashMap::try_from(take(map_names::ALLOCS)?)?,
            more_blocks: HashMap::try_from(take(map_names::MORE_ALLOCS)?)?,
            alloc_stats: HashMap::try_from(take(map_names::ALLOC_STATS)?)?,
            log_fds: HashMap::try_from(take(map_names::LOG_FDS)?)?,
            sampling: Array::try_from(take(map_names::SAMPLING)?)?,
            alloc_calls: HashMap::try_from(take(map_names::ALLOC_CALLS)?)?,
            page_sampling: Array::try_from(take(map_names::PAGE_SAMPLING)?)?,
            spilled_stacks: HashMap::try_from(take(map_names::SPILLED_STACKS)?)?,
            caller_rules: HashMap::try_from(take(map_names::CALLER_RULES)?)?,
            ruled_code_map: Array::try_from(take(map_names::RULED_CODE)?)?,
            ruled_code: RuledCode::default(),
            program_ids: Vec::new(),
            kernel_log: None,
        };
        let events = RingBuf::try_from(take(map_names::EVENTS)?)?;
        if kernel_log {
            let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog)
                .context("cannot read the kernel programs' log")?;
            maps.kernel_log = Some(logger);
        }
        // Always in the table, so that a block charged to it is charged out of it again.
        maps.alloc_stats
            .insert(SITES_PAST_THE_TABLE, StackAllocStats::default(), 0)
            .context("cannot prepare the kernel's table of allocation sites")?;
        Ok((Self { ebpf, records: Vec::new(), links: Vec::new() }, maps, events))
    }

    /// Attaches the mmap, munmap, mremap, brk and madvise tracepoints.
    pub fn attach_syscalls(&mut self) -> Result<()> {
        self.attach_tracepoints(SYSCALL_TRACEPOINTS)?;
        self.attach_tracepoints(EXIT_TRACEPOINTS)
    }

    /// Attaches the write and writev tracepoints that capture the target's log lines.
    pub fn attach_writes(&mut self) -> Result<()> {
        self.attach_tracepoints(WRITE_TRACEPOINTS)
    }

    /// Attaches the user page-fault hooks: as BTF tracepoints when the kernel describes itself in BTF
    /// (cheaper on every fault), else as classic tracepoints. `LEAKTRACE_NO_BTF` set in the environment
    /// forces the classic ones (the tests run both).
    pub fn attach_faults(&mut self) -> Result<()> {
        let btf = if std::env::var_os("LEAKTRACE_NO_BTF").is_some() { None } else { Btf::from_sys_fs().ok() };
        match btf {
            Some(btf) => self.attach_btf_tracepoints(FAULT_BTF_TRACEPOINTS, &btf),
            None => self.attach_tracepoints(FAULT_TRACEPOINTS),
        }
    }

    fn attach_btf_tracepoints(&mut self, tracepoints: &[(&'static str, &str, &str)], btf: &Btf) -> Result<()> {
        for (program_name, category, event) in tracepoints {
            let program: &mut BtfTracePoint = self
                .ebpf
                .program_mut(program_name)
                .ok_or_else(|| anyhow!("the kernel object has no program {program_name}"))?
                .try_into()?;
            program.load(event, btf).map_err(|e| explain_program_error(program_name, e))?;
            let link = program.attach().map_err(|e| explain_program_error(program_name, e))?;
            self.links.push(Link::BtfTracePoint(program_name, link));
            let program_id = program.info().map(|info| info.id()).unwrap_or(0);
            self.records.push(ProbeRecord::tracepoint("tp_btf", category, event, program_id));
        }
        Ok(())
    }

    fn attach_tracepoints(&mut self, tracepoints: &[(&'static str, &str, &str)]) -> Result<()> {
        for (program_name, category, event) in tracepoints {
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(program_name)
                .ok_or_else(|| anyhow!("the kernel object has no program {program_name}"))?
                .try_into()?;
            program.load().map_err(|e| explain_program_error(program_name, e))?;
            let link = program.attach(category, event).map_err(|e| explain_program_error(program_name, e))?;
            self.links.push(Link::TracePoint(program_name, link));
            let program_id = program.info().map(|info| info.id()).unwrap_or(0);
            self.records.push(ProbeRecord::tracepoint("tracepoint", category, event, program_id));
        }
        Ok(())
    }

    /// Attaches the allocator entry program to each function, and the return program to each whose
    /// result matters, for process `pid` only.
    pub fn attach_allocator<'a>(
        &mut self,
        pid: u32,
        probes: impl IntoIterator<Item = AllocatorProbe<'a>>,
    ) -> Result<()> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?);
        const PROGRAMS: [(&str, &str); 2] = [("alloc_entry", "uprobe"), ("alloc_return", "uretprobe")];
        for (program_name, _) in PROGRAMS {
            let program: &mut UProbe = self
                .ebpf
                .program_mut(program_name)
                .ok_or_else(|| anyhow!("the kernel object has no program {program_name}"))?
                .try_into()?;
            if program.fd().is_err() {
                program.load().map_err(|e| explain_program_error(program_name, e))?;
            }
        }
        for probe in probes {
            let code = placement::function_code(probe.object, probe.file_offset, probe.size);
            let entry_placement = if probe.cookie.shape == AllocShape::Free {
                placement::place_free(&code, probe.cookie.ptr_arg)
            } else {
                placement::place(&code)
            };
            for (program_name, kind) in PROGRAMS {
                // No return probe where the result does not matter, nor on a function that may throw.
                if kind == "uretprobe" && (!probe.cookie.shape.needs_return_probe() || probe.cookie.no_return) {
                    continue;
                }
                // A return probe takes the return address from the top of the stack when it is hit: only a
                // landing pad may be passed, never a null test (a NULL free would keep a hooked return).
                let placement = if kind == "uprobe" { entry_placement.clone() } else { placement::place(&code) };
                let file_offset = probe.file_offset + placement.offset;
                // cannot fail: both programs were found (or the error returned) in the loop above
                let program: &mut UProbe = self.ebpf.program_mut(program_name).expect("loaded above").try_into()?;
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(file_offset),
                    cookie: Some(probe.cookie.encode()),
                };
                let link = program
                    .attach(point, probe.object, scope)
                    .map_err(|e| anyhow!("cannot attach to {} in {}: {e}", probe.symbol, probe.object.display()))?;
                self.links.push(Link::UProbe(program_name, link));
                let program_id = program.info().map(|info| info.id()).unwrap_or(0);
                self.records.push(ProbeRecord {
                    kind,
                    attach_point: format!("{}:{}", probe.object.display(), probe.symbol),
                    program_id,
                    object: Some(probe.object.to_path_buf()),
                    symbol: Some(probe.symbol.to_string()),
                    family: Some(probe.family),
                    file_offset: Some(file_offset),
                    placement: Some(placement),
                });
            }
        }
        Ok(())
    }
}

impl Probes {
    /// Detaches the allocator probes (they were for one process), keeping the tracepoints.
    pub fn detach_allocator(&mut self) {
        let (uprobes, others): (Vec<Link>, Vec<Link>) =
            std::mem::take(&mut self.links).into_iter().partition(|link| matches!(link, Link::UProbe(..)));
        self.links = uprobes;
        self.detach_links();
        self.links = others;
        self.records.retain(|record| !record.kind.contains("uprobe"));
    }

    /// Detaches everything. Each detach waits for an RCU grace period (about 0.1 s here), so the links
    /// are dropped on threads of their own, where the waits overlap, instead of one after the other.
    pub fn detach(mut self) {
        self.detach_links();
    }

    /// Detaches everything, keeping the loaded programs (and their maps).
    pub fn detach_all(&mut self) {
        self.detach_links();
    }

    fn detach_links(&mut self) {
        let mut owned: Vec<Box<dyn Send>> = Vec::new();
        for link in std::mem::take(&mut self.links) {
            match link {
                Link::TracePoint(name, id) => {
                    let program: Option<&mut TracePoint> = self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
                    if let Some(link) = program.and_then(|p| p.take_link(id).ok()) {
                        owned.push(Box::new(link));
                    }
                }
                Link::BtfTracePoint(name, id) => {
                    let program: Option<&mut BtfTracePoint> =
                        self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
                    if let Some(link) = program.and_then(|p| p.take_link(id).ok()) {
                        owned.push(Box::new(link));
                    }
                }
                Link::UProbe(name, id) => {
                    let program: Option<&mut UProbe> = self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
                    if let Some(link) = program.and_then(|p| p.take_link(id).ok()) {
                        owned.push(Box::new(link));
                    }
                }
            }
        }
        std::thread::scope(|scope| {
            for link in owned {
                scope.spawn(move || drop(link));
            }
        });
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_links();
    }
}

fn is_permission_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // EACCES is also what the verifier answers a program it rejects: only EPERM means privileges.
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        source = error.source();
    }
    false
}

const NEED_PRIVILEGES: &str = "permission denied loading eBPF programs: run dispatch-leaktrace as root (sudo), or give it CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE";

fn explain_load_error(error: EbpfError) -> anyhow::Error {
    if is_permission_error(&error) {
        anyhow!(NEED_PRIVILEGES)
    } else {
        anyhow!("cannot load the eBPF programs into this kernel: {error}")
    }
}

fn explain_program_error(program: &str, error: ProgramError) -> anyhow::Error {
    if is_permission_error(&error) && !matches!(error, ProgramError::LoadError { .. }) {
        return anyhow!(NEED_PRIVILEGES);
    }
    match &error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            if let Some(path) = std::env::var_os("LEAKTRACE_VERIFIER_LOG") {
                let _ = std::fs::write(path, &log);
            }
            let last = log.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("");
            anyhow!("the kernel refused program {program} ({io_error}); the verifier said: {last}")
        }
        _ => anyhow!("cannot attach program {program}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_tables_are_sized_from_the_memory_budget() {
        const MIB: u64 = 1 << 20;
        assert_eq!(block_table_entries(512 * MIB), 2_097_152);
        assert_eq!(preallocated_block_entries(512 * MIB), 262_144);
        assert_eq!(preallocated_block_entries(16 * MIB), 8_192);
        assert_eq!(site_table_entries(512 * MIB), 262_144);
        assert_eq!(stack_table_entries(512 * MIB), (32_768, 32_768));
        // A budget that is no power of two gets the stack map's buckets below its share, never above.
        assert_eq!(stack_table_entries(3 * 512 * MIB), (65_536, 98_304));
        // Small budgets keep a floor, large ones a ceiling.
        assert_eq!((site_table_entries(MIB), stack_table_entries(MIB)), (16_384, (4_096, 4_096)));
        assert_eq!(stack_table_entries(1 << 50).0, 1 << 18);
        assert_eq!(ring_buffer_bytes(512 * MIB), 32 << 20);
        assert_eq!(ring_buffer_bytes(128 * MIB), 8 << 20);
        assert_eq!(ring_buffer_bytes(100 * MIB), 4 << 20);
        assert_eq!(ring_buffer_bytes(16 * MIB), 4 << 20);
        assert_eq!(ring_buffer_bytes(1 << 40), 32 << 20);
    }
}
