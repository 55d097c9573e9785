//! Maps shared by the kernel programs. Sizes are defaults; userspace may resize them before loading.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
};
use tracer_common::{counters::Counter, events::Target};

/// Processes (tgid) being traced, with what their programs need to know of them. Userspace fills it; every
/// program returns at once for anyone else.
#[map]
pub static TARGETS: HashMap<u32, Target> = HashMap::with_max_entries(64, 0);

/// Memory events for userspace. Userspace sizes it from `--max-memory` (`ring_buffer_bytes`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

/// User stacks by id (`bpf_get_stackid`).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(32768, 0);

/// See [`Counter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Arguments of a syscall between its entry and its exit, by thread (pid_tgid).
#[map]
pub static PENDING_SYSCALLS: HashMap<u64, crate::syscalls::PendingSyscall> = HashMap::with_max_entries(16384, 0);
