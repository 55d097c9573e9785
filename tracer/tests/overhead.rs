//! `--overhead`: the tracer keeps its kernel programs' run time within a share of the target's CPU time by
//! raising page sampling, and the figures stay unbiased estimates of the fixture's ground truth.

mod common;

use std::{collections::BTreeMap, process::Command};

use common::{PAGE, Report, Running, assert_detached, fixture, output_dir, start_tracer};
use serde_json::Value;

/// What a storm fixture did, from its "done name=value ..." line: `fault_storm`'s `rounds` and
/// `kept_pages`, `malloc_storm`'s `rounds` and `kept_blocks`.
struct Storm(BTreeMap<String, u64>);

impl Storm {
    fn get(&self, name: &str) -> u64 {
        *self.0.get(name).unwrap_or_else(|| panic!("no {name} in {:?}", self.0))
    }
}

/// Pages `fault_storm` touches and unmaps in each round (its CHURN).
const CHURN_PAGES: u64 = 64;

/// Traces a storm fixture busy for `seconds` with `extra` options; its ground truth and the report.
fn trace_storm(test: &str, program: &str, seconds: &str, extra: &[&str]) -> (Storm, Report) {
    let out = output_dir(test);
    let mut target = Running::spawn(Command::new(fixture(program)).args(["wait", seconds]));
    let pid = target.pid().to_string();
    let mut args = vec!["-o", out.to_str().unwrap(), "--pid", &pid];
    args.extend_from_slice(extra);
    let mut tracer = start_tracer(&args);
    target.send_line("go");
    let done = target.stdout.wait_for("done");
    let fields = done.split_whitespace().filter_map(|word| word.split_once('='));
    let storm = Storm(fields.map(|(name, value)| (name.to_string(), value.parse().unwrap())).collect());
    // A snapshot while the target lives: the tracer has caught up with every event.
    tracer.snapshot();
    target.close_stdin();
    assert!(target.wait().success(), "the target must survive being traced");
    assert!(tracer.wait().success());
    let report = Report::load(&out);
    for counter in ["lost_events", "map_full", "stack_errors"] {
        assert_eq!(report.counter(counter), 0, "{counter}");
    }
    assert_detached(&report);
    (storm, report)
}

#[test]
fn a_tiny_budget_samples_pages_and_the_estimates_stay_unbiased() {
    // 0.01% of the target's CPU: every second the programs are over it, so the page rate goes up fourfold
    // (the most a tick allows) each second while keep_pages keeps 32 pages a round: its pages are counted at
    // rates 1, 4, 16, 64 and at most 256 by the fourth second.
    let (storm, report) = trace_storm("tiny_budget", "fault_storm", "4", &["--overhead", "0.01"]);
    let overhead = &report.0["overhead"];
    assert_eq!(overhead["budget_pct"], 0.01);
    let page_rate = overhead["sample_pages"].as_u64().unwrap();
    assert!(page_rate > 1, "the page rate stayed at {page_rate}: {overhead:#}");
    let changes = overhead["changes"].as_array().unwrap();
    assert!(changes.iter().any(|change| change["source"] == "pages"), "{overhead:#}");
    assert!(changes.iter().all(|change| change["overhead_pct"].as_f64().unwrap() > 0.01), "{overhead:#}");
    // Every second is in the measured series, and the programs took more than the budget.
    let measured = overhead["measured"].as_array().unwrap();
    assert!(!measured.is_empty(), "{overhead:#}");
    assert!(overhead["overall_overhead_pct"].as_f64().unwrap() > 0.01, "{overhead:#}");
    assert!(measured.iter().map(|m| m["target_cpu_seconds"].as_f64().unwrap()).sum::<f64>() > 0.05);

    // Pages are chosen by a multiplicative hash of their page number, each counted at the rate that chose
    // it. About 14,000 kept pages a second at rates 1, 4, 16, 64, 256: were the choice random, the
    // estimate's standard error would be about 4% of the kept total (sqrt(14,000 x 341) pages of 56,000);
    // consecutive pages hashed so are chosen evenly spread, far closer. 10% leaves room for the random case.
    let kept = report.by_leaf("page-fault", "keep_pages");
    let truth = storm.get("kept_pages") * PAGE;
    let error = kept.outstanding_bytes as f64 / truth as f64 - 1.0;
    eprintln!("keep_pages: estimate off by {:+.2}% at a final page rate of {page_rate}", error * 100.0);
    assert!(error.abs() < 0.10, "keep_pages estimated at {kept:?}, truly {truth} bytes ({:+.1}%)", error * 100.0);
    // A release finds exactly the pages its faults counted, at their own weights: nothing stays. (Its
    // allocated total is not checked: each round's mmap gets the address the last munmap freed, so the
    // same 64 pages are chosen or not every round; only addresses spread wide average out.)
    let churn = report.by_leaf("page-fault", "churn_pages");
    assert_eq!(churn.outstanding_bytes, 0, "{churn:?}");
}

