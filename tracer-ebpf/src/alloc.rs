//! Allocator entry and return points (malloc, free, mi_malloc, operator new, ...): exact outstanding
//! bytes per stack, aggregated here in the kernel so that userspace gets no event per call.
//!
//! One entry program and one return program serve every function; the uprobe's cookie says which
//! arguments hold the size and the pointer (see `tracer_common::alloc`). The entry keeps the arguments
//! and the stack per thread; the return reads the result and records the block.
//!
//! The stack is taken at the entry, where the return address sits at the user stack pointer: frame-pointer
//! unwinding from a function's first instruction skips exactly that caller, so it is kept beside the stack
//! id and put back by userspace.
//!
//! A hooked function that calls another hooked one (operator new calls malloc, realloc(NULL, n) calls
//! malloc) is counted once: an entry made while the same thread is inside an outer call, deeper on its
//! stack, only raises a nesting depth that the matching return lowers again. Except when the outer call has
//! no return probe (it may throw: see `AllocCookie::no_return`): then the inner call records the block,
//! under the outer call's stack.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_get_attach_cookie,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap},
    programs::{ProbeContext, RetProbeContext, tracing::StackIdContext},
};
use tracer_common::{
    BPF_F_USER_STACK, MAX_STACK_DEPTH,
    alloc::{
        AllocCall, AllocCookie, AllocShape, AllocSite, Block, BlockKey, NO_STACK,
        SAMPLE_BYTES_WHEN_FULL, SITES_PAST_THE_TABLE, SPILLED_STACK, StackAllocStats,
    },
    counters::Counter,
    events::{InlineStack, stop_at},
};

use crate::{
    maps::STACKS,
    user_stack::{self, EntryRegisters, Preemption},
    record::{count, count_by, count_milestone, count_quietly, stops_at, take_user_stack, traced_tgid},
};

/// A thread's allocator call under way, in the slot of its tid (see [`CALL_SLOTS`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallSlot {
    /// The pid_tgid of the thread whose call this is; 0: free.
    owner: u64,
    /// Calls in [`ALLOC_CALLS`] of threads that map to this slot: only when there are any is the hash map
    /// looked up.
    overflow: u64,
    call: AllocCall,
}

/// Slots of [`CALL_SLOTS`], a power of two.
const CALL_SLOT_COUNT: u32 = 1 << 14;

/// The mask that picks a thread's slot from its tid: `CALL_SLOT_COUNT - 1`. A global that userspace may
/// change before loading, for the tests: 0 puts every thread in one slot, [`NO_CALL_SLOTS`] every call in
/// the hash map.
#[unsafe(no_mangle)]
pub static CALL_SLOT_MASK: u32 = CALL_SLOT_COUNT - 1;
const NO_CALL_SLOTS: u32 = u32::MAX;

/// Allocator calls under way, one per thread, in the slot of its tid: a slot is claimed with a
/// compare-and-swap of its owner and costs a few ns, where a hash map insert and remove on every call
/// cost a few hundred. A thread whose slot another thread holds uses [`ALLOC_CALLS`] instead, so that no
/// call is ever lost to a collision.
#[map]
static CALL_SLOTS: Array<CallSlot> = Array::with_max_entries(CALL_SLOT_COUNT, 0);

/// The calls of threads whose slot was taken (see [`CALL_SLOTS`]): a plain hash map, not an LRU one, so
/// that no call under way is pushed out by another (a full map is counted).
#[map]
pub static ALLOC_CALLS: HashMap<u64, AllocCall> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn slot_of(pid_tgid: u64) -> Option<*mut CallSlot> {
    let mask = unsafe { core::ptr::read_volatile(&CALL_SLOT_MASK) };
    if mask == NO_CALL_SLOTS {
        return None;
    }
    CALL_SLOTS.get_ptr_mut(pid_tgid as u32 & mask)
}

/// The call the current thread is inside, if any.
#[inline(always)]
fn current_call(pid_tgid: u64) -> Option<*mut AllocCall> {
    if let Some(slot) = slot_of(pid_tgid) {
        unsafe {
            if (*slot).owner == pid_tgid {
                return Some(&raw mut (*slot).call);
            }
            if (*slot).overflow == 0 {
                return None;
            }
        }
    }
    ALLOC_CALLS.get_ptr_mut(&pid_tgid)
}

