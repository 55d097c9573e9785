//! The control socket of a running trace, for `dispatch-leaktrace mark LABEL` from another shell:
//! `/run/dispatch-leaktrace/<target pid>.sock`. Each line a client sends is a marker.
//!
//! The directory is root's: created 0755 if missing, refused if it is a link, is not root's, or others may
//! write in it (then nobody but root can put a file or a link in it, so a path in it is safe to bind and
//! to unlink). A trace holds `<target pid>.lock` (flock, with its own pid inside) for as long as it runs:
//! that is how a second tracer of the same process is refused and how a socket left by a killed tracer is
//! known to be stale and removed, at the next start. `mark` passes over sockets nobody listens on.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use tokio::{io::AsyncWriteExt, net::UnixListener, sync::mpsc};

use super::{CHUNK, LineCutter, MAX_LINE};
use crate::collector::SentLine;

const DIR: &str = "/run/dispatch-leaktrace";

fn socket_name(target_pid: u32) -> String {
    format!("{target_pid}.sock")
}

fn lock_name(target_pid: u32) -> String {
    format!("{target_pid}.lock")
}

fn socket_path(target_pid: u32) -> PathBuf {
    Path::new(DIR).join(socket_name(target_pid))
}

/// The directory of the sockets, opened and verified.
struct RunDir {
    fd: File,
}

impl RunDir {
    /// Opens /run/dispatch-leaktrace, creating it (root's, 0755) when it is missing.
    fn open() -> Result<Self> {
        Self::open_in(Path::new(DIR).parent().unwrap_or(Path::new("/")), "dispatch-leaktrace")
    }

    fn open_in(parent: &Path, name: &str) -> Result<Self> {
        let parent_fd = rustix::fs::open(parent, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open {}", parent.display()))?;
        check_root_only(&rustix::fs::fstat(&parent_fd)?, parent)?;
        let path = parent.join(name);
        match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {
                // Whatever the umask: `mark` from a sudo user must reach its socket.
                rustix::fs::chmodat(&parent_fd, name, Mode::from_raw_mode(0o755), AtFlags::empty())?;
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(error) => {
                return Err(io::Error::from(error)).with_context(|| format!("cannot create {}", path.display()));
            }
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&parent_fd, name, flags, Mode::empty()).map_err(|error| match error {
            rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => {
                anyhow::anyhow!("{} is not a directory (a link?): remove it, as root, and start again", path.display())
            }
            error => anyhow::anyhow!("cannot open {}: {error}", path.display()),
        })?;
        check_root_only(&rustix::fs::fstat(&fd)?, &path)?;
        Ok(Self { fd: File::from(fd) })
    }

    /// What is at `name` in the directory (not following a link).
    fn kind(&self, name: &str) -> Option<FileType> {
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(FileType::from_raw_mode(stat.st_mode))
    }

    fn remove(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
    }

    /// The `<pid>` of every `<pid>.sock` and `<pid>.lock` in it.
    fn traced_pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(DIR) else { return Vec::new() };
        let mut pids: Vec<u32> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".sock").or_else(|| name.strip_suffix(".lock"))?.parse().ok()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// Root's, and no one else may write in it.
fn check_root_only(stat: &rustix::fs::Stat, path: &Path) -> Result<()> {
    let path = path.display();
    if stat.st_uid != 0 {
        bail!("{path} belongs to uid {}, not root: remove it, as root, and start again", stat.st_uid);
    }
    if stat.st_mode & 0o022 != 0 {
        bail!("{path} is writable by others (mode {:o}): make it 0755 (chmod 755 {path})", stat.st_mode & 0o7777);
    }
    Ok(())
}

/// This process traces `target_pid`: no other dispatch-leaktrace may, while this is held.
pub struct Claim {
    dir: RunDir,
    /// Holds the flock; None when this process held the claim already.
    lock: Option<File>,
    target_pid: u32,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.lock.is_some() {
            // While still locked: a tracer that opened this file meanwhile sees it is no longer there.
            self.dir.remove(&lock_name(self.target_pid));
        }
    }
}

enum Taken {
    Held(File),
    /// By the tracer of this pid.
    Busy(u32),
}

