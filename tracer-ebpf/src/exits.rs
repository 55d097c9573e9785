//! How the target's image ends: the fatal signals delivered to it (a crash: SIGSEGV, SIGILL, SIGABRT,
//! SIGBUS...) and the OOM killer's choice, so that the final report can say so with the signal and the
//! time; and an exec, which replaces its whole address space while the process goes on.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    events::{EventKind, MemEvent, MemEventPath, parts},
    tracepoints::{MarkVictim, SchedProcessExec, SignalDeliver},
};

use crate::{
    maps::TARGETS,
    record::{reserve_and_send, send, traced_tgid},
};

/// Signals whose default action is to end the process with a core dump (crashes), and SIGKILL/SIGTERM.
const REPORTED_SIGNALS: u64 =
    1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 11 | 1 << 15 | 1 << 31;

#[tracepoint(category = "signal", name = "signal_deliver")]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    let Some(tgid) = traced_tgid() else { return 0 };
    let Ok(signal) = (unsafe { ctx.read_at::<SignalDeliver>(0) }) else { return 0 };
    if !(0..64).contains(&signal.sig) || REPORTED_SIGNALS & (1 << signal.sig) == 0 {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    send_lifecycle(EventKind::Signal, tgid, tid, signal.sig as u64, signal.sa_handler);
    0
}

/// The OOM killer runs in another task's context, and may name a thread: every victim is sent (the OOM
/// killer is rare), userspace keeps the target's.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let Ok(victim) = (unsafe { ctx.read_at::<MarkVictim>(0) }) else { return 0 };
    send_lifecycle(EventKind::OomVictim, 0, victim.pid as u32, 0, 0);
    0
}

/// The target called exec: every mapping, the break and every allocator block of the old image are gone,
/// and no munmap or free will say so. Sent after the new image is in place (`sched_process_exec` runs once
/// the old address space is released), so the ring buffer orders it after every event of the old image.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    let Some(tgid) = traced_tgid() else { return 0 };
    // The old image's C runtime lies elsewhere in the new one: until the collector, which reads this event
    // later, says where, the stack top of every event is copied (the old ranges would deny it to events in
    // the new runtime, whose stacks then skip the frames its code without frame pointers hides).
    if let Some(target) = TARGETS.get_ptr_mut(&tgid) {
        unsafe { (*target).runtime_text_known = 0 };
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let name_at = unsafe { ctx.read_at::<SchedProcessExec>(0) }.map_or(0, |record| record.filename & 0xffff);
    reserve_and_send(|sent: &mut MemEventPath| {
        sent.event = MemEvent { parts: parts::EXEC_PATH, ..MemEvent::bare(EventKind::Exec, tgid, tid, now) };
        // The name lies in the tracepoint's record, `name_at` bytes from its start.
        let name = (ctx.as_ptr() as *const u8).wrapping_add(name_at as usize);
        if name_at == 0 || unsafe { bpf_probe_read_kernel_str_bytes(name, &mut sent.path.bytes) }.is_err() {
            sent.path.bytes[0] = 0;
        }
    });
    0
}

/// Sends an event of the process's life (no memory, no stack): `addr` and `flags` as its kind says.
#[inline(always)]
fn send_lifecycle(kind: EventKind, tgid: u32, tid: u32, addr: u64, flags: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    send(|event| *event = MemEvent { addr, flags, ..MemEvent::bare(kind, tgid, tid, now) });
}
