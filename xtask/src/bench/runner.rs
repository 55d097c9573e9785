//! Processes: every one in a group of its own, killed on every way out (errors, timeouts, and Ctrl-C or
//! SIGTERM to the xtask itself); their output teed into logs.

use nix::{
    sys::signal::{SigHandler, Signal, kill, killpg},
    unistd::Pid,
};

use super::*;

/// Process groups alive right now (0: a free slot). Read by the signal handler, so plain atomics.
pub(super) static LIVE_GROUPS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

/// The signals that stop the xtask: Ctrl-C, `kill`, a closed terminal.
const FATAL_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Ctrl-C reaches only the terminal's foreground group, and our children are in groups of their own: on
/// SIGINT, SIGTERM or SIGHUP kill those groups, remove the floor's uprobe events (and restore tracing_on),
/// then die of the same signal. Only async-signal-safe calls in here (nix's are thin system calls).
extern "C" fn on_fatal_signal(signal_number: i32) {
    for slot in &LIVE_GROUPS {
        let group = slot.load(Ordering::SeqCst);
        if group > 0 {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }
    undo_floor_events();
    if let Ok(signal) = Signal::try_from(signal_number) {
        // SAFETY: restoring the default disposition is async-signal-safe; raised again, the signal ends the
        // xtask as it would have without this handler.
        unsafe {
            let _ = nix::sys::signal::signal(signal, SigHandler::SigDfl);
        }
        let _ = nix::sys::signal::raise(signal);
    }
}

pub(super) fn install_signal_handlers() {
    for signal in FATAL_SIGNALS {
        // SAFETY: the handler only makes async-signal-safe calls.
        unsafe {
            let _ = nix::sys::signal::signal(signal, SigHandler::Handler(on_fatal_signal));
        }
    }
}

/// A child process in its own process group. Dropping it kills the group if the child has not been seen to
/// exit: whatever it started (the target a tracer launched, bpftrace's `-c` command) goes too.
pub(super) struct Process {
    pub(super) name: String,
    pub(super) pid: u32,
    /// From the thread that waits for the child: how and when it ended.
    pub(super) ended: mpsc::Receiver<std::io::Result<(ExitStatus, Instant)>>,
    pub(super) status: Option<(ExitStatus, Instant)>,
    pub(super) stdout: Option<std::process::ChildStdout>,
    pub(super) stderr: Option<std::process::ChildStderr>,
}

impl Process {
    pub(super) fn spawn(name: &str, command: &mut Command) -> Result<Self> {
        command.process_group(0);
        let mut child = command.spawn().with_context(|| format!("cannot start {name} ({command:?})"))?;
        let pid = child.id();
        register_group(pid);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // A thread of its own waits, so that the exit time is exact and waits can time out.
        let (sender, ended) = mpsc::channel();
        thread::spawn(move || {
            let _ = sender.send(child.wait().map(|status| (status, Instant::now())));
        });
        Ok(Self { name: name.to_string(), pid, ended, status: None, stdout, stderr })
    }

    /// Waits for the exit; on timeout, kills the group and fails.
    pub(super) fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, Instant)> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        match self.ended.recv_timeout(timeout) {
            Ok(Ok(status)) => Ok(self.reaped(status)),
            Ok(Err(error)) => Err(anyhow!("cannot wait for {}: {error}", self.name)),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                bail!("{} (pid {}) did not finish within {} s: killed", self.name, self.pid, timeout.as_secs())
            }
            Err(RecvTimeoutError::Disconnected) => bail!("lost track of {}", self.name),
        }
    }

    /// The exit status if it has exited, without waiting.
    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Ok(status)) = self.ended.try_recv() {
                self.reaped(status);
            }
        }
        self.status.map(|(status, _)| status)
    }

    pub(super) fn reaped(&mut self, status: (ExitStatus, Instant)) -> (ExitStatus, Instant) {
        self.status = Some(status);
        unregister_group(self.pid);
        status
    }

    /// A signal to the process itself (not its group). Its pid is not reused before it is reaped.
    pub(super) fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid as i32), signal).with_context(|| format!("cannot signal {}", self.name))
    }

    pub(super) fn kill(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // The group we created for our unreaped child.
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        if let Ok(Ok(status)) = self.ended.recv_timeout(Duration::from_secs(10)) {
            self.reaped(status);
        }
    }

    pub(super) fn lines_of_stdout(&mut self, log: &Path) -> Result<mpsc::Receiver<String>> {
        let stream = self.stdout.take().ok_or_else(|| anyhow!("{}: stdout not piped", self.name))?;
        tee_lines(stream, log)
    }

    pub(super) fn lines_of_stderr(&mut self, log: &Path) -> Result<mpsc::Receiver<String>> {
        let stream = self.stderr.take().ok_or_else(|| anyhow!("{}: stderr not piped", self.name))?;
        tee_lines(stream, log)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) fn register_group(pid: u32) {
    let free = LIVE_GROUPS
        .iter()
        .find(|slot| slot.compare_exchange(0, pid as i32, Ordering::SeqCst, Ordering::SeqCst).is_ok());
    // The harness has at most a handful alive at once; more would be a bug here, not a reason to fail.
    debug_assert!(free.is_some(), "more live process groups than slots");
}

pub(super) fn unregister_group(pid: u32) {
    for slot in &LIVE_GROUPS {
        let _ = slot.compare_exchange(pid as i32, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Lines of a child's output, read on a thread (which keeps draining it, so the child never blocks on a
/// full pipe), each also appended to a log file.
pub(super) fn tee_lines(stream: impl Read + Send + 'static, log: &Path) -> Result<mpsc::Receiver<String>> {
    use std::io::Write as _;
    let mut file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            let _ = sender.send(line);
        }
    });
    Ok(receiver)
}

pub(super) fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(line),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("no line with {needle:?} within {} s", timeout.as_secs()),
            Err(RecvTimeoutError::Disconnected) => bail!("the output ended without a line with {needle:?}"),
        }
    }
}

pub(super) fn log_file(dir: &Path, name: &str) -> Result<File> {
    let path = dir.join(name);
    File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

/// An error for a child that failed: what happened and the last line of its log on the first line (the
/// line BENCHMARKS.md shows), then the log's last lines.
pub(super) fn failure(what: &str, log: &Path) -> anyhow::Error {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    match lines.last() {
        None => anyhow!("{what}; nothing in {}", log.display()),
        Some(last) => {
            let tail = lines[lines.len().saturating_sub(8)..].join("\n");
            anyhow!("{what}: {last}\n(the end of {}:)\n{tail}", log.display())
        }
    }
}
