//! Helpers for the tests that trace real Bun servers (demo/bun run as a script, demo/streaming compiled):
//! Bun itself, a server's /health, the tracer started with the demos' turn patterns, and a leak's truth
//! measured untraced.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::{Running, start_tracer};

/// The demos' log lines: `turn start t12`, `turn end t12`.
pub const TURN_START: &str = r"^turn start (?P<id>t\d+)$";
pub const TURN_END: &str = r"^turn end (?P<id>t\d+)$";

/// Bun 1.3.13 from npm, as `cargo xtask setup` installs it.
pub fn bun() -> PathBuf {
    let bun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bun/node_modules/@oven/bun-linux-x64/bin/bun");
    assert!(bun.exists(), "Bun is not installed at {}: run `cargo xtask setup` (cargo xtask test does)", bun.display());
    bun
}

/// A demo server's `GET /health` (turns done, RSS, ...).
pub fn health(port: u16) -> Value {
    let script = format!("console.log(JSON.stringify(await (await fetch('http://127.0.0.1:{port}/health')).json()))");
    let output = Command::new(bun()).args(["-e", &script]).output().unwrap();
    serde_json::from_slice(&output.stdout).expect("the server's health is JSON")
}

/// The tracer on `pid`, a timeline point a second, turns from the demos' log lines, reports into `out`.
pub fn start_turn_tracer(out: &Path, pid: u32) -> Running {
    start_turn_tracer_with(out, pid, &[])
}

/// [`start_turn_tracer`] with more options.
pub fn start_turn_tracer_with(out: &Path, pid: u32, extra: &[&str]) -> Running {
    let pid = pid.to_string();
    let mut args = vec![
        "-o",
        out.to_str().unwrap(),
        "--pid",
        &pid,
        "--interval",
        "1s",
        "--turn-start",
        TURN_START,
        "--turn-end",
        TURN_END,
    ];
    args.extend_from_slice(extra);
    start_tracer(&args)
}

/// A leak's truth, untraced: the RSS slope per turn of the server on `port` (with only that leak on), after a
/// warm-up round, over five rounds sent by `rounds(port, n)` as the traced run sends them.
pub fn rss_per_turn(port: u16, rounds: impl Fn(u16, u32)) -> f64 {
    rounds(port, 1);
    let before = health(port);
    rounds(port, 5);
    let after = health(port);
    let figure = |h: &Value, name: &str| h[name].as_f64().unwrap();
    (figure(&after, "rss") - figure(&before, "rss")) / (figure(&after, "turns") - figure(&before, "turns"))
}
