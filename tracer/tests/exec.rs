//! A target that calls exec: the old image's memory is released at the exec, the new image is named and
//! its allocator probed, and the report says so. Ground truth in tests/fixtures/exec_before.c and
//! exec_after.c.

mod common;

use std::process::Command;

use common::{Running, fixture, output_dir};

const MIB: u64 = 1 << 20;
const SITES: &[&str] = &["before_kept", "before_mapped", "before_brk", "after_kept", "after_freed", "after_mapped"];

#[test]
fn an_exec_releases_the_old_image_and_the_new_one_is_traced_exactly() {
    let before = fixture("exec_before");
    let after = fixture("exec_after");
    let out = output_dir("exec");
    let mut target = Running::spawn(Command::new(&before).arg("wait").arg(&after));
    let pid = target.pid().to_string();
    let mut tracer = common::start_tracer(&["-o", out.to_str().unwrap(), "--pid", &pid, "-i", "1s"]);
    target.send_line("go");
    target.stdout.wait_for("before done");
    // Every event of the old image counted before it goes.
    tracer.snapshot();
    target.send_line("exec");
    target.stdout.wait_for("after started");
    let said = tracer.stderr.wait_for("exec_after too, loaded since");
    assert!(said.contains("mimalloc (2)"), "the new image's mi_malloc and mi_free are probed: {said}");
    target.send_line("allocate");
    let report = common::finish_waiting_fixture(target, tracer, &out);

    assert!(report.0["target"]["exe"].as_str().unwrap().ends_with("/exec_after"), "{}", report.0["target"]);
    let execs = report.0["execs"].as_array().expect("report.json lists the exec");
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert!(execs[0]["from"].as_str().unwrap().ends_with("/exec_before"), "{}", execs[0]);
    assert!(execs[0]["to"].as_str().unwrap().ends_with("/exec_after"), "{}", execs[0]);
    let released = |source: &str| execs[0]["released_bytes"][source].as_u64().unwrap_or(0);
    assert!(released("page-fault") >= 12 * MIB, "the old image's touched pages were released: {}", execs[0]);
    assert!(released("malloc") >= 1_024_000, "its malloc blocks too: {}", execs[0]);

    // The old image: allocated, and nothing left.
    let kept = report.by_site("malloc", "before_kept", SITES);
    assert_eq!((kept.outstanding_bytes, kept.outstanding_allocs, kept.allocated_bytes), (0, 0, 1_024_000));
    for source in ["page-fault", "mmap", "brk"] {
        for site in ["before_mapped", "before_brk"] {
            assert_eq!(report.by_site(source, site, SITES).outstanding_bytes, 0, "{source} at {site}");
        }
    }
    let by_source = |source: &str| report.0["totals"]["by_source"][source]["outstanding_bytes"].as_u64().unwrap_or(0);
    assert!(by_source("brk") < MIB, "the new image's break starts anew: brk outstanding {}", by_source("brk"));

    // The new image, exact.
    let after_kept = report.by_site("malloc", "after_kept", SITES);
    assert_eq!(
        (after_kept.outstanding_bytes, after_kept.outstanding_allocs, after_kept.allocated_bytes),
        (3000, 3, 3000)
    );
    let after_freed = report.by_site("malloc", "after_freed", SITES);
    assert_eq!((after_freed.outstanding_bytes, after_freed.allocated_bytes), (0, 10_000));
    assert_eq!(report.by_site("mmap", "after_mapped", SITES).outstanding_bytes, 2 * MIB);
    assert_eq!(report.by_site("page-fault", "after_mapped", SITES).outstanding_bytes, 2 * MIB);

    // Every stack that holds memory names frames of the image it belongs to: none of the old image's, and
    // no garbage read as addresses.
    for stack in report.stacks() {
        if stack["outstanding_bytes"].as_u64().unwrap() == 0 {
            continue;
        }
        let frames: Vec<&str> = stack["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        assert!(!frames.iter().any(|f| f.starts_with("before_")), "old image's stack still holds memory: {stack}");
    }
    common::assert_detached(&report);
}
