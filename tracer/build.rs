//! Embeds the kernel object built by `cargo xtask build-ebpf`.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LEAKTRACE_EBPF_OBJECT");
    let object = match std::env::var_os("LEAKTRACE_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/bpfel-unknown-none/release/tracer-ebpf"),
    };
    if !object.is_file() {
        eprintln!(
            "error: the kernel programs are not built ({} is missing): run `cargo xtask build-ebpf` first",
            object.display()
        );
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=LEAKTRACE_EBPF_OBJECT={}", object.canonicalize().unwrap_or(object).display());
}
