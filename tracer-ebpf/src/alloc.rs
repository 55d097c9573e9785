//! Allocator entry and return points (malloc, free, mi_malloc, operator new, ...): exact outstanding
//! bytes per stack, aggregated here in the kernel so that userspace gets no event per call.
//!
//! One entry program and one return program serve every function; the uprobe's cookie says which
//! arguments hold the size and the pointer (see `tracer_common::alloc`). The entry keeps the arguments
//! per thread; the return reads the result, records the block, and takes the stack there, where it is
//! complete (at the entry the caller's frame is not yet linked).
//!
//! A hooked function that calls another hooked one (operator new calls malloc, calloc may call malloc)
//! is counted once: an entry made while the same thread is inside an outer call, deeper on its stack, only
//! raises a nesting depth that the matching return lowers again.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext, tracing::StackIdContext},
};
use tracer_common::{
    BPF_F_USER_STACK,
    alloc::{AllocCookie, AllocShape, Block, BlockKey, NO_STACK, StackAllocStats},
    counters::Counter,
};

use crate::{
    maps::STACKS,
    record::{count, traced_tgid},
};

/// An allocator call between its entry and its return, by thread (pid_tgid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AllocCall {
    cookie: u64,
    size: u64,
    /// The block resized or freed (realloc), or where the result is written (posix_memalign).
    ptr: u64,
    /// The user stack pointer at the entry: calls made deeper than it are nested inside this one.
    sp: u64,
    /// Nested hooked calls still under way.
    depth: u64,
}

#[map]
static ALLOC_CALLS: LruHashMap<u64, AllocCall> = LruHashMap::with_max_entries(16384, 0);

/// Live blocks. Userspace sizes it (`--max-blocks`); a full map is counted in `map_full`.
#[map]
static ALLOCS: HashMap<BlockKey, Block> = HashMap::with_max_entries(1 << 20, 0);

/// Figures per stack id.
#[map]
static ALLOC_STATS: HashMap<u32, StackAllocStats> = HashMap::with_max_entries(1 << 16, 0);

const BPF_NOEXIST: u64 = 1;

