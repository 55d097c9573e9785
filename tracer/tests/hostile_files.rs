//! Files and sockets that someone other than root controls: the target's user plants a FIFO or a link
//! where the tracer reads, an operator names a device or a FIFO, a writer sends a line of hundreds of MiB,
//! a tracer dies and leaves its socket. The trace must still end (on -d, SIGINT and SIGTERM), detach and
//! report, and the tracer must stay small.

mod common;

use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Report, Running, TRACER, assert_detached, output_dir, user::User};

/// How long a trace that must end may take to end, attaching and reports included, on a loaded machine.
const END_WITHIN: Duration = Duration::from_secs(40);
/// The tracer's own (anonymous) memory that no test here may exceed; it uses a few MiB.
const SMALL: u64 = 128 << 20;

/// The tracer with `args`, its address space limited so that a tracer that eats memory fails the test
/// instead of the machine.
fn tracer_command(args: &[&str]) -> Command {
    let mut command = Command::new(TRACER);
    command.args(args);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 4 << 30, rlim_max: 4 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

fn spawn_tracer(args: &[&str]) -> Running {
    Running::spawn(&mut tracer_command(args))
}

/// Waits for `child` to exit, at most `limit`; kills it (and fails) past that.
fn exits_within(running: &mut Running, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = running.child.kill();
            panic!("{what}: the tracer did not end within {limit:?}; stderr so far: {:?}", running.stderr.seen());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The most anonymous memory a process used while it ran (sampled every 20 ms).
struct MemoryWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl MemoryWatch {
    fn of(pid: u32) -> Self {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (peak_writer, stop_reader) = (peak.clone(), stop.clone());
        thread::spawn(move || {
            while !stop_reader.load(Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { break };
                let Some(kib) = status
                    .lines()
                    .find(|line| line.starts_with("RssAnon:"))
                    .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                else {
                    break;
                };
                peak_writer.fetch_max(kib * 1024, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// A folder in /tmp for one test, removed after.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("leaktrace-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes a path when dropped (a file the test planted outside its scratch folder).
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[derive(Clone, Copy, Debug)]
enum End {
    Duration,
    Interrupt,
    Terminate,
}

impl End {
    const ALL: [End; 3] = [End::Duration, End::Interrupt, End::Terminate];

    /// The options that make this end the trace: a short -d, or a long one that the signal cuts.
    fn duration(self) -> &'static str {
        match self {
            End::Duration => "2s",
            End::Interrupt | End::Terminate => "300s",
        }
    }

    /// Ends a trace started with [`End::duration`], and checks that it ended, reported and detached.
    fn end_and_check(self, tracer: Running, out: &Path) -> Running {
        self.end_after(tracer, out, None)
    }

    /// [`End::end_and_check`], a signal sent only once the tracer has said `line`.
    fn end_after(self, mut tracer: Running, out: &Path, line: Option<&str>) -> Running {
        tracer.stderr.wait_for("tracing pid");
        match (self, line) {
            (End::Duration, _) => {}
            (_, Some(line)) => drop(tracer.stderr.wait_for(line)),
            // Long enough for events to come and stacks to be named while it runs.
            (_, None) => thread::sleep(Duration::from_millis(1500)),
        }
        match self {
            End::Duration => {}
            End::Interrupt => tracer.signal(libc::SIGINT),
            End::Terminate => tracer.signal(libc::SIGTERM),
        }
        let status = exits_within(&mut tracer, END_WITHIN, &format!("{self:?}"));
        assert!(status.success(), "{self:?}: {status:?}; stderr {:?}", tracer.stderr.seen());
        let report = Report::load(out);
        let expected = match self {
            End::Duration => "duration",
            End::Interrupt | End::Terminate => "signal",
        };
        assert_eq!(report.end_reason(), expected);
        assert_detached(&report);
        tracer
    }
}

// ------------------------------------------------------------------------------------------------------
// Reading the target's files
// ------------------------------------------------------------------------------------------------------

#[test]
fn a_fifo_at_the_perf_map_does_not_stop_the_trace_from_ending() {
    let user = User::create("fifo");
    let target = user.sleeper();
    let pid = target.pid().to_string();
    let perf_map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let _planted = Planted(perf_map.clone());
    user.run(&["mkfifo", perf_map.to_str().unwrap()]);
    for end in End::ALL {
        let out = output_dir(&format!("perf_map_fifo_{end:?}"));
        let tracer = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", end.duration(), "--pid", &pid]);
        let mut tracer = end.end_and_check(tracer, &out);
        let stderr = tracer.stderr.read_to_end().join("\n");
        assert!(
            stderr.contains(&format!("perf-{pid}.map is not a regular file (it is a FIFO)")),
            "the FIFO is refused and said so: {stderr}"
        );
    }
}

#[test]
fn a_link_to_dev_zero_at_the_perf_map_is_refused_and_the_tracer_stays_small() {
    let user = User::create("zero");
    let target = user.sleeper();
    let pid = target.pid().to_string();
    let perf_map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let _planted = Planted(perf_map.clone());
    user.run(&["ln", "-s", "/dev/zero", perf_map.to_str().unwrap()]);
    let out = output_dir("perf_map_dev_zero");
    let mut tracer = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "3s", "--pid", &pid]);
    let memory = MemoryWatch::of(tracer.pid());
    let status = exits_within(&mut tracer, END_WITHIN, "a link to /dev/zero");
    assert!(status.success(), "{status:?}: {:?}", tracer.stderr.seen());
    assert!(memory.peak() < SMALL, "the tracer grew to {} MiB", memory.peak() >> 20);
    let stderr = tracer.stderr.read_to_end().join("\n");
    assert!(stderr.contains(&format!("perf-{pid}.map is not a regular file (it is a symbolic link)")), "{stderr}");
    assert_detached(&Report::load(&out));
}

/// The output of a tracer that must fail at once (within [`END_WITHIN`]).
fn fails_at_once(args: &[&str]) -> Output {
    let mut tracer = spawn_tracer(args);
    let status = exits_within(&mut tracer, END_WITHIN, &format!("{args:?}"));
    let stderr = tracer.stderr.read_to_end().join("\n");
    Output { status, stdout: Vec::new(), stderr: stderr.into_bytes() }
}

fn assert_one_line_error(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit status {:?}, stderr {stderr:?}", output.status);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr:?}");
    assert!(lines[0].starts_with("dispatch-leaktrace: error: "), "{stderr:?}");
    assert!(lines[0].contains(expected), "{expected:?} not in {stderr:?}");
}

#[test]
fn symbols_from_a_device_or_a_fifo_is_a_one_line_error_at_once() {
    let mut target = Running::spawn(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    let scratch = Scratch::new("symbols-from");
    let fifo = scratch.0.join("fifo");
    mkfifo(&fifo);
    for (path, kind) in [(Path::new("/dev/zero"), "a character device"), (fifo.as_path(), "a FIFO")] {
        let out = output_dir("symbols_from_not_a_file");
        let output = fails_at_once(&[
            "-o",
            out.to_str().unwrap(),
            "-d",
            "5s",
            "--pid",
            &pid,
            "--symbols-from",
            path.to_str().unwrap(),
        ]);
        assert_one_line_error(
            &output,
            &format!("--symbols-from: {} is not a regular file (it is {kind})", path.display()),
        );
    }
    let _ = target.child.kill();
}

/// A C program that allocates through a library of its user's, every few milliseconds, until killed.
const LIBRARY_SOURCE: &str = r#"
#include <stdlib.h>
void *volatile kept;
__attribute__((noinline)) void hostile_allocate(void) { free(kept); kept = malloc(1000); }
"#;
const PROGRAM_SOURCE: &str = r#"
#include <unistd.h>
void hostile_allocate(void);
int main(void) { for (;;) { hostile_allocate(); usleep(5000); } }
"#;

#[test]
fn a_fifo_in_place_of_a_mapped_library_does_not_stop_the_trace_from_ending() {
    let user = User::create("lib");
    let scratch = Scratch::new("library");
    let (library_c, program_c) = (scratch.0.join("hostile.c"), scratch.0.join("main.c"));
    std::fs::write(&library_c, LIBRARY_SOURCE).unwrap();
    std::fs::write(&program_c, PROGRAM_SOURCE).unwrap();
    let library = scratch.0.join("libhostile.so");
    let program = scratch.0.join("hostile");
    let cc = |args: &[&str]| assert!(Command::new("cc").args(args).status().unwrap().success());
    cc(&[
        "-O0",
        "-g",
        "-fno-omit-frame-pointer",
        "-shared",
        "-fPIC",
        "-o",
        library.to_str().unwrap(),
        library_c.to_str().unwrap(),
    ]);
    cc(&[
        "-O0",
        "-g",
        "-fno-omit-frame-pointer",
        "-Wl,-rpath,$ORIGIN",
        "-o",
        program.to_str().unwrap(),
        program_c.to_str().unwrap(),
        library.to_str().unwrap(),
    ]);
    let chown = Command::new("chown").args(["-R", &format!("{}:{}", user.uid, user.gid)]).arg(&scratch.0).status();
    assert!(chown.unwrap().success());

    let mut target = Running::spawn(&mut user.command(program.to_str().unwrap()));
    let pid = target.pid().to_string();
    // The library stays mapped; its path now leads to a FIFO.
    let maps = format!("/proc/{pid}/maps");
    let start = Instant::now();
    while !std::fs::read_to_string(&maps).unwrap_or_default().contains("libhostile.so") {
        assert!(start.elapsed() < Duration::from_secs(10), "the target never mapped its library");
        thread::sleep(Duration::from_millis(10));
    }
    user.run(&["rm", library.to_str().unwrap()]);
    user.run(&["mkfifo", library.to_str().unwrap()]);
    for end in End::ALL {
        let out = output_dir(&format!("library_fifo_{end:?}"));
        let tracer = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", end.duration(), "--pid", &pid]);
        // Before a signal, the frames were named (and the FIFO passed over); a short -d may end first.
        let refused = format!(
            "frames in {} are not named: {} is not a regular file (it is a FIFO)",
            library.display(),
            library.display()
        );
        end.end_after(tracer, &out, Some(&refused));
    }
    let _ = target.child.kill();
    let _ = target.child.wait();
}

// ------------------------------------------------------------------------------------------------------
// Markers: --markers-from and the control socket
// ------------------------------------------------------------------------------------------------------

const RUN_DIR: &str = "/run/dispatch-leaktrace";

/// Tests that start a tracer hold this shared; the one that counts the traces running holds it alone.
static TRACES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    TRACES.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    TRACES.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The labels of the markers in a report.json.
fn marker_labels(report: &Report) -> Vec<String> {
    report.0["markers"].as_array().unwrap().iter().map(|m| m["label"].as_str().unwrap().to_string()).collect()
}

/// Snapshots of a running tracer until one's report shows the marker `label`.
fn wait_for_marker(tracer: &mut Running, label: &str) {
    let start = Instant::now();
    loop {
        let snapshot = tracer.snapshot();
        if marker_labels(&Report::load(&snapshot)).iter().any(|l| l == label) {
            return;
        }
        assert!(start.elapsed() < END_WITHIN, "no marker {label:?} in the trace within {END_WITHIN:?}");
        thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until the tracer of `pid` listens (it says "tracing pid" just before).
fn wait_for_socket(pid: &str) -> PathBuf {
    let path = PathBuf::from(format!("{RUN_DIR}/{pid}.sock"));
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < END_WITHIN, "no control socket {} within {END_WITHIN:?}", path.display());
        thread::sleep(Duration::from_millis(20));
    }
    path
}

fn mark(args: &[&str]) -> Output {
    Command::new(TRACER).arg("mark").args(args).output().unwrap()
}

#[test]
fn markers_from_a_fifo_without_a_writer_do_not_stop_the_trace_from_ending() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    let scratch = Scratch::new("markers-fifo");
    let fifo = scratch.0.join("markers");
    mkfifo(&fifo);
    for end in End::ALL {
        let out = output_dir(&format!("markers_fifo_{end:?}"));
        let args = ["-o", out.to_str().unwrap(), "-d", end.duration(), "--pid", &pid];
        let tracer = spawn_tracer(&[&args[..], &["--markers-from", fifo.to_str().unwrap()]].concat());
        end.end_and_check(tracer, &out);
    }
}

#[test]
fn markers_from_a_fifo_come_from_each_writer_in_turn() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let scratch = Scratch::new("markers-writers");
    let fifo = scratch.0.join("markers");
    mkfifo(&fifo);
    let out = output_dir("markers_fifo_writers");
    let pid = target.pid().to_string();
    let mut tracer = spawn_tracer(&[
        "-o",
        out.to_str().unwrap(),
        "-d",
        "300s",
        "--pid",
        &pid,
        "--markers-from",
        fifo.to_str().unwrap(),
    ]);
    tracer.stderr.wait_for("tracing pid");
    for label in ["first writer", "second writer"] {
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        writeln!(writer, "{label}").unwrap();
        drop(writer);
        wait_for_marker(&mut tracer, label);
    }
    tracer.signal(libc::SIGINT);
    assert!(exits_within(&mut tracer, END_WITHIN, "markers from a FIFO").success());
}

#[test]
fn markers_from_a_silent_stdin_do_not_stop_the_trace_from_ending() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    for end in End::ALL {
        let out = output_dir(&format!("markers_stdin_{end:?}"));
        // The tracer's stdin is a pipe the test holds open and never writes.
        let tracer =
            spawn_tracer(&["-o", out.to_str().unwrap(), "-d", end.duration(), "--pid", &pid, "--markers-from", "-"]);
        end.end_and_check(tracer, &out);
    }
}

#[test]
fn markers_from_a_device_are_a_one_line_error() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let out = output_dir("markers_device");
    let output = fails_at_once(&[
        "-o",
        out.to_str().unwrap(),
        "-d",
        "5s",
        "--pid",
        &target.pid().to_string(),
        "--markers-from",
        "/dev/zero",
    ]);
    assert_one_line_error(&output, "--markers-from: /dev/zero is a character device: give a log file, a FIFO");
}

/// 256 MiB without a newline, then two short lines.
const HUGE: usize = 256 << 20;

fn write_huge_line(writer: &mut impl Write) {
    let block = vec![b'x'; 1 << 20];
    for _ in 0..HUGE / block.len() {
        writer.write_all(&block).unwrap();
    }
    writer.write_all(b"\nafter the huge line\n").unwrap();
    writer.flush().unwrap();
}

/// The huge line came as its first 4096 bytes, the line after it whole, and the tracer stayed small.
fn check_huge_line_was_cut(mut tracer: Running, memory: MemoryWatch, out: &Path) {
    wait_for_marker(&mut tracer, "after the huge line");
    tracer.signal(libc::SIGINT);
    assert!(exits_within(&mut tracer, END_WITHIN, "a huge marker line").success());
    assert!(memory.peak() < SMALL, "the tracer grew to {} MiB", memory.peak() >> 20);
    let report = Report::load(out);
    let labels = marker_labels(&report);
    let cut: Vec<usize> = labels.iter().filter(|l| l.starts_with('x')).map(String::len).collect();
    assert_eq!(cut, [4096], "one marker, cut at 4096 bytes");
    assert_eq!(report.counter("cut_marker_lines"), 1, "the cut is counted in report.json");
    let stderr = tracer.stderr.read_to_end().join("\n");
    assert!(stderr.contains("longer than 4096 bytes"), "the cut is told: {stderr}");
}

#[test]
fn a_huge_line_on_the_control_socket_is_cut_and_the_tracer_stays_small() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    let out = output_dir("huge_line_socket");
    let mut tracer = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "300s", "--pid", &pid]);
    tracer.stderr.wait_for("tracing pid");
    let memory = MemoryWatch::of(tracer.pid());
    let mut client = std::os::unix::net::UnixStream::connect(wait_for_socket(&pid)).unwrap();
    let replies = client.try_clone().unwrap();
    // The replies are read as they come, so that the tracer never waits on this client.
    let reader = thread::spawn(move || std::io::read_to_string(replies).unwrap_or_default());
    write_huge_line(&mut client);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(reader.join().unwrap(), "ok\nok\n", "one reply per line");
    check_huge_line_was_cut(tracer, memory, &out);
}

