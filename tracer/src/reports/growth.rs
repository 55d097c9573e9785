//! Growth between two moments of the trace: by default from the first stack snapshot after a warm-up to
//! the end. What was there at the first moment and is still there at the second is not growth; what a
//! stack added between them is.

use std::{collections::HashMap, time::Duration, time::SystemTime};

use super::stacks::{Frame, ReportStack, merge_by_names};
use crate::{
    collector::Trace,
    ledger::{Source, StackKey, StackStats},
};

/// A moment named on the command line (`--compare FROM..TO`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MomentSpec {
    Start,
    End,
    /// This long after the trace began.
    After(Duration),
    /// A turn, by id: as FROM its start, as TO its end.
    Turn(String),
}

/// `--compare FROM..TO`; without it, FROM is the end of the warm-up and TO the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareSpec {
    pub from: MomentSpec,
    pub to: MomentSpec,
    /// The option the window was given with (`--compare`, `--warmup`); `None`: the default window. A moment
    /// the user named that the trace cannot honour is warned about; the default falls back quietly.
    pub given_by: Option<&'static str>,
}

impl CompareSpec {
    /// From `warmup` after the start (default: a fifth of the run) to the end.
    pub fn after_warmup(warmup: Option<Duration>, run: Duration) -> Self {
        Self {
            from: MomentSpec::After(warmup.unwrap_or(run / 5)),
            to: MomentSpec::End,
            given_by: warmup.map(|_| "--warmup"),
        }
    }
}

pub fn parse_compare(text: &str) -> Result<CompareSpec, String> {
    let (from, to) = text.split_once("..").ok_or_else(|| format!("`{text}` is not FROM..TO (e.g. 5m..end)"))?;
    let moment = |part: &str, is_from: bool| -> Result<MomentSpec, String> {
        match part.trim() {
            "" if is_from => Ok(MomentSpec::Start),
            "" => Ok(MomentSpec::End),
            "start" => Ok(MomentSpec::Start),
            "end" => Ok(MomentSpec::End),
            time if time.starts_with(|c: char| c.is_ascii_digit()) => {
                crate::cli::parse_duration(time).map(MomentSpec::After).map_err(|error| {
                    if error.contains("too long") {
                        format!("{error} after the start")
                    } else {
                        format!("`{time}` in --compare is not a time since the start like 5m, nor start or end")
                    }
                })
            }
            turn => Ok(MomentSpec::Turn(turn.to_string())),
        }
    };
    let spec = CompareSpec { from: moment(from, true)?, to: moment(to, false)?, given_by: Some("--compare") };
    // Start, then times since it, then the end; turns are placed only once the trace has seen them.
    let order = |moment: &MomentSpec| match moment {
        MomentSpec::Start => Some((0, Duration::ZERO)),
        MomentSpec::After(after) => Some((1, *after)),
        MomentSpec::End => Some((2, Duration::ZERO)),
        MomentSpec::Turn(_) => None,
    };
    if let (Some(from_at), Some(to_at)) = (order(&spec.from), order(&spec.to)) {
        if from_at >= to_at {
            return Err(format!("--compare {text}: FROM must come before TO"));
        }
    }
    Ok(spec)
}

/// A resolved moment: nothing yet, a stack snapshot, or the state at the end of the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    Start,
    Snapshot(usize),
    End,
}

/// The snapshot a moment spec stands for: the first snapshot at or after that time; without one, `none`
/// (the start for FROM, the end for TO).
pub fn resolve(spec: &MomentSpec, started: SystemTime, snapshot_times: &[SystemTime], none: Moment) -> Moment {
    match spec {
        MomentSpec::Start => Moment::Start,
        MomentSpec::End => Moment::End,
        // A time past what the clock holds is after every snapshot.
        MomentSpec::After(after) => started
            .checked_add(*after)
            .and_then(|at| snapshot_times.iter().position(|snapshot| *snapshot >= at))
            .map_or(none, Moment::Snapshot),
        // Turns are resolved to times first (see `Growth::between`).
        MomentSpec::Turn(_) => none,
    }
}

