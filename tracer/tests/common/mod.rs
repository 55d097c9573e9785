//! Helpers for the tests that run the real tracer against real processes on the real kernel. They need
//! root (CI runs them as root).
#![allow(dead_code)]

pub mod bun;
pub mod svg;
pub mod user;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    thread,
    time::Duration,
};

use serde_json::Value;

pub const TRACER: &str = env!("CARGO_BIN_EXE_dispatch-leaktrace");
pub const PAGE: u64 = 4096;
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Compiles `tests/fixtures/<name>.c` once per test binary: no optimisation (every function keeps its
/// call site), frame pointers on.
pub fn fixture(name: &str) -> PathBuf {
    compile(name, &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.c")))
}

/// Compiles a C source once per test binary (see [`fixture`]).
pub fn compile(name: &str, source: &Path) -> PathBuf {
    compile_with(name, source, "cc", &[])
}

/// Compiles a source with `compiler` and extra flags, once per test binary.
pub fn compile_with(name: &str, source: &Path, compiler: &str, flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let binary = dir.join(name);
    if !built.iter().any(|b| b == name) {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(compiler)
            .args(["-O0", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-pthread"])
            .args(flags)
            .arg("-o")
            .arg(&binary)
            .arg(source)
            .status()
            .expect("cc runs");
        assert!(status.success(), "cannot compile {}", source.display());
        built.push(name.to_string());
    }
    binary
}

/// A fresh, empty folder for one test's output.
pub fn output_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("out").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Lines of a child's output, read on a thread so the child never blocks on a full pipe.
pub struct Lines {
    receiver: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    pub fn new(stream: impl std::io::Read + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { receiver, seen: Vec::new() }
    }

    /// Waits for a line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            match self.receiver.recv_timeout(LINE_TIMEOUT) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line containing {needle:?} within {LINE_TIMEOUT:?}; saw {:?}", self.seen),
            }
        }
    }

    /// The lines read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Every line, once the stream has ended.
    pub fn all(mut self) -> Vec<String> {
        self.read_to_end().to_vec()
    }

    /// Reads to the end of the stream; every line.
    pub fn read_to_end(&mut self) -> &[String] {
        while let Ok(line) = self.receiver.recv_timeout(LINE_TIMEOUT) {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// A running process with its stdin open and its stdout and stderr read line by line.
pub struct Running {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        Self { stdin: child.stdin.take(), child, stdout, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The fixture's ground truth lines "truth SITE BYTES COUNT", one per site, in the order of `sites`.
    pub fn read_truth(&mut self, sites: &[&str]) -> Vec<(String, u64, u64)> {
        sites
            .iter()
            .map(|site| {
                let line = self.stdout.wait_for(&format!("truth {site}"));
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields[1].to_string(), fields[2].parse().unwrap(), fields[3].parse().unwrap())
            })
            .collect()
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// Asks the tracer for a snapshot (SIGUSR1) and waits until it is written: every event the kernel
    /// sent before has then been counted. Returns the snapshot's folder.
    pub fn snapshot(&mut self) -> PathBuf {
        self.signal(libc::SIGUSR1);
        let line = self.stderr.wait_for("snapshot written to ");
        self.stderr.seen.retain(|l| l != &line);
        // The line ends with the time taken: "... written to DIR in 0.13 s".
        let folder = line.split("snapshot written to ").nth(1).unwrap();
        PathBuf::from(folder.rsplit_once(" in ").map_or(folder, |(folder, _)| folder))
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.close_stdin();
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tracer, started with `args`, waited until it says it is tracing.
pub fn start_tracer(args: &[&str]) -> Running {
    start_tracer_with_env(args, &[])
}

/// [`start_tracer`] with variables added to the tracer's environment.
pub fn start_tracer_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut tracer = Running::spawn(Command::new(TRACER).args(args).envs(env.iter().copied()));
    tracer.stderr.wait_for("tracing pid");
    tracer
}

/// Traces `program wait` by pid with `extra` options: lets it run to its "done", takes a snapshot while it
/// still lives (so that the tracer has caught up), lets it exit, and returns the report. Every page and
/// block is traced (`--overhead off`) unless `extra` says `--overhead`: the fixtures' ground truth is exact.
pub fn trace_waiting_fixture(test: &str, program: &Path, extra: &[&str]) -> Report {
    trace_waiting_fixture_with_env(test, program, extra, &[])
}

/// [`trace_waiting_fixture`] with variables added to the tracer's environment.
pub fn trace_waiting_fixture_with_env(test: &str, program: &Path, extra: &[&str], env: &[(&str, &str)]) -> Report {
    let (mut target, tracer, out) = start_waiting_fixture_with_env(test, program, extra, env);
    target.send_line("go");
    finish_waiting_fixture(target, tracer, &out)
}

/// Starts `program wait` and the tracer on it by pid with `extra` options (`--overhead off` unless `extra`
/// says `--overhead`), for a test that drives the fixture itself: the fixture, the tracer and the output
/// folder. The fixture waits for its first line.
pub fn start_waiting_fixture(test: &str, program: &Path, extra: &[&str]) -> (Running, Running, PathBuf) {
    start_waiting_fixture_with_env(test, program, extra, &[])
}

fn start_waiting_fixture_with_env(
    test: &str,
    program: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Running, Running, PathBuf) {
    let out = output_dir(test);
    let target = Running::spawn(Command::new(program).arg("wait"));
    let pid = target.pid().to_string();
    let mut args = vec!["-o", out.to_str().unwrap(), "--pid", &pid];
    args.extend_from_slice(extra);
    if !extra.contains(&"--overhead") {
        args.extend_from_slice(&["--overhead", "off"]);
    }
    let tracer = start_tracer_with_env(&args, env);
    (target, tracer, out)
}

/// Lets a fixture that follows the "wait" protocol run to its "done", takes a snapshot while it still
/// lives (so that the tracer has caught up), lets it exit, and returns the tracer's report.
pub fn finish_waiting_fixture(mut target: Running, mut tracer: Running, out: &Path) -> Report {
    target.stdout.wait_for("done");
    tracer.snapshot();
    target.close_stdin();
    assert!(target.wait().success(), "the target must survive being traced");
    assert!(tracer.wait().success());
    Report::load(out)
}

/// Launches `command` under the tracer with `options` and `-o out`, waits for it to end, requires that the
/// tracer succeeded, and returns its report.
pub fn trace_launched(out: &Path, options: &[&str], command: &[&str]) -> Report {
    let status = Command::new(TRACER)
        .args(options)
        .args(["-o", out.to_str().unwrap(), "--"])
        .args(command)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    Report::load(out)
}

/// report.json, with lookups the tests share.
pub struct Report(pub Value);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub outstanding_bytes: u64,
    pub outstanding_allocs: u64,
    pub allocated_bytes: u64,
}

impl Report {
    pub fn load(dir: &Path) -> Self {
        let text = std::fs::read_to_string(dir.join("report.json"))
            .unwrap_or_else(|e| panic!("no report.json in {}: {e}", dir.display()));
        Self(serde_json::from_str(&text).expect("report.json is JSON"))
    }

    pub fn stacks(&self) -> &Vec<Value> {
        self.0["stacks"].as_array().expect("stacks is an array")
    }

    /// Figures summed over the stacks of `source` whose innermost reported frame is `leaf`.
    pub fn by_leaf(&self, source: &str, leaf: &str) -> Figures {
        let mut figures = Figures::default();
        for stack in self.stacks() {
            let frames = stack["frames"].as_array().unwrap();
            if stack["source"] == source && frames.last().and_then(Value::as_str) == Some(leaf) {
                figures.outstanding_bytes += stack["outstanding_bytes"].as_u64().unwrap();
                figures.outstanding_allocs += stack["outstanding_allocs"].as_u64().unwrap();
                figures.allocated_bytes += stack["allocated_bytes"].as_u64().unwrap();
            }
        }
        figures
    }

    /// Figures summed over the stacks of `source` whose innermost frame among `sites` is `site`: the call
    /// site, when library or runtime frames lie between it and the allocator. Rust frames carry their
    /// module path (`fixture::keep_vec`), matched on the last segment.
    pub fn by_site(&self, source: &str, site: &str, sites: &[&str]) -> Figures {
        let name_of = |frame: &str| -> Option<&str> {
            // C++ names carry their parameters: `new_kept()`, `cross_alloc(void*)`.
            let short = frame.split('(').next().unwrap_or(frame);
            let short = short.rsplit("::").next().unwrap_or(short);
            sites.iter().copied().find(|s| *s == short)
        };
        let mut figures = Figures::default();
        for stack in self.stacks() {
            let frames = stack["frames"].as_array().unwrap();
            let innermost = frames.iter().rev().filter_map(|f| name_of(f.as_str().unwrap())).next();
            if stack["source"] == source && innermost == Some(site) {
                figures.outstanding_bytes += stack["outstanding_bytes"].as_u64().unwrap();
                figures.outstanding_allocs += stack["outstanding_allocs"].as_u64().unwrap();
                figures.allocated_bytes += stack["allocated_bytes"].as_u64().unwrap();
            }
        }
        figures
    }

    pub fn has_frame(&self, name: &str) -> bool {
        self.stacks().iter().any(|s| s["frames"].as_array().unwrap().iter().any(|f| f == name))
    }

    pub fn end_reason(&self) -> &str {
        self.0["end_reason"].as_str().unwrap()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.0["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
    }

    pub fn program_ids(&self) -> Vec<u64> {
        self.0["probes"].as_array().unwrap().iter().map(|p| p["program_id"].as_u64().unwrap()).collect()
    }
}

/// Every program the report says was attached is gone from the kernel.
pub fn assert_detached(report: &Report) {
    let ids = report.program_ids();
    assert!(!ids.is_empty(), "the report lists no probes");
    for id in ids {
        assert_ne!(id, 0, "a probe without a program id");
        let out = Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]).output().expect("bpftool runs");
        assert!(!out.status.success(), "program {id} is still loaded: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// `go tool pprof ARGS PROFILE`: (stdout, stderr).
pub fn go_pprof(args: &[&str], profile: &Path) -> (String, String) {
    let output = std::process::Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(profile)
        // Nowhere to look for binaries but the mappings' own paths, and no settings from a home folder.
        .env("PPROF_BINARY_PATH", "/nonexistent")
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("go tool pprof runs (apt install golang-go)");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(output.status.success(), "go tool pprof {args:?} failed: {stderr}");
    (stdout, stderr)
}
