//! Loads the kernel programs, attaches them, and hands their maps to the collector. Dropping [`Probes`]
//! detaches every program; nothing is pinned, so the kernel also detaches them if this process dies.

pub mod allocators;
pub mod tracefs;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{ProgramError, TracePoint},
    Ebpf, EbpfError,
};
use serde::Serialize;
use tracer_common::map_names;

/// The kernel object built by `cargo xtask build-ebpf` (see build.rs).
static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LEAKTRACE_EBPF_OBJECT"));

/// Syscall tracepoints: (program name in the object, category, event).
const SYSCALL_TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_mmap", "syscalls", "sys_enter_mmap"),
    ("sys_exit_mmap", "syscalls", "sys_exit_mmap"),
    ("sys_enter_munmap", "syscalls", "sys_enter_munmap"),
    ("sys_exit_munmap", "syscalls", "sys_exit_munmap"),
    ("sys_enter_mremap", "syscalls", "sys_enter_mremap"),
    ("sys_exit_mremap", "syscalls", "sys_exit_mremap"),
    ("sys_enter_brk", "syscalls", "sys_enter_brk"),
    ("sys_exit_brk", "syscalls", "sys_exit_brk"),
    ("sys_enter_madvise", "syscalls", "sys_enter_madvise"),
    ("sys_exit_madvise", "syscalls", "sys_exit_madvise"),
];

/// The maps the collector reads and writes, taken out of the loaded object so they outlive the programs.
pub struct KernelMaps {
    pub targets: HashMap<MapData, u32, u32>,
    pub stacks: StackTraceMap<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
}

impl KernelMaps {
    pub fn add_target(&mut self, tgid: u32) -> Result<()> {
        self.targets.insert(tgid, 1, 0).context("cannot add the target to the kernel's target map")
    }

    /// Each counter summed over the CPUs, in [`tracer_common::counters::Counter::ALL`] order.
    pub fn read_counters(&self) -> Vec<u64> {
        tracer_common::counters::Counter::ALL
            .iter()
            .map(|counter| self.counters.get(&(*counter as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0))
            .collect()
    }
}

/// What was attached where, for the report and for checking that everything is detached afterwards.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeRecord {
    pub kind: &'static str,
    pub attach_point: String,
    pub program_id: u32,
}

pub struct Probes {
    ebpf: Ebpf,
    pub records: Vec<ProbeRecord>,
}

impl Probes {
    /// Loads the kernel object and takes its maps out; the event ring buffer comes apart, for the
    /// collector to poll.
    pub fn load() -> Result<(Self, KernelMaps, RingBuf<MapData>)> {
        let mut ebpf = Ebpf::load(KERNEL_OBJECT).map_err(explain_load_error)?;
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("the kernel object has no map {name}"));
        let maps = KernelMaps {
            targets: HashMap::try_from(take(map_names::TARGETS)?)?,
            stacks: StackTraceMap::try_from(take(map_names::STACKS)?)?,
            counters: PerCpuArray::try_from(take(map_names::COUNTERS)?)?,
        };
        let events = RingBuf::try_from(take(map_names::EVENTS)?)?;
        Ok((Self { ebpf, records: Vec::new() }, maps, events))
    }

    /// Attaches the mmap, munmap, mremap, brk and madvise tracepoints.
    pub fn attach_syscalls(&mut self) -> Result<()> {
        for (program_name, category, event) in SYSCALL_TRACEPOINTS {
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(program_name)
                .ok_or_else(|| anyhow!("the kernel object has no program {program_name}"))?
                .try_into()?;
            program.load().map_err(|e| explain_program_error(program_name, e))?;
            program.attach(category, event).map_err(|e| explain_program_error(program_name, e))?;
            let program_id = program.info().map(|info| info.id()).unwrap_or(0);
            self.records.push(ProbeRecord {
                kind: "tracepoint",
                attach_point: format!("{category}/{event}"),
                program_id,
            });
        }
        Ok(())
    }
}

fn is_permission_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        source = error.source();
    }
    false
}

const NEED_PRIVILEGES: &str =
    "permission denied loading eBPF programs: run dispatch-leaktrace as root (sudo), or give it CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE";

fn explain_load_error(error: EbpfError) -> anyhow::Error {
    if is_permission_error(&error) {
        anyhow!(NEED_PRIVILEGES)
    } else {
        anyhow!("cannot load the eBPF programs into this kernel: {error}")
    }
}

fn explain_program_error(program: &str, error: ProgramError) -> anyhow::Error {
    if is_permission_error(&error) {
        return anyhow!(NEED_PRIVILEGES);
    }
    match &error {
        ProgramError::LoadError { verifier_log, .. } => {
            anyhow!(
                "the kernel refused program {program}: {error}; verifier log: {}",
                verifier_log.to_string().lines().last().unwrap_or("")
            )
        }
        _ => anyhow!("cannot attach program {program}: {error}"),
    }
}
