//! Leak suspects: the memory of each allocation site followed over the growth window, with a verdict.
//!
//! A site is the innermost JavaScript function of a stack when it has one (JIT tiers merged: the same
//! function compiled twice is one site), else its leaf frame. Two figures rank the sites:
//! - growth: what its outstanding bytes gained over the window;
//! - retention: the share of all it ever allocated (or made resident) that it still holds.
//!
//! Retention matters because of reuse. Resident memory is charged to the code that first touched a page.
//! In a garbage-collected heap, a function that churns through large temporaries touches most of the
//! fresh pages the heap grows by, and data retained elsewhere then lives in those pages once the
//! temporaries are collected: the churner's resident figure grows with the leak, but it keeps only a
//! small share of all it touched. A leaking site keeps nearly everything it allocates. So sites are
//! ranked by kept growth, growth times retention, and a site that grows while keeping under half of what
//! it allocates is judged "churns", not "grows".

use std::{collections::HashMap, time::SystemTime};

use super::{
    growth::Growth,
    stacks::{Frame, ReportStack},
};
use crate::{
    collector::Trace,
    ledger::{Source, StackKey, turns::TurnIx},
};

/// Sites listed in report.json.
pub const MAX_SUSPECTS: usize = 50;
/// Ended turns needed before turns decide verdicts.
pub const MIN_TURNS: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct Suspect {
    pub site: String,
    pub source: Source,
    /// The site's largest stack, root first.
    pub frames: Vec<Frame>,
    pub stacks: usize,
    pub outstanding_bytes: u64,
    pub allocated_bytes: u64,
    pub growth_bytes: i64,
    /// outstanding / allocated, 0..=1.
    pub retention: f64,
    /// growth × retention: the ranking key.
    pub kept_growth_bytes: i64,
    /// Least-squares slope of the site's outstanding bytes over the window, and its fit (R²).
    pub bytes_per_second: f64,
    pub fit: f64,
    pub verdict: Verdict,
    pub evidence: String,
    /// With turns: the mean of what each ended turn left behind (allocated during it, still held at the
    /// end of the run), and the share of turns that left anything.
    pub bytes_per_turn: Option<f64>,
    pub turns_retaining: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept growing through the window and keeps what it allocates: a leak.
    Grows,
    /// Grew through the window but keeps under half of what it allocates: its pages are reused.
    Churns,
    /// Grew, then stopped: a cache filling up, a warm-up.
    LevelsOff,
    Shrinks,
    Flat,
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Grows => "grows",
            Verdict::Churns => "churns",
            Verdict::LevelsOff => "levels-off",
            Verdict::Shrinks => "shrinks",
            Verdict::Flat => "flat",
        }
    }
}

/// The site of a stack (frames root first): its innermost named JavaScript function (runtime builtins
/// such as Buffer.from run as anonymous JIT code above it), else its innermost JavaScript frame, else its
/// leaf.
pub fn site_of(frames: &[Frame]) -> String {
    let javascript = |f: &&Frame| f.contains(" [JS:");
    let function = |f: &Frame| f.split(" [JS:").next().unwrap_or(f).to_string();
    frames
        .iter()
        .rev()
        .filter(javascript)
        .find(|f| !f.starts_with("(anonymous)"))
        .or_else(|| frames.iter().rev().find(javascript))
        .map(function)
        .or_else(|| frames.last().map(|f| f.to_string()))
        .unwrap_or_default()
}

/// Judges a site by its outstanding bytes over the window. Growth is read from the least-squares slope,
/// not from single points: a garbage collection or a purge can take a bite out of any one sample. With
/// enough samples, a site whose second half grows at under a quarter of its first half's rate levels off.
pub fn judge(series: &[(f64, u64)], retention: f64) -> (Verdict, f64, f64) {
    let (slope, fit) = least_squares(series);
    let Some((&(first_time, first), &(last_time, last))) = series.first().zip(series.last()) else {
        return (Verdict::Flat, 0.0, 0.0);
    };
    let trend = slope * (last_time - first_time);
    let change = if trend.abs() > (last as f64 - first as f64).abs() { trend } else { last as f64 - first as f64 };
    let verdict = if change.abs() < (4096 * 4) as f64 {
        Verdict::Flat
    } else if slope < 0.0 {
        Verdict::Shrinks
    } else if series.len() >= 6 && {
        let (first_half, second_half) = series.split_at(series.len() / 2);
        let (early, late) = (least_squares(first_half).0, least_squares(second_half).0);
        early > 0.0 && late < early / 4.0
    } {
        Verdict::LevelsOff
    } else if retention < 0.5 {
        Verdict::Churns
    } else {
        Verdict::Grows
    };
    (verdict, slope, fit)
}

