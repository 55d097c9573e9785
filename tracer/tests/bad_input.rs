//! Bad input gets one line that says what is wrong and what to do, and a nonzero exit: never a panic.

mod common;

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::Path,
    process::{Command, Output},
};

use common::{Running, TRACER, fixture, output_dir, start_tracer};
use tracer_common::tracepoints::EXPECTED_FIELDS;

fn assert_one_line_error(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit status {:?}, stderr {stderr:?}", output.status);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr:?}");
    assert!(lines[0].starts_with("dispatch-leaktrace: error: "), "{stderr:?}");
    assert!(lines[0].contains(expected), "{expected:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr:?}");
}

fn run(args: &[&str]) -> Output {
    Command::new(TRACER).args(args).output().unwrap()
}

fn sleeper() -> Running {
    Running::spawn(Command::new(fixture("mappings")).arg("wait"))
}

#[test]
fn a_pid_that_does_not_exist() {
    let out = run(&["--pid", "2147483647", "-d", "1s"]);
    assert_one_line_error(&out, "no process with pid 2147483647");
}

#[test]
fn a_process_that_already_exited() {
    // A zombie: exited, not yet reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z ") {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = run(&["--pid", &pid.to_string(), "-d", "1s"]);
    assert_one_line_error(&out, &format!("process {pid}"));
    child.wait().unwrap();
}

#[test]
fn a_kernel_thread() {
    let out = run(&["--pid", "2", "-d", "1s"]);
    assert_one_line_error(&out, "process 2 has no executable");
}

#[test]
fn not_root() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", TRACER, "--pid", "1", "-d", "1s"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "needs root");
}

#[test]
fn an_output_folder_that_cannot_be_written() {
    let target = sleeper();
    let out = run(&["-o", "/proc/leaktrace-out", "--pid", &target.pid().to_string(), "-d", "1s"]);
    assert_one_line_error(&out, "cannot write the output folder /proc/leaktrace-out");
}

#[test]
fn a_command_that_cannot_run() {
    let out_dir = output_dir("a_command_that_cannot_run");
    let out = run(&["-o", out_dir.to_str().unwrap(), "--", "/nonexistent/server", "--port", "1"]);
    assert_one_line_error(&out, "cannot run /nonexistent/server: No such file or directory");
}

#[test]
fn arguments_that_make_no_sense() {
    let out = run(&["--pid", "1", "-d", "soon"]);
    assert_one_line_error(&out, "`soon` is not a duration");
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&run(&[]), "give a target: --pid PID, --exe PATH, --comm NAME, or -- CMD ARGS");
    assert_one_line_error(&run(&["--pid", "1", "--", "ls"]), "cannot be used with");
}

/// A tracefs whose format files hold exactly the fields the kernel programs read, from which `edit` may
/// remove or move some.
fn fake_tracefs(name: &str, edit: impl Fn(&str, &str, &mut usize) -> bool) -> std::path::PathBuf {
    let root = output_dir(name);
    for field in EXPECTED_FIELDS {
        let dir = root.join("events").join(field.category).join(field.event);
        std::fs::create_dir_all(&dir).unwrap();
        let mut offset = field.offset;
        if !edit(field.event, field.field, &mut offset) {
            continue;
        }
        let line =
            format!("\tfield:unsigned long {};\toffset:{offset};\tsize:{};\tsigned:0;\n", field.field, field.size);
        let path = dir.join("format");
        let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| format!("name: {}\nformat:\n", field.event));
        text.push_str(&line);
        std::fs::write(path, text).unwrap();
    }
    root
}

fn run_with_tracefs(tracefs: &Path) -> Output {
    let target = sleeper();
    Command::new(TRACER)
        .args(["--pid", &target.pid().to_string(), "-d", "1s", "-o"])
        .arg(tracefs.join("out"))
        .env("LEAKTRACE_TRACEFS", tracefs)
        .output()
        .unwrap()
}

