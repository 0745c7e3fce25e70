//! How long leaktrace takes to attach to a running service (from its
//! start to its "tracing pid" line) and to let go of it again (from
//! SIGINT to its exit, final report and detach included): redis (a C
//! service on jemalloc) and the Go net/http service, the Go service with
//! `--kernel` (its twelve kernel-memory programs more) and `--kernel`
//! alone (the whole kernel, no process), five times each, under load from
//! nobody. `-v` makes leaktrace print how long each eBPF program took to
//! load (the kernel's verifier), kept for the table.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::measure::{free_port, median, wait_for, Server};
use crate::leaktrace_bin;

/// Attaches per target.
pub const RUNS: usize = 5;

/// One target's medians.
pub struct Attach {
    pub target: String,
    pub to_tracing: Vec<f64>,
    pub to_exit: Vec<f64>,
    /// The `-v` line of the last run: each program's load time.
    pub programs: String,
}

pub fn measure(root: &Path, go_service: &Path) -> Result<Vec<Attach>> {
    let mut out = Vec::new();
    let port = free_port()?;
    let redis = Server(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", ""])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (cargo xtask setup installs it)")?,
    );
    wait_for("redis-server", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    let pid = redis.0.id().to_string();
    out.push(runs(
        root,
        "redis-server (C, jemalloc)",
        &["--pid", &pid],
        TRACING,
    )?);
    drop(redis);

    let (go, _) = super::http::serve(go_service)?;
    let pid = go.0.id().to_string();
    out.push(runs(
        root,
        "Go net/http service",
        &["--pid", &pid],
        TRACING,
    )?);
    out.push(runs(
        root,
        "Go net/http service, --kernel",
        &["--kernel", "--pid", &pid],
        TRACING,
    )?);
    drop(go);
    out.push(runs(
        root,
        "--kernel alone (the whole kernel)",
        &["--kernel"],
        "leaktrace: tracing the whole kernel",
    )?);
    Ok(out)
}

/// The line that says a process is traced, every probe attached.
const TRACING: &str = "tracing pid";

fn runs(root: &Path, target: &str, args: &[&str], ready: &str) -> Result<Attach> {
    let mut a = Attach {
        target: target.to_string(),
        to_tracing: Vec::new(),
        to_exit: Vec::new(),
        programs: String::new(),
    };
    for round in 0..RUNS {
        let (tracing, exit, programs) = once(root, args, ready)?;
        eprintln!(
            "attach round {}: {target}: tracing after {:.0} ms, exit {:.0} ms after SIGINT",
            round + 1,
            tracing * 1e3,
            exit * 1e3
        );
        a.to_tracing.push(tracing);
        a.to_exit.push(exit);
        a.programs = programs;
    }
    Ok(a)
}

/// (seconds to the `ready` line, seconds from SIGINT to exit, the `-v`
/// line).
fn once(root: &Path, args: &[&str], ready: &str) -> Result<(f64, f64, String)> {
    let start = Instant::now();
    let mut child = Command::new(leaktrace_bin(root))
        .arg("-v")
        .args(args)
        .args(["--interval", "3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting leaktrace")?;
    let stderr = child.stderr.take().context("leaktrace stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut programs = String::new();
    let mut tracing = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("leaktrace: eBPF programs loaded in ") {
            programs = rest.to_string();
        }
        if line.contains(ready) {
            tracing = Some(start.elapsed().as_secs_f64());
            break;
        }
        if line.contains("error") {
            bail!("leaktrace failed to attach: {line}");
        }
    }
    let Some(tracing) = tracing else {
        bail!("leaktrace exited before attaching");
    };
    let drain = std::thread::spawn(move || lines.for_each(drop));
    let signalled = Instant::now();
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    let exit = signalled.elapsed().as_secs_f64();
    let _ = drain.join();
    if !status.success() {
        bail!("leaktrace ended with {status} after SIGINT");
    }
    Ok((tracing, exit, programs))
}

pub fn table(rows: &mut [Attach]) -> String {
    let mut s = format!(
        "| target | start to tracing (median of {RUNS}) | SIGINT to exit (median) | each run, ms |\n\
         | --- | ---: | ---: | --- |\n"
    );
    for r in rows.iter_mut() {
        let each: Vec<String> = r
            .to_tracing
            .iter()
            .map(|t| format!("{:.0}", t * 1e3))
            .collect();
        s.push_str(&format!(
            "| {} | {:.0} ms | {:.0} ms | {} |\n",
            r.target,
            median(&mut r.to_tracing) * 1e3,
            median(&mut r.to_exit) * 1e3,
            each.join(", ")
        ));
    }
    s.push('\n');
    for r in rows.iter() {
        s.push_str(&format!(
            "{}: eBPF programs loaded in {}\n\n",
            r.target, r.programs
        ));
    }
    s
}
