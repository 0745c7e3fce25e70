//! One leaktrace for many processes (`scale`): 50 copies of a small C
//! service (xtask/bench/scale_service.c) in one container built like the
//! tests' (own mount and PID namespaces, its own copy of the C library, a
//! Docker-style cgroup), each leaking at its own rate, traced by
//! `--container`; against the same with one copy. Measured: whether every
//! process's figures are exact, the kernel memory leaktrace holds (the
//! `memlock` of its map and program fds, which for maps allocated on
//! demand is what they use), leaktrace's CPU per round of reports and its
//! RSS. And one process holding 1,000,000 live allocations, by `--pid`.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{compile_c, leaktrace_bin};

/// Services in the big container.
pub const FLEET: u32 = 50;

pub struct Scale {
    pub label: String,
    pub processes: u32,
    pub exact: bool,
    pub kernel_bytes: u64,
    /// leaktrace's CPU per round of reports (ticks included), seconds.
    pub cpu_per_round: f64,
    pub rss_bytes: u64,
}

pub fn measure(root: &Path) -> Result<Vec<Scale>> {
    let bin = root.join("target/bench/scale_service");
    compile_c(&root.join("xtask/bench/scale_service.c"), &bin)?;
    Ok(vec![
        fleet(root, &bin, 1)?,
        fleet(root, &bin, FLEET)?,
        million(root, &bin)?,
    ])
}

/// A running leaktrace whose stdout (JSON reports) and stderr lines are
/// read on threads.
struct Running {
    child: Child,
    reports: mpsc::Receiver<Value>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn start(root: &Path, args: &[&str]) -> Result<Running> {
        let mut child = Command::new(leaktrace_bin(root))
            .args(["--format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leaktrace")?;
        let (tx, reports) = mpsc::channel();
        let out = child.stdout.take().context("stdout")?;
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().context("stderr")?;
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Running {
            child,
            reports,
            stderr,
        })
    }

    /// Waits for `n` stderr lines containing `what`.
    fn wait_lines(&self, what: &str, n: usize) -> Result<()> {
        let mut seen = 0;
        while seen < n {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(60))
                .with_context(|| format!("leaktrace never said {what:?} {n} times"))?;
            if line.contains("error") {
                bail!("leaktrace: {line}");
            }
            if line.contains(what) {
                seen += 1;
            }
        }
        Ok(())
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        Ok(())
    }
}

/// `count` services of the fleet in one container, traced by id.
fn fleet(root: &Path, bin: &Path, count: u32) -> Result<Scale> {
    let container = Container::start(root, bin, &["fleet", &count.to_string()])?;
    let lt = Running::start(
        root,
        &[
            "--container",
            &container.id,
            "-i",
            "1",
            "--older-than",
            "1s",
            "--top",
            "1",
        ],
    )?;
    lt.wait_lines("tracing pid", count as usize + 1)?;
    container.signal_services(libc::SIGUSR1);
    // Every service's figures: service k holds 100·k blocks of 64 B.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut exact: std::collections::HashMap<u64, bool> = Default::default();
    while exact.values().filter(|&&e| e).count() < count as usize {
        if Instant::now() > deadline {
            break;
        }
        let Ok(r) = lt.reports.recv_timeout(Duration::from_secs(10)) else {
            continue;
        };
        let Some(inside) = r["pid_in_container"].as_u64() else {
            continue;
        };
        if inside < 2 {
            continue; // the fleet's parent
        }
        let k = inside - 1;
        let blocks = r["live_blocks"].as_u64().unwrap_or(0);
        let bytes = r["live_bytes"].as_u64().unwrap_or(0);
        exact.insert(inside, blocks == 100 * k && bytes == 6400 * k);
    }
    let all_exact = exact.values().filter(|&&e| e).count() == count as usize;
    // CPU over five rounds of reports, once the leaks are in.
    lt.wait_lines("processes traced", 1)?;
    let before = lt.cpu_seconds();
    lt.wait_lines("processes traced", 5)?;
    let cpu = (lt.cpu_seconds() - before) / 5.0;
    let kernel = kernel_bytes(lt.child.id());
    let rss = rss_bytes(lt.child.id());
    lt.stop()?;
    drop(container);
    Ok(Scale {
        label: format!("--container, {count} service(s) leaking 100·k blocks of 64 B"),
        processes: count,
        exact: all_exact,
        kernel_bytes: kernel,
        cpu_per_round: cpu,
        rss_bytes: rss,
    })
}

