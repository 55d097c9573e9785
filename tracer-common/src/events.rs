//! Events the kernel programs send to userspace through the `EVENTS` ring buffer.

/// What a [`MemEvent`] reports. Only calls that succeeded are sent: a failed call changes nothing.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `mmap` returned `addr`; `len`, `prot`, `flags` and `fd` are its arguments.
    Mmap = 1,
    /// `munmap(addr, len)` returned 0.
    Munmap = 2,
    /// `mremap(addr, len, new_len, flags, ..)` returned `new_addr`.
    Mremap = 3,
    /// `brk(addr)` returned `new_addr` (the break after the call).
    Brk = 4,
    /// `madvise(addr, len, flags)` returned 0, for a behaviour that gives pages back (DONTNEED, FREE,
    /// REMOVE, DONTNEED_LOCKED).
    Madvise = 5,
    /// A user page fault at `addr`; `flags` is the x86 error code (bit 0: the page was present, bit 1:
    /// write).
    PageFault = 6,
    /// The page fault in progress on `tid` at `addr` brought in a block of `len` bytes (a transparent huge
    /// page, or a multi-size THP), not a base page.
    LargePage = 7,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Mmap,
            2 => Self::Munmap,
            3 => Self::Mremap,
            4 => Self::Brk,
            5 => Self::Madvise,
            6 => Self::PageFault,
            7 => Self::LargePage,
            _ => return None,
        })
    }
}

/// One memory event. A single layout serves every kind; the field comments say what each kind puts there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEvent {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// An [`EventKind`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Id in the `STACKS` map of the user stack at the call, or a negative errno when none was taken.
    pub stack_id: i32,
    /// Start of the region (for mmap and mremap: the old address / the address returned).
    pub addr: u64,
    /// Length of the region (mremap: the old length).
    pub len: u64,
    /// mremap: the address returned; brk: the break after the call.
    pub new_addr: u64,
    /// mremap: the new length.
    pub new_len: u64,
    /// mmap/mremap flags, or the madvise behaviour.
    pub flags: u64,
    /// mmap protection bits.
    pub prot: u32,
    /// mmap file descriptor (-1 for anonymous memory).
    pub fd: i32,
    /// The user stack pointer when the stack was taken, or 0 when `stack_top` was not filled.
    pub user_sp: u64,
    /// The first [`STACK_TOP_WORDS`] words of the user stack from `user_sp` on. The C runtime keeps no
    /// frame pointers, so frame-pointer unwinding loses or garbles the frames around a libc wrapper or
    /// allocator; userspace unwinds those frames from this copy with the runtime's CFI (.eh_frame).
    pub stack_top: [u64; STACK_TOP_WORDS],
}

/// A [`MemEvent`] whose stack did not fit in the kernel's stack map (its hash bucket was taken by another
/// stack, or the map was full): the frames travel in the event itself. Told apart by its size.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemEventWithStack {
    pub event: MemEvent,
    /// Frames in `ips`, innermost first.
    pub depth: u64,
    pub ips: [u64; crate::MAX_STACK_DEPTH],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for MemEventWithStack {}

/// Words of user stack copied with each event that carries a stack (512 bytes).
pub const STACK_TOP_WORDS: usize = 64;

impl Default for MemEvent {
    fn default() -> Self {
        Self {
            timestamp_ns: 0,
            kind: 0,
            tgid: 0,
            tid: 0,
            stack_id: -1,
            addr: 0,
            len: 0,
            new_addr: 0,
            new_len: 0,
            flags: 0,
            prot: 0,
            fd: -1,
            user_sp: 0,
            stack_top: [0; STACK_TOP_WORDS],
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for MemEvent {}

/// Bytes of a log write the kernel copies: enough for a marker line, no more (the rest of what a target
/// logs is none of our business).
pub const LOG_BYTES: usize = 240;

/// The first bytes of a write to the target's stdout or stderr (or a descriptor duplicated from them),
/// for turn markers. Told apart from memory events by its first field.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LogWrite {
    /// Always [`LOG_WRITE_MAGIC`].
    pub magic: u64,
    pub timestamp_ns: u64,
    pub tgid: u32,
    pub fd: u32,
    /// Bytes copied into `data`.
    pub len: u32,
    /// Bytes the write asked to write.
    pub count: u32,
    pub data: [u8; LOG_BYTES],
}

/// Marks a [`LogWrite`]: a value no [`MemEvent`] timestamp can have.
pub const LOG_WRITE_MAGIC: u64 = u64::MAX;

#[cfg(feature = "user")]
unsafe impl aya::Pod for LogWrite {}
