//! The control socket of a running trace, for `dispatch-leaktrace mark LABEL` from another shell:
//! `/run/dispatch-leaktrace/<target pid>.sock`. Each line a client sends is a marker.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::UnixListener,
    sync::mpsc,
};

use crate::collector::SentLine;

const DIR: &str = "/run/dispatch-leaktrace";

fn socket_path(target_pid: u32) -> PathBuf {
    Path::new(DIR).join(format!("{target_pid}.sock"))
}

/// The listening socket; removed when dropped.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens for markers about `target_pid` on the current tokio runtime. Under sudo, the invoking user may
/// send them too.
pub fn listen(target_pid: u32, sender: mpsc::UnboundedSender<SentLine>) -> Result<ControlSocket> {
    std::fs::create_dir_all(DIR).with_context(|| format!("cannot create {DIR} for the control socket"))?;
    let path = socket_path(target_pid);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    if let (Ok(uid), Ok(gid)) = (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) {
        if let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) {
            let _ = std::os::unix::fs::chown(&path, Some(uid), Some(gid));
        }
    }
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let (reader, mut writer) = stream.into_split();
                let mut lines = AsyncBufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = sender.send(SentLine::now(line));
                    let _ = writer.write_all(b"ok\n").await;
                }
            });
        }
    });
    Ok(ControlSocket { path })
}

/// `dispatch-leaktrace mark [--pid PID] LABEL...`: sends LABEL to the trace of PID, or to the only trace
/// running.
pub fn mark(args: &[String]) -> Result<()> {
    let (pid, words) = match args {
        [flag, pid, rest @ ..] if flag == "--pid" || flag == "-p" => {
            (Some(pid.parse::<u32>().with_context(|| format!("`{pid}` is not a pid"))?), rest)
        }
        rest => (None, rest),
    };
    if words.is_empty() {
        bail!("usage: dispatch-leaktrace mark [--pid PID] LABEL");
    }
    let label = words.join(" ");
    if label.contains('\n') {
        bail!("a marker label is one line");
    }
    let path = match pid {
        Some(pid) => socket_path(pid),
        None => only_running_trace()?,
    };
    let mut stream = UnixStream::connect(&path).map_err(|error| {
        anyhow::anyhow!(
            "no trace is listening on {} ({error}): is dispatch-leaktrace running for that pid?",
            path.display()
        )
    })?;
    writeln!(stream, "{label}")?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    if reply.trim() != "ok" {
        bail!("the trace did not take the marker");
    }
    Ok(())
}

fn only_running_trace() -> Result<PathBuf> {
    let sockets: Vec<PathBuf> = std::fs::read_dir(DIR)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match sockets.as_slice() {
        [only] => Ok(only.clone()),
        [] => bail!("no dispatch-leaktrace is running (nothing in {DIR}); start one, or give --pid"),
        _ => bail!("several traces are running: give --pid of the traced process"),
    }
}
