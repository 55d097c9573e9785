//! Every way a trace ends writes the report and detaches every probe, and the target goes on unharmed.

mod common;

use std::process::Command;

use common::{Report, Running, assert_detached, fixture, output_dir, start_tracer};

fn waiting_fixture() -> Running {
    Running::spawn(Command::new(fixture("mappings")).arg("wait"))
}

#[test]
fn duration_ends_the_trace_and_the_target_runs_on() {
    let out = output_dir("duration_ends_the_trace_and_the_target_runs_on");
    let mut target = waiting_fixture();
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "-d", "1s", "--pid", &target.pid().to_string()]);
    assert!(tracer.wait().success());

    let report = Report::load(&out);
    assert_eq!(report.end_reason(), "duration");
    // -d is the time traced: it counts from when tracing began, not from before attaching.
    let at = |field: &str| humantime::parse_rfc3339(report.0[field].as_str().unwrap()).unwrap();
    let traced = at("ended_at").duration_since(at("started_at")).unwrap();
    assert!(traced >= std::time::Duration::from_millis(950), "traced {traced:?} of -d 1s");
    assert_detached(&report);
    assert!(report.0["totals"]["rss_bytes"].as_u64().unwrap() > 0, "the RSS of a live target is known");
    // Detached, the target still works.
    target.send_line("go");
    target.stdout.wait_for("done");
    assert!(target.wait().success());
}

#[test]
fn a_command_that_exits_at_once_still_gets_its_report() {
    // /bin/true may be gone before its /proc entry is read: the report names what was launched.
    for run in 0..3 {
        let out = output_dir(&format!("exits_at_once_{run}"));
        let report = common::trace_launched(&out, &["--no-alloc"], &["/bin/true"]);
        assert_eq!(report.end_reason(), "target-exit");
        assert_eq!(report.0["target_exit"]["code"], 0);
        assert_eq!(report.0["target"]["cmdline"][0], "/bin/true");
    }
}

#[test]
fn a_status_line_goes_to_a_log_and_none_with_quiet() {
    let mut target = waiting_fixture();
    let pid = target.pid().to_string();
    let mut lines = Vec::new();
    for quiet in [false, true] {
        let out = output_dir(&format!("status_quiet_{quiet}"));
        // The duration counts from the start, attaching included (a second or more on a loaded machine):
        // long enough for the line due a second into the trace, short of the next one, a minute later.
        let mut args = vec!["-o", out.to_str().unwrap(), "-d", "4s", "--pid", &pid];
        if quiet {
            args.push("--quiet");
        }
        let mut tracer = start_tracer(&args);
        assert!(tracer.wait().success());
        lines.push(
            tracer.stderr.read_to_end().iter().filter(|line| line.contains("events/s")).cloned().collect::<Vec<_>>(),
        );
    }
    // stderr is a pipe here: plain lines, the first one after a second.
    assert_eq!(lines[0].len(), 1, "{:?}", lines[0]);
    assert!(lines[0][0].contains(&format!("pid {pid} RSS ")), "{}", lines[0][0]);
    assert!(lines[1].is_empty(), "--quiet printed {:?}", lines[1]);
    target.send_line("go");
    target.stdout.wait_for("done");
    assert!(target.wait().success());
}

#[test]
fn sigint_and_sigterm_end_the_trace() {
    for (signal, name) in [(libc::SIGINT, "sigint"), (libc::SIGTERM, "sigterm")] {
        let out = output_dir(&format!("signal_{name}"));
        let mut target = waiting_fixture();
        let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string()]);
        tracer.signal(signal);
        assert!(tracer.wait().success(), "{name}");

        let report = Report::load(&out);
        assert_eq!(report.end_reason(), "signal", "{name}");
        assert_detached(&report);
        target.send_line("go");
        target.stdout.wait_for("done");
        assert!(target.wait().success());
    }
}

#[test]
fn default_output_folder_is_named_after_the_pid() {
    let cwd = output_dir("default_output_folder_is_named_after_the_pid");
    std::fs::create_dir_all(&cwd).unwrap();
    let target = waiting_fixture();
    let pid = target.pid().to_string();
    let mut tracer = Running::spawn(Command::new(common::TRACER).args(["-d", "1s", "--pid", &pid]).current_dir(&cwd));
    assert!(tracer.wait().success());
    let folders: Vec<String> =
        std::fs::read_dir(&cwd).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    let prefix = format!("leaktrace-{pid}-");
    assert!(folders[0].starts_with(&prefix) && folders[0].ends_with('Z'), "{folders:?}");
    Report::load(&cwd.join(&folders[0]));
}