impl RunDir {
    /// Takes `<pid>.lock` without waiting: held, or who holds it.
    fn take_lock(&self, target_pid: u32, create: bool) -> io::Result<Taken> {
        let name = lock_name(target_pid);
        loop {
            let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            if create {
                flags |= OFlags::CREATE;
            }
            let file = File::from(rustix::fs::openat(&self.fd, name.as_str(), flags, Mode::from_raw_mode(0o644))?);
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut text = String::new();
                    let _ = (&file).take(32).read_to_string(&mut text);
                    return Ok(Taken::Busy(text.trim().parse().unwrap_or(0)));
                }
                Err(error) => return Err(error.into()),
            }
            // The holder before us may have removed it as it ended: then it is not the lock any more.
            let ours = rustix::fs::fstat(&file)?;
            match rustix::fs::statat(&self.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(now) if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino) => return Ok(Taken::Held(file)),
                Ok(_) => continue,
                Err(rustix::io::Errno::NOENT) if create => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Claims `target_pid` for this process: an error (one line) when another dispatch-leaktrace traces it.
/// `None` when the directory cannot be used (the control socket will say why).
pub fn claim(target_pid: u32) -> Result<Option<Claim>> {
    let Ok(dir) = RunDir::open() else { return Ok(None) };
    // A tracer that is cleaning up a dead one's files holds the lock for a moment: wait that out.
    for _ in 0..50 {
        match dir.take_lock(target_pid, true) {
            Ok(Taken::Held(mut lock)) => {
                lock.set_len(0)?;
                write!(lock, "{}", std::process::id())?;
                return Ok(Some(Claim { dir, lock: Some(lock), target_pid }));
            }
            Ok(Taken::Busy(holder)) if holder == std::process::id() => {
                return Ok(Some(Claim { dir, lock: None, target_pid }));
            }
            Ok(Taken::Busy(holder)) if holder != 0 && Path::new(&format!("/proc/{holder}")).exists() => {
                bail!(
                    "pid {target_pid} is already being traced by dispatch-leaktrace (pid {holder}): stop that one \
                     first, or send it markers with `dispatch-leaktrace mark --pid {target_pid} LABEL`"
                );
            }
            Ok(Taken::Busy(_)) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return Ok(None),
        }
    }
    bail!("pid {target_pid} is already being traced by another dispatch-leaktrace");
}

/// The listening socket; removed when dropped, before the claim it stands on.
pub struct ControlSocket {
    claim: Claim,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.claim.dir.remove(&socket_name(self.claim.target_pid));
    }
}

/// Listens for markers about `target_pid` on the current tokio runtime. Under sudo, the invoking user may
/// send them too. Sockets left by tracers that are gone are removed first.
pub fn listen(target_pid: u32, sender: mpsc::UnboundedSender<SentLine>) -> Result<ControlSocket> {
    let Some(claim) = claim(target_pid)? else {
        // Say why the directory cannot be used.
        RunDir::open()?;
        bail!("cannot use {DIR}");
    };
    remove_stale_sockets(&claim.dir, target_pid);
    let name = socket_name(target_pid);
    match claim.dir.kind(&name) {
        // Ours to replace: the claim says no live tracer of this pid made it.
        Some(FileType::Socket) => claim.dir.remove(&name),
        Some(other) => bail!("{DIR}/{name} is a {other:?}, not a socket: remove it, as root"),
        None => {}
    }
    // The directory was verified root's and closed to others: the path cannot lead anywhere else.
    let path = socket_path(target_pid);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let socket = ControlSocket { claim };
    let dir = &socket.claim.dir.fd;
    rustix::fs::chmodat(dir, name.as_str(), Mode::from_raw_mode(0o600), AtFlags::empty())?;
    if let (Ok(uid), Ok(gid)) = (std::env::var("SUDO_UID"), std::env::var("SUDO_GID")) {
        if let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            let _ = rustix::fs::chownat(dir, name.as_str(), Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW);
        }
    }
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, sender.clone()));
        }
    });
    Ok(socket)
}

