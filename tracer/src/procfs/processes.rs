//! Finding the process of a program (`--exe PATH`, `--comm NAME`): the one to trace first, and, with
//! `--follow`, the next one after a restart.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Which program to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// Processes running this executable.
    Exe(PathBuf),
    /// Processes with this name (`/proc/PID/comm`: at most 15 bytes, so a longer name is compared on its
    /// first 15).
    Comm(String),
}

impl Program {
    pub fn describe(&self) -> String {
        match self {
            Program::Exe(path) => path.display().to_string(),
            Program::Comm(name) => format!("`{name}`"),
        }
    }

    fn matches(&self, process: &Candidate) -> bool {
        match self {
            Program::Exe(path) => process.exe.as_deref() == Some(path.as_path()),
            Program::Comm(name) => process.comm == name.get(..15.min(name.len())).unwrap_or(name),
        }
    }
}

/// A process, told apart from a later one that reuses its pid by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// What is read of each process to choose among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: ProcessId,
    pub parent: u32,
    pub comm: String,
    /// The executable, without the ` (deleted)` a replaced binary shows.
    pub exe: Option<PathBuf>,
}

/// The running process of `program` that is not in `seen`: its main process (whose parent is not one of
/// its processes), the oldest if there are several.
pub fn find(program: &Program, seen: &[ProcessId]) -> Option<ProcessId> {
    choose(program, &running(), seen)
}

pub fn choose(program: &Program, processes: &[Candidate], seen: &[ProcessId]) -> Option<ProcessId> {
    let matching: Vec<&Candidate> = processes.iter().filter(|p| program.matches(p)).collect();
    matching
        .iter()
        .filter(|p| !seen.contains(&p.id))
        .filter(|p| !matching.iter().any(|other| other.id.pid == p.parent))
        .min_by_key(|p| (p.id.start_ticks, p.id.pid))
        .map(|p| p.id)
}

/// The identity of a running process.
pub fn process_id(pid: u32) -> Option<ProcessId> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, _, start_ticks) = parse_stat(&stat)?;
    Some(ProcessId { pid, start_ticks })
}

fn running() -> Vec<Candidate> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (comm, parent, start_ticks) = parse_stat(&stat)?;
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok().map(|path| without_deleted(&path));
            Some(Candidate { id: ProcessId { pid, start_ticks }, parent, comm, exe })
        })
        .collect()
}

/// (comm, parent pid, start time) from `/proc/PID/stat`. The name is in parentheses and may itself hold
/// spaces and parentheses: the fields after it start after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After the name: state (field 3), ppid (4), ..., starttime (22).
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some((comm, parent, start_ticks))
}

fn without_deleted(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(pid: u32, parent: u32, start: u64, comm: &str, exe: &str) -> Candidate {
        Candidate { id: ProcessId { pid, start_ticks: start }, parent, comm: comm.into(), exe: Some(exe.into()) }
    }

    #[test]
    fn stat_fields_come_after_the_last_parenthesis() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 987654 1000 200";
        assert_eq!(parse_stat(stat), Some(("a (weird) name".into(), 1, 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_main_process_of_the_program_is_chosen_not_its_children() {
        let processes = [
            candidate(10, 1, 500, "dispatch-server", "/opt/dispatch/dispatch-server"),
            candidate(11, 10, 600, "dispatch-server", "/opt/dispatch/dispatch-server"),
            candidate(12, 1, 100, "bash", "/usr/bin/bash"),
        ];
        let program = Program::Exe("/opt/dispatch/dispatch-server".into());
        assert_eq!(choose(&program, &processes, &[]).map(|id| id.pid), Some(10));
        assert_eq!(choose(&Program::Comm("dispatch-server".into()), &processes, &[]).map(|id| id.pid), Some(10));
    }

    #[test]
    fn a_process_already_traced_is_not_chosen_again_but_a_reused_pid_is() {
        let old = candidate(10, 1, 500, "server", "/srv/server");
        let program = Program::Exe("/srv/server".into());
        assert_eq!(choose(&program, std::slice::from_ref(&old), &[old.id]), None);
        let restarted = candidate(10, 1, 900, "server", "/srv/server");
        assert_eq!(choose(&program, &[restarted], &[old.id]).map(|id| id.start_ticks), Some(900));
    }

    #[test]
    fn comm_is_compared_on_its_first_15_bytes() {
        // The kernel keeps 15 bytes of a name: dispatch-server-main runs as `dispatch-server`.
        let processes = [candidate(7, 1, 1, "dispatch-server", "/x")];
        assert_eq!(choose(&Program::Comm("dispatch-server-main".into()), &processes, &[]).map(|id| id.pid), Some(7));
        assert_eq!(choose(&Program::Comm("dispatch".into()), &processes, &[]).map(|id| id.pid), None);
    }

    #[test]
    fn a_replaced_binary_still_matches() {
        assert_eq!(without_deleted(Path::new("/srv/server (deleted)")), PathBuf::from("/srv/server"));
    }
}
