//! Our own walk of a user stack, for allocator calls: cheaper than the kernel's (`bpf_get_stackid`), and
//! able to step through code without frame pointers by CFI rules userspace gives it.
//!
//! Where the time of the kernel's walk goes, measured here (perf, a malloc 20 frames deep): a third of it
//! in one page fault per stack, taken and fixed up in the kernel, when the walk reads the last "frame" at
//! the %rbp that `main` saved, which the C runtime's start left holding argc or other data. This walk
//! stops at any %rbp below the stack pointer or misaligned (never a frame), reads the top of the stack in
//! one copy and takes frames from it, and reads only the frames beyond it one by one.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_loop, bpf_probe_read_user as probe_read_user_raw},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use crate::{
    alloc::{BPF_F_NO_PREALLOC, STACK_HASH_SEED, hash_frame},
    record::stops_at,
};
use tracer_common::{
    MAX_STACK_DEPTH,
    alloc::{AT_INSTRUCTION, CallerRule, RBP_NOT_SAVED, RuledCode},
    events::{InlineStack, stop_at},
};

/// Return addresses in code without frame pointers, with the CFI rule that steps out of the function there
/// (see [`CallerRule`]); userspace adds one when it first sees such a return address on a stack. Also the
/// instructions events stopped at in such code, under the address with [`AT_INSTRUCTION`] set.
#[map]
pub static CALLER_RULES: HashMap<u64, CallerRule> = HashMap::with_max_entries(CALLER_RULES_ENTRIES, BPF_F_NO_PREALLOC);

/// Room for the call sites of a few modules learned whole (python3.11 alone has 56,800); entries take kernel
/// memory only once used (about 80 bytes each).
const CALLER_RULES_ENTRIES: u32 = 262_144;

/// Where [`CALLER_RULES`] has rules, and whether every return address is looked up there (the program has
/// code without frame pointers of its own, not only the C runtime's) or only the allocator's caller, an
/// event's instruction and the frames of a chain of rules: see [`RuledCode`].
#[map]
static RULED_CODE: Array<RuledCode> = Array::with_max_entries(1, 0);

/// Whether [`CALLER_RULES`] may have a rule at `address` (see [`RuledCode`]). A walk that reads the slot
/// while userspace writes it may miss a rule just given, as if it came a moment later.
#[inline(always)]
fn in_ruled_code(address: u64) -> bool {
    RULED_CODE.get(0).is_none_or(|ruled| ruled.contains(address))
}

/// The stack copied at once: its first bytes from the stack pointer, then, when a frame lies beyond them,
/// the rest of the page, then the next page. The frames of most calls lie within them (a malloc 7 C frames
/// deep: its first 512 bytes; 60 frames: 1 KiB), and one copy costs less than a few reads of 16 bytes, but
/// its cost grows with its size (a page: about a quarter of the walk). Never more than a page at once: a
/// read into an unmapped page (above the main thread's stack) faults, which costs more than the whole walk.
const PAGE: u64 = 4096;

/// The bytes from `address` to the end of its page: a copy that goes no further cannot run into a page that
/// is not mapped.
#[inline(always)]
pub fn to_page_end(address: u64) -> u64 {
    PAGE - (address & (PAGE - 1))
}
const FIRST_COPY: u64 = 512;
const WINDOW_BYTES: usize = 2 * PAGE as usize;
const WINDOW_WORDS: usize = WINDOW_BYTES / 8;

/// Where the stack is at an allocator's entry.
pub struct EntryRegisters {
    pub ip: u64,
    pub sp: u64,
    pub rbp: u64,
    /// The return address on top of the stack.
    pub caller: u64,
}

/// Where a walk starts: at an allocator's entry (its caller known, frame 1) or at the instruction an event
/// stopped at. Each has its own step function: the event's also notes whether it stepped out of the
/// instruction by a rule, and the allocator entry's program has no BPF stack to spare for that (its own frame
/// and the step's are at the verifier's limit of 512 bytes together).
const FROM_ENTRY: bool = false;
const FROM_EVENT: bool = true;

