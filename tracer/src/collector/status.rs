//! For the person at the terminal while a long trace runs: on a terminal, a status line rewritten in place
//! every second, cut to the terminal's width so that it never wraps; otherwise (systemd, a log file) the
//! whole line every minute; `--quiet`, nothing.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use crate::reports::summary::human_bytes;

/// How often a plain status line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(60);

/// The width assumed when the terminal's width cannot be read.
const DEFAULT_COLUMNS: usize = 80;

const PREFIX: &str = "dispatch-leaktrace: ";

/// What the status line shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub elapsed: Duration,
    pub pid: u32,
    pub rss_bytes: u64,
    /// (source name, outstanding bytes), the sources seen so far, the one a reader looks at first leading.
    pub outstanding: Vec<(&'static str, u64)>,
    pub events_per_second: f64,
    /// Events and stacks not recorded: the kernel's loss counters (`Counter::is_loss`).
    pub lost: u64,
    /// Runs of our programs the kernel skipped, for any process: at most that many of the target's events
    /// are missing.
    pub skipped_runs: u64,
    /// Frees and unmaps of memory never seen allocated: expected when tracing a process that was running
    /// before, so not a loss.
    pub unmatched_frees: u64,
    pub next_checkpoint: Option<Duration>,
    /// `--overhead`: the programs' measured share of the target's CPU and the rates in force, rendered.
    pub overhead: Option<String>,
}

/// The parts a narrow terminal goes without, in the order they are dropped: least important first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    NextCheckpoint,
    EventRate,
    /// The outstanding bytes of every source but the leading one.
    OtherSources,
    Prefix,
    /// What the tracer costs the target, against its budget: kept longer than the line's decorations.
    Overhead,
    Pid,
    Unmatched,
    Outstanding,
}

const DROPPED_IN_ORDER: [Part; 8] = [
    Part::NextCheckpoint,
    Part::EventRate,
    Part::OtherSources,
    Part::Prefix,
    Part::Overhead,
    Part::Pid,
    Part::Unmatched,
    Part::Outstanding,
];

impl Status {
    /// The whole line, for a log.
    pub fn render(&self) -> String {
        self.compose(&[])
    }

    /// The line for a terminal `columns` wide: at most `columns - 1` characters (a line that reaches the
    /// last column wraps on some terminals), the least important parts dropped first, then cut.
    pub fn fit(&self, columns: usize) -> String {
        let width = columns.saturating_sub(1);
        (0..=DROPPED_IN_ORDER.len())
            .map(|dropped| self.compose(&DROPPED_IN_ORDER[..dropped]))
            .find(|line| line.chars().count() <= width)
            .unwrap_or_else(|| self.compose(&DROPPED_IN_ORDER).chars().take(width).collect())
    }

    fn compose(&self, dropped: &[Part]) -> String {
        let shown = |part| !dropped.contains(&part);
        let seconds = self.elapsed.as_secs();
        let mut head = format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
        if shown(Part::Pid) {
            head.push_str(&format!(" pid {}", self.pid));
        }
        head.push_str(&format!(" RSS {}", human_bytes(self.rss_bytes)));
        let mut parts = vec![head];
        if shown(Part::Outstanding) && !self.outstanding.is_empty() {
            let sources = if shown(Part::OtherSources) { &self.outstanding[..] } else { &self.outstanding[..1] };
            let sources: Vec<String> =
                sources.iter().map(|(source, bytes)| format!("{source} {}", human_bytes(*bytes))).collect();
            parts.push(format!("outstanding {}", sources.join(", ")));
        }
        if shown(Part::EventRate) {
            parts.push(format!("{} events/s", short_count(self.events_per_second)));
        }
        if let Some(overhead) = self.overhead.as_ref().filter(|_| shown(Part::Overhead)) {
            parts.push(overhead.clone());
        }
        if self.lost > 0 {
            parts.push(format!("lost {}", self.lost));
        }
        if self.skipped_runs > 0 {
            parts.push(format!("skipped runs {}", self.skipped_runs));
        }
        if shown(Part::Unmatched) && self.unmatched_frees > 0 {
            parts.push(format!("unmatched {}", self.unmatched_frees));
        }
        if let Some(next) = self.next_checkpoint.filter(|_| shown(Part::NextCheckpoint)) {
            parts.push(format!("next checkpoint in {}", short_duration(next)));
        }
        let prefix = if shown(Part::Prefix) { PREFIX } else { "" };
        format!("{prefix}{}", parts.join(" | "))
    }
}

/// Where status lines go.
pub struct StatusLine {
    mode: Mode,
    last_plain: Option<Instant>,
    /// A line is on screen, to clear before anything else is printed.
    shown: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Terminal,
    Plain,
    Quiet,
}

impl StatusLine {
    pub fn new(quiet: bool) -> Self {
        let mode = match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => Mode::Quiet,
            (false, true) => Mode::Terminal,
            (false, false) => Mode::Plain,
        };
        Self { mode, last_plain: None, shown: false }
    }

    /// Whether the status is wanted now (so that it is only gathered when it will be shown).
    pub fn due(&self) -> bool {
        match self.mode {
            Mode::Terminal => true,
            Mode::Plain => self.last_plain.is_none_or(|last| last.elapsed() >= PLAIN_EVERY),
            Mode::Quiet => false,
        }
    }

    pub fn show(&mut self, status: &Status) {
        let mut stderr = std::io::stderr().lock();
        match self.mode {
            Mode::Terminal => {
                // Carriage return, erase the line; no newline, so the next one replaces it. The width is read
                // each time: the terminal may have been resized since.
                let _ = write!(stderr, "\r\x1b[2K{}", status.fit(terminal_columns()));
                self.shown = true;
            }
            Mode::Plain => {
                let _ = writeln!(stderr, "{}", status.render());
                self.last_plain = Some(Instant::now());
            }
            Mode::Quiet => {}
        }
        let _ = stderr.flush();
    }

    /// Erases the status line, before other output or at the end.
    pub fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}

