//! User stacks from the kernel's stack map, completed by the unwinder and interned so that the ledger
//! keys on a small index.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use aya::maps::{HashMap as KernelHashMap, MapData, StackTraceMap};
use tracer_common::{
    alloc::{AT_INSTRUCTION, CallerRule, SPILLED_STACK},
    events::InlineStack,
};

use super::unwind::{Modules, Unwinder};
use crate::{
    ledger::StackIx,
    symbolizer::{
        jit_frames::JitFrames,
        modules::{ModuleMap, is_runtime_module},
    },
};

/// The kernel's tables of user stacks: the kernel's walk's (`bpf_get_stackid`) by id, and our walk's (and the
/// ones that found their bucket taken) by an id with [`SPILLED_STACK`] set.
pub struct KernelStackMaps<'a> {
    pub ids: &'a StackTraceMap<MapData>,
    pub spilled: &'a KernelHashMap<MapData, u32, InlineStack>,
}

/// Where an event's stack is: an id in the kernel's stack map, or frames carried in the event itself; and
/// the copy of the top of the user stack taken at the same moment.
pub struct EventStack<'a> {
    /// When the stack was taken (CLOCK_MONOTONIC ns): JIT code is named as it was then.
    pub time_ns: u64,
    pub stack_id: i32,
    pub inline: Option<&'a [u64]>,
    pub user_sp: u64,
    pub stack_top: &'a [u64],
    /// The return address taken at a function's entry: frame 1, which frame-pointer unwinding from the
    /// entry skips.
    pub caller: Option<u64>,
    /// Inside a hooked allocator call: that call's return address (see `MemEvent::alloc_caller`).
    pub alloc_caller: Option<u64>,
}

/// A kernel stack completed and interned once.
#[derive(Clone, Copy)]
struct Resolved {
    stack: StackIx,
    /// The jitdump generation it was named in.
    jit_generation: usize,
}

/// The stack of events whose stack could not be taken (counted in `stack_errors`).
pub const UNKNOWN_STACK: StackIx = 0;

pub struct StackTable {
    /// Instruction pointers by index, innermost first (shared with `index`). Index 0 is
    /// [`UNKNOWN_STACK`] (empty); an evicted stack's slot is `None`.
    stacks: Vec<Option<Arc<[u64]>>>,
    index: HashMap<Arc<[u64]>, StackIx>,
    /// Frames by kernel stack id. Ids are never reused for another stack (no BPF_F_REUSE_STACKID).
    kernel_frames: HashMap<u32, Box<[u64]>>,
    /// The stack interned for (kernel stack id, caller, allocator caller) of events without a stack top
    /// copy.
    resolved: HashMap<(u32, u64, u64), Resolved>,
    unwinder: Unwinder,
    /// Slots of evicted stacks, reused before the table grows.
    free: Vec<StackIx>,
    /// Interned and not yet named.
    unnamed: Vec<StackIx>,
    /// Frames in the held stacks, and how many stacks are held (the index holds only the current image's).
    frames_held: usize,
    stacks_held: usize,
    /// Stacks cut at a frame outside executable code (see [`cut_at_non_code`]).
    cut_at_non_code: u64,
    /// Return addresses of stacks (allocator calls', events') that end short of the C runtime's start (see
    /// [`ends_short`]), for the kernel to learn how to step out of those without frame pointers.
    frames_to_judge: Vec<u64>,
    /// Stacks with a frame in JIT code that had no name when they were taken, by the time they were first
    /// taken: JavaScriptCore writes a code's jitdump record from a queue, which on a busy machine runs after
    /// the code did, so their names are looked for again as the jitdumps grow (see [`Self::name_jit_again`]).
    jit_pending: HashMap<StackIx, u64>,
    /// Stacks left with an unnamed JIT frame: no record came within [`JIT_RECORD_PATIENCE_NS`], or the
    /// trace ended first, or too many were waiting.
    jit_unnamed: u64,
    /// The jitdump generation the waiting stacks were last named in: until it changes, nothing new can name
    /// them.
    jit_generation_tried: usize,
}

/// How long a stack waits for the jitdump record of its unnamed JIT code (JSC's queue writes within
/// milliseconds; code from before the jitdump was opened, such as the first thunks, never gets one).
pub const JIT_RECORD_PATIENCE_NS: u64 = 30_000_000_000;
/// Stacks waiting for a jitdump record at most: the rest are counted unnamed at once.
const MAX_JIT_PENDING: usize = 1 << 16;