/// A turn id as a time since the start: its start (`from`) or its end. `None` when it was not seen.
fn turn_time(trace: &Trace<'_>, id: &str, from: bool) -> Option<Duration> {
    let turn = trace.turns.iter().find(|turn| turn.id == id)?;
    let at = if from { turn.start } else { turn.end.unwrap_or(trace.ended_at) };
    at.duration_since(trace.started_at).ok()
}

/// `2.0s`, `1h 30m 5s`: a length of the trace for a message.
fn short_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(60) {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
    }
}

/// What the user asked of the window and the trace could not give, and what was used instead.
fn window_warnings(
    spec: &CompareSpec,
    (from, to): (&MomentSpec, &MomentSpec),
    (from_moment, to_moment): (Moment, Moment),
    run: Duration,
    unseen_turns: &[(&str, bool)],
) -> Vec<String> {
    let Some(option) = spec.given_by else { return Vec::new() };
    let mut warnings = Vec::new();
    for (id, is_from) in unseen_turns {
        warnings.push(format!(
            "{option} names turn `{id}`, which the trace did not see: the growth view {} instead",
            if *is_from { "starts at the start" } else { "ends at the end" }
        ));
    }
    let run_text = short_duration(run);
    if let (MomentSpec::After(after), Moment::Start) = (from, from_moment) {
        let after_text = short_duration(*after);
        warnings.push(if *after > run {
            format!(
                "{option}: {after_text} is after the end of the trace ({run_text}): the growth view starts at the \
                 start instead"
            )
        } else {
            format!(
                "{option}: no stack snapshot at or after {after_text} (one is taken every --interval): the growth \
                 view starts at the start instead"
            )
        });
    }
    if let (MomentSpec::After(after), Moment::End) = (to, to_moment) {
        if *after > run {
            warnings.push(format!(
                "{option}: {} is after the end of the trace ({run_text}): the growth view ends at the end instead",
                short_duration(*after)
            ));
        }
    }
    warnings
}

/// Growth per stack (merged by names, as in the report) between two moments.
pub struct Growth {
    pub from: SystemTime,
    pub to: SystemTime,
    /// (stack, bytes at FROM, bytes at TO), the largest growth first.
    pub stacks: Vec<(ReportStack, u64, u64)>,
    /// What of `--compare` / `--warmup` the trace could not honour, and what was used instead.
    pub warnings: Vec<String>,
}

