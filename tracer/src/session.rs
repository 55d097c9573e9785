//! One tracing session from start to end: find or launch the target, attach, collect, detach, report.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};

use crate::{
    cli::Cli,
    collector::{
        self, Collector, EndReason, EventRing, SentLine, Signals, SnapshotReason, Trace, markers::TurnPatterns,
    },
    inputs::{self, MarkerSource},
    privileges,
    probes::{
        AllocatorProbe, KernelMaps, ProbeInfo, Probes,
        allocators::{self, DiscoveryOptions},
        libraries, tracefs,
    },
    procfs::{
        maps::MemoryMap,
        processes::{self, ProcessId, Program},
    },
    reports::{self, ReportOptions, output::OutputDir, segments::Segment, snapshots, summary},
    target::{HeldChild, Target},
};

/// A target found or launched, not yet running under the probes.
enum Pending {
    Existing(Target),
    Launched(HeldChild),
}

impl Pending {
    fn pid(&self) -> u32 {
        match self {
            Pending::Existing(target) => target.pid(),
            Pending::Launched(child) => child.pid,
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    privileges::check()?;
    let tracefs_root = tracefs::ensure_mounted()?;
    tracefs::check_layouts(&tracefs_root)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut signals = {
        let _context = runtime.enter();
        Signals::catch()?
    };
    let patterns = match (&cli.turn_start, &cli.turn_end) {
        (Some(start), Some(end)) => Some(TurnPatterns::new(start, end)?),
        _ => None,
    };
    // Until a process is traced, `-d` counts from now (waiting for one with --follow); from the moment the
    // first is traced, it counts from then: attaching to a large program takes time of its own.
    let mut deadline = cli.deadline(Instant::now());
    let program = program_of(&cli)?;

    let first = match (cli.pid, &program) {
        (Some(pid), _) => Pending::Existing(Target::existing(pid)?),
        (None, Some(program)) if cli.follow => {
            eprintln!("dispatch-leaktrace: waiting for a process of {}", program.describe());
            match runtime.block_on(wait_for_process(program, &[], &mut signals, deadline)) {
                Some(target) => Pending::Existing(target),
                None => bail!("no process of {} started before the end", program.describe()),
            }
        }
        (None, Some(program)) => match processes::find(program, &[]) {
            Some(found) => Pending::Existing(Target::existing(found.pid)?),
            None => bail!(
                "no running process of {}: check the name (add --follow to wait for one to start)",
                program.describe()
            ),
        },
        (None, None) => Pending::Launched(HeldChild::spawn(&cli.command)?),
    };
    let _claim = inputs::control::claim(first.pid())?;
    let output = cli.output.clone().unwrap_or_else(|| default_output(first.pid()));
    let out = OutputDir::create(&output, reports::clear_earlier_run)?;

    let (mut probes, mut maps, events) = Probes::load(cli.max_memory, cli.verbose)?;
    if let Some(bytes) = cli.sample_bytes {
        maps.set_sample_bytes(bytes)?;
    }
    if let Some(pages) = cli.sample_pages {
        maps.set_sample_pages(pages)?;
    }
    probes.attach_syscalls()?;
    if !cli.no_faults {
        probes.attach_faults()?;
    }
    if patterns.is_some() {
        probes.attach_writes()?;
    }
    let (marker_sender, marker_receiver) = tokio::sync::mpsc::unbounded_channel();
    let events = {
        let _context = runtime.enter();
        if let Some(source) = &cli.markers_from {
            inputs::spawn_reader(MarkerSource::parse(source), marker_sender.clone())?;
        }
        collector::event_ring(events)?
    };
    let mut session = Session {
        cli: &cli,
        runtime,
        probes,
        events,
        signals,
        marker_sender,
        marker_receiver,
        patterns,
        report_options: ReportOptions {
            compare: cli.compare.clone(),
            warmup: cli.warmup,
            turn_patterns: cli.turn_start.clone().zip(cli.turn_end.clone()),
        },
        out,
        segments: Vec::new(),
    };

    let mut seen = Vec::new();
    let mut pending = first;
    let mut first_trace = true;
    loop {
        seen.extend(processes::process_id(pending.pid()));
        let (reason, returned) = session.trace(pending, maps, &mut deadline, std::mem::take(&mut first_trace))?;
        maps = returned;
        let target_gone = matches!(reason, EndReason::TargetExit | EndReason::TargetCrash | EndReason::TargetOom);
        let Some(program) = program.as_ref().filter(|_| cli.follow && target_gone) else { break };
        eprintln!("dispatch-leaktrace: waiting for the next process of {}", program.describe());
        match session.runtime.block_on(wait_for_process(program, &seen, &mut session.signals, deadline)) {
            Some(target) => pending = Pending::Existing(target),
            None => break,
        }
    }
    session.probes.detach();
    Ok(())
}

/// The program `--exe`, `--comm` or `--follow` names: with --follow and only --pid, the pid's executable.
fn program_of(cli: &Cli) -> Result<Option<Program>> {
    Ok(match (&cli.exe, &cli.comm, cli.pid) {
        (Some(exe), _, _) => Some(Program::Exe(exe.canonicalize().map_err(|error| {
            anyhow::anyhow!("--exe {}: {error}: give the path of the program's executable", exe.display())
        })?)),
        (None, Some(comm), _) => Some(Program::Comm(comm.clone())),
        (None, None, Some(pid)) if cli.follow => Some(Program::Exe(Target::existing(pid)?.info.exe)),
        _ => None,
    })
}

/// Waits for a process of `program` that is not in `seen`; `None` when the trace must end first (Ctrl-C,
/// SIGTERM or the end of --duration).
async fn wait_for_process(
    program: &Program,
    seen: &[ProcessId],
    signals: &mut Signals,
    deadline: Option<Instant>,
) -> Option<Target> {
    const LOOK_EVERY: Duration = Duration::from_millis(100);
    let end = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    loop {
        if let Some(found) = processes::find(program, seen) {
            // It may be gone again already: then look on.
            if let Ok(target) = Target::existing(found.pid) {
                return Some(target);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = signals.ending() => return None,
            _ = &mut end => return None,
        }
    }
}

/// What stays for the whole run, across the processes of a followed program.
struct Session<'a> {
    cli: &'a Cli,
    runtime: tokio::runtime::Runtime,
    probes: Probes,
    events: EventRing,
    signals: Signals,
    marker_sender: tokio::sync::mpsc::UnboundedSender<SentLine>,
    marker_receiver: tokio::sync::mpsc::UnboundedReceiver<SentLine>,
    patterns: Option<TurnPatterns>,
    report_options: ReportOptions,
    out: OutputDir,
    /// With --follow, the processes traced so far.
    segments: Vec<Segment>,
}

impl Session<'_> {
    /// `--overhead PCT`: the budget for this process, managing the sources whose rate the command line left
    /// free. Pages start traced in full (a followed program's next process starts over); bytes where they are.
    fn overhead_budget(&self, maps: &mut KernelMaps) -> Option<collector::overhead::Budget> {
        let pct = self.cli.overhead.0?;
        let pages = (!self.cli.no_faults && self.cli.sample_pages.is_none()).then_some(1);
        // Without allocator tracing there is no byte rate to choose (the budget would report one it set).
        let bytes = (!self.cli.no_alloc && self.cli.sample_bytes.is_none()).then(|| maps.sample_bytes());
        let budget = pages
            .map_or(Ok(()), |rate| maps.set_sample_pages(rate))
            .and_then(|()| collector::overhead::Budget::new(pct, self.probes.all_program_ids(), pages, bytes));
        budget.map_err(|error| eprintln!("dispatch-leaktrace: warning: {error:#}; tracing at full rates")).ok()
    }

    /// Traces one process until it ends or the trace must; writes its reports. Returns why it ended, and
    /// the kernel maps, cleaned of this process when it is gone.
    fn trace(
        &mut self,
        pending: Pending,
        mut maps: KernelMaps,
        deadline: &mut Option<Instant>,
        first_trace: bool,
    ) -> Result<(EndReason, KernelMaps)> {
        let cli = self.cli;
        let pid = pending.pid();
        let index = self.segments.len() + 1;
        let (out, folder) = if cli.follow {
            let folder = format!("segments/{index}-pid{pid}");
            (self.out.subfolder(Path::new(&folder))?, Some(folder))
        } else {
            (self.out.subfolder(Path::new(""))?, None)
        };
        maps.add_target(pid)?;
        if self.patterns.is_some() && matches!(pending, Pending::Launched(_)) {
            // A launched target logs from its first instruction: its stdout and stderr count from the start.
            maps.add_log_descriptors(pid, &[1, 2])?;
        }
        let (allocator_summary, mut late_libraries) = if cli.no_alloc {
            (None, None)
        } else {
            let (summary, found) = attach_allocator(cli, &pending, &mut self.probes)?;
            (Some(summary), Some(LateLibraries::new(pid, found)))
        };
        let (target, launched) = match pending {
            Pending::Existing(target) => {
                if target.has_exited() {
                    bail!("process {pid} exited while the probes were being attached: nothing to trace");
                }
                (target, false)
            }
            Pending::Launched(child) => (child.release()?, true),
        };
        crate::cli::warn_if_rss_step_is_passed(cli.snapshot_at_rss, pid);
        let exe = target.info.exe.clone();
        maps.program_ids = self.probes.records.iter().map(|record| record.program_id).collect();
        maps.program_ids.sort_unstable();
        maps.program_ids.dedup();
        let overhead = self.overhead_budget(&mut maps);
        let probe_info = std::cell::RefCell::new(ProbeInfo {
            records: self.probes.records.clone(),
            allocators: allocator_summary,
            sample_bytes: cli.sample_bytes,
            sample_pages: cli.sample_pages,
        });
        let mut collector = Collector::new(maps, target, !launched)
            .with_allocator(probe_info.borrow().allocators.as_ref().is_some_and(|summary| summary.entry_points > 0))
            .with_min_age(cli.min_age)
            .with_symbols_from(cli.symbols_from.as_deref())
            .with_turns(self.patterns.clone())
            .with_interval(cli.interval)
            .with_memory_budget(cli.max_memory)
            .with_snapshots(cli.checkpoint, cli.snapshot_at_rss)
            .with_status(cli.quiet)
            .with_verbose(cli.verbose)
            .with_overhead(overhead);
        eprintln!("dispatch-leaktrace: tracing pid {pid} ({}); Ctrl-C to stop", exe.display());
        let _control = {
            let _context = self.runtime.enter();
            inputs::control::listen(pid, self.marker_sender.clone())
                .map_err(|error| eprintln!("dispatch-leaktrace: warning: no control socket for `mark`: {error:#}"))
                .ok()
        };
        if first_trace {
            *deadline = cli.deadline(Instant::now());
        }
        let remaining = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let options = &self.report_options;
        let probes = &mut self.probes;
        let ending = self.runtime.block_on(collector.run(
            remaining,
            &mut self.events,
            &mut self.signals,
            Some(&mut self.marker_receiver),
            |trace, reason| write_snapshot(trace, reason, &probe_info.borrow(), options, &out, cli.keep),
            |map| late_libraries.as_mut().is_some_and(|late| late.probe_new(map, probes, &probe_info)),
        ))?;
        let probe_info = probe_info.into_inner();
        // Detach before the slower work of writing reports: the allocator's probes were for this process,
        // and the tracepoints are needed no more unless another process of the program comes.
        let target_gone =
            matches!(ending.reason, EndReason::TargetExit | EndReason::TargetCrash | EndReason::TargetOom);
        self.probes.detach_allocator();
        if !(cli.follow && target_gone) {
            self.probes.detach_all();
        }

        let trace = collector.trace(Some(ending));
        let written = reports::write_all(&trace, &probe_info, options, &[], &out)?;
        if let Some(folder) = folder {
            self.segments.push(Segment::of(&trace, index, folder));
            // The top level shows the newest process, with the list of them all.
            reports::write_all(&trace, &probe_info, options, &self.segments, &self.out)?;
        }
        print!("{}", summary::render(&trace, &written));
        drop(trace);
        let mut maps = collector.into_maps();
        if target_gone {
            maps.forget_target(pid)?;
        }
        Ok((ending.reason, maps))
    }
}

/// Finds the allocator entry points of the target (or, for a launched target, of its executable and the
/// libraries it will load), says what was found, and attaches to them.
fn attach_allocator(
    cli: &Cli,
    pending: &Pending,
    probes: &mut Probes,
) -> Result<(allocators::AllocatorSummary, allocators::ProcessAllocators)> {
    let pid = pending.pid();
    let alloc_symbols = cli
        .alloc_symbol
        .iter()
        .map(|text| {
            allocators::parse_alloc_symbol(text).map_err(|error| anyhow::anyhow!("--alloc-symbol {text}: {error}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (map, main_executable, root) = match pending {
        Pending::Existing(target) => {
            (MemoryMap::read(pid)?, target.info.exe.clone(), Some(PathBuf::from(format!("/proc/{pid}/root"))))
        }
        Pending::Launched(child) => {
            let program = child.program_path()?;
            // A script is run by its interpreters (`#!/usr/bin/env bash`: env, then bash), whose libraries
            // allocate from the first instruction; the last of them is the executable the process becomes.
            // `env` itself only passes through to it.
            let interpreters = libraries::script_interpreters(&program);
            let executable = interpreters.last().cloned().unwrap_or_else(|| program.clone());
            let mut files = vec![executable.clone()];
            for library in std::iter::once(&program).chain(&interpreters).flat_map(|p| libraries::needed_libraries(p)) {
                if !files.contains(&library) {
                    files.push(library);
                }
            }
            (libraries::planned_map(&files), executable, None)
        }
    };
    let options = DiscoveryOptions {
        pid: Some(pid),
        main_executable: Some(main_executable),
        root,
        symbols_from: cli.symbols_from.clone(),
        alloc_symbols,
    };
    let found = allocators::discover_in_process(&map, &options)?;
    let summary = allocators::summarize(&found);
    for line in summary.lines() {
        eprintln!("dispatch-leaktrace: {line}");
    }
    probes.attach_allocator(pid, probe_points(&found.objects))?;
    Ok((summary, found))
}

fn probe_points(objects: &[allocators::ObjectAllocators]) -> impl Iterator<Item = AllocatorProbe<'_>> {
    objects.iter().flat_map(|object| {
        object.entry_points.iter().map(move |entry| AllocatorProbe {
            object: &object.attach_path,
            symbol: &entry.name,
            family: entry.family.name(),
            file_offset: entry.file_offset,
            size: entry.size,
            cookie: if entry.throws { entry.cookie.without_return() } else { entry.cookie },
        })
    })
}

/// The objects a target maps as code whose allocators have been looked for, so that libraries it loads
/// later (dlopen) get probed too: known by device and inode, which a library's path in the maps and the
/// path it was found at before the target ran (a symlinked /lib) agree on.
struct LateLibraries {
    pid: u32,
    root: PathBuf,
    searched: HashSet<(u64, u64)>,
    /// Everything found so far, for report.json.
    found: allocators::ProcessAllocators,
}

impl LateLibraries {
    fn new(pid: u32, found: allocators::ProcessAllocators) -> Self {
        let searched = found.objects.iter().filter_map(|object| file_identity(&object.attach_path)).collect();
        Self { pid, root: PathBuf::from(format!("/proc/{pid}/root")), searched, found }
    }

    /// Looks for allocators in the code files of `map` (the target's maps, read again since a file was
    /// mapped as code) not searched before, and probes them. Whether any entry point was added. A failure
    /// is a warning: the trace goes on without them.
    fn probe_new(&mut self, map: &MemoryMap, probes: &mut Probes, info: &std::cell::RefCell<ProbeInfo>) -> bool {
        let new = map.filtered(|mapping| {
            mapping.executable
                && mapping.is_file()
                && !mapping.pathname.ends_with(" (deleted)")
                && file_identity(&self.root.join(mapping.file_path().trim_start_matches('/')))
                    .is_some_and(|identity| !self.searched.contains(&identity))
        });
        if new.is_empty() {
            return false;
        }
        // After an exec the main executable is another file.
        if let Ok(exe) = std::fs::read_link(format!("/proc/{}/exe", self.pid)) {
            self.found.main_executable = Some(exe);
        }
        let options = DiscoveryOptions {
            pid: Some(self.pid),
            main_executable: self.found.main_executable.clone(),
            root: Some(self.root.clone()),
            ..Default::default()
        };
        let found = match allocators::discover_in_process(&new, &options) {
            Ok(found) => found,
            Err(error) => {
                eprintln!("dispatch-leaktrace: warning: cannot search the libraries loaded since: {error:#}");
                return false;
            }
        };
        self.searched.extend(found.objects.iter().filter_map(|object| file_identity(&object.attach_path)));
        let mut objects = found.objects;
        objects.retain(|object| !object.entry_points.is_empty());
        if objects.is_empty() {
            return false;
        }
        for object in &mut objects {
            object.notes.push(LOADED_LATER.to_string());
        }
        let attached = probes.attach_allocator(self.pid, probe_points(&objects));
        // What did attach (all of it, or the probes before a failure) is in the records either way.
        info.borrow_mut().records = probes.records.clone();
        if let Err(error) = attached {
            eprintln!("dispatch-leaktrace: warning: cannot probe the allocator of a library loaded since: {error:#}");
            return false;
        }
        let new_summary =
            allocators::summarize(&allocators::ProcessAllocators { objects: objects.clone(), ..Default::default() });
        for object in &new_summary.objects {
            let families: Vec<String> =
                object.families.iter().map(|f| format!("{} ({})", f.family.name(), f.entry_points)).collect();
            eprintln!("dispatch-leaktrace: probing {} too, loaded since: {}", object.path, families.join(", "));
        }
        self.found.objects.extend(objects);
        info.borrow_mut().allocators = Some(allocators::summarize(&self.found));
        true
    }
}

/// A note on an object loaded after the trace began.
const LOADED_LATER: &str = "loaded after the trace began (dlopen): probed from then on; blocks it allocated \
                            before its probes were in place are not seen, and their frees count as unmatched";

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|metadata| (metadata.dev(), metadata.ino()))
}

/// A snapshot or checkpoint while the trace goes on. A failure is a warning: the trace itself must go on.
fn write_snapshot(
    trace: &Trace<'_>,
    reason: SnapshotReason,
    probes: &ProbeInfo,
    options: &ReportOptions,
    out: &OutputDir,
    keep: usize,
) {
    let started = std::time::Instant::now();
    match snapshots::write(trace, reason, probes, options, out, keep) {
        // The time taken, so that a long run shows whether its snapshots slow down.
        Ok(dir) => eprintln!(
            "dispatch-leaktrace: {} written to {} in {:.2} s",
            reason.describe(),
            dir.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(error) => eprintln!("dispatch-leaktrace: warning: cannot write a {}: {error:#}", reason.describe()),
    }
}

/// `20261128T031500Z`: sorts in time order and is valid in a file name.
fn utc_stamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string().replace(['-', ':'], "")
}

/// `./leaktrace-<pid>-<UTC time>`, e.g. `leaktrace-4242-20261128T031500Z`.
fn default_output(pid: u32) -> PathBuf {
    PathBuf::from(format!("leaktrace-{pid}-{}", utc_stamp(SystemTime::now())))
}
