//! Whether this process may load eBPF programs and read another process's memory map.

use anyhow::{Result, bail};

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn check() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = parse_cap_eff(&status).unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let can_trace = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if !can_trace || !has(CAP_SYS_PTRACE) {
        bail!("dispatch-leaktrace needs root: run it with sudo (or give it CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)");
    }
    Ok(())
}

/// Whether this process may read other users' processes (their /proc/PID/exe and maps).
pub fn has_sys_ptrace() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_cap_eff(&status).is_some_and(|effective| effective & (1u64 << CAP_SYS_PTRACE) != 0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_capability_mask() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000080000\n";
        assert_eq!(parse_cap_eff(status), Some(0xc0_0008_0000));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
