//! Drains the kernel's events into the ledger, owns the time axis, and decides when the trace ends.
//! It knows nothing of report formats: it hands a [`Trace`] to the report writers.

mod allocator;
pub mod clock;
pub mod death;
pub mod exec;
pub mod markers;
pub mod overhead;
mod periodic;
pub mod stacks;
pub mod status;
pub mod threads;
pub mod timeline;
pub mod turns;
pub mod unwind;
mod walk_rules;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};
use tracer_common::{
    alloc::AllocSite,
    events::{EventKind, ExecPath, InlineStack, LOG_WRITE_MAGIC, LogWrite, MemEvent, StackTop, parts},
};

use crate::{
    ledger::{Backing, Ledger, Source, StackKey, regions::bytes_by_region},
    probes::KernelMaps,
    procfs::{self, ProcessInfo, maps::MemoryMap},
    symbolizer::{
        FrameName, Symbolizer,
        jit_frames::JsCoverage,
        modules::{ModuleMap, is_c_library, is_runtime_module},
    },
    target::Target,
};
use death::{Death, DeathWatch};
use exec::{ExecOf, ExecRecord, ReleasedBlocks};
use markers::TurnPatterns;
use stacks::{EventStack, KernelStackMaps, StackTable};
use timeline::Timeline;
use turns::{PlainMarker, TurnRecord, TurnTracker};

const PROT_EXEC: u32 = 4;

/// How often the collector samples the target's RSS and names new stacks.
const TICK: Duration = Duration::from_millis(200);
/// How often the ring buffer is drained: the kernel wakes the collector only once a good amount has piled
/// up (record.rs), so a trickle of events is read on this timer.
const POLL: Duration = Duration::from_millis(50);
/// How often the status line is updated.
const STATUS: Duration = Duration::from_secs(1);
/// How long to wait for the parent of a target we attached to to reap it, which is when the kernel can
/// tell us how it ended.
const EXIT_STATUS_PATIENCE: Duration = Duration::from_secs(1);
/// How often the target's mappings and log descriptors are read again.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Duration,
    Signal,
    TargetExit,
    /// The target died of a crash signal.
    TargetCrash,
    /// The OOM killer killed the target.
    TargetOom,
}

impl EndReason {
    pub const fn name(self) -> &'static str {
        match self {
            EndReason::Duration => "duration",
            EndReason::Signal => "signal",
            EndReason::TargetExit => "target-exit",
            EndReason::TargetCrash => "target-crash",
            EndReason::TargetOom => "target-oom",
        }
    }
}

/// The signals the tracer answers, caught from before the first probe is attached: SIGINT or SIGTERM at
/// any moment ends the trace with a report instead of killing the tracer; SIGUSR1 writes a snapshot.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    snapshot: Signal,
}

/// The kernel's ring buffer of events, registered with the runtime.
pub type EventRing = AsyncFd<RingBuf<MapData>>;

/// Registers the ring buffer with the runtime (inside it).
pub fn event_ring(events: RingBuf<MapData>) -> Result<EventRing> {
    // SAFETY: the descriptor is owned by the value registered, open until it is dropped.
    Ok(unsafe { AsyncFd::register(events)? })
}

