//! The kernel's statistics of the BPF programs a process holds (`kernel.bpf_stats_enabled`), read from the
//! fdinfo of its descriptors: one reader for every figure of BPF time in the benchmark.

use std::collections::BTreeMap;

use super::*;

/// Runs and run time of one program, as the kernel counted them since it was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ProgramRuns {
    pub(super) runs: u64,
    pub(super) ns: u64,
}

/// Every BPF program process `pid` holds, by program id (each counted once however many descriptors refer
/// to it). Empty when its fdinfo cannot be read.
pub(super) fn programs_of(pid: u32) -> BTreeMap<u32, ProgramRuns> {
    let mut programs = BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return programs };
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = fs::read_to_string(entry.path()) else { continue };
        if let Some((id, runs)) = parse_fdinfo(&text) {
            programs.insert(id, runs);
        }
    }
    programs
}

/// The summed run time of every program process `pid` holds.
pub(super) fn run_time_ns(pid: u32) -> u64 {
    programs_of(pid).values().map(|p| p.ns).sum()
}

/// Runs and run time of the program named `name` that process `pid` holds. Names come from bpftool (the
/// fdinfo has none).
pub(super) fn program_named(pid: u32, name: &str) -> Result<ProgramRuns> {
    for (id, runs) in programs_of(pid) {
        let shown = Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output();
        let shown = shown.context("cannot run bpftool (cargo xtask setup installs it)")?;
        if String::from_utf8_lossy(&shown.stdout).split_whitespace().any(|word| word == name) {
            return Ok(runs);
        }
    }
    bail!("the tracer holds no BPF program {name}")
}

/// A program descriptor's fdinfo -> (program id, its runs); `None` for other descriptors.
fn parse_fdinfo(text: &str) -> Option<(u32, ProgramRuns)> {
    let field = |key: &str| {
        text.lines().find_map(|line| line.strip_prefix(key)).and_then(|rest| rest.trim().parse::<u64>().ok())
    };
    let id = field("prog_id:")?;
    Some((id as u32, ProgramRuns { runs: field("run_cnt:").unwrap_or(0), ns: field("run_time_ns:")? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_descriptor_gives_its_id_and_runs() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2071\nprog_type:\t2\n\
                    prog_jited:\t1\nprog_tag:\t3b185187f1855c4c\nmemlock:\t4096\nprog_id:\t1234\n\
                    run_time_ns:\t987654\nrun_cnt:\t321\nrecursion_misses:\t0\nverified_insns:\t42\n";
        assert_eq!(parse_fdinfo(text), Some((1234, ProgramRuns { runs: 321, ns: 987_654 })));
    }

    #[test]
    fn other_descriptors_give_nothing() {
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\nmap_type:\t1\nmap_id:\t7\n"), None);
        // A link's descriptor names its program but has no statistics: the program's own descriptor does.
        assert_eq!(parse_fdinfo("pos:\t0\nlink_type:\tperf\nlink_id:\t9\nprog_tag:\t3b18\nprog_id:\t1234\n"), None);
        assert_eq!(parse_fdinfo(""), None);
    }
}
