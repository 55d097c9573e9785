//! Installs what the build and the tests need, idempotently: each step first checks whether its result is
//! already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{root, run};

/// Emits LLVM 22 bitcode, which the bpf-linker below (built against LLVM 22) reads. Do not float it: a
/// nightly from Rust 1.99 on emits LLVM 23. Keep in step with tracer-ebpf/rust-toolchain.toml.
pub const NIGHTLY: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Bun as the traced server runs it: the npm build of the same version.
const BUN_PACKAGE: &str = "@oven/bun-linux-x64";
const BUN_VERSION: &str = "1.3.13";

pub fn all() -> Result<()> {
    ebpf_toolchain()?;
    // bpftool checks that probes are detached; tmux gives the status-line test a terminal; useradd and setpriv
    // (passwd, util-linux) run the hostile-user tests; golang-go reads profile.pb.gz with `go tool pprof`;
    // chromium loads report.html; sqlite3 is a Debian program built without frame pointers, whose stacks the
    // unwinder must carry to main.
    apt_packages(&[
        ("bpftool", "/usr/sbin/bpftool"),
        ("tmux", "/usr/bin/tmux"),
        ("passwd", "/usr/sbin/useradd"),
        ("util-linux", "/usr/bin/setpriv"),
        ("golang-go", "/usr/bin/go"),
        ("chromium", "/usr/bin/chromium"),
        ("sqlite3", "/usr/bin/sqlite3"),
    ])?;
    bun()?;
    Ok(())
}

/// Installs Bun from npm into `.tools/bun` (ignored by git) and returns the binary's path.
pub fn bun() -> Result<PathBuf> {
    let prefix = root().join(".tools/bun");
    let binary = prefix.join("node_modules").join(BUN_PACKAGE).join("bin/bun");
    let installed = Command::new(&binary).arg("--version").output();
    if installed.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == BUN_VERSION) {
        return Ok(binary);
    }
    eprintln!("xtask: installing {BUN_PACKAGE}@{BUN_VERSION} from npm into {}", prefix.display());
    std::fs::create_dir_all(&prefix)?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
        .arg(&prefix)
        .arg(format!("{BUN_PACKAGE}@{BUN_VERSION}")))
    .context("npm install of Bun failed (needs node and npm)")?;
    Ok(binary)
}

pub fn ebpf_toolchain() -> Result<()> {
    nightly()?;
    apt_packages(&[("llvm-22-dev", &format!("{LLVM_PREFIX}/bin/llvm-config"))])?;
    bpf_linker()
}

fn nightly() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src"))
        });
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing Rust {NIGHTLY} with rust-src");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

/// Debian packages, each checked by a file it installs.
/// The tools `cargo xtask bench` compares against: bpftrace (its floor and memleak-style script) and
/// perf (the floor at the tracer's placement). heaptrack is measured only when it is already installed.
pub fn bench_tools() -> Result<()> {
    apt_packages(&[("bpftrace", "/usr/bin/bpftrace"), ("linux-perf", "/usr/bin/perf")])
}

/// bpftool: the benchmark's stack walk names the tracer's programs with it.
pub fn bpftool() -> Result<()> {
    apt_packages(&[("bpftool", "/usr/sbin/bpftool")])
}

fn apt_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> =
        packages.iter().filter(|(_, file)| !std::path::Path::new(file).exists()).map(|(name, _)| *name).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let sudo = !crate::is_root();
    let apt = |args: &[&str]| {
        let mut command = if sudo { Command::new("sudo") } else { Command::new("apt-get") };
        if sudo {
            command.arg("apt-get");
        }
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run(&mut apt(&["update", "-qq"]))?;
    run(apt(&["install", "-y", "-qq", "--no-install-recommends"]).args(&missing))
}

/// Compiles the native demo program (C, frame pointers on) and returns its path.
pub fn build_native_demo() -> Result<PathBuf> {
    let binary = root().join("target/demo/session_leak");
    std::fs::create_dir_all(binary.parent().expect("has a parent"))?;
    compile_c(&root().join("demo/native/session_leak.c"), &binary, &["-O1", "-pthread"])?;
    Ok(binary)
}

/// Compiles a C program as the tracers need it (symbols, frame pointers), with `flags` besides.
pub fn compile_c(source: &Path, binary: &Path, flags: &[&str]) -> Result<()> {
    let status = Command::new("cc")
        .args(["-g", "-fno-omit-frame-pointer"])
        .args(flags)
        .arg("-o")
        .arg(binary)
        .arg(source)
        .status()
        .context("cannot run cc: install gcc")?;
    if !status.success() {
        bail!("cannot compile {}", source.display());
    }
    Ok(())
}
