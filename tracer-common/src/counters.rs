//! Loss and error counters, one slot each in the per-CPU `COUNTERS` array. Nothing the kernel side fails to
//! record goes uncounted: userspace sums the CPUs and prints every counter in the report.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event could not be written because the ring buffer was full.
    LostEvents = 0,
    /// An insert into a kernel map failed (map full, or out of memory).
    MapFull = 1,
    /// No user stack could be taken, not even into the event itself (-EFAULT: the stack could not be
    /// read). The bytes are still counted, under an unknown stack.
    StackErrors = 2,
    /// A syscall exit without the matching entry: the call began before the probes were attached.
    UnpairedSyscalls = 3,
    /// Stacks that did not fit in the stack map and travelled inside their event instead. Not a loss.
    InlineStacks = 4,
    /// An allocator free of a block the kernel never saw allocated (allocated before tracing began, or
    /// by an entry point we did not find). Not counted as a loss: expected when attaching.
    UnmatchedFrees = 5,
    /// A new block at the address of a block never freed: the earlier block's free was missed (freed
    /// through an entry point we did not find). Its bytes are taken out of its stack's figures.
    MissedFrees = 6,
    /// Of `MapFull`: allocator blocks left out because the kernel's table of live blocks was full. The
    /// collector then turns byte sampling on (see `collector::Collector::sample_when_blocks_overflow`).
    BlockTableFull = 7,
    /// Allocator blocks whose site had no room in the kernel's table of sites: charged to one site that
    /// stands for them all (`SITES_PAST_THE_TABLE`), so the totals stay exact and only where they were
    /// allocated is lost.
    SiteTableFull = 8,
    /// Of `BlockTableFull`: the bytes those blocks would have counted for (their size, or the sampling
    /// interval for a sampled small block), so the report can say how much the figures miss. Bytes, not
    /// events: not a loss of its own.
    BlockTableFullBytes = 9,
    /// Stacks our own walk began that were taken by the kernel's walk (`bpf_get_stackid`) instead: the
    /// stack could not be read, another thread's walk took the per-CPU buffers (uprobe programs run
    /// preemptible), its 30-bit id was another stack's, or the table of our stacks was full. Not a loss:
    /// the stack is still taken, at the kernel's cost.
    KernelWalkFallbacks = 10,
    /// munmap calls that failed after their event was sent (at the entry, so that it comes before the
    /// event of any mmap that gets the range back): the collector took out memory that stayed mapped. The
    /// kernel refuses such a call only when it would exceed the process's map count (ENOMEM) or the range
    /// is sealed (EPERM).
    UnmapFailedAfterRelease = 11,
    /// Events in the C runtime's code (a page fault in memset, a system call in its wrapper) whose stack our
    /// walk stepped out of by the instruction's CFI rule straight into the program's code: sent without the
    /// copy of the stack's top the collector otherwise unwinds the runtime's frames from. Not a loss.
    RuntimeEventsWalkedByRule = 12,
}

impl Counter {
    pub const ALL: [Counter; 13] = [
        Counter::LostEvents,
        Counter::MapFull,
        Counter::StackErrors,
        Counter::UnpairedSyscalls,
        Counter::InlineStacks,
        Counter::UnmatchedFrees,
        Counter::MissedFrees,
        Counter::BlockTableFull,
        Counter::SiteTableFull,
        Counter::BlockTableFullBytes,
        Counter::KernelWalkFallbacks,
        Counter::UnmapFailedAfterRelease,
        Counter::RuntimeEventsWalkedByRule,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The counter in slot `index`.
    pub const fn from_index(index: u32) -> Option<Counter> {
        if index < Self::COUNT { Some(Self::ALL[index as usize]) } else { None }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Counter::LostEvents => "lost_events",
            Counter::MapFull => "map_full",
            Counter::StackErrors => "stack_errors",
            Counter::UnpairedSyscalls => "unpaired_syscalls",
            Counter::InlineStacks => "inline_stacks",
            Counter::UnmatchedFrees => "unmatched_frees",
            Counter::MissedFrees => "missed_frees",
            Counter::BlockTableFull => "block_table_full",
            Counter::SiteTableFull => "site_table_full",
            Counter::BlockTableFullBytes => "block_table_full_bytes",
            Counter::KernelWalkFallbacks => "kernel_walk_fallbacks",
            Counter::UnmapFailedAfterRelease => "unmap_failed_after_release",
            Counter::RuntimeEventsWalkedByRule => "runtime_events_walked_by_rule",
        }
    }

    /// Whether the kernel programs say so through aya-log (with `-v`) as the counter grows: the losses, and
    /// the block table's, which are counted in `MapFull` without being said there.
    pub const fn is_said(self) -> bool {
        self.is_loss() || matches!(self, Counter::BlockTableFull)
    }

    /// Whether the counter counts something that happened while tracing and was not recorded. Inline stacks
    /// were recorded; an unmatched free is mostly of a block allocated before tracing began, which is
    /// expected when attaching to a running process (its free is seen, only the allocation is not ours).
    pub const fn is_loss(self) -> bool {
        // The block table's are in `MapFull` already.
        !matches!(
            self,
            Counter::InlineStacks
                | Counter::UnmatchedFrees
                | Counter::BlockTableFull
                | Counter::BlockTableFullBytes
                | Counter::KernelWalkFallbacks
                | Counter::RuntimeEventsWalkedByRule
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_found_by_their_slot() {
        for counter in Counter::ALL {
            assert_eq!(Counter::from_index(counter as u32), Some(counter));
        }
        assert_eq!(Counter::from_index(Counter::COUNT), None);
    }

    #[test]
    fn only_what_happened_unrecorded_is_a_loss() {
        let losses = Counter::ALL.into_iter().filter(|counter| counter.is_loss()).map(Counter::name);
        // Inline stacks were recorded; unmatched frees are mostly of blocks from before the trace.
        assert!(losses.eq([
            "lost_events",
            "map_full",
            "stack_errors",
            "unpaired_syscalls",
            "missed_frees",
            "site_table_full",
            "unmap_failed_after_release"
        ]));
    }
}
