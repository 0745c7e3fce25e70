//! The command that builds tracer-ebpf for `bpfel-unknown-none`: used by
//! tracer's build script, and by `cargo xtask check` (with `-Dwarnings`,
//! the BPF target's own compile being the lint clippy cannot run there).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none";

/// `cargo build` of tracer-ebpf in the workspace at `root`, into
/// `target_dir`, with `extra_rustflags` after the build's own.
pub fn command(root: &Path, target_dir: &Path, extra_rustflags: &[&str]) -> Command {
    let mut rustflags = vec!["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"];
    rustflags.extend_from_slice(extra_rustflags);
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
        .arg(target_dir);
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    // bpf-linker is installed by `cargo install`, into $CARGO_HOME/bin.
    let mut path = vec![cargo_home().join("bin")];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    cmd.env(
        "PATH",
        env::join_paths(path).expect("PATH entries are valid"),
    );

    cmd
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
