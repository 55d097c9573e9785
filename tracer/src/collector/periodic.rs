//! The work done on a timer while the trace goes on: a timeline point and a snapshot of every stack's
//! outstanding bytes each interval, report sets on request, at each checkpoint and on crossing an RSS
//! threshold, the status line, and keeping the tracer within its memory budget. Kept apart from the
//! draining of events (mod.rs) so that what each interval costs can be read in one place.

use std::{
    collections::HashSet,
    time::{Instant, SystemTime},
};

use tracer_common::counters::Counter;

use super::{
    Collector, SnapshotReason, Trace, release_freed_memory, status,
    timeline::{self, StackSnapshot, TimelinePoint},
};
use crate::{
    ledger::{Source, StackIx, StackKey},
    procfs,
};

impl Collector {
    /// Brings everything up to now and hands the trace to `on_snapshot`.
    pub(super) fn snapshot(
        &mut self,
        reason: SnapshotReason,
        on_snapshot: &mut impl FnMut(&Trace<'_>, SnapshotReason),
    ) {
        self.modules.refresh();
        self.sample_rss();
        self.sync_allocator_figures();
        self.name_new_stacks();
        self.add_timeline_point();
        self.status_line.clear();
        on_snapshot(&self.trace(None), reason);
    }

    /// Updates the status line, when one is due.
    pub(super) fn show_status(&mut self) {
        if !self.status_line.due() {
            return;
        }
        let totals = self.ledger.by_source();
        // The source a reader looks at first leads: it is the one a narrow terminal keeps.
        let leading = crate::reports::stacks::primary_source_of_totals(&totals);
        let mut outstanding: Vec<(&'static str, u64)> =
            totals.iter().map(|(source, stats)| (source.name(), stats.outstanding_bytes)).collect();
        outstanding.sort_by_key(|(name, _)| Some(*name) != leading.map(Source::name));
        let (last_events, last_at) = self.status_events;
        let seconds = last_at.elapsed().as_secs_f64();
        let events_per_second = if seconds > 0.0 { (self.events - last_events) as f64 / seconds } else { 0.0 };
        self.status_events = (self.events, Instant::now());
        let counters = self.maps.read_counters();
        let lost: u64 =
            Counter::ALL.iter().zip(&counters).filter(|(counter, _)| counter.is_loss()).map(|(_, value)| value).sum();
        // As report.json counts them: the allocator's (kernel) and munmaps of memory never seen (ledger).
        let unmatched_in_kernel =
            Counter::ALL.iter().zip(&counters).find(|(counter, _)| **counter == Counter::UnmatchedFrees);
        let unmatched_frees =
            unmatched_in_kernel.map_or(0, |(_, value)| *value) + self.ledger.counters().unmatched_frees;
        let status = status::Status {
            elapsed: self.started_at.elapsed().unwrap_or_default(),
            pid: self.target.pid(),
            rss_bytes: self.rss_bytes,
            outstanding,
            events_per_second,
            lost,
            skipped_runs: self.maps.skipped_runs().saturating_sub(self.skipped_before),
            unmatched_frees,
            next_checkpoint: self.next_checkpoint.map(|at| at.saturating_duration_since(Instant::now())),
            overhead: self.overhead.as_ref().map(super::overhead::Budget::status),
        };
        self.status_line.show(&status);
    }

    /// The `--snapshot-at-rss` multiple the target's RSS has just crossed, if any: SIZE, then 2 x SIZE...
    pub(super) fn crossed_rss_threshold(&mut self) -> Option<u64> {
        let step = self.rss_threshold?;
        if self.rss_bytes < self.next_rss_threshold {
            return None;
        }
        let crossed = self.rss_bytes.checked_div(step)? * step;
        self.next_rss_threshold = crossed.saturating_add(step);
        Some(crossed)
    }

    /// Keeps the tracer's memory under `--max-memory`, all of its RSS: the mapped part (the kernel's event
    /// ring buffer, the executable) is about fixed, so the tracer's own data gets the rest, its "room". Past
    /// three fifths of the room (the reports need some at the end), stacks with nothing outstanding (and in
    /// no snapshot) are forgotten with their names, and the name caches emptied. What was evicted is
    /// counted in the report.
    pub(super) fn keep_within_budget(&mut self) {
        let Some(memory) = procfs::own_memory() else { return };
        self.peak_memory = self.peak_memory.max(memory.anonymous);
        let first_look = self.mapped_memory == 0;
        self.mapped_memory = memory.mapped;
        if first_look {
            // The stack table's check was set before the mapped part was known.
            self.next_stack_check = self.next_stack_check.min(self.stack_budget());
        }
        if memory.anonymous < self.room() / 5 * 3 {
            return;
        }
        self.evict(true);
        let after = procfs::own_memory().unwrap_or(memory);
        if after.total() >= self.memory_budget && !self.over_budget {
            // What is left is outstanding memory, which is the evidence: keep it, and say so.
            self.over_budget = true;
            self.status_line.clear();
            let human = crate::reports::summary::human_bytes;
            eprintln!(
                "dispatch-leaktrace: warning: over --max-memory ({}) with {} stacks that all hold outstanding memory \
                 ({} mapped: the kernel's event buffer and the tracer's code); raise --max-memory or sample \
                 (--sample-pages, --sample-bytes)",
                human(self.memory_budget),
                self.stacks.live(),
                human(after.mapped),
            );
        }
    }

    /// The budget's room for the tracer's own data: what the mapped pages leave, and never less than a
    /// quarter of the budget (a budget smaller than the mapped part alone cannot be kept: the tracer then
    /// keeps its data small, says it is over, and does not evict at every event).
    pub(super) fn room(&self) -> u64 {
        room_left(self.memory_budget, self.mapped_memory)
    }

    /// The stacks' share of the room: a flood of new stacks grows memory faster than a once-a-second
    /// look at the RSS sees, so the stack table is also checked against this as events come. The rest is
    /// for the ledger, the snapshots and the reports written at the end (about as much again as the table).
    pub(super) fn stack_budget(&self) -> u64 {
        self.room() / 5 * 2
    }

    /// Forgets the stacks with nothing outstanding (and in no snapshot), with their names; `thin`: also
    /// halves the per-stack snapshots (when the RSS itself is high: they hold a figure per stack).
    pub(super) fn evict(&mut self, thin: bool) {
        if thin {
            self.timeline.thin_snapshots();
        }
        let mut keep: HashSet<StackKey> = self
            .timeline
            .snapshots()
            .iter()
            .flat_map(|snapshot| snapshot.outstanding.iter().map(|(key, _)| *key))
            .collect();
        keep.extend(self.site_keys.values().copied());
        keep.extend(self.last_fault.values().map(|(_, key, _)| *key));
        self.ledger.evict_idle(&keep);
        let held: HashSet<StackIx> =
            self.ledger.stats().map(|(key, _)| key.stack).chain(keep.iter().map(|key| key.stack)).collect();
        for ix in self.stacks.evict_except(&held) {
            if let Some(names) = self.frames.get_mut(ix as usize) {
                *names = Vec::new();
            }
            self.threads.forget(ix);
        }
        self.symbolizer.forget_names();
        // What is left is in use: evict again only once the table has grown by a quarter.
        self.next_stack_check = self.stack_budget().max(self.stacks.held_bytes() / 4 * 5);
        release_freed_memory();
    }

    pub(super) fn add_timeline_point(&mut self) {
        let (outstanding, stacks) = timeline::outstanding_now(self.ledger.stats());
        let at = SystemTime::now();
        self.timeline.push(TimelinePoint { at, rss_bytes: self.rss_bytes, outstanding });
        self.timeline.push_snapshot(StackSnapshot { at, outstanding: stacks });
    }
}

/// What `budget` leaves for the tracer's own data once `mapped` bytes are resident: at least a quarter.
fn room_left(budget: u64, mapped: u64) -> u64 {
    budget.saturating_sub(mapped).max(budget / 4)
}

#[cfg(test)]
mod tests {
    use super::room_left;

    #[test]
    fn the_mapped_part_comes_out_of_the_budget() {
        const MIB: u64 = 1 << 20;
        // 128M with the 64 MiB ring buffer mapping and 14 MiB of code: 50 MiB for the tracer's data.
        assert_eq!(room_left(128 * MIB, 78 * MIB), 50 * MIB);
        assert_eq!(room_left(512 * MIB, 0), 512 * MIB);
        // The mapped part alone over the budget: a quarter still, not zero (evicting at every event).
        assert_eq!(room_left(64 * MIB, 78 * MIB), 16 * MIB);
    }
}