/// Records the call the current thread enters, replacing any it had: in its slot when the slot is free or
/// its own, else in the hash map.
#[inline(always)]
fn begin_call(pid_tgid: u64, call: &AllocCall) {
    let slot = slot_of(pid_tgid);
    if let Some(slot) = slot {
        let owner = unsafe { (*slot).owner };
        // A slot held by another thread is never taken from it, even by a call long under way: its return
        // must find it. (A thread that left a call for ever, by longjmp, keeps its slot until its next call.)
        if (owner == 0 || owner == pid_tgid) && compare_and_swap(unsafe { &raw mut (*slot).owner }, owner, pid_tgid) {
            unsafe { (*slot).call = *call };
            // A call of this thread left in the map (one that never returned) is over.
            if unsafe { (*slot).overflow } != 0 && ALLOC_CALLS.remove(&pid_tgid).is_ok() {
                unsafe { atomic_add(&raw mut (*slot).overflow, u64::MAX) };
            }
            return;
        }
    }
    if let Some(old) = ALLOC_CALLS.get_ptr_mut(&pid_tgid) {
        unsafe { *old = *call };
    } else if ALLOC_CALLS.insert(&pid_tgid, call, BPF_NOEXIST).is_ok() {
        if let Some(slot) = slot {
            unsafe { atomic_add(&raw mut (*slot).overflow, 1) };
        }
    } else {
        count(Counter::MapFull);
    }
}

/// Ends the current thread's call: frees its slot, or takes it out of the hash map.
#[inline(always)]
fn end_call(pid_tgid: u64) {
    let slot = slot_of(pid_tgid);
    if let Some(slot) = slot {
        unsafe {
            if (*slot).owner == pid_tgid {
                let _ = compare_and_swap(&raw mut (*slot).owner, pid_tgid, 0);
                return;
            }
        }
    }
    if ALLOC_CALLS.remove(&pid_tgid).is_ok() {
        if let Some(slot) = slot {
            unsafe { atomic_add(&raw mut (*slot).overflow, u64::MAX) };
        }
    }
}

/// BPF's compare-and-swap: whether `*target` was `current` and is now `new`.
#[inline(always)]
fn compare_and_swap(target: *mut u64, current: u64, new: u64) -> bool {
    let (_, swapped) = unsafe {
        core::intrinsics::atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            target, current, new,
        )
    };
    swapped
}

/// The last free a thread entered, to count a free that another hooked free calls only once: the inner free
/// of the same address finds its block gone and counts no unmatched free.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Freeing {
    pid_tgid: u64,
    ptr: u64,
    sp: u64,
    /// In jiffies, as [`AllocCall::entered_ticks`].
    entered_ticks: u64,
}

/// Slots of [`FREEING`], a power of two.
const FREEING_SLOTS: u32 = 1 << 16;

/// The last free each thread entered, in the slot of its tid (modulo the size): an array, written on
/// every free, because an LRU hash map update cost about 0.4 us here. A slot holds its thread's id; two
/// threads that share one can only make a nested free (sized delete calling delete) look new, which then
/// finds its block gone and counts an unmatched free: never a wrong figure silently.
#[map]
static FREEING: Array<Freeing> = Array::with_max_entries(FREEING_SLOTS, 0);

#[inline(always)]
fn freeing_slot(pid_tgid: u64) -> Option<*mut Freeing> {
    FREEING.get_ptr_mut(pid_tgid as u32 & (FREEING_SLOTS - 1))
}

/// Live blocks, the first of them: preallocated, because an insert into a table that is not costs about
/// 500 ns more per malloc here (the kernel allocates and frees each element, measured: 870-1050 ns per
/// return against 355-385). Userspace sizes it from `--max-memory`, a sixteenth of it (256K blocks, 32
/// MiB, by default): the memory is taken whether blocks come or not. The blocks past it go to
/// [`MORE_ALLOCS`].
#[map]
static ALLOCS: HashMap<BlockKey, Block> = HashMap::with_max_entries(1 << 18, 0);

/// Live blocks past [`ALLOCS`], up to the rest of the block table's share of `--max-memory`: not
/// preallocated, so that the budget costs memory only for blocks that exist. Both full is counted in
/// `map_full` (and turns byte sampling on).
#[map]
static MORE_ALLOCS: HashMap<BlockKey, Block> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Slot 0 not 0: [`MORE_ALLOCS`] has held a block, and is looked in too. Never cleared: a flag read costs
/// less than a lookup in an empty table on every free.
#[map]
static MORE_ALLOCS_USED: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn more_allocs_used() -> bool {
    MORE_ALLOCS_USED.get(0).is_some_and(|used| *used != 0)
}