impl Signals {
    /// Resolves on SIGINT or SIGTERM: the user wants the trace to end.
    pub async fn ending(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Must be called inside the tokio runtime.
    pub fn catch() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            snapshot: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Why a snapshot was taken while the trace goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotReason {
    /// SIGUSR1.
    Requested,
    /// The target's RSS crossed this many bytes (`--snapshot-at-rss`).
    Rss(u64),
    /// The periodic checkpoint (`--checkpoint`).
    Checkpoint,
}

impl SnapshotReason {
    pub fn name(self) -> String {
        match self {
            SnapshotReason::Requested => "requested".to_string(),
            SnapshotReason::Rss(bytes) => format!("rss-{}", crate::reports::summary::short_bytes(bytes)),
            SnapshotReason::Checkpoint => "checkpoint".to_string(),
        }
    }

    /// For messages: "snapshot", "checkpoint".
    pub fn describe(self) -> &'static str {
        match self {
            SnapshotReason::Checkpoint => "checkpoint",
            _ => "snapshot",
        }
    }
}

/// A marker line sent from outside the target (`--markers-from`, `dispatch-leaktrace mark`), with when
/// it arrived.
#[derive(Clone, Debug)]
pub struct SentLine {
    pub text: String,
    pub monotonic_ns: u64,
}

impl SentLine {
    pub fn now(text: String) -> Self {
        Self { text, monotonic_ns: clock::monotonic_now_ns() }
    }
}

/// How and when the trace ended.
#[derive(Clone, Copy, Debug)]
pub struct Ending {
    pub reason: EndReason,
    /// How the target ended, when it did.
    pub death: Option<Death>,
    pub at: SystemTime,
}

/// Everything the reports are made from, at the end of the trace or at a snapshot while it runs.
pub struct Trace<'a> {
    pub target: &'a ProcessInfo,
    pub started_at: SystemTime,
    /// The end of the trace, or the moment of the snapshot.
    pub ended_at: SystemTime,
    /// `None` for a snapshot of a trace still running.
    pub ending: Option<Ending>,
    pub ledger: &'a Ledger,
    /// Frame names by stack index, innermost first.
    pub frames: &'a [Vec<FrameName>],
    /// The same as the reports show them, made on first use and shared by every report of the set.
    pub names: std::cell::OnceCell<crate::reports::stacks::StackNames>,
    /// The names of the threads that ran each stack (events only: the allocator's figures are summed in
    /// the kernel, by site).
    pub threads: &'a threads::ThreadNames,
    /// Kernel counters, in `Counter::ALL` order.
    pub kernel_counters: Vec<u64>,
    /// Runs of our programs the kernel skipped, for any process: an upper bound of the target's events lost
    /// that way (see probes/misses.rs).
    pub skipped_program_runs: u64,
    /// Allocator callers without frame pointers whose CFI rule found no room in the kernel's table.
    pub caller_rules_full: u64,
    pub rss_bytes: u64,
    pub events: u64,
    pub timeline: &'a Timeline,
    /// Resident bytes by the kind of mapping they lie in.
    pub regions: BTreeMap<String, u64>,
    pub turns: &'a [TurnRecord],
    pub markers: &'a [PlainMarker],
    pub unmatched_turn_ends: u64,
    /// Allocation sites whose figures in the kernel fell below zero at some point, shown as 0 meanwhile:
    /// a block charged out of its site more often than in. Never expected.
    pub negative_figures: u64,
    /// The tracer's own memory: its budget, the most it used, and how many stacks it held.
    pub memory_budget: u64,
    pub peak_memory: u64,
    pub over_budget: bool,
    /// Byte sampling the collector turned on when the kernel's block table filled up: the interval, and
    /// from when.
    pub blocks_sampled_since: Option<(u64, SystemTime)>,
    /// `--overhead`: the budget and the rates it set.
    pub overhead: Option<&'a overhead::Budget>,
    pub live_stacks: usize,
    /// The execs of the target, each ending an image's accounting.
    pub execs: &'a [ExecRecord],
    /// `-i`: how often the timeline got a point.
    pub interval: Duration,
    /// The tiers each JavaScript function ran in, by frame name.
    pub jit_tiers: &'a BTreeMap<std::sync::Arc<str>, std::collections::BTreeSet<&'static str>>,
    /// How many JavaScript functions got a place in the sources.
    pub javascript: JsCoverage,
    /// Instruction pointers by stack index, innermost first, for reports that give addresses (pprof).
    pub stack_ips: &'a StackTable,
    /// The target's mappings as last read, for reports that place addresses in files (pprof).
    pub mappings: &'a crate::procfs::maps::MemoryMap,
}

impl Trace<'_> {
    /// Every stack's frames as the reports show them, interned once for this trace's report set.
    pub fn names(&self) -> &crate::reports::stacks::StackNames {
        self.names.get_or_init(|| crate::reports::stacks::StackNames::of(self.frames))
    }
}