#[test]
fn overhead_off_traces_every_page_exactly() {
    let (storm, report) = trace_storm("overhead_off", "fault_storm", "2", &["--overhead", "off"]);
    assert_eq!(report.0["overhead"], Value::Null);
    assert_eq!(report.0["resident_sample_pages"], Value::Null);
    let kept = report.by_leaf("page-fault", "keep_pages");
    assert_eq!(kept.outstanding_bytes, storm.get("kept_pages") * PAGE, "{kept:?}");
    let churn = report.by_leaf("page-fault", "churn_pages");
    assert_eq!((churn.outstanding_bytes, churn.allocated_bytes), (0, storm.get("rounds") * CHURN_PAGES * PAGE));
}

#[test]
fn a_pinned_page_rate_is_left_alone() {
    let (storm, report) =
        trace_storm("pinned_pages", "fault_storm", "3", &["--overhead", "0.01", "--sample-pages", "4"]);
    let overhead = &report.0["overhead"];
    assert_eq!(overhead["sample_pages"], Value::Null, "{overhead:#}");
    assert!(overhead["changes"].as_array().unwrap().iter().all(|change| change["source"] != "pages"), "{overhead:#}");
    assert_eq!(report.0["resident_sample_pages"], 4);
    let kept = report.by_leaf("page-fault", "keep_pages");
    assert_eq!(kept.outstanding_bytes % (4 * PAGE), 0, "each sampled page counts for 4: {kept:?}");
    let error = kept.outstanding_bytes as f64 / (storm.get("kept_pages") * PAGE) as f64 - 1.0;
    assert!(error.abs() < 0.10, "keep_pages estimated at {kept:?}, truly {} pages", storm.get("kept_pages"));
}

#[test]
fn a_tiny_budget_samples_allocator_bytes_and_frees_release_what_was_counted() {
    // No page faults traced: the byte interval is the only rate the budget can raise, fourfold a second at
    // most (every block, then 8 KiB, 32 KiB, 128 KiB, 512 KiB by the fourth second), and only while a raise
    // pays: the probes run on every call, recorded or not, so it may stop at the first interval.
    let (storm, report) = trace_storm("tiny_budget_bytes", "malloc_storm", "4", &["--overhead", "0.01", "--no-faults"]);
    let overhead = &report.0["overhead"];
    assert_eq!(overhead["sample_pages"], Value::Null, "{overhead:#}");
    let changes = overhead["changes"].as_array().unwrap();
    assert!(changes.iter().all(|change| change["source"] == "bytes"), "{overhead:#}");
    assert!(changes.iter().any(|change| change["rate"].as_u64() > Some(0)), "the byte interval rose: {overhead:#}");
    // The last interval may be 0 again: a raise that did not lower the programs' cost is undone (their runs
    // on the calls they do not record stay), and every block is recorded at the same cost. The figures below
    // hold at any interval.
    let interval = overhead["sample_bytes"].as_u64().unwrap();

    let sites = ["churn_blocks", "keep_blocks"];
    // Each block carries the charge it was recorded with; its free takes back exactly that.
    let churn = report.by_site("malloc", "churn_blocks", &sites);
    assert_eq!((churn.outstanding_bytes, churn.outstanding_allocs), (0, 0), "{churn:?}");
    // A 4 KiB block recorded with probability 4096 / N counts for N bytes. About 7 MiB kept a second at
    // intervals 0, 8K, 32K, 128K at most (512K in the last part of a second): a standard error of 4% of the
    // 29 MiB kept at most (the draw is random: sqrt(7 MiB x 168 KiB)); 15% is nearly four of them.
    let kept = report.by_site("malloc", "keep_blocks", &sites);
    let truth = storm.get("kept_blocks") * 4096;
    let error = kept.outstanding_bytes as f64 / truth as f64 - 1.0;
    eprintln!("keep_blocks: estimate off by {:+.2}% at a final interval of {interval}", error * 100.0);
    assert!(error.abs() < 0.15, "keep_blocks estimated at {kept:?}, truly {truth} bytes ({:+.1}%)", error * 100.0);
}
