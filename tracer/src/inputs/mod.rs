//! Marker lines from outside the target, fed to the collector: a followed log file, a FIFO or stdin
//! (`--markers-from`), and `dispatch-leaktrace mark LABEL` through a control socket.
//!
//! Nothing here may keep the trace from ending: a file is opened without blocking (a FIFO with no writer
//! would block an ordinary open), a FIFO is read as the runtime's other sockets are, and stdin is read on
//! a thread of its own (an ordinary blocking read that the process leaves behind when it exits; the
//! runtime's blocking pool would wait for it on shutdown). One line is at most [`MAX_LINE`] bytes from
//! every source: a longer one is cut there and counted, so a writer cannot grow the tracer.

pub mod control;

use std::{
    io::{Read, SeekFrom},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Result, bail};
use tokio::{
    io::{AsyncReadExt, AsyncSeekExt},
    sync::mpsc,
};

use crate::{
    collector::SentLine,
    procfs::untrusted::{self, Origin},
};

/// How often a followed file is checked for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);
/// The longest marker line, in bytes; the rest of a longer one is passed over.
pub const MAX_LINE: usize = 4096;
/// Read at a time from any source.
const CHUNK: usize = 64 << 10;

static CUT_LINES: AtomicU64 = AtomicU64::new(0);
static TOLD_CUT: AtomicBool = AtomicBool::new(false);

/// Marker lines cut at [`MAX_LINE`] bytes since the start, from every source (for report.json).
pub fn cut_lines() -> u64 {
    CUT_LINES.load(Ordering::Relaxed)
}

/// Where `--markers-from` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarkerSource {
    Stdin,
    File(PathBuf),
}

impl MarkerSource {
    pub fn parse(text: &str) -> Self {
        if text == "-" { MarkerSource::Stdin } else { MarkerSource::File(PathBuf::from(text)) }
    }
}

/// Splits a stream of bytes into marker lines of at most [`MAX_LINE`] bytes. A longer line is cut: its
/// start is a line at once, the rest is passed over up to its newline, and the cut is counted. What is
/// held between reads is never more than one line's [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
pub struct LineCutter {
    pending: Vec<u8>,
    /// Within the rest of a line already cut.
    passing_over: bool,
    /// Where the lines come from, for the warning about the first cut (none when empty).
    source: String,
}

impl LineCutter {
    /// A cutter whose first cut is told, naming `source` (`LineCutter::default()` only counts).
    pub fn new(source: impl Into<String>) -> Self {
        Self { source: source.into(), ..Self::default() }
    }

    /// Feeds the next bytes of the stream; `on_line` gets every line they complete (or cut).
    pub fn feed(&mut self, mut bytes: &[u8], mut on_line: impl FnMut(String)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            if self.passing_over {
                match newline {
                    Some(at) => {
                        self.passing_over = false;
                        bytes = &bytes[at + 1..];
                    }
                    None => return,
                }
                continue;
            }
            let (piece, rest, complete) = match newline {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_LINE - self.pending.len();
            if piece.len() > room {
                self.pending.extend_from_slice(&piece[..room]);
                on_line(self.take_line());
                self.count_cut();
                self.passing_over = !complete;
            } else {
                self.pending.extend_from_slice(piece);
                if complete {
                    on_line(self.take_line());
                }
            }
            bytes = rest;
        }
    }

    /// The stream ended: a last line without its newline, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.passing_over = false;
        (!self.pending.is_empty()).then(|| self.take_line())
    }

    /// Forgets a partial line (the file it came from was replaced).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.passing_over = false;
    }

    fn take_line(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.pending).trim_end_matches('\r').to_string();
        self.pending.clear();
        line
    }

    fn count_cut(&self) {
        CUT_LINES.fetch_add(1, Ordering::Relaxed);
        if !self.source.is_empty() && !TOLD_CUT.swap(true, Ordering::Relaxed) {
            eprintln!(
                "dispatch-leaktrace: warning: a marker line longer than {MAX_LINE} bytes (from {}) was cut there; \
                 longer lines are cut and counted",
                self.source
            );
        }
    }
}

/// Starts reading `source` on the current tokio runtime; lines go to `sender`. A path must lead to a
/// regular file (followed like `tail -F`) or a FIFO (read as writers come and go).
pub fn spawn_reader(source: MarkerSource, sender: mpsc::UnboundedSender<SentLine>) -> Result<()> {
    let path = match source {
        MarkerSource::Stdin => {
            std::thread::Builder::new().name("markers-stdin".into()).spawn(move || read_stdin(sender))?;
            return Ok(());
        }
        MarkerSource::File(path) => path,
    };
    let what_to_give = "give a log file, a FIFO, or - for stdin";
    // Open now, so that a wrong path is an error at start, not a silent nothing.
    let (handle, metadata) =
        untrusted::open_handle(&path).map_err(|error| anyhow::anyhow!("--markers-from: {error}: {what_to_give}"))?;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        let file = untrusted::open(&path, Origin::Operator)
            .map_err(|error| anyhow::anyhow!("--markers-from: {error}: {what_to_give}"))?;
        tokio::spawn(follow(path, file, sender));
    } else if std::os::unix::fs::FileTypeExt::is_fifo(&file_type) {
        // Read and write: the FIFO then never reads as ended when its writers close, and the next
        // writer's lines come in turn (and opening it does not wait for a writer either).
        let fifo = untrusted::reopen(&handle, libc::O_RDWR)
            .and_then(tokio::net::unix::pipe::Receiver::from_file)
            .map_err(|error| anyhow::anyhow!("--markers-from: cannot read the FIFO {}: {error}", path.display()))?;
        tokio::spawn(read_fifo(fifo, path, sender));
    } else {
        bail!("--markers-from: {} is {}: {what_to_give}", path.display(), untrusted::describe(&metadata));
    }
    Ok(())
}

