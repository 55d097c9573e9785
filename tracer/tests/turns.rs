//! Turns from the target's own log lines: tests/fixtures/turns.c announces its turns on stdout and
//! states what each one retains. Exact turn count and pairing (overlapping turns too), retained bytes per
//! turn per call site, and the verdicts: a leak grows, a bounded cache levels off.

mod common;

use std::process::Command;

use common::{PAGE, Report, Running, fixture, output_dir, start_tracer};
use serde_json::Value;

const TURN_START: &str = r"^turn start (?P<id>\S+)$";
const TURN_END: &str = r"^turn end (?P<id>\S+)$";

fn trace_turns(test: &str) -> Report {
    let out = output_dir(test);
    let mut target = Running::spawn(Command::new(fixture("turns")).arg("wait"));
    let pid = target.pid().to_string();
    let mut tracer =
        start_tracer(&["-o", out.to_str().unwrap(), "--pid", &pid, "--turn-start", TURN_START, "--turn-end", TURN_END]);
    target.send_line("go");
    target.stdout.wait_for("done");
    target.close_stdin();
    assert!(target.wait().success());
    assert!(tracer.wait().success());
    Report::load(&out)
}

/// Retained bytes of the turn's top stacks whose leaf is `site` (a turn's stack is an index into `stacks`).
fn retained_at(report: &Report, turn: &Value, site: &str) -> u64 {
    turn["top_stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let stack = &report.stacks()[s["stack"].as_u64().expect("an index into stacks") as usize];
            stack["frames"].as_array().unwrap().last().unwrap() == site
        })
        .map(|s| s["retained_bytes"].as_u64().unwrap())
        .sum()
}

#[test]
fn turns_pair_and_retain_exactly_what_the_fixture_states() {
    let report = trace_turns("turns_pair_and_retain_exactly");
    let turns = report.0["turns"].as_array().unwrap();
    let ids: Vec<&str> = turns.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "a", "b"]);
    assert!(turns.iter().all(|t| t["end"].is_string() && t["end"].as_str() >= t["start"].as_str()));
    assert_eq!(report.0["counters"]["unmatched_turn_ends"], 0);
    assert_eq!(
        report.0["turns"][0]["by_source"]["page-fault"]["allocated_bytes"].as_u64().map(|b| b >= 10 * PAGE),
        Some(true)
    );

    for (index, turn) in turns[..8].iter().enumerate() {
        assert_eq!(retained_at(&report, turn, "leak_per_turn"), 3 * PAGE, "turn {}", index + 1);
        let cached = if index >= 6 { 2 * PAGE } else { 0 };
        assert_eq!(retained_at(&report, turn, "cache_put"), cached, "turn {}", index + 1);
        assert_eq!(retained_at(&report, turn, "scratch"), 0, "turn {}", index + 1);
    }
    // The overlapping turns split what was allocated while both ran: a page each of overlap_both's two.
    let (a, b) = (&turns[8], &turns[9]);
    assert_eq!(
        (
            retained_at(&report, a, "overlap_a_only"),
            retained_at(&report, a, "overlap_both"),
            retained_at(&report, a, "overlap_b_only")
        ),
        (PAGE, PAGE, 0)
    );
    assert_eq!(
        (
            retained_at(&report, b, "overlap_a_only"),
            retained_at(&report, b, "overlap_both"),
            retained_at(&report, b, "overlap_b_only")
        ),
        (0, PAGE, 4 * PAGE)
    );
}

#[test]
fn a_leak_grows_and_a_bounded_cache_levels_off() {
    let report = trace_turns("a_leak_grows_and_a_bounded_cache_levels_off");
    let verdict = |site: &str| {
        report.0["suspects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["site"] == site)
            .unwrap_or_else(|| panic!("no suspect {site}: {}", report.0["suspects"]))["verdict"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(verdict("leak_per_turn"), "grows");
    assert_eq!(verdict("cache_put"), "levels-off");
    let leak = report.0["suspects"].as_array().unwrap().iter().find(|s| s["site"] == "leak_per_turn").unwrap();
    // 3 pages in each of the 10 turns (a and b included: leak_per_turn runs in t1..t8 only, so 8 of 10).
    assert_eq!(leak["turns_retaining"].as_f64(), Some(0.8));
}
