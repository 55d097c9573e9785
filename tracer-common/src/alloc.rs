//! Allocator entry points: how each takes its arguments and returns its result. Userspace finds the entry
//! points in the target's ELF objects and attaches one generic program to each, passing an [`AllocCookie`]
//! as the uprobe's attach cookie; the kernel program reads the arguments the cookie names.

/// The calling convention of an allocator function, as far as accounting goes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocShape {
    /// Returns a new block of `arg[size]` bytes, or NULL: malloc, aligned_alloc, memalign, valloc, pvalloc,
    /// operator new, mi_malloc, mi_zalloc, mallocx, tc_malloc...
    Malloc = 1,
    /// Returns a new block of `arg[count] * arg[size]` bytes: calloc, mi_calloc, mi_mallocn...
    Calloc = 2,
    /// Resizes `arg[ptr]` to `arg[size]` bytes, maybe moving it: realloc, mi_realloc, rallocx... A NULL ptr
    /// makes it an allocation; a NULL result with size 0 is a free; a NULL result otherwise changes nothing.
    Realloc = 3,
    /// Like [`AllocShape::Realloc`] with `arg[count] * arg[size]` bytes: reallocarray, mi_reallocn.
    ReallocArray = 4,
    /// Writes the new block of `arg[size]` bytes through `arg[ptr]` (a `void **`) and returns 0 on success:
    /// posix_memalign.
    PosixMemalign = 5,
    /// Frees `arg[ptr]`: free, operator delete, mi_free, dallocx, sdallocx...
    Free = 6,
    /// Resizes `arg[ptr]` in place and returns its new usable size: xallocx.
    ResizeInPlace = 7,
    /// Resizes `arg[ptr]` in place to `arg[size]` bytes, returning ptr, or NULL when it cannot: mi_expand.
    ExpandInPlace = 8,
    /// Hands the blocks of the thread's own cache back to the allocator through its free, blocks the
    /// program freed long before: glibc's `__malloc_arena_thread_freeres` at a thread's exit (its tcache).
    /// The frees it makes are nobody's: they release nothing and count no unmatched free.
    ReleasesCache = 9,
}

impl AllocShape {
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Malloc,
            2 => Self::Calloc,
            3 => Self::Realloc,
            4 => Self::ReallocArray,
            5 => Self::PosixMemalign,
            6 => Self::Free,
            7 => Self::ResizeInPlace,
            8 => Self::ExpandInPlace,
            9 => Self::ReleasesCache,
            _ => return None,
        })
    }

    /// Whether the result matters, so that a return probe is needed too.
    pub const fn needs_return_probe(self) -> bool {
        !matches!(self, Self::Free)
    }
}

/// An entry point's shape and which argument registers hold what (0 = first argument). Unused indices are
/// 0. Packed into the 64-bit uprobe attach cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocCookie {
    pub shape: AllocShape,
    pub ptr_arg: u8,
    pub size_arg: u8,
    pub count_arg: u8,
    /// No return probe on this function (it may throw: a C++ unwinder cannot unwind through the kernel's
    /// return trampoline). The hooked allocator it calls records the block, under this call's stack.
    pub no_return: bool,
}

impl AllocCookie {
    pub const fn new(shape: AllocShape, ptr_arg: u8, size_arg: u8, count_arg: u8) -> Self {
        Self { shape, ptr_arg, size_arg, count_arg, no_return: false }
    }

    pub const fn without_return(mut self) -> Self {
        self.no_return = true;
        self
    }

    pub const fn encode(self) -> u64 {
        (self.shape as u64)
            | (self.ptr_arg as u64) << 8
            | (self.size_arg as u64) << 16
            | (self.count_arg as u64) << 24
            | (self.no_return as u64) << 32
    }