/// One client: each line it sends is a marker, acknowledged with `ok`.
async fn serve(stream: tokio::net::UnixStream, sender: mpsc::UnboundedSender<SentLine>) {
    use tokio::io::AsyncReadExt;
    let (mut reader, mut writer) = stream.into_split();
    let mut cutter = LineCutter::new("a `mark` client");
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let mut lines = 0;
        cutter.feed(&chunk[..read], |line| {
            let _ = sender.send(SentLine::now(line));
            lines += 1;
        });
        for _ in 0..lines {
            if writer.write_all(b"ok\n").await.is_err() {
                return;
            }
        }
    }
}

/// Removes the sockets and locks of tracers that are gone: their lock is free (or, for a socket from a
/// tracer before locks, nothing listens on it).
fn remove_stale_sockets(dir: &RunDir, own_pid: u32) {
    for pid in dir.traced_pids().into_iter().filter(|pid| *pid != own_pid) {
        match dir.take_lock(pid, false) {
            Ok(Taken::Held(_lock)) => {
                dir.remove(&socket_name(pid));
                dir.remove(&lock_name(pid));
            }
            Ok(Taken::Busy(_)) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let refused = UnixStream::connect(socket_path(pid))
                    .is_err_and(|error| error.kind() == io::ErrorKind::ConnectionRefused);
                if refused && dir.kind(&socket_name(pid)) == Some(FileType::Socket) {
                    dir.remove(&socket_name(pid));
                }
            }
            Err(_) => {}
        }
    }
}

const MARK_USAGE: &str = "usage: dispatch-leaktrace mark [--pid PID] LABEL...
Puts LABEL (the words joined by spaces, one line of at most 4096 bytes) in the running trace of PID as a
marker, or in the only trace running when --pid is not given. A label that starts with - goes after --.";

/// `dispatch-leaktrace mark [--pid PID] LABEL...`: sends LABEL to the trace of PID, or to the only trace
/// running.
pub fn mark(args: &[String]) -> Result<()> {
    let Some(MarkArgs { pid, label }) = parse_mark_args(args)? else {
        println!("{MARK_USAGE}");
        return Ok(());
    };
    let (mut stream, path) = match pid {
        Some(pid) => {
            let path = socket_path(pid);
            let stream = UnixStream::connect(&path).map_err(|error| {
                anyhow::anyhow!(
                    "no trace is listening on {} ({error}): is dispatch-leaktrace running for that pid?",
                    path.display()
                )
            })?;
            (stream, path)
        }
        None => only_running_trace()?,
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(stream, "{label}").with_context(|| format!("cannot send the marker to {}", path.display()))?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    if reply.trim() != "ok" {
        bail!("the trace did not take the marker");
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct MarkArgs {
    pid: Option<u32>,
    label: String,
}

/// `None` for --help.
fn parse_mark_args(args: &[String]) -> Result<Option<MarkArgs>> {
    let mut pid = None;
    let mut words: Vec<&str> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--pid" | "-p" => {
                let value = rest.next().context("--pid needs the pid of the traced process")?;
                pid = Some(parse_pid(value)?);
            }
            "--" => {
                words.extend(rest.by_ref().map(String::as_str));
            }
            option if option.starts_with("--pid=") => pid = Some(parse_pid(&option["--pid=".len()..])?),
            option if option.starts_with('-') && words.is_empty() => {
                bail!("mark: unknown option {option} (a label that starts with - goes after --; see mark --help)")
            }
            word => words.push(word),
        }
    }
    let label = words.join(" ");
    if label.trim().is_empty() {
        bail!("mark needs a label: dispatch-leaktrace mark [--pid PID] LABEL");
    }
    if label.contains(['\n', '\r']) {
        bail!("a marker label is one line");
    }
    if label.len() > MAX_LINE {
        bail!("a marker label is at most {MAX_LINE} bytes; this one is {}", label.len());
    }
    Ok(Some(MarkArgs { pid, label }))
}

fn parse_pid(text: &str) -> Result<u32> {
    text.parse::<u32>().ok().filter(|pid| *pid > 0).with_context(|| format!("`{text}` is not a pid"))
}

