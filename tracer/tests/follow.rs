//! `--follow`: a program restarted (two processes of one executable, one after the other) is traced as two
//! segments in one output folder, each with its own data.

mod common;

use std::process::Command;

use common::{PAGE, Report, Running, TRACER, assert_detached, fixture, output_dir};

/// One process of the fixture, run to its end while the tracer follows: returns its pid.
fn run_once(program: &std::path::Path, tracer: &mut Running) -> u32 {
    let mut target = Running::spawn(Command::new(program).arg("wait"));
    let pid = target.pid();
    tracer.stderr.wait_for(&format!("tracing pid {pid} "));
    target.send_line("go");
    target.stdout.wait_for("done");
    target.close_stdin();
    assert!(target.wait().success());
    // Its segment is written once the tracer has printed its summary.
    tracer.stdout.wait_for(&format!("traced pid {pid} "));
    pid
}

#[test]
fn two_consecutive_processes_are_two_segments_with_their_own_data() {
    let out = output_dir("follow_two_processes");
    let program = fixture("mappings");
    let mut tracer = Running::spawn(Command::new(TRACER).args([
        "-o",
        out.to_str().unwrap(),
        "--follow",
        "--exe",
        program.to_str().unwrap(),
    ]));
    tracer.stderr.wait_for("waiting for a process of");
    let first = run_once(&program, &mut tracer);
    let second = run_once(&program, &mut tracer);
    tracer.signal(libc::SIGINT);
    assert!(tracer.wait().success());

    let report = Report::load(&out);
    let segments = report.0["segments"].as_array().expect("a segments list");
    let pids: Vec<u64> = segments.iter().map(|s| s["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids, [first as u64, second as u64]);
    for segment in segments {
        assert_eq!(segment["end_reason"], "target-exit");
        let own = Report::load(&out.join(segment["folder"].as_str().unwrap()));
        assert_eq!(own.0["target"]["pid"], segment["pid"]);
        // mappings.c's keep_regions leaves 15 pages in 3 regions: each process's own, counted in its segment.
        let kept = own.by_leaf("mmap", "keep_regions");
        assert_eq!((kept.outstanding_bytes, kept.outstanding_allocs), (15 * PAGE, 3), "segment {segment}");
        assert_eq!(own.counter("lost_events"), 0);
        assert_detached(&own);
    }
    // The top level is the newest process's report, with the list.
    assert_eq!(report.0["target"]["pid"].as_u64(), Some(second as u64));
}
