//! The allocator's figures, kept by the kernel per allocation site: read into the ledger each tick (under
//! the stacks their sites name), checked for values below zero, and the kernel's table of live blocks
//! watched for the moment it fills.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use tracer_common::{
    alloc::{AllocSite, NO_STACK, SAMPLE_BYTES_WHEN_FULL, StackAllocStats},
    counters::Counter,
};

use super::{
    Collector, clock,
    stacks::{EventStack, KernelStackMaps},
};
use crate::ledger::{Source, StackKey, StackStats};

impl Collector {
    /// The kernel's table of live blocks is full: every block past it would be left out and its free be
    /// unmatched. The kernel turns byte sampling on at the first block left out (the default interval of
    /// --sample-bytes), which keeps the figures unbiased estimates and lets the table drain; this says so,
    /// once, and in report.json.
    pub(super) fn sample_when_blocks_overflow(&mut self) {
        if self.blocks_sampled_since.is_some() || self.block_table_full_said || !self.allocator_traced {
            return;
        }
        let left_out = self.maps.read_counters()[Counter::BlockTableFull as usize];
        if left_out == 0 {
            return;
        }
        let mut interval = self.maps.sample_bytes();
        // The overhead budget may have had sampling on already, and may lower it again later: the interval
        // becomes its floor below. A --sample-bytes the user chose is theirs to change.
        let budget_samples = self.overhead.as_ref().is_some_and(|budget| budget.byte_rate().is_some());
        if interval != 0 && interval != SAMPLE_BYTES_WHEN_FULL && !budget_samples {
            // Sampling was on before the table filled (--sample-bytes): only the counters can say more.
            self.block_table_full_said = true;
            eprintln!(
                "dispatch-leaktrace: warning: the kernel's table of live allocator blocks is full even with \
                 sampling ({left_out} blocks left out, counted in report.json); a larger --max-memory or \
                 --sample-bytes makes room"
            );
            return;
        }
        if interval < SAMPLE_BYTES_WHEN_FULL {
            // Finer than the kernel's choice (the budget's), or none (the kernel's write raced a reset of the
            // rate): set it here.
            if let Err(error) = self.maps.set_sample_bytes(SAMPLE_BYTES_WHEN_FULL) {
                eprintln!("dispatch-leaktrace: warning: {error:#}");
                return;
            }
            interval = SAMPLE_BYTES_WHEN_FULL;
        }
        self.blocks_sampled_since = Some((interval, SystemTime::now()));
        self.status_line.clear();
        eprintln!(
            "dispatch-leaktrace: warning: the kernel's table of live allocator blocks is full ({left_out} blocks \
             left out); sampling the allocator by bytes from now on (as --sample-bytes {}): its figures become \
             estimates; a larger --max-memory makes room for more blocks",
            crate::reports::summary::human_bytes(interval)
        );
    }

    /// Reads the allocator figures the kernel keeps per allocation site into the ledger. With
    /// `--min-age`, the outstanding figures count only blocks older than that, from the live blocks.
    pub(super) fn sync_allocator_figures(&mut self) {
        if !self.allocator_traced {
            return;
        }
        let mut by_stack: HashMap<StackKey, StackStats> = HashMap::new();
        let kernel_stats = self.maps.read_alloc_stats();
        let old_enough = self.min_age.map(|min_age| self.outstanding_blocks_older_than(min_age));
        for (site, mut figures) in kernel_stats {
            if saturate_negative(&mut figures) {
                self.negative_sites.insert(site);
            }
            let key = self.site_key(site);
            let mut stats = match &old_enough {
                // Blocks an exec released are no longer in the kernel's table.
                Some(old) => {
                    let (outstanding_bytes, outstanding_allocs) = old.get(&site).copied().unwrap_or_default();
                    StackStats { outstanding_bytes, outstanding_allocs, ..StackStats::default() }
                }
                None => {
                    let mut stats = StackStats {
                        outstanding_bytes: figures.outstanding_bytes,
                        outstanding_allocs: figures.outstanding_blocks,
                        ..StackStats::default()
                    };
                    self.released_blocks.correct(&site, &mut stats);
                    stats
                }
            };
            stats.allocated_bytes = figures.allocated_bytes;
            stats.allocated_allocs = figures.allocated_blocks;
            stats.freed_bytes += figures.freed_bytes;
            by_stack.entry(key).or_default().add(&stats);
        }
        self.ledger.replace_source_stats(Source::Malloc, by_stack);
    }

    /// (bytes, blocks) per allocation site of the live blocks allocated more than `min_age` ago.
    fn outstanding_blocks_older_than(&self, min_age: Duration) -> HashMap<AllocSite, (u64, u64)> {
        let min_age_ns = u64::try_from(min_age.as_nanos()).unwrap_or(u64::MAX);
        let cutoff = clock::monotonic_now_ns().saturating_sub(min_age_ns);
        let mut old = HashMap::new();
        for (_, block) in self.maps.live_blocks() {
            if block.timestamp_ns <= cutoff {
                let entry: &mut (u64, u64) = old.entry(block.site).or_default();
                entry.0 += block.charged_bytes;
                entry.1 += block.charged_blocks;
            }
        }
        old
    }

    /// The ledger key of an allocation site: its kernel stack with the caller put back as frame 1.
    fn site_key(&mut self, site: AllocSite) -> StackKey {
        if let Some(key) = self.site_keys.get(&site) {
            return *key;
        }
        self.teach_kernel_the_caller(site.caller);
        // A spilled stack's id is read from SPILLED_STACKS by the stack table, as an event's is.
        let stack_id = if site.stack_id == NO_STACK { -1 } else { site.stack_id as i32 };
        // Figures kept in the kernel have no time: name JIT code as it is now.
        let event_stack = EventStack {
            time_ns: u64::MAX,
            stack_id,
            inline: None,
            user_sp: 0,
            stack_top: &[],
            caller: Some(site.caller),
            alloc_caller: None,
        };
        let stack = self.stacks.intern_event_stack(
            &KernelStackMaps { ids: &self.maps.stacks, spilled: &self.maps.spilled_stacks },
            &event_stack,
            &mut self.modules,
            &mut self.symbolizer.jit,
        );
        self.teach_kernel_the_frames();
        let key = StackKey { source: Source::Malloc, stack };
        self.site_keys.insert(site, key);
        key
    }
}

/// Sets to 0 an outstanding figure the kernel holds below zero (wrapped round in its u64 by the atomic
/// adds), and says whether there was one: the report must never show a wrapped count.
fn saturate_negative(figures: &mut StackAllocStats) -> bool {
    let mut negative = false;
    for figure in [&mut figures.outstanding_bytes, &mut figures.outstanding_blocks] {
        if (*figure as i64) < 0 {
            *figure = 0;
            negative = true;
        }
    }
    negative
}

#[cfg(test)]
mod saturate_tests {
    use super::*;

    #[test]
    fn negative_kernel_figures_read_as_zero_and_are_told() {
        let mut figures = StackAllocStats {
            outstanding_bytes: (-7639i64) as u64,
            outstanding_blocks: (-6i64) as u64,
            allocated_bytes: 100,
            ..StackAllocStats::default()
        };
        assert!(saturate_negative(&mut figures));
        assert_eq!((figures.outstanding_bytes, figures.outstanding_blocks, figures.allocated_bytes), (0, 0, 100));
        let mut fine = StackAllocStats { outstanding_bytes: 5, outstanding_blocks: 1, ..StackAllocStats::default() };
        assert!(!saturate_negative(&mut fine));
        assert_eq!((fine.outstanding_bytes, fine.outstanding_blocks), (5, 1));
    }
}
