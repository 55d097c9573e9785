//! User page faults: where resident memory comes from. Most of a server's growth is pages first touched
//! long after they were mapped (allocator arenas, GC heaps), so the stack that matters is the one that
//! touched the page. Every fault of a traced process is sent; userspace keeps the page model and decides
//! which faults made a page resident.
//!
//! A fault may bring in more than a base page: a transparent huge page (or a multi-size THP block) is
//! allocated inside the fault handler. The fault tracepoint fires before the handler runs, so the size
//! comes from the page allocation that follows on the same thread.
//!
//! Each hook has two front ends: a BTF tracepoint (`tp_btf`), which the kernel calls with the
//! tracepoint's arguments as they are, and a classic tracepoint, which first copies them into a record
//! for perf. Userspace attaches the BTF one when the kernel has BTF: it costs less on every fault, and
//! `mm_page_alloc` runs on every page allocation of the machine.

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::Array,
    programs::{BtfTracePointContext, TracePointContext, tracing::StackIdContext},
};
use core::mem::offset_of;
use tracer_common::{
    events::{EventKind, MemEvent, Target, stop_at},
    tracepoints::{MmPageAlloc, PageFaultUser},
};

use crate::{
    record::{send, send_with_stack, stops_at, traced_target, traced_tgid},
    user_stack::Preemption,
};

/// Movable pages: what user memory is allocated as (MIGRATE_MOVABLE).
const MIGRATE_MOVABLE: i32 = 1;
/// An allocation this long after a fault began is not part of it.
const FAULT_WINDOW_NS: u64 = 10_000_000;
const PAGE_SHIFT: u32 = 12;
/// Slots of [`FAULTS_IN_PROGRESS`], a power of two.
const FAULT_SLOTS: u32 = 1 << 16;

#[derive(Clone, Copy)]
pub struct FaultInProgress {
    tid: u32,
    addr: u64,
    started_ns: u64,
}

/// The fault a thread of a traced process is in, in the slot of its tid (modulo the size). A plain array,
/// not a hash map keyed by tid: an LRU hash map update cost about 0.4 us a fault, a slot a few ns. Two
/// threads that share a slot and fault at once (or a torn write between them) lose at most the size of
/// a huge page, never attribute it wrongly: the tid is checked here, and userspace checks that the
/// address is that of the thread's last fault.
#[map]
static FAULTS_IN_PROGRESS: Array<FaultInProgress> = Array::with_max_entries(FAULT_SLOTS, 0);

#[inline(always)]
fn fault_slot(tid: u32) -> Option<*mut FaultInProgress> {
    FAULTS_IN_PROGRESS.get_ptr_mut(tid & (FAULT_SLOTS - 1))
}

/// `--sample-pages N`: N - 1 in slot 0, N a power of two (0: every page).
#[map]
static PAGE_SAMPLING: Array<u64> = Array::with_max_entries(1, 0);

/// Whether the page at `addr` is one of those traced: one page in N, chosen by a hash of its number, so
/// that every fault of a page and every release of it agree, and the choice is spread over the address
/// space (Fibonacci hashing).
/// Returns the pages it stands for (the rate in force), or None when it is not traced.
#[inline(always)]
fn page_sampling_weight(addr: u64) -> Option<u64> {
    let mask = PAGE_SAMPLING.get(0).copied().unwrap_or(0);
    let sampled = mask == 0 || ((addr >> PAGE_SHIFT).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) & mask == 0;
    sampled.then_some(mask + 1)
}

/// `exceptions/page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code)`
#[btf_tracepoint(function = "page_fault_user")]
pub fn page_fault_user_btf(ctx: BtfTracePointContext) -> u32 {
    // The sampling test first: it is cheaper than the target lookup and rejects most faults when sampling.
    let address: u64 = ctx.arg(0);
    let Some(weight) = page_sampling_weight(address) else { return 0 };
    let Some((tgid, target)) = traced_target() else { return 0 };
    // A pointer the verifier knows by its BTF type: its fields are loaded directly, as in record.rs.
    let regs: *const pt_regs = ctx.arg(1);
    let ip = unsafe { core::ptr::read_volatile(&(*regs).rip) };
    if stops_at(stop_at::TARGET) {
        return 0;
    }
    record_fault(&ctx, tgid, target, address, ip, ctx.arg(2), weight);
    0
}

#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    let Ok(fault) = (unsafe { ctx.read_at::<PageFaultUser>(0) }) else { return 0 };
    let Some(weight) = page_sampling_weight(fault.address) else { return 0 };
    let Some((tgid, target)) = traced_target() else { return 0 };
    record_fault(&ctx, tgid, target, fault.address, fault.ip, fault.error_code, weight);
    0
}

#[inline(always)]
fn record_fault<C: StackIdContext + EbpfContext>(
    ctx: &C,
    tgid: u32,
    target: &Target,
    address: u64,
    ip: u64,
    error_code: u64,
    weight: u64,
) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(slot) = fault_slot(tid) {
        unsafe { *slot = FaultInProgress { tid, addr: address, started_ns: now } };
    }
    // Before the fault handler turns interrupts on (see `Preemption`).
    send_with_stack(ctx, target, Preemption::Off, |event| {
        event.timestamp_ns = now;
        event.kind = EventKind::PageFault as u32;
        event.tgid = tgid;
        event.tid = tid;
        event.addr = address;
        event.len = weight;
        event.new_addr = ip;
        event.new_len = 0;
        event.flags = error_code;
        event.prot = 0;
        event.fd = -1;
    });
}

/// `kmem/mm_page_alloc(struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype)`
#[btf_tracepoint(function = "mm_page_alloc")]
pub fn mm_page_alloc_btf(ctx: BtfTracePointContext) -> u32 {
    let order: u32 = ctx.arg(1);
    if order == 0 || order > 18 {
        return 0;
    }
    record_large_page(order, ctx.arg(3));
    0
}

/// Every page allocation on the machine passes here: return at once unless it is a large block.
#[tracepoint(category = "kmem", name = "mm_page_alloc")]
pub fn mm_page_alloc(ctx: TracePointContext) -> u32 {
    let Ok(order) = (unsafe { ctx.read_at::<u32>(offset_of!(MmPageAlloc, order)) }) else { return 0 };
    if order == 0 || order > 18 {
        return 0;
    }
    let Ok(migratetype) = (unsafe { ctx.read_at::<i32>(offset_of!(MmPageAlloc, migratetype)) }) else { return 0 };
    record_large_page(order, migratetype);
    0
}

/// A block of 2^`order` pages: when a traced thread is in a fault and the block is user memory, it is the
/// size of what that fault brings in.
#[inline(always)]
fn record_large_page(order: u32, migratetype: i32) {
    if migratetype != MIGRATE_MOVABLE {
        return;
    }
    let Some(tgid) = traced_tgid() else { return };
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = fault_slot(tid) else { return };
    let fault = unsafe { *slot };
    let now = unsafe { bpf_ktime_get_ns() };
    if fault.tid != tid || now.wrapping_sub(fault.started_ns) > FAULT_WINDOW_NS {
        return;
    }
    unsafe { (*slot).tid = 0 };
    let len = 1u64 << (order + PAGE_SHIFT);
    send(|event| *event = MemEvent { addr: fault.addr, len, ..MemEvent::bare(EventKind::LargePage, tgid, tid, now) });
}
