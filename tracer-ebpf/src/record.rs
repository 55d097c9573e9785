//! What every probe does once it has decided to record something: count a failure, take the user stack
//! (and, in the C runtime, a copy of its top), send an event.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user_buf,
        generated::{bpf_get_current_task_btf, bpf_get_stack, bpf_task_pt_regs},
    },
    programs::tracing::StackIdContext,
};
use tracer_common::{
    BPF_F_USER_STACK, MAX_STACK_DEPTH,
    in_ranges,
    counters::Counter,
    events::{
        InlineStack, MemEvent, MemEventStack, MemEventTop, MemEventTopStack, STACK_TOP_WORDS,
        StackTop, Target, parts, stop_at,
    },
};

use crate::{
    alloc::caller_of_current_call,
    user_stack::{self, Preemption},
    maps::{COUNTERS, EVENTS, STACKS, TARGETS},
};

#[inline(always)]
pub fn count(counter: Counter) {
    count_by(counter, 1);
}

/// Adds one to a counter without saying so (a more telling counter says it).
#[inline(always)]
pub fn count_quietly(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *slot += 1 };
    }
}

/// Adds `amount` to a counter. A loss is also said through aya-log (seen with `-v`) the first time and then
/// each time this CPU's count passes a power of two: rare by construction, so nothing is logged on a hot
/// path, and a flood of losses makes a handful of lines.
#[inline(always)]
pub fn count_by(counter: Counter, amount: u64) {
    if let Some(value) = count_milestone(counter, amount) {
        if counter.is_said() {
            say_loss(counter as u32, value);
        }
    }
}

/// Adds `amount` to a counter; this CPU's new count when it just became 1 or passed a power of two, the
/// moments worth a line in the log (see [`count_by`]).
#[inline(always)]
pub fn count_milestone(counter: Counter, amount: u64) -> Option<u64> {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU for these hooks.
        let (before, after) = unsafe {
            let before = *slot;
            *slot = before + amount;
            (before, before + amount)
        };
        // Losses are counted one by one: `after` is a power of two when it shares no bit with `before`.
        return (after & before == 0).then_some(after);
    }
    None
}

/// Logs a loss counter's new value. Kept out of line, so that its code is in the object once rather than in
/// every program that counts; with the user's level below warnings the loader turns it off
/// (`AYA_LOG_LEVEL`), and it writes nothing.
#[inline(never)]
fn say_loss(counter: u32, value: u64) {
    let name = match Counter::from_index(counter) {
        Some(counter) => counter.name(),
        None => "?",
    };
    aya_log_ebpf::warn!(&(), "kernel programs: {} reached {} on one CPU (report.json counts them all)", name, value);
}

/// See [`stop_at`] (`LEAKTRACE_STOP_AT`, set at load). Left as it is, each check costs a load and a compare
/// (the verifier does not treat this global as a constant: the checks stay in the translated program).
#[unsafe(no_mangle)]
pub static STOP_AT: u32 = stop_at::NOWHERE;

/// Whether the benchmark's account stops this event at `stage` (see [`stop_at`]).
#[inline(always)]
pub fn stops_at(stage: u32) -> bool {
    unsafe { core::ptr::read_volatile(&STOP_AT) == stage }
}

/// The calling thread's tgid when its process is traced.
#[inline(always)]
pub fn traced_tgid() -> Option<u32> {
    traced_target().map(|(tgid, _)| tgid)
}

/// The calling thread's tgid and what is known of its process, when it is traced.
#[inline(always)]
pub fn traced_target() -> Option<(u32, &'static Target)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    unsafe { TARGETS.get(&tgid) }.map(|target| (tgid, target))
}

/// The user registers' instruction, stack and frame pointers. Loaded straight from the task's saved
/// registers: `bpf_task_pt_regs` gives a pointer the verifier knows by its BTF type, whose fields a program
/// may load (a fault in the load reads 0), where a helper call a register cost about 20 ns more.
#[inline(always)]
fn user_registers() -> (u64, u64, u64) {
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        (
            core::ptr::read_volatile(&(*regs).rip),
            core::ptr::read_volatile(&(*regs).rsp),
            core::ptr::read_volatile(&(*regs).rbp),
        )
    }
}

/// Whether `ip` lies in the C runtime's code of the target. Until userspace has said where that code is (a
/// launched process loads its libc after the probes are attached), every event counts as in it.
#[inline(always)]
fn in_runtime_text(target: &Target, ip: u64) -> bool {
    target.runtime_text_known == 0 || in_ranges(&target.runtime_text, ip)
}

/// Copies the top of the user stack from `sp`; returns `sp`, or 0 when it could not be read. A stack that
/// ends closer than the copy's size (a thread's first frames, its stack's end followed by a page that cannot
/// be read) is copied to the end of `sp`'s page, the rest left zero: the collector's unwinder stops at a zero
/// return address, where without any copy the walk would skip the caller of the runtime's function.
#[inline(always)]
fn copy_stack_top(sp: u64, top: &mut StackTop) -> u64 {
    let bytes = unsafe { core::slice::from_raw_parts_mut(top.words.as_mut_ptr().cast::<u8>(), STACK_TOP_WORDS * 8) };
    if unsafe { bpf_probe_read_user_buf(sp as *const u8, bytes) }.is_ok() {
        return sp;
    }
    // The failed read zeroed the whole buffer (the helper does so on failure).
    let to_page_end = user_stack::to_page_end(sp) as usize;
    if to_page_end >= bytes.len() {
        return 0;
    }
    match unsafe { bpf_probe_read_user_buf(sp as *const u8, &mut bytes[..to_page_end]) } {
        Ok(()) => sp,
        Err(_) => 0,
    }
}