/// A connection to the one trace listening: sockets nobody listens on (left by a tracer that was killed)
/// are passed over.
fn only_running_trace() -> Result<(UnixStream, PathBuf)> {
    let mut live = Vec::new();
    let mut forbidden = 0;
    let mut pids: Vec<u32> = std::fs::read_dir(DIR)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".sock")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    for pid in pids {
        let path = socket_path(pid);
        match UnixStream::connect(&path) {
            Ok(stream) => live.push((pid, stream, path)),
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => forbidden += 1,
            Err(_) => {}
        }
    }
    match live.len() {
        1 => {
            let (_, stream, path) = live.remove(0);
            Ok((stream, path))
        }
        0 if forbidden > 0 => bail!(
            "a trace is running, but its socket in {DIR} is not yours: run mark as root, or as the user who \
             started the trace with sudo"
        ),
        0 => bail!("no dispatch-leaktrace is running (no trace listens in {DIR}); start one, or give --pid"),
        _ => {
            let pids: Vec<String> = live.iter().map(|(pid, _, _)| pid.to_string()).collect();
            bail!("several traces are running (of pids {}): give --pid of the traced process", pids.join(", "))
        }
    }
}

/// For the tests: the directory's checks on any directory.
#[cfg(test)]
fn open_dir_for_test(parent: &Path, name: &str) -> Result<()> {
    RunDir::open_in(parent, name).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn mark_arguments() {
        let parsed = |words: &[&str]| parse_mark_args(&args(words));
        assert_eq!(parsed(&["--help"]).unwrap(), None);
        assert_eq!(parsed(&["deploy", "--help"]).unwrap(), None);
        assert_eq!(
            parsed(&["--pid", "42", "turn", "start"]).unwrap(),
            Some(MarkArgs { pid: Some(42), label: "turn start".into() })
        );
        assert_eq!(parsed(&["--pid=7", "x"]).unwrap(), Some(MarkArgs { pid: Some(7), label: "x".into() }));
        assert_eq!(parsed(&["--", "-5", "degrees"]).unwrap(), Some(MarkArgs { pid: None, label: "-5 degrees".into() }));
        for (words, error) in [
            (&[][..], "mark needs a label"),
            (&[""][..], "mark needs a label"),
            (&["--pid", "42"][..], "mark needs a label"),
            (&["--pid"][..], "--pid needs"),
            (&["--pid", "x", "a"][..], "`x` is not a pid"),
            (&["--lable", "a"][..], "unknown option --lable"),
            (&["a\nb"][..], "one line"),
        ] {
            let message = parsed(words).unwrap_err().to_string();
            assert!(message.contains(error), "{words:?}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let long = "x".repeat(MAX_LINE + 1);
        assert!(parsed(&[&long]).unwrap_err().to_string().contains("at most 4096 bytes; this one is 4097"));
        assert!(parsed(&[&long[1..]]).is_ok());
    }

    #[test]
    fn the_socket_directory_must_be_roots_and_closed_to_others() {
        let parent = std::env::temp_dir().join(format!("leaktrace-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent).unwrap();
        let set_mode = |path: &Path, mode| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
        };
        set_mode(&parent, 0o755);
        // Made when missing, 0755 whatever the umask.
        open_dir_for_test(&parent, "made").unwrap();
        let made = std::fs::metadata(parent.join("made")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&made.permissions()) & 0o777, 0o755);
        // A link in its place, even to a good directory, is refused.
        std::os::unix::fs::symlink(parent.join("made"), parent.join("link")).unwrap();
        assert!(open_dir_for_test(&parent, "link").unwrap_err().to_string().contains("not a directory"));
        // Writable by others, or not root's.
        std::fs::create_dir(parent.join("open")).unwrap();
        set_mode(&parent.join("open"), 0o777);
        assert!(open_dir_for_test(&parent, "open").unwrap_err().to_string().contains("writable by others"));
        std::fs::create_dir(parent.join("theirs")).unwrap();
        std::os::unix::fs::chown(parent.join("theirs"), Some(65534), Some(65534)).unwrap();
        assert!(open_dir_for_test(&parent, "theirs").unwrap_err().to_string().contains("belongs to uid 65534"));
        // In a parent others may write to, nothing is trusted.
        set_mode(&parent, 0o1777);
        assert!(open_dir_for_test(&parent, "made").unwrap_err().to_string().contains("writable by others"));
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