/// Puts a block in the table as new: Err(EEXIST) when one is live at its address, another error when both
/// tables are full.
#[inline(always)]
fn insert_block(key: &BlockKey, block: &Block) -> Result<(), i32> {
    let more_used = more_allocs_used();
    if more_used && unsafe { MORE_ALLOCS.get(key) }.is_some() {
        return Err(EEXIST);
    }
    match ALLOCS.insert(key, block, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(EEXIST) => Err(EEXIST),
        Err(_) => {
            if !more_used {
                // Said before the block goes in, so that a free on another CPU looks for it there.
                if let Some(used) = MORE_ALLOCS_USED.get_ptr_mut(0) {
                    unsafe { *used = 1 };
                }
            }
            MORE_ALLOCS.insert(key, block, BPF_NOEXIST)
        }
    }
}

/// Figures per allocation site. Userspace sizes it from `--max-memory` and puts `SITES_PAST_THE_TABLE` in
/// it; a site with no room is charged to that one. Not preallocated, as `ALLOCS`.
#[map]
static ALLOC_STATS: HashMap<AllocSite, StackAllocStats> = HashMap::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

/// `--sample-bytes N` in slot 0 (0: every allocation is recorded).
#[map]
static SAMPLING: Array<u64> = Array::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// A second in jiffies at the fastest tick a kernel is built with (HZ=1000): the windows below are as
/// long as they say there, and up to ten times longer at HZ=100, which only makes them more generous.
const SECOND_IN_TICKS: u64 = 1000;
/// No allocator call takes this long: an entry older than this was left by a call that never returned.
/// Generous, because a thread may be preempted inside a call for tens of milliseconds on a loaded machine
/// (at 50 ms, one operator new in 100,000 most likely lost its call site so in the tests under load).
const STALE_CALL_TICKS: u64 = SECOND_IN_TICKS;
/// A call without a return probe hands its block to an inner call made within this long (operator new
/// calls malloc at once, but the thread may be preempted in between). Older, it is a call whose inner
/// allocator we do not hook: forget it.
const DELEGATION_WINDOW_TICKS: u64 = SECOND_IN_TICKS;
/// A free that another hooked free makes (sized delete calling delete) comes at once; a free of the same
/// address later is of a new block at that address (allocated by another thread). Within the window, a
/// free of the same address releases the block only if one is live there again.
const NESTED_FREE_WINDOW_TICKS: u64 = SECOND_IN_TICKS / 20;