/// Reads stdin to its end on this (dedicated) thread.
fn read_stdin(sender: mpsc::UnboundedSender<SentLine>) {
    let mut cutter = LineCutter::new("stdin");
    let mut stdin = std::io::stdin().lock();
    let mut chunk = vec![0u8; CHUNK];
    let mut open = true;
    while open {
        let read = match stdin.read(&mut chunk) {
            Ok(0) | Err(_) => 0,
            Ok(read) => read,
        };
        cutter.feed(&chunk[..read], |line| open &= sender.send(SentLine::now(line)).is_ok());
        if read == 0 {
            if let Some(line) = cutter.finish() {
                let _ = sender.send(SentLine::now(line));
            }
            return;
        }
    }
}

/// Reads a FIFO's lines as they come, from every writer in turn.
async fn read_fifo(mut fifo: tokio::net::unix::pipe::Receiver, path: PathBuf, sender: mpsc::UnboundedSender<SentLine>) {
    let mut cutter = LineCutter::new(format!("--markers-from {}", path.display()));
    let mut chunk = vec![0u8; CHUNK];
    let mut open = true;
    while open {
        match fifo.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => cutter.feed(&chunk[..read], |line| open &= sender.send(SentLine::now(line)).is_ok()),
        }
    }
}

/// Reads the lines appended to `path` from now on, like `tail -F`: a file that shrinks (rotated or
/// truncated) is read again from its start, opened as at the start (a regular file only).
async fn follow(path: PathBuf, file: std::fs::File, sender: mpsc::UnboundedSender<SentLine>) {
    let mut file = tokio::fs::File::from_std(file);
    let mut position = file.seek(SeekFrom::End(0)).await.unwrap_or(0);
    let mut cutter = LineCutter::new(format!("--markers-from {}", path.display()));
    let mut chunk = vec![0u8; CHUNK];
    let mut told = false;
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let length = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
        if length < position {
            match reopen_followed(&path) {
                Ok(reopened) => file = reopened,
                Err(error) => {
                    if !std::mem::replace(&mut told, true) {
                        eprintln!(
                            "dispatch-leaktrace: warning: {error}: no more markers from it until it is a file again"
                        );
                    }
                    continue;
                }
            }
            told = false;
            position = 0;
            cutter.reset();
        }
        if file.seek(SeekFrom::Start(position)).await.is_err() {
            continue;
        }
        // To the end: what is held stays within one line's cap however much was appended.
        while let Ok(read @ 1..) = file.read(&mut chunk).await {
            position += read as u64;
            let mut open = true;
            cutter.feed(&chunk[..read], |line| open &= sender.send(SentLine::now(line)).is_ok());
            if !open {
                return;
            }
        }
    }
}

fn reopen_followed(path: &Path) -> Result<tokio::fs::File, untrusted::FileError> {
    Ok(tokio::fs::File::from_std(untrusted::open(path, Origin::Operator)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(pieces: &[&[u8]]) -> (Vec<String>, Option<String>) {
        let mut cutter = LineCutter::new("test");
        let mut lines = Vec::new();
        for piece in pieces {
            cutter.feed(piece, |line| lines.push(line));
        }
        (lines, cutter.finish())
    }

    #[test]
    fn lines_come_whole_across_reads() {
        let (lines, last) = lines_of(&[b"turn st", b"art t1\r\nturn end t1\n\nnext", b" part"]);
        assert_eq!(lines, ["turn start t1", "turn end t1", ""]);
        assert_eq!(last.as_deref(), Some("next part"));
    }

    #[test]
    fn a_long_line_is_cut_at_the_cap_and_its_rest_passed_over() {
        let before = cut_lines();
        let long = vec![b'x'; 3 * MAX_LINE];
        let (lines, last) = lines_of(&[b"first\n", &long[..1000], &long[1000..], &long, b"yyy\nafter\n", &long]);
        assert_eq!(lines.len(), 4, "{:?}", lines.iter().map(String::len).collect::<Vec<_>>());
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1], "x".repeat(MAX_LINE));
        assert_eq!(lines[2], "after");
        assert_eq!(lines[3], "x".repeat(MAX_LINE), "cut as soon as the cap is reached");
        assert_eq!(last, None, "the rest of a cut line is not a line");
        assert!(cut_lines() >= before + 2);
        // Exactly the cap is not cut.
        let (lines, _) = lines_of(&[&long[..MAX_LINE], b"\n"]);
        assert_eq!(lines, ["x".repeat(MAX_LINE)]);
    }

    #[test]
    fn what_is_held_never_passes_the_cap() {
        let mut cutter = LineCutter::new("test");
        let long = vec![b'z'; 1 << 20];
        for _ in 0..8 {
            cutter.feed(&long, |_| {});
            assert!(cutter.pending.len() <= MAX_LINE);
        }
    }
}