    pub const fn decode(cookie: u64) -> Option<Self> {
        let Some(shape) = AllocShape::from_u8(cookie as u8) else { return None };
        Some(Self {
            shape,
            ptr_arg: (cookie >> 8) as u8,
            size_arg: (cookie >> 16) as u8,
            count_arg: (cookie >> 24) as u8,
            no_return: (cookie >> 32) & 1 == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip() {
        let cookie = AllocCookie::new(AllocShape::ReallocArray, 1, 3, 2);
        assert_eq!(AllocCookie::decode(cookie.encode()), Some(cookie));
        let new = AllocCookie::new(AllocShape::Malloc, 0, 0, 0).without_return();
        assert_eq!(AllocCookie::decode(new.encode()), Some(new));
        let new = AllocCookie::new(AllocShape::Malloc, 0, 0, 0).without_return();
        assert_eq!(AllocCookie::decode(new.encode()), Some(new));
        assert_eq!(AllocCookie::decode(0), None);
    }

    #[test]
    fn ruled_code_holds_each_module_once_then_says_anywhere() {
        let mut ruled = RuledCode::default();
        assert!(!ruled.contains(0x1000), "nothing is ruled at first");
        ruled.add(0x1000, 0x2000);
        ruled.add(0x1000, 0x2000);
        assert!(ruled.contains(0x1000) && ruled.contains(0x1fff) && !ruled.contains(0x2000) && !ruled.contains(0xfff));
        assert_eq!(ruled.ranges.iter().filter(|range| range[1] != 0).count(), 1, "added once");
        for module in 1..RULED_CODE_RANGES as u64 {
            ruled.add(module << 20, (module << 20) + 0x1000);
        }
        assert_eq!(ruled.anywhere, 0, "{RULED_CODE_RANGES} modules fit");
        assert!(!ruled.contains(0x7000_0000));
        ruled.add(0x7000_0000, 0x7000_1000);
        assert_eq!(ruled.anywhere, 1, "one more: every address is looked up");
        assert!(ruled.contains(0x7000_0000) && ruled.contains(0x10));
    }
}

/// Key of a live block in the `ALLOCS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub tgid: u32,
    pub pad: u32,
    pub addr: u64,
}

/// Where a block was allocated: the stack taken at the allocator's entry, and the return address at the
/// user stack pointer there (frame-pointer unwinding from a function's first instruction skips its
/// caller, which is exactly that return address; userspace puts it back as frame 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocSite {
    /// Id in the `STACKS` map, or [`NO_STACK`].
    pub stack_id: u32,
    pub pad: u32,
    pub caller: u64,
}

/// A live block: what was asked for, when, and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Block {
    pub size: u64,
    pub timestamp_ns: u64,
    pub site: AllocSite,
    /// What the block counts for in its site's figures: its size and 1, or, sampled (`--sample-bytes N`)
    /// below N bytes, N and N / size (see `tracer-ebpf/src/alloc.rs`).
    pub charged_bytes: u64,
    pub charged_blocks: u64,
}

/// The stack id of blocks whose stack could not be stored (counted in `stack_errors`).
pub const NO_STACK: u32 = u32::MAX;

/// The site that stands for every site the kernel's table of sites (`ALLOC_STATS`) had no room for: put in
/// the table by userspace before the probes attach, so that it is always there and a block charged to it is
/// charged out of it again. Its blocks count in the totals, under an unknown stack (`site_table_full`).
pub const SITES_PAST_THE_TABLE: AllocSite = AllocSite { stack_id: NO_STACK, pad: 1, caller: 0 };

/// The byte sampling interval the kernel turns on by itself when the table of live blocks is full (the
/// default of `--sample-bytes`): the table drains as blocks are freed, and the figures stay unbiased
/// estimates. Set from the first block left out, not a collector's poll later: a program making a million
/// blocks a second would leave tens of thousands out in between.
pub const SAMPLE_BYTES_WHEN_FULL: u64 = 512 << 10;

/// Set in an [`AllocSite::stack_id`] that is not a `STACKS` id but a key of `SPILLED_STACKS`: the stack
/// map's bucket for that stack held another one, so its frames were kept beside it, under a hash of them.
pub const SPILLED_STACK: u32 = 1 << 30;

/// Figures per [`AllocSite`], kept in the kernel (`ALLOC_STATS`) so that userspace needs no event per call.
/// Updated with atomic adds from every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackAllocStats {
    pub outstanding_bytes: u64,
    pub outstanding_blocks: u64,
    pub allocated_bytes: u64,
    pub allocated_blocks: u64,
    pub freed_bytes: u64,
}