#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    let Some(tgid) = traced_tgid() else { return 0 };
    let Some(cookie) = AllocCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }) else { return 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let sp = unsafe { (*ctx.regs).rsp };
    // In ticks: every window judged here (stale calls, delegation, nested frees) is of tens of milliseconds
    // or more, and jiffies cost a read where the clock reads the TSC (about 50 ns a call in this VM, an
    // eighth of the entry). The coarse clock would do too, but the verifier refuses it to tracing programs.
    // A block's own time is taken by the clock at the return.
    let now = unsafe { bpf_jiffies64() };
    // Each register read at a constant offset: the verifier refuses a context read at a computed one.
    let registers: [u64; 8] = [
        ctx.arg(0).unwrap_or(0),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
        ctx.arg(3).unwrap_or(0),
        ctx.arg(4).unwrap_or(0),
        ctx.arg(5).unwrap_or(0),
        0,
        0,
    ];
    let arg = |index: u8| registers[(index & 7) as usize];
    // Inside a hooked call of this thread: deeper on the stack than its entry, or at the same depth (a tail
    // call: reallocarray jumps to realloc), and recent (an older entry was left by a call that never
    // returned: a longjmp or an exception through it).
    let nested_in = current_call(pid_tgid)
        .filter(|call| unsafe { sp <= (**call).sp && now.wrapping_sub((**call).entered_ticks) < STALE_CALL_TICKS });

    if cookie.shape == AllocShape::Free {
        let ptr = arg(cookie.ptr_arg);
        // free(NULL) is nothing; a free inside realloc is the outer call's business; a free that another
        // hooked free calls or jumps to (sized delete to delete) frees the same block once.
        if ptr == 0 || nested_in.is_some() {
            return 0;
        }
        let Some(slot) = freeing_slot(pid_tgid) else { return 0 };
        let last = unsafe { *slot };
        let again = last.pid_tgid == pid_tgid
            && last.ptr == ptr
            && sp <= last.sp
            && now.wrapping_sub(last.entered_ticks) < NESTED_FREE_WINDOW_TICKS;
        unsafe { *slot = Freeing { pid_tgid, ptr, sp, entered_ticks: now } };
        if !again {
            release(tgid, ptr);
        } else if let Some(block) = take_block(&BlockKey { tgid, pad: 0, addr: ptr }) {
            // Not nested after all: the same loop freeing the same address again, which another thread got
            // back from malloc meanwhile (the nested free finds the block gone, and is nothing).
            charge(&block.site, block.charged_bytes, block.charged_blocks, false);
        }
        return 0;
    }
    // An allocation ends whatever free came before on this thread.
    if let Some(slot) = freeing_slot(pid_tgid) {
        unsafe {
            if (*slot).pid_tgid == pid_tgid {
                (*slot).ptr = 0;
            }
        }
    }
    let (size, ptr) = match cookie.shape {
        AllocShape::Malloc => (arg(cookie.size_arg), 0),
        AllocShape::Calloc => (arg(cookie.count_arg).wrapping_mul(arg(cookie.size_arg)), 0),
        AllocShape::Realloc | AllocShape::ExpandInPlace | AllocShape::PosixMemalign => {
            (arg(cookie.size_arg), arg(cookie.ptr_arg))
        }
        AllocShape::ReallocArray => (arg(cookie.count_arg).wrapping_mul(arg(cookie.size_arg)), arg(cookie.ptr_arg)),
        AllocShape::ResizeInPlace => (0, arg(cookie.ptr_arg)),
        // Entered like a call, so that the frees made inside it are nested and left out.
        AllocShape::ReleasesCache => (0, 0),
        AllocShape::Free => return 0,
    };
    if let Some(call) = nested_in {
        let outer = unsafe { &mut *call };
        // A nested call without a return probe could never lower the depth again: leave it out.
        if cookie.no_return && !(outer.delegated == 0 && AllocCookie::decode(outer.cookie).is_some_and(|c| c.no_return))
        {
            return 0;
        }
        let outer_cookie = AllocCookie::decode(outer.cookie);
        let hands_over = outer_cookie.is_some_and(|c| c.no_return)
            && outer.delegated == 0
            && now.wrapping_sub(outer.entered_ticks) < DELEGATION_WINDOW_TICKS;
        if hands_over {
            // The outer call cannot record its result: this call does, where the outer one was called.
            // An inner call without a return probe itself (new[] calls new) passes it on again.
            let delegated = u32::from(!cookie.no_return);
            let (old_block, has_old_block) = take_old_block(tgid, cookie, ptr);
            *outer = AllocCall {
                cookie: cookie.encode(),
                size,
                ptr,
                sp,
                depth: 0,
                site: outer.site,
                entered_ticks: now,
                delegated,
                sampled_at: outer.sampled_at,
                old_block,
                has_old_block,
            };
        } else if outer_cookie.is_some_and(|c| !c.no_return) || outer.delegated != 0 {
            outer.depth += 1;
        } else {
            // A call without a return probe that never handed over: stale.
            enter(&ctx, tgid, pid_tgid, cookie, size, ptr, sp, now);
        }
        return 0;
    }
    // Any entry already here is left over from a call that never returned: replace it.
    enter(&ctx, tgid, pid_tgid, cookie, size, ptr, sp, now);
    0
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn enter(ctx: &ProbeContext, tgid: u32, pid_tgid: u64, cookie: AllocCookie, size: u64, ptr: u64, sp: u64, now: u64) {
    // An unsampled call still enters (its nested calls must not count), without the cost of a stack.
    let interval = sample_bytes();
    let sampled = is_sampled(interval, cookie, size);
    let site = if sampled { site_of_call(ctx, sp) } else { AllocSite { stack_id: NO_STACK, pad: 0, caller: 0 } };
    let (old_block, has_old_block) = take_old_block(tgid, cookie, ptr);
    let call = AllocCall {
        cookie: cookie.encode(),
        size,
        ptr,
        sp,
        depth: 0,
        site,
        entered_ticks: now,
        delegated: 0,
        // Intervals are at most 1 GiB (--sample-bytes' limit): the sum fits.
        sampled_at: if sampled { interval.min(u32::MAX as u64 - 1) as u32 + 1 } else { 0 },
        old_block,
        has_old_block,
    };
    begin_call(pid_tgid, &call);
}

/// Where an allocator call comes from: its stack and its caller (the return address on top of the stack at
/// the entry, which frame-pointer walking skips there).
#[inline(always)]
fn site_of_call(ctx: &ProbeContext, sp: u64) -> AllocSite {
    // Read now, not taken from the instruction pointer at the return: until then the return probe's
    // trampoline stands in its place on the stack, and a mmap the call makes needs the real one.
    let caller = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    if !uses_kernel_walk() {
        if let Some(stack_id) = walk_own(ctx, sp, caller) {
            return AllocSite { stack_id, pad: 0, caller };
        }
    }
    let stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK) {
        Ok(id) => id as u32,
        Err(EEXIST) => spill_stack(ctx),
        Err(_) => stack_error(),
    };
    AllocSite { stack_id, pad: 0, caller }
}