#[test]
fn a_kernel_without_a_needed_tracepoint() {
    let tracefs = fake_tracefs("tracefs_missing_event", |event, _, _| event != "sys_enter_mremap");
    for entry in std::fs::read_dir(tracefs.join("events/syscalls")).unwrap() {
        let entry = entry.unwrap();
        if !entry.path().join("format").exists() {
            std::fs::remove_dir(entry.path()).unwrap();
        }
    }
    assert_one_line_error(&run_with_tracefs(&tracefs), "this kernel has no tracepoint syscalls/sys_enter_mremap");
}

#[test]
fn a_kernel_with_another_record_layout() {
    let tracefs = fake_tracefs("tracefs_moved_field", |event, field, offset| {
        if event == "sys_enter_munmap" && field == "len" {
            *offset += 8;
        }
        true
    });
    assert_one_line_error(&run_with_tracefs(&tracefs), "syscalls/sys_enter_munmap field `len` is at offset 32 size 8");
}

#[test]
fn tracefs_not_mounted_is_mounted_and_tracing_goes_on() {
    // In a mount namespace of its own, so the machine's tracefs stays as it is.
    let out = output_dir("tracefs_not_mounted");
    let target = sleeper();
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; \
         test -e /sys/kernel/tracing/events && {{ echo 'tracefs still mounted' >&2; exit 99; }}; \
         exec {TRACER} -d 1s -o {} --pid {}",
        out.display(),
        target.pid()
    );
    let result =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("mounted tracefs on /sys/kernel/tracing"), "{stderr}");
    common::Report::load(&out);
}

#[test]
fn help_and_version_succeed() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--pid"));
    assert!(run(&["--version"]).status.success());
    let _ = start_tracer; // shared helpers
}

/// A usage error: exit status 2, one line `dispatch-leaktrace: error: ...`, no trace of a panic.
fn assert_usage_error(output: &Output, args: &[&OsStr], expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected: {stderr:?}");
    assert!(lines[0].starts_with("dispatch-leaktrace: error: "), "{args:?}: {stderr:?}");
    assert!(lines[0].contains(expected), "{args:?}: {expected:?} not in {stderr:?}");
    for sign_of_a_panic in ["panicked", "RUST_BACKTRACE", "internal error", "overflow"] {
        assert!(!stderr.contains(sign_of_a_panic), "{args:?}: {stderr:?}");
    }
}

