//! Project tasks: `cargo xtask <task>`. Each task installs what it needs first, so a fresh machine gets
//! from clone to result with one command; when everything is present the setup costs a few seconds.

mod bench;
mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  setup        install the eBPF toolchain (pinned nightly + rust-src, llvm-22-dev, bpf-linker) and test tools
  build-ebpf   build the kernel programs (runs setup first)
  build        build-ebpf, then the release binary target/release/dispatch-leaktrace
  demo         build, then trace the bundled Bun demo server over some turns and write its reports
  demo-native  the same with the small C program in demo/native
  test         build-ebpf, then run every test (needs root: the tests load eBPF programs)
  bench        build, then measure the tracing overhead, the tracer's memory, a soak and 262,144 stacks, and
               rewrite BENCHMARKS.md ([--runs N] [--quick] [--only WORKLOADS]; --help for all; as root)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::all(),
        Some("build-ebpf") => build_ebpf(),
        Some("build") => build(),
        Some("demo") => demo::run_demo(&args[1..]),
        Some("demo-native") => demo_native(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Where `build-ebpf` leaves the kernel object; tracer/build.rs embeds it from here.
pub fn ebpf_target_dir() -> PathBuf {
    root().join("target/ebpf")
}

fn build_ebpf() -> Result<()> {
    setup::ebpf_toolchain()?;
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", setup::NIGHTLY, "cargo", "build", "--release"])
        .current_dir(root().join("tracer-ebpf"))
        .env("CARGO_TARGET_DIR", ebpf_target_dir());
    // The outer cargo's settings are for the host build; they must not leak into the BPF build.
    for var in
        ["RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTUP_TOOLCHAIN", "CARGO_BUILD_TARGET"]
    {
        cargo.env_remove(var);
    }
    run(&mut cargo)
}

pub fn build() -> Result<()> {
    build_ebpf()?;
    run(Command::new(env!("CARGO")).args(["build", "--release", "--package", "tracer"]).current_dir(root()))
}

pub fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs the tracer on the small native demo: a C program that leaks mapped memory.
fn demo_native(extra: &[String]) -> Result<()> {
    build()?;
    let demo_bin = setup::build_native_demo()?;
    let output = root().join("leaktrace-demo");
    let mut tracer = if is_root() {
        Command::new(root().join("target/release/dispatch-leaktrace"))
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(root().join("target/release/dispatch-leaktrace"));
        sudo
    };
    tracer.arg("--output").arg(&output).args(extra).arg("--").arg(&demo_bin);
    run(&mut tracer)
}

fn test(extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the tests load eBPF programs into the kernel: run them as root (sudo -E cargo xtask test)");
    }
    setup::all()?;
    build_ebpf()?;
    run(Command::new(env!("CARGO")).args(["test", "--workspace"]).args(extra).current_dir(root()))
}