impl Default for StackTable {
    fn default() -> Self {
        Self {
            stacks: vec![Some(Arc::from(Vec::new()))],
            index: HashMap::new(),
            kernel_frames: HashMap::new(),
            resolved: HashMap::new(),
            unwinder: Unwinder::default(),
            free: Vec::new(),
            unnamed: Vec::new(),
            frames_held: 0,
            cut_at_non_code: 0,
            stacks_held: 0,
            frames_to_judge: Vec::new(),
            jit_pending: HashMap::new(),
            jit_unnamed: 0,
            jit_generation_tried: 0,
        }
    }
}

impl StackTable {
    pub fn ips(&self, stack: StackIx) -> &[u64] {
        self.stacks.get(stack as usize).and_then(Option::as_deref).unwrap_or(&[])
    }

    pub fn intern(&mut self, ips: Vec<u64>) -> StackIx {
        if ips.is_empty() {
            return UNKNOWN_STACK;
        }
        if let Some(&ix) = self.index.get(ips.as_slice()) {
            return ix;
        }
        self.frames_held += ips.len();
        self.stacks_held += 1;
        let ips: Arc<[u64]> = Arc::from(ips);
        let ix = match self.free.pop() {
            Some(ix) => {
                self.stacks[ix as usize] = Some(ips.clone());
                ix
            }
            None => {
                self.stacks.push(Some(ips.clone()));
                (self.stacks.len() - 1) as StackIx
            }
        };
        self.index.insert(ips, ix);
        self.unnamed.push(ix);
        ix
    }

    /// The process now runs another image (an exec): the same addresses name other code, so stacks seen
    /// from now on are interned apart from the old image's, which keep their names.
    pub fn new_image(&mut self) {
        self.index.clear();
        self.resolved.clear();
        // The old image's jitdumps are not the new one's.
        self.jit_unnamed += self.jit_pending.len() as u64;
        self.jit_pending.clear();
    }

    /// Notes that `stack`, first taken at `time_ns`, has a JIT frame without a name.
    fn await_jit_record(&mut self, stack: StackIx, time_ns: u64) {
        if stack == UNKNOWN_STACK || self.jit_pending.contains_key(&stack) {
            return;
        }
        if self.jit_pending.len() < MAX_JIT_PENDING {
            self.jit_pending.insert(stack, time_ns);
        } else {
            self.jit_unnamed += 1;
        }
    }

    /// Names the unnamed JIT frames of waiting stacks again, at the time each was first taken, when the
    /// jitdumps gained code since the last try (`generation`) or at the trace's end (`last`): `name` tags
    /// what it can of a stack's frames and says whether any stays unnamed. A stack that changed keeps its
    /// index (the ledger's figures stay with it) and is named anew by [`Self::take_unnamed`]; one still
    /// unnamed after [`JIT_RECORD_PATIENCE_NS`], or at the trace's end, is counted unnamed.
    pub fn name_jit_again(
        &mut self,
        now_ns: u64,
        generation: usize,
        last: bool,
        mut name: impl FnMut(&mut Vec<u64>, u64) -> bool,
    ) {
        let retry = last || generation != self.jit_generation_tried;
        self.jit_generation_tried = generation;
        let mut waiting: Vec<(StackIx, u64)> = self.jit_pending.iter().map(|(&ix, &time)| (ix, time)).collect();
        waiting.sort_unstable();
        for (ix, time_ns) in waiting {
            if !retry {
                if now_ns.saturating_sub(time_ns) > JIT_RECORD_PATIENCE_NS {
                    self.jit_pending.remove(&ix);
                    self.jit_unnamed += 1;
                }
                continue;
            }
            let Some(ips) = self.stacks.get(ix as usize).and_then(Option::clone) else {
                self.jit_pending.remove(&ix);
                continue;
            };
            let mut named = ips.to_vec();
            let still_unnamed = name(&mut named, time_ns);
            if named.as_slice() != &*ips {
                if self.index.get(&ips) == Some(&ix) {
                    self.index.remove(&ips);
                }
                let named: Arc<[u64]> = Arc::from(named);
                // A stack taken later with the names already there is this one's twin: the index keeps the
                // older, and reports list both (suspects and flamegraphs merge them by their frames).
                self.index.entry(named.clone()).or_insert(ix);
                self.stacks[ix as usize] = Some(named);
                self.unnamed.push(ix);
            }
            if !still_unnamed {
                self.jit_pending.remove(&ix);
            } else if last || now_ns.saturating_sub(time_ns) > JIT_RECORD_PATIENCE_NS {
                self.jit_pending.remove(&ix);
                self.jit_unnamed += 1;
            }
        }
    }