#[test]
fn hostile_values_are_usage_errors_not_panics() {
    let target = sleeper();
    let pid = target.pid().to_string();
    let out_dir = output_dir("hostile_values");
    // Each would have traced (or panicked): the target is real, and -d bounds a run that should not happen.
    let table: &[(&[&str], &str)] = &[
        (&["-d", "18446744073709551615s"], "too long: at most 100 years; leave out -d"),
        (&["--compare", "18446744073709551615s..end"], "too long: at most 100 years"),
        (&["--compare", "start..18446744073709551615s"], "too long"),
        (&["--warmup", "18446744073709551615s"], "too long"),
        (&["--min-age", "99999999999999999999d"], "too long"),
        (&["--checkpoint", "18446744073709551615s"], "too long"),
        (&["-i", "18446744073709551615s"], "too long"),
        (&["-i", "1ns"], "too short: at least 100ms"),
        (&["--checkpoint", "1ms"], "too short: at least 100ms"),
        (&["--snapshot-at-rss", "17179869184G"], "too large: at most 1024T"),
        (&["--max-memory", "17179869184G"], "too large: at most 1024T"),
        (&["--sample-bytes", "17179869184G"], "too large: at most 1024T"),
        (&["--sample-bytes", "18446744073709551616"], "too large"),
        (&["--sample-bytes", "2G"], "too large: at most 1G"),
        (&["--snapshot-at-rss", "1"], "too small: at least 1M"),
        (&["--max-memory", "1K"], "too small: at least 16M"),
        (&["--keep", "0"], "keep at least 1"),
        (&["--compare", "10h..5m"], "FROM must come before TO"),
        (&["--compare", "end..start"], "FROM must come before TO"),
        (
            &["--turn-start", "(", "--turn-end", "x"],
            "'--turn-start <REGEX>': not a valid regular expression: unclosed group",
        ),
        (&["--turn-start", "("], "--turn-start"),
        (&["--turn-start", "x"], "--turn-end <REGEX> is needed too"),
        (&["--sample-pages", "3"], "not a power of two"),
    ];
    for (extra, expected) in table {
        let mut args: Vec<&OsStr> = ["-o", out_dir.to_str().unwrap(), "--pid", &pid].map(OsStr::new).to_vec();
        if !extra.contains(&"-d") {
            args.extend([OsStr::new("-d"), OsStr::new("1s")]);
        }
        args.extend(extra.iter().map(OsStr::new));
        assert_usage_error(&Command::new(TRACER).args(&args).output().unwrap(), &args, expected);
    }
    // Nothing ran: no output folder.
    assert!(!out_dir.exists());

    let table: &[(&[&[u8]], &str)] = &[
        (&[], "give a target: --pid PID, --exe PATH, --comm NAME, or -- CMD ARGS"),
        (&[b"-d", b"5s"], "give a target"),
        (&[b"--pid", b"0"], "`0` is not a process id"),
        (&[b"--pid", b"4294967295"], "is not a process id"),
        (&[b"--pid", b"1", b"--pid", b"2"], "given twice"),
        (&[b"--pid", b"1", b"--", b"ls"], "give one target"),
        (&[b"--pdi", b"1"], "unknown option `--pdi`"),
        (&[b"./server", b"--port", b"1"], "put it after `--`"),
        (&[b"--pid", b"1", b"--turn-start", b"\xff(", b"--turn-end", b"x"], "not UTF-8"),
        (&[b"--pid\xff", b"1"], "--pid"),
    ];
    for (args, expected) in table {
        let args: Vec<&OsStr> = args.iter().map(|arg| OsStr::from_bytes(arg)).collect();
        assert_usage_error(&Command::new(TRACER).args(&args).output().unwrap(), &args, expected);
    }
}

#[test]
fn a_growth_window_the_trace_did_not_reach_is_said() {
    let out = output_dir("compare_after_the_end");
    let target = sleeper();
    let result = run(&[
        "-q",
        "-o",
        out.to_str().unwrap(),
        "--pid",
        &target.pid().to_string(),
        "-d",
        "2s",
        "--compare",
        "10h..20h",
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    // The length of the trace is in the message: the 2 s of -d, less what attaching took.
    let said = stderr
        .lines()
        .find(|line| line.contains("warning: --compare: 10h is after the end of the trace ("))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(said.ends_with("s): the growth view starts at the start instead"), "{said}");
    assert!(stderr.contains("warning: --compare: 20h is after the end of the trace"), "{stderr}");
    let report = common::Report::load(&out);
    let warnings = report.0["growth"]["warnings"].as_array().expect("growth.warnings");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].as_str().unwrap().contains("10h is after the end of the trace"), "{warnings:?}");

    // A window the trace reaches: no warning.
    let out = output_dir("compare_within");
    let result = run(&[
        "-q",
        "-o",
        out.to_str().unwrap(),
        "--pid",
        &target.pid().to_string(),
        "-d",
        "1s",
        "--compare",
        "start..end",
    ]);
    assert!(!String::from_utf8_lossy(&result.stderr).contains("warning: --compare"));
    assert_eq!(common::Report::load(&out).0["growth"]["warnings"].as_array().map(Vec::len), Some(0));
}

#[test]
fn the_tracer_refuses_to_trace_itself() {
    let out = output_dir("trace_itself");
    // The shell's pid becomes the tracer's with exec.
    let script = format!("exec {TRACER} -o {} --pid $$ -d 2s", out.display());
    let result = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_one_line_error(&result, "cannot trace dispatch-leaktrace itself (pid ");
    assert!(!out.exists());
}

