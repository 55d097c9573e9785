//! Marker lines from outside the target, fed to the collector: a followed log file or stdin
//! (`--markers-from`), and `dispatch-leaktrace mark LABEL` through a control socket.

pub mod control;

use std::{io::SeekFrom, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader},
    sync::mpsc,
};

use crate::collector::SentLine;

/// How often a followed file is checked for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

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

/// Starts reading `source` on the current tokio runtime; lines go to `sender`.
pub fn spawn_reader(source: MarkerSource, sender: mpsc::UnboundedSender<SentLine>) -> Result<()> {
    match source {
        MarkerSource::Stdin => {
            tokio::spawn(async move {
                let mut lines = BufReader::new(tokio::io::stdin()).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if sender.send(SentLine::now(line)).is_err() {
                        break;
                    }
                }
            });
        }
        MarkerSource::File(path) => {
            // Open now, so that a wrong path is an error at start, not a silent nothing.
            std::fs::File::open(&path).with_context(|| {
                format!("cannot read --markers-from {}: give a readable log file, or - for stdin", path.display())
            })?;
            tokio::spawn(follow(path, sender));
        }
    }
    Ok(())
}

/// Reads the lines appended to `path` from now on, like `tail -F`: a file that shrinks (rotated or
/// truncated) is read again from its start.
async fn follow(path: PathBuf, sender: mpsc::UnboundedSender<SentLine>) {
    let Ok(mut file) = tokio::fs::File::open(&path).await else { return };
    let mut position = file.seek(SeekFrom::End(0)).await.unwrap_or(0);
    let mut pending = Vec::new();
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let length = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
        if length < position {
            match tokio::fs::File::open(&path).await {
                Ok(reopened) => file = reopened,
                Err(_) => continue,
            }
            position = 0;
            pending.clear();
        }
        if file.seek(SeekFrom::Start(position)).await.is_err() {
            continue;
        }
        let mut chunk = Vec::new();
        let Ok(read) = (&mut file).take(1 << 20).read_to_end(&mut chunk).await else { continue };
        position += read as u64;
        pending.extend_from_slice(&chunk);
        while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r').to_string();
            if sender.send(SentLine::now(text)).is_err() {
                return;
            }
        }
    }
}
