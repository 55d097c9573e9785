//! Command-line options.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

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
    #[arg(short, long, value_name = "PID", value_parser = parse_pid)]
    pub pid: Option<u32>,

    /// Folder for the reports [default: ./leaktrace-<pid>-<UTC time>].
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Stop after this long (e.g. 30s, 15m, 2h; at most 100 years) [default: until Ctrl-C or the target
    /// exits].
    #[arg(short, long, value_name = "DURATION", value_parser = parse_run_duration)]
    pub duration: Option<Duration>,

    /// How often the timeline gets a point and every stack a snapshot (for growth.svg and the suspects); at
    /// least 100ms.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_period, default_value = "10s")]
    pub interval: Duration,

    /// The growth view starts this long after the trace began (the first snapshot after it)
    /// [default: a fifth of the run].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// The window of the growth view: FROM..TO, each `start`, `end`, a time since the start (5m..1h) or a
    /// turn id (from its start, to its end). A moment the trace does not reach is said in the summary and in
    /// report.json (growth.warnings).
    #[arg(long, value_name = "FROM..TO", value_parser = parse_compare)]
    pub compare: Option<CompareSpec>,

    /// A turn starts at each line of the target's stdout/stderr (or of --markers-from) that matches. The
    /// named group `id` (or else the first group) pairs it with its end.
    #[arg(long, value_name = "REGEX", requires = "turn_end", value_parser = parse_turn_pattern)]
    pub turn_start: Option<String>,

    /// A turn ends at each line that matches (see --turn-start).
    #[arg(long, value_name = "REGEX", requires = "turn_start", value_parser = parse_turn_pattern)]
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
    /// up) and counts for N bytes, so figures stay unbiased estimates at a fraction of the cost (N at most
    /// 1G) [default N when given without a value: 512 KiB].
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "524288", value_parser = parse_sample_bytes)]
    pub sample_bytes: Option<u64>,

    /// Sample page faults: trace one page in N (a power of two, chosen by address) and count it for N, so
    /// resident figures stay unbiased estimates at a fraction of the cost. Releases of a traced page are
    /// exact.
    #[arg(long, value_name = "N", value_parser = parse_page_sampling)]
    pub sample_pages: Option<u64>,

    /// Keep the kernel programs' run time within PCT percent of the target's CPU time, measured every
    /// second, by raising and lowering page and allocator sampling (figures stay unbiased estimates: each
    /// sample counts with the rate it was taken at). `off`: trace every page and block. --sample-pages or
    /// --sample-bytes fix that source's rate.
    #[arg(long, value_name = "PCT|off", default_value = "2", value_parser = parse_overhead)]
    pub overhead: Overhead,

    /// Count as outstanding only allocator blocks older than this (recent ones are rarely leaks).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_age: Option<Duration>,

    /// Write the full report set into OUTPUT/checkpoints/<UTC time>/ this often (OUTPUT/latest points at
    /// the newest), so that a long run keeps its evidence even if the tracer dies. At least 100ms.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_period)]
    pub checkpoint: Option<Duration>,

    /// How many checkpoints to keep (at least 1).
    #[arg(long, value_name = "N", default_value = "5", value_parser = parse_keep)]
    pub keep: usize,

    /// Write a snapshot when the target's RSS first crosses SIZE (e.g. 3G), and again at each further
    /// multiple: the evidence from just before a crash. At least 1M.
    #[arg(long, value_name = "SIZE", value_parser = parse_rss_step)]
    pub snapshot_at_rss: Option<u64>,

    /// The most memory the tracer itself may use (anonymous RSS): as it nears it, stacks with nothing
    /// outstanding are forgotten (counted in the report). The kernel's table of live allocator blocks gets
    /// room for half of it, at 128 bytes a block. At least 16M.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_budget, default_value = "512M")]
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

    /// Say what the kernel programs could not record as it begins (a table full, a stack lost, events
    /// dropped), and each free or munmap that matched nothing (its address and thread), each kind again when
    /// its count doubles. Off, the programs do not write these at all.
    #[arg(short, long)]
    pub verbose: bool,

    /// Launch this command and trace it from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl Cli {
    /// When `-d` ends the trace, counted from `now`: the one place a user's duration meets the clock.
    /// `None`: no -d, or an end past what the clock holds, which never comes.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        self.duration.and_then(|duration| now.checked_add(duration))
    }
}