/// Not 0: allocator stacks are taken by the kernel's walk (`bpf_get_stackid`) rather than ours, to compare
/// the two (`LEAKTRACE_KERNEL_WALK=1`, set at load).
#[unsafe(no_mangle)]
pub static KERNEL_WALK: u32 = 0;

#[inline(always)]
fn uses_kernel_walk() -> bool {
    unsafe { core::ptr::read_volatile(&KERNEL_WALK) != 0 }
}

/// The user stack of an event (a page fault, a system call) by our own walk from the registers the thread
/// left user space with (see [`user_stack::walk_from_registers`]), kept in [`SPILLED_STACKS`]: its id
/// there, or None when the kernel's walk is to be taken instead, as for [`walk_own`].
#[inline(always)]
pub fn event_stack_id(ip: u64, sp: u64, rbp: u64, preemption: Preemption) -> Option<u32> {
    if uses_kernel_walk() {
        return None;
    }
    let walked = user_stack::walk_from_registers(ip, sp, rbp, preemption);
    if stops_at(stop_at::KEEP) {
        return Some(0);
    }
    let kept = match walked {
        Some(hash) => keep_own_walk(user_stack::scratch_stack()?, hash),
        None => None,
    };
    counted_fallback(kept)
}

/// The stack of an allocator call by our own walk (see [`user_stack::walk`]), kept in [`SPILLED_STACKS`]:
/// its id there, or None when the kernel's walk is to be taken instead (the stack could not be read, or
/// its id is another stack's, or the table is full: the kernel's stack map may still have room).
#[inline(always)]
fn walk_own(ctx: &ProbeContext, sp: u64, caller: u64) -> Option<u32> {
    let regs = unsafe { &*ctx.regs };
    let at = EntryRegisters { ip: regs.rip, sp, rbp: regs.rbp, caller };
    let kept = match user_stack::walk(&at) {
        Some(hash) => keep_own_walk(user_stack::scratch_stack()?, hash),
        None => None,
    };
    counted_fallback(kept)
}

/// Counts a walk of ours that leaves the stack to the kernel's walk (`kernel_walk_fallbacks`).
#[inline(always)]
fn counted_fallback(kept: Option<u32>) -> Option<u32> {
    if kept.is_none() {
        count_quietly(Counter::KernelWalkFallbacks);
    }
    kept
}

/// A stack our walk took, kept in [`SPILLED_STACKS`]: its id there, or None for the kernel's walk instead
/// (its id is another stack's, the table is full, or another thread's walk took the buffer meanwhile).
#[inline(always)]
fn keep_own_walk(stack: &InlineStack, hash: u64) -> Option<u32> {
    match keep_spilled(stack, hash) {
        // Kept from the buffer as this thread filled it, or the kernel's walk instead.
        Kept::Id(id) if user_stack::still_ours() => Some(id),
        Kept::Id(_) | Kept::Collision | Kept::Full => None,
    }
}

/// A realloc's old block, taken out of the live blocks at its entry, before realloc can free it: afterwards
/// another thread may get the same address from malloc and record its own block there before this call
/// returns, and the return would then take that block out instead.
#[inline(always)]
fn take_old_block(tgid: u32, cookie: AllocCookie, ptr: u64) -> (Block, u64) {
    if ptr == 0 || !matches!(cookie.shape, AllocShape::Realloc | AllocShape::ReallocArray) {
        return (Block::default(), 0);
    }
    match take_block(&BlockKey { tgid, pad: 0, addr: ptr }) {
        Some(block) => (block, 1),
        None => {
            count_unmatched_free(ptr, UnmatchedBy::Realloc);
            (Block::default(), 0)
        }
    }
}

/// The return address of the allocator call the current thread is inside, if any (see
/// `MemEvent::alloc_caller`).
#[inline(always)]
pub fn caller_of_current_call() -> u64 {
    current_call(bpf_get_current_pid_tgid()).map_or(0, |call| unsafe { (*call).site.caller })
}

/// The return address the kernel's uretprobe trampoline stands for in the stack slot at `slot`: the caller
/// of the allocator call the current thread is inside, when that call's return address was at `slot` (its
/// entry's stack pointer). None for another slot (a call nested in it, whose return is inside the allocator).
#[inline(always)]
pub fn return_address_under_trampoline(slot: u64) -> Option<u64> {
    let call = current_call(bpf_get_current_pid_tgid())?;
    let call = unsafe { &*call };
    (call.sp == slot && call.site.caller != 0).then_some(call.site.caller)
}