#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    let Some(tgid) = traced_tgid() else { return 0 };
    let Some(cookie) = AllocCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }) else { return 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let sp = unsafe { (*ctx.regs).rsp };
    let arg = |index: u8| ctx.arg::<u64>(index as usize).unwrap_or(0);
    let outer = ALLOC_CALLS.get_ptr_mut(&pid_tgid);
    // Inside a hooked call of this thread (deeper on the stack than its entry)?
    let nested_in = outer.filter(|call| sp < unsafe { (**call).sp });

    if cookie.shape == AllocShape::Free {
        let ptr = arg(cookie.ptr_arg);
        // free(NULL) is nothing; a free inside realloc or delete is the outer call's business.
        if ptr != 0 && nested_in.is_none() {
            release(tgid, ptr);
        }
        return 0;
    }
    if let Some(call) = nested_in {
        unsafe { (*call).depth += 1 };
        return 0;
    }
    let (size, ptr) = match cookie.shape {
        AllocShape::Malloc => (arg(cookie.size_arg), 0),
        AllocShape::Calloc => (arg(cookie.count_arg).wrapping_mul(arg(cookie.size_arg)), 0),
        AllocShape::Realloc | AllocShape::ExpandInPlace | AllocShape::PosixMemalign => {
            (arg(cookie.size_arg), arg(cookie.ptr_arg))
        }
        AllocShape::ReallocArray => (arg(cookie.count_arg).wrapping_mul(arg(cookie.size_arg)), arg(cookie.ptr_arg)),
        AllocShape::ResizeInPlace => (0, arg(cookie.ptr_arg)),
        AllocShape::Free => return 0,
    };
    // An entry already here but not deeper is left over from a call that never returned (a longjmp or an
    // exception through it): replace it.
    let call = AllocCall { cookie: cookie.encode(), size, ptr, sp, depth: 0 };
    if ALLOC_CALLS.insert(&pid_tgid, &call, 0).is_err() {
        count(Counter::MapFull);
    }
    0
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(tgid) = traced_tgid() else { return 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = ALLOC_CALLS.get_ptr_mut(&pid_tgid) else { return 0 };
    let call = unsafe {
        if (*call).depth > 0 {
            (*call).depth -= 1;
            return 0;
        }
        *call
    };
    let _ = ALLOC_CALLS.remove(&pid_tgid);
    let Some(cookie) = AllocCookie::decode(call.cookie) else { return 0 };
    let result: u64 = ctx.ret();
    match cookie.shape {
        AllocShape::Malloc | AllocShape::Calloc => {
            if result != 0 {
                record(&ctx, tgid, result, call.size);
            }
        }
        AllocShape::Realloc | AllocShape::ReallocArray => {
            if call.ptr == 0 {
                if result != 0 {
                    record(&ctx, tgid, result, call.size);
                }
            } else if result == 0 {
                // realloc(p, 0) frees p; any other NULL is a failure that leaves p as it was.
                if call.size == 0 {
                    release(tgid, call.ptr);
                }
            } else {
                // Moved or resized in place: the old block is gone, the new one belongs to this call.
                release(tgid, call.ptr);
                record(&ctx, tgid, result, call.size);
            }
        }
        AllocShape::PosixMemalign => {
            if result == 0 {
                if let Ok(block) = unsafe { bpf_probe_read_user(call.ptr as *const u64) } {
                    record(&ctx, tgid, block, call.size);
                }
            }
        }
        AllocShape::ResizeInPlace => {
            // xallocx returns the block's new usable size.
            if call.ptr != 0 && result != 0 {
                release(tgid, call.ptr);
                record(&ctx, tgid, call.ptr, result);
            }
        }
        AllocShape::ExpandInPlace => {
            if result != 0 {
                release(tgid, call.ptr);
                record(&ctx, tgid, call.ptr, call.size);
            }
        }
        AllocShape::Free => {}
    }
    0
}

#[inline(always)]
fn record(ctx: &RetProbeContext, tgid: u32, addr: u64, size: u64) {
    let stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK) {
        Ok(id) => id as u32,
        Err(_) => {
            count(Counter::StackErrors);
            NO_STACK
        }
    };
    let key = BlockKey { tgid, pad: 0, addr };
    if let Some(old) = unsafe { ALLOCS.get(&key) }.copied() {
        // Still live at this address: its free went through a path we do not see.
        count(Counter::MissedFrees);
        charge(old.stack_id, old.size, false);
    }
    let block = Block { size, timestamp_ns: unsafe { bpf_ktime_get_ns() }, stack_id, pad: 0 };
    if ALLOCS.insert(&key, &block, 0).is_err() {
        count(Counter::MapFull);
        return;
    }
    charge(stack_id, size, true);
}

#[inline(always)]
fn release(tgid: u32, addr: u64) {
    let key = BlockKey { tgid, pad: 0, addr };
    let Some(block) = (unsafe { ALLOCS.get(&key) }).copied() else {
        count(Counter::UnmatchedFrees);
        return;
    };
    let _ = ALLOCS.remove(&key);
    charge(block.stack_id, block.size, false);
}

/// Adds a block to its stack's figures, or takes it out.
#[inline(always)]
fn charge(stack_id: u32, size: u64, allocated: bool) {
    let mut stats = ALLOC_STATS.get_ptr_mut(&stack_id);
    if stats.is_none() {
        let _ = ALLOC_STATS.insert(&stack_id, &StackAllocStats::default(), BPF_NOEXIST);
        stats = ALLOC_STATS.get_ptr_mut(&stack_id);
    }
    let Some(stats) = stats else {
        count(Counter::MapFull);
        return;
    };
    // SAFETY: map values live as long as the map; every CPU updates them with atomic adds only.
    unsafe {
        if allocated {
            atomic_add(&raw mut (*stats).outstanding_bytes, size);
            atomic_add(&raw mut (*stats).outstanding_blocks, 1);
            atomic_add(&raw mut (*stats).allocated_bytes, size);
            atomic_add(&raw mut (*stats).allocated_blocks, 1);
        } else {
            atomic_add(&raw mut (*stats).outstanding_bytes, size.wrapping_neg());
            atomic_add(&raw mut (*stats).outstanding_blocks, 1u64.wrapping_neg());
            atomic_add(&raw mut (*stats).freed_bytes, size);
        }
    }
}

/// BPF's atomic add (core's atomic types offer no read-modify-write on this target).
#[inline(always)]
unsafe fn atomic_add(target: *mut u64, value: u64) {
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}