pub struct Collector {
    maps: KernelMaps,
    target: Target,
    /// The file the target's image was exec'd from, as exec named it (the executable when it was not
    /// exec'd under our eyes): what an exec record says it came from.
    image: PathBuf,
    ledger: Ledger,
    stacks: StackTable,
    modules: ModuleMap,
    symbolizer: Symbolizer,
    frames: Vec<Vec<FrameName>>,
    /// The names of the threads that ran each stack.
    threads: threads::ThreadNames,
    started_at: SystemTime,
    page_size: u64,
    /// The last page fault of each thread, which a [`EventKind::LargePage`] event may widen.
    last_fault: HashMap<u32, (u64, StackKey, u64)>,
    rss_bytes: u64,
    events: u64,
    timeline: Timeline,
    /// `--min-age`: the allocator's outstanding figures count only blocks older than this.
    min_age: Option<Duration>,
    /// `-v`: rare conditions are said as they happen (an unmatched munmap), as the kernel programs say theirs.
    verbose: bool,
    turns: TurnTracker,
    /// How often the timeline gets a point and every stack a snapshot (`-i/--interval`).
    interval: Duration,
    /// Allocator probes are attached: read their figures.
    allocator_traced: bool,
    /// A file was mapped as code since the last look for allocators in new libraries.
    code_mapped: bool,
    site_keys: HashMap<AllocSite, StackKey>,
    /// Allocator callers whose CFI was looked at (see `teach_kernel_the_caller`), and those the kernel's
    /// table had no room for.
    callers_judged: std::collections::HashSet<u64>,
    callers_untaught: u64,
    /// Return addresses of stacks that ended short whose CFI was looked at (see `teach_kernel_the_frames`),
    /// and whether the kernel walks every allocator stack by the rules it was given.
    frames_judged: std::collections::HashSet<u64>,
    /// Files of code whose call sites were looked at whole (see `learn_module`), and whether they could be.
    modules_learned: HashMap<String, bool>,
    walking_by_rules: bool,
    death: DeathWatch,
    /// Kernel (monotonic) times to wall-clock times.
    clock: clock::Clock,
    /// `--checkpoint`: how often the full report set is written aside.
    checkpoint: Option<Duration>,
    /// `--snapshot-at-rss`: a snapshot each time the RSS crosses a multiple of this.
    rss_threshold: Option<u64>,
    next_rss_threshold: u64,
    /// `--max-memory`, and the most the tracer's own anonymous memory has reached.
    memory_budget: u64,
    peak_memory: u64,
    /// What of the budget is taken by mapped pages (the event ring buffer, the executable), as last read:
    /// the rest is room for the tracer's own data.
    mapped_memory: u64,
    /// The stack table's size (held_bytes) that triggers the next eviction.
    next_stack_check: u64,
    /// Past the budget with nothing left to evict (said once).
    over_budget: bool,
    /// The byte sampling turned on when the block table filled up, and since when.
    blocks_sampled_since: Option<(u64, SystemTime)>,
    /// The block table filled while sampling was on already, and the user was told.
    block_table_full_said: bool,
    /// Runs of our programs the kernel skipped, as last read, and before this target (a followed
    /// program's earlier processes).
    skipped_runs: u64,
    skipped_before: u64,
    /// The live status for the terminal, the events counted at its last update, and when the next
    /// checkpoint is due.
    status_line: status::StatusLine,
    status_events: (u64, Instant),
    /// `--overhead`: the budget the programs' run time is kept within.
    overhead: Option<overhead::Budget>,
    next_checkpoint: Option<Instant>,
    /// The target's execs so far, and the allocator blocks of old images they released.
    execs: Vec<ExecRecord>,
    /// A launched target whose exec of the command is still to come in the events: until then they are our
    /// own forked child's (restoring a signal, searching PATH), in the tracer's image. The exec happened
    /// before the collector was made (monotonic ns): any later event is the command's even if its exec event
    /// was lost.
    launch_exec: Option<u64>,
    released_blocks: ReleasedBlocks,
    /// Allocation sites whose kernel figures were ever read below zero (see `Trace::negative_figures`).
    negative_sites: HashSet<AllocSite>,
}

/// The default `--max-memory`.
pub const DEFAULT_MEMORY_BUDGET: u64 = 512 << 20;

/// The default `--interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// What came after an event in the ring buffer, as its `parts` said.
struct Parts<'a> {
    /// The stack's frames, when they came in the event itself (the stack map had no room).
    inline: Option<&'a [u64]>,
    /// The copy of the top of the user stack, taken when the event was in the C runtime.
    top: Option<&'a [u64]>,
    /// The file an exec ran.
    exec_path: Option<PathBuf>,
}

impl Collector {
    /// With `-v`, says a munmap or brk shrink that released nothing the ledger knew (`unmatched_frees` went
    /// past `before`): its range and thread, the first time and then at each power of two, as the kernel
    /// programs say theirs. A run that should have none then shows where to look.
    fn say_unmatched_release(&mut self, before: u64, event: &MemEvent) {
        let after = self.ledger.counters().unmatched_frees;
        if !self.verbose || after == before || after & before != 0 {
            return;
        }
        let (call, range) = if event.kind == EventKind::Brk as u32 {
            ("brk", format!("the break down to {:#x}", event.new_addr))
        } else {
            ("munmap", format!("{:#x}+{:#x}", event.addr, event.len))
        };
        self.status_line.clear();
        eprintln!(
            "dispatch-leaktrace: unmatched release {after}: {call} of {range} by thread {}, nothing known there",
            event.tid
        );
    }