#[test]
fn a_huge_line_in_a_followed_file_is_cut_and_the_tracer_stays_small() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let scratch = Scratch::new("huge-file");
    let log = scratch.0.join("markers.log");
    std::fs::write(&log, "before the trace\n").unwrap();
    let out = output_dir("huge_line_file");
    let pid = target.pid().to_string();
    let mut tracer = spawn_tracer(&[
        "-o",
        out.to_str().unwrap(),
        "-d",
        "300s",
        "--pid",
        &pid,
        "--markers-from",
        log.to_str().unwrap(),
    ]);
    tracer.stderr.wait_for("tracing pid");
    let memory = MemoryWatch::of(tracer.pid());
    write_huge_line(&mut std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    check_huge_line_was_cut(tracer, memory, &out);
}

#[test]
fn a_huge_line_in_a_fifo_is_cut_and_the_tracer_stays_small() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let scratch = Scratch::new("huge-fifo");
    let fifo = scratch.0.join("markers");
    mkfifo(&fifo);
    let out = output_dir("huge_line_fifo");
    let pid = target.pid().to_string();
    let mut tracer = spawn_tracer(&[
        "-o",
        out.to_str().unwrap(),
        "-d",
        "300s",
        "--pid",
        &pid,
        "--markers-from",
        fifo.to_str().unwrap(),
    ]);
    tracer.stderr.wait_for("tracing pid");
    let memory = MemoryWatch::of(tracer.pid());
    write_huge_line(&mut std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    check_huge_line_was_cut(tracer, memory, &out);
}