impl Growth {
    pub fn between<'a>(trace: &Trace<'_>, spec: &'a CompareSpec) -> Self {
        let times: Vec<SystemTime> = trace.timeline.snapshots().iter().map(|s| s.at).collect();
        let mut unseen_turns: Vec<(&str, bool)> = Vec::new();
        let mut as_time = |moment: &'a MomentSpec, from: bool| match moment {
            MomentSpec::Turn(id) => turn_time(trace, id, from).map_or_else(
                || {
                    unseen_turns.push((id.as_str(), from));
                    if from { MomentSpec::Start } else { MomentSpec::End }
                },
                MomentSpec::After,
            ),
            other => other.clone(),
        };
        let (from_spec, to_spec) = (as_time(&spec.from, true), as_time(&spec.to, false));
        let from = resolve(&from_spec, trace.started_at, &times, Moment::Start);
        let to = resolve(&to_spec, trace.started_at, &times, Moment::End);
        let run = trace.ended_at.duration_since(trace.started_at).unwrap_or_default();
        let warnings = window_warnings(spec, (&from_spec, &to_spec), (from, to), run, &unseen_turns);
        if trace.ending.is_some() {
            // At the end of the trace, on the terminal beside the summary (snapshots have it in report.json).
            for warning in &warnings {
                eprintln!("dispatch-leaktrace: warning: {warning}");
            }
        }
        let bytes_at = |moment: Moment| -> (SystemTime, HashMap<StackKey, u64>) {
            match moment {
                Moment::Start => (trace.started_at, HashMap::new()),
                Moment::Snapshot(index) => {
                    let snapshot = &trace.timeline.snapshots()[index];
                    (snapshot.at, snapshot.outstanding.iter().copied().collect())
                }
                Moment::End => {
                    (trace.ended_at, trace.ledger.stats().map(|(key, stats)| (*key, stats.outstanding_bytes)).collect())
                }
            }
        };
        let ((from_at, before), (to_at, after)) = (bytes_at(from), bytes_at(to));
        let before = merge_by_names(trace, before);
        let after = merge_by_names(trace, after);
        // Stacks gone by TO shrank to nothing. Looked up by key, not by a scan of the list: a trace of
        // many stacks would otherwise spend its snapshots comparing frames (quadratic in the stacks).
        let gone: Vec<(ReportStack, u64, u64)> = before
            .iter()
            .filter(|(key, _)| !after.contains_key(*key))
            .map(|(_, (stack, from_bytes))| (stack.clone(), *from_bytes, 0))
            .collect();
        let mut stacks: Vec<(ReportStack, u64, u64)> = after
            .into_iter()
            .map(|(key, (stack, to_bytes))| {
                let from_bytes = before.get(&key).map_or(0, |(_, bytes)| *bytes);
                (stack, from_bytes, to_bytes)
            })
            .collect();
        stacks.extend(gone);
        stacks.sort_by(|a, b| {
            let growth = |s: &(ReportStack, u64, u64)| s.2 as i128 - s.1 as i128;
            growth(b).cmp(&growth(a)).then_with(|| a.0.frames.cmp(&b.0.frames))
        });
        Self { from: from_at, to: to_at, stacks, warnings }
    }

    /// The stacks of the growth view (of one source, or all), folded, with their bytes at TO, growth, and
    /// the share of what they allocated that they held at the end of the trace (from `whole`, the report's
    /// stacks; 1 for a stack it does not have).
    pub fn folded_stacks(&self, source: Option<Source>, whole: &[ReportStack]) -> Vec<super::flamegraph::GrowthStack> {
        let stats: HashMap<(Source, &[Frame]), &StackStats> =
            whole.iter().map(|stack| ((stack.source, stack.frames.as_slice()), &stack.stats)).collect();
        self.stacks
            .iter()
            .filter(|(stack, _, _)| source.is_none_or(|s| s == stack.source))
            .map(|(stack, from_bytes, to_bytes)| super::flamegraph::GrowthStack {
                line: super::folded::line_of(stack),
                to_bytes: *to_bytes,
                growth: (*to_bytes as i128 - *from_bytes as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                retained_fraction: match stats.get(&(stack.source, stack.frames.as_slice())) {
                    Some(stats) if stats.allocated_bytes > 0 => {
                        (stats.outstanding_bytes as f64 / stats.allocated_bytes as f64).min(1.0)
                    }
                    _ => 1.0,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_specs_read_times_start_and_end() {
        let spec = |from, to| CompareSpec { from, to, given_by: Some("--compare") };
        assert_eq!(parse_compare("5m..end"), Ok(spec(MomentSpec::After(Duration::from_secs(300)), MomentSpec::End)));
        assert_eq!(
            parse_compare("start..30s"),
            Ok(spec(MomentSpec::Start, MomentSpec::After(Duration::from_secs(30))))
        );
        assert_eq!(parse_compare("..end"), Ok(spec(MomentSpec::Start, MomentSpec::End)));
        assert!(parse_compare("10m..5m").is_err());
        assert!(parse_compare("end..start").is_err());
        assert!(parse_compare("5m..start").is_err());
        assert!(parse_compare("end..5m").is_err());
        assert!(parse_compare("start..start").is_err());
        assert!(parse_compare("5m").is_err());
        assert!(parse_compare("5 parsecs..end").is_err());
        // Anything else is a turn id: from its start to its end.
        assert_eq!(parse_compare("t12..t40"), Ok(spec(MomentSpec::Turn("t12".into()), MomentSpec::Turn("t40".into()))));
    }

    #[test]
    fn compare_times_beyond_any_clock_are_refused() {
        // Added to the start of the trace, these overflowed a SystemTime.
        for text in ["18446744073709551615s..end", "start..18446744073709551615s", "36501d..end", "1..end"] {
            assert!(parse_compare(text).is_err(), "{text}");
        }
        assert!(parse_compare("36500d..end").is_ok());
    }

    #[test]
    fn a_moment_past_the_clock_resolves_to_the_fallback() {
        let start = SystemTime::UNIX_EPOCH;
        let times = [start + Duration::from_secs(1)];
        let never = MomentSpec::After(Duration::MAX);
        assert_eq!(resolve(&never, start, &times, Moment::Start), Moment::Start);
        assert_eq!(resolve(&never, start, &times, Moment::End), Moment::End);
    }

    #[test]
    fn a_window_the_trace_did_not_reach_is_warned_about() {
        let spec = parse_compare("10h..20h").unwrap();
        let run = Duration::from_secs(2);
        let warnings =
            window_warnings(&spec, (&spec.from, &spec.to), (Moment::Start, Moment::End), run, &[("t9", true)]);
        assert_eq!(
            warnings,
            [
                "--compare names turn `t9`, which the trace did not see: the growth view starts at the start instead",
                "--compare: 10h is after the end of the trace (2.0s): the growth view starts at the start instead",
                "--compare: 20h is after the end of the trace (2.0s): the growth view ends at the end instead",
            ]
        );
        // Within the run but after the last snapshot.
        let spec = parse_compare("1s..end").unwrap();
        let warnings = window_warnings(&spec, (&spec.from, &spec.to), (Moment::Start, Moment::End), run, &[]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("no stack snapshot at or after 1.0s"), "{warnings:?}");
        // Honoured: nothing to say.
        let warnings = window_warnings(&spec, (&spec.from, &spec.to), (Moment::Snapshot(0), Moment::End), run, &[]);
        assert!(warnings.is_empty());
        // The default window falls back quietly on a short run; a --warmup given does not.
        let default = CompareSpec::after_warmup(None, run);
        assert!(
            window_warnings(&default, (&default.from, &default.to), (Moment::Start, Moment::End), run, &[]).is_empty()
        );
        let warmup = CompareSpec::after_warmup(Some(Duration::from_secs(60)), run);
        let warnings = window_warnings(&warmup, (&warmup.from, &warmup.to), (Moment::Start, Moment::End), run, &[]);
        assert!(warnings[0].starts_with("--warmup: 1m is after the end of the trace"), "{warnings:?}");
    }

    #[test]
    fn a_moment_resolves_to_the_first_snapshot_at_or_after_it() {
        let start = SystemTime::UNIX_EPOCH;
        let times: Vec<SystemTime> = [1, 2, 3].iter().map(|s| start + Duration::from_secs(*s)).collect();
        let at = |spec, none| resolve(&spec, start, &times, none);
        assert_eq!(at(MomentSpec::After(Duration::from_millis(1500)), Moment::End), Moment::Snapshot(1));
        assert_eq!(at(MomentSpec::After(Duration::from_secs(1)), Moment::End), Moment::Snapshot(0));
        assert_eq!(at(MomentSpec::After(Duration::from_secs(9)), Moment::End), Moment::End);
        assert_eq!(at(MomentSpec::After(Duration::from_secs(9)), Moment::Start), Moment::Start);
        assert_eq!(at(MomentSpec::Start, Moment::End), Moment::Start);
    }

    #[test]
    fn the_default_warmup_is_a_fifth_of_the_run() {
        let spec = CompareSpec::after_warmup(None, Duration::from_secs(100));
        assert_eq!(spec.from, MomentSpec::After(Duration::from_secs(20)));
        assert_eq!(
            CompareSpec::after_warmup(Some(Duration::from_secs(3)), Duration::from_secs(100)).from,
            MomentSpec::After(Duration::from_secs(3))
        );
    }
}
