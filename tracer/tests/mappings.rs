//! Mapped memory by call stack, on the real kernel: tests/fixtures/mappings.c states the ground truth of
//! every call site; each figure must match exactly, whether the tracer launched the fixture or attached to
//! it by pid.

mod common;

use common::{Figures, PAGE, Report, Running, assert_detached, fixture, output_dir, start_tracer};

/// (source, call site, outstanding bytes, outstanding allocations, allocated bytes), from mappings.c.
const GROUND_TRUTH: &[(&str, &str, u64, u64, u64)] = &[
    ("mmap", "keep_regions", 15 * PAGE, 3, 15 * PAGE),
    ("mmap", "map_then_unmap", 0, 0, 8 * PAGE),
    ("mmap", "partial_unmap", 5 * PAGE, 1, 10 * PAGE),
    ("mmap", "reserve_window", 0, 0, 8 * PAGE),
    ("mmap", "span_first", 2 * PAGE, 1, 4 * PAGE),
    ("mmap", "span_second", 0, 0, 4 * PAGE),
    ("mmap", "grow_origin", 2 * PAGE, 1, 2 * PAGE),
    ("mmap", "grow_region", 4 * PAGE, 1, 4 * PAGE),
    ("mmap", "shrink_origin", 2 * PAGE, 1, 6 * PAGE),
    ("mmap", "move_origin", 3 * PAGE, 1, 3 * PAGE),
    ("mmap", "move_target", 0, 0, 3 * PAGE),
    ("brk", "heap_grow", 15000, 1, 20000),
    ("mmap", "thread_keeps", 8 * PAGE, 4, 8 * PAGE),
];

fn assert_ground_truth(report: &Report) {
    for &(source, site, outstanding_bytes, outstanding_allocs, allocated_bytes) in GROUND_TRUTH {
        assert_eq!(
            report.by_leaf(source, site),
            Figures { outstanding_bytes, outstanding_allocs, allocated_bytes },
            "{source} {site}"
        );
    }
    // Calls that failed, and a brk that only shrank, record nothing.
    assert!(!report.has_frame("failed_calls"), "a failed call was recorded");
    assert_eq!(report.by_leaf("brk", "heap_shrink"), Figures::default());
    // The whole break: the loader's and libc's heap besides the fixture's (a launched target's first brk
    // once counted from address 0: 86 TiB).
    let brk = report.0["totals"]["by_source"]["brk"]["outstanding_bytes"].as_u64().unwrap();
    assert!(brk < 1 << 20, "brk outstanding {brk}");
    for counter in ["lost_events", "map_full", "stack_errors", "unpaired_syscalls"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
    assert_eq!(report.end_reason(), "target-exit");
}

#[test]
fn launched_target_exact_per_call_site() {
    let out = output_dir("launched_target_exact_per_call_site");
    let fixture = fixture("mappings");
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--", fixture.to_str().unwrap()]);
    // The launched fixture shares the tracer's stdin and stdout.
    tracer.stdout.wait_for("done");
    // Once the snapshot is written the tracer has seen everything, while the fixture still runs.
    tracer.snapshot();
    assert!(tracer.wait().success());

    let report = Report::load(&out);
    assert_ground_truth(&report);
    assert_eq!(report.0["target_exit"]["code"], 0);
    assert_eq!(report.0["target"]["exe"], fixture.to_str().unwrap());
    assert_detached(&report);
}

#[test]
fn attached_target_exact_per_call_site() {
    let out = output_dir("attached_target_exact_per_call_site");
    let mut target = Running::spawn(std::process::Command::new(fixture("mappings")).arg("wait"));
    let pid = target.pid().to_string();
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &pid]);
    target.send_line("go");
    target.stdout.wait_for("done");
    target.close_stdin();
    assert!(target.wait().success());
    assert!(tracer.wait().success());

    let report = Report::load(&out);
    assert_ground_truth(&report);
    assert_eq!(report.0["target"]["pid"].as_u64(), Some(target.pid() as u64));
    assert_eq!(report.0["target"]["cmdline"][1], "wait");
    // We did not launch it: its parent (this test) reaped it, and the kernel told us how it ended.
    assert_eq!(report.0["target_exit"]["code"], 0, "{}", report.0["target_exit"]);
    assert_detached(&report);
}

