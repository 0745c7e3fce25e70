//! Builds the eBPF object (`tracer-ebpf`) for `bpfel-unknown-none` and puts it
//! in OUT_DIR, where `src/probes` embeds it.
//!
//! The host toolchain cannot build for BPF on these machines (no `rust-src`
//! for `-Z build-std`), so this drives Debian's rustc, which ships a prebuilt
//! `core` for the target, with bpf-linker; both are installed by
//! `cargo xtask setup`. If a nightly with `rust-src` is present instead, it
//! is used with `-Z build-std=core`.
//!
//! Set LEAKTRACE_EBPF_OBJECT to a prebuilt object to skip the build.

use std::{env, path::PathBuf};

#[path = "ebpf_build.rs"]
mod ebpf_build;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out_dir.join("tracer-ebpf.o");
    println!("cargo:rerun-if-env-changed=LEAKTRACE_EBPF_OBJECT");

    if let Some(prebuilt) = env::var_os("LEAKTRACE_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        std::fs::copy(&prebuilt, &dest)
            .unwrap_or_else(|e| panic!("copy {}: {e}", prebuilt.display()));
        return;
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .expect("tracer/ lives in the workspace root");
    for dir in [
        "tracer-ebpf/src",
        "tracer-ebpf/Cargo.toml",
        "tracer-common/src",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    // A target dir of its own: the outer cargo holds the lock on `target/`.
    let target_dir = root.join("target").join("bpf");
    let mut cmd = ebpf_build::command(root, &target_dir, &[]);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run the eBPF build ({e}); run `cargo xtask setup` first")
    });
    if !status.success() {
        panic!("building tracer-ebpf failed; run `cargo xtask setup` to install the BPF toolchain");
    }
    let built = target_dir.join("bpfel-unknown-none/release/tracer-ebpf");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}
