//! Turn markers: log lines of the target (captured in the kernel), lines from a log stream
//! (`--markers-from`) and labels sent with `dispatch-leaktrace mark`, matched against the turn patterns.
//! Lines that match nothing are dropped when they come from the target's own log (they may hold anything),
//! and kept as plain markers when a person sent them.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use regex::Regex;

use crate::inputs::LineCutter;

/// What one line says about turns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    TurnStart(String),
    TurnEnd(String),
    Other,
}

/// `--turn-start` and `--turn-end`: the named group `id` (or else the first group) pairs a start with its
/// end; a pattern without a group gives every turn the same id, so turns cannot overlap.
#[derive(Clone, Debug)]
pub struct TurnPatterns {
    start: Regex,
    end: Regex,
}

impl TurnPatterns {
    pub fn new(start: &str, end: &str) -> Result<Self> {
        let compile = |flag: &str, pattern: &str| {
            Regex::new(pattern).with_context(|| format!("{flag} `{pattern}` is not a valid regular expression"))
        };
        let patterns = Self { start: compile("--turn-start", start)?, end: compile("--turn-end", end)? };
        if patterns.start.as_str() == patterns.end.as_str() {
            bail!("--turn-start and --turn-end are the same pattern: a line could not tell a start from an end");
        }
        Ok(patterns)
    }

    pub fn classify(&self, line: &str) -> Marker {
        if let Some(id) = Self::id_of(&self.start, line) {
            Marker::TurnStart(id)
        } else if let Some(id) = Self::id_of(&self.end, line) {
            Marker::TurnEnd(id)
        } else {
            Marker::Other
        }
    }

    fn id_of(pattern: &Regex, line: &str) -> Option<String> {
        let captures = pattern.captures(line)?;
        let id = captures.name("id").or_else(|| captures.get(1)).map_or("", |m| m.as_str());
        Some(id.to_string())
    }
}

/// Reassembles lines from writes, per writer (process and descriptor): a write may hold several lines or
/// part of one. Only the first bytes of each write are captured (`LOG_BYTES`, in the kernel), so a long
/// write is cut; markers sit at the start of a line. A line written in many short writes is cut at
/// `inputs::MAX_LINE` bytes and counted, as lines from every other source are.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: HashMap<(u32, u32), LineCutter>,
}

impl LineSplitter {
    /// Feeds one write's bytes (`truncated`: the write was longer than what was captured) and returns the
    /// complete lines it finished.
    pub fn feed(&mut self, writer: (u32, u32), bytes: &[u8], truncated: bool) -> Vec<String> {
        // Counted when cut, not told: the target's own long log lines are no one's mistake.
        let cutter = self.partial.entry(writer).or_default();
        let mut lines = Vec::new();
        cutter.feed(bytes, |line| lines.push(line));
        if truncated {
            // The rest of this write was not captured: what we hold is the start of a line, ended by the
            // newline we did not see.
            lines.extend(cutter.finish());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_positional_ids_pair_starts_with_ends() {
        let patterns = TurnPatterns::new(r"turn start (?P<id>t\d+)", r"turn end (t\d+)").unwrap();
        assert_eq!(patterns.classify("turn start t12"), Marker::TurnStart("t12".into()));
        assert_eq!(patterns.classify("[info] turn end t3 ok"), Marker::TurnEnd("t3".into()));
        assert_eq!(patterns.classify("listening 8080"), Marker::Other);
        let anonymous = TurnPatterns::new("BEGIN", "END").unwrap();
        assert_eq!(anonymous.classify("BEGIN"), Marker::TurnStart(String::new()));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(TurnPatterns::new("(", "x").unwrap_err().to_string().contains("--turn-start"));
        assert!(TurnPatterns::new("x", "x").is_err());
    }

    #[test]
    fn lines_are_reassembled_per_writer() {
        let mut lines = LineSplitter::default();
        assert!(lines.feed((1, 1), b"turn st", false).is_empty());
        assert_eq!(lines.feed((1, 2), b"other\n", false), vec!["other"]);
        assert_eq!(lines.feed((1, 1), b"art t1\nturn end t1\r\nnext", false), vec!["turn start t1", "turn end t1"]);
        assert_eq!(lines.feed((1, 1), b" line\n", false), vec!["next line"]);
        // A cut write ends its line where the capture ended.
        assert_eq!(lines.feed((1, 1), b"turn start t2 with a long payl", true), vec!["turn start t2 with a long payl"]);
        // A line of many short writes is cut at the cap; what follows its newline is whole again.
        let piece = [b'y'; 200];
        let cut: Vec<String> = (0..30).flat_map(|_| lines.feed((1, 3), &piece, false)).collect();
        assert_eq!(cut, vec!["y".repeat(crate::inputs::MAX_LINE)]);
        assert_eq!(lines.feed((1, 3), b"yyy\nturn end t2\n", false), vec!["turn end t2"]);
    }
}
