//! Record layouts of the tracepoints the kernel programs read, each next to the lines of the kernel's
//! `format` file it mirrors (`/sys/kernel/tracing/events/<category>/<name>/format`). Userspace checks every
//! field listed in [`EXPECTED_FIELDS`] against the running kernel's format files before attaching, so a
//! kernel with another layout is refused with a clear message instead of being misread.

use core::mem::{offset_of, size_of};

/// The 8 bytes every tracepoint record starts with (common_type, common_flags, common_preempt_count,
/// common_pid).
pub type CommonHeader = [u8; 8];

/// syscalls/sys_enter_mmap
/// ```text
/// field:int __syscall_nr;	offset:8;	size:4;	signed:1;
/// field:unsigned long addr;	offset:16;	size:8;	signed:0;
/// field:unsigned long len;	offset:24;	size:8;	signed:0;
/// field:unsigned long prot;	offset:32;	size:8;	signed:0;
/// field:unsigned long flags;	offset:40;	size:8;	signed:0;
/// field:unsigned long fd;	offset:48;	size:8;	signed:0;
/// field:unsigned long off;	offset:56;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysEnterMmap {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub addr: u64,
    pub len: u64,
    pub prot: u64,
    pub flags: u64,
    pub fd: u64,
    pub off: u64,
}

/// syscalls/sys_enter_munmap
/// ```text
/// field:unsigned long addr;	offset:16;	size:8;	signed:0;
/// field:size_t len;	offset:24;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysEnterMunmap {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub addr: u64,
    pub len: u64,
}

/// syscalls/sys_enter_mremap
/// ```text
/// field:unsigned long addr;	offset:16;	size:8;	signed:0;
/// field:unsigned long old_len;	offset:24;	size:8;	signed:0;
/// field:unsigned long new_len;	offset:32;	size:8;	signed:0;
/// field:unsigned long flags;	offset:40;	size:8;	signed:0;
/// field:unsigned long new_addr;	offset:48;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysEnterMremap {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub addr: u64,
    pub old_len: u64,
    pub new_len: u64,
    pub flags: u64,
    pub new_addr: u64,
}

/// syscalls/sys_enter_brk
/// ```text
/// field:unsigned long brk;	offset:16;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysEnterBrk {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub brk: u64,
}

/// syscalls/sys_enter_madvise
/// ```text
/// field:unsigned long start;	offset:16;	size:8;	signed:0;
/// field:size_t len_in;	offset:24;	size:8;	signed:0;
/// field:int behavior;	offset:32;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysEnterMadvise {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub start: u64,
    pub len_in: u64,
    pub behavior: u64,
}

/// syscalls/sys_exit_* (every syscall exit has this layout)
/// ```text
/// field:int __syscall_nr;	offset:8;	size:4;	signed:1;
/// field:long ret;	offset:16;	size:8;	signed:1;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysExit {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub ret: i64,
}

/// exceptions/page_fault_user
/// ```text
/// field:unsigned long address;	offset:8;	size:8;	signed:0;
/// field:unsigned long ip;	offset:16;	size:8;	signed:0;
/// field:unsigned long error_code;	offset:24;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PageFaultUser {
    pub common: CommonHeader,
    pub address: u64,
    pub ip: u64,
    pub error_code: u64,
}

/// kmem/mm_page_alloc
/// ```text
/// field:unsigned long pfn;	offset:8;	size:8;	signed:0;
/// field:unsigned int order;	offset:16;	size:4;	signed:0;
/// field:unsigned long gfp_flags;	offset:24;	size:8;	signed:0;
/// field:int migratetype;	offset:32;	size:4;	signed:1;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MmPageAlloc {
    pub common: CommonHeader,
    pub pfn: u64,
    pub order: u32,
    pub pad: u32,
    pub gfp_flags: u64,
    pub migratetype: i32,
}

/// syscalls/sys_enter_write
/// ```text
/// field:unsigned int fd;	offset:16;	size:8;	signed:0;
/// field:const char * buf;	offset:24;	size:8;	signed:0;
/// field:size_t count;	offset:32;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysEnterWrite {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub fd: u64,
    pub buf: u64,
    pub count: u64,
}

/// syscalls/sys_enter_writev
/// ```text
/// field:unsigned long fd;	offset:16;	size:8;	signed:0;
/// field:const struct iovec * vec;	offset:24;	size:8;	signed:0;
/// field:unsigned long vlen;	offset:32;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SysEnterWritev {
    pub common: CommonHeader,
    pub syscall_nr: i32,
    pub pad: u32,
    pub fd: u64,
    pub vec: u64,
    pub vlen: u64,
}

/// signal/signal_deliver (in the receiving task)
/// ```text
/// field:int sig;	offset:8;	size:4;	signed:1;
/// field:int errno;	offset:12;	size:4;	signed:1;
/// field:int code;	offset:16;	size:4;	signed:1;
/// field:unsigned long sa_handler;	offset:24;	size:8;	signed:0;
/// field:unsigned long sa_flags;	offset:32;	size:8;	signed:0;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SignalDeliver {
    pub common: CommonHeader,
    pub sig: i32,
    pub errno: i32,
    pub code: i32,
    pub pad: u32,
    pub sa_handler: u64,
    pub sa_flags: u64,
}

