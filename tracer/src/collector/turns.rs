//! Turns on the time axis: marker lines in, turn starts and ends out, each turn opened and closed in the
//! ledger at the moment it happened relative to memory events (log writes come through the same ring
//! buffer as memory events, in order).

use std::{collections::HashMap, time::SystemTime};

use super::{
    clock::Clock,
    markers::{LineSplitter, Marker, TurnPatterns},
};
use crate::ledger::{Ledger, turns::TurnIx};

/// A turn as the reports show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnRecord {
    pub id: String,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    /// Its index in the ledger's turn figures.
    pub index: TurnIx,
}

/// A labelled moment: a marker a person sent that names no turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainMarker {
    pub at: SystemTime,
    pub label: String,
}

pub struct TurnTracker {
    patterns: Option<TurnPatterns>,
    lines: LineSplitter,
    clock: Clock,
    pub records: Vec<TurnRecord>,
    open: HashMap<String, usize>,
    pub markers: Vec<PlainMarker>,
    /// Turn ends whose start was never seen (the trace began during the turn, or the id did not match).
    pub unmatched_ends: u64,
}

impl TurnTracker {
    pub fn new(patterns: Option<TurnPatterns>) -> Self {
        Self {
            patterns,
            lines: LineSplitter::default(),
            clock: Clock::now(),
            records: Vec::new(),
            open: HashMap::new(),
            markers: Vec::new(),
            unmatched_ends: 0,
        }
    }

    pub fn wants_log_lines(&self) -> bool {
        self.patterns.is_some()
    }

    /// Bytes the target wrote to its log, captured in the kernel at `monotonic_ns`.
    pub fn on_log_write(
        &mut self,
        writer: (u32, u32),
        bytes: &[u8],
        truncated: bool,
        monotonic_ns: u64,
        ledger: &mut Ledger,
    ) {
        for line in self.lines.feed(writer, bytes, truncated) {
            // Lines that name no turn are dropped: a target's log may hold anything.
            self.on_line(&line, monotonic_ns, ledger, false);
        }
    }

    /// A line from `--markers-from` or `dispatch-leaktrace mark`: a turn marker, else a plain marker.
    pub fn on_sent_line(&mut self, line: &str, monotonic_ns: u64, ledger: &mut Ledger) {
        self.on_line(line, monotonic_ns, ledger, true);
    }

    fn on_line(&mut self, line: &str, monotonic_ns: u64, ledger: &mut Ledger, keep_others: bool) {
        let at = self.clock.wall(monotonic_ns);
        let marker = self.patterns.as_ref().map_or(Marker::Other, |patterns| patterns.classify(line));
        match marker {
            Marker::TurnStart(id) => {
                // A start for an id still open ends the earlier turn first: ids are reused.
                if let Some(position) = self.open.remove(&id) {
                    self.close(position, at, ledger);
                }
                let index = ledger.turns.begin();
                self.open.insert(id.clone(), self.records.len());
                self.records.push(TurnRecord { id, start: at, end: None, index });
            }
            Marker::TurnEnd(id) => match self.open.remove(&id) {
                Some(position) => self.close(position, at, ledger),
                None => self.unmatched_ends += 1,
            },
            Marker::Other if keep_others => self.markers.push(PlainMarker { at, label: line.trim().to_string() }),
            Marker::Other => {}
        }
    }

    fn close(&mut self, position: usize, at: SystemTime, ledger: &mut Ledger) {
        let record = &mut self.records[position];
        record.end = Some(at);
        ledger.turns.end(record.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Backing, Source, StackKey};

    fn tracker() -> TurnTracker {
        TurnTracker::new(Some(TurnPatterns::new(r"turn start (?P<id>\S+)", r"turn end (?P<id>\S+)").unwrap()))
    }

    #[test]
    fn overlapping_turns_pair_by_id_and_share_what_they_allocated() {
        let mut turns = tracker();
        let mut ledger = Ledger::new(4096);
        let key = StackKey { source: Source::Mmap, stack: 1 };
        turns.on_log_write((1, 1), b"turn start a\nturn start b\n", false, 1_000, &mut ledger);
        ledger.map(1, 0x10000, 4096, Backing::Anonymous, key);
        turns.on_log_write((1, 1), b"noise\nturn end a\n", false, 2_000, &mut ledger);
        ledger.map(1, 0x20000, 8192, Backing::Anonymous, key);
        turns.on_log_write((1, 2), b"turn end b\nturn end zzz\n", false, 3_000, &mut ledger);
        let ids: Vec<_> = turns.records.iter().map(|r| (r.id.as_str(), r.end.is_some())).collect();
        assert_eq!(ids, vec![("a", true), ("b", true)]);
        let live = |turn: usize| ledger.turns.figures()[turn].live.get(&Source::Mmap).copied().unwrap_or(0);
        // The page mapped while both ran is split between them.
        assert_eq!((live(0), live(1)), (2048, 2048 + 8192));
        assert_eq!(turns.unmatched_ends, 1);
        assert!(turns.markers.is_empty(), "the target's other lines are not kept");
    }

    #[test]
    fn sent_lines_that_name_no_turn_are_plain_markers() {
        let mut turns = tracker();
        let mut ledger = Ledger::new(4096);
        turns.on_sent_line("deploy 1.2.3", 5_000, &mut ledger);
        turns.on_sent_line("turn start x", 6_000, &mut ledger);
        assert_eq!(turns.markers.len(), 1);
        assert_eq!(turns.markers[0].label, "deploy 1.2.3");
        assert_eq!(turns.records.len(), 1);
    }
}