    /// Stacks waiting for a jitdump record.
    pub fn jit_pending(&self) -> usize {
        self.jit_pending.len()
    }

    /// Stacks left with a JIT frame no jitdump record named.
    pub fn jit_unnamed(&self) -> u64 {
        self.jit_unnamed
    }

    /// Stacks interned since the last call, to be named while the process's mappings can be read.
    pub fn take_unnamed(&mut self) -> Vec<StackIx> {
        std::mem::take(&mut self.unnamed)
    }

    /// Forgets every stack but those in `keep` (and the unknown stack); returns the indices that went.
    /// Their slots are reused by stacks interned later, so nothing may refer to them any more.
    pub fn evict_except(&mut self, keep: &HashSet<StackIx>) -> Vec<StackIx> {
        let mut evicted = Vec::new();
        for (ix, slot) in self.stacks.iter_mut().enumerate().skip(1) {
            if slot.is_some() && !keep.contains(&(ix as StackIx)) {
                if let Some(ips) = slot.take() {
                    self.frames_held -= ips.len();
                    self.stacks_held -= 1;
                    // After an exec the same frames may name a stack of the new image.
                    if self.index.get(&ips) == Some(&(ix as StackIx)) {
                        self.index.remove(&ips);
                    }
                }
                evicted.push(ix as StackIx);
            }
        }
        self.free.extend(&evicted);
        self.unnamed.retain(|ix| self.stacks[*ix as usize].is_some());
        self.jit_pending.retain(|ix, _| self.stacks[*ix as usize].is_some());
        // Caches, rebuilt on demand (`resolved` may point at evicted slots).
        self.kernel_frames.clear();
        self.resolved = HashMap::new();
        self.index.shrink_to_fit();
        self.kernel_frames.shrink_to_fit();
        evicted
    }

    /// How the kernel can step out of the function an event stopped in (see [`Unwinder::instruction_rule`]).
    pub fn instruction_rule(&mut self, ip: u64, modules: &mut ModuleMap) -> Option<CallerRule> {
        self.unwinder.instruction_rule(ip, modules)
    }

    /// How the kernel can step out of the function a return address is in (see [`Unwinder::caller_rule`]).
    pub fn caller_rule(&mut self, return_address: u64, modules: &mut ModuleMap, which: Modules) -> Option<CallerRule> {
        self.unwinder.caller_rule(return_address, modules, which)
    }

    /// Every call site of the module `address` is in that a walk steps out of by a rule (see
    /// [`Unwinder::module_call_sites`]).
    pub fn module_call_sites(
        &mut self,
        address: u64,
        modules: &mut ModuleMap,
        max_code_bytes: u64,
    ) -> Vec<(u64, CallerRule)> {
        self.unwinder.module_call_sites(address, modules, max_code_bytes)
    }

    /// Every call's return address in the function `return_address` is in (see
    /// [`Unwinder::call_sites_beside`]).
    pub fn call_sites_beside(&mut self, return_address: u64, modules: &mut ModuleMap) -> Vec<u64> {
        self.unwinder.call_sites_beside(return_address, modules)
    }