/// Takes the current user stack into `stack` (the helper zeroes the frames it does not fill, so equal
/// stacks are equal buffers); whether there was one.
#[inline(always)]
pub fn take_user_stack<C: StackIdContext>(ctx: &C, stack: &mut InlineStack) -> bool {
    let bytes = unsafe {
        bpf_get_stack(ctx.as_ptr(), stack.ips.as_mut_ptr().cast(), (MAX_STACK_DEPTH * 8) as u32, BPF_F_USER_STACK)
    };
    stack.depth = if bytes > 0 { bytes as u64 / 8 } else { 0 };
    bytes > 0
}

/// Takes the user stack into the event itself (when the stack map has no room for it).
#[inline(always)]
fn copy_stack<C: StackIdContext>(ctx: &C, stack: &mut InlineStack) {
    count(if take_user_stack(ctx, stack) { Counter::InlineStacks } else { Counter::StackErrors });
}

/// Events waiting in the ring buffer before a submit wakes the collector. Below it the collector is not
/// woken (it drains on a short timer anyway): waking it for every event made it switch in and out hundreds
/// of times per request of the target, preempting the target as often.
const WAKEUP_BYTES: u64 = 256 << 10;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The flags of a ring buffer submit: wake the collector only once enough has piled up.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }
}

/// Reserves a `T` in the ring buffer, lets `fill` write it in place (events are too large for the BPF
/// stack), and submits it. A full ring buffer is counted.
#[inline(always)]
pub fn reserve_and_send<T: 'static>(fill: impl FnOnce(&mut T)) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            // SAFETY: `fill` writes every field the reader uses; the entry is ours until submitted.
            fill(unsafe { &mut *entry.as_mut_ptr() });
            entry.submit(submit_flags());
        }
        None => count(Counter::LostEvents),
    }
}

/// Sends an event without a stack.
#[inline(always)]
pub fn send(fill: impl FnOnce(&mut MemEvent)) {
    reserve_and_send(|event: &mut MemEvent| {
        fill(event);
        event.user_sp = 0;
        event.parts = 0;
        event.alloc_caller = 0;
    });
}

/// Sends an event with the user stack of the `target`'s calling thread: its id in the stack map, or, when the
/// map has no room for it (its hash bucket is taken by another stack, or it is full), the frames themselves.
/// When the thread is in the C runtime, the top of its user stack goes along for the collector's unwinder.
#[inline(always)]
pub fn send_with_stack<C: StackIdContext>(
    ctx: &C,
    target: &Target,
    preemption: Preemption,
    fill: impl FnOnce(&mut MemEvent),
) {
    let (ip, sp, rbp) = user_registers();
    let alloc_caller = caller_of_current_call();
    // Our walk where it can (see user_stack.rs: about a third of the kernel's time), else the kernel's.
    let (stack_id, stepped_out) = match crate::alloc::event_stack_id(ip, sp, rbp, preemption) {
        Some(id) => (Ok(id as i64), user_stack::caller_by_instruction_rule()),
        None => (ctx.get_stackid(&STACKS, BPF_F_USER_STACK), None),
    };
    // The copy of the stack's top lets the collector unwind the C runtime's frames, which keep no frame
    // pointer. Not needed when our walk stepped out of the instruction by its rule straight into the
    // program's code: the stack is exact as it is (%rbp is callee-saved: the runtime's function kept the
    // caller's or the rule said where it saved it), and the copy cost a page fault in memset a fifth of its time.
    let in_runtime = in_runtime_text(target, ip);
    let walked_by_rule = in_runtime && stepped_out.is_some_and(|caller| !in_runtime_text(target, caller));
    if walked_by_rule {
        count_quietly(Counter::RuntimeEventsWalkedByRule);
    }
    let with_top = in_runtime && !walked_by_rule;
    if stops_at(stop_at::KEEP) || stops_at(stop_at::SEND) {
        return;
    }
    match (stack_id, with_top) {
        (Ok(id), false) => reserve_and_send(|event: &mut MemEvent| {
            fill(event);
            event.stack_id = id as i32;
            event.user_sp = 0;
            event.parts = 0;
            event.alloc_caller = alloc_caller;
        }),
        (Ok(id), true) => reserve_and_send(|sent: &mut MemEventTop| {
            fill(&mut sent.event);
            sent.event.stack_id = id as i32;
            sent.event.user_sp = copy_stack_top(sp, &mut sent.top);
            sent.event.parts = parts::STACK_TOP;
            sent.event.alloc_caller = alloc_caller;
        }),
        (Err(errno), false) => reserve_and_send(|sent: &mut MemEventStack| {
            fill(&mut sent.event);
            sent.event.stack_id = errno;
            sent.event.user_sp = 0;
            sent.event.parts = parts::STACK;
            sent.event.alloc_caller = alloc_caller;
            copy_stack(ctx, &mut sent.stack);
        }),
        (Err(errno), true) => reserve_and_send(|sent: &mut MemEventTopStack| {
            fill(&mut sent.event);
            sent.event.stack_id = errno;
            sent.event.user_sp = copy_stack_top(sp, &mut sent.top);
            sent.event.parts = parts::STACK_TOP | parts::STACK;
            sent.event.alloc_caller = alloc_caller;
            copy_stack(ctx, &mut sent.stack);
        }),
    }
}
