//! The traced process: found by pid, or launched and held until every probe is attached.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::procfs::ProcessInfo;

/// A live process we trace, with a pidfd that becomes readable when it exits.
pub struct Target {
    pub info: ProcessInfo,
    pub pidfd: OwnedFd,
    /// We launched it, so we reap it and learn its exit status.
    pub is_child: bool,
}

/// How the target ended, when we know (only for a process we launched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl Target {
    /// An existing process (never the tracer itself: its own work would be traced into a loop).
    pub fn existing(pid: u32) -> Result<Self> {
        if pid == std::process::id() {
            bail!("cannot trace dispatch-leaktrace itself (pid {pid}): give the pid of the program to trace");
        }
        let pidfd = pidfd_open(pid).map_err(|error| match (error.raw_os_error(), thread_group_of(pid)) {
            // pidfd_open takes only a process: the id of another thread of one is refused (EINVAL or ENOENT).
            (_, Some(process)) if process != pid => {
                anyhow::anyhow!("{pid} is a thread of process {process}: give the process id, --pid {process}")
            }
            (Some(libc::ESRCH | libc::ENOENT), _) => {
                anyhow::anyhow!("no process with pid {pid}: check the pid (for example `pidof dispatch-server`)")
            }
            _ => anyhow::anyhow!("cannot open process {pid}: {error}"),
        })?;
        let info = ProcessInfo::read(pid).map_err(|error| match error.raw_os_error() {
            Some(libc::ENOENT) => anyhow::anyhow!(
                "process {pid} has no executable (a kernel thread, or it just exited): give the pid of a user process"
            ),
            Some(libc::EACCES | libc::EPERM) => denied_message(pid, &error),
            _ => anyhow::anyhow!("cannot read /proc/{pid}/exe or cmdline: {error}"),
        })?;
        Ok(Self { info, pidfd, is_child: false })
    }

    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    /// True once the process has exited (without blocking).
    pub fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0 && poll.revents & libc::POLLIN != 0
    }

    /// How the process ended, once it has exited: a child of ours is reaped; for another process the
    /// kernel tells through the pidfd once its parent has reaped it (Linux 6.15 on), which we wait for
    /// up to `patience` (systemd reaps at once). `None` when that cannot be learnt.
    pub fn exit_status(&self, patience: std::time::Duration) -> Option<ExitStatus> {
        if self.is_child {
            return self.reap();
        }
        let give_up = std::time::Instant::now() + patience;
        loop {
            match pidfd_exit_status(&self.pidfd) {
                Ok(Some(status)) => return Some(status),
                // An older kernel, which cannot tell.
                Err(_) => return None,
                Ok(None) if std::time::Instant::now() >= give_up => return None,
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    /// Reaps a child that has exited and returns how it ended. `None` for a process we did not launch.
    fn reap(&self) -> Option<ExitStatus> {
        if !self.is_child {
            return None;
        }
        let mut status = 0;
        // SAFETY: waiting on our own child; status is a valid out pointer.
        let pid = unsafe { libc::waitpid(self.pid() as i32, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return None;
        }
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
}

/// A forked child that has not run the command yet: it waits for [`HeldChild::release`].
pub struct HeldChild {
    pub pid: u32,
    command: String,
    /// The whole command line, for a process gone before /proc could be read.
    argv: Vec<String>,
    /// Writing a byte lets the child exec; closing it unwritten makes the child exit.
    go: Option<OwnedFd>,
    exec_error: OwnedFd,
}

impl HeldChild {
    /// Forks a child that will `execvp(command)` once released. Nothing of the command runs before that.
    pub fn spawn(command: &[String]) -> Result<Self> {
        let Some(program) = command.first() else { bail!("no command given after `--`") };
        // Before anything is forked, found or created: a command that cannot run is an error of its own.
        executable_path(program)?;
        let argv: Vec<CString> = command
            .iter()
            .map(|arg| CString::new(arg.as_bytes()))
            .collect::<Result<_, _>>()
            .context("the command contains a NUL byte")?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());

        let (go_read, go_write) = cloexec_pipe()?;
        let (error_read, error_write) = cloexec_pipe()?;
        // SAFETY: between fork and exec the child only calls async-signal-safe functions (close, read,
        // signal, execvp, write, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("cannot start {program}: fork failed: {}", io::Error::last_os_error());
        }
        if pid == 0 {
            unsafe {
                libc::close(go_write.as_raw_fd());
                libc::close(error_read.as_raw_fd());
                let mut byte = 0u8;
                let got = libc::read(go_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                if got != 1 {
                    libc::_exit(127); // the tracer gave up before attaching
                }
                // Rust ignores SIGPIPE; an exec keeps ignored signals ignored, so restore the default.
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
                let errno = *libc::__errno_location();
                libc::write(error_write.as_raw_fd(), (&errno as *const i32).cast(), 4);
                libc::_exit(127);
            }
        }
        drop(go_read);
        drop(error_write);
        Ok(Self {
            pid: pid as u32,
            command: program.clone(),
            argv: command.to_vec(),
            go: Some(go_write),
            exec_error: error_read,
        })
    }

    /// The file the command will execute, found on PATH as execvp would.
    pub fn program_path(&self) -> Result<PathBuf> {
        executable_path(&self.command)
    }

    /// Lets the child run the command, and waits until the exec has happened.
    pub fn release(mut self) -> Result<Target> {
        let pidfd = pidfd_open(self.pid).context("cannot watch the launched process")?;
        // cannot fail: `go` is set by `spawn` and taken only here (which consumes self) or on drop
        let go = self.go.take().expect("released once");
        // SAFETY: writing one byte from a valid buffer to our pipe.
        let written = unsafe { libc::write(go.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        drop(go);
        if written != 1 {
            bail!("cannot start {}: {}", self.command, io::Error::last_os_error());
        }
        let mut errno = 0i32;
        // SAFETY: reading at most 4 bytes into a valid i32. EOF (0) means the exec succeeded (CLOEXEC).
        let got = unsafe { libc::read(self.exec_error.as_raw_fd(), (&mut errno as *mut i32).cast(), 4) };
        if got == 4 {
            // SAFETY: reaping our own child, which has exited.
            unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0) };
            bail!("cannot run {}: {}", self.command, io::Error::from_raw_os_error(errno));
        }
        // A short-lived command may be gone already: then it is what we launched.
        let info = ProcessInfo::read(self.pid).or_else(|_| -> Result<ProcessInfo> {
            Ok(ProcessInfo { pid: self.pid, exe: self.program_path()?, cmdline: self.argv.clone() })
        })?;
        Ok(Target { info, pidfd, is_child: true })
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        // Dropped unreleased (an error before attaching): closing `go` makes the child exit without
        // running anything; reap it.
        if let Some(go) = self.go.take() {
            drop(go);
            // SAFETY: waiting on our own child, which exits at once.
            unsafe { libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0) };
        }
    }
}

/// The executable file `command` names, found on PATH as execvp would when it has no `/`: a regular file
/// the kernel would execute.
pub fn executable_path(command: &str) -> Result<PathBuf> {
    let is_executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let path =
            Path::new(command).canonicalize().map_err(|error| anyhow::anyhow!("cannot run {command}: {error}"))?;
        if !is_executable(&path) {
            bail!("cannot run {command}: not an executable file");
        }
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| anyhow::anyhow!("cannot run {command}: no executable of that name on PATH"))
}

/// The process a thread id belongs to (`Tgid` in /proc/TID/status), when it can be read.
fn thread_group_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("Tgid:")).and_then(|tgid| tgid.trim().parse().ok())
}