    /// The return addresses of the stacks interned since the last call that end short.
    pub fn take_frames_to_judge(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.frames_to_judge)
    }

    /// Distinct stacks the frame-pointer walk took into data, cut at the first such frame.
    pub fn cut_at_non_code(&self) -> u64 {
        self.cut_at_non_code
    }

    pub fn live(&self) -> usize {
        self.stacks_held
    }

    /// What the held stacks cost the tracer, roughly: per frame its address, its name in the collector and
    /// in the reports; per stack the table entries, figures and report rows.
    pub fn held_bytes(&self) -> u64 {
        const PER_FRAME: u64 = 64;
        const PER_STACK: u64 = 512;
        self.frames_held as u64 * PER_FRAME + self.live() as u64 * PER_STACK
    }

    /// The interned stack for a kernel stack id (negative: none was taken), completed with the copy of the
    /// top of the user stack taken at the same moment.
    pub fn intern_event_stack(
        &mut self,
        kernel_stacks: &KernelStackMaps<'_>,
        event: &EventStack<'_>,
        modules: &mut ModuleMap,
        jit: &mut JitFrames,
    ) -> StackIx {
        // Without a copy of the stack top, the same kernel stack and caller always complete to the same
        // stack: skip the per-frame work (mapping and JIT lookups for a hundred frames) the second time.
        let resolved_key = match (event.inline, u32::try_from(event.stack_id)) {
            (None, Ok(stack_id)) if event.stack_top.is_empty() => {
                Some((stack_id, event.caller.unwrap_or(0), event.alloc_caller.unwrap_or(0)))
            }
            _ => None,
        };
        if let Some(resolved) = resolved_key.and_then(|key| self.resolved.get(&key)) {
            // JIT code comes and goes at the same addresses: once the jitdumps have more code, a stack is
            // named again, at its own time.
            if resolved.jit_generation == jit.generation() {
                return resolved.stack;
            }
        }
        let stack = self.complete_and_intern(kernel_stacks, event, modules, jit);
        if let Some(key) = resolved_key {
            self.resolved.insert(key, Resolved { stack, jit_generation: jit.generation() });
        }
        stack
    }

    fn complete_and_intern(
        &mut self,
        kernel_stacks: &KernelStackMaps<'_>,
        event: &EventStack<'_>,
        modules: &mut ModuleMap,
        jit: &mut JitFrames,
    ) -> StackIx {
        let kernel: &[u64] = match (event.inline, u32::try_from(event.stack_id)) {
            (Some(inline), _) => inline,
            (None, Ok(stack_id)) => match self.kernel_frames.get(&stack_id) {
                Some(frames) => frames,
                None => {
                    let frames: Box<[u64]> = if stack_id & SPILLED_STACK != 0 {
                        let Ok(stack) = kernel_stacks.spilled.get(&stack_id, 0) else { return UNKNOWN_STACK };
                        stack.ips[..(stack.depth as usize).min(stack.ips.len())].into()
                    } else {
                        let Ok(trace) = kernel_stacks.ids.get(&stack_id, 0) else { return UNKNOWN_STACK };
                        trace.frames().iter().map(|frame| frame.ip).collect()
                    };
                    self.kernel_frames.entry(stack_id).or_insert(frames)
                }
            },
            (None, Err(_)) => return UNKNOWN_STACK,
        };
        let mut ips = self.unwinder.complete(kernel, event.user_sp, event.stack_top, modules);
        // An event in the C runtime came with a copy of the stack's top, to unwind its frames here. Once the
        // kernel has the rule at its instruction, its walk steps out by it, and where that leads out of the
        // runtime the kernel sends no copy (which cost a page fault in `memset` a fifth of its BPF time).
        // Each instruction is judged once.
        let in_runtime_with_top = |ip: &&u64| {
            event.caller.is_none()
                && !event.stack_top.is_empty()
                && modules.lookup(**ip).is_some_and(|m| is_runtime_module(m.file_path()))
        };
        if let Some(&ip) = ips.first().filter(in_runtime_with_top) {
            self.frames_to_judge.push(ip | AT_INSTRUCTION);
        }
        // The caller, unless it is the kernel's uretprobe trampoline (a tail call from a probed function
        // finds that in place of the return address).
        let caller = event
            .caller
            .filter(|c| *c != 0 && !ips.is_empty() && ips.get(1) != Some(c) && !is_uretprobe_trampoline(*c, modules));
        if let Some(caller) = caller {
            ips.insert(1, caller);
        }
        replace_trampolines(&mut ips, event.alloc_caller, modules);
        if cut_at_non_code(&mut ips, modules) {
            self.cut_at_non_code += 1;
        }
        // Allocator calls' and events' alike: a page fault in code without frame pointers is walked by the
        // same rules, and a program traced in page-fault mode has no allocator stacks to learn them from.
        if ends_short(&ips, modules) {
            self.frames_to_judge.extend(ips.iter().skip(1));
            // An event's first frame is the instruction it stopped at, not a return address.
            if event.caller.is_none() {
                self.frames_to_judge.push(ips[0] | AT_INSTRUCTION);
            }
        }
        let unnamed_jit = jit.tag(&mut ips, event.time_ns, modules);
        let stack = self.intern(ips);
        if unnamed_jit {
            self.await_jit_record(stack, event.time_ns);
        }
        stack
    }
}

