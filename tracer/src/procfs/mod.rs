//! What the collector reads from /proc about the target. Parsers take text so they can be tested without
//! a process.

pub mod maps;
pub mod processes;
pub mod untrusted;

use std::{fs, io, path::PathBuf};

/// The target's identity, as shown in reports. The environment is never read: it holds secrets.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe: PathBuf,
    pub cmdline: Vec<String>,
}

impl ProcessInfo {
    pub fn read(pid: u32) -> io::Result<Self> {
        let exe = fs::read_link(format!("/proc/{pid}/exe"))?;
        let cmdline = parse_cmdline(&fs::read(format!("/proc/{pid}/cmdline"))?);
        Ok(Self { pid, exe, cmdline })
    }
}

pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0).filter(|arg| !arg.is_empty()).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect()
}

/// Resident bytes of the process (`/proc/PID/statm`, second field, in pages).
pub fn rss_bytes(pid: u32, page_size: u64) -> io::Result<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm"))?;
    parse_statm_resident(&statm)
        .map(|pages| pages * page_size)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/statm"))
}

fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `start_brk` from `/proc/PID/stat` (field 47): where the brk heap begins.
pub fn start_brk(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_field(&stat, 47).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/stat"))
}

/// CPU time the whole process has used, user and system (`/proc/PID/stat` fields 14 and 15, in clock ticks).
pub fn cpu_time(pid: u32) -> io::Result<std::time::Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_field(&stat, 14).zip(parse_stat_field(&stat, 15)).map(|(user, system)| user + system);
    let ticks = ticks.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/stat"))?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(std::time::Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / per_second)))
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so counting starts after its last ')'.
fn parse_stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// The descriptors of `pid` that lead where its stdout or stderr lead: 1, 2 and their duplicates (the same
/// pipe, socket, tty or file).
pub fn log_descriptors(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let links: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, fs::read_link(entry.path()).ok()?)))
        .collect();
    log_descriptors_among(&links)
}

fn log_descriptors_among(links: &[(u32, PathBuf)]) -> Vec<u32> {
    let standard: Vec<&PathBuf> =
        links.iter().filter(|(fd, _)| *fd == 1 || *fd == 2).map(|(_, target)| target).collect();
    let mut fds: Vec<u32> = links
        .iter()
        .filter(|(fd, target)| *fd == 1 || *fd == 2 || standard.contains(&target))
        .map(|(fd, _)| *fd)
        .collect();
    fds.sort_unstable();
    fds
}

/// This process's anonymous resident memory (RssAnon): what the tracer itself allocated, without the
/// pages of its executable and libraries.
pub fn own_anonymous_rss() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This process's resident memory, as --max-memory counts it: all of it, in two parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnMemory {
    /// RssAnon: what the tracer allocated (stacks, ledger, snapshots, reports being built).
    pub anonymous: u64,
    /// RssFile + RssShmem: its executable's and libraries' pages, and the kernel's event ring buffer, which
    /// is mapped into the tracer (twice over, for reads across its end): about a fixed amount.
    pub mapped: u64,
    /// VmHWM: the most resident memory it ever had, all parts.
    pub peak: u64,
}

impl OwnMemory {
    pub fn total(&self) -> u64 {
        self.anonymous + self.mapped
    }
}

pub fn own_memory() -> Option<OwnMemory> {
    parse_own_memory(&fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_own_memory(status: &str) -> Option<OwnMemory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(':')))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(OwnMemory {
        anonymous: field("RssAnon")?,
        mapped: field("RssFile")? + field("RssShmem").unwrap_or(0),
        peak: field("VmHWM").unwrap_or(0),
    })
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_counts_every_resident_part() {
        let status = "Name:\tdispatch-leakt\nVmHWM:\t  180292 kB\nVmRSS:\t  166464 kB\nRssAnon:\t   87708 kB\n\
                      RssFile:\t   78692 kB\nRssShmem:\t      64 kB\n";
        let memory = parse_own_memory(status).unwrap();
        assert_eq!(memory.anonymous, 87_708 * 1024);
        assert_eq!(memory.mapped, (78_692 + 64) * 1024);
        assert_eq!(memory.total(), 166_464 * 1024, "the parts add up to VmRSS");
        assert_eq!(memory.peak, 180_292 * 1024);
        assert_eq!(parse_own_memory("VmRSS:\t 1 kB\n"), None, "no RssAnon: unknown, not zero");
    }

    #[test]
    fn cmdline_splits_on_nul_and_drops_the_trailing_one() {
        assert_eq!(parse_cmdline(b"/usr/bin/x\0--flag\0a b\0"), vec!["/usr/bin/x", "--flag", "a b"]);
    }

    #[test]
    fn duplicates_of_stdout_and_stderr_are_log_descriptors() {
        let links: Vec<(u32, PathBuf)> =
            [(0, "/dev/null"), (1, "pipe:[77]"), (2, "socket:[9]"), (5, "/tmp/x"), (12, "pipe:[77]")]
                .into_iter()
                .map(|(fd, target)| (fd, PathBuf::from(target)))
                .collect();
        assert_eq!(log_descriptors_among(&links), vec![1, 2, 12]);
    }

    #[test]
    fn statm_resident_is_the_second_field() {
        assert_eq!(parse_statm_resident("2048 513 200 10 0 300 0\n"), Some(513));
        assert_eq!(parse_statm_resident("2048"), None);
    }

    #[test]
    fn stat_fields_count_after_a_command_name_with_spaces() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[47 - 3] = "94819328".into();
        let line = format!("1234 (a (weird) name) {}", fields.join(" "));
        assert_eq!(parse_stat_field(&line, 47), Some(94819328));
        assert_eq!(parse_stat_field(&line, 4), Some(4));
    }
}
