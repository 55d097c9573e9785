//! Resident memory by the stack whose page fault made it resident, on the real kernel:
//! tests/fixtures/touches.c states the ground truth of every call site.

mod common;

use std::process::Command;

use common::{Figures, PAGE, Report, Running, assert_detached, fixture, output_dir, start_tracer_with_env};

/// (call site, resident bytes at exit, resident pages, bytes ever made resident), from touches.c.
const GROUND_TRUTH: &[(&str, u64, u64, u64)] = &[
    ("touch_kept", 16 * PAGE, 16, 16 * PAGE),
    ("touch_with_memset", 8 * PAGE, 8, 8 * PAGE),
    ("touch_then_unmap", 6 * PAGE, 6, 10 * PAGE),
    ("touch_then_dontneed", 7 * PAGE, 7, 12 * PAGE),
    ("first_toucher", 0, 0, 4 * PAGE),
    ("second_toucher", 4 * PAGE, 4, 4 * PAGE),
    ("writer_after_read", 3 * PAGE, 3, 3 * PAGE),
    ("huge_touch", 4 << 20, 1024, 4 << 20),
    ("named_touch", 5 * PAGE, 5, 5 * PAGE),
];

fn thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|mode| !mode.contains("[never]"))
}

/// With the kernel's BTF, the fault hooks are BTF tracepoints.
#[test]
fn resident_bytes_per_call_site_are_exact() {
    let report = trace_touches("resident_bytes_per_call_site_are_exact", &[]);
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(fault_hook_kinds(&report), if btf { ["tp_btf", "tp_btf"] } else { ["tracepoint", "tracepoint"] });
}

/// The classic tracepoints, for kernels without BTF, give the same figures.
#[test]
fn resident_bytes_per_call_site_are_exact_with_classic_tracepoints() {
    let report = trace_touches("resident_bytes_per_call_site_are_exact_classic", &[("LEAKTRACE_NO_BTF", "1")]);
    assert_eq!(fault_hook_kinds(&report), ["tracepoint", "tracepoint"]);
}