/// oom/mark_victim (in the OOM killer's context)
/// ```text
/// field:int pid;	offset:8;	size:4;	signed:1;
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MarkVictim {
    pub common: CommonHeader,
    pub pid: i32,
}

/// sched/sched_process_exec (after the new image is in place)
/// ```text
/// field:__data_loc char[] filename;	offset:8;	size:4;	signed:0;
/// field:pid_t pid;	offset:12;	size:4;	signed:1;
/// ```
/// `filename`: where the file name lies in the record, as offset (low 16 bits) and length (high 16 bits).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SchedProcessExec {
    pub common: CommonHeader,
    pub filename: u32,
    pub pid: i32,
}

/// One field the kernel programs read: which tracepoint, the field's name in the format file, and where
/// our struct expects it.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedField {
    pub category: &'static str,
    pub event: &'static str,
    pub field: &'static str,
    pub offset: usize,
    pub size: usize,
}

macro_rules! field {
    ($category:literal, $event:literal, $ty:ty, $member:ident, $name:literal) => {
        field!($category, $event, $ty, $member, $name, u64)
    };
    ($category:literal, $event:literal, $ty:ty, $member:ident, $name:literal, $size:ty) => {
        ExpectedField {
            category: $category,
            event: $event,
            field: $name,
            offset: offset_of!($ty, $member),
            size: size_of::<$size>(),
        }
    };
}

/// Every tracepoint field the kernel programs read, with the offset and size they assume.
pub const EXPECTED_FIELDS: &[ExpectedField] = &[
    field!("syscalls", "sys_enter_mmap", SysEnterMmap, addr, "addr"),
    field!("syscalls", "sys_enter_mmap", SysEnterMmap, len, "len"),
    field!("syscalls", "sys_enter_mmap", SysEnterMmap, prot, "prot"),
    field!("syscalls", "sys_enter_mmap", SysEnterMmap, flags, "flags"),
    field!("syscalls", "sys_enter_mmap", SysEnterMmap, fd, "fd"),
    field!("syscalls", "sys_exit_mmap", SysExit, ret, "ret"),
    field!("syscalls", "sys_enter_munmap", SysEnterMunmap, addr, "addr"),
    field!("syscalls", "sys_enter_munmap", SysEnterMunmap, len, "len"),
    field!("syscalls", "sys_exit_munmap", SysExit, ret, "ret"),
    field!("syscalls", "sys_enter_mremap", SysEnterMremap, addr, "addr"),
    field!("syscalls", "sys_enter_mremap", SysEnterMremap, old_len, "old_len"),
    field!("syscalls", "sys_enter_mremap", SysEnterMremap, new_len, "new_len"),
    field!("syscalls", "sys_enter_mremap", SysEnterMremap, flags, "flags"),
    field!("syscalls", "sys_enter_mremap", SysEnterMremap, new_addr, "new_addr"),
    field!("syscalls", "sys_exit_mremap", SysExit, ret, "ret"),
    field!("syscalls", "sys_enter_brk", SysEnterBrk, brk, "brk"),
    field!("syscalls", "sys_exit_brk", SysExit, ret, "ret"),
    field!("syscalls", "sys_enter_madvise", SysEnterMadvise, start, "start"),
    field!("syscalls", "sys_enter_madvise", SysEnterMadvise, len_in, "len_in"),
    field!("syscalls", "sys_enter_madvise", SysEnterMadvise, behavior, "behavior"),
    field!("syscalls", "sys_exit_madvise", SysExit, ret, "ret"),
    field!("exceptions", "page_fault_user", PageFaultUser, address, "address"),
    field!("exceptions", "page_fault_user", PageFaultUser, error_code, "error_code"),
    field!("kmem", "mm_page_alloc", MmPageAlloc, order, "order", u32),
    field!("syscalls", "sys_enter_write", SysEnterWrite, fd, "fd"),
    field!("syscalls", "sys_enter_write", SysEnterWrite, buf, "buf"),
    field!("syscalls", "sys_enter_write", SysEnterWrite, count, "count"),
    field!("syscalls", "sys_enter_writev", SysEnterWritev, fd, "fd"),
    field!("syscalls", "sys_enter_writev", SysEnterWritev, vec, "vec"),
    field!("syscalls", "sys_enter_writev", SysEnterWritev, vlen, "vlen"),
    field!("signal", "signal_deliver", SignalDeliver, sig, "sig", i32),
    field!("signal", "signal_deliver", SignalDeliver, sa_handler, "sa_handler"),
    field!("oom", "mark_victim", MarkVictim, pid, "pid", i32),
    field!("sched", "sched_process_exec", SchedProcessExec, filename, "filename", u32),
    field!("kmem", "mm_page_alloc", MmPageAlloc, migratetype, "migratetype", i32),
];
