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
    assert_detached(&report);
    assert!(report.0["totals"]["rss_bytes"].as_u64().unwrap() > 0, "the RSS of a live target is known");
    // Detached, the target still works.
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
    let out = output_dir("under_sudo_the_files_belong_to_the_invoking_user");
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