/// Why reading a process's /proc entries was refused: the kernel lets a reader see another user's
/// /proc/PID/exe only with CAP_SYS_PTRACE, and beyond that a security policy may refuse even root.
fn denied_message(pid: u32, error: &io::Error) -> anyhow::Error {
    if crate::privileges::has_sys_ptrace() {
        anyhow::anyhow!(
            "the kernel refused to show /proc/{pid}/exe ({error}) although dispatch-leaktrace has CAP_SYS_PTRACE: a \
             security policy protects process {pid} (Yama ptrace_scope 3, SELinux, a BPF LSM, or a sandbox); trace \
             another process or allow ptrace access to this one"
        )
    } else {
        anyhow::anyhow!(
            "cannot read /proc/{pid}/exe ({error}): dispatch-leaktrace runs without CAP_SYS_PTRACE, which reading \
             another user's process needs; run it with that capability (a container may drop it from root)"
        )
    }
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create a pipe: {}", io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The wait status of the process behind `pidfd`, from the kernel's pidfd information (PIDFD_GET_INFO
/// with PIDFD_INFO_EXIT, Linux 6.15 on): `Ok(None)` while it is not yet reaped, `Err` when the kernel
/// cannot tell.
fn pidfd_exit_status(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    /// `struct pidfd_info` as of its first version (64 bytes, linux/pidfd.h).
    #[repr(C)]
    #[derive(Default)]
    struct PidfdInfo {
        mask: u64,
        cgroupid: u64,
        ids: [u32; 11],
        exit_code: i32,
    }
    const PIDFD_INFO_EXIT: u64 = 1 << 3;
    // _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info)
    const PIDFD_GET_INFO: u64 = (3 << 30) | ((size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;
    let mut info = PidfdInfo { mask: PIDFD_INFO_EXIT, ..PidfdInfo::default() };
    // SAFETY: a valid pidfd, and a buffer of the size the request names.
    if unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if info.mask & PIDFD_INFO_EXIT == 0 {
        return Ok(None);
    }
    let status = info.exit_code;
    Ok(if libc::WIFSIGNALED(status) {
        Some(ExitStatus::Signal(libc::WTERMSIG(status)))
    } else {
        Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
    })
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
