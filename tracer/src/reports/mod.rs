//! Report files, each a pure function of the [`Trace`]: report.json, stacks.folded, flamegraphs of
//! outstanding memory, and growth.svg. No writer stops the others: a failure is recorded in report.json
//! and reported at the end.

pub mod flamegraph;
pub mod folded;
pub mod frames;
pub mod growth;
pub mod html;
pub mod json;
pub mod json_lines;
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

use anyhow::{Result, anyhow};
use serde::Serialize;

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
    /// `--turn-start`, `--turn-end`: recorded in report.json with the other choices that shaped it.
    pub turn_patterns: Option<(String, String)>,
}

/// The files written, by what they hold.
pub struct Written {
    pub report: PathBuf,
    /// report.html: the page to open first.
    pub html: PathBuf,
    pub folded: PathBuf,
    /// The primary view; then one per source when there are several.
    pub flamegraphs: Vec<PathBuf>,
    pub growth: PathBuf,
    pub pprof: PathBuf,
    pub timeline: PathBuf,
    /// The most suspicious sites, for the summary.
    pub suspects: Vec<suspects::Suspect>,
}

/// A report file that could not be written, and why: listed in report.json's `report_errors`.
#[derive(Clone, Debug, Serialize)]
pub struct ReportError {
    pub file: String,
    pub error: String,
}

/// What writing a report set came to: every writer runs whatever the others did.
pub struct ReportSet {
    pub written: Written,
    /// report.json is there (whole or trimmed).
    pub has_report: bool,
    /// Why report.json had to be trimmed, when it had to.
    pub trimmed: Option<Trim>,
    pub errors: Vec<ReportError>,
}

impl ReportSet {
    /// Ok when every file was written whole; else one line naming each file that failed and where the
    /// rest is.
    pub fn into_result(self, folder: &std::path::Path) -> Result<Written> {
        let mut failed: Vec<(String, &str)> =
            self.errors.iter().map(|failure| (failure.file.clone(), failure.error.as_str())).collect();
        if let Some(trim) = &self.trimmed {
            failed.insert(0, ("report.json whole (a trimmed one is written)".to_string(), trim.cause.as_str()));
        }
        if failed.is_empty() {
            return Ok(self.written);
        }
        // Files that failed alike are named together: a full disk is said once.
        let mut groups: Vec<(Vec<String>, &str)> = Vec::new();
        for (file, error) in failed {
            match groups.iter_mut().find(|(_, seen)| *seen == error) {
                Some((files, _)) => files.push(file),
                None => groups.push((vec![file], error)),
            }
        }
        let groups: Vec<String> =
            groups.iter().map(|(files, error)| format!("{}: {error}", files.join(", "))).collect();
        let rest = if self.has_report {
            format!("the rest is in {}, whose report.json lists what failed", folder.display())
        } else {
            format!("what could be written is in {}", folder.display())
        };
        Err(anyhow!("cannot write {}; {rest}", groups.join("; ")))
    }
}

/// Why report.json had to be cut.
#[derive(Clone, Debug)]
pub struct Trim {
    /// The error that stopped the whole one.
    pub cause: String,
    /// What report.json's `trimmed_reason` says.
    pub reason: String,
}

/// The files a report set is made of, besides `flamegraph-<source>.svg` per source: the names an earlier
/// run is cleared of.
const REPORT_FILES: [&str; 7] =
    ["report.json", "stacks.folded", "flamegraph.svg", "growth.svg", "profile.pb.gz", "timeline.svg", "report.html"];

/// What report.json may grow by when written again at the end (what failed, the peak memory): disk
/// reserved for it beside its size.
const REPORT_GROWTH: u64 = 16 << 10;

/// Stacks and turns kept in a report.json cut to fit a full disk.
pub(crate) const TRIMMED_STACKS: usize = 100;
pub(crate) const TRIMMED_TURNS: usize = 100;