/// Slope and R² of y over x.
fn least_squares(series: &[(f64, u64)]) -> (f64, f64) {
    let n = series.len() as f64;
    if series.len() < 2 {
        return (0.0, 0.0);
    }
    let mean_x = series.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = series.iter().map(|(_, y)| *y as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in series {
        let (dx, dy) = (x - mean_x, *y as f64 - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 {
        return (0.0, 0.0);
    }
    let slope = sxy / sxx;
    let fit = if syy == 0.0 { 1.0 } else { (sxy * sxy) / (sxx * syy) };
    (slope, fit)
}

/// Judges a site by what each turn left behind, in turn order. A leak leaves memory behind in early and
/// late turns alike; a bounded structure holds only what recent turns put in (an LRU cache), or only what
/// the first turns did (a warm-up).
pub fn judge_turns(retained_per_turn: &[u64], retention: f64) -> (Verdict, f64, f64) {
    let turns = retained_per_turn.len();
    let mean = |values: &[u64]| values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    let per_turn = mean(retained_per_turn);
    let retaining = retained_per_turn.iter().filter(|bytes| **bytes > 0).count() as f64 / turns.max(1) as f64;
    let (early, late) = retained_per_turn.split_at(turns / 2);
    let (early, late) = (mean(early), mean(late));
    let verdict = if per_turn * turns as f64 <= 0.0 {
        Verdict::Flat
    } else if early > 0.0 && late > 0.0 && early.min(late) >= early.max(late) / 2.0 && retaining >= 0.5 {
        if retention < 0.5 { Verdict::Churns } else { Verdict::Grows }
    } else {
        Verdict::LevelsOff
    };
    (verdict, per_turn, retaining)
}

pub fn suspects(trace: &Trace<'_>, stacks: &[ReportStack], growth: &Growth, source: Source) -> Vec<Suspect> {
    // Site of every ledger stack of the source, by the names a reader sees.
    let mut site_of_key: HashMap<StackKey, String> = HashMap::new();
    for (key, _) in trace.ledger.stats().filter(|(key, _)| key.source == source) {
        let names = super::stacks::names_of(trace, key.stack);
        site_of_key.insert(*key, site_of(&names));
    }
    let window_from = growth.from;
    let series_times: Vec<&crate::collector::timeline::StackSnapshot> =
        trace.timeline.snapshots().iter().filter(|s| s.at >= window_from).collect();
    let seconds = |at: SystemTime| at.duration_since(window_from).unwrap_or_default().as_secs_f64();

    let mut by_site: HashMap<String, Suspect> = HashMap::new();
    for stack in stacks.iter().filter(|s| s.source == source) {
        let site = site_of(&stack.frames);
        let entry = by_site.entry(site.clone()).or_insert_with(|| Suspect {
            site,
            source,
            frames: stack.frames.clone(),
            stacks: 0,
            outstanding_bytes: 0,
            allocated_bytes: 0,
            growth_bytes: 0,
            retention: 0.0,
            kept_growth_bytes: 0,
            bytes_per_second: 0.0,
            fit: 0.0,
            verdict: Verdict::Flat,
            evidence: String::new(),
            bytes_per_turn: None,
            turns_retaining: None,
        });
        entry.stacks += 1;
        entry.outstanding_bytes += stack.stats.outstanding_bytes;
        entry.allocated_bytes += stack.stats.allocated_bytes;
    }
    for (stack, from, to) in growth.stacks.iter().filter(|(s, _, _)| s.source == source) {
        if let Some(entry) = by_site.get_mut(&site_of(&stack.frames)) {
            entry.growth_bytes += *to as i64 - *from as i64;
        }
    }
    for suspect in by_site.values_mut() {
        let mut series: Vec<(f64, u64)> = series_times
            .iter()
            .map(|snapshot| {
                let bytes = snapshot
                    .outstanding
                    .iter()
                    .filter(|(key, _)| site_of_key.get(key) == Some(&suspect.site))
                    .map(|(_, bytes)| *bytes)
                    .sum();
                (seconds(snapshot.at), bytes)
            })
            .collect();
        series.push((seconds(growth.to), suspect.outstanding_bytes));
        suspect.retention = if suspect.allocated_bytes == 0 {
            0.0
        } else {
            suspect.outstanding_bytes as f64 / suspect.allocated_bytes as f64
        };
        suspect.kept_growth_bytes = (suspect.growth_bytes as f64 * suspect.retention) as i64;
        let (verdict, slope, fit) = judge(&series, suspect.retention);
        suspect.verdict = verdict;
        suspect.bytes_per_second = slope;
        suspect.fit = fit;
        suspect.evidence = format!(
            "{} over {:.0} s ({:+.0} B/s, R² {:.2}); holds {:.0}% of the {} it allocated",
            signed_bytes(suspect.growth_bytes),
            seconds(growth.to),
            slope,
            fit,
            suspect.retention * 100.0,
            super::summary::human_bytes(suspect.allocated_bytes),
        );
    }
    // With enough ended turns, what each turn left behind decides the verdict.
    let ended: Vec<TurnIx> = trace.turns.iter().filter(|t| t.end.is_some()).map(|t| t.index).collect();
    if ended.len() >= MIN_TURNS {
        let retained = super::turns::retained_by_turn_and_stack(trace);
        for suspect in by_site.values_mut() {
            let per_turn: Vec<u64> = ended
                .iter()
                .map(|turn| {
                    retained.get(turn).map_or(0, |held| {
                        held.iter()
                            .filter(|(key, _)| site_of_key.get(key) == Some(&suspect.site))
                            .map(|(_, b)| *b)
                            .sum()
                    })
                })
                .collect();
            let (verdict, bytes_per_turn, retaining) = judge_turns(&per_turn, suspect.retention);
            suspect.verdict = verdict;
            suspect.bytes_per_turn = Some(bytes_per_turn);
            suspect.turns_retaining = Some(retaining);
            suspect.evidence = format!(
                "{} per turn left behind, by {:.0}% of {} turns; {}",
                super::summary::human_bytes(bytes_per_turn as u64),
                retaining * 100.0,
                per_turn.len(),
                suspect.evidence
            );
        }
    }
    let mut suspects: Vec<Suspect> = by_site.into_values().collect();
    suspects.sort_by(|a, b| b.kept_growth_bytes.cmp(&a.kept_growth_bytes).then_with(|| a.site.cmp(&b.site)));
    suspects
}

fn signed_bytes(bytes: i64) -> String {
    let sign = if bytes < 0 { "-" } else { "+" };
    format!("{sign}{}", super::summary::human_bytes(bytes.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[u64]) -> Vec<(f64, u64)> {
        values.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect()
    }

    #[test]
    fn the_site_is_the_innermost_javascript_function() {
        let frames: Vec<Frame> =
            ["main", "runTurn [JS:DFG]", "buildMessage [JS:FTL]", "bun+0x1234"].iter().map(|s| (*s).into()).collect();
        assert_eq!(site_of(&frames), "buildMessage");
        let builtin: Vec<Frame> = ["runTurn [JS:DFG]", "retainStreamChunk [JS:FTL]", "(anonymous) [JS:DFG]"]
            .iter()
            .map(|s| (*s).into())
            .collect();
        assert_eq!(site_of(&builtin), "retainStreamChunk");
        let native: Vec<Frame> = ["main", "leak"].iter().map(|s| (*s).into()).collect();
        assert_eq!(site_of(&native), "leak");
    }

    #[test]
    fn steady_growth_that_is_kept_is_a_leak() {
        let (verdict, slope, fit) = judge(&series(&[0, 100_000, 200_000, 300_000, 400_000]), 0.9);
        assert_eq!(verdict, Verdict::Grows);
        assert!((slope - 100_000.0).abs() < 1.0 && fit > 0.99);
    }

    #[test]
    fn steady_growth_of_a_churner_is_told_apart() {
        assert_eq!(judge(&series(&[0, 100_000, 200_000, 300_000, 400_000]), 0.1).0, Verdict::Churns);
    }

    #[test]
    fn a_cache_that_fills_then_stays_levels_off() {
        assert_eq!(
            judge(&series(&[0, 200_000, 400_000, 400_000, 400_000, 400_000, 400_000]), 0.9).0,
            Verdict::LevelsOff
        );
    }

    #[test]
    fn one_dip_does_not_stop_a_leak() {
        let leak = series(&[0, 100_000, 200_000, 300_000, 400_000, 500_000, 420_000]);
        assert_eq!(judge(&leak, 0.9).0, Verdict::Grows);
    }

    #[test]
    fn turns_that_all_leave_memory_behind_are_a_leak() {
        assert_eq!(judge_turns(&[4096; 10], 1.0).0, Verdict::Grows);
        let (verdict, per_turn, retaining) = judge_turns(&[8192, 4096, 8192, 4096, 8192, 4096], 1.0);
        assert_eq!((verdict, per_turn, retaining), (Verdict::Grows, 6144.0, 1.0));
        assert_eq!(judge_turns(&[4096; 10], 0.2).0, Verdict::Churns);
    }

    #[test]
    fn only_recent_or_only_early_turns_holding_memory_levels_off() {
        // An LRU cache of 3 entries after 10 turns: only the last 3 turns' entries remain.
        assert_eq!(judge_turns(&[0, 0, 0, 0, 0, 0, 0, 4096, 4096, 4096], 1.0).0, Verdict::LevelsOff);
        // A table filled in the first turns, then left alone.
        assert_eq!(judge_turns(&[4096, 4096, 4096, 0, 0, 0, 0, 0, 0, 0], 1.0).0, Verdict::LevelsOff);
        assert_eq!(judge_turns(&[0, 0, 0, 0], 1.0).0, Verdict::Flat);
    }

    #[test]
    fn shrinking_and_flat_series() {
        assert_eq!(judge(&series(&[400_000, 300_000, 100_000]), 0.9).0, Verdict::Shrinks);
        assert_eq!(judge(&series(&[4096, 4096, 8192]), 0.9).0, Verdict::Flat);
        assert_eq!(judge(&series(&[]), 0.9).0, Verdict::Flat);
    }
}
