//! The parts of the tracer's report.json the benchmark reads. Every other member is skipped as it is
//! parsed, never built: a long run's report.json holds tens of megabytes of stacks.

use std::{collections::BTreeMap, fs::File, io::BufReader, path::Path};

use anyhow::{Context, Result};
use serde::Deserialize;

/// Every member optional: an older tracer's report may lack one, and the figure is then "not reported".
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ReportJson {
    pub(super) totals: Option<Totals>,
    pub(super) counters: BTreeMap<String, u64>,
    pub(super) events: Option<u64>,
    pub(super) tracer: Option<Tracer>,
    pub(super) probes: Vec<Probe>,
    pub(super) stacks: Vec<Stack>,
    pub(super) overhead: Option<Overhead>,
    pub(super) suspects: Vec<Suspect>,
}

/// `--overhead`: what the tracer measured of its own programs, and the rates it chose.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Overhead {
    pub(super) overall_overhead_pct: Option<f64>,
    pub(super) sample_pages: Option<u64>,
    pub(super) sample_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Suspect {
    pub(super) site: Option<String>,
    pub(super) verdict: Option<String>,
}

/// Of a stack, only its source: the benchmark counts them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Stack {
    pub(super) source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Totals {
    pub(super) by_source: BTreeMap<String, SourceTotals>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SourceTotals {
    pub(super) outstanding_bytes: Option<u64>,
    pub(super) outstanding_allocs: Option<u64>,
    pub(super) allocated_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Tracer {
    pub(super) budget_bytes: Option<u64>,
    pub(super) peak_anonymous_rss_bytes: Option<u64>,
    pub(super) over_budget: Option<bool>,
    pub(super) stacks_held: Option<u64>,
    pub(super) evicted_stacks: Option<u64>,
    pub(super) evicted_allocated_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Probe {
    pub(super) kind: Option<String>,
    pub(super) symbol: Option<String>,
    pub(super) family: Option<String>,
    pub(super) object: Option<String>,
    pub(super) file_offset: Option<u64>,
    pub(super) placement: Option<Placement>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Placement {
    pub(super) offset: Option<u64>,
    pub(super) instruction: Option<String>,
    pub(super) reason: Option<String>,
}

impl ReportJson {
    pub(super) fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_reader(BufReader::new(file))
            .with_context(|| format!("{} is not a report.json", path.display()))
    }

    /// The totals of one source (`malloc`, `page-fault`, ...), if the report has them.
    pub(super) fn source(&self, name: &str) -> Option<SourceTotals> {
        self.totals.as_ref()?.by_source.get(name).copied()
    }

    pub(super) fn counter(&self, name: &str) -> Option<u64> {
        self.counters.get(name).copied()
    }
}

/// The counters that are not zero: what was not recorded, and why.
pub(super) fn nonzero_counters(report: &ReportJson) -> Vec<(String, u64)> {
    report.counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), *v)).collect()
}

/// `map_full 1,466, stack_errors 1`, or `none`.
pub(super) fn counters_text(counters: &[(String, u64)]) -> String {
    if counters.is_empty() {
        return "none".to_string();
    }
    let each: Vec<String> =
        counters.iter().map(|(name, value)| format!("{name} {}", super::thousands(*value))).collect();
    each.join(", ")
}
