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
}

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
        jit.tag(&mut ips, event.time_ns, modules);
        self.intern(ips)
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