/// The kinds of the probes on the page-fault and page-allocation tracepoints.
fn fault_hook_kinds(report: &Report) -> Vec<String> {
    report.0["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["attach_point"] == "exceptions/page_fault_user" || p["attach_point"] == "kmem/mm_page_alloc")
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Traces touches.c and checks every figure against its ground truth.
fn trace_touches(test: &str, env: &[(&str, &str)]) -> Report {
    let out = output_dir(test);
    let mut target = Running::spawn(Command::new(fixture("touches")).arg("wait"));
    let mut tracer = start_tracer_with_env(&["-o", out.to_str().unwrap(), "--pid", &target.pid().to_string()], env);
    target.send_line("go");
    let named = target.stdout.wait_for("named") == "named";
    target.stdout.wait_for("done");
    // Page sizes are read from the live process: let the tracer catch up before it exits.
    tracer.snapshot();
    target.close_stdin();
    assert!(target.wait().success());
    assert!(tracer.wait().success());

    let report = Report::load(&out);
    for &(site, bytes, pages, allocated) in GROUND_TRUTH {
        assert_eq!(
            report.by_leaf("page-fault", site),
            Figures { outstanding_bytes: bytes, outstanding_allocs: pages, allocated_bytes: allocated },
            "{site}"
        );
    }
    assert!(!report.has_frame("only_reader"), "a read of the zero page made nothing resident");
    assert!(report.0["page_faults"]["zero_page_reads"].as_u64().unwrap() >= 3);
    // The page the kernel maps for our uprobes (touches.c calls malloc, through printf) is the tracer's.
    let regions = report.0["regions"].as_array().unwrap();
    assert!(regions.iter().all(|region| region["kind"] != "uprobes"), "{regions:?}");
    assert!(report.0["page_faults"]["uprobe_page"].as_u64().unwrap() <= 1);
    // map_region only maps; the pages belong to whoever touched them.
    assert_eq!(report.by_leaf("page-fault", "map_region"), Figures::default());
    // The memset faults happened in libc; the caller is the reported leaf, memset a runtime frame.
    let memset = report
        .stacks()
        .iter()
        .find(|s| s["frames"].as_array().unwrap().last().unwrap() == "touch_with_memset")
        .unwrap();
    assert!(memset["runtime_frames"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("memset")));
    let huge_faults = report.0["page_faults"]["huge_pages"].as_u64().unwrap();
    if thp_enabled() {
        assert!(huge_faults >= 1, "THP is enabled and huge_region asked for huge pages");
    } else {
        assert_eq!(huge_faults, 0);
    }
    let regions = report.0["regions"].as_array().unwrap();
    let region = |kind: &str| regions.iter().find(|r| r["kind"] == kind).map(|r| r["resident_bytes"].as_u64().unwrap());
    let unnamed_anonymous = (16 + 8 + 6 + 7 + 4 + 3) * PAGE + (4 << 20);
    if named {
        assert_eq!(region("anon:leaktrace-test"), Some(5 * PAGE));
        assert!(region("anonymous").unwrap() >= unnamed_anonymous);
    } else {
        // This kernel cannot name anonymous memory (no CONFIG_ANON_VMA_NAME).
        assert_eq!(region("anon:leaktrace-test"), None);
        assert!(region("anonymous").unwrap() >= unnamed_anonymous + 5 * PAGE);
    }
    let timeline = report.0["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty() && timeline.last().unwrap()["rss_bytes"].as_u64().unwrap() > 0);
    for counter in ["lost_events", "map_full", "stack_errors"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
    assert_detached(&report);
    report
}

#[test]
fn sampled_pages_give_unbiased_estimates_and_exact_releases() {
    // One page in 8, chosen by address: keep_pages' 8192 pages give about 1024 samples, a standard error
    // near 3%; 15% is five of them.
    let report = common::trace_waiting_fixture("sampled_pages", &fixture("pages"), &["--sample-pages", "8"]);
    assert_eq!(report.0["resident_sample_pages"], 8);
    let near = |estimate: u64, truth: u64| (estimate as f64 / truth as f64 - 1.0).abs() < 0.15;
    let kept = report.by_leaf("page-fault", "keep_pages");
    assert!(near(kept.outstanding_bytes, 8192 * PAGE), "keep_pages estimated at {kept:?}");
    assert_eq!(kept.outstanding_bytes % (8 * PAGE), 0, "each sampled page counts for 8");
    // A release finds exactly the sampled pages it covers: nothing of the unmapped region stays.
    let churn = report.by_leaf("page-fault", "churn_pages");
    assert_eq!(churn.outstanding_bytes, 0);
    assert!(near(churn.allocated_bytes, 8192 * PAGE), "churn_pages estimated at {churn:?}");
    let half = report.by_leaf("page-fault", "drop_half");
    assert!((half.outstanding_bytes as f64 / (2048 * PAGE) as f64 - 1.0).abs() < 0.25, "drop_half at {half:?}");
}

/// Page faults in code without frame pointers (built -O2 -fomit-frame-pointer, as most of Debian is), traced
/// in page-fault mode, where no allocator stack can teach the walk: a fault stops at an instruction in the
/// leaf `touch`, whose CFI row the tracer learns, then the return addresses of the functions above it, one
/// function per round. After that the fill's pages are under whole stacks, exact per caller.
#[test]
fn faults_in_code_without_frame_pointers_reach_main_and_are_exact_per_caller() {
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faults_without_frame_pointers.c");
    let program =
        common::compile_with("faults_without_frame_pointers", &source, "cc", &["-O2", "-fomit-frame-pointer"]);
    let (mut target, mut tracer, out) =
        common::start_waiting_fixture("faults_without_frame_pointers", &program, &["--no-alloc"]);
    // A round per function without frame pointers on the paths (touch, record, fill_*, step, main), and one
    // more: the tracer learns each from the stacks of the round before (read by the snapshot).
    for round in 0..6 {
        target.send_line("warm");
        target.stdout.wait_for(&format!("warm {round}"));
        tracer.snapshot();
    }
    target.send_line("fill");
    let sites = ["fill_log", "fill_map"];
    let truth = target.read_truth(&sites);
    let report = common::finish_waiting_fixture(target, tracer, &out);
    for (site, bytes, pages) in truth {
        let figures = report.by_site("page-fault", &site, &sites);
        assert_eq!((figures.outstanding_bytes, figures.outstanding_allocs), (bytes, pages), "{site}");
    }
    // Whole stacks, root first: the C runtime's start, main, step, the caller, record, touch.
    let mut whole = 0;
    for stack in report.stacks() {
        let frames: Vec<&str> = stack["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        if stack["source"] != "page-fault" || stack["outstanding_bytes"].as_u64() == Some(0) {
            continue;
        }
        let Some(at) = frames.iter().position(|f| sites.contains(f)) else { continue };
        assert_eq!(frames[at - 2..at], ["main", "step"], "{frames:?}");
        assert_eq!(&frames[at + 1..], ["record", "touch"], "{frames:?}");
        assert!(at >= 3 && frames[..at - 2].iter().all(|f| f.starts_with("__libc_start")), "{frames:?}");
        whole += 1;
    }
    assert_eq!(whole, 2, "one whole stack per caller");
    for counter in ["lost_events", "map_full", "stack_errors", "caller_rules_full"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
}

/// Page faults inside libc's memset: the C runtime keeps no frame pointer. The first ones come with a copy of
/// the stack's top, from which the collector unwinds memset's frame; it then gives the kernel the CFI rule of
/// memset's faulting instruction, and the second phase's faults are walked out of memset by the kernel
/// itself, sent without a copy. Both phases exact, under whole stacks.
#[test]
fn faults_in_the_c_runtime_are_exact_before_and_after_the_kernel_has_their_rule() {
    let (mut target, mut tracer, out) =
        common::start_waiting_fixture("faults_in_memset", &fixture("faults_in_memset"), &["--no-alloc"]);
    target.send_line("before");
    target.stdout.wait_for("first");
    // The first phase's stacks read: the kernel has memset's rule from here on.
    tracer.snapshot();
    target.send_line("after");
    let sites = ["memset_before", "memset_after"];
    let truth = target.read_truth(&sites);
    let report = common::finish_waiting_fixture(target, tracer, &out);
    for (site, bytes, pages) in truth {
        let stacks: Vec<&serde_json::Value> = report
            .stacks()
            .iter()
            .filter(|s| s["source"] == "page-fault" && s["frames"].as_array().unwrap().iter().any(|f| f == &site))
            .collect();
        assert_eq!(stacks.len(), 1, "{site}: one stack, {stacks:?}");
        let stack = stacks[0];
        assert_eq!(
            (stack["outstanding_bytes"].as_u64(), stack["outstanding_allocs"].as_u64()),
            (Some(bytes), Some(pages)),
            "{site}"
        );
        let frames: Vec<&str> = stack["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        let at = frames.len() - 3;
        assert_eq!(frames[at..], ["main", site.as_str(), "touch_pages_with_memset"], "{frames:?}");
        assert!(frames[..at].iter().all(|f| f.starts_with("__libc_start")) && at > 0, "{frames:?}");
        let runtime = stack["runtime_frames"].as_array().unwrap();
        assert!(runtime.iter().any(|f| f.as_str().unwrap().contains("memset")), "{site}: {runtime:?}");
    }
    // Every fault of the second phase was walked out of memset by its rule.
    let walked = report.counter("runtime_events_walked_by_rule");
    assert!(walked >= 256, "{walked} events walked by the instruction's rule");
    for counter in ["lost_events", "map_full", "stack_errors", "caller_rules_full"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
}

/// Page faults in libc's memset on a thread whose stack ends a few hundred bytes above them, a page that
/// cannot be read beyond: the copy of the stack's top goes only as far as the stack, and the collector still
/// unwinds memset's frame from it (the frame-pointer walk alone would skip memset's caller).
#[test]
fn a_fault_near_the_end_of_its_stack_keeps_its_caller() {
    let (mut target, tracer, out) =
        common::start_waiting_fixture("fault_near_stack_end", &fixture("fault_near_stack_end"), &["--no-alloc"]);
    target.send_line("go");
    let sites = ["touch_near_stack_end"];
    let truth = target.read_truth(&sites);
    let report = common::finish_waiting_fixture(target, tracer, &out);
    for (site, bytes, pages) in truth {
        let figures = report.by_leaf("page-fault", &site);
        assert_eq!((figures.outstanding_bytes, figures.outstanding_allocs), (bytes, pages), "{site}");
    }
    assert_eq!(report.by_leaf("page-fault", "thread_on_short_stack"), Figures::default(), "memset's caller skipped");
    for counter in ["lost_events", "map_full", "stack_errors"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
}
