//! One tracing session from start to end: find or launch the target, attach, collect, detach, report.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Result, bail};

use crate::{
    cli::Cli,
    collector::{Collector, Signals, SnapshotReason, Trace, markers::TurnPatterns},
    inputs::{self, MarkerSource},
    privileges,
    probes::{ProbeRecord, Probes, tracefs},
    reports::{self, ReportOptions, output::OutputDir, summary},
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
    if patterns.is_some() {
        // A launched target logs from its first instruction: its stdout and stderr count from the start.
        maps.add_log_descriptors(pid, &[1, 2])?;
    }
    probes.attach_syscalls()?;
    probes.attach_faults()?;
    if patterns.is_some() {
        probes.attach_writes()?;
    }
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
    let probe_records = probes.records.clone();
    let report_options = ReportOptions { compare: cli.compare, warmup: cli.warmup };
    let mut collector = Collector::new(maps, target, !launched).with_turns(patterns).with_interval(cli.interval);
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
            write_snapshot(trace, reason, &probe_records, &report_options, &out);
        }))?;
    // Detach before the slower work of writing reports.
    probes.detach();

    let trace = collector.trace(Some(ending));
    let written = reports::write_all(&trace, &probe_records, &report_options, &out)?;
    print!("{}", summary::render(&trace, &written));
    Ok(())
}

/// `OUTPUT/snapshots/<UTC time>-<reason>/`: the full report set while the trace goes on. A failure is a
/// warning: the trace itself must go on.
fn write_snapshot(
    trace: &Trace<'_>,
    reason: SnapshotReason,
    probes: &[ProbeRecord],
    options: &ReportOptions,
    out: &OutputDir,
) {
    let stamp = humantime::format_rfc3339_millis(trace.ended_at).to_string().replace(['-', ':'], "");
    let name = format!("{stamp}-{}", reason.name());
    let written = out.subfolder(&Path::new("snapshots").join(name)).and_then(|dir| {
        reports::write_all(trace, probes, options, &dir)?;
        Ok(dir)
    });
    match written {
        Ok(dir) => eprintln!("dispatch-leaktrace: snapshot written to {}", dir.path().display()),
        Err(error) => eprintln!("dispatch-leaktrace: warning: cannot write a snapshot: {error:#}"),
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