    /// `seed_existing`: the process ran before tracing began, so record what it already had mapped.
    pub fn new(maps: KernelMaps, target: Target, seed_existing: bool) -> Self {
        let page_size = procfs::page_size();
        let pid = target.pid();
        let mut ledger = Ledger::new(page_size);
        if seed_existing {
            if let Ok(map) = MemoryMap::read(pid) {
                let brk =
                    map.iter().find(|m| m.pathname == "[heap]").map(|m| m.end).or_else(|| procfs::start_brk(pid).ok());
                ledger.seed_preexisting(pid, map.iter().map(|m| (m.start, m.end)), brk);
            }
        }
        let modules = ModuleMap::new(pid);
        let skipped_before = maps.skipped_runs();
        let mut collector = Self {
            maps,
            symbolizer: Symbolizer::for_process(pid, &modules),
            modules,
            image: target.info.exe.clone(),
            target,
            ledger,
            stacks: StackTable::default(),
            frames: vec![Vec::new()],
            threads: threads::ThreadNames::default(),
            started_at: SystemTime::now(),
            page_size,
            last_fault: HashMap::new(),
            rss_bytes: 0,
            events: 0,
            timeline: Timeline::default(),
            min_age: None,
            verbose: false,
            turns: TurnTracker::new(None),
            interval: DEFAULT_INTERVAL,
            allocator_traced: false,
            code_mapped: false,
            site_keys: HashMap::new(),
            callers_judged: Default::default(),
            callers_untaught: 0,
            frames_judged: Default::default(),
            modules_learned: HashMap::new(),
            walking_by_rules: false,
            death: DeathWatch::default(),
            clock: clock::Clock::now(),
            checkpoint: None,
            rss_threshold: None,
            next_rss_threshold: u64::MAX,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            peak_memory: 0,
            mapped_memory: 0,
            next_stack_check: DEFAULT_MEMORY_BUDGET / 5 * 2,
            over_budget: false,
            blocks_sampled_since: None,
            block_table_full_said: false,
            skipped_runs: 0,
            skipped_before,
            status_line: status::StatusLine::new(true),
            status_events: (0, Instant::now()),
            overhead: None,
            next_checkpoint: None,
            execs: Vec::new(),
            launch_exec: (!seed_existing).then(clock::monotonic_now_ns),
            released_blocks: ReleasedBlocks::default(),
            negative_sites: HashSet::new(),
        };
        collector.update_runtime_text();
        collector
    }

    /// Names the frames of the stripped executable with an unstripped build's symbols.
    pub fn with_symbols_from(mut self, unstripped: Option<&std::path::Path>) -> Self {
        if let Some(unstripped) = unstripped {
            let executable = self.target.info.exe.clone();
            self.symbolizer.use_symbols_from(&executable, unstripped);
        }
        self
    }

    /// The allocator's probes are attached, so its figures are read from the kernel.
    pub fn with_allocator(mut self, traced: bool) -> Self {
        self.allocator_traced = traced;
        self
    }

    /// Periodic checkpoints and RSS-threshold snapshots.
    pub fn with_snapshots(mut self, checkpoint: Option<Duration>, rss_threshold: Option<u64>) -> Self {
        self.checkpoint = checkpoint;
        self.rss_threshold = rss_threshold;
        self.next_rss_threshold = rss_threshold.unwrap_or(u64::MAX);
        self
    }

    /// `--overhead`: sampling rates kept so that the programs' run time stays within a budget.
    pub fn with_overhead(mut self, budget: Option<overhead::Budget>) -> Self {
        self.overhead = budget;
        self
    }

    /// `-v`: the collector says its rare conditions too (see [`Collector::say_unmatched_release`]).
    pub fn with_verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// A status line on the terminal (or a plain one every minute); none when `quiet`.
    pub fn with_status(mut self, quiet: bool) -> Self {
        self.status_line = status::StatusLine::new(quiet);
        self
    }

