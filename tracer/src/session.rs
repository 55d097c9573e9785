//! One tracing session from start to end: find or launch the target, attach, collect, detach, report.

use std::{path::PathBuf, time::SystemTime};

use anyhow::{Result, bail};

use crate::{
    cli::Cli,
    collector::{Collector, Signals, SnapshotReason, Trace, markers::TurnPatterns},
    inputs::{self, MarkerSource},
    privileges,
    probes::{
        AllocatorProbe, ProbeInfo, Probes,
        allocators::{self, DiscoveryOptions},
        libraries, tracefs,
    },
    procfs::maps::MemoryMap,
    reports::{self, ReportOptions, output::OutputDir, snapshots, summary},
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
    let signals = {
        let _context = runtime.enter();
        Signals::catch()?
    };

    let patterns = match (&cli.turn_start, &cli.turn_end) {
        (Some(start), Some(end)) => Some(TurnPatterns::new(start, end)?),
        _ => None,
    };

    let pending = match cli.pid {
        Some(pid) => Pending::Existing(Target::existing(pid)?),
        None => Pending::Launched(HeldChild::spawn(&cli.command)?),
    };
    let pid = pending.pid();
    let out = OutputDir::create(&cli.output.clone().unwrap_or_else(|| default_output(pid)))?;

    let (mut probes, mut maps, events) = Probes::load()?;
    maps.add_target(pid)?;
    if let Some(bytes) = cli.sample_bytes {
        maps.set_sample_bytes(bytes)?;
    }
    if patterns.is_some() {
        // A launched target logs from its first instruction: its stdout and stderr count from the start.
        maps.add_log_descriptors(pid, &[1, 2])?;
    }
    probes.attach_syscalls()?;
    if !cli.no_faults {
        probes.attach_faults()?;
    }
    if patterns.is_some() {
        probes.attach_writes()?;
    }
    let allocator_summary = if cli.no_alloc { None } else { Some(attach_allocator(&cli, &pending, &mut probes)?) };
    let (target, launched) = match pending {
        Pending::Existing(target) => {
            if target.has_exited() {
                bail!("process {pid} exited while the probes were being attached: nothing to trace");
            }
            (target, false)
        }
        Pending::Launched(child) => (child.release()?, true),
    };
    let exe = target.info.exe.clone();
    maps.program_ids = probes.records.iter().map(|record| record.program_id).collect();
    maps.program_ids.sort_unstable();
    maps.program_ids.dedup();
    let probe_info =
        ProbeInfo { records: probes.records.clone(), allocators: allocator_summary, sample_bytes: cli.sample_bytes };
    let report_options = ReportOptions { compare: cli.compare, warmup: cli.warmup };
    let mut collector = Collector::new(maps, target, !launched)
        .with_allocator(probe_info.allocators.as_ref().is_some_and(|summary| summary.entry_points > 0))
        .with_min_age(cli.min_age)
        .with_symbols_from(cli.symbols_from.as_deref())
        .with_turns(patterns)
        .with_interval(cli.interval)
        .with_memory_budget(cli.max_memory)
        .with_snapshots(cli.checkpoint, cli.snapshot_at_rss);
    eprintln!("dispatch-leaktrace: tracing pid {pid} ({}); Ctrl-C to stop", exe.display());
    let (marker_sender, marker_receiver) = tokio::sync::mpsc::unbounded_channel();
    let _control = {
        let _context = runtime.enter();
        if let Some(source) = &cli.markers_from {
            inputs::spawn_reader(MarkerSource::parse(source), marker_sender.clone())?;
        }
        inputs::control::listen(pid, marker_sender)
            .map_err(|error| eprintln!("dispatch-leaktrace: warning: no control socket for `mark`: {error:#}"))
            .ok()
    };
    let ending =
        runtime.block_on(collector.run(cli.duration, events, signals, Some(marker_receiver), |trace, reason| {
            write_snapshot(trace, reason, &probe_info, &report_options, &out, cli.keep);
        }))?;
    // Detach before the slower work of writing reports.
    probes.detach();

    let trace = collector.trace(Some(ending));
    let written = reports::write_all(&trace, &probe_info, &report_options, &out)?;
    print!("{}", summary::render(&trace, &written));
    Ok(())
}

/// Finds the allocator entry points of the target (or, for a launched target, of its executable and the
/// libraries it will load), says what was found, and attaches to them.
fn attach_allocator(cli: &Cli, pending: &Pending, probes: &mut Probes) -> Result<allocators::AllocatorSummary> {
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
            let executable = child.program_path()?;
            let mut files = vec![executable.clone()];
            files.extend(libraries::needed_libraries(&executable));
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
    let points = found.objects.iter().flat_map(|object| {
        object.entry_points.iter().map(move |entry| AllocatorProbe {
            object: &object.attach_path,
            symbol: &entry.name,
            family: entry.family.name(),
            file_offset: entry.file_offset,
            size: entry.size,
            cookie: if entry.throws { entry.cookie.without_return() } else { entry.cookie },
        })
    });
    probes.attach_allocator(pid, points)?;
    Ok(summary)
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
    match snapshots::write(trace, reason, probes, options, out, keep) {
        Ok(dir) => eprintln!("dispatch-leaktrace: {} written to {}", reason.describe(), dir.display()),
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