// ------------------------------------------------------------------------------------------------------
// The control socket
// ------------------------------------------------------------------------------------------------------

fn assert_marked(output: &Output) {
    assert!(output.status.success(), "mark failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_killed_tracers_socket_is_cleaned_at_the_next_start_and_passed_over_by_mark() {
    let _alone = alone();
    let first_target = Running::spawn(Command::new("sleep").arg("60"));
    let first_pid = first_target.pid().to_string();
    let out = output_dir("stale_socket_killed");
    let mut killed = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "300s", "--pid", &first_pid]);
    killed.stderr.wait_for("tracing pid");
    let stale = wait_for_socket(&first_pid);
    killed.signal(libc::SIGKILL);
    killed.child.wait().unwrap();
    assert!(stale.exists(), "a killed tracer leaves its socket");
    let refused = mark(&["--pid", &first_pid, "to nobody"]);
    assert!(!refused.status.success());

    // A socket from a tracer that kept no lock (an older one), and a lock left by a tracer killed before it
    // listened: for pids above any pid_max, so that no live trace can own them.
    let unlocked = PathBuf::from(format!("{RUN_DIR}/4194901.sock"));
    drop(std::os::unix::net::UnixListener::bind(&unlocked).unwrap());
    let orphan_lock = PathBuf::from(format!("{RUN_DIR}/4194902.lock"));
    std::fs::write(&orphan_lock, "4194902").unwrap();
    let _planted = (Planted(unlocked.clone()), Planted(orphan_lock.clone()));

    // The next start, for another process, removes them all.
    let second_target = Running::spawn(Command::new("sleep").arg("60"));
    let second_pid = second_target.pid().to_string();
    let out = output_dir("stale_socket_next");
    let mut tracer = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "300s", "--pid", &second_pid]);
    tracer.stderr.wait_for("tracing pid");
    wait_for_socket(&second_pid);
    assert!(!stale.exists(), "the stale socket is removed at start");
    assert!(!PathBuf::from(format!("{RUN_DIR}/{first_pid}.lock")).exists(), "and its lock");
    assert!(!unlocked.exists() && !orphan_lock.exists(), "and the others left");
    // Without --pid, `mark` finds the one trace that listens (other test binaries' tracers may come and go
    // on a shared machine: they end within seconds).
    let start = Instant::now();
    loop {
        let output = mark(&["to the only trace"]);
        if output.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("several traces are running"), "{stderr}");
        assert!(start.elapsed() < END_WITHIN, "`mark` still finds several traces: {stderr}");
        thread::sleep(Duration::from_millis(500));
    }
    tracer.signal(libc::SIGINT);
    assert!(exits_within(&mut tracer, END_WITHIN, "after a stale socket").success());
    assert!(marker_labels(&Report::load(&out)).contains(&"to the only trace".to_string()));

    // The killed tracer's process can be traced again.
    let out = output_dir("stale_socket_again");
    let mut again = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "300s", "--pid", &first_pid]);
    again.stderr.wait_for("tracing pid");
    wait_for_socket(&first_pid);
    assert_marked(&mark(&["--pid", &first_pid, "traced again"]));
    again.signal(libc::SIGINT);
    assert!(exits_within(&mut again, END_WITHIN, "traced again").success());
    assert!(marker_labels(&Report::load(&out)).contains(&"traced again".to_string()));
}