#[test]
fn under_sudo_the_files_belong_to_the_invoking_user() {
    use std::os::unix::fs::MetadataExt;
    // Made in a folder of the user's: a folder made in one of root's stays root's (tests/output_safety.rs).
    let home = output_dir("under_sudo_the_files_belong_to_the_invoking_user");
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65533)).unwrap();
    let out = home.join("out");
    let target = waiting_fixture();
    let mut tracer = Running::spawn(
        Command::new(common::TRACER)
            .args(["-d", "1s", "-o", out.to_str().unwrap(), "--pid", &target.pid().to_string()])
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65533"),
    );
    assert!(tracer.wait().success());
    for name in ["", "report.json", "stacks.folded", "flamegraph.svg"] {
        let meta = std::fs::metadata(out.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65533), "{name}");
    }
}

#[test]
fn sigusr1_writes_a_snapshot_and_the_trace_goes_on() {
    let out = output_dir("sigusr1_writes_a_snapshot_and_the_trace_goes_on");
    let mut target = waiting_fixture();
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string()]);
    let before = tracer.snapshot();
    target.send_line("go");
    target.stdout.wait_for("done");
    let after = tracer.snapshot();
    target.close_stdin();
    assert!(target.wait().success());
    assert!(tracer.wait().success());

    assert!(before.starts_with(out.join("snapshots")) && before.ends_with_requested(), "{before:?}");
    let (before, after, end) = (Report::load(&before), Report::load(&after), Report::load(&out));
    assert!(before.0["end_reason"].is_null() && after.0["end_reason"].is_null());
    assert_eq!(end.end_reason(), "target-exit");
    assert_eq!(before.by_leaf("mmap", "keep_regions").outstanding_bytes, 0);
    assert_eq!(after.by_leaf("mmap", "keep_regions").outstanding_bytes, 15 * common::PAGE);
    assert_eq!(end.by_leaf("mmap", "keep_regions").outstanding_bytes, 15 * common::PAGE);
}

trait SnapshotName {
    fn ends_with_requested(&self) -> bool;
}

impl SnapshotName for std::path::PathBuf {
    fn ends_with_requested(&self) -> bool {
        self.file_name().unwrap().to_string_lossy().ends_with("Z-requested")
    }
}

#[test]
fn a_target_killed_by_sigsegv_ends_the_trace_as_a_crash_with_its_data() {
    for launched in [false, true] {
        let out = output_dir(&format!("crash_launched_{launched}"));
        let (mut target, mut tracer) = if launched {
            let mut tracer =
                start_tracer(&["-o", out.to_str().unwrap(), "--", fixture("mappings").to_str().unwrap(), "wait"]);
            tracer.send_line("go");
            (None, tracer)
        } else {
            let mut target = waiting_fixture();
            let tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string()]);
            target.send_line("go");
            (Some(target), tracer)
        };
        match &mut target {
            Some(target) => {
                target.stdout.wait_for("done");
            }
            None => {
                tracer.stdout.wait_for("done");
            }
        }
        // Let the tracer name the frames while the target lives, then crash it.
        tracer.snapshot();
        let pid = Report::load(&out.join("snapshots").read_dir().unwrap().next().unwrap().unwrap().path()).0["target"]
            ["pid"]
            .as_u64()
            .unwrap();
        // SAFETY: a signal to the fixture we started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSEGV) }, 0);
        assert!(tracer.wait().success());

        let report = Report::load(&out);
        assert_eq!(report.end_reason(), "target-crash", "launched: {launched}");
        assert_eq!(report.0["target_exit"]["signal"], libc::SIGSEGV);
        assert_eq!(report.0["target_exit"]["signal_name"], "SIGSEGV");
        assert!(report.0["target_exit"]["at"].is_string());
        // The data up to the crash, with its frames named.
        assert_eq!(report.by_leaf("mmap", "keep_regions").outstanding_bytes, 15 * common::PAGE);
        assert_detached(&report);
    }
}