/// Writes every report of `trace` into `out`; `segments`: with --follow, the processes traced so far.
/// Every writer runs even when another failed; the error names each file that failed.
pub fn write_all(
    trace: &Trace,
    probes: &ProbeInfo,
    options: &ReportOptions,
    segments: &[segments::Segment],
    out: &OutputDir,
) -> Result<Written> {
    write_set(trace, probes, options, segments, out).into_result(out.path())
}

/// Writes the report set: report.json first, small and complete (cut, and saying so, when it cannot be
/// written whole), so that a full disk still leaves the report that matters; then each other file, a
/// failure recorded and the next one written all the same; then report.json again, with what failed and
/// the memory the other writers took.
pub fn write_set(
    trace: &Trace,
    probes: &ProbeInfo,
    options: &ReportOptions,
    segments: &[segments::Segment],
    out: &OutputDir,
) -> ReportSet {
    let stacks = stacks::report_stacks(trace);
    let run = trace.ended_at.duration_since(trace.started_at).unwrap_or_default();
    let compare = options.compare.clone().unwrap_or_else(|| CompareSpec::after_warmup(options.warmup, run));
    let growth_view = Growth::between(trace, &compare);
    let primary = stacks::primary_source(&stacks);
    let target = format!("{} (pid {})", trace.target.exe.display(), trace.target.pid);
    let suspects = primary.map(|source| suspects::suspects(trace, &stacks, &growth_view, source)).unwrap_or_default();
    let turn_views = turns::turn_views(trace, primary);

    let mut errors = Vec::new();
    let mut trimmed = None;
    let views = json::Views {
        stacks: &stacks,
        growth: &growth_view,
        suspects: &suspects,
        turns: &turn_views,
        primary,
        segments,
        peak_memory: crate::procfs::own_anonymous_rss().unwrap_or(0),
        peak_rss: crate::procfs::own_memory().map_or(0, |memory| memory.peak),
        report_errors: &[],
        trimmed: None,
        options,
    };
    let mut report = write_report(out, &mut trimmed, |file, trimmed| {
        json::write(file, trace, json::Views { trimmed, ..views }, probes)
    });

    if report.is_ok() {
        let size = out.file_size("report.json").unwrap_or(0);
        out.reserve("report.json", size + REPORT_GROWTH);
    }

    let mut attempt = |name: &str, written: Result<PathBuf>| {
        written.unwrap_or_else(|error| {
            errors.push(ReportError { file: name.to_string(), error: error.root_cause().to_string() });
            out.path().join(name)
        })
    };
    // The most telling and the smallest first, for a disk that fills up: the views per source last.
    let folded = attempt("stacks.folded", out.write("stacks.folded", folded::render(&stacks).as_bytes()));
    let flamegraph_of = |name: &str, source: Option<Source>| {
        let selected: Vec<ReportStack> =
            stacks.iter().filter(|s| source.is_none_or(|p| s.source == p)).cloned().collect();
        let view = source.map_or("memory", |s| s.describe());
        let svg = flamegraph::render(
            &folded::render(&selected),
            &format!("Outstanding {view} of {target}"),
            "by stack, at the end of the trace",
            &format!("nothing outstanding in {view} at the end of the trace"),
        )?;
        out.write(name, &svg)
    };
    let mut flamegraphs = vec![attempt("flamegraph.svg", flamegraph_of("flamegraph.svg", primary))];
    let growth = {
        let view = primary.map_or("memory", |s| s.describe());
        let subtitle = format!(
            "{} to {}; colour: growth kept (red), shrinking (blue); width: bytes at the end; outlined: leaks",
            json::rfc3339(growth_view.from),
            json::rfc3339(growth_view.to)
        );
        let marks: Vec<flamegraph::Mark> = suspects
            .iter()
            .enumerate()
            .map(|(index, suspect)| flamegraph::Mark {
                site: suspects::frame_site(&suspect.site).to_string(),
                rank: index + 1,
                verdict: suspect.verdict.name(),
                outlined: suspect.verdict == suspects::Verdict::Grows,
                bytes_per_turn: suspect.bytes_per_turn,
                retained_fraction: suspect.retained_fraction,
            })
            .collect();
        let svg = flamegraph::render_growth(
            &growth_view.folded_stacks(primary, &stacks),
            &marks,
            &format!("Growth of {view} of {target}"),
            &subtitle,
            &format!("nothing outstanding in {view} at the end of the window: no growth to show"),
        );
        attempt("growth.svg", svg.and_then(|svg| out.write("growth.svg", &svg)))
    };
    let timeline = attempt(
        "timeline.svg",
        timeline::render(trace, &suspects).and_then(|svg| out.write("timeline.svg", svg.as_bytes())),
    );
    let pprof = attempt("profile.pb.gz", pprof::render(trace).and_then(|bytes| out.write("profile.pb.gz", &bytes)));
    let sources: Vec<Source> =
        Source::ALL.into_iter().filter(|source| stacks.iter().any(|s| s.source == *source)).collect();
    if sources.len() > 1 {
        for source in sources {
            let name = format!("flamegraph-{}.svg", source.name());
            flamegraphs.push(attempt(&name, flamegraph_of(&name, Some(source))));
        }
    }
    // After the flamegraphs, which it embeds.
    let html = attempt("report.html", html::write(trace, &stacks, &suspects, &turn_views, primary, out));

    // Again, last, so that it tells how much memory writing the others took, and what failed: into the
    // space reserved above. If this cannot be written, the first one stays.
    let peak_memory = crate::procfs::own_anonymous_rss().unwrap_or(0);
    let peak_rss = crate::procfs::own_memory().map_or(0, |memory| memory.peak);
    let errors_so_far = errors.clone();
    let again = write_report(out, &mut trimmed, |file, trimmed| {
        let views = json::Views { report_errors: &errors_so_far, trimmed, peak_memory, peak_rss, ..views };
        json::write(file, trace, views, probes)
    });
    match (&report, again) {
        (_, Ok(path)) => report = Ok(path),
        (Ok(_), Err(error)) => errors.push(ReportError {
            file: "report.json".to_string(),
            error: format!("cannot add what failed: {}", error.root_cause()),
        }),
        (Err(_), Err(_)) => {}
    }
    let has_report = report.is_ok();
    if let Err(error) = report {
        errors.insert(0, ReportError { file: "report.json".to_string(), error: error.root_cause().to_string() });
        trimmed = None;
    }
    ReportSet {
        written: Written {
            report: out.path().join("report.json"),
            html,
            folded,
            flamegraphs,
            growth,
            pprof,
            timeline,
            suspects: suspects.into_iter().take(5).collect(),
        },
        has_report,
        trimmed,
        errors,
    }
}

/// Writes report.json whole; if it cannot be (a full disk), a trimmed one that says why and what was cut,
/// and which later writes go straight to. `fill(file, trimmed reason)`.
fn write_report(
    out: &OutputDir,
    trimmed: &mut Option<Trim>,
    fill: impl Fn(&mut std::io::BufWriter<std::fs::File>, Option<&str>) -> Result<()>,
) -> Result<PathBuf> {
    if trimmed.is_none() {
        match out.write_with("report.json", |file| fill(file, None)) {
            Ok(path) => return Ok(path),
            Err(error) => {
                let cause = error.root_cause().to_string();
                let reason = format!(
                    "report.json could not be written whole ({cause}): stacks cut to the {TRIMMED_STACKS} with the \
                     most outstanding bytes, turns to the first {TRIMMED_TURNS}"
                );
                *trimmed = Some(Trim { cause, reason });
            }
        }
    }
    out.write_with("report.json", |file| fill(file, trimmed.as_ref().map(|trim| trim.reason.as_str())))
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
        match out.remove_file(name) {
            // A folder by that name is not a file this tool wrote: left alone.
            Err(error) if error.raw_os_error() != Some(libc::EISDIR) => failed.push(format!("{name} ({error})")),
            _ => {}
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