#[test]
fn a_thread_id_is_answered_with_its_process() {
    // A thread of this test process (the test harness runs tests on threads of their own).
    let own = std::process::id();
    let thread = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| *tid != own)
        .expect("a second thread");
    let out = run(&["--pid", &thread.to_string(), "-d", "1s"]);
    assert_one_line_error(&out, &format!("{thread} is a thread of process {own}: give the process id, --pid {own}"));
}

#[test]
fn a_refused_process_is_explained_truthfully() {
    // Root without CAP_SYS_PTRACE (as in a container that drops it) may not read another user's /proc/PID/exe.
    let target = Running::spawn(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sleep",
        "30",
    ]));
    // setpriv execs sleep: wait until the pid runs it as the other user.
    let status = format!("/proc/{}/status", target.pid());
    while !std::fs::read_to_string(&status)
        .is_ok_and(|text| text.contains("\tUid:\t65534") || text.contains("Uid:\t65534"))
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-sys_ptrace",
            "--inh-caps=-sys_ptrace",
            TRACER,
            "--pid",
            &target.pid().to_string(),
            "-d",
            "1s",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, "dispatch-leaktrace runs without CAP_SYS_PTRACE");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("run as root"));

    // Where a security policy keeps even root with CAP_SYS_PTRACE away from pid 1 (as in some sandboxes),
    // the message says so rather than "run as root".
    if std::fs::read_link("/proc/1/exe").is_err() {
        let out = run(&["--pid", "1", "-d", "1s"]);
        assert_one_line_error(
            &out,
            "although dispatch-leaktrace has CAP_SYS_PTRACE: a security policy protects process 1",
        );
    }
}

#[test]
fn mark_help_prints_help() {
    for args in [&["mark", "--help"][..], &["mark", "-h"], &["mark", "--pid", "1", "--help"]] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: dispatch-leaktrace mark [--pid PID] LABEL"));
    }
}

#[test]
fn secrets_on_the_command_line_stay_out_of_the_report() {
    let out = output_dir("secrets_in_cmdline");
    // `sh -c` ignores the words after its script; `; true` keeps sh from exec'ing sleep (which would change
    // the command line).
    let secrets = ["hunter2", "abc.def.ghi", "k3yv4lu3", "pa55w0rd", "b34r3rt0k3n", "db-s3cr3t"];
    let result = run(&[
        "-q",
        "-o",
        out.to_str().unwrap(),
        "-d",
        "1s",
        "--",
        "sh",
        "-c",
        "sleep 3; true",
        "server",
        "--header",
        "Authorization: Bearer abc.def.ghi",
        "-H",
        "X-Api-Key: k3yv4lu3",
        "--pass",
        "hunter2",
        "-p",
        "pa55w0rd",
        "Bearer",
        "b34r3rt0k3n",
        "--db=postgres://app:db-s3cr3t@db/x",
        "--port",
        "8080",
    ]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in report.json");
    }
    let cmdline = common::Report::load(&out).0["target"]["cmdline"].clone();
    assert_eq!(cmdline[0], "sh");
    assert!(cmdline.as_array().unwrap().iter().any(|arg| arg == "8080"), "{cmdline}");
    for file in std::fs::read_dir(&out).unwrap() {
        let path = file.unwrap().path();
        if let Ok(text) = std::fs::read(&path) {
            for secret in secrets {
                assert!(!String::from_utf8_lossy(&text).contains(secret), "{secret} in {}", path.display());
            }
        }
    }
}

#[test]
fn an_rss_step_the_target_already_passed_is_said() {
    let out = output_dir("rss_step_passed");
    let target = sleeper();
    let pid = target.pid().to_string();
    let result = run(&["-q", "-o", out.to_str().unwrap(), "--pid", &pid, "-d", "1s", "--snapshot-at-rss", "1M"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("warning: --snapshot-at-rss 1M: the target already holds "), "{stderr}");
}
