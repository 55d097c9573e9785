//! The README's main command traces demo/native/session_leak.c: its flamegraph's widest leaf must be the
//! demo's leaking function, with exactly the bytes the demo leaks.

mod common;

use std::{collections::HashMap, path::Path};

use common::{Report, compile, output_dir, start_tracer};

#[test]
fn the_widest_leaf_is_the_leaking_function() {
    let demo = compile("session_leak", &Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/native/session_leak.c"));
    let out = output_dir("the_widest_leaf_is_the_leaking_function");
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--", demo.to_str().unwrap()]);
    assert!(tracer.wait().success());

    let folded = std::fs::read_to_string(out.join("stacks.folded")).unwrap();
    let mut by_leaf: HashMap<&str, u64> = HashMap::new();
    for line in folded.lines() {
        let (frames, bytes) = line.rsplit_once(' ').unwrap();
        *by_leaf.entry(frames.rsplit(';').next().unwrap()).or_default() += bytes.parse::<u64>().unwrap();
    }
    let (widest, bytes) = by_leaf.iter().max_by_key(|(_, bytes)| **bytes).unwrap();
    assert_eq!((*widest, *bytes), ("retain_session_buffer", 300 * 128 * 1024), "{by_leaf:?}");

    let report = Report::load(&out);
    assert_eq!(report.by_leaf("mmap", "cache_reply").outstanding_bytes, 8 * 32 * 1024);
    assert_eq!(report.by_leaf("mmap", "render_reply").outstanding_bytes, 0);
    assert_eq!(report.by_leaf("mmap", "render_reply").allocated_bytes, 300 * 256 * 1024);
}