/// One process holding 1,000,000 live allocations, by `--pid`.
fn million(root: &Path, bin: &Path) -> Result<Scale> {
    let mut service = Command::new(bin)
        .arg("million")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the service")?;
    let mut out = BufReader::new(service.stdout.take().context("stdout")?).lines();
    out.next().context("service never ready")??;
    let pid = service.id();
    let lt = Running::start(
        root,
        &[
            "--pid",
            &pid.to_string(),
            "-i",
            "1",
            "--older-than",
            "1s",
            "--max-allocs",
            "2097152",
        ],
    )?;
    lt.wait_lines("tracing pid", 1)?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    out.next().context("service never done")??;
    let mut exact = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(r) = lt.reports.recv_timeout(Duration::from_secs(10)) else {
            continue;
        };
        if r["old_blocks"].as_u64() >= Some(1_000_000) {
            exact = r["old_blocks"] == 1_000_000 && r["old_bytes"] == 16_000_000;
            break;
        }
    }
    let before = lt.cpu_seconds();
    for _ in 0..5 {
        lt.reports
            .recv_timeout(Duration::from_secs(10))
            .context("no report")?;
    }
    let cpu = (lt.cpu_seconds() - before) / 5.0;
    let kernel = kernel_bytes(lt.child.id());
    let rss = rss_bytes(lt.child.id());
    lt.stop()?;
    let _ = service.kill();
    let _ = service.wait();
    Ok(Scale {
        label: "--pid, one process holding 1,000,000 blocks of 16 B".into(),
        processes: 1,
        exact,
        kernel_bytes: kernel,
        cpu_per_round: cpu,
        rss_bytes: rss,
    })
}

/// A container as the tests build one (tests/src/process.rs).
struct Container {
    id: String,
    root: PathBuf,
    cgroup: Option<PathBuf>,
    child: Child,
    pid: u32,
}

impl Container {
    fn start(root: &Path, bin: &Path, args: &[&str]) -> Result<Container> {
        let dir = root.join(format!("target/bench/container-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["lib64", "lib", "app"] {
            fs::create_dir_all(dir.join(d))?;
        }
        fs::copy(
            "/lib64/ld-linux-x86-64.so.2",
            dir.join("lib64/ld-linux-x86-64.so.2"),
        )?;
        fs::copy("/lib/x86_64-linux-gnu/libc.so.6", dir.join("lib/libc.so.6"))?;
        fs::copy(bin, dir.join("app/service"))?;
        let id: String = (0..4).map(|i| format!("{:016x}", random(i))).collect();
        let mut child = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child"])
            .arg(format!("--root={}", dir.display()))
            .arg("/app/service")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("unshare")?;
        let outer = child.id();
        let pid = first_child(outer)?;
        let cgroup = cgroup2_root().and_then(|cg| {
            let d = cg
                .join("leaktrace-bench")
                .join(format!("docker-{id}.scope"));
            fs::create_dir_all(&d).ok()?;
            fs::write(d.join("cgroup.procs"), pid.to_string()).ok()?;
            Some(d)
        });
        // In the cgroup before it forks: its services are born there.
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        out.next().context("the fleet never got ready")??;
        let mut stdin = child.stdin.take().context("stdin")?;
        std::io::Write::write_all(&mut stdin, b"go\n")?;
        out.next().context("the fleet never forked")??;
        thread::spawn(move || {
            let _keep_open = stdin;
            out.for_each(drop)
        });
        Ok(Container {
            id,
            root: dir,
            cgroup,
            child,
            pid,
        })
    }

    /// Signals every process of the container but its first (the fleet's
    /// parent).
    fn signal_services(&self, sig: i32) {
        let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: signalling processes of our own container.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(cg) = &self.cgroup {
            for _ in 0..50 {
                if fs::remove_dir(cg).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn random(i: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z =
        nanos ^ (u64::from(std::process::id()) << 32) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn first_child(outer: u32) -> Result<u32> {
    for _ in 0..1000 {
        let children =
            fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap_or_default();
        if let Some(p) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Ok(p);
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!("unshare never forked")
}

fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// User and system CPU of `pid`, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 12 and 13 after the comm.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The kernel memory behind `pid`'s BPF map and program fds (their
/// `memlock` in fdinfo), each object counted once.
fn kernel_bytes(pid: u32) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    for fd in fds.filter_map(Result::ok) {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let Some(memlock) = field("memlock:").and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let id = field("map_id:")
            .map(|v| format!("map {v}"))
            .or_else(|| field("prog_id:").map(|v| format!("prog {v}")));
        if let Some(id) = id {
            if seen.insert(id) {
                total += memlock;
            }
        }
    }
    total
}

pub fn table(rows: &[Scale]) -> String {
    let mut s = String::from(
        "| setup | processes | every figure exact | kernel memory | leaktrace CPU per round of reports | leaktrace RSS |\n\
         | --- | ---: | --- | ---: | ---: | ---: |\n",
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} MiB | {:.0} ms | {:.1} MiB |\n",
            r.label,
            r.processes,
            if r.exact { "yes" } else { "NO" },
            mib(r.kernel_bytes),
            r.cpu_per_round * 1e3,
            mib(r.rss_bytes)
        ));
    }
    if let (Some(one), Some(many)) = (
        rows.iter()
            .find(|r| r.processes == 1 && r.label.starts_with("--container")),
        rows.iter().find(|r| r.processes == FLEET),
    ) {
        s.push_str(&format!(
            "\nKernel memory, {FLEET} processes against one: {:.2}×\n",
            many.kernel_bytes as f64 / one.kernel_bytes.max(1) as f64
        ));
    }
    s
}