/// Where the walk is, between its steps: the frame's return address, its stack pointer after the return
/// and %rbp; the frames taken so far; where the copied window of the stack starts and how much of it was
/// copied. In a map, not on the BPF stack: the verifier then knows nothing of the values, and one check of
/// a step stands for every step, where values it tracked (the depth) would have it check each one. The
/// copied stack and the frames taken are in the same map value, so that a step looks up one value, not
/// three (each lookup is a dozen instructions, and a step about a hundred).
#[repr(C)]
pub struct Walk {
    pc: u64,
    sp: u64,
    rbp: u64,
    depth: u64,
    base: u64,
    len: u64,
    /// How many times the window was extended (see [`extend_window`]): twice at most.
    extended: u64,
    every_frame_by_rules: u64,
    /// Whether the last frame was stepped out of by a rule: the next one is looked up too, until a frame
    /// has none (from there the frame pointers hold). Code without frame pointers is learned a module at a
    /// time, all its calls (see the collector's walk_rules.rs): a chain from the first frame goes through it
    /// all. Only a module learned a function at a time (too large to read whole) has every frame looked up
    /// (`every_frame_by_rules`).
    in_rule_chain: u64,
    /// Whether the walk stepped out of the instruction an event stopped at by the instruction's rule (see
    /// [`caller_by_instruction_rule`]).
    instruction_ruled: u64,
    /// The thread walking. A uprobe's program can be preempted, and another thread's walk on the same CPU
    /// then takes over these per-CPU buffers: the first walk sees it and gives up its stack.
    owner: u64,
    /// Whether the walk may be preempted (see [`Preemption`]): only then does each step check its owner.
    preemptible: u64,
    /// The frames taken so far, hashed as the stack's id is (see `alloc::stack_hash`).
    hash: u64,
    /// The copied top of the stack (too large for the BPF stack), and a word to spare: a frame's two words
    /// are read at one index masked within the window, the second one past it.
    window: [u64; WINDOW_WORDS + 1],
    /// The frames taken: by this walk, or by the kernel's (see [`scratch_stack`]).
    stack: InlineStack,
}

/// Whether a program may be preempted while it walks. A page fault's program runs before the fault handler
/// turns interrupts on, so no other walk can come between its steps; checking the owner at every step (a
/// helper call) cost such a walk about a tenth of its time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Preemption {
    Off,
    Possible,
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's buffer for a stack being built (by our walk, or by the kernel's before it is kept: too large
/// for the BPF stack).
#[inline(always)]
pub fn scratch_stack() -> Option<&'static mut InlineStack> {
    let walk = WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's; another thread's walk may take it over (see `Walk::owner`).
    Some(unsafe { &mut (*walk).stack })
}

/// Copies the first bytes of the stack from `sp` ([`FIRST_COPY`], or to the end of its page if nearer) into
/// the window; the bytes copied.
#[inline(always)]
fn copy_window(walk: &mut Walk, sp: u64) -> u64 {
    let len = to_page_end(sp).min(FIRST_COPY);
    // SAFETY: the helper writes at most FIRST_COPY bytes into the window of two pages.
    if unsafe { probe_read_user_raw(walk.window.as_mut_ptr().cast(), len as u32, sp as *const _) } == 0 {
        len
    } else {
        0
    }
}

/// Copies more of the stack into the window, once a frame lies past what it holds: the rest of the first
/// page, then the next page. Whether it could.
#[inline(always)]
fn extend_window(walk: &mut Walk) -> bool {
    if walk.extended >= 2 || walk.len == 0 {
        return false;
    }
    walk.extended += 1;
    let first_page = to_page_end(walk.base);
    let (from, size) = if walk.len < first_page { (walk.len, first_page - walk.len) } else { (first_page, PAGE) };
    // Checked as the helper gets them (hidden from the compiler, which would otherwise check values it
    // derives them from): both within the buffer of two pages, the first page's part of it at most a page.
    let (from, size) = (core::hint::black_box(from), core::hint::black_box(size));
    if from > PAGE || size == 0 || size > PAGE || from != walk.len {
        return false;
    }
    // SAFETY: `from` and `size` are at most a page each, and the buffer holds two.
    let dst = unsafe { walk.window.as_mut_ptr().cast::<u8>().add(from as usize) };
    if unsafe { probe_read_user_raw(dst.cast(), size as u32, (walk.base + from) as *const _) } != 0 {
        return false;
    }
    walk.len = from + size;
    true
}