/// `bpf_get_stackid`'s answer when the stack's bucket in the stack map holds another stack, and a map
/// insert's with `BPF_NOEXIST` when the key is there.
const EEXIST: i32 = -17;

/// Stacks whose bucket in `STACKS` held another stack, by a hash of their frames with [`SPILLED_STACK`]
/// set: the stack map has one stack per bucket, so with a few hundred stacks two share a bucket now and
/// then, and the second would lose its stack. Userspace sizes it from `--max-memory`; not preallocated (a
/// stack is a kilobyte).
#[map]
static SPILLED_STACKS: HashMap<u32, InlineStack> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Keeps the current user stack in [`SPILLED_STACKS`] and returns its id there; [`NO_STACK`] (counted)
/// when it cannot.
#[inline(always)]
fn spill_stack(ctx: &ProbeContext) -> u32 {
    let Some(stack) = user_stack::scratch_stack() else { return stack_error() };
    if !take_user_stack(ctx, stack) {
        return stack_error();
    }
    match keep_spilled(stack, stack_hash(stack)) {
        Kept::Id(id) => id,
        // Two stacks with one hash: the second is not named rather than named wrongly.
        Kept::Collision => stack_error(),
        Kept::Full => {
            count(Counter::MapFull);
            NO_STACK
        }
    }
}

/// What became of a stack offered to [`SPILLED_STACKS`].
enum Kept {
    Id(u32),
    /// Its id is taken by another stack.
    Collision,
    Full,
}

/// The hash a kept stack's id comes from: FNV-1a over its frames, innermost first, then over its depth. Our
/// walk folds each frame in as it takes it (see `Walk::hash` in user_stack.rs), sparing a pass over them.
pub const STACK_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

#[inline(always)]
pub fn hash_frame(hash: u64, ip: u64) -> u64 {
    (hash ^ ip).wrapping_mul(0x0100_0000_01b3)
}

/// The hash of a stack's frames (those up to its depth: the rest of the buffer is stale).
#[inline(always)]
fn stack_hash(stack: &InlineStack) -> u64 {
    let depth = stack.depth as usize;
    let mut hash = STACK_HASH_SEED;
    let mut index = 0;
    while index < MAX_STACK_DEPTH && index < depth {
        hash = hash_frame(hash, stack.ips[index]);
        index += 1;
    }
    hash_frame(hash, stack.depth)
}

/// Keeps a stack in [`SPILLED_STACKS`] under its hash (see [`stack_hash`]); its id there.
#[inline(always)]
fn keep_spilled(stack: &InlineStack, hash: u64) -> Kept {
    let depth = stack.depth as usize;
    let id = SPILLED_STACK | ((hash ^ (hash >> 32)) as u32 & (SPILLED_STACK - 1));
    if let Some(kept) = unsafe { SPILLED_STACKS.get(&id) } {
        if kept.depth != stack.depth {
            return Kept::Collision;
        }
        let mut index = 0;
        while index < MAX_STACK_DEPTH && index < depth {
            if kept.ips[index] != stack.ips[index] {
                return Kept::Collision;
            }
            index += 1;
        }
        return Kept::Id(id);
    }
    if SPILLED_STACKS.insert(&id, stack, BPF_NOEXIST).is_err() && unsafe { SPILLED_STACKS.get(&id) }.is_none() {
        return Kept::Full;
    }
    Kept::Id(id)
}

#[inline(always)]
fn stack_error() -> u32 {
    count(Counter::StackErrors);
    NO_STACK
}

/// `--sample-bytes N`.
#[inline(always)]
fn sample_bytes() -> u64 {
    SAMPLING.get(0).copied().unwrap_or(0)
}

