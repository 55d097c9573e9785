//! Growth between two moments of the trace: by default from the first stack snapshot after a warm-up to
//! the end. What was there at the first moment and is still there at the second is not growth; what a
//! stack added between them is.

use std::{collections::HashMap, time::Duration, time::SystemTime};

use super::stacks::{ReportStack, merge_by_names};
use crate::{
    collector::Trace,
    ledger::{Source, StackKey},
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
}

impl CompareSpec {
    /// From `warmup` after the start (default: a fifth of the run) to the end.
    pub fn after_warmup(warmup: Option<Duration>, run: Duration) -> Self {
        Self { from: MomentSpec::After(warmup.unwrap_or(run / 5)), to: MomentSpec::End }
    }
}

pub fn parse_compare(text: &str) -> Result<CompareSpec, String> {
    let (from, to) = text.split_once("..").ok_or_else(|| format!("`{text}` is not FROM..TO (e.g. 5m..end)"))?;
    let moment = |part: &str| -> Result<MomentSpec, String> {
        match part.trim() {
            "start" | "" if std::ptr::eq(part, from) => Ok(MomentSpec::Start),
            "end" | "" => Ok(MomentSpec::End),
            "start" => Ok(MomentSpec::Start),
            time if time.starts_with(|c: char| c.is_ascii_digit()) => humantime::parse_duration(time)
                .map(MomentSpec::After)
                .map_err(|_| format!("`{time}` in --compare is not a time since the start like 5m, nor start or end")),
            turn => Ok(MomentSpec::Turn(turn.to_string())),
        }
    };
    let spec = CompareSpec { from: moment(from)?, to: moment(to)? };
    if let (MomentSpec::After(a), MomentSpec::After(b)) = (&spec.from, &spec.to) {
        if a >= b {
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
        MomentSpec::After(after) => {
            snapshot_times.iter().position(|at| *at >= started + *after).map_or(none, Moment::Snapshot)
        }
        // Turns are resolved to times first (see `Growth::between`).
        MomentSpec::Turn(_) => none,
    }
}

/// A turn id as a time since the start: its start (`from`) or its end. Unknown: `None`, said once.
fn turn_time(trace: &Trace<'_>, id: &str, from: bool) -> Option<Duration> {
    let Some(turn) = trace.turns.iter().find(|turn| turn.id == id) else {
        eprintln!(
            "dispatch-leaktrace: warning: --compare names turn `{id}`, which was not seen: using the {}",
            if from { "start" } else { "end" }
        );
        return None;
    };
    let at = if from { turn.start } else { turn.end.unwrap_or(trace.ended_at) };
    at.duration_since(trace.started_at).ok()
}

/// Growth per stack (merged by names, as in the report) between two moments.
pub struct Growth {
    pub from: SystemTime,
    pub to: SystemTime,
    /// (stack, bytes at FROM, bytes at TO), the largest growth first.
    pub stacks: Vec<(ReportStack, u64, u64)>,
}

impl Growth {
    pub fn between(trace: &Trace<'_>, spec: &CompareSpec) -> Self {
        let times: Vec<SystemTime> = trace.timeline.snapshots().iter().map(|s| s.at).collect();
        let as_time = |moment: &MomentSpec, from: bool| match moment {
            MomentSpec::Turn(id) => turn_time(trace, id, from)
                .map_or(if from { MomentSpec::Start } else { MomentSpec::End }, MomentSpec::After),
            other => other.clone(),
        };
        let from = resolve(&as_time(&spec.from, true), trace.started_at, &times, Moment::Start);
        let to = resolve(&as_time(&spec.to, false), trace.started_at, &times, Moment::End);
        let bytes_at = |moment: Moment| -> (SystemTime, HashMap<StackKey, u64>) {
            match moment {
                Moment::Start => (trace.started_at, HashMap::new()),
                Moment::Snapshot(index) => {
                    let snapshot = &trace.timeline.snapshots()[index];
                    (snapshot.at, snapshot.outstanding.clone())
                }
                Moment::End => {
                    (trace.ended_at, trace.ledger.stats().map(|(key, stats)| (*key, stats.outstanding_bytes)).collect())
                }
            }
        };
        let ((from_at, before), (to_at, after)) = (bytes_at(from), bytes_at(to));
        let before = merge_by_names(trace, before);
        let after = merge_by_names(trace, after);
        let mut stacks: Vec<(ReportStack, u64, u64)> = after
            .into_iter()
            .map(|(key, (stack, to_bytes))| {
                let from_bytes = before.get(&key).map_or(0, |(_, bytes)| *bytes);
                (stack, from_bytes, to_bytes)
            })
            .collect();
        // Stacks gone by TO shrank to nothing.
        for (key, (stack, from_bytes)) in &before {
            if !stacks.iter().any(|(s, _, _)| s.source == key.0 && s.frames == key.1) {
                stacks.push((stack.clone(), *from_bytes, 0));
            }
        }
        stacks.sort_by(|a, b| {
            let growth = |s: &(ReportStack, u64, u64)| s.2 as i128 - s.1 as i128;
            growth(b).cmp(&growth(a)).then_with(|| a.0.frames.cmp(&b.0.frames))
        });
        Self { from: from_at, to: to_at, stacks }
    }

    /// Folded stacks at FROM and at TO, for inferno's differential flamegraph.
    pub fn folded_pair(&self, source: Option<Source>) -> (String, String) {
        let (mut before, mut after) = (String::new(), String::new());
        for (stack, from_bytes, to_bytes) in &self.stacks {
            if source.is_some_and(|s| s != stack.source) {
                continue;
            }
            let line = super::folded::line_of(stack);
            if *from_bytes > 0 {
                before.push_str(&format!("{line} {from_bytes}\n"));
            }
            if *to_bytes > 0 {
                after.push_str(&format!("{line} {to_bytes}\n"));
            }
        }
        (before, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_specs_read_times_start_and_end() {
        let spec = |from, to| CompareSpec { from, to };
        assert_eq!(parse_compare("5m..end"), Ok(spec(MomentSpec::After(Duration::from_secs(300)), MomentSpec::End)));
        assert_eq!(
            parse_compare("start..30s"),
            Ok(spec(MomentSpec::Start, MomentSpec::After(Duration::from_secs(30))))
        );
        assert_eq!(parse_compare("..end"), Ok(spec(MomentSpec::Start, MomentSpec::End)));
        assert!(parse_compare("10m..5m").is_err());
        assert!(parse_compare("5m").is_err());
        assert!(parse_compare("5 parsecs..end").is_err());
        // Anything else is a turn id: from its start to its end.
        assert_eq!(parse_compare("t12..t40"), Ok(spec(MomentSpec::Turn("t12".into()), MomentSpec::Turn("t40".into()))));
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