    /// The kernel maps back, for the next process of a followed program.
    pub fn into_maps(self) -> KernelMaps {
        self.maps
    }

    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = bytes;
        self.next_stack_check = self.stack_budget();
        self
    }

    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Turns begin and end with the lines that match these patterns.
    pub fn with_turns(mut self, patterns: Option<TurnPatterns>) -> Self {
        self.turns = TurnTracker::new(patterns);
        self.update_log_descriptors();
        self
    }

    /// Tells the kernel which of the target's descriptors lead to its stdout or stderr: 1, 2, and any
    /// duplicate of them (Bun writes process.stdout through a dup of 1).
    fn update_log_descriptors(&mut self) {
        if !self.turns.wants_log_lines() {
            return;
        }
        let pid = self.target.pid();
        let _ = self.maps.add_log_descriptors(pid, &procfs::log_descriptors(pid));
    }

    /// Counts only allocator blocks older than `min_age` as outstanding (recent blocks are rarely leaks).
    pub fn with_min_age(mut self, min_age: Option<Duration>) -> Self {
        self.min_age = min_age;
        self
    }

    /// Collects until the duration ends, a SIGINT or SIGTERM arrives, or the target exits. Snapshots
    /// asked for meanwhile are handed to `on_snapshot`, after every event before them has been counted.
    pub async fn run(
        &mut self,
        duration: Option<Duration>,
        events: &mut EventRing,
        signals: &mut Signals,
        mut sent_markers: Option<&mut mpsc::UnboundedReceiver<SentLine>>,
        mut on_snapshot: impl FnMut(&Trace<'_>, SnapshotReason),
        mut on_new_code: impl FnMut(&MemoryMap) -> bool,
    ) -> Result<Ending> {
        // SAFETY: the descriptor is owned by the value registered, open until it is dropped.
        let target_exit = unsafe { AsyncFd::register(self.target.pidfd.try_clone()?)? };
        let deadline = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(TICK);
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timeline_tick = tokio::time::interval(self.interval);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        let mut status_tick = tokio::time::interval_at(tokio::time::Instant::now() + STATUS, STATUS);
        let checkpoint_every = self.checkpoint.unwrap_or(Duration::from_secs(3600));
        let mut checkpoint_tick = tokio::time::interval(checkpoint_every);
        // The first checkpoint one period from now, not at once (tokio caps the period: no overflow).
        checkpoint_tick.reset();
        self.next_checkpoint = self.checkpoint.and_then(|every| Instant::now().checked_add(every));

        let reason = loop {
            tokio::select! {
                ready = events.readable_mut() => {
                    let mut guard = ready?;
                    self.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = poll.tick() => {
                    self.drain(events.get_mut());
                    // A library loaded since the last look (dlopen) may bring an allocator: the maps were
                    // read again when it was mapped.
                    if std::mem::take(&mut self.code_mapped) && on_new_code(self.modules.snapshot()) {
                        self.allocator_traced = true;
                    }
                }
                _ = tick.tick() => {
                    self.drain(events.get_mut());
                    self.on_tick();
                    if let Some(threshold) = self.crossed_rss_threshold() {
                        self.snapshot(SnapshotReason::Rss(threshold), &mut on_snapshot);
                    }
                }
                _ = housekeeping.tick() => self.housekeeping(),
                _ = status_tick.tick() => self.show_status(),
                _ = timeline_tick.tick() => {
                    self.drain(events.get_mut());
                    self.add_timeline_point();
                }
                Some(line) = async { match sent_markers.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    // Memory events from before the line was sent are counted before it.
                    self.drain(events.get_mut());
                    self.turns.on_sent_line(&line.text, line.monotonic_ns, &mut self.ledger);
                }
                _ = signals.snapshot.recv() => {
                    self.drain(events.get_mut());
                    self.snapshot(SnapshotReason::Requested, &mut on_snapshot);
                }
                _ = checkpoint_tick.tick(), if self.checkpoint.is_some() => {
                    self.next_checkpoint = self.checkpoint.and_then(|every| Instant::now().checked_add(every));
                    self.drain(events.get_mut());
                    self.snapshot(SnapshotReason::Checkpoint, &mut on_snapshot);
                }
                _ = signals.interrupt.recv() => break EndReason::Signal,
                _ = signals.terminate.recv() => break EndReason::Signal,
                _ = &mut deadline => break EndReason::Duration,
                _ = target_exit.readable() => break EndReason::TargetExit,
            }
        };
        self.status_line.clear();
        // Whatever the kernel wrote before the end is still in the ring buffer.
        self.drain(events.get_mut());
        // And markers sent before it may still wait in their channel: the loop's branches are taken in a
        // random order when several are ready, and a Ctrl-C just after a `mark` must not lose the mark.
        if let Some(receiver) = sent_markers.as_mut() {
            while let Ok(line) = receiver.try_recv() {
                self.turns.on_sent_line(&line.text, line.monotonic_ns, &mut self.ledger);
            }
        }
        // Read while the programs are loaded: they go with the probes.
        self.skipped_runs = self.maps.skipped_runs();
        self.sync_allocator_figures();
        let death = (reason == EndReason::TargetExit).then(|| {
            let status = self.target.exit_status(EXIT_STATUS_PATIENCE);
            self.death.verdict(status, SystemTime::now())
        });
        let reason = match death {
            Some(Death::Crash { .. }) => EndReason::TargetCrash,
            Some(Death::Oom { .. }) => EndReason::TargetOom,
            _ => reason,
        };
        if reason == EndReason::TargetExit || self.target.has_exited() {
            self.modules.mark_exited();
        } else {
            self.sample_rss();
        }
        self.name_jit_again(true);
        self.name_new_stacks();
        self.add_timeline_point();
        Ok(Ending { reason, death, at: SystemTime::now() })
    }

    /// The reports' view of the trace: at its end, or now for a snapshot (`ending` None).
    pub fn trace(&self, ending: Option<Ending>) -> Trace<'_> {
        Trace {
            target: &self.target.info,
            started_at: self.started_at,
            ended_at: ending.map_or_else(SystemTime::now, |e| e.at),
            ending,
            ledger: &self.ledger,
            frames: &self.frames,
            names: std::cell::OnceCell::new(),
            threads: &self.threads,
            kernel_counters: self.maps.read_counters(),
            skipped_program_runs: self.skipped_runs.max(self.maps.skipped_runs()).saturating_sub(self.skipped_before),
            caller_rules_full: self.callers_untaught,
            rss_bytes: self.rss_bytes,
            events: self.events,
            timeline: &self.timeline,
            regions: bytes_by_region(
                self.ledger.resident_segments(self.target.pid()),
                self.modules.snapshot(),
                |owner| owner.weight,
            ),
            turns: &self.turns.records,
            markers: &self.turns.markers,
            unmatched_turn_ends: self.turns.unmatched_ends,
            negative_figures: self.negative_sites.len() as u64,
            memory_budget: self.memory_budget,
            peak_memory: self.peak_memory.max(procfs::own_anonymous_rss().unwrap_or(0)),
            over_budget: self.over_budget,
            blocks_sampled_since: self.blocks_sampled_since,
            overhead: self.overhead.as_ref(),
            live_stacks: self.stacks.live(),
            execs: &self.execs,
            interval: self.interval,
            jit_tiers: self.symbolizer.jit.tiers(),
            javascript: JsCoverage {
                unnamed_jit_stacks: self.stacks.jit_unnamed() + self.stacks.jit_pending() as u64,
                ..self.symbolizer.jit.coverage()
            },
            stack_ips: &self.stacks,
            mappings: self.modules.snapshot(),
        }
    }

    /// Keeps the mappings fresh for naming and for splitting memory by region, and follows the
    /// descriptors the target logs through.
    fn housekeeping(&mut self) {
        self.maps.flush_kernel_log();
        self.keep_within_budget();
        self.sample_when_blocks_overflow();
        self.keep_within_overhead();
        if self.allocator_traced {
            self.maps.reap_alloc_calls(self.target.pid());
        }
        if !self.target.has_exited() {
            self.modules.refresh();
            self.update_runtime_text();
            self.update_log_descriptors();
        }
    }

    /// Tells the kernel where the C runtime's code lies in the target, so that it copies the top of the
    /// user stack for events there (and only there).
    fn update_runtime_text(&mut self) {
        // Until the C library's code is mapped, the dynamic loader is still at work: say nothing yet, so that
        // the kernel copies the stack top of every event. (Its first mapping, not executable, came first: ranges
        // told then left its code out, and the events of a launched program's first milliseconds, before this
        // collector read the next mmap, went without a copy; their stacks skipped the caller of a libc wrapper.)
        if !self.modules.snapshot().iter().any(|m| m.is_file() && m.executable && is_c_library(m.file_path())) {
            return;
        }
        let ranges: Vec<(u64, u64)> = self
            .modules
            .snapshot()
            .iter()
            .filter(|m| m.executable && m.is_file() && is_runtime_module(m.file_path()))
            .map(|m| (m.start, m.end))
            .collect();
        let _ = self.maps.set_runtime_text(self.target.pid(), &ranges);
    }

    fn on_tick(&mut self) {
        self.sample_rss();
        self.symbolizer.jit.refresh(&self.modules);
        self.name_jit_again(false);
        self.sync_allocator_figures();
        self.name_new_stacks();
    }

    /// Names JIT frames that had no jitdump record yet when their stacks were taken (see
    /// [`StackTable::name_jit_again`]); `last` at the trace's end, after a last read of the jitdumps.
    fn name_jit_again(&mut self, last: bool) {
        if self.stacks.jit_pending() == 0 {
            return;
        }
        if last {
            self.symbolizer.jit.refresh(&self.modules);
        }
        let (jit, modules) = (&mut self.symbolizer.jit, &mut self.modules);
        let generation = jit.generation();
        self.stacks
            .name_jit_again(clock::monotonic_now_ns(), generation, last, |ips, time_ns| jit.tag(ips, time_ns, modules));
    }

    fn sample_rss(&mut self) {
        if let Ok(rss) = procfs::rss_bytes(self.target.pid(), self.page_size) {
            // A zombie reports 0; keep the last real figure, from just before the exit.
            if rss > 0 {
                self.rss_bytes = rss;
            }
        }
    }

    /// Names stacks while the process's mappings can still be read.
    fn name_new_stacks(&mut self) {
        for stack in self.stacks.take_unnamed() {
            let names = self.symbolizer.name_stack(self.stacks.ips(stack), &mut self.modules);
            if self.frames.len() <= stack as usize {
                self.frames.resize_with(stack as usize + 1, Vec::new);
            }
            self.frames[stack as usize] = names;
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            if self.events.is_multiple_of(1024) && self.stacks.held_bytes() > self.next_stack_check {
                self.evict(false);
            }
            if item.len() == size_of::<LogWrite>() && item[..8] == LOG_WRITE_MAGIC.to_ne_bytes() {
                // SAFETY: the kernel wrote a LogWrite (repr(C), plain data) of this size.
                let write: LogWrite = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                drop(item);
                let len = (write.len as usize).min(write.data.len());
                let truncated = write.count as usize > len;
                self.turns.on_log_write(
                    (write.tgid, write.fd),
                    &write.data[..len],
                    truncated,
                    write.timestamp_ns,
                    &mut self.ledger,
                );
            } else if item.len() >= size_of::<MemEvent>() {
                // SAFETY: the kernel wrote a MemEvent (repr(C), plain data), followed by the parts it names.
                let event: MemEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                let mut offset = size_of::<MemEvent>();
                let top =
                    (event.parts & parts::STACK_TOP != 0 && item.len() >= offset + size_of::<StackTop>()).then(|| {
                        // SAFETY: as above; the length was checked.
                        let top: StackTop = unsafe { std::ptr::read_unaligned(item[offset..].as_ptr().cast()) };
                        offset += size_of::<StackTop>();
                        top
                    });
                let inline =
                    (event.parts & parts::STACK != 0 && item.len() >= offset + size_of::<InlineStack>()).then(|| {
                        // SAFETY: as above; the length was checked.
                        let stack = unsafe { std::ptr::read_unaligned::<InlineStack>(item[offset..].as_ptr().cast()) };
                        offset += size_of::<InlineStack>();
                        stack
                    });
                let exec_path = (event.parts & parts::EXEC_PATH != 0 && item.len() >= offset + size_of::<ExecPath>())
                    .then(|| {
                        let bytes = &item[offset..offset + size_of::<ExecPath>()];
                        let name = &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())];
                        PathBuf::from(std::ffi::OsStr::from_bytes(name))
                    })
                    .filter(|path| !path.as_os_str().is_empty());
                drop(item);
                let inline_ips = inline.as_ref().map(|stack| &stack.ips[..(stack.depth as usize).min(stack.ips.len())]);
                let parts = Parts { inline: inline_ips, top: top.as_ref().map(|top| &top.words[..]), exec_path };
                self.apply(&event, parts);
            }
        }
        // Events' stacks that ended short teach the kernel's walk at once: a path through code without frame
        // pointers is learned a function per drain (50 ms), not per tick.
        self.teach_kernel_the_frames();
    }

    /// Applies one event, with the parts that came after it.
    fn apply(&mut self, event: &MemEvent, parts: Parts<'_>) {
        let Parts { inline, top, exec_path } = parts;
        self.events += 1;
        let Some(kind) = EventKind::from_u32(event.kind) else { return };
        if let Some(made_at) = self.launch_exec {
            if kind == EventKind::Exec && event.tgid == self.target.pid() {
                self.launch_exec = None;
                // The start of the command, not an exec of the target's: no old image of its to end.
                self.on_exec(event, ExecOf::Launch, exec_path);
                return;
            }
            if event.timestamp_ns <= made_at {
                // Our own code before the command ran, not the target's: nothing of it outlives the exec.
                return;
            }
            self.launch_exec = None;
        }
        match kind {
            EventKind::Mmap => {
                if event.prot & PROT_EXEC != 0 {
                    // New code (a library, a JIT region): read the maps while the process still has them.
                    self.modules.refresh();
                    self.update_runtime_text();
                    self.code_mapped |= event.fd >= 0;
                }
                let key = self.stack_key(event, inline, top, Source::Mmap);
                self.ledger.map(event.tgid, event.addr, event.len, backing_of(event), key);
            }
            EventKind::Munmap => {
                let unmatched = self.ledger.counters().unmatched_frees;
                self.ledger.unmap(event.tgid, event.addr, event.len);
                self.say_unmatched_release(unmatched, event);
            }
            EventKind::Mremap => {
                let key = self.stack_key(event, inline, top, Source::Mmap);
                let (old, new) = ((event.addr, event.len), (event.new_addr, event.new_len));
                self.ledger.remap(event.tgid, event.tid, old, new, event.flags, key);
            }
            EventKind::Brk => {
                let key = self.stack_key(event, inline, top, Source::Brk);
                let unmatched = self.ledger.counters().unmatched_frees;
                self.ledger.brk(event.tgid, event.new_addr, key);
                self.say_unmatched_release(unmatched, event);
            }
            EventKind::MremapBegin => self.ledger.remap_begin(event.tgid, event.tid, event.addr, event.len),
            EventKind::MremapFailed => self.ledger.remap_failed(event.tid),
            EventKind::Madvise => self.ledger.drop_pages(event.tgid, event.addr, event.len),
            EventKind::PageFault => {
                if self.maps_zero_page(event) {
                    self.ledger.zero_page_read();
                    return;
                }
                // The kernel maps this page for our probes at the first hit of one, on whatever stack the
                // target was then: it is ours, not the target's.
                if stacks::is_uprobes_page(event.addr, &self.modules) {
                    self.ledger.uprobe_page_fault();
                    return;
                }
                let key = self.stack_key(event, inline, top, Source::PageFault);
                // `len`: the pages this one stands for, the sampling rate the kernel chose it at.
                self.ledger.fault(event.tgid, event.addr, self.page_size, key, event.len);
                self.last_fault.insert(event.tid, (event.addr, key, event.len));
            }
            EventKind::Signal => self.death.signal(event.addr as i32, event.flags, self.clock.wall(event.timestamp_ns)),
            EventKind::OomVictim => {
                let pid = self.target.pid();
                let ours =
                    event.tid == pid || std::path::Path::new(&format!("/proc/{pid}/task/{}", event.tid)).exists();
                if ours {
                    self.death.oom_killed(self.clock.wall(event.timestamp_ns));
                }
            }
            EventKind::Exec => self.on_exec(event, ExecOf::Target, exec_path),
            EventKind::LargePage => {
                // Follows the fault it belongs to: widen that fault to the block the kernel allocated.
                if let Some((addr, key, weight)) =
                    self.last_fault.remove(&event.tid).filter(|(addr, _, _)| *addr == event.addr)
                {
                    self.ledger.fault(event.tgid, addr, event.len, key, weight);
                }
            }
        }
    }

    /// A read fault on a not-present page of never-written private anonymous memory maps the kernel's zero
    /// page: nothing becomes resident before the first write, which faults again.
    fn maps_zero_page(&mut self, event: &MemEvent) -> bool {
        const PRESENT: u64 = 1;
        const WRITE: u64 = 2;
        if event.flags & (PRESENT | WRITE) != 0 {
            return false;
        }
        let backing = self.ledger.backing_at(event.tgid, event.addr).or_else(|| {
            let mapping = self.modules.lookup(event.addr)?;
            Some(if mapping.is_file() {
                Backing::File
            } else if mapping.shared {
                Backing::SharedAnonymous
            } else {
                Backing::Anonymous
            })
        });
        backing.is_some_and(Backing::reads_zero_page)
    }

    fn stack_key(&mut self, event: &MemEvent, inline: Option<&[u64]>, top: Option<&[u64]>, source: Source) -> StackKey {
        let event_stack = EventStack {
            time_ns: event.timestamp_ns,
            stack_id: event.stack_id,
            inline,
            user_sp: event.user_sp,
            stack_top: top.unwrap_or(&[]),
            caller: None,
            alloc_caller: (event.alloc_caller != 0).then_some(event.alloc_caller),
        };
        let stack = self.stacks.intern_event_stack(
            &KernelStackMaps { ids: &self.maps.stacks, spilled: &self.maps.spilled_stacks },
            &event_stack,
            &mut self.modules,
            &mut self.symbolizer.jit,
        );
        self.threads.note(stack, event.tgid, event.tid);
        StackKey { source, stack }
    }
}

/// What backs a new mapping, from its mmap flags.
fn backing_of(event: &MemEvent) -> Backing {
    const MAP_SHARED: u64 = 0x01;
    const MAP_ANONYMOUS: u64 = 0x20;
    match (event.flags & MAP_ANONYMOUS != 0 || event.fd < 0, event.flags & MAP_SHARED != 0) {
        (true, false) => Backing::Anonymous,
        (true, true) => Backing::SharedAnonymous,
        (false, _) => Backing::File,
    }
}

/// Hands memory freed by an eviction back to the system, so that the RSS (which the budget is checked
/// against) shows it.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap.
    unsafe { libc::malloc_trim(0) };
}
