//! redis (Debian's, on its shared jemalloc) driven by redis-benchmark SET
//! and GET with 20 clients.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::measure::{
    bpftrace, free_port, stats_during, wait_for, BpfStats, Server, Setup, Tracer,
};

pub const SETUPS: &[Setup] = &[
    Setup::Untraced,
    Setup::EmptyProbes,
    Setup::Leaktrace,
    Setup::Bpftrace,
];

/// Requests per run and test.
const REQUESTS: u32 = 100_000;

/// (SET, GET) requests per second in `setup`.
/// With BPF statistics if `stats` (leaktrace only).
pub fn run(root: &Path, setup: Setup, stats: bool) -> Result<((f64, f64), Option<BpfStats>)> {
    let port = free_port()?;
    let server = Server(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (cargo xtask setup installs it)")?,
    );
    let pid = server.0.id();
    wait_for("redis-server", || {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    })?;
    let tracer = match setup {
        Setup::EmptyProbes | Setup::Leaktrace => Some(Tracer::attach(root, pid, setup)?),
        _ => None,
    };
    let bpftrace = if setup == Setup::Bpftrace {
        Some(memleak_bpftrace(pid)?)
    } else {
        None
    };
    let stats = (stats && setup == Setup::Leaktrace).then(|| {
        BpfStats::enable(true);
        stats_during(Duration::from_secs(2))
    });
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "20",
            "-n",
            &REQUESTS.to_string(),
        ])
        .args(["-t", "set,get", "-q"])
        .output()
        .context("running redis-benchmark")?;
    let stats = stats.and_then(|h| h.join().ok());
    BpfStats::enable(false);
    if let Some(t) = tracer {
        t.stop()?;
    }
    drop(bpftrace);
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    // "SET: 71428.57 requests per second, p50=0.143 msec" (after \r progress).
    let rate = |test: &str| {
        text.split(['\r', '\n'])
            .filter_map(|l| l.trim().strip_prefix(test))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .next_back()
    };
    match (rate("SET:"), rate("GET:")) {
        (Some(s), Some(g)) => Ok(((s, g), stats)),
        _ => bail!("unexpected redis-benchmark output: {text}"),
    }
}

/// bcc memleak's bookkeeping as a bpftrace script on the jemalloc `pid`
/// maps: sizes by thread, live blocks with their stacks by address.
fn memleak_bpftrace(pid: u32) -> Result<Server> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libjemalloc"))
        .context("redis-server maps no libjemalloc")?
        .to_string();
    let script = format!(
        "uprobe:{lib}:malloc {{ @size[tid] = arg0; }}
uretprobe:{lib}:malloc /@size[tid]/ {{ @live[retval] = (@size[tid], ustack); delete(@size[tid]); }}
uprobe:{lib}:calloc {{ @size[tid] = arg0 * arg1; }}
uretprobe:{lib}:calloc /@size[tid]/ {{ @live[retval] = (@size[tid], ustack); delete(@size[tid]); }}
uprobe:{lib}:realloc {{ @size[tid] = arg1; delete(@live[arg0]); }}
uretprobe:{lib}:realloc /@size[tid]/ {{ @live[retval] = (@size[tid], ustack); delete(@size[tid]); }}
uprobe:{lib}:free {{ delete(@live[arg0]); }}
uprobe:{lib}:sdallocx {{ delete(@live[arg0]); }}
"
    );
    bpftrace("memleak", &script, &["-p", &pid.to_string()], None)
}
