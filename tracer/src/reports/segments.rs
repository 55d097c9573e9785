//! With `--follow`, one segment per process of the followed program: the list in the top-level
//! report.json, each segment's own reports in `segments/<n>-pid<PID>/`.

use serde::Serialize;

use super::{json::rfc3339, stacks::primary_source_of_totals};
use crate::{
    collector::{Trace, death::Death},
    ledger::Source,
};

#[derive(Clone, Debug, Serialize)]
pub struct Segment {
    /// 1 for the first process traced.
    pub index: usize,
    pub pid: u32,
    pub exe: String,
    pub started_at: String,
    pub ended_at: String,
    pub end_reason: Option<&'static str>,
    /// The signal that killed it (a crash or the OOM killer), when one did.
    pub signal: Option<i32>,
    /// The source `outstanding_bytes` counts (see `reports::stacks::primary_source`).
    pub primary_source: Option<&'static str>,
    pub outstanding_bytes: u64,
    pub rss_bytes: u64,
    /// Its reports, relative to the output folder.
    pub folder: String,
}

impl Segment {
    pub fn of(trace: &Trace<'_>, index: usize, folder: String) -> Self {
        let signal = trace.ending.and_then(|ending| ending.death).and_then(|death| match death {
            Death::Crash { signal, .. } => Some(signal),
            Death::Oom { .. } => Some(libc::SIGKILL),
            Death::Exit(_) => None,
        });
        let totals = trace.ledger.by_source();
        let primary = primary_source_of_totals(&totals);
        Self {
            index,
            pid: trace.target.pid,
            exe: trace.target.exe.display().to_string(),
            started_at: rfc3339(trace.started_at),
            ended_at: rfc3339(trace.ended_at),
            end_reason: trace.ending.map(|ending| ending.reason.name()),
            signal,
            primary_source: primary.map(Source::name),
            outstanding_bytes: primary
                .and_then(|source| totals.get(&source))
                .map_or(0, |stats| stats.outstanding_bytes),
            rss_bytes: trace.rss_bytes,
            folder,
        }
    }
}
