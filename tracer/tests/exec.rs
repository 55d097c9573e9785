//! A target that calls exec: the old image's memory is released at the exec, the new image is named and
//! its allocator probed, and the report says so. Ground truth in tests/fixtures/exec_before.c and
//! exec_after.c.

mod common;

use std::process::Command;

use common::{Running, fixture, output_dir};

const MIB: u64 = 1 << 20;
/// One trace at a time. Two at once beside a build left exec_after's pages 4 short or over in a few runs
/// in ten; its figures assume a quiet machine (cause not established: this VM's DAMON pages out file
/// pages, and a page faulted in again counts for the stack that touched it).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SITES: &[&str] = &["before_kept", "before_mapped", "before_brk", "after_kept", "after_freed", "after_mapped"];

#[test]
fn an_exec_releases_the_old_image_and_the_new_one_is_traced_exactly() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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

/// A launched script runs its interpreters first (`#!/usr/bin/env bash`: env, then bash), and they allocate
/// through the C library from their first instruction: its allocator is probed before the script starts,
/// so every free bash makes matches a traced malloc, and the program the script execs is exact.
/// Ground truth: frees_all.c allocates 1,000 blocks of 4,096 bytes in allocate_all and frees them all. It
/// lingers 0.6 s: an image must still be there when the collector reads its maps, to be named.
#[test]
fn a_launched_script_is_traced_from_its_interpreter_s_first_allocation() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let out = output_dir("a_launched_script");
    let script = out.with_extension("sh");
    let text = format!(
        "#!/usr/bin/env bash\n\
         # bash grows and frees strings and runs a subshell before it execs the fixture\n\
         words=''\n\
         for i in $(seq 1 500); do words=\"$words word$i\"; done\n\
         unset words\n\
         exec {} 300 300\n",
        fixture("frees_all").display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let report = common::trace_launched(&out, &["--quiet", "--overhead", "off"], &[script.to_str().unwrap()]);

    let execs = report.0["execs"].as_array().expect("report.json lists the execs");
    // Named as exec ran them, though the process had moved on (or was gone) when the collector got there.
    let files: Vec<(&str, &str)> =
        execs.iter().map(|exec| (exec["from"].as_str().unwrap(), exec["to"].as_str().unwrap())).collect();
    let frees_all = fixture("frees_all");
    let bash = files[0].1;
    assert!(bash.ends_with("/bash"), "env found bash on PATH: {files:?}");
    assert_eq!(
        files,
        [(script.to_str().unwrap(), bash), (bash, frees_all.to_str().unwrap())],
        "the script's env execs bash, which execs frees_all"
    );
    for exec in execs {
        // Each image's break released at its end: bash's and env's small heaps, not a span between two
        // images' breaks (135 GB once, when the new image's break was read after it had exec'd again).
        assert!(exec["released_bytes"]["brk"].as_u64().unwrap_or(0) < 16 << 20, "{exec}");
    }
    let bash_freed: u64 = execs.iter().filter_map(|exec| exec["released_bytes"]["malloc"].as_u64()).sum();
    assert!(bash_freed > 0, "bash's blocks were traced, and released at the exec: {execs:?}");
    assert_eq!(report.counter("unmatched_frees"), 0, "every free of bash's matched a traced malloc");
    let figures = report.by_site("malloc", "allocate_all", &["allocate_all"]);
    assert_eq!((figures.outstanding_bytes, figures.outstanding_allocs, figures.allocated_bytes), (0, 0, 4_096_000));
}

/// A command that execs one which exits at once: by the time the collector reads the exec, the process is
/// gone, and the report names the program exec ran, not the shell that ran it.
#[test]
fn a_command_gone_before_its_exec_is_read_is_named_by_the_file_exec_ran() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let out = output_dir("a_command_gone_before_its_exec_is_read");
    let report = common::trace_launched(&out, &["--quiet", "--no-alloc"], &["/bin/sh", "-c", "exec /bin/true"]);
    let execs = report.0["execs"].as_array().expect("report.json lists the exec");
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(execs[0]["to"], "/bin/true", "{execs:?}");
    let exe = report.0["target"]["exe"].as_str().unwrap();
    assert!(exe.ends_with("/true"), "not the shell: {}", report.0["target"]);
}