/// An allocator call between its entry and its return, by thread (pid_tgid): `ALLOC_CALLS`. A plain hash
/// map, not an LRU one, so that no call under way is ever pushed out by another (a full map is counted);
/// userspace removes the entries of threads that died inside a call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCall {
    pub cookie: u64,
    pub size: u64,
    /// The block resized or freed (realloc), or where the result is written (posix_memalign).
    pub ptr: u64,
    /// The user stack pointer at the entry: calls made deeper than it are nested inside this one.
    pub sp: u64,
    /// Nested hooked calls still under way.
    pub depth: u64,
    pub site: AllocSite,
    /// When the call entered, in jiffies (`bpf_jiffies64`): only windows of tens of milliseconds and more are
    /// judged by it.
    pub entered_ticks: u64,
    /// A call without a return probe whose inner call has taken over.
    pub delegated: u32,
    /// 0: not chosen by byte sampling, its block is not recorded. Otherwise the sampling interval in force
    /// when the call was chosen, plus one (0 + 1 without sampling): its block is charged at that interval at
    /// the return, even if the interval has changed since (`--overhead` moves it), so that the charge
    /// matches the probability it was chosen with.
    pub sampled_at: u32,
    /// A realloc's old block, taken out of the live blocks at the entry (`has_old_block` 1): once realloc
    /// frees it inside, another thread may get its address from malloc before this call returns. Charged
    /// out of its site when realloc succeeds, put back when it fails.
    pub old_block: Block,
    pub has_old_block: u64,
}

/// How to step out of the function an allocator was called from, when that function keeps no frame pointer
/// (libstdc++'s `std::string` constructor, libc's `strdup`): from its CFI at the call's return address,
/// computed by userspace and put in `CALLER_RULES` under that address. Its frame-pointer walk would stop
/// there, or read data as frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallerRule {
    /// The caller's CFA is its stack pointer after the return (the allocator's entry %rsp + 8) plus this.
    pub cfa_from_sp: i32,
    /// Where it saved its own caller's %rbp, from the CFA; [`RBP_NOT_SAVED`]: %rbp is as it was.
    pub saved_rbp_from_cfa: i32,
}

/// [`CallerRule::saved_rbp_from_cfa`] when the function does not save %rbp (it leaves it alone).
pub const RBP_NOT_SAVED: i32 = i32::MIN;

/// The rule of a call site in a function that keeps a frame pointer, in a module learned whole: step by the
/// frame pointer, and go on looking rules up (the walk's chain through the module does not end there).
pub const BY_FRAME_POINTER: CallerRule = CallerRule { cfa_from_sp: 0, saved_rbp_from_cfa: -16 };

/// Set in a `CALLER_RULES` key that is the instruction an event (a page fault, a system call) stopped at,
/// not a return address: its rule is the CFI row at that very instruction, where a return address's is the
/// row at its call. User addresses are below 2^47, so the bit is free.
pub const AT_INSTRUCTION: u64 = 1 << 63;

/// Where `CALLER_RULES` may have rules, in slot 0 of `RULED_CODE`: the executable mappings of the modules
/// userspace has given rules for. A walk looks an address up only there: a lookup that finds nothing cost a
/// walk through code with frame pointers about 30 ns a frame looked up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuledCode {
    /// Not 0: every frame is looked up, not only the allocator's caller, an event's instruction, and the
    /// frames of a chain of rules (the program has code without frame pointers of its own).
    pub every_frame: u64,
    /// Not 0: more modules have rules than `ranges` holds; an address is looked up wherever it lies.
    pub anywhere: u64,
    /// [start, end) address ranges; unused ones are [0, 0].
    pub ranges: [[u64; 2]; RULED_CODE_RANGES],
}

pub const RULED_CODE_RANGES: usize = 8;

impl RuledCode {
    /// Adds the module at [start, end) (or turns `anywhere` on when no slot is left).
    pub fn add(&mut self, start: u64, end: u64) {
        if self.contains(start) {
            return;
        }
        match self.ranges.iter_mut().find(|range| range[1] == 0) {
            Some(slot) => *slot = [start, end],
            None => self.anywhere = 1,
        }
    }

    /// Whether rules at `address` may be in `CALLER_RULES`.
    pub fn contains(&self, address: u64) -> bool {
        self.anywhere != 0 || crate::in_ranges(&self.ranges, address)
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::RuledCode {}
    unsafe impl aya::Pod for super::CallerRule {}
    unsafe impl aya::Pod for super::AllocCall {}
    unsafe impl aya::Pod for super::BlockKey {}
    unsafe impl aya::Pod for super::Block {}
    unsafe impl aya::Pod for super::StackAllocStats {}
    unsafe impl aya::Pod for super::AllocSite {}
}