/// The page the kernel maps for uretprobes: the last page below the 47-bit user address limit (x86-64's
/// `TASK_SIZE - PAGE_SIZE`), shown as `[uprobes]` in the maps once mapped. Both are checked: the page is
/// mapped at the first return probe hit, often after the maps were last read.
pub const TRAMPOLINE_PAGE: std::ops::Range<u64> = 0x7fff_ffff_e000..0x7fff_ffff_f000;

fn is_uretprobe_trampoline(ip: u64, modules: &ModuleMap) -> bool {
    is_uprobes_page(ip, modules)
}

/// Whether `addr` is in the page the kernel maps for uprobes (see [`TRAMPOLINE_PAGE`]).
pub fn is_uprobes_page(addr: u64, modules: &ModuleMap) -> bool {
    TRAMPOLINE_PAGE.contains(&addr) || modules.in_uprobes_page(addr)
}

/// Where frame-pointer walking goes through code that keeps no frame pointer, it reads data as frames: text
/// (`0x2020202020202028`, spaces), pointers to the heap or the stack. Such a return address is nowhere in
/// executable code: the stack ends before it, since nothing after it can be trusted. Returns whether it cut.
fn cut_at_non_code(ips: &mut Vec<u64>, modules: &mut ModuleMap) -> bool {
    // Frame 0 is where the event happened; JIT code lies in executable anonymous mappings, so it stays.
    let Some(at) = ips.iter().skip(1).position(|&ip| !is_code(ip, modules)) else { return false };
    ips.truncate(at + 1);
    true
}

/// Whether a stack ends in the program's own code, short of the C runtime's start (`__libc_start_call_main`,
/// `start_thread`) where a frame-pointer walk of a whole stack ends: a walk stopped, or skipped frames, in
/// code without frame pointers. Not at the depth limit, and not in JIT code (no file, no CFI).
fn ends_short(ips: &[u64], modules: &mut ModuleMap) -> bool {
    if ips.is_empty() || ips.len() >= tracer_common::MAX_STACK_DEPTH {
        return false;
    }
    let Some(&outermost) = ips.last() else { return false };
    modules.lookup(outermost).is_some_and(|m| m.executable && m.is_file() && !is_runtime_module(m.file_path()))
}

/// Whether `ip` is in an executable mapping of the target (re-reading the maps once on a miss).
fn is_code(ip: u64, modules: &mut ModuleMap) -> bool {
    // x86-64 user space ends at 2^47; the first page is never mapped.
    const USER_END: u64 = 1 << 47;
    (4096..USER_END).contains(&ip) && modules.lookup(ip).is_some_and(|mapping| mapping.executable)
}