/// Says once, at the start, when `--snapshot-at-rss` is below what the target `pid` already holds: the first
/// snapshot comes at once, then one at each further step it grows, and snapshots are kept.
pub fn warn_if_rss_step_is_passed(step: Option<u64>, pid: u32) {
    let Some(step) = step else { return };
    let rss = crate::procfs::rss_bytes(pid, crate::procfs::page_size()).unwrap_or(0);
    if let Some(warning) = rss_step_warning(step, rss) {
        eprintln!("dispatch-leaktrace: warning: {warning}");
    }
}

fn rss_step_warning(step: u64, rss: u64) -> Option<String> {
    use crate::reports::summary::human_bytes;
    (rss >= step).then(|| {
        format!(
            "--snapshot-at-rss {}: the target already holds {}: a snapshot now, then one each time it grows by \
             another {} (snapshots/ is not pruned); a larger SIZE writes fewer",
            human_size(step),
            human_bytes(rss),
            human_size(step)
        )
    })
}

/// The longest duration any option takes: 100 years. Nothing longer means anything for a trace, and it keeps
/// every instant computed from a user's duration far inside what the clocks hold.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The shortest `--interval` and `--checkpoint`: each period writes a snapshot of every stack (or the whole
/// report set), so a shorter one would spend the tracer on it and grow its memory with points.
pub const MIN_PERIOD: Duration = Duration::from_millis(100);

/// The largest size any option takes: 1 PiB, above any machine's memory and far from u64's end.
pub const MAX_SIZE: u64 = 1 << 50;

/// `--sample-bytes` at most: beyond it almost no block would be recorded.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 30;

/// `--snapshot-at-rss` at least: below it the target's ordinary ups and downs would write a snapshot a second.
pub const MIN_RSS_STEP: u64 = 1 << 20;

/// `--max-memory` at least: the tracer itself needs about this much before it has seen anything.
pub const MIN_MEMORY_BUDGET: u64 = 16 << 20;

/// `--overhead`: a budget in percent of the target's CPU time, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overhead(pub Option<f64>);

/// `--overhead`: `off`, or a percentage above 0 and at most 100 (`2` or `2%`).
fn parse_overhead(text: &str) -> Result<Overhead, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(Overhead(None));
    }
    match text.strip_suffix('%').unwrap_or(text).trim().parse::<f64>() {
        Ok(pct) if pct > 0.0 && pct <= 100.0 => Ok(Overhead(Some(pct))),
        _ => Err(format!("`{text}` is not a percentage above 0 and at most 100, nor `off` (for example 2)")),
    }
}

/// `--sample-pages`: a power of two from 2 to 65536.
fn parse_page_sampling(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n.is_power_of_two() && (2..=65536).contains(&n) => Ok(n),
        _ => Err(format!("`{text}` is not a power of two from 2 to 65536 (for example 16)")),
    }
}

/// `--pid`: a process id the kernel could have given (1 to 2^31 - 1).
fn parse_pid(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(pid) if pid >= 1 && i32::try_from(pid).is_ok() => Ok(pid),
        _ => Err(format!("`{text}` is not a process id: give a number such as `pidof dispatch-server` prints")),
    }
}

/// `--keep`: at least 1, since `latest` points at the newest checkpoint.
fn parse_keep(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("keeping 0 checkpoints would delete each one as it is written: keep at least 1, or leave out \
                      --checkpoint"
            .to_string()),
        Ok(keep) => Ok(keep),
        Err(_) => Err(format!("`{text}` is not a count: write it like 5")),
    }
}

