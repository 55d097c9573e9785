//! Report files, each a pure function of the [`Trace`]: report.json, stacks.folded, flamegraphs of
//! outstanding memory, and growth.svg.

pub mod flamegraph;
pub mod folded;
pub mod growth;
pub mod json;
pub mod output;
pub mod pprof;
pub mod redact;
pub mod segments;
pub mod snapshots;
pub mod stacks;
pub mod summary;
pub mod suspects;
pub mod timeline;
pub mod turns;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use crate::{collector::Trace, ledger::Source, probes::ProbeInfo};
use growth::{CompareSpec, Growth};
use output::OutputDir;
use stacks::ReportStack;

/// Choices that shape the reports but not the trace.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// The window of the growth view; `None`: from the end of the default warm-up to the end.
    pub compare: Option<CompareSpec>,
    pub warmup: Option<Duration>,
}

/// The files written, by what they hold.
pub struct Written {
    pub report: PathBuf,
    pub folded: PathBuf,
    /// The primary view; then one per source when there are several.
    pub flamegraphs: Vec<PathBuf>,
    pub growth: PathBuf,
    pub pprof: PathBuf,
    pub timeline: PathBuf,
    /// The most suspicious sites, for the summary.
    pub suspects: Vec<suspects::Suspect>,
}

/// The files a report set is made of, besides `flamegraph-<source>.svg` per source: the names an earlier
/// run is cleared of.
const REPORT_FILES: [&str; 6] =
    ["report.json", "stacks.folded", "flamegraph.svg", "growth.svg", "profile.pb.gz", "timeline.svg"];

/// Writes every report of `trace` into `out`; `segments`: with --follow, the processes traced so far.
pub fn write_all(
    trace: &Trace,
    probes: &ProbeInfo,
    options: &ReportOptions,
    segments: &[segments::Segment],
    out: &OutputDir,
) -> Result<Written> {
    let stacks = stacks::report_stacks(trace);
    let run = trace.ended_at.duration_since(trace.started_at).unwrap_or_default();
    let compare = options.compare.clone().unwrap_or_else(|| CompareSpec::after_warmup(options.warmup, run));
    let growth_view = Growth::between(trace, &compare);
    let primary = stacks::primary_source(&stacks);
    let target = format!("{} (pid {})", trace.target.exe.display(), trace.target.pid);

    let mut flamegraphs = Vec::new();
    let sources: Vec<Source> =
        Source::ALL.into_iter().filter(|source| stacks.iter().any(|s| s.source == *source)).collect();
    for (name, source) in std::iter::once(("flamegraph.svg".to_string(), primary))
        .chain(sources.iter().filter(|_| sources.len() > 1).map(|s| (format!("flamegraph-{}.svg", s.name()), Some(*s))))
    {
        let selected: Vec<ReportStack> =
            stacks.iter().filter(|s| source.is_none_or(|p| s.source == p)).cloned().collect();
        let view = source.map_or("memory", |s| s.describe());
        let svg = flamegraph::render(
            &folded::render(&selected),
            &format!("Outstanding {view} of {target}"),
            "by stack, at the end of the trace",
            &format!("nothing outstanding in {view} at the end of the trace"),
        )?;
        flamegraphs.push(out.write(&name, &svg)?);
    }
    let (before, after) = growth_view.folded_pair(primary);
    let subtitle = format!(
        "from {} to {} (red: grew, blue: shrank; width: bytes at the end of the window)",
        json::rfc3339(growth_view.from),
        json::rfc3339(growth_view.to)
    );
    let view = primary.map_or("memory", |s| s.describe());
    let growth_svg = flamegraph::render_growth(
        &before,
        &after,
        &format!("Growth of {view} of {target}"),
        &subtitle,
        &format!("nothing outstanding in {view} at the end of the window: no growth to show"),
    )?;

    let suspects = primary.map(|source| suspects::suspects(trace, &stacks, &growth_view, source)).unwrap_or_default();
    let turn_views = turns::turn_views(trace, primary);
    let growth = out.write("growth.svg", &growth_svg)?;
    drop(growth_svg);
    let folded = out.write("stacks.folded", folded::render(&stacks).as_bytes())?;
    let pprof = out.write("profile.pb.gz", &pprof::render(trace, &stacks)?)?;
    let timeline = out.write("timeline.svg", timeline::render(trace, &suspects)?.as_bytes())?;
    // Last, so that it can tell how much memory writing the others took.
    let peak_memory = crate::procfs::own_anonymous_rss().unwrap_or(0);
    let report = out.write_with("report.json", |file| {
        let views = json::Views {
            stacks: &stacks,
            growth: &growth_view,
            suspects: &suspects,
            turns: &turn_views,
            primary,
            segments,
            peak_memory,
        };
        json::write(file, trace, views, probes)
    })?;
    Ok(Written {
        report,
        folded,
        flamegraphs,
        growth,
        pprof,
        timeline,
        suspects: suspects.into_iter().take(5).collect(),
    })
}

