//! What every workload shares: the setups compared, leaktrace attached to a
//! running server, the per-program BPF time the kernel counts, medians.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::leaktrace_bin;

/// How a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Untraced,
    /// leaktrace's do-nothing programs at leaktrace's own probe points:
    /// the cost of the traps alone.
    EmptyProbes,
    Leaktrace,
    /// A bcc-memleak-style bpftrace script (size, address and stack maps).
    Bpftrace,
}

impl Setup {
    pub fn label(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::EmptyProbes => "empty probes",
            Setup::Leaktrace => "leaktrace",
            Setup::Bpftrace => "bpftrace memleak-style",
        }
    }
}

/// leaktrace attached to `pid` in `setup` (EmptyProbes or Leaktrace); kill
/// it with [`Tracer::stop`].
pub struct Tracer {
    child: Child,
}

impl Tracer {
    pub fn attach(root: &Path, pid: u32, setup: Setup) -> Result<Tracer> {
        let mut args = Vec::new();
        if setup == Setup::EmptyProbes {
            args.extend(["--probe-mode", "empty"]);
        }
        let pid = pid.to_string();
        args.extend(["--pid", &pid]);
        Tracer::start(root, &args, "tracing pid")
    }

    /// leaktrace with `args` (reports once an hour, JSON to nowhere), once
    /// its stderr said `ready` (every probe attached).
    pub fn start(root: &Path, args: &[&str], ready: &str) -> Result<Tracer> {
        let child = Command::new(leaktrace_bin(root))
            .args(args)
            .args(["--interval", "3600", "--format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leaktrace")?;
        let mut t = Tracer { child };
        t.wait_for_line(ready)?;
        Ok(t)
    }

    fn wait_for_line(&mut self, ready: &str) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let stderr = self.child.stderr.take().context("leaktrace stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line?;
            if line.contains(ready) {
                // Keep draining so leaktrace never blocks on a full pipe.
                thread::spawn(move || lines.for_each(drop));
                return Ok(());
            }
            if line.contains("error") {
                anyhow::bail!("leaktrace failed to attach: {line}");
            }
        }
        anyhow::bail!("leaktrace exited before attaching")
    }

    pub fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        Ok(())
    }
}

/// Per-program BPF time while a closure runs: `kernel.bpf_stats_enabled`
/// on, then run counts and total run time per leaktrace program read with
/// bpftool just before the closure's end (`at`).
pub struct BpfStats {
    pub programs: Vec<(String, u64, u64)>,
}

impl BpfStats {
    /// Reads the counters of every loaded program that ran (names are
    /// truncated by the kernel to 15 characters).
    pub fn read() -> BpfStats {
        let out = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output();
        let mut programs = Vec::new();
        if let Ok(out) = out {
            if let Ok(serde_json::Value::Array(list)) =
                serde_json::from_slice::<serde_json::Value>(&out.stdout)
            {
                for p in list {
                    let name = p["name"].as_str().unwrap_or_default().to_string();
                    let runs = p["run_cnt"].as_u64().unwrap_or(0);
                    let ns = p["run_time_ns"].as_u64().unwrap_or(0);
                    if runs > 0 {
                        programs.push((name, runs, ns));
                    }
                }
            }
        }
        programs.sort_by_key(|p| std::cmp::Reverse(p.1));
        BpfStats { programs }
    }

    pub fn enable(on: bool) {
        let _ = fs::write(
            "/proc/sys/kernel/bpf_stats_enabled",
            if on { "1" } else { "0" },
        );
    }

    /// Markdown rows: program, runs, ns per run.
    pub fn table(&self) -> String {
        let mut s = String::from("| program | runs | ns per run |\n| --- | ---: | ---: |\n");
        for (name, runs, ns) in &self.programs {
            s.push_str(&format!(
                "| {name} | {runs} | {:.0} |\n",
                *ns as f64 / *runs as f64
            ));
        }
        s
    }
}

/// Reads bpftool's counters `after` into a run, on a thread of its own.
pub fn stats_during(after: Duration) -> thread::JoinHandle<BpfStats> {
    thread::spawn(move || {
        thread::sleep(after);
        BpfStats::read()
    })
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Waits until `ready` holds (a server accepting connections), up to 10 s.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..200 {
        if ready() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{what} did not come up within 10 s")
}

/// A child process killed on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// bpftrace running `script` (saved as `name`.bt) with `args`, its maps
/// of `max_keys` entries (None: bpftrace's default, 4096), once it said it
/// attached.
pub fn bpftrace(name: &str, script: &str, args: &[&str], max_keys: Option<u32>) -> Result<Server> {
    use std::io::{BufRead, BufReader};
    let path = std::env::temp_dir().join(format!("leaktrace-bench-{name}.bt"));
    fs::write(&path, script)?;
    let mut cmd = Command::new("bpftrace");
    if let Some(n) = max_keys {
        cmd.env("BPFTRACE_MAX_MAP_KEYS", n.to_string());
    }
    let mut child = cmd
        .args(args)
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    let stdout = child.stdout.take().context("bpftrace stdout")?;
    let server = Server(child);
    let mut lines = BufReader::new(stdout).lines();
    // "Attaching N probes..." once attached (after warnings, if any).
    if !lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("Attaching"))
    {
        anyhow::bail!("bpftrace did not attach ({name})");
    }
    thread::spawn(move || lines.for_each(drop));
    // Attaching returns before every probe is live on some versions.
    thread::sleep(Duration::from_millis(500));
    Ok(server)
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
