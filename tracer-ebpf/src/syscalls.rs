//! mmap, munmap, mremap, brk and madvise, from their syscall tracepoints.
//!
//! The entry tracepoint keeps the arguments by thread; the exit tracepoint reads the result, drops failed
//! calls (they change nothing) and sends one event. The user stack is taken at exit: user registers are
//! the same at entry and exit, and a failed call then costs no stack walk.
//!
//! munmap is the exception: its event is sent at the entry, before the kernel unmaps anything. Sent at the
//! exit, it could follow the event of another thread's mmap that got the freed range back in between
//! (glibc trims a new arena while another thread maps a thread stack there), and the collector then took
//! the new mapping out with the old one. A munmap that fails after its event was sent is counted
//! (`unmap_failed_after_release`); the entry drops in advance the calls the kernel refuses outright.
//! mremap, for the same reason, sends a begin event at its entry (the collector takes the old range aside)
//! and its result at the exit, or a failure that puts the range back.

use core::mem::offset_of;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    counters::Counter,
    events::{EventKind, MemEvent},
    tracepoints::{SysEnterBrk, SysEnterMadvise, SysEnterMmap, SysEnterMremap, SysEnterMunmap, SysExit},
};

use crate::{
    maps::PENDING_SYSCALLS,
    record::{count, send, send_with_stack, traced_target, traced_tgid},
    user_stack::Preemption,
};

/// madvise behaviours after which the kernel may drop the pages (asm-generic/mman-common.h).
const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;
const MADV_DONTNEED_LOCKED: u64 = 24;

/// A syscall's arguments, kept from its entry to its exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingSyscall {
    kind: u32,
    prot: u32,
    addr: u64,
    len: u64,
    new_len: u64,
    flags: u64,
    fd: i64,
    /// Not 0: an event went at the entry already (munmap, mremap's begin).
    sent_at_entry: u64,
}

impl PendingSyscall {
    const fn new(kind: EventKind, addr: u64, len: u64) -> Self {
        Self { kind: kind as u32, prot: 0, addr, len, new_len: 0, flags: 0, fd: -1, sent_at_entry: 0 }
    }
}

#[inline(always)]
fn remember(pending: PendingSyscall) {
    if traced_tgid().is_none() {
        return;
    }
    if PENDING_SYSCALLS.insert(&bpf_get_current_pid_tgid(), &pending, 0).is_err() {
        count(Counter::MapFull);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    if let Ok(args) = unsafe { ctx.read_at::<SysEnterMmap>(0) } {
        remember(PendingSyscall {
            prot: args.prot as u32,
            flags: args.flags,
            fd: args.fd as i64,
            ..PendingSyscall::new(EventKind::Mmap, args.addr, args.len)
        });
    }
    0
}

/// The end of user space on x86-64 with 4-level page tables (`TASK_SIZE_MAX`): munmap refuses ranges
/// beyond it. With 5-level tables it is higher; a range between the two is then only left out, not wrong.
const USER_SPACE_END: u64 = (1 << 47) - 4096;
const PAGE_MASK: u64 = 4095;

#[tracepoint(category = "syscalls", name = "sys_enter_munmap")]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    let Ok(args) = (unsafe { ctx.read_at::<SysEnterMunmap>(0) }) else { return 0 };
    let Some(tgid) = traced_tgid() else { return 0 };
    // What the kernel refuses with EINVAL before it looks at the mappings (mm/vma.c, do_vmi_munmap) is not
    // sent; the exit pairs with it all the same.
    let len = (args.len.wrapping_add(PAGE_MASK)) & !PAGE_MASK;
    let refused = args.addr & PAGE_MASK != 0 || len == 0 || args.addr > USER_SPACE_END || len > USER_SPACE_END - args.addr;
    if !refused {
        send_at_entry(EventKind::Munmap, tgid, args.addr, args.len);
    }
    let pending = PendingSyscall::new(EventKind::Munmap, args.addr, args.len);
    remember(PendingSyscall { sent_at_entry: u64::from(!refused), ..pending });
    0
}

/// Sends the event of a call at its entry, before the kernel changes the mappings (see the module's text).
#[inline(always)]
fn send_at_entry(kind: EventKind, tgid: u32, addr: u64, len: u64) {
    let (tid, now) = (bpf_get_current_pid_tgid() as u32, unsafe { bpf_ktime_get_ns() });
    send(|event| *event = MemEvent { addr, len, ..MemEvent::bare(kind, tgid, tid, now) });
}

