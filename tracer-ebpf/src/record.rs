//! What every probe does once it has decided to record something: count a failure, take the user stack,
//! read the word at the user stack pointer, send an event.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user_buf,
        generated::{bpf_get_current_task_btf, bpf_get_stack, bpf_task_pt_regs},
    },
    programs::tracing::StackIdContext,
};
use tracer_common::{
    BPF_F_USER_STACK, MAX_STACK_DEPTH,
    counters::Counter,
    events::{MemEvent, MemEventWithStack, STACK_TOP_WORDS},
};

use crate::maps::{COUNTERS, EVENTS, STACKS, TARGETS};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU for these hooks.
        unsafe { *slot += 1 };
    }
}

/// The calling thread's tgid when its process is traced.
#[inline(always)]
pub fn traced_tgid() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    unsafe { TARGETS.get(&tgid) }.map(|_| tgid)
}

/// Copies the top of the user stack into `stack_top` and returns the user stack pointer, or 0 when the
/// copy failed (see [`MemEvent::stack_top`]).
#[inline(always)]
pub fn copy_stack_top(stack_top: &mut [u64; STACK_TOP_WORDS]) -> u64 {
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        let Ok(sp) = bpf_probe_read_kernel(&(*regs).rsp) else { return 0 };
        let bytes = core::slice::from_raw_parts_mut(stack_top.as_mut_ptr().cast::<u8>(), STACK_TOP_WORDS * 8);
        match bpf_probe_read_user_buf(sp as *const u8, bytes) {
            Ok(()) => sp,
            Err(_) => 0,
        }
    }
}

/// Reserves an event in the ring buffer, lets `fill` write it in place (it is too large for the BPF
/// stack), and submits it. A full ring buffer is counted.
#[inline(always)]
pub fn send(fill: impl FnOnce(&mut MemEvent)) {
    match EVENTS.reserve::<MemEvent>(0) {
        Some(mut entry) => {
            // SAFETY: `fill` writes every field the reader uses; the entry is ours until submitted.
            fill(unsafe { &mut *entry.as_mut_ptr() });
            entry.submit(0);
        }
        None => count(Counter::LostEvents),
    }
}

/// Like [`send`], with the user stack: its id in the stack map, or, when the map has no room for it (its
/// hash bucket is taken by another stack, or it is full), the frames themselves in a larger event. Also
/// copies the top of the user stack for the collector's unwinder.
#[inline(always)]
pub fn send_with_stack<C: StackIdContext>(ctx: &C, fill: impl FnOnce(&mut MemEvent)) {
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK) {
        Ok(id) => send(|event| {
            fill(event);
            event.stack_id = id as i32;
            event.user_sp = copy_stack_top(&mut event.stack_top);
        }),
        Err(errno) => {
            let Some(mut entry) = EVENTS.reserve::<MemEventWithStack>(0) else {
                count(Counter::LostEvents);
                return;
            };
            // SAFETY: every field the reader uses is written below; the entry is ours until submitted.
            let inline = unsafe { &mut *entry.as_mut_ptr() };
            fill(&mut inline.event);
            inline.event.stack_id = errno;
            inline.event.user_sp = copy_stack_top(&mut inline.event.stack_top);
            let bytes = unsafe {
                bpf_get_stack(
                    ctx.as_ptr(),
                    inline.ips.as_mut_ptr().cast(),
                    (MAX_STACK_DEPTH * 8) as u32,
                    BPF_F_USER_STACK,
                )
            };
            if bytes > 0 {
                inline.depth = bytes as u64 / 8;
                count(Counter::InlineStacks);
            } else {
                inline.depth = 0;
                count(Counter::StackErrors);
            }
            entry.submit(0);
        }
    }
}