/// `524288`, `512K`, `1M`, `3G`, `2T`: from 1 byte to [`MAX_SIZE`].
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("`{text}` is not a size: write it like 524288, 512K, 64M or 3G")),
    };
    let too_large = || format!("`{text}` is too large: at most {}", human_size(MAX_SIZE));
    let value: u64 = match number.parse() {
        Ok(value) => value,
        // All digits, yet no u64: too many of them.
        Err(_) if !number.is_empty() => return Err(too_large()),
        Err(_) => return Err(format!("`{text}` is not a size: write it like 512K or 3G")),
    };
    if value == 0 {
        return Err("a size must be more than zero".to_string());
    }
    value.checked_mul(scale).filter(|bytes| *bytes <= MAX_SIZE).ok_or_else(too_large)
}

/// A size within `min..=max`, `why_min` / `why_max` saying what a value beyond the bound would do.
fn parse_bytes_within(text: &str, min: u64, max: u64, why_min: &str, why_max: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if bytes < min {
        return Err(format!("`{}` is too small: at least {} ({why_min})", text.trim(), human_size(min)));
    }
    if bytes > max {
        return Err(format!("`{}` is too large: at most {} ({why_max})", text.trim(), human_size(max)));
    }
    Ok(bytes)
}

fn parse_sample_bytes(text: &str) -> Result<u64, String> {
    parse_bytes_within(text, 1, MAX_SAMPLE_BYTES, "", "beyond it almost no block would be recorded")
}

fn parse_rss_step(text: &str) -> Result<u64, String> {
    parse_bytes_within(
        text,
        MIN_RSS_STEP,
        MAX_SIZE,
        "a smaller step would write a snapshot at every small rise of the RSS",
        "",
    )
}

fn parse_memory_budget(text: &str) -> Result<u64, String> {
    parse_bytes_within(text, MIN_MEMORY_BUDGET, MAX_SIZE, "the tracer needs about that much to start", "")
}

/// `1T`, `512M`, `3K`, `100`: the exact size in the largest unit it is a whole number of.
fn human_size(bytes: u64) -> String {
    for (unit, scale) in [("T", 1u64 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// `30s`, `15m`, `2h`, `1h 30m`: more than zero and at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|error| match error {
        humantime::DurationError::NumberOverflow => format!("`{text}` is too long: at most 100 years"),
        _ => format!("`{text}` is not a duration: write it like 30s, 15m or 2h"),
    })?;
    if duration.is_zero() {
        return Err("the duration must be longer than zero".to_string());
    }
    if duration > MAX_DURATION {
        return Err(format!("`{text}` is too long: at most 100 years"));
    }
    Ok(duration)
}

/// `-d`: a duration; longer than [`MAX_DURATION`] is refused with the way to trace without an end.
fn parse_run_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|error| {
        if error.contains("too long") {
            format!("{error}; leave out -d to trace until Ctrl-C or the target exits")
        } else {
            error
        }
    })
}

/// `--interval` and `--checkpoint`: a duration of at least [`MIN_PERIOD`].
fn parse_period(text: &str) -> Result<Duration, String> {
    let period = parse_duration(text)?;
    if period < MIN_PERIOD {
        return Err(format!("`{text}` is too short: at least 100ms"));
    }
    Ok(period)
}

/// `--turn-start` and `--turn-end`: a regular expression, checked here so that a bad one is one line.
fn parse_turn_pattern(text: &str) -> Result<String, String> {
    match regex::Regex::new(text) {
        Ok(_) => Ok(text.to_string()),
        Err(regex::Error::Syntax(message)) => {
            // The syntax error is drawn over several lines (the pattern, a caret, the reason): keep the reason.
            let reason = message.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("bad syntax");
            Err(format!("not a valid regular expression: {}", reason.trim().trim_start_matches("error: ")))
        }
        Err(error) => Err(format!("not a usable regular expression: {}", error.to_string().replace('\n', " "))),
    }
}