#[test]
fn report_files_agree_with_each_other() {
    let out = output_dir("report_files_agree_with_each_other");
    let mut target = Running::spawn(std::process::Command::new(fixture("mappings")).arg("wait"));
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string()]);
    target.send_line("go");
    target.stdout.wait_for("done");
    target.close_stdin();
    target.wait();
    assert!(tracer.wait().success());

    let report = Report::load(&out);
    let folded = std::fs::read_to_string(out.join("stacks.folded")).unwrap();
    // Every folded line is one report stack with outstanding bytes: same frames, same bytes.
    let outstanding: Vec<_> = report.stacks().iter().filter(|s| s["outstanding_bytes"].as_u64().unwrap() > 0).collect();
    assert_eq!(folded.lines().count(), outstanding.len());
    for (line, stack) in folded.lines().zip(&outstanding) {
        let (frames, bytes) = line.rsplit_once(' ').unwrap();
        let mut expected = vec![format!("[{}]", stack["source"].as_str().unwrap())];
        expected.extend(stack["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().replace(';', ":")));
        assert_eq!(frames, expected.join(";"));
        assert_eq!(bytes.parse::<u64>().unwrap(), stack["outstanding_bytes"].as_u64().unwrap());
    }
    // The totals are those of the primary source (resident memory here); each source has its own.
    let totals = &report.0["totals"];
    assert_eq!(totals["primary_source"], "page-fault");
    for (source, figures) in totals["by_source"].as_object().unwrap() {
        let sum: u64 = report
            .stacks()
            .iter()
            .filter(|s| s["source"] == source.as_str())
            .map(|s| s["outstanding_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(figures["outstanding_bytes"].as_u64(), Some(sum), "{source}");
    }
    assert_eq!(totals["outstanding_bytes"], totals["by_source"]["page-fault"]["outstanding_bytes"]);
    // flamegraph.svg is the primary view (resident memory here); each source has its own as well.
    for name in ["flamegraph.svg", "flamegraph-mmap.svg", "flamegraph-page-fault.svg", "growth.svg"] {
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"), "{name}");
    }
    let mapped = std::fs::read_to_string(out.join("flamegraph-mmap.svg")).unwrap();
    assert!(mapped.contains("keep_regions"), "the mapped-memory flamegraph names the call sites");
    assert!(std::fs::read_to_string(out.join("flamegraph.svg")).unwrap().contains("Outstanding resident memory"));
}

/// (source, call site, outstanding bytes, outstanding allocations, allocated bytes), from unmap_reuse.c.
const UNMAP_REUSE_TRUTH: &[(&str, &str, u64, u64, u64)] = &[
    ("mmap", "map_and_unmap", 0, 0, 8 * 5000 * 16 * PAGE),
    ("mmap", "map_move_and_unmap", 0, 0, 8 * 5000 * 32 * PAGE),
    ("mmap", "map_and_keep", 8 * 50 * 16 * PAGE, 400, 8 * 50 * 16 * PAGE),
    ("page-fault", "map_and_unmap", 0, 0, 8 * 5000 * PAGE),
    ("page-fault", "map_move_and_unmap", 0, 0, 8 * 5000 * PAGE),
];

/// A range one thread unmaps or moves away and another thread maps again at once stays exact: the unmap,
/// and the taking aside of the moved range, are recorded before the new mapping, never after it (they
/// once were: in 1 run of 40 of tests/threads' hand-off, and in most runs of this fixture).
#[test]
fn ranges_unmapped_and_mapped_again_by_other_threads_stay_exact() {
    let program = fixture("unmap_reuse");
    for run in 0..3 {
        let report = common::trace_waiting_fixture(&format!("unmap_reuse_{run}"), &program, &[]);
        for &(source, site, outstanding_bytes, outstanding_allocs, allocated_bytes) in UNMAP_REUSE_TRUTH {
            let truth = Figures { outstanding_bytes, outstanding_allocs, allocated_bytes };
            assert_eq!(report.by_leaf(source, site), truth, "run {run}: {source} {site}");
        }
        for counter in ["unmatched_frees", "lost_events", "map_full", "unpaired_syscalls", "unmap_failed_after_release"]
        {
            assert_eq!(report.counter(counter), 0, "run {run}: {counter}");
        }
    }
}

/// With -v, a munmap that released nothing the ledger knew says its range and thread (unmap_twice.c's
/// second munmap of the same range), as the kernel programs say an unmatched free.
#[test]
fn an_unmatched_munmap_says_its_range_and_thread_with_verbose() {
    let out = output_dir("an_unmatched_munmap_says_its_range_and_thread_with_verbose");
    let mut target = Running::spawn(std::process::Command::new(fixture("unmap_twice")).arg("wait"));
    let pid = target.pid().to_string();
    let mut tracer = start_tracer(&["-v", "-o", out.to_str().unwrap(), "--pid", &pid]);
    target.send_line("go");
    let region = target.stdout.wait_for("region ");
    let region = region.trim_start_matches("region ").trim().to_string();
    target.stdout.wait_for("done");
    let line = tracer.stderr.wait_for("unmatched release 1:");
    target.close_stdin();
    assert!(target.wait().success());
    assert!(tracer.wait().success());
    assert!(line.ends_with(&format!("munmap of {region}+0x4000 by thread {pid}, nothing known there")), "{line}");
    assert_eq!(Report::load(&out).counter("unmatched_frees"), 1);
}