/// The width of the terminal on stderr, in columns.
fn terminal_columns() -> usize {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .ok()
        .map(|size| usize::from(size.ws_col))
        .filter(|&columns| columns > 0)
        .unwrap_or(DEFAULT_COLUMNS)
}

fn short_count(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long run with every part shown: 181 characters in all.
    fn busy() -> Status {
        Status {
            elapsed: Duration::from_secs(2 * 3600 + 5 * 60 + 9),
            pid: 4242,
            rss_bytes: 3 << 30,
            outstanding: vec![("page-fault", 2 << 30), ("mmap", 5 << 29)],
            events_per_second: 12_345.0,
            lost: 7,
            skipped_runs: 14,
            unmatched_frees: 3,
            next_checkpoint: Some(Duration::from_secs(252)),
            overhead: None,
        }
    }

    #[test]
    fn the_overhead_shows_after_the_event_rate_and_outlasts_the_other_sources_and_the_prefix() {
        let status = Status { overhead: Some("bpf 1.9% of 2%, pages 1/16".into()), ..busy() };
        assert!(status.render().contains("| 12.3k events/s | bpf 1.9% of 2%, pages 1/16 | lost 7 |"));
        let without_prefix = "02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB | bpf 1.9% of 2%, pages 1/16 \
                              | lost 7 | skipped runs 14 | unmatched 3";
        assert_eq!(status.fit(without_prefix.chars().count() + 1), without_prefix);
        let narrower = status.fit(without_prefix.chars().count());
        assert!(!narrower.contains("bpf") && narrower.contains("pid 4242"), "{narrower}");
    }

    #[test]
    fn the_whole_line_shows_what_a_long_run_needs_by_its_own_names() {
        assert_eq!(
            busy().render(),
            "dispatch-leaktrace: 02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB, mmap 2.5 GiB \
             | 12.3k events/s | lost 7 | skipped runs 14 | unmatched 3 | next checkpoint in 4m12s"
        );
        // A wide terminal has room for all of it.
        assert_eq!(busy().fit(200), busy().render());
    }

    #[test]
    fn only_real_losses_say_lost_and_counters_at_zero_are_left_out() {
        let status = Status { pid: 1, events_per_second: 3.2, ..Status::default() };
        assert_eq!(status.render(), "dispatch-leaktrace: 00:00:00 pid 1 RSS 0 B | 3 events/s");
        // An unmatched free (normal when attaching) and skipped runs are not "lost".
        let status = Status { unmatched_frees: 1, skipped_runs: 14, ..status };
        assert_eq!(
            status.render(),
            "dispatch-leaktrace: 00:00:00 pid 1 RSS 0 B | 3 events/s | skipped runs 14 | unmatched 1"
        );
    }

    #[test]
    fn narrower_terminals_drop_the_least_important_parts_first() {
        let mut lines: Vec<String> = (48..=200).rev().map(|columns| busy().fit(columns)).collect();
        lines.dedup();
        assert_eq!(
            lines,
            [
                busy().render().as_str(),
                "dispatch-leaktrace: 02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB, mmap 2.5 GiB \
                 | 12.3k events/s | lost 7 | skipped runs 14 | unmatched 3",
                "dispatch-leaktrace: 02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB, mmap 2.5 GiB \
                 | lost 7 | skipped runs 14 | unmatched 3",
                "dispatch-leaktrace: 02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB | lost 7 \
                 | skipped runs 14 | unmatched 3",
                "02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB | lost 7 | skipped runs 14 | unmatched 3",
                "02:05:09 RSS 3.0 GiB | outstanding page-fault 2.0 GiB | lost 7 | skipped runs 14 | unmatched 3",
                "02:05:09 RSS 3.0 GiB | outstanding page-fault 2.0 GiB | lost 7 | skipped runs 14",
                "02:05:09 RSS 3.0 GiB | lost 7 | skipped runs 14",
            ]
        );
    }

    #[test]
    fn an_80_column_terminal_keeps_the_leading_source_and_the_losses() {
        let calm = Status { lost: 0, skipped_runs: 0, unmatched_frees: 0, ..busy() };
        assert_eq!(calm.fit(80), "02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB");
        let lossy = Status { skipped_runs: 0, ..busy() };
        assert_eq!(lossy.fit(80), "02:05:09 RSS 3.0 GiB | outstanding page-fault 2.0 GiB | lost 7 | unmatched 3");
    }

    #[test]
    fn a_40_column_terminal_keeps_time_rss_and_losses_then_cuts() {
        let calm = Status { lost: 0, skipped_runs: 0, unmatched_frees: 0, ..busy() };
        assert_eq!(calm.fit(40), "02:05:09 RSS 3.0 GiB");
        assert_eq!(Status { skipped_runs: 0, ..busy() }.fit(40), "02:05:09 RSS 3.0 GiB | lost 7");
        assert_eq!(busy().fit(40), "02:05:09 RSS 3.0 GiB | lost 7 | skipped");
    }

    #[test]
    fn the_line_never_reaches_the_last_column() {
        for columns in 0..=250 {
            for status in [busy(), Status::default(), Status { pid: u32::MAX, rss_bytes: u64::MAX, ..busy() }] {
                let line = status.fit(columns);
                assert!(line.chars().count() < columns.max(1), "{columns} columns: {line:?}");
            }
        }
    }
}
