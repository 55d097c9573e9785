//! For the person at the terminal while a long trace runs: on a terminal, a status line rewritten in place
//! every second; otherwise (systemd, a log file) the same as a plain line every minute; `--quiet`, nothing.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use crate::reports::summary::human_bytes;

/// How often a plain status line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(60);

/// What the status line shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub elapsed: Duration,
    pub pid: u32,
    pub rss_bytes: u64,
    /// (source name, outstanding bytes), the sources seen so far.
    pub outstanding: Vec<(&'static str, u64)>,
    pub events_per_second: f64,
    /// Events and stacks not recorded (every loss counter, and skipped program runs).
    pub lost: u64,
    pub next_checkpoint: Option<Duration>,
}

impl Status {
    pub fn render(&self) -> String {
        let seconds = self.elapsed.as_secs();
        let mut line = format!(
            "{:02}:{:02}:{:02} pid {} RSS {}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            self.pid,
            human_bytes(self.rss_bytes)
        );
        if !self.outstanding.is_empty() {
            let sources: Vec<String> =
                self.outstanding.iter().map(|(source, bytes)| format!("{source} {}", human_bytes(*bytes))).collect();
            line.push_str(&format!(" | outstanding {}", sources.join(", ")));
        }
        line.push_str(&format!(" | {} events/s | lost {}", short_count(self.events_per_second), self.lost));
        if let Some(next) = self.next_checkpoint {
            line.push_str(&format!(" | next checkpoint in {}", short_duration(next)));
        }
        line
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
                // Carriage return, erase the line; no newline, so the next one replaces it.
                let _ = write!(stderr, "\r\x1b[2Kdispatch-leaktrace: {}", status.render());
                self.shown = true;
            }
            Mode::Plain => {
                let _ = writeln!(stderr, "dispatch-leaktrace: {}", status.render());
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

    #[test]
    fn the_status_line_shows_what_a_long_run_needs() {
        let status = Status {
            elapsed: Duration::from_secs(2 * 3600 + 5 * 60 + 9),
            pid: 4242,
            rss_bytes: 3 << 30,
            outstanding: vec![("page-fault", 2 << 30), ("mmap", 5 << 29)],
            events_per_second: 12_345.0,
            lost: 7,
            next_checkpoint: Some(Duration::from_secs(252)),
        };
        assert_eq!(
            status.render(),
            "02:05:09 pid 4242 RSS 3.0 GiB | outstanding page-fault 2.0 GiB, mmap 2.5 GiB | 12.3k events/s | lost 7 \
             | next checkpoint in 4m12s"
        );
    }

    #[test]
    fn without_sources_or_checkpoints_those_parts_are_left_out() {
        let status = Status { pid: 1, events_per_second: 3.2, ..Status::default() };
        assert_eq!(status.render(), "00:00:00 pid 1 RSS 0 B | 3 events/s | lost 0");
    }
}