/// Removes from a reused output folder what an earlier run wrote there, so that no stale report lies
/// beside the new ones (a flamegraph of a source this run does not see, old checkpoints): the files by
/// the names this tool writes, and in `checkpoints/`, `snapshots/` and `segments/` the folders whose names
/// it makes. Nothing else: the folder may hold the user's own files. Called just before the run's first
/// write, by descriptor (see `output`), so a run that fails to start leaves the earlier reports alone.
pub fn clear_earlier_run(out: &OutputDir) {
    let mut names: Vec<String> = REPORT_FILES.iter().map(|name| name.to_string()).collect();
    names.extend(Source::ALL.iter().map(|source| format!("flamegraph-{}.svg", source.name())));
    names.extend(names.clone().iter().map(|name| format!(".{name}.partial")));
    names.extend(["latest".to_string(), ".latest.new".to_string()]);
    let mut failed = Vec::new();
    for name in &names {
        if let Err(error) = out.remove_file(name) {
            failed.push(format!("{name} ({error})"));
        }
    }
    type IsOurs = fn(&str) -> bool;
    let folders: [(&str, IsOurs); 3] = [
        ("checkpoints", snapshots::is_checkpoint_name),
        ("snapshots", snapshots::is_snapshot_name),
        ("segments", is_segment_name),
    ];
    for (folder, is_ours) in folders {
        let dir = match out.existing(folder) {
            Ok(Some(dir)) => dir,
            Ok(None) => continue,
            Err(error) => {
                failed.push(format!("{error:#}"));
                continue;
            }
        };
        for (name, _) in dir.entries().unwrap_or_default() {
            let Some(name) = name.to_str() else { continue };
            let unpublished = name.strip_prefix('.').and_then(|rest| rest.strip_suffix(".partial"));
            if is_ours(name) || unpublished.is_some_and(is_ours) {
                if let Err(error) = dir.remove_tree(name) {
                    failed.push(format!("{folder}/{name} ({error})"));
                }
            }
        }
        drop(dir);
        let _ = out.remove_empty_folder(folder);
    }
    if !failed.is_empty() {
        eprintln!(
            "dispatch-leaktrace: warning: cannot remove what an earlier run left in {}: {}",
            out.path().display(),
            failed.join(", ")
        );
    }
}

/// `3-pid4242`: a folder of `--follow`'s segments.
fn is_segment_name(name: &str) -> bool {
    name.split_once("-pid").is_some_and(|(index, pid)| {
        [index, pid].iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_folders_are_recognised_by_their_names() {
        assert!(is_segment_name("1-pid4242"));
        assert!(is_segment_name("12-pid7"));
        for other in ["1-pid", "-pid4", "a-pid4", "1-pid4x", "notes", "1-pid4/.."] {
            assert!(!is_segment_name(other), "{other}");
        }
    }
}
