//! One tracing session from start to end: find or launch the target, attach, collect, detach, report.

use std::{path::PathBuf, time::SystemTime};

use anyhow::{bail, Result};

use crate::{
    cli::Cli,
    collector::{Collector, StopSignals},
    privileges,
    probes::{tracefs, Probes},
    reports::{self, output::OutputDir, summary},
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
    let stop = {
        let _context = runtime.enter();
        StopSignals::catch()?
    };

    let pending = match cli.pid {
        Some(pid) => Pending::Existing(Target::existing(pid)?),
        None => Pending::Launched(HeldChild::spawn(&cli.command)?),
    };
    let pid = pending.pid();
    let out = OutputDir::create(&cli.output.clone().unwrap_or_else(|| default_output(pid)))?;

    let (mut probes, mut maps, events) = Probes::load()?;
    maps.add_target(pid)?;
    probes.attach_syscalls()?;
    let (target, launched) = match pending {
        Pending::Existing(target) => {
            if target.has_exited() {
                bail!("process {pid} exited while the probes were being attached: nothing to trace");
            }
            (target, false)
        }
        Pending::Launched(child) => (child.release()?, true),
    };
    eprintln!("dispatch-leaktrace: tracing pid {pid} ({}); Ctrl-C to stop", target.info.exe.display());

    let collector = Collector::new(maps, target, !launched);
    let trace = runtime.block_on(collector.run(cli.duration, events, stop))?;
    // Detach before the slower work of writing reports.
    let probe_records = probes.records.clone();
    drop(probes);

    let written = reports::write_all(&trace, &probe_records, &out)?;
    print!("{}", summary::render(&trace, &written));
    Ok(())
}

/// `./leaktrace-<pid>-<UTC time>`, e.g. `leaktrace-4242-20261128T031500Z`.
fn default_output(pid: u32) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace(['-', ':'], "");
    PathBuf::from(format!("leaktrace-{pid}-{stamp}"))
}