/// `dispatch-leaktrace mark --help`.
pub const MARK_HELP: &str = "Sends a marker to a running trace: it shows in timeline.svg and report.json, and \
                             ends or starts a turn when it matches --turn-start or --turn-end.

Usage: dispatch-leaktrace mark [--pid PID] LABEL...

  --pid PID  the trace of this target pid [default: the only trace running]";

/// `mark --help` or `mark -h` (also after `--pid PID`): help, not a label.
pub fn asks_for_mark_help(args: &[String]) -> bool {
    let first_word = match args {
        [flag, _, rest @ ..] if flag == "--pid" || flag == "-p" => rest.first(),
        rest => rest.first(),
    };
    first_word.is_some_and(|word| word == "--help" || word == "-h")
}

/// The ways to name a target, for the messages about a missing one or two of them.
const TARGETS: &str = "--pid PID, --exe PATH, --comm NAME, or -- CMD ARGS";

/// A command-line error as one line that names the option and says what to do (clap's own message spreads
/// over several lines, and for a missing target lists nothing).
pub fn one_line_error(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    // clap names the command `[CMD]...`; the user writes it after `--`.
    let context = |kind: ContextKind| {
        let text = match error.get(kind) {
            Some(ContextValue::String(value)) => value.clone(),
            Some(ContextValue::Strings(values)) => values.join(", "),
            _ => return None,
        };
        Some(text.replace("[CMD]...", "-- CMD"))
    };
    let see_help = "(see --help)";
    let is_target = |arg: &str| ["--pid", "--exe", "--comm", "-- CMD"].iter().any(|target| arg.starts_with(target));
    match error.kind() {
        ErrorKind::MissingRequiredArgument => {
            let missing = context(ContextKind::InvalidArg).unwrap_or_default();
            if missing.is_empty() || is_target(&missing) || missing.starts_with('<') {
                format!("give a target: {TARGETS}")
            } else {
                format!("{missing} is needed too {see_help}")
            }
        }
        ErrorKind::UnknownArgument => {
            let argument = context(ContextKind::InvalidArg).unwrap_or_default();
            match context(ContextKind::SuggestedArg) {
                Some(suggested) => format!("unknown option `{argument}`: did you mean `{suggested}`? {see_help}"),
                None if argument.starts_with('-') => format!("unknown option `{argument}` {see_help}"),
                None => format!("unexpected `{argument}`: to launch a command, put it after `--` (-- CMD ARGS)"),
            }
        }
        ErrorKind::ArgumentConflict => {
            let argument = context(ContextKind::InvalidArg).unwrap_or_default();
            let prior = context(ContextKind::PriorArg).unwrap_or_else(|| "another option".to_string());
            if argument == prior {
                format!("{argument} is given twice: give it once")
            } else if is_target(&argument) && is_target(&prior) {
                format!("{argument} cannot be used with {prior}: give one target, {TARGETS}")
            } else {
                format!("{argument} cannot be used with {prior}: leave one out {see_help}")
            }
        }
        ErrorKind::InvalidUtf8 => {
            "an option or its value is not UTF-8 text: only a path and the command after `--` may hold other bytes"
                .to_string()
        }
        _ => {
            // The lines before the usage, joined: the message, and clap's tip when it has one.
            let rendered = error.render().to_string();
            let lines: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
                .filter(|line| !line.is_empty())
                .collect();
            let text = lines.join("; ").replace("[CMD]...", "-- CMD");
            let text = text.trim_start_matches("error: ");
            if text.is_empty() { format!("invalid arguments {see_help}") } else { format!("{text} {see_help}") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_overhead_budget_is_a_percentage_or_off() {
        assert_eq!(parse_overhead("2"), Ok(Overhead(Some(2.0))));
        assert_eq!(parse_overhead("0.5%"), Ok(Overhead(Some(0.5))));
        assert_eq!(parse_overhead("OFF"), Ok(Overhead(None)));
        for bad in ["0", "-1", "101", "two", "nan"] {
            assert!(parse_overhead(bad).unwrap_err().contains("not a percentage"), "{bad}");
        }
        assert_eq!(Cli::try_parse_from(["t", "--pid", "1"]).unwrap().overhead, Overhead(Some(2.0)));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn durations_past_a_hundred_years_are_refused() {
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        for text in ["36501d", "18446744073709551615s", "99999999999999999999999999s", "584942417356y"] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("too long: at most 100 years"), "{text}: {error}");
        }
        assert!(parse_run_duration("18446744073709551615s").unwrap_err().contains("leave out -d"));
    }

    #[test]
    fn periods_are_at_least_100ms() {
        assert_eq!(parse_period("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_period("99ms").unwrap_err().contains("at least 100ms"));
        assert!(parse_period("1ns").is_err());
    }

    #[test]
    fn sizes_read_with_units() {
        assert_eq!(parse_bytes("524288"), Ok(524288));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("3G"), Ok(3 << 30));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    fn sizes_that_overflow_are_too_large_not_wrapped() {
        // 17179869184G is 2^64 bytes: it wrapped to 0.
        for text in ["17179869184G", "18446744073709551616", "99999999999999999999999", "1025T"] {
            let error = parse_bytes(text).unwrap_err();
            assert!(error.contains("too large: at most 1024T"), "{text}: {error}");
        }
        assert_eq!(parse_bytes("1024T"), Ok(MAX_SIZE));
    }

    #[test]
    fn each_size_option_has_its_bounds() {
        assert!(parse_sample_bytes("2G").unwrap_err().contains("at most 1G"));
        assert_eq!(parse_sample_bytes("1G"), Ok(1 << 30));
        assert!(parse_rss_step("1").unwrap_err().contains("at least 1M"));
        assert!(parse_rss_step("1023K").is_err());
        assert_eq!(parse_rss_step("1M"), Ok(1 << 20));
        assert!(parse_memory_budget("1K").unwrap_err().contains("at least 16M"));
        assert_eq!(parse_memory_budget("512M"), Ok(512 << 20));
    }

    #[test]
    fn an_rss_step_the_target_has_passed_is_warned_about() {
        assert_eq!(rss_step_warning(3 << 30, 1 << 30), None);
        let warning = rss_step_warning(1 << 20, 3 << 30).unwrap();
        assert!(warning.starts_with("--snapshot-at-rss 1M: the target already holds 3.0 GiB"), "{warning}");
    }

    #[test]
    fn keep_zero_is_refused() {
        assert!(parse_keep("0").unwrap_err().contains("keep at least 1"));
        assert_eq!(parse_keep("1"), Ok(1));
        assert!(parse_keep("-1").is_err());
    }

    #[test]
    fn pids_are_what_the_kernel_could_give() {
        assert_eq!(parse_pid("4242"), Ok(4242));
        assert_eq!(parse_pid("2147483647"), Ok(2147483647));
        for text in ["0", "2147483648", "4294967295", "-1", "abc", ""] {
            assert!(parse_pid(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_bad_turn_pattern_is_one_line_naming_the_problem() {
        let error = parse_turn_pattern("(").unwrap_err();
        assert_eq!(error, "not a valid regular expression: unclosed group");
        assert!(!parse_turn_pattern("a{1000}{1000}{1000}").unwrap_err().contains('\n'));
        assert_eq!(parse_turn_pattern(r"turn start (?P<id>\S+)"), Ok(r"turn start (?P<id>\S+)".to_string()));
    }

    fn error_of(args: &[&str]) -> String {
        let error = Cli::try_parse_from(std::iter::once("dispatch-leaktrace").chain(args.iter().copied())).unwrap_err();
        one_line_error(&error)
    }

    #[test]
    fn command_line_errors_are_one_line_that_says_what_to_do() {
        assert_eq!(error_of(&[]), "give a target: --pid PID, --exe PATH, --comm NAME, or -- CMD ARGS");
        assert_eq!(error_of(&["-d", "5s"]), "give a target: --pid PID, --exe PATH, --comm NAME, or -- CMD ARGS");
        assert_eq!(error_of(&["--pid", "1", "--turn-start", "x"]), "--turn-end <REGEX> is needed too (see --help)");
        assert!(error_of(&["--pid", "1", "--turn-start", "("]).contains("'--turn-start <REGEX>'"));
        assert!(error_of(&["--pid", "1", "--", "ls"]).starts_with("--pid <PID> cannot be used with -- CMD: give one"));
        assert_eq!(error_of(&["--pid", "1", "--pid", "2"]), "--pid <PID> is given twice: give it once");
        assert!(error_of(&["--pdi", "1"]).starts_with("unknown option `--pdi`"));
        assert!(error_of(&["--foll"]).contains("did you mean `--follow`?"));
        assert!(error_of(&["ls", "-l"]).contains("put it after `--`"));
        assert!(error_of(&["--pid"]).contains("--pid"));
        for args in [&[][..], &["--pid", "1", "--keep", "0"], &["--pid", "x"], &["--follow", "--", "ls"]] {
            assert!(!error_of(args).contains('\n'), "{args:?}");
        }
    }

    #[test]
    fn mark_help_is_help_not_a_label() {
        let words = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert!(asks_for_mark_help(&words(&["--help"])));
        assert!(asks_for_mark_help(&words(&["--pid", "12", "-h"])));
        assert!(!asks_for_mark_help(&words(&["deploy", "--help"])));
        assert!(!asks_for_mark_help(&words(&["deploy"])));
    }

    #[test]
    fn a_target_is_required_and_only_one() {
        assert!(Cli::try_parse_from(["dispatch-leaktrace"]).is_err());
        assert!(Cli::try_parse_from(["dispatch-leaktrace", "--pid", "1", "--", "true"]).is_err());
        let cli = Cli::try_parse_from(["dispatch-leaktrace", "-d", "5s", "--", "ls", "-l"]).unwrap();
        assert_eq!(cli.command, vec!["ls", "-l"]);
        assert_eq!(cli.duration, Some(Duration::from_secs(5)));
    }

    /// Values of every kind an option takes, hostile ones much more likely than at random.
    fn option_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (any::<u64>(), prop::sample::select(vec!["", "s", "ms", "ns", "m", "h", "d", "y", "K", "M", "G", "T"]))
                .prop_map(|(n, unit)| format!("{n}{unit}")),
            (0u64..100_000, prop::sample::select(vec!["s", "ms", "us", "m", "h", "d", "M", "G", "K"]))
                .prop_map(|(n, unit)| format!("{n}{unit}")),
            "[0-9]{1,30}[a-zA-Z]{0,4}",
            "[-0-9a-z .:()\\[\\]{}*+?\\\\]{0,12}",
            ("[0-9a-z]{0,22}", "[0-9a-z]{0,22}").prop_map(|(from, to)| format!("{from}..{to}")),
            (any::<u64>(), prop::sample::select(vec!["s", "ms", "m", "h", "d", "y"]), "start|end|[0-9]{1,20}h")
                .prop_map(|(n, unit, other)| format!("{n}{unit}..{other}")),
            any::<String>(),
        ]
    }

    fn option_name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "--pid",
            "-p",
            "-d",
            "--duration",
            "-i",
            "--interval",
            "--warmup",
            "--compare",
            "--turn-start",
            "--turn-end",
            "--sample-bytes",
            "--sample-pages",
            "--min-age",
            "--checkpoint",
            "--keep",
            "--snapshot-at-rss",
            "--max-memory",
            "--comm",
            "--alloc-symbol",
            "-o",
            "--markers-from",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// No value makes the parser panic, and every accepted one stays within what the trace computes
        /// with: the deadline the session takes, the growth window's times, the sizes' arithmetic.
        #[test]
        fn no_option_value_panics_or_overflows(
            options in prop::collection::vec((option_name(), option_value()), 1..4)
        ) {
            let mut args = vec!["dispatch-leaktrace".to_string()];
            for (name, value) in &options {
                args.push(name.to_string());
                args.push(value.clone());
            }
            if !options.iter().any(|(name, _)| matches!(*name, "--pid" | "-p" | "--comm")) {
                args.extend(["--pid".to_string(), "1".to_string()]);
            }
            match Cli::try_parse_from(&args) {
                Err(error) => {
                    let line = one_line_error(&error);
                    prop_assert!(!line.contains('\n') && !line.is_empty(), "{args:?}: {line:?}");
                }
                Ok(cli) => check_downstream(&cli)?,
            }
        }

        #[test]
        fn no_duration_panics_or_overflows(text in option_value()) {
            if let Ok(duration) = parse_duration(&text) {
                prop_assert!(duration <= MAX_DURATION);
                prop_assert!(Instant::now().checked_add(duration).is_some());
                prop_assert!(std::time::SystemTime::now().checked_add(duration).is_some());
                let _ = tokio::time::Instant::now() + duration;
            }
            let _ = parse_run_duration(&text);
            let _ = parse_period(&text);
        }

        #[test]
        fn no_size_panics_or_overflows(text in option_value()) {
            if let Ok(bytes) = parse_bytes(&text) {
                prop_assert!((1..=MAX_SIZE).contains(&bytes));
                // The collector's arithmetic on the RSS step and the memory budget.
                prop_assert!(bytes.checked_mul(1024).is_some());
                prop_assert!(u64::MAX.checked_div(bytes).is_some());
            }
            for parse in [parse_sample_bytes, parse_rss_step, parse_memory_budget] {
                let _ = parse(&text);
            }
        }

        #[test]
        fn no_compare_window_panics_or_overflows(text in option_value()) {
            use crate::reports::growth::{MomentSpec, parse_compare};
            if let Ok(spec) = parse_compare(&text) {
                for moment in [&spec.from, &spec.to] {
                    if let MomentSpec::After(after) = moment {
                        prop_assert!(std::time::SystemTime::now().checked_add(*after).is_some());
                    }
                }
            }
        }
    }

    /// What the session and the collector compute from the options, done with their own functions.
    fn check_downstream(cli: &Cli) -> Result<(), TestCaseError> {
        if cli.duration.is_some() {
            prop_assert!(cli.deadline(Instant::now()).is_some(), "{:?}", cli.duration);
        }
        for duration in
            [cli.duration, Some(cli.interval), cli.warmup, cli.min_age, cli.checkpoint].into_iter().flatten()
        {
            prop_assert!((MIN_DURATION_FLOOR..=MAX_DURATION).contains(&duration));
            prop_assert!(u64::try_from(duration.as_nanos()).is_ok());
        }
        prop_assert!(cli.interval >= MIN_PERIOD);
        prop_assert!(cli.checkpoint.is_none_or(|every| every >= MIN_PERIOD));
        prop_assert!(cli.keep >= 1);
        prop_assert!(cli.sample_bytes.is_none_or(|n| (1..=MAX_SAMPLE_BYTES).contains(&n)));
        prop_assert!(cli.snapshot_at_rss.is_none_or(|n| (MIN_RSS_STEP..=MAX_SIZE).contains(&n)));
        prop_assert!((MIN_MEMORY_BUDGET..=MAX_SIZE).contains(&cli.max_memory));
        if let Some(compare) = &cli.compare {
            let started = std::time::SystemTime::now();
            for moment in [&compare.from, &compare.to] {
                let _ =
                    crate::reports::growth::resolve(moment, started, &[started], crate::reports::growth::Moment::End);
            }
        }
        Ok(())
    }

    /// Every duration option is longer than zero.
    const MIN_DURATION_FLOOR: Duration = Duration::from_nanos(1);
}
