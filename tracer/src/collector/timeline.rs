//! The time axis: the target's RSS and outstanding bytes per source, sampled at a fixed interval. Old
//! points are thinned (every other one dropped) when the series reaches its cap, so a run of any length
//! keeps a bounded series that still spans the whole run.

use std::{collections::BTreeMap, time::SystemTime};

use crate::ledger::Source;

/// Points kept at most; on reaching it, the older half is thinned to every other point.
pub const MAX_POINTS: usize = 512;

#[derive(Clone, Debug, PartialEq)]
pub struct TimelinePoint {
    pub at: SystemTime,
    pub rss_bytes: u64,
    pub outstanding: BTreeMap<Source, u64>,
}

#[derive(Debug, Default)]
pub struct Timeline {
    points: Vec<TimelinePoint>,
}

impl Timeline {
    pub fn push(&mut self, point: TimelinePoint) {
        if self.points.len() >= MAX_POINTS {
            self.thin();
        }
        self.points.push(point);
    }

    pub fn points(&self) -> &[TimelinePoint] {
        &self.points
    }

    /// Drops every other point of the older half: recent history keeps its resolution.
    fn thin(&mut self) {
        let half = self.points.len() / 2;
        let mut index = 0;
        self.points.retain(|_| {
            let keep = index >= half || index % 2 == 0;
            index += 1;
            keep
        });
    }
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
