//! User page faults: where resident memory comes from. Most of a server's growth is pages first touched
//! long after they were mapped (allocator arenas, GC heaps), so the stack that matters is the one that
//! touched the page. Every fault of a traced process is sent; userspace keeps the page model and decides
//! which faults made a page resident.
//!
//! A fault may bring in more than a base page: a transparent huge page (or a multi-size THP block) is
//! allocated inside the fault handler. The fault tracepoint fires before the handler runs, so the size
//! comes from the page allocation that follows on the same thread.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use core::mem::offset_of;
use tracer_common::{
    events::EventKind,
    tracepoints::{MmPageAlloc, PageFaultUser},
};

use crate::record::{send, send_with_stack, traced_tgid};

/// Movable pages: what user memory is allocated as (MIGRATE_MOVABLE).
const MIGRATE_MOVABLE: i32 = 1;
/// An allocation this long after a fault began is not part of it.
const FAULT_WINDOW_NS: u64 = 10_000_000;
const PAGE_SHIFT: u32 = 12;

#[derive(Clone, Copy)]
pub struct FaultInProgress {
    addr: u64,
    started_ns: u64,
}

/// The fault each thread of a traced process is in, by tid.
#[map]
static FAULTS_IN_PROGRESS: LruHashMap<u32, FaultInProgress> = LruHashMap::with_max_entries(16384, 0);

/// `--sample-pages N`: N - 1 in slot 0, N a power of two (0: every page).
#[map]
static PAGE_SAMPLING: Array<u64> = Array::with_max_entries(1, 0);

/// Whether the page at `addr` is one of those traced: one page in N, chosen by a hash of its number, so
/// that every fault of a page and every release of it agree, and the choice is spread over the address
/// space (Fibonacci hashing).
#[inline(always)]
fn page_is_sampled(addr: u64) -> bool {
    let mask = PAGE_SAMPLING.get(0).copied().unwrap_or(0);
    mask == 0 || ((addr >> PAGE_SHIFT).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) & mask == 0
}

#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    let Some(tgid) = traced_tgid() else { return 0 };
    let Ok(fault) = (unsafe { ctx.read_at::<PageFaultUser>(0) }) else { return 0 };
    if !page_is_sampled(fault.address) {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = FAULTS_IN_PROGRESS.insert(&tid, &FaultInProgress { addr: fault.address, started_ns: now }, 0);
    send_with_stack(&ctx, tgid, |event| {
        event.timestamp_ns = now;
        event.kind = EventKind::PageFault as u32;
        event.tgid = tgid;
        event.tid = tid;
        event.addr = fault.address;
        event.len = 0;
        event.new_addr = fault.ip;
        event.new_len = 0;
        event.flags = fault.error_code;
        event.prot = 0;
        event.fd = -1;
    });
    0
}

/// Every page allocation on the machine passes here: return at once unless it is a large block.
#[tracepoint(category = "kmem", name = "mm_page_alloc")]
pub fn mm_page_alloc(ctx: TracePointContext) -> u32 {
    let Ok(order) = (unsafe { ctx.read_at::<u32>(offset_of!(MmPageAlloc, order)) }) else { return 0 };
    if order == 0 || order > 18 {
        return 0;
    }
    let Some(tgid) = traced_tgid() else { return 0 };
    let Ok(migratetype) = (unsafe { ctx.read_at::<i32>(offset_of!(MmPageAlloc, migratetype)) }) else { return 0 };
    if migratetype != MIGRATE_MOVABLE {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(fault) = (unsafe { FAULTS_IN_PROGRESS.get(&tid) }).copied() else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(fault.started_ns) > FAULT_WINDOW_NS {
        return 0;
    }
    let _ = FAULTS_IN_PROGRESS.remove(&tid);
    send(|event| {
        event.timestamp_ns = now;
        event.kind = EventKind::LargePage as u32;
        event.tgid = tgid;
        event.tid = tid;
        event.addr = fault.addr;
        event.len = 1u64 << (order + PAGE_SHIFT);
        event.new_addr = 0;
        event.new_len = 0;
        event.flags = 0;
        event.prot = 0;
        event.fd = -1;
        event.stack_id = -1;
        event.user_sp = 0;
    });
    0
}
