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

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none";

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
    let debian = Path::new(DEBIAN_BPF_CORE).is_dir() && Path::new(DEBIAN_CARGO).exists();
    let mut cmd = if debian {
        Command::new(DEBIAN_CARGO)
    } else {
        // Fallback: a nightly with rust-src builds core itself.
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "cargo"]);
        c
    };
    scrub_outer_cargo_env(&mut cmd);
    if debian {
        cmd.env("RUSTC", DEBIAN_RUSTC);
    } else {
        cmd.env("CARGO_UNSTABLE_BUILD_STD", "core");
    }
    cmd.current_dir(root)
        .args(["build", "--package", "tracer-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    cmd.env("RUSTC_BOOTSTRAP", "1").env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f"),
    );
    // bpf-linker is installed by `cargo install`, into $CARGO_HOME/bin.
    let mut path = vec![cargo_home().join("bin")];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    cmd.env(
        "PATH",
        env::join_paths(path).expect("PATH entries are valid"),
    );

    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run the eBPF build ({e}); run `cargo xtask setup` first")
    });
    if !status.success() {
        panic!("building tracer-ebpf failed; run `cargo xtask setup` to install the BPF toolchain");
    }
    let built = target_dir.join("bpfel-unknown-none/release/tracer-ebpf");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Variables the outer cargo sets for build scripts would otherwise steer the
/// inner build (wrong rustc, host flags, the outer target dir).
fn scrub_outer_cargo_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_")
            && key != "CARGO_HOME"
            && key != "CARGO_NET_OFFLINE"
            && key != "CARGO_REGISTRIES_CRATES_IO_PROTOCOL"
            || matches!(
                key,
                "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTUP_TOOLCHAIN"
                    | "RUST_RECURSION_COUNT"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "DEBUG"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "NUM_JOBS"
            )
        {
            cmd.env_remove(key);
        }
    }
}
