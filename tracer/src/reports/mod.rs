//! Report files, each a pure function of the [`Trace`]: report.json, stacks.folded, flamegraph.svg.

pub mod flamegraph;
pub mod folded;
pub mod json;
pub mod output;
pub mod redact;
pub mod stacks;
pub mod summary;

use std::path::PathBuf;

use anyhow::Result;

use crate::{collector::Trace, probes::ProbeRecord};
use output::OutputDir;

/// The files written, by what they hold.
pub struct Written {
    pub report: PathBuf,
    pub folded: PathBuf,
    pub flamegraph: PathBuf,
}

pub fn write_all(trace: &Trace, probes: &[ProbeRecord], out: &OutputDir) -> Result<Written> {
    let stacks = stacks::report_stacks(trace);
    let report = json::render(trace, &stacks, probes)?;
    let folded = folded::render(&stacks);
    let flamegraph = flamegraph::render(&folded, trace)?;
    Ok(Written {
        report: out.write("report.json", report.as_bytes())?,
        folded: out.write("stacks.folded", folded.as_bytes())?,
        flamegraph: out.write("flamegraph.svg", &flamegraph)?,
    })
}