/// Report folders of `dir` (checkpoints or snapshots), by name, without partial ones.
fn report_folders(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn checkpoints_keep_the_newest_and_survive_a_killed_tracer() {
    for (round, kill_after_ms) in [700u64, 1100, 1500].into_iter().enumerate() {
        let out = output_dir(&format!("checkpoints_{round}"));
        let target = waiting_fixture();
        let pid = target.pid().to_string();
        let mut tracer = start_tracer(&[
            "-o",
            out.to_str().unwrap(),
            "--pid",
            &pid,
            "--checkpoint",
            "150ms",
            "--keep",
            "2",
            "-i",
            "100ms",
        ]);
        std::thread::sleep(std::time::Duration::from_millis(kill_after_ms));
        // Killed at an arbitrary moment, likely in the middle of writing a checkpoint.
        tracer.signal(libc::SIGKILL);
        tracer.wait();

        let checkpoints = out.join("checkpoints");
        let names = report_folders(&checkpoints);
        assert!(!names.is_empty() && names.len() <= 3, "round {round}: {names:?}");
        for name in &names {
            let folder = checkpoints.join(name);
            let report = Report::load(&folder);
            assert!(report.0["end_reason"].is_null(), "a checkpoint is taken while the trace runs");
            for file in
                ["stacks.folded", "report.html", "flamegraph.svg", "growth.svg", "timeline.svg", "profile.pb.gz"]
            {
                assert!(folder.join(file).is_file(), "round {round}: {name}/{file} missing");
            }
        }
        // latest points at a complete checkpoint, the newest.
        let latest = std::fs::read_link(out.join("latest")).unwrap();
        assert_eq!(latest, std::path::Path::new("checkpoints").join(names.last().unwrap()), "round {round}");
        Report::load(&out.join("latest"));
    }
}

#[test]
fn the_newest_checkpoints_are_kept() {
    let out = output_dir("checkpoints_keep");
    let target = waiting_fixture();
    let mut tracer = start_tracer(&[
        "-o",
        out.to_str().unwrap(),
        "--pid",
        &target.pid().to_string(),
        "--checkpoint",
        "200ms",
        "--keep",
        "2",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    tracer.signal(libc::SIGINT);
    assert!(tracer.wait().success());
    let names = report_folders(&out.join("checkpoints"));
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0] < names[1]);
}

#[test]
fn a_snapshot_is_written_at_each_rss_multiple_crossed() {
    let out = output_dir("rss_threshold");
    let mut target = Running::spawn(Command::new(fixture("touches")).arg("wait"));
    let mut tracer =
        start_tracer(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string(), "--snapshot-at-rss", "1M"]);
    // The waiting fixture is already past 1 MiB: the first RSS sample writes the first snapshot.
    tracer.stderr.wait_for("rss-");
    target.send_line("go");
    target.stdout.wait_for("done");
    // The fixture's RSS grew by about 9 MiB: one more threshold crossed, seen at the next RSS sample.
    tracer.stderr.wait_for("rss-");
    std::thread::sleep(std::time::Duration::from_millis(600));
    tracer.signal(libc::SIGINT);
    assert!(tracer.wait().success());
    target.close_stdin();

    let names = report_folders(&out.join("snapshots"));
    let thresholds: Vec<u64> =
        names.iter().map(|n| n.rsplit("-rss-").next().unwrap().trim_end_matches('M').parse::<u64>().unwrap()).collect();
    assert!(thresholds.len() >= 2, "{names:?}");
    assert!(thresholds.windows(2).all(|w| w[0] < w[1]), "{thresholds:?}");
    for (name, threshold) in names.iter().zip(&thresholds) {
        let report = Report::load(&out.join("snapshots").join(name));
        assert!(report.0["totals"]["rss_bytes"].as_u64().unwrap() >= threshold << 20, "{name}");
    }
}

#[test]
fn a_flood_of_distinct_stacks_stays_within_the_memory_budget() {
    const BUDGET: u64 = 96 << 20;
    let report =
        common::trace_waiting_fixture("memory_budget", &fixture("flood"), &["--no-alloc", "--max-memory", "96M"]);
    let memory = &report.0["tracer"];
    assert_eq!(memory["budget_bytes"].as_u64(), Some(BUDGET));
    let peak = memory["peak_anonymous_rss_bytes"].as_u64().unwrap();
    assert!(peak > 0 && peak <= BUDGET, "peak {peak}");
    // The flood was real: more distinct stacks came than the budget could hold, and some were forgotten.
    assert!(memory["evicted_stacks"].as_u64().unwrap() > 0, "{memory}");
}