/// Frames in the kernel's uretprobe trampoline stand where hooked allocator calls will return: the
/// outermost one becomes the return address of the thread's outermost call (`alloc_caller`, taken at its
/// entry); the others, returns inside the allocator, are dropped.
fn replace_trampolines(ips: &mut Vec<u64>, alloc_caller: Option<u64>, modules: &ModuleMap) {
    let trampolines: Vec<usize> =
        (0..ips.len()).filter(|&index| is_uretprobe_trampoline(ips[index], modules)).collect();
    let Some(&outermost) = trampolines.last() else { return };
    // A caller read where a return probe had already put the trampoline says nothing.
    let alloc_caller = alloc_caller.filter(|caller| !is_uretprobe_trampoline(*caller, modules));
    if let Some(caller) = alloc_caller {
        ips[outermost] = caller;
    }
    let dropped: Vec<usize> =
        trampolines.into_iter().filter(|&index| index != outermost || alloc_caller.is_none()).collect();
    let mut index = 0;
    ips.retain(|_| {
        let keep = !dropped.contains(&index);
        index += 1;
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_end_where_the_walk_leaves_code() {
        // Our own process: this function is code, a heap block and text read as an address are not.
        let mut modules = ModuleMap::new(std::process::id());
        let code = stacks_end_where_the_walk_leaves_code as fn() as usize as u64;
        let block = Box::new(0u64);
        let heap = &*block as *const u64 as u64;
        let mut spaces = vec![code, code + 1, 0x2020_2020_2020_2028, code + 2];
        assert!(cut_at_non_code(&mut spaces, &mut modules));
        assert_eq!(spaces, [code, code + 1]);
        let mut into_heap = vec![code, heap, code];
        assert!(cut_at_non_code(&mut into_heap, &mut modules));
        assert_eq!(into_heap, [code]);
        let mut whole = vec![code, code + 1];
        assert!(!cut_at_non_code(&mut whole, &mut modules));
        assert_eq!(whole, [code, code + 1]);
    }

    #[test]
    fn interning_gives_one_index_per_distinct_stack() {
        let mut table = StackTable::default();
        let a = table.intern(vec![1, 2, 3]);
        let b = table.intern(vec![1, 2, 4]);
        assert_ne!(a, b);
        assert_eq!(table.intern(vec![1, 2, 3]), a);
        assert_eq!(table.intern(vec![]), UNKNOWN_STACK);
        assert_eq!(table.ips(b), &[1, 2, 4]);
    }

    #[test]
    fn jit_frames_without_a_record_yet_are_named_when_it_comes() {
        const NAMED: u64 = crate::symbolizer::jit_frames::JIT_FRAME | 7;
        let mut table = StackTable::default();
        // Frame 0x20 is JIT code whose record is written at 150: the stack was taken at 100.
        let late = table.intern(vec![0x10, 0x20, 0x30]);
        table.await_jit_record(late, 100);
        // One that never gets a record, and one taken after its record came (named at once).
        let never = table.intern(vec![0x11, 0x21]);
        table.await_jit_record(never, 100);
        let twin = table.intern(vec![0x10, NAMED, 0x30]);
        table.take_unnamed();
        let record_written = std::cell::Cell::new(false);
        let name = |ips: &mut Vec<u64>, time_ns: u64| {
            assert_eq!(time_ns, 100, "named at the time the stack was taken");
            for ip in ips.iter_mut() {
                if *ip == 0x20 && record_written.get() {
                    *ip = NAMED;
                }
            }
            ips.iter().any(|ip| [0x20, 0x21].contains(ip))
        };
        table.name_jit_again(200, 1, false, name);
        assert_eq!((table.jit_pending(), table.jit_unnamed()), (2, 0), "both wait");
        assert_eq!(table.ips(late), &[0x10, 0x20, 0x30]);
        record_written.set(true);
        table.name_jit_again(300, 1, false, |_, _| unreachable!("no new code: nothing is looked up"));
        assert_eq!(table.ips(late), &[0x10, 0x20, 0x30]);
        table.name_jit_again(300, 2, false, name);
        assert_eq!(table.ips(late), &[0x10, NAMED, 0x30], "named in place: its figures stay with it");
        assert_eq!(table.take_unnamed(), vec![late], "its frames are named anew");
        assert_eq!((table.jit_pending(), table.jit_unnamed()), (1, 0));
        assert_eq!(table.intern(vec![0x10, NAMED, 0x30]), twin, "the index keeps the stack that had the names first");
        assert_ne!(table.intern(vec![0x10, 0x20, 0x30]), late, "the unnamed frames are another stack now");
        table.name_jit_again(100 + JIT_RECORD_PATIENCE_NS + 1, 2, false, name);
        assert_eq!((table.jit_pending(), table.jit_unnamed()), (0, 1), "given up after the patience");
        let at_end = table.intern(vec![0x12, 0x21]);
        table.await_jit_record(at_end, 500);
        table.name_jit_again(600, 2, true, |ips, _| ips.contains(&0x21));
        assert_eq!((table.jit_pending(), table.jit_unnamed()), (0, 2), "the trace's end gives up on the rest");
    }

    #[test]
    fn evicted_stacks_are_forgotten_and_their_slots_reused() {
        let mut table = StackTable::default();
        let a = table.intern(vec![1, 2, 3]);
        let b = table.intern(vec![4, 5]);
        assert_eq!(table.take_unnamed(), vec![a, b]);
        assert_eq!(table.evict_except(&HashSet::from([b])), vec![a]);
        assert_eq!(table.ips(a), &[] as &[u64]);
        assert_eq!(table.ips(b), &[4, 5]);
        assert_eq!(table.live(), 1);
        assert_eq!(table.held_bytes(), 2 * 64 + 512);
        let c = table.intern(vec![7, 8, 9]);
        assert_eq!(c, a, "the evicted slot is reused");
        assert_eq!(table.ips(c), &[7, 8, 9]);
        assert_eq!(table.take_unnamed(), vec![c], "a reused slot is named again");
        let again = table.intern(vec![1, 2, 3]);
        assert_ne!(again, a);
    }
}
