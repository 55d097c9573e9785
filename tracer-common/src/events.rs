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
    /// write). `len` is the pages it stands for: the page sampling rate in force when it was taken (1: every
    /// page), carried in the event so that a rate changed while events wait in the ring buffer weighs each
    /// page by the rate that chose it.
    PageFault = 6,
    /// The page fault in progress on `tid` at `addr` brought in a block of `len` bytes (a transparent huge
    /// page, or a multi-size THP), not a base page.
    LargePage = 7,
    /// A signal delivered to the traced process: `addr` is its number, `flags` the handler (0: the default
    /// action).
    Signal = 8,
    /// The OOM killer chose task `tid` (of any process: userspace tells whether it is the target's).
    OomVictim = 9,
    /// The traced process called exec (`tid`: the thread that did, now its main thread): the old image's
    /// memory is gone.
    Exec = 10,
    /// Thread `tid` entered `mremap(addr, len, ..)`, sent before the kernel moves anything: the range is
    /// taken aside until the call's [`EventKind::Mremap`] or [`EventKind::MremapFailed`], so that another
    /// thread's mmap of the freed old range, which may be sent first, does not move with it.
    MremapBegin = 11,
    /// The mremap thread `tid` entered failed: its range stays where it was.
    MremapFailed = 12,
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
            8 => Self::Signal,
            9 => Self::OomVictim,
            10 => Self::Exec,
            11 => Self::MremapBegin,
            12 => Self::MremapFailed,
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
    /// The user stack pointer when a [`StackTop`] follows, else 0.
    pub user_sp: u64,
    /// Which parts follow the event in the ring buffer, in this order: [`parts::STACK_TOP`],
    /// [`parts::STACK`], [`parts::EXEC_PATH`].
    pub parts: u32,
    pub pad: u32,
    /// For an event inside a hooked allocator call (malloc calling brk, a fault in mimalloc): the return
    /// address of the thread's outermost such call, which the kernel's uretprobe trampoline replaces on
    /// the stack. 0 otherwise.
    pub alloc_caller: u64,
}

impl MemEvent {
    /// An event of `kind` that carries no stack, file or second range: every field but these 0, the file
    /// descriptor and stack id -1 (none). Callers set the fields their kind uses.
    pub const fn bare(kind: EventKind, tgid: u32, tid: u32, timestamp_ns: u64) -> Self {
        Self {
            timestamp_ns,
            kind: kind as u32,
            tgid,
            tid,
            stack_id: -1,
            addr: 0,
            len: 0,
            new_addr: 0,
            new_len: 0,
            flags: 0,
            prot: 0,
            fd: -1,
            user_sp: 0,
            parts: 0,
            pad: 0,
            alloc_caller: 0,
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for MemEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for InlineStack {}

/// What may follow a [`MemEvent`] in the ring buffer.
pub mod parts {
    /// A [`super::StackTop`]: the event's frame 0 lies in the C runtime, which keeps no frame pointers.
    pub const STACK_TOP: u32 = 1;
    /// An [`super::InlineStack`]: the stack did not fit in the stack map (its hash bucket was taken by
    /// another stack, or the map was full).
    pub const STACK: u32 = 2;
    /// An [`super::ExecPath`]: the file an exec ran (sent with [`super::EventKind::Exec`] only).
    pub const EXEC_PATH: u32 = 4;
}

/// Bytes of an exec's file name copied, its NUL included; a longer name is cut.
pub const EXEC_PATH_BYTES: usize = 256;

/// The file an exec ran, as the process named it to execve (a script's own path, not its interpreter's),
/// NUL-terminated. Taken in the kernel at the exec: by the time the collector reads the event, the process
/// may have exec'd again or be gone, and /proc would name another image or none.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecPath {
    pub bytes: [u8; EXEC_PATH_BYTES],
}

/// An exec event followed by its [`ExecPath`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemEventPath {
    pub event: MemEvent,
    pub path: ExecPath,
}

/// Words of user stack copied into a [`StackTop`] (512 bytes).
pub const STACK_TOP_WORDS: usize = 64;

/// The first [`STACK_TOP_WORDS`] words of the user stack from `user_sp` on. The C runtime keeps no frame
/// pointers, so frame-pointer unwinding loses or garbles the frames around a libc wrapper or allocator;
/// userspace unwinds those frames from this copy with the runtime's CFI (.eh_frame). Only sent for events
/// whose frame 0 lies in the C runtime (userspace tells the kernel where its code is: [`RuntimeText`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTop {
    pub words: [u64; STACK_TOP_WORDS],
}

/// The frames of a stack carried in the event itself, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InlineStack {
    pub depth: u64,
    pub ips: [u64; crate::MAX_STACK_DEPTH],
}

/// An event followed by a [`StackTop`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemEventTop {
    pub event: MemEvent,
    pub top: StackTop,
}

/// An event followed by an [`InlineStack`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemEventStack {
    pub event: MemEvent,
    pub stack: InlineStack,
}

/// An event followed by both.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemEventTopStack {
    pub event: MemEvent,
    pub top: StackTop,
    pub stack: InlineStack,
}

/// A traced process, by tgid in `TARGETS`: what the programs that record its events need to know of it,
/// found by the one lookup every program makes first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Where the C runtime's code lies: [start, end) address ranges, unused ones [0, 0].
    pub runtime_text: [[u64; 2]; RUNTIME_TEXT_RANGES],
    /// 0 until userspace has found the C runtime's code (a launched process loads its libc after the probes
    /// are attached): until then every event counts as in it.
    pub runtime_text_known: u64,
}

pub const RUNTIME_TEXT_RANGES: usize = 8;

/// Where an event with a stack stops being recorded, for the benchmark's account of where its time goes
/// (`LEAKTRACE_STOP_AT`, set at load; perf cannot look inside a program that runs with interrupts off):
/// each stage less the one before is the cost of a part. Never set otherwise: the events are not sent.
pub mod stop_at {
    /// The whole program (the default).
    pub const NOWHERE: u32 = 0;
    /// Once the target is found and its registers read: what every program of a traced process pays.
    pub const TARGET: u32 = 1;
    /// The whole program, but the walk reads no frame beyond the stack it copied (the far frames).
    pub const FAR_FRAMES: u32 = 2;
    /// Once the stack is walked, before it is kept.
    pub const KEEP: u32 = 3;
    /// Once the stack is kept, before the event is sent.
    pub const SEND: u32 = 4;
    /// The names `LEAKTRACE_STOP_AT` takes, with their stages.
    pub const NAMES: [(&str, u32); 4] =
        [("target", TARGET), ("far-frames", FAR_FRAMES), ("keep", KEEP), ("send", SEND)];
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Target {}

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