/// Byte sampling, decided in the kernel: a block of `size` bytes is recorded with probability
/// min(1, size / N) and then counts for max(size, N) bytes, so that every figure stays an unbiased estimate
/// (E[counted] = size). A block of N bytes or more is always recorded, at its size. Calls whose size is
/// only known at their return (xallocx) are always recorded.
#[inline(always)]
fn is_sampled(interval: u64, cookie: AllocCookie, size: u64) -> bool {
    if interval == 0 || size >= interval || cookie.shape == AllocShape::ResizeInPlace {
        return true;
    }
    let draw = (unsafe { bpf_get_prandom_u32() } as u64) << 32 | unsafe { bpf_get_prandom_u32() } as u64;
    draw % interval < size
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(tgid) = traced_tgid() else { return 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = current_call(pid_tgid) else { return 0 };
    let call = unsafe {
        if (*call).depth > 0 {
            (*call).depth -= 1;
            return 0;
        }
        *call
    };
    end_call(pid_tgid);
    let Some(cookie) = AllocCookie::decode(call.cookie) else { return 0 };
    let result: u64 = ctx.ret();
    let site = call.site;
    let record = |tgid: u32, addr: u64, size: u64, site: AllocSite| {
        if call.sampled_at != 0 {
            record(tgid, addr, size, site, u64::from(call.sampled_at - 1));
        }
    };
    match cookie.shape {
        AllocShape::Malloc | AllocShape::Calloc => {
            if result != 0 {
                record(tgid, result, call.size, site);
            }
        }
        AllocShape::Realloc | AllocShape::ReallocArray => {
            if call.ptr == 0 {
                if result != 0 {
                    record(tgid, result, call.size, site);
                }
            } else if call.has_old_block == 0 {
                // The old block was not in the table at the entry (counted there): only the new one counts.
                if result != 0 {
                    record(tgid, result, call.size, site);
                }
            } else if result == 0 && call.size != 0 {
                // A failure leaves p as it was: its block goes back, still charged to its site.
                put_back(tgid, call.ptr, &call.old_block);
            } else {
                // Freed (realloc(p, 0) returns NULL), moved or resized in place: the old block is gone, the
                // new one belongs to this call.
                let old = &call.old_block;
                charge(&old.site, old.charged_bytes, old.charged_blocks, false);
                if result != 0 {
                    record(tgid, result, call.size, site);
                }
            }
        }
        AllocShape::PosixMemalign => {
            if result == 0 {
                if let Ok(block) = unsafe { bpf_probe_read_user(call.ptr as *const u64) } {
                    record(tgid, block, call.size, site);
                }
            }
        }
        AllocShape::ResizeInPlace => {
            // xallocx returns the block's new usable size.
            if call.ptr != 0 && result != 0 {
                release(tgid, call.ptr);
                record(tgid, call.ptr, result, site);
            }
        }
        AllocShape::ExpandInPlace => {
            if result != 0 {
                release(tgid, call.ptr);
                record(tgid, call.ptr, call.size, site);
            }
        }
        AllocShape::Free | AllocShape::ReleasesCache => {}
    }
    0
}

#[inline(always)]
/// Records a block chosen at byte sampling `interval` (0: every block), charged accordingly.
fn record(tgid: u32, addr: u64, size: u64, site: AllocSite, interval: u64) {
    let key = BlockKey { tgid, pad: 0, addr };
    let (charged_bytes, charged_blocks) = if interval == 0 || size >= interval {
        (size, 1)
    } else {
        // Recorded with probability size / N: counts for N bytes and (rounded) N / size blocks.
        (interval, (interval + size / 2) / size.max(1))
    };
    // The site's figures, found (or made) before the block goes in, so that the block keeps the site it is
    // charged to: its own, or, with no room for it in the table, the one that stands for all such sites.
    let (site, stats) = match stats_of(&site) {
        Some(stats) => (site, Some(stats)),
        None => {
            count(Counter::SiteTableFull);
            (SITES_PAST_THE_TABLE, stats_of(&SITES_PAST_THE_TABLE))
        }
    };
    // Stamped now, by the clock events carry: an exec's event tells the old image's blocks from the new
    // one's by it (collector/exec.rs), which a coarse time, a tick behind, would confuse.
    let block = Block { size, timestamp_ns: unsafe { bpf_ktime_get_ns() }, site, charged_bytes, charged_blocks };
    // Inserted as new first, so that the usual case costs one map operation, not a lookup too.
    match insert_block(&key, &block) {
        Ok(()) => {}
        Err(EEXIST) => {
            // Still live at this address: its free went through a path we do not see.
            count(Counter::MissedFrees);
            if let Some(old) = take_block(&key) {
                charge(&old.site, old.charged_bytes, old.charged_blocks, false);
            }
            // Replaced whole (a new element), never written over while userspace reads it.
            if insert_block(&key, &block).is_err() {
                count_block_table_full(charged_bytes);
                return;
            }
        }
        Err(_) => {
            count_block_table_full(charged_bytes);
            return;
        }
    }
    match stats {
        Some(stats) => add_to(stats, charged_bytes, charged_blocks, true),
        None => count(Counter::MapFull),
    }
}

/// Puts back a block taken out by [`take_old_block`], whose realloc failed. Its site's figures still count
/// it.
#[inline(always)]
fn put_back(tgid: u32, addr: u64, block: &Block) {
    let key = BlockKey { tgid, pad: 0, addr };
    if insert_block(&key, block).is_err() {
        // Nothing can be at a live block's address; a full map leaves it out of the table (counted), and so
        // out of the figures too.
        count_block_table_full(block.charged_bytes);
        charge(&block.site, block.charged_bytes, block.charged_blocks, false);
    }
}

#[inline(always)]
fn release(tgid: u32, addr: u64) {
    let Some(block) = take_block(&BlockKey { tgid, pad: 0, addr }) else {
        count_unmatched_free(addr, UnmatchedBy::Free);
        return;
    };
    charge(&block.site, block.charged_bytes, block.charged_blocks, false);
}

/// Takes a live block out of the table: `Some` only for the one caller whose remove took it, so that a
/// block is charged out of its site once.
#[inline(always)]
fn take_block(key: &BlockKey) -> Option<Block> {
    if let Some(block) = unsafe { ALLOCS.get(key) }.copied() {
        return ALLOCS.remove(key).ok().map(|()| block);
    }
    if !more_allocs_used() {
        return None;
    }
    let block = unsafe { MORE_ALLOCS.get(key) }.copied()?;
    MORE_ALLOCS.remove(key).ok().map(|()| block)
}

/// A block the full table left out: a map insert that failed. Byte sampling starts here and now, unless
/// some is in force already (the collector says so to the user).
#[inline(always)]
fn count_block_table_full(charged_bytes: u64) {
    count_quietly(Counter::MapFull);
    count(Counter::BlockTableFull);
    count_by(Counter::BlockTableFullBytes, charged_bytes);
    if let Some(interval) = SAMPLING.get_ptr_mut(0) {
        // SAFETY: an array slot lives as long as the map; a racing CPU writes the same value.
        unsafe {
            if *interval == 0 {
                *interval = SAMPLE_BYTES_WHEN_FULL;
            }
        }
    }
}

/// What met no live block: a free, or the old block of a realloc.
#[derive(Clone, Copy)]
enum UnmatchedBy {
    Free,
    Realloc,
}

/// Counts a free (or a realloc's old block) of `addr` that no live block matches, and says which, with its
/// thread, when this CPU's count reaches 1 or a power of two (`-v`): a run that should have none shows where
/// to look.
#[inline(always)]
fn count_unmatched_free(addr: u64, by: UnmatchedBy) {
    // With sampling, most blocks were never recorded: their frees are expected to miss.
    if sample_bytes() == 0 {
        if let Some(count) = count_milestone(Counter::UnmatchedFrees, 1) {
            say_unmatched_free(addr, by as u32, count);
        }
    }
}

/// The log line of [`count_unmatched_free`]; out of line, as [`crate::record`]'s `say_loss`.
#[inline(never)]
fn say_unmatched_free(addr: u64, by: u32, count: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let by = if by == UnmatchedBy::Realloc as u32 { "realloc" } else { "free" };
    aya_log_ebpf::warn!(
        &(),
        "kernel programs: unmatched free {} on one CPU: {} of {:x} by thread {}, no live block there",
        count,
        by,
        addr,
        tid
    );
}

/// Adds a block to its site's figures, or takes it out.
#[inline(always)]
fn charge(site: &AllocSite, bytes: u64, blocks: u64, allocated: bool) {
    match stats_of(site) {
        Some(stats) => add_to(stats, bytes, blocks, allocated),
        None => count(Counter::MapFull),
    }
}

/// A site's figures in the table, made when new; `None` when the table has no room for it.
#[inline(always)]
fn stats_of(site: &AllocSite) -> Option<*mut StackAllocStats> {
    ALLOC_STATS.get_ptr_mut(site).or_else(|| {
        let _ = ALLOC_STATS.insert(site, &StackAllocStats::default(), BPF_NOEXIST);
        ALLOC_STATS.get_ptr_mut(site)
    })
}

#[inline(always)]
fn add_to(stats: *mut StackAllocStats, bytes: u64, blocks: u64, allocated: bool) {
    // SAFETY: map values live as long as the map; every CPU updates them with atomic adds only.
    unsafe {
        if allocated {
            atomic_add(&raw mut (*stats).outstanding_bytes, bytes);
            atomic_add(&raw mut (*stats).outstanding_blocks, blocks);
            atomic_add(&raw mut (*stats).allocated_bytes, bytes);
            atomic_add(&raw mut (*stats).allocated_blocks, blocks);
        } else {
            atomic_add(&raw mut (*stats).outstanding_bytes, bytes.wrapping_neg());
            atomic_add(&raw mut (*stats).outstanding_blocks, blocks.wrapping_neg());
            atomic_add(&raw mut (*stats).freed_bytes, bytes);
        }
    }
}

/// BPF's atomic add (core's atomic types offer no read-modify-write on this target).
#[inline(always)]
unsafe fn atomic_add(target: *mut u64, value: u64) {
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}