/// A target attached with --pid that is killed (SIGKILL) or exits: once its parent reaps it, the kernel
/// tells how it ended, and the report says so as for a launched one.
#[test]
fn an_attached_target_s_signal_or_exit_code_is_recorded() {
    for killed in [true, false] {
        let out = output_dir(&format!("attached_end_killed_{killed}"));
        let mut target = waiting_fixture();
        let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string()]);
        target.send_line("go");
        target.stdout.wait_for("done");
        if killed {
            target.signal(libc::SIGKILL);
        }
        // Its parent (this test) reaps it.
        target.wait();
        assert!(tracer.wait().success());
        let report = Report::load(&out);
        assert_eq!(report.end_reason(), "target-exit", "killed: {killed}");
        if killed {
            assert_eq!(report.0["target_exit"]["signal"], libc::SIGKILL, "{}", report.0["target_exit"]);
            assert_eq!(report.0["target_exit"]["signal_name"], "SIGKILL");
        } else {
            assert_eq!(report.0["target_exit"]["code"], 0, "{}", report.0["target_exit"]);
        }
        assert_detached(&report);
    }
}

/// A launched command starts at its exec: what our forked child did before it (restoring a signal, searching
/// PATH, in the tracer's own code) is not the target's. No exec is recorded for it, and no stack of the
/// tracer's code, which the target's maps cannot name, is in the report.
#[test]
fn a_launched_command_starts_at_its_exec() {
    let out = output_dir("a_launched_command_starts_at_its_exec");
    let report = common::trace_launched(&out, &["--quiet"], &["/bin/sleep", "0.3"]);
    assert_eq!(report.0["execs"].as_array().map_or(0, Vec::len), 0, "{}", report.0["execs"]);
    let unnamed: Vec<_> = report
        .stacks()
        .iter()
        .filter(|s| s["frames"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().starts_with("[unknown]")))
        .map(|s| s["frames"].clone())
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?}");
    assert!(report.stacks().iter().any(|s| s["source"] == "page-fault"), "the command's own faults are traced");
}

/// The tracer's exit status says whether the trace worked: a target that fails is recorded, not passed on.
#[test]
fn the_tracer_succeeds_when_its_target_fails() {
    let out = output_dir("the_tracer_succeeds_when_its_target_fails");
    let report = common::trace_launched(&out, &["--no-alloc"], &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(report.0["target_exit"]["code"], 3);
}

/// A command that cannot run is refused before anything is searched, probed or created: one line, no
/// allocator search of it, no output folder.
#[test]
fn a_command_that_cannot_run_is_refused_before_anything_is_made() {
    for (command, expected) in [
        ("/etc/passwd", "cannot run /etc/passwd: not an executable file"),
        ("/nonexistent/server", "cannot run /nonexistent/server: No such file or directory"),
        ("no-such-command-anywhere", "cannot run no-such-command-anywhere: no executable of that name on PATH"),
    ] {
        let out = output_dir(&format!("cannot_run_{}", command.replace('/', "_")));
        let result = Command::new(common::TRACER).args(["-o", out.to_str().unwrap(), "--", command]).output().unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{command}: one line: {stderr}");
        assert!(stderr.contains(expected), "{command}: {stderr}");
        assert!(!out.exists(), "{command}: no output folder is left behind");
    }
}

/// A run too short for the growth window to hold enough points judges nothing as flat: every suspect is
/// `too-short`, and the summary says what to do.
#[test]
fn a_run_shorter_than_the_interval_is_too_short_to_judge() {
    let out = output_dir("a_run_shorter_than_the_interval_is_too_short_to_judge");
    let mut target = waiting_fixture();
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string(), "-d", "2s"]);
    target.send_line("go");
    target.stdout.wait_for("done");
    assert!(tracer.wait().success());
    let summary = tracer.stdout.read_to_end().join("\n");
    assert!(summary.contains("too few points to judge growth") && summary.contains("-i, now every 10s"), "{summary}");
    let report = Report::load(&out);
    let suspects = report.0["suspects"].as_array().unwrap();
    assert!(!suspects.is_empty());
    assert!(suspects.iter().all(|s| s["verdict"] == "too-short"), "{suspects:#?}");
}
