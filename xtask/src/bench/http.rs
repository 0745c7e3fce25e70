//! A Go net/http service (xtask/bench/http_service.go, built with the
//! newest Go toolchain `cargo xtask setup` installs) driven by wrk with
//! 20 connections: kept alive, and a new connection per request.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::measure::{free_port, stats_during, wait_for, BpfStats, Server, Setup, Tracer};
use crate::{run as run_cmd, setup::newest_go};

pub const SETUPS: &[Setup] = &[Setup::Untraced, Setup::EmptyProbes, Setup::Leaktrace];

/// Builds the service once per run.
pub fn build(root: &Path) -> Result<PathBuf> {
    let (ver, goroot) = newest_go();
    let out = root.join("target/bench/http_service");
    let cache = root.join("target/go/cache").join(ver);
    run_cmd(
        Command::new(goroot.join("bin/go"))
            .args(["build", "-o"])
            .arg(&out)
            .arg(root.join("xtask/bench/http_service.go"))
            .env("GOROOT", &goroot)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GO111MODULE", "off")
            .env("GOENV", "off")
            .env("GOCACHE", cache)
            .env("GOPATH", root.join("target/go/gopath"))
            .env_remove("GOFLAGS"),
    )?;
    Ok(out)
}

/// (keep-alive, new connection per request) requests per second.
pub fn run(
    root: &Path,
    service: &Path,
    setup: Setup,
    seconds: f64,
    stats: bool,
) -> Result<((f64, f64), Option<BpfStats>)> {
    let (server, port) = serve(service)?;
    let tracer = match setup {
        Setup::Untraced | Setup::Bpftrace => None,
        _ => Some(Tracer::attach(root, server.0.id(), setup)?),
    };
    let url = format!("http://127.0.0.1:{port}/ping");
    let secs = format!("{}s", seconds.max(1.0).round());
    let stats = (stats && setup == Setup::Leaktrace).then(|| {
        BpfStats::enable(true);
        stats_during(Duration::from_secs_f64(seconds * 0.8))
    });
    let keep_alive = wrk(&url, &secs, false)?;
    let stats = stats.and_then(|h| h.join().ok());
    BpfStats::enable(false);
    let close = wrk(&url, &secs, true)?;
    if let Some(t) = tracer {
        t.stop()?;
    }
    drop(server);
    Ok(((keep_alive, close), stats))
}

/// The service, started and accepting connections on the port returned.
pub fn serve(service: &Path) -> Result<(Server, u16)> {
    let port = free_port()?;
    let server = Server(
        Command::new(service)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the Go service")?,
    );
    wait_for("the Go service", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })?;
    Ok((server, port))
}

/// wrk's requests per second on `url` for `duration` ("10s"), 20
/// connections, each closed after its request with `close`.
pub fn wrk(url: &str, duration: &str, close: bool) -> Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c20", "-d", duration]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Requests/sec:  54321.12"
    match text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        Some(r) => Ok(r),
        None => bail!("unexpected wrk output: {text}"),
    }
}
