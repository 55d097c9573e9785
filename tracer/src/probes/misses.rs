//! Runs of our programs that the kernel skipped: a BPF program does not run while another one is running on
//! the same CPU (a tracepoint hit inside a probe, a uprobe preempted by a fault), and the kernel counts each
//! such miss in the program's `recursion_misses`. Those events never reached a map or the ring buffer, so
//! they are lost as surely as a full ring buffer's, and the report counts them with the other losses.

use std::{
    mem::size_of,
    os::fd::{FromRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// The `bpf_attr` of BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct ProgramById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The `bpf_attr` of BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Runs skipped, summed over the programs with these ids (ids that are gone count nothing).
pub fn skipped_runs(program_ids: &[u32]) -> u64 {
    program_ids.iter().filter_map(|id| recursion_misses(*id)).sum()
}

/// One program's run time so far (counted only while BPF statistics are on: see
/// [`aya::sys::enable_stats`]).
pub struct RunTime {
    /// A uprobe or uretprobe (the allocator's programs).
    pub is_uprobe: bool,
    /// The program's name as the kernel keeps it (at most 15 bytes).
    pub name: String,
    pub run_time_ns: u64,
}

/// The run time of each of our programs with these ids (ids that are gone are left out).
pub fn run_times(program_ids: &[u32]) -> Vec<RunTime> {
    program_ids
        .iter()
        .filter_map(|id| program_info(*id))
        .map(|info| {
            let name: Vec<u8> = info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
            RunTime {
                is_uprobe: info.type_ == aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32,
                name: String::from_utf8_lossy(&name).into_owned(),
                run_time_ns: info.run_time_ns,
            }
        })
        .collect()
}

fn recursion_misses(id: u32) -> Option<u64> {
    program_info(id).map(|info| info.recursion_misses)
}

fn program_info(id: u32) -> Option<bpf_prog_info> {
    let by_id = ProgramById { prog_id: id, next_id: 0, open_flags: 0 };
    // SAFETY: the attribute is a valid, initialized struct of the size given; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_GET_FD_BY_ID as libc::c_long,
            &by_id as *const ProgramById,
            size_of::<ProgramById>(),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: bpf_prog_info is plain data, valid when zeroed.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let by_fd = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`, which outlives the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &by_fd as *const InfoByFd,
            size_of::<InfoByFd>(),
        )
    };
    (result == 0).then_some(info)
}
