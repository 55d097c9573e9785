//! Types shared by the kernel programs (`tracer-ebpf`) and the collector (`tracer`).
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel writes these bytes into maps and the ring
//! buffer, and userspace reads the same bytes back.
#![no_std]
// The tracepoint layouts are quoted from the kernel's format files, tabs included.
#![allow(clippy::tabs_in_doc_comments)]

pub mod alloc;
pub mod counters;
pub mod events;
pub mod tracepoints;

/// Name of each map, as declared in the kernel object; userspace looks maps up by these names.
pub mod map_names {
    pub const TARGETS: &str = "TARGETS";
    pub const EVENTS: &str = "EVENTS";
    pub const STACKS: &str = "STACKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const ALLOCS: &str = "ALLOCS";
    pub const MORE_ALLOCS: &str = "MORE_ALLOCS";
    pub const ALLOC_STATS: &str = "ALLOC_STATS";
    pub const LOG_FDS: &str = "LOG_FDS";
    pub const SAMPLING: &str = "SAMPLING";
    pub const ALLOC_CALLS: &str = "ALLOC_CALLS";
    pub const PAGE_SAMPLING: &str = "PAGE_SAMPLING";
    pub const SPILLED_STACKS: &str = "SPILLED_STACKS";
    pub const CALLER_RULES: &str = "CALLER_RULES";
    pub const RULED_CODE: &str = "RULED_CODE";
}

/// Whether `address` lies in one of `ranges`, each [start, end) (an unused one, [0, 0], holds nothing). A
/// loop of fixed count, as the kernel programs run it.
#[inline(always)]
pub fn in_ranges<const N: usize>(ranges: &[[u64; 2]; N], address: u64) -> bool {
    let mut index = 0;
    while index < N {
        let [start, end] = ranges[index];
        if address >= start && address < end {
            return true;
        }
        index += 1;
    }
    false
}

/// Flag for `bpf_get_stackid`: walk the user stack (frame pointers), not the kernel one.
pub const BPF_F_USER_STACK: u64 = 1 << 8;

/// Frames kept per stack: the kernel's `PERF_MAX_STACK_DEPTH`.
pub const MAX_STACK_DEPTH: usize = 127;