#[test]
fn a_second_tracer_of_one_process_is_refused_and_leaves_the_first_alone() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    let out = output_dir("second_tracer_first");
    let mut first = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "300s", "--pid", &pid]);
    first.stderr.wait_for("tracing pid");
    wait_for_socket(&pid);
    let second_out = output_dir("second_tracer_second");
    let output = fails_at_once(&["-o", second_out.to_str().unwrap(), "-d", "3s", "--pid", &pid]);
    assert_one_line_error(
        &output,
        &format!("pid {pid} is already being traced by dispatch-leaktrace (pid {})", first.pid()),
    );
    assert_marked(&mark(&["--pid", &pid, "to the first"]));
    first.signal(libc::SIGINT);
    assert!(exits_within(&mut first, END_WITHIN, "the first tracer").success());
    let report = Report::load(&out);
    assert!(marker_labels(&report).contains(&"to the first".to_string()));
    assert_detached(&report);
}

#[test]
fn the_socket_directory_is_roots_and_closed_to_users() {
    let _traces = shared();
    let user = User::create("dir");
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    let out = output_dir("socket_directory");
    let mut tracer = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "300s", "--pid", &pid]);
    tracer.stderr.wait_for("tracing pid");
    wait_for_socket(&pid);
    let dir = std::fs::symlink_metadata(RUN_DIR).unwrap();
    assert!(dir.is_dir(), "{RUN_DIR} is a directory, not a link");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&dir), 0);
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&dir) & 0o022, 0, "nobody but root may write in it");
    // The socket is made 0600 just after bind (until then the umask's mode leaves it unwritable by others,
    // so no one else can connect either).
    let socket_mode = || {
        std::os::unix::fs::MetadataExt::mode(&std::fs::symlink_metadata(format!("{RUN_DIR}/{pid}.sock")).unwrap())
            & 0o777
    };
    let settled = std::time::Instant::now() + Duration::from_secs(5);
    while socket_mode() != 0o600 && std::time::Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(socket_mode(), 0o600);
    let planted = user.command("ln").args(["-s", "/etc/shadow", &format!("{RUN_DIR}/planted")]).output().unwrap();
    assert!(!planted.status.success(), "a user cannot put a link in {RUN_DIR}");
    let marked = user.command(TRACER).args(["mark", "--pid", &pid, "from a user"]).output().unwrap();
    assert!(!marked.status.success(), "a user may not mark a root's trace");
    tracer.signal(libc::SIGINT);
    assert!(exits_within(&mut tracer, END_WITHIN, "socket directory").success());
    assert!(!marker_labels(&Report::load(&out)).contains(&"from a user".to_string()));
}

#[test]
fn mark_help_empty_and_over_long_labels_are_not_sent() {
    let _traces = shared();
    let target = Running::spawn(Command::new("sleep").arg("60"));
    let pid = target.pid().to_string();
    let out = output_dir("mark_arguments");
    let mut tracer = spawn_tracer(&["-o", out.to_str().unwrap(), "-d", "300s", "--pid", &pid]);
    tracer.stderr.wait_for("tracing pid");
    wait_for_socket(&pid);
    let help = mark(&["--pid", &pid, "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: dispatch-leaktrace mark"));
    let long = "x".repeat(4097);
    for (label, error) in
        [("", "mark needs a label"), ("  ", "mark needs a label"), (long.as_str(), "at most 4096 bytes")]
    {
        assert_one_line_error(&mark(&["--pid", &pid, label]), error);
    }
    assert_marked(&mark(&["--pid", &pid, "a", "good", "one"]));
    tracer.signal(libc::SIGINT);
    assert!(exits_within(&mut tracer, END_WITHIN, "mark arguments").success());
    assert_eq!(marker_labels(&Report::load(&out)), ["a good one"]);
}
