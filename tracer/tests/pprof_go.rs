//! profile.pb.gz read by `go tool pprof` (golang-go): no warnings, resident bytes by default, the
//! fixture's file among the mappings with its build id and real addresses, and each source's four sample
//! types summing to report.json's figures for that source, exactly.

mod common;

use std::{path::Path, process::Command};

use common::{fixture, go_pprof as pprof, output_dir};

/// The figure after "Total samples = " in `-top`'s header (bytes with `-unit=B`).
fn total_samples(top: &str) -> u64 {
    let line = top.lines().find_map(|l| l.split_once("Total samples = ")).map(|(_, rest)| rest.trim());
    let figure = line.unwrap_or_else(|| panic!("no total in:\n{top}"));
    figure.trim_end_matches('B').parse().unwrap_or_else(|_| panic!("not a whole figure: {figure}"))
}

/// The build id `readelf -n` reads from the file's notes.
fn build_id(file: &Path) -> String {
    let output = Command::new("readelf").arg("-n").arg(file).output().expect("readelf runs");
    let notes = String::from_utf8_lossy(&output.stdout);
    let id = notes.lines().find_map(|l| l.trim().strip_prefix("Build ID: "));
    id.expect("the fixture has a build id").trim().to_string()
}

#[test]
fn go_tool_pprof_reads_the_profile_without_warnings_and_with_each_sources_totals() {
    let program = fixture("allocs");
    let out = output_dir("pprof_go");
    let report = common::trace_waiting_fixture("pprof_go", &program, &[]);
    let profile = out.join("profile.pb.gz");

    let (top, stderr) = pprof(&["-top"], &profile);
    assert_eq!(stderr.trim(), "", "pprof warns");
    assert!(top.lines().any(|l| l == "Type: resident_inuse_space"), "resident bytes are the default:\n{top}");
    assert!(top.lines().any(|l| l == "File: allocs"), "the fixture is the main binary:\n{top}");

    // The fixture's mapping, first, with its build id; its frames' addresses lie inside it.
    let (raw, stderr) = pprof(&["-raw"], &profile);
    assert_eq!(stderr.trim(), "", "pprof warns");
    let mappings: Vec<&str> = raw.lines().skip_while(|l| *l != "Mappings").skip(1).collect();
    let main = mappings.first().unwrap_or_else(|| panic!("no mappings:\n{raw}"));
    let fields: Vec<&str> = main.split_whitespace().collect();
    assert_eq!(fields[2], program.to_str().unwrap(), "{main}");
    assert_eq!(fields[3], build_id(&program), "{main}");
    let range: Vec<u64> =
        fields[1].split('/').map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).unwrap()).collect();
    let kept = raw.lines().find(|l| l.contains(" M=1 malloc_kept ")).unwrap_or_else(|| panic!("{raw}"));
    let address = kept.split_whitespace().nth(1).unwrap();
    let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
    assert!(range[0] <= address && address < range[1], "{kept} outside {main}");

    // Every source's set sums to report.json's figures; the sets are never added together.
    let by_source = report.0["totals"]["by_source"].as_object().unwrap();
    assert!(by_source.contains_key("page-fault") && by_source.contains_key("malloc"), "{by_source:?}");
    for (source, totals) in by_source {
        let prefix = match source.as_str() {
            "page-fault" => "resident",
            "mmap" => "mapped",
            other => other,
        };
        let allocated_allocs: u64 = report
            .stacks()
            .iter()
            .filter(|s| s["source"] == source.as_str())
            .map(|s| s["allocated_allocs"].as_u64().unwrap())
            .sum::<u64>()
            + report.0["freed_stacks_summarized"]["by_source"][source]["allocated_allocs"].as_u64().unwrap_or(0);
        let expected = [
            ("inuse_space", totals["outstanding_bytes"].as_u64().unwrap()),
            ("inuse_objects", totals["outstanding_allocs"].as_u64().unwrap()),
            ("alloc_space", totals["allocated_bytes"].as_u64().unwrap()),
            ("alloc_objects", allocated_allocs),
        ];
        for (kind, figure) in expected {
            let index = format!("-sample_index={prefix}_{kind}");
            let (top, stderr) = pprof(&["-top", "-unit=B", &index], &profile);
            assert_eq!(stderr.trim(), "", "pprof warns");
            assert_eq!(total_samples(&top), figure, "{prefix}_{kind}");
        }
    }
}

/// The unstripped build given to pprof names the frames of the stripped build the tracer saw (the build ids
/// match; the addresses are the stripped file's), with the figures report.json gives the call site.
#[test]
fn pprof_names_a_stripped_builds_frames_from_the_unstripped_build() {
    let unstripped = fixture("allocs");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pprof_stripped");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stripped = dir.join("allocs-stripped");
    assert!(Command::new("strip").arg("-o").arg(&stripped).arg(&unstripped).status().unwrap().success());
    let out = output_dir("pprof_go_stripped");
    let report = common::trace_waiting_fixture("pprof_go_stripped", &stripped, &[]);
    assert!(!report.has_frame("malloc_kept"), "the stripped fixture's frames are unnamed in the report");
    let profile = out.join("profile.pb.gz");

    let (top, _) = pprof(&["-top", "-unit=B", "-sample_index=malloc_inuse_space"], &profile);
    assert!(!top.contains("malloc_kept"), "named without the unstripped build:\n{top}");
    let args = ["-top", "-unit=B", "-sample_index=malloc_inuse_space", unstripped.to_str().unwrap()];
    let (top, stderr) = pprof(&args, &profile);
    assert_eq!(stderr.trim(), "", "pprof warns");
    let line = top.lines().find(|l| l.ends_with(" malloc_kept")).unwrap_or_else(|| panic!("not named:\n{top}"));
    let flat: u64 = line.split_whitespace().next().unwrap().trim_end_matches('B').parse().unwrap();
    let in_report = report.stacks().iter().any(|s| s["source"] == "malloc" && s["outstanding_bytes"] == 3000);
    assert!(in_report, "report.json has malloc_kept's 3000 bytes on one stack");
    assert_eq!(flat, 3000, "malloc_kept keeps 3 x 1000 bytes (allocs.c)");
}
