//! Threads handing memory to each other, on the real kernel: blocks one thread allocates and another frees
//! or reallocs, while a third gets the freed address again from malloc, stay exact per call site. The
//! fixture, handoff.c, states its ground truth in its source.

mod common;

use common::{Figures, fixture};

/// (call site, outstanding bytes, outstanding allocations, allocated bytes).
const HANDOFF_TRUTH: &[(&str, u64, u64, u64)] =
    &[("produce_block", 0, 0, 3_057_360), ("grow_block", 0, 0, 1_713_120), ("leak_exact", 12_345, 4, 12_345)];

/// How many times the hand-off is traced: a race that a run escapes shows in one of the others.
const RUNS: usize = 10;

/// Four producers malloc, four consumers free (a quarter realloc'd first): every run exact to the byte,
/// with no missed or unmatched frees and no figure that went below zero.
#[test]
fn blocks_handed_between_threads_are_exact_in_every_run() {
    let program = fixture("handoff");
    let sites: Vec<&str> = HANDOFF_TRUTH.iter().map(|(site, ..)| *site).collect();
    let mut failures = Vec::new();
    let mut failed_runs = 0;
    for run in 0..RUNS {
        let failures_before = failures.len();
        let report = common::trace_waiting_fixture(&format!("handoff_{run}"), &program, &[]);
        for &(site, outstanding_bytes, outstanding_allocs, allocated_bytes) in HANDOFF_TRUTH {
            let figures = report.by_site("malloc", site, &sites);
            let truth = Figures { outstanding_bytes, outstanding_allocs, allocated_bytes };
            if figures != truth {
                failures.push(format!("run {run}: {site}: {figures:?}, not {truth:?}"));
            }
        }
        // An unmatched free here was once a thread stack's munmap, recorded after another thread had mapped
        // the range again (see tests/mappings.rs, unmap_reuse).
        for counter in ["missed_frees", "unmatched_frees", "negative_figures", "lost_events", "map_full"] {
            let value = report.counter(counter);
            if value != 0 {
                failures.push(format!("run {run}: {counter} {value}"));
            }
        }
        failed_runs += usize::from(failures.len() > failures_before);
    }
    assert!(failures.is_empty(), "{failed_runs} of {RUNS} runs wrong:\n{}", failures.join("\n"));
}

/// Each stack says which threads ran it, by name: named_threads.c's writers share touch_shared's stack and
/// the main thread alone ran touch_main's.
#[test]
fn stacks_name_the_threads_that_ran_them() {
    let report = common::trace_waiting_fixture("named_threads", &fixture("named_threads"), &[]);
    let threads_of = |leaf: &str| -> Vec<String> {
        let mut names: Vec<String> = report
            .stacks()
            .iter()
            .filter(|s| s["source"] == "page-fault" && s["frames"].as_array().unwrap().iter().any(|f| f == leaf))
            .flat_map(|s| s["threads"].as_array().expect("a resident stack names its threads").clone())
            .map(|name| name.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(threads_of("touch_shared"), ["writer-a", "writer-b"]);
    assert_eq!(threads_of("touch_main"), ["named_threads"]);
    let resident = |caller: &str| -> u64 {
        let stacks = report.stacks().iter().filter(|s| s["source"] == "page-fault");
        let through = stacks.filter(|s| s["frames"].as_array().unwrap().iter().any(|f| f == caller));
        through.map(|s| s["outstanding_bytes"].as_u64().unwrap()).sum()
    };
    assert_eq!((resident("touch_shared"), resident("touch_main")), (8 * 4096, 2 * 4096));
}
