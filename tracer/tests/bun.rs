//! The real target: Bun 1.3.13 (from npm, installed by `cargo xtask setup`) running the mock of
//! dispatch-server in demo/bun, traced by pid while turns are driven. Resident memory by JavaScript
//! function: the most suspicious site is one of the two leaks, and the bounded cache is not near the top.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use common::{Report, Running, output_dir, start_tracer};

const LEAKS: [&str; 2] = ["retainStreamChunk", "buildMessage"];
/// The demo server's log lines (demo/bun/README.md).
const TURN_START: &str = r"^turn start (?P<id>t\d+)$";
const TURN_END: &str = r"^turn end (?P<id>t\d+)$";

fn bun() -> PathBuf {
    let bun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bun/node_modules/@oven/bun-linux-x64/bin/bun");
    assert!(bun.exists(), "Bun is not installed at {}: run `cargo xtask setup` (cargo xtask test does)", bun.display());
    bun
}

fn demo(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/bun").join(file)
}

/// The demo server, with jitdump into `jitdump` when given. Returns it with its port.
fn start_server(jitdump: Option<&Path>) -> (Running, u16) {
    let mut command = Command::new(bun());
    command.arg(demo("server.ts")).env("PORT", "0");
    if let Some(dir) = jitdump {
        std::fs::create_dir_all(dir).unwrap();
        command.env("BUN_JSC_useJITDump", "1").env("BUN_JSC_jitDumpDirectory", dir);
    }
    let mut server = Running::spawn(&mut command);
    let port = server.stdout.wait_for("listening ").trim_start_matches("listening ").parse().unwrap();
    (server, port)
}

fn drive(port: u16, turns: u32) {
    let status = Command::new(bun())
        .arg(demo("driver.ts"))
        .args(["--url", &format!("http://127.0.0.1:{port}"), "--turns", &turns.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the driver failed");
}

#[test]
fn the_top_suspect_is_a_leaking_javascript_function() {
    let out = output_dir("bun_top_suspect");
    let (server, port) = start_server(Some(&out.join("jitdump")));
    let mut tracer = start_tracer(&[
        "-o",
        out.join("trace").to_str().unwrap(),
        "--pid",
        &server.pid().to_string(),
        "--interval",
        "1s",
        "--turn-start",
        TURN_START,
        "--turn-end",
        TURN_END,
    ]);
    // Rounds of turns with pauses, as a server sees them: the window holds a snapshot a second.
    for _ in 0..6 {
        drive(port, 25);
        thread::sleep(Duration::from_millis(800));
    }
    tracer.signal(libc::SIGINT);
    assert!(tracer.wait().success());

    let report = Report::load(&out.join("trace"));
    // Every turn the driver sent was seen, start and end.
    let turns = report.0["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 150, "turns seen");
    assert!(turns.iter().all(|t| t["end"].is_string()));
    let suspects: Vec<(&str, &str)> = report.0["suspects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["site"].as_str().unwrap(), s["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(report.0["suspects"][0]["source"], "page-fault");
    let (top, verdict) = suspects[0];
    assert!(LEAKS.contains(&top), "top suspect {top}: {suspects:?}");
    assert_eq!(verdict, "grows", "{suspects:?}");
    assert!(!suspects[..3].iter().any(|(site, _)| *site == "cacheReply"), "{suspects:?}");
    // JIT frames carry their function's name and tier.
    let frames: Vec<&str> = report
        .stacks()
        .iter()
        .flat_map(|s| s["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()))
        .collect();
    for function in LEAKS {
        assert!(frames.iter().any(|f| f.starts_with(&format!("{function} [JS:"))), "no JIT frame names {function}");
    }
    let growth = std::fs::read_to_string(out.join("trace/growth.svg")).unwrap();
    assert!(growth.contains("retainStreamChunk"));
}

#[test]
fn without_jitdump_the_tracer_says_how_to_enable_it() {
    let out = output_dir("bun_without_jitdump");
    let (server, port) = start_server(None);
    let mut tracer = start_tracer(&["-o", out.to_str().unwrap(), "--pid", &server.pid().to_string()]);
    drive(port, 20);
    tracer.signal(libc::SIGINT);
    assert!(tracer.wait().success());
    let hint = tracer.stderr.wait_for("writes no jitdump");
    assert!(hint.contains("BUN_JSC_useJITDump=1"), "{hint}");
    let report = Report::load(&out);
    assert!(report.stacks().iter().all(|s| !s["frames"].to_string().contains("[JS:")));
}