/// Extends the window until it holds `offset`, or can grow no more: whether it holds it. Out of line: it
/// is reached from each read of the walk's step, and inlined there it made the verifier's work twice as long.
#[inline(never)]
fn extend_window_to(walk: &mut Walk, offset: u64) -> bool {
    (extend_window(walk) && offset < walk.len) || (extend_window(walk) && offset < walk.len)
}

/// The word at `addr` (8-aligned as the stack pointer is: callers check): from the window when it holds
/// it (copying more of the stack when first needed), else read from the stack itself.
#[inline(always)]
fn word(walk: &mut Walk, addr: u64) -> Option<u64> {
    let offset = addr.wrapping_sub(walk.base);
    if offset < walk.len || (offset < WINDOW_BYTES as u64 && extend_window_to(walk, offset)) {
        // Masked where the verifier sees it: hidden from the compiler, which would otherwise fold the mask
        // and the scaling into `offset & 0x1fff`, knowing the offset aligned, and the verifier would see a
        // read past the buffer.
        let index = core::hint::black_box(offset / 8) as usize & (WINDOW_WORDS - 1);
        return Some(walk.window[index]);
    }
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The frame at `addr`: the caller's %rbp and the return address. Within the window's reach from it; beyond,
/// both in one read of 16 bytes rather than two of 8 (each read costs about 50 ns: the Bun demo's outer
/// frames lie 8 to 256 KiB above the stack pointer, about 6 frames a fault).
#[inline(always)]
fn frame_words(walk: &mut Walk, addr: u64) -> Option<(u64, u64)> {
    let offset = addr.wrapping_sub(walk.base);
    if offset < WINDOW_BYTES as u64 {
        if offset + 16 <= walk.len {
            // Both copied: one index for the two (masked as in `word`).
            let index = core::hint::black_box(offset / 8) as usize & (WINDOW_WORDS - 1);
            return Some((walk.window[index], walk.window[index + 1]));
        }
        return Some((word(walk, addr)?, word(walk, addr + 8)?));
    }
    if stops_at(stop_at::FAR_FRAMES) {
        return None;
    }
    let [next_rbp, return_address] = unsafe { bpf_probe_read_user(addr as *const [u64; 2]) }.ok()?;
    Some((next_rbp, return_address))
}

/// Walks the stack of an allocator call into [`scratch_stack`]: the entry, the caller, then at each return address
/// by its CFI rule when [`CALLER_RULES`] has one (the function keeps no frame pointer; looked up for the
/// caller, and for every frame once userspace has turned `RuledCode::every_frame` on), else by the frame pointer.
/// A function without frame pointer whose rule is not known yet ends the stack there or skips to an outer
/// frame: userspace learns its rule from that stack, and the next call walks one function further. The
/// frames past the depth are left as they were. The stack's hash (see `alloc::stack_hash`), or None when it
/// could not be read.
///
/// Each two frames are a step of `bpf_loop`: the verifier checks one step, not every depth of the stack.
#[inline(always)]
pub fn walk(at: &EntryRegisters) -> Option<u64> {
    if at.caller == 0 {
        return None;
    }
    // At the entry the return address is on top of the stack: the caller's stack pointer is past it.
    walk_from::<FROM_ENTRY>([at.ip, at.caller], at.sp, at.sp + 8, at.rbp, Preemption::Possible)
}

/// Walks the user stack of an event (a page fault, a system call) from the registers it left user space
/// with, as the kernel's walk does: the instruction pointer, then frames, by frame pointer, and by CFI rules
/// from the instruction on where userspace has given them (code without frame pointers).
#[inline(always)]
pub fn walk_from_registers(ip: u64, sp: u64, rbp: u64, preemption: Preemption) -> Option<u64> {
    if ip == 0 {
        return None;
    }
    walk_from::<FROM_EVENT>([ip, 0], sp, sp, rbp, preemption)
}

/// The walk into [`scratch_stack`] from the frames before it, `first`: an allocator's entry and its caller
/// (frame 1: a return address), or the instruction an event stopped at (frame 0). The last of them is
/// `pc`, at stack pointer `sp` and %rbp `rbp`; the window copied from `base` (the stack pointer the thread
/// stopped at). The stack's hash.
#[inline(always)]
fn walk_from<const FROM: bool>(first: [u64; 2], base: u64, sp: u64, rbp: u64, preemption: Preemption) -> Option<u64> {
    let depth = first_depth::<FROM>();
    // The stack pointer of a thread in user space is 8-aligned; anything else is no stack.
    if base & 7 != 0 {
        return None;
    }
    let walk = WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's; another thread's walk may take it over (see `Walk::owner`).
    let walk = unsafe { &mut *walk };
    // Field by field: the buffers are not cleared (the frames past the depth are left as they were).
    walk.stack.ips[0] = first[0];
    walk.stack.ips[1] = first[1];
    walk.pc = first[depth as usize - 1];
    walk.sp = sp;
    walk.rbp = rbp;
    walk.depth = depth;
    walk.base = base;
    walk.len = copy_window(walk, base);
    walk.extended = 0;
    walk.every_frame_by_rules = RULED_CODE.get(0).map_or(0, |ruled| ruled.every_frame);
    walk.in_rule_chain = 0;
    walk.instruction_ruled = 0;
    walk.owner = bpf_get_current_pid_tgid();
    walk.preemptible = (preemption == Preemption::Possible) as u64;
    let hash = hash_frame(STACK_HASH_SEED, first[0]);
    walk.hash = if depth == 2 { hash_frame(hash, first[1]) } else { hash };
    // SAFETY: `step` is a BPF function of the signature bpf_loop calls.
    unsafe { bpf_loop(MAX_STACK_DEPTH as u32, step::<FROM> as *mut c_void, core::ptr::null_mut(), 0) };
    walk.stack.depth = walk.depth.min(MAX_STACK_DEPTH as u64);
    still_ours().then(|| hash_frame(walk.hash, walk.stack.depth))
}

/// The current thread's last walk from an event's registers stepped out of the instruction it stopped at by
/// the instruction's CFI rule: the return address it stepped to (the stack's frame 1), which is then exact
/// even in code without frame pointers.
#[inline(always)]
pub fn caller_by_instruction_rule() -> Option<u64> {
    let walk = WALK.get(0)?;
    let ruled = walk.instruction_ruled != 0 && walk.depth >= 2 && walk.owner == bpf_get_current_pid_tgid();
    ruled.then_some(walk.stack.ips[1])
}

/// Whether the per-CPU buffers of the walk still hold the current thread's walk (see [`Walk::owner`]).
#[inline(always)]
pub fn still_ours() -> bool {
    WALK.get(0).is_some_and(|walk| walk.owner == bpf_get_current_pid_tgid())
}

/// The page the kernel maps for uretprobes' trampoline: the last below x86-64's 47-bit user address limit.
const UPROBES_PAGE: core::ops::Range<u64> = 0x7fff_ffff_e000..0x7fff_ffff_f000;

const STOP: i64 = 1;
const GO_ON: i64 = 0;

/// Two frames of [`walk`] (see [`frame`]): a step's call and lookup cost as much as a third of a frame.
#[inline(never)]
extern "C" fn step<const FROM: bool>(_index: u64, _context: *mut c_void) -> i64 {
    let Some(walk) = WALK.get_ptr_mut(0) else { return STOP };
    // SAFETY: this CPU's, as above.
    let walk = unsafe { &mut *walk };
    if walk.preemptible != 0 && walk.owner != bpf_get_current_pid_tgid() {
        return STOP;
    }
    if frame::<FROM>(walk) == STOP {
        return STOP;
    }
    frame::<FROM>(walk)
}

/// The depth a walk's steps start at: the frame whose rule is always looked up.
#[inline(always)]
const fn first_depth<const FROM: bool>() -> u64 {
    if FROM == FROM_EVENT { 1 } else { 2 }
}

/// One frame: from the frame at `walk.pc` to its caller's, its return address put in the stack at
/// `walk.depth`.
#[inline(always)]
fn frame<const FROM: bool>(walk: &mut Walk) -> i64 {
    let depth = walk.depth as usize;
    if depth >= MAX_STACK_DEPTH {
        return STOP;
    }
    // The first frame's rule (an allocator's caller, an event's instruction) is always looked up: one lookup a
    // walk, and the start of a chain through code without frame pointers.
    let first = walk.depth == first_depth::<FROM>();
    let look_up = walk.every_frame_by_rules != 0 || walk.in_rule_chain != 0 || first;
    // An event's first frame is the instruction it stopped at, not a return address: its rule is kept under
    // the address with AT_INSTRUCTION set.
    let at_instruction = FROM == FROM_EVENT && first;
    let rule = if look_up && in_ruled_code(walk.pc) {
        let key = if at_instruction { walk.pc | AT_INSTRUCTION } else { walk.pc };
        unsafe { CALLER_RULES.get(&key) }
    } else {
        None
    };
    walk.in_rule_chain = rule.is_some() as u64;
    if at_instruction {
        walk.instruction_ruled = rule.is_some() as u64;
    }
    // A call site in a function with a frame pointer (`BY_FRAME_POINTER`): stepped by it, the chain going on.
    let rule = rule.filter(|rule| rule.cfa_from_sp != 0);
    let return_address = if let Some(rule) = rule {
        // Offsets that keep the stack pointer's alignment, as every real rule does.
        if rule.cfa_from_sp <= 0 || rule.cfa_from_sp & 7 != 0 || rule.saved_rbp_from_cfa & 7 != 0 {
            return STOP;
        }
        let cfa = walk.sp + rule.cfa_from_sp as u64;
        let Some(return_address) = word(walk, cfa - 8) else { return STOP };
        if rule.saved_rbp_from_cfa != RBP_NOT_SAVED {
            let Some(saved_rbp) = word(walk, cfa.wrapping_add(rule.saved_rbp_from_cfa as i64 as u64)) else {
                return STOP;
            };
            walk.rbp = saved_rbp;
        }
        walk.sp = cfa;
        return_address
    } else {
        // A frame: the caller's %rbp, then the return address. It lies above the stack pointer, aligned;
        // anything else is not a frame of this stack (and reading it could fault, which costs more than the
        // rest of the walk).
        let rbp = walk.rbp;
        if rbp < walk.sp || rbp & 7 != 0 {
            return STOP;
        }
        let Some((next_rbp, return_address)) = frame_words(walk, rbp) else { return STOP };
        walk.sp = rbp + 16;
        walk.rbp = next_rbp;
        return_address
    };
    if return_address == 0 {
        return STOP;
    }
    // A page fault or system call inside a traced allocator call: its return address was replaced by the
    // kernel's uretprobe trampoline, which the call's entry saw in place (see `AllocCall::sp`).
    let return_address = if UPROBES_PAGE.contains(&return_address) {
        let Some(caller) = crate::alloc::return_address_under_trampoline(walk.sp - 8) else { return STOP };
        caller
    } else {
        return_address
    };
    walk.stack.ips[depth] = return_address;
    walk.hash = hash_frame(walk.hash, return_address);
    walk.depth += 1;
    walk.pc = return_address;
    GO_ON
}