#[tracepoint(category = "syscalls", name = "sys_enter_mremap")]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    let Ok(args) = (unsafe { ctx.read_at::<SysEnterMremap>(0) }) else { return 0 };
    let Some(tgid) = traced_tgid() else { return 0 };
    // The old range is taken aside at once, for the reason munmap is sent at its entry; an old length of 0
    // moves nothing.
    let begun = args.old_len != 0;
    if begun {
        send_at_entry(EventKind::MremapBegin, tgid, args.addr, args.old_len);
    }
    remember(PendingSyscall {
        new_len: args.new_len,
        flags: args.flags,
        sent_at_entry: u64::from(begun),
        ..PendingSyscall::new(EventKind::Mremap, args.addr, args.old_len)
    });
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_brk")]
pub fn sys_enter_brk(ctx: TracePointContext) -> u32 {
    if let Ok(args) = unsafe { ctx.read_at::<SysEnterBrk>(0) } {
        remember(PendingSyscall::new(EventKind::Brk, args.brk, 0));
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_madvise")]
pub fn sys_enter_madvise(ctx: TracePointContext) -> u32 {
    if let Ok(args) = unsafe { ctx.read_at::<SysEnterMadvise>(0) } {
        let behaviour = args.behavior & 0xffff_ffff;
        if matches!(behaviour, MADV_DONTNEED | MADV_FREE | MADV_REMOVE | MADV_DONTNEED_LOCKED) {
            remember(PendingSyscall {
                flags: behaviour,
                ..PendingSyscall::new(EventKind::Madvise, args.start, args.len_in)
            });
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mmap")]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    finish(&ctx, EventKind::Mmap);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_munmap")]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    finish(&ctx, EventKind::Munmap);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_mremap")]
pub fn sys_exit_mremap(ctx: TracePointContext) -> u32 {
    finish(&ctx, EventKind::Mremap);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_brk")]
pub fn sys_exit_brk(ctx: TracePointContext) -> u32 {
    finish(&ctx, EventKind::Brk);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_madvise")]
pub fn sys_exit_madvise(ctx: TracePointContext) -> u32 {
    finish(&ctx, EventKind::Madvise);
    0
}

/// Pairs an exit with its entry and sends the event when the call succeeded.
#[inline(always)]
fn finish(ctx: &TracePointContext, kind: EventKind) {
    let Some((tgid, target)) = traced_target() else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = (unsafe { PENDING_SYSCALLS.get(&pid_tgid) }).copied() else {
        // madvise entries with a behaviour we ignore are never stored: not a lost pair.
        if kind != EventKind::Madvise {
            count(Counter::UnpairedSyscalls);
        }
        return;
    };
    let _ = PENDING_SYSCALLS.remove(&pid_tgid);
    if pending.kind != kind as u32 {
        count(Counter::UnpairedSyscalls);
        return;
    }
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(offset_of!(SysExit, ret)) }) else { return };
    if kind == EventKind::Munmap {
        // Its event went at the entry (see above), unless the entry knew the kernel would refuse it.
        if ret != 0 && pending.sent_at_entry != 0 {
            count(Counter::UnmapFailedAfterRelease);
        }
        return;
    }
    // Errors come back as -errno; mmap and mremap return addresses, which are below 2^47.
    let failed = match kind {
        EventKind::Madvise => ret != 0,
        _ => (-4095..0).contains(&ret),
    };
    if failed {
        if kind == EventKind::Mremap && pending.sent_at_entry != 0 {
            // The range taken aside at the entry goes back.
            send_at_entry(EventKind::MremapFailed, tgid, pending.addr, pending.len);
        }
        return;
    }

    let fill = |event: &mut MemEvent| {
        event.timestamp_ns = unsafe { bpf_ktime_get_ns() };
        event.kind = kind as u32;
        event.tgid = tgid;
        event.tid = pid_tgid as u32;
        event.addr = if kind == EventKind::Mmap { ret as u64 } else { pending.addr };
        event.len = pending.len;
        event.new_addr = if matches!(kind, EventKind::Mremap | EventKind::Brk) { ret as u64 } else { 0 };
        event.new_len = pending.new_len;
        event.flags = pending.flags;
        event.prot = pending.prot;
        event.fd = pending.fd as i32;
        event.stack_id = -1;
        event.user_sp = 0;
    };
    // Only calls that can add memory need to say where they came from.
    if matches!(kind, EventKind::Mmap | EventKind::Mremap | EventKind::Brk) {
        send_with_stack(ctx, target, Preemption::Possible, fill);
    } else {
        send(fill);
    }
}
