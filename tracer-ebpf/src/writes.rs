//! Turn markers from the target's own log lines: the first bytes of each write to its stdout or stderr
//! (whatever they are: a tty, a file, a pipe, the journald socket). Userspace keeps the set of descriptors
//! that lead there (1, 2 and their duplicates) in `LOG_FDS`, matches lines against the turn patterns, and
//! keeps nothing else of what the target logs.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use tracer_common::{
    counters::Counter,
    events::{LOG_BYTES, LOG_WRITE_MAGIC, LogWrite},
    tracepoints::{SysEnterWrite, SysEnterWritev},
};

use crate::{
    maps::EVENTS,
    record::{count, traced_tgid},
};

/// (tgid << 32 | fd) of the descriptors whose writes are log lines.
#[map]
static LOG_FDS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    if let Ok(args) = unsafe { ctx.read_at::<SysEnterWrite>(0) } {
        capture(args.fd, args.buf, args.count);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    if let Ok(args) = unsafe { ctx.read_at::<SysEnterWritev>(0) } {
        if args.vlen > 0 {
            // The first iovec: struct iovec { void *iov_base; size_t iov_len; }.
            if let Ok([base, len]) = unsafe { bpf_probe_read_user(args.vec as *const [u64; 2]) } {
                capture(args.fd, base, len);
            }
        }
    }
    0
}

#[inline(always)]
fn capture(fd: u64, buf: u64, requested: u64) {
    let Some(tgid) = traced_tgid() else { return };
    let key = (tgid as u64) << 32 | (fd & 0xffff_ffff);
    if unsafe { LOG_FDS.get(&key) }.is_none() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<LogWrite>(0) else {
        count(Counter::LostEvents);
        return;
    };
    // SAFETY: every field is written before submit; the entry is ours until then.
    let write = unsafe { &mut *entry.as_mut_ptr() };
    write.magic = LOG_WRITE_MAGIC;
    write.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    write.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    write.fd = fd as u32;
    write.count = requested.min(u32::MAX as u64) as u32;
    let len = (requested as usize).min(LOG_BYTES);
    write.len = 0;
    if len > 0 && unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut write.data[..len]) }.is_ok() {
        write.len = len as u32;
    }
    entry.submit(crate::record::submit_flags());
}
