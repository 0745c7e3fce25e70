//! Developer tasks: `cargo xtask setup|build|check|demo|test|bench`.

mod bench;
#[path = "../../tracer/ebpf_build.rs"]
mod ebpf_build;
mod engine;
mod image;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "leaktrace developer tasks")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (Debian packages, bpf-linker, Go toolchains for the tests); idempotent.
    Setup,
    /// Build the eBPF object and target/release/leaktrace.
    Build,
    /// The habits the repository enforces: `cargo fmt --check`, and clippy
    /// with `-D warnings` on every crate of the workspace, tests included
    /// (the workspace's lints in Cargo.toml). `cargo xtask test` runs it first.
    Check,
    /// Build, then trace the bundled leaky demo program and print real reports.
    Demo,
    /// Build leaktrace's own container image (`leaktrace:VERSION`) with
    /// `docker import`, for the node agent (deploy/kubernetes/daemonset.yaml).
    Image,
    /// Run every test: unit tests and end-to-end tests against the real kernel (as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Cost of tracing: the malloc/free microbenchmark, redis and a Go HTTP
    /// service, each untraced, under empty probes at leaktrace's places and
    /// under leaktrace (redis also under a memleak-style bpftrace script).
    Bench {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Runs per configuration (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Append the result to bench/RESULTS.md.
        #[arg(long)]
        record: bool,
        /// Run only these workloads (default: all).
        #[arg(long, value_delimiter = ',', value_parser = ["micro", "unwind", "redis", "http", "kernel", "attach", "scale", "reachability"])]
        only: Vec<String>,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    match args.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run_build()?;
            build(&root)
        }
        Cmd::Image => {
            setup::run()?;
            build(&root)?;
            let _engine = engine::ensure(&root)?;
            image::build(&root, &leaktrace_bin(&root)).map(|_| ())
        }
        Cmd::Demo => {
            setup::run_build()?;
            build(&root)?;
            demo(&root)
        }
        Cmd::Check => check(&root),
        Cmd::Test { args } => {
            setup::run()?;
            build(&root)?;
            // A lint or format failure fails the run, after the tests ran.
            let checked = check(&root);
            // The container tests run against a real engine.
            let _engine = engine::ensure(&root)?;
            let tested = test(&root, &args);
            checked.and(tested)
        }
        Cmd::Bench {
            seconds,
            rounds,
            record,
            only,
        } => {
            setup::run_bench()?;
            build(&root)?;
            bench::run(&root, seconds, rounds, record, &only)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(root: &Path) -> Result<()> {
    eprintln!("xtask: building leaktrace (release, with its eBPF object)");
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "--package",
        "leaktrace",
    ]))
}

pub fn leaktrace_bin(root: &Path) -> PathBuf {
    root.join("target/release/leaktrace")
}

/// Compiles a C source with the flags leaktrace's stacks need.
pub fn compile_c(src: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    run(Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(out)
        .arg(src))
}

fn demo(root: &Path) -> Result<()> {
    let demo_bin = root.join("target/demo/leaky_demo");
    let flamegraph = root.join("target/demo/flamegraph.svg");
    let pprof_dir = root.join("target/demo/pprof");
    compile_c(&root.join("xtask/demo/leaky_demo.c"), &demo_bin)?;
    let mut target = Command::new(&demo_bin)
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the demo target")?;
    let pid = target.id();
    eprintln!(
        "xtask: started the demo target (pid {pid}): it leaks one 4096-byte buffer per request \
         in leak_request_buffer(), 5 requests/s, and frees its other buffers"
    );
    thread::sleep(Duration::from_millis(500));
    let status = Command::new(leaktrace_bin(root))
        .args([
            "--pid",
            &pid.to_string(),
            "--interval",
            "2",
            "--count",
            "5",
            "--older-than",
            "1s",
            "--flamegraph",
        ])
        .arg(&flamegraph)
        .arg("--pprof-dir")
        .arg(&pprof_dir)
        .status();
    let _ = target.kill();
    let _ = target.wait();
    let status = status.context("cannot run leaktrace")?;
    if !status.success() {
        bail!("leaktrace failed: {status}");
    }
    eprintln!(
        "xtask: the last report as a flame graph: {}; as pprof profiles: {}/heap-N.pb.gz \
         (go tool pprof -top heap-5.pb.gz)",
        flamegraph.display(),
        pprof_dir.display()
    );
    Ok(())
}

fn check(root: &Path) -> Result<()> {
    eprintln!("xtask: checking format and lints");
    let fmt = run(Command::new("cargo")
        .current_dir(root)
        .args(["fmt", "--all", "--check"]));
    // tracer-ebpf is linted for the host: clippy for its BPF target needs
    // a nightly with rust-src, which these machines cannot fetch (its
    // build uses Debian's rustc, which has no clippy). Its BPF build with
    // warnings denied stands in for that.
    let clippy = run(Command::new("cargo").current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]));
    let bpf = run(&mut ebpf_build::command(
        root,
        &root.join("target").join("bpf-check"),
        &["-Dwarnings"],
    ));
    fmt.and(clippy).and(bpf)
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    eprintln!("xtask: running the test suite");
    run(Command::new("cargo")
        .current_dir(root)
        .env("LEAKTRACE_BIN", leaktrace_bin(root))
        // Every test binary runs even when one fails: one failure shows all.
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra))
}
