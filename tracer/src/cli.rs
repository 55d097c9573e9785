//! Command-line options.

use std::{path::PathBuf, time::Duration};

use clap::{ArgGroup, Parser};

use crate::reports::growth::{CompareSpec, parse_compare};

#[derive(Debug, Parser)]
#[command(
    name = "dispatch-leaktrace",
    version,
    about = "Finds where a running process's memory goes: outstanding memory by call stack, traced with eBPF.",
    after_help = "Examples:\n  sudo dispatch-leaktrace --pid $(pidof dispatch-server) -d 2h\n  sudo dispatch-leaktrace -o report -- ./server --port 8080\n  sudo dispatch-leaktrace --exe /usr/bin/dispatch-server --follow --checkpoint 10m --snapshot-at-rss 3G\n  sudo dispatch-leaktrace --pid PID --turn-start 'turn start (?P<id>\\S+)' --turn-end 'turn end (?P<id>\\S+)'\n  dispatch-leaktrace mark [--pid PID] LABEL    (from another shell: a marker in the running trace)",
    group(ArgGroup::new("target").required(true).args(["pid", "exe", "comm", "command"]))
)]
pub struct Cli {
    /// Trace this running process (every thread of it).
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Folder for the reports [default: ./leaktrace-<pid>-<UTC time>].
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Stop after this long (e.g. 30s, 15m, 2h) [default: until Ctrl-C or the target exits].
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// How often the timeline gets a point and every stack a snapshot (for growth.svg and the suspects).
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub interval: Duration,

    /// The growth view starts this long after the trace began (the first snapshot after it)
    /// [default: a fifth of the run].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// The window of the growth view: FROM..TO, each `start`, `end`, a time since the start (5m..1h) or a
    /// turn id (from its start, to its end).
    #[arg(long, value_name = "FROM..TO", value_parser = parse_compare)]
    pub compare: Option<CompareSpec>,

    /// A turn starts at each line of the target's stdout/stderr (or of --markers-from) that matches. The
    /// named group `id` (or else the first group) pairs it with its end.
    #[arg(long, value_name = "REGEX", requires = "turn_end")]
    pub turn_start: Option<String>,

    /// A turn ends at each line that matches (see --turn-start).
    #[arg(long, value_name = "REGEX", requires = "turn_start")]
    pub turn_end: Option<String>,

    /// Also read marker lines from this file (followed, like tail -F), or from stdin with `-`. Lines that
    /// match no turn pattern are kept as plain markers.
    #[arg(long, value_name = "FILE|-")]
    pub markers_from: Option<String>,

    /// Do not trace page faults (resident memory).
    #[arg(long)]
    pub no_faults: bool,

    /// Do not trace the allocator (malloc, free, operator new, mi_malloc, ...): mapped and resident
    /// memory only.
    #[arg(long)]
    pub no_alloc: bool,

    /// An unstripped build of the target's executable (same build id, or same .text): its symbols find
    /// the allocator in the stripped one, and name its frames.
    #[arg(long, value_name = "PATH")]
    pub symbols_from: Option<PathBuf>,

    /// An allocator function of the main executable at a virtual address, by hand (repeatable), e.g.
    /// `--alloc-symbol mi_malloc=0x2c40a10`.
    #[arg(long, value_name = "NAME=ADDR")]
    pub alloc_symbol: Vec<String>,

    /// Sample the allocator by bytes: a block is recorded with probability size / N (always from N bytes
    /// up) and counts for N bytes, so figures stay unbiased estimates at a fraction of the cost
    /// [default N when given without a value: 512 KiB].
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "524288", value_parser = parse_bytes)]
    pub sample_bytes: Option<u64>,

    /// Sample page faults: trace one page in N (a power of two, chosen by address) and count it for N, so
    /// resident figures stay unbiased estimates at a fraction of the cost. Releases of a traced page are
    /// exact.
    #[arg(long, value_name = "N", value_parser = parse_page_sampling)]
    pub sample_pages: Option<u64>,

    /// Count as outstanding only allocator blocks older than this (recent ones are rarely leaks).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_age: Option<Duration>,

    /// Write the full report set into OUTPUT/checkpoints/<UTC time>/ this often (OUTPUT/latest points at
    /// the newest), so that a long run keeps its evidence even if the tracer dies.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration)]
    pub checkpoint: Option<Duration>,

    /// How many checkpoints to keep.
    #[arg(long, value_name = "N", default_value = "5")]
    pub keep: usize,

    /// Write a snapshot when the target's RSS first crosses SIZE (e.g. 3G), and again at each further
    /// multiple: the evidence from just before a crash.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub snapshot_at_rss: Option<u64>,

    /// The most memory the tracer itself may use (anonymous RSS): as it nears it, stacks with nothing
    /// outstanding are forgotten (counted in the report).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, default_value = "512M")]
    pub max_memory: u64,

    /// Trace the running process of this executable (its main process, the oldest if several).
    #[arg(long, value_name = "PATH")]
    pub exe: Option<PathBuf>,

    /// Trace the running process of this name, as `ps -o comm` shows it (its first 15 bytes).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

    /// When the target exits, wait for the next process of the same program (a restart) and trace it in
    /// the same output folder: each process is a segment. The program is --exe, --comm, or the --pid's
    /// executable.
    #[arg(long, conflicts_with = "command")]
    pub follow: bool,

    /// No status line (on a terminal it is rewritten every second; otherwise a plain line every minute).
    #[arg(short, long)]
    pub quiet: bool,

    /// Launch this command and trace it from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--sample-pages`: a power of two from 2 to 65536.
fn parse_page_sampling(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n.is_power_of_two() && (2..=65536).contains(&n) => Ok(n),
        _ => Err(format!("`{text}` is not a power of two from 2 to 65536 (for example 16)")),
    }
}

/// `524288`, `512K`, `1M`, `3G`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size: write it like 524288, 512K, 64M or 3G")),
    };
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a size: write it like 512K or 3G"))?;
    if value == 0 {
        return Err("a size must be more than zero".to_string());
    }
    Ok(value * scale)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|_| format!("`{text}` is not a duration: write it like 30s, 15m or 2h"))?;
    if duration.is_zero() {
        return Err("the duration must be longer than zero".to_string());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn sizes_read_with_units() {
        assert_eq!(parse_bytes("524288"), Ok(524288));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("3G"), Ok(3 << 30));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn a_target_is_required_and_only_one() {
        assert!(Cli::try_parse_from(["dispatch-leaktrace"]).is_err());
        assert!(Cli::try_parse_from(["dispatch-leaktrace", "--pid", "1", "--", "true"]).is_err());
        let cli = Cli::try_parse_from(["dispatch-leaktrace", "-d", "5s", "--", "ls", "-l"]).unwrap();
        assert_eq!(cli.command, vec!["ls", "-l"]);
        assert_eq!(cli.duration, Some(Duration::from_secs(5)));
    }
}
