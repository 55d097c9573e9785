//! The time axis: the target's RSS and outstanding bytes per source, sampled at a fixed interval, and
//! snapshots of the outstanding bytes of every stack, for growth between two moments. Old entries are
//! thinned (every other one dropped) when a series reaches its cap, so a run of any length keeps bounded
//! series that still span the whole run.

use std::{collections::BTreeMap, time::SystemTime};

use crate::ledger::{Source, StackKey, StackStats};

/// Points kept at most; on reaching it, the older half is thinned to every other point.
pub const MAX_POINTS: usize = 512;
/// Per-stack snapshots kept at most (each holds every stack with outstanding bytes).
pub const MAX_STACK_SNAPSHOTS: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub struct TimelinePoint {
    pub at: SystemTime,
    pub rss_bytes: u64,
    pub outstanding: BTreeMap<Source, u64>,
}

/// Outstanding bytes of every stack that had any, at one moment. A list, not a map: one is taken every
/// interval and only read whole (for growth and the suspects' series), so a list is cheaper to build and
/// half the size.
#[derive(Clone, Debug, PartialEq)]
pub struct StackSnapshot {
    pub at: SystemTime,
    pub outstanding: Vec<(StackKey, u64)>,
}

/// One look at every stack's figures: the outstanding bytes per source (for the timeline) and per stack
/// that holds any (for its snapshot), in a single pass over the stacks.
pub fn outstanding_now<'a>(
    stats: impl Iterator<Item = (&'a StackKey, &'a StackStats)>,
) -> (BTreeMap<Source, u64>, Vec<(StackKey, u64)>) {
    let mut by_source = BTreeMap::new();
    let mut by_stack = Vec::new();
    for (key, stats) in stats {
        *by_source.entry(key.source).or_default() += stats.outstanding_bytes;
        if stats.outstanding_bytes > 0 {
            by_stack.push((*key, stats.outstanding_bytes));
        }
    }
    (by_source, by_stack)
}

#[derive(Debug, Default)]
pub struct Timeline {
    points: Vec<TimelinePoint>,
    snapshots: Vec<StackSnapshot>,
}

impl Timeline {
    pub fn push(&mut self, point: TimelinePoint) {
        push_thinning(&mut self.points, point, MAX_POINTS);
    }

    pub fn push_snapshot(&mut self, snapshot: StackSnapshot) {
        push_thinning(&mut self.snapshots, snapshot, MAX_STACK_SNAPSHOTS);
    }

    /// Halves the per-stack snapshots (every other of the older half), to free memory.
    pub fn thin_snapshots(&mut self) {
        if self.snapshots.len() > 4 {
            let cap = self.snapshots.len();
            // cannot fail: more than four snapshots, checked just above
            let last = self.snapshots.pop().expect("more than four");
            push_thinning(&mut self.snapshots, last, cap.min(MAX_STACK_SNAPSHOTS));
        }
    }

    pub fn points(&self) -> &[TimelinePoint] {
        &self.points
    }

    pub fn snapshots(&self) -> &[StackSnapshot] {
        &self.snapshots
    }
}

/// Appends, first dropping every other entry of the older half when the series is full: recent history
/// keeps its resolution, and the first entry always stays.
fn push_thinning<T>(series: &mut Vec<T>, entry: T, cap: usize) {
    if series.len() >= cap {
        let half = series.len() / 2;
        let mut index = 0;
        series.retain(|_| {
            let keep = index >= half || index % 2 == 0;
            index += 1;
            keep
        });
    }
    series.push(entry);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn point(second: u64) -> TimelinePoint {
        TimelinePoint {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(second),
            rss_bytes: second,
            outstanding: BTreeMap::new(),
        }
    }

    #[test]
    fn stack_snapshots_are_thinned_to_their_own_cap() {
        let mut timeline = Timeline::default();
        for second in 0..1_000 {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            timeline.push_snapshot(StackSnapshot { at, outstanding: Vec::new() });
        }
        let snapshots = timeline.snapshots();
        assert!(snapshots.len() <= MAX_STACK_SNAPSHOTS);
        assert_eq!(snapshots[0].at, SystemTime::UNIX_EPOCH);
        assert_eq!(snapshots.last().unwrap().at, SystemTime::UNIX_EPOCH + Duration::from_secs(999));
    }

    #[test]
    fn one_pass_gives_exact_totals_and_only_stacks_that_hold_memory() {
        let stats = |outstanding_bytes| StackStats { outstanding_bytes, ..StackStats::default() };
        let figures = [
            (StackKey { source: Source::Malloc, stack: 1 }, stats(100)),
            (StackKey { source: Source::Malloc, stack: 2 }, stats(0)),
            (StackKey { source: Source::Malloc, stack: 3 }, stats(23)),
            (StackKey { source: Source::Mmap, stack: 1 }, stats(4096)),
        ];
        let (by_source, by_stack) = outstanding_now(figures.iter().map(|(key, stats)| (key, stats)));
        assert_eq!(by_source, BTreeMap::from([(Source::Malloc, 123), (Source::Mmap, 4096)]));
        let (mut by_stack, mut expected) = (
            by_stack,
            vec![
                (StackKey { source: Source::Malloc, stack: 1 }, 100),
                (StackKey { source: Source::Malloc, stack: 3 }, 23),
                (StackKey { source: Source::Mmap, stack: 1 }, 4096),
            ],
        );
        by_stack.sort_by_key(|(key, _)| (key.source, key.stack));
        expected.sort_by_key(|(key, _)| (key.source, key.stack));
        assert_eq!(by_stack, expected, "a stack that holds nothing takes no room in a snapshot");
    }

    #[test]
    fn the_series_stays_bounded_and_spans_the_whole_run() {
        let mut timeline = Timeline::default();
        for second in 0..10_000 {
            timeline.push(point(second));
        }
        let points = timeline.points();
        assert!(points.len() <= MAX_POINTS);
        assert_eq!(points.first().unwrap().rss_bytes, 0, "the first point survives thinning");
        assert_eq!(points.last().unwrap().rss_bytes, 9_999);
        assert!(points.windows(2).all(|w| w[0].at < w[1].at));
        // The recent end keeps one point per second.
        let tail: Vec<u64> = points[points.len() - 10..].iter().map(|p| p.rss_bytes).collect();
        assert_eq!(tail, (9_990..10_000).collect::<Vec<_>>());
    }
}
