//! `cargo xtask bench`: what tracing costs a target, measured in one run.
//!
//! Three workloads (the malloc/free microbenchmark, redis SET/GET, a Go
//! net/http service with and without keep-alive), each untraced, under
//! leaktrace's do-nothing programs at leaktrace's own probe points (what
//! the traps alone cost) and under leaktrace; redis also under a
//! memleak-style bpftrace script. Ratios are printed, with the BPF time per
//! program run (`kernel.bpf_stats_enabled`) and every probe point with the
//! instruction under it; and what walking stacks by unwind tables costs
//! against frame pointers (`unwind`); and how long attaching and
//! detaching take (`attach`); what a reachability scan stops the target
//! for (`reachability`); what `--kernel` costs a socket-heavy service
//! (`kernel`). Timing stays out of the tests.

mod attach;
mod http;
mod kernel;
mod measure;
mod micro;
mod reachability;
mod redis;
mod scale;
mod unwind;

use std::{fs, io::Write, path::Path, process::Command};

use anyhow::Result;

use crate::leaktrace_bin;
use measure::{median, BpfStats, Server, Setup};

/// One measured quantity: a name and its median per setup.
struct Row {
    name: String,
    values: Vec<(Setup, f64)>,
    unit: &'static str,
}

impl Row {
    fn get(&self, s: Setup) -> Option<f64> {
        self.values.iter().find(|(x, _)| *x == s).map(|(_, v)| *v)
    }
}

pub fn run(root: &Path, seconds: f64, rounds: usize, record: bool, only: &[String]) -> Result<()> {
    let rounds = rounds.max(1);
    let want = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    let mut rows = Vec::new();
    let mut stats: Vec<(String, BpfStats)> = Vec::new();

    // Microbenchmark.
    let mut rates = vec![Vec::new(); micro::SETUPS.len()];
    for round in 0..if want("micro") { rounds } else { 0 } {
        for (i, &setup) in micro::SETUPS.iter().enumerate() {
            let (r, _) = micro::run(root, setup, seconds, false)?;
            eprintln!(
                "micro round {}: {:<22} {r:>12.0} pairs/s",
                round + 1,
                setup.label()
            );
            rates[i].push(r);
        }
    }
    if want("micro") {
        let (_, s) = micro::run(root, Setup::Leaktrace, seconds, true)?;
        keep(&mut stats, "malloc/free microbenchmark", s);
        rows.push(row("malloc(64)+free", micro::SETUPS, rates, "pairs/s"));
    }

    // Stack walking: ten frames deep, by tables and by frame pointers.
    let deep = if want("unwind") {
        unwind::measure(root, seconds, rounds)?
    } else {
        Vec::new()
    };

    // redis.
    let mut set = vec![Vec::new(); redis::SETUPS.len()];
    let mut get = vec![Vec::new(); redis::SETUPS.len()];
    for round in 0..if want("redis") { rounds } else { 0 } {
        for (i, &setup) in redis::SETUPS.iter().enumerate() {
            let ((s, g), _) = redis::run(root, setup, false)?;
            eprintln!(
                "redis round {}: {:<22} SET {s:>9.0} GET {g:>9.0} req/s",
                round + 1,
                setup.label()
            );
            set[i].push(s);
            get[i].push(g);
        }
    }
    if want("redis") {
        let (_, st) = redis::run(root, Setup::Leaktrace, true)?;
        keep(&mut stats, "redis SET+GET", st);
        rows.push(row("redis SET", redis::SETUPS, set, "req/s"));
        rows.push(row("redis GET", redis::SETUPS, get, "req/s"));
    }

    // Go HTTP service.
    let service = http::build(root)?;
    let mut alive = vec![Vec::new(); http::SETUPS.len()];
    let mut close = vec![Vec::new(); http::SETUPS.len()];
    for round in 0..if want("http") { rounds } else { 0 } {
        for (i, &setup) in http::SETUPS.iter().enumerate() {
            let ((a, c), _) = http::run(root, &service, setup, seconds, false)?;
            eprintln!(
                "go http round {}: {:<22} keep-alive {a:>9.0} close {c:>9.0} req/s",
                round + 1,
                setup.label()
            );
            alive[i].push(a);
            close[i].push(c);
        }
    }
    if want("http") {
        let (_, st) = http::run(root, &service, Setup::Leaktrace, seconds, true)?;
        keep(&mut stats, "Go net/http, keep-alive", st);
        rows.push(row("Go net/http, keep-alive", http::SETUPS, alive, "req/s"));
        rows.push(row(
            "Go net/http, new connection per request",
            http::SETUPS,
            close,
            "req/s",
        ));
    }

    // Kernel memory, on a new connection per request.
    let kernel_cost = if want("kernel") {
        Some(kernel::measure(root, &service, seconds, rounds)?)
    } else {
        None
    };

    // Many processes through one leaktrace.
    let scaled = if want("scale") {
        scale::measure(root)?
    } else {
        Vec::new()
    };

    // What a reachability scan costs.
    let scans = if want("reachability") {
        reachability::measure(root)?
    } else {
        Vec::new()
    };

    // Attach and detach time.
    let mut attached = if want("attach") {
        attach::measure(root, &service)?
    } else {
        Vec::new()
    };

    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut out = format!(
        "{rounds} rounds of {seconds}s (redis: 100000 requests per test), medians, kernel {kernel}\n\n"
    );
    if !rows.is_empty() {
        out.push_str(&results_table(&rows));
    }
    if let Some(k) = &kernel_cost {
        out.push_str(
            "\n`--kernel`, the Go net/http service with a new connection per request:\n\n",
        );
        out.push_str(&k.table());
    }
    if !attached.is_empty() {
        out.push_str("\nAttach and detach, leaktrace --pid on a running service:\n\n");
        out.push_str(&attach::table(&mut attached));
    }
    if !scans.is_empty() {
        out.push_str("\nReachability scans (--reachability at every report, one a second):\n\n");
        out.push_str(&reachability::table(&scans));
    }
    if !scaled.is_empty() {
        out.push_str("\nMany processes, one leaktrace:\n\n");
        out.push_str(&scale::table(&scaled));
    }
    if !deep.is_empty() {
        out.push_str("\nStack walking, malloc(64)+free ten calls below main:\n\n");
        out.push_str(&unwind::table(&deep));
    }
    for (workload, s) in &stats {
        out.push_str(&format!(
            "\nBPF time per program run, {workload} (a run of its own after the \
             rounds: the statistics cost every program run two clock reads, so \
             the rounds above run without them):\n\n"
        ));
        out.push_str(&s.table());
    }
    out.push_str("\nProbe points (`leaktrace --list-probes`):\n\n");
    out.push_str(&probe_tables(root, &service)?);
    println!("\n{out}");
    if record {
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let path = root.join("bench/RESULTS.md");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "\n## {date}, `cargo xtask bench`\n\n{out}")?;
        eprintln!("xtask: recorded in {}", path.display());
    }
    Ok(())
}

fn keep(stats: &mut Vec<(String, BpfStats)>, workload: &str, s: Option<BpfStats>) {
    if let Some(s) = s {
        stats.push((workload.to_string(), s));
    }
}

fn row(name: &str, setups: &[Setup], mut v: Vec<Vec<f64>>, unit: &'static str) -> Row {
    Row {
        name: name.to_string(),
        values: setups
            .iter()
            .zip(v.iter_mut())
            .map(|(s, r)| (*s, median(r)))
            .collect(),
        unit,
    }
}

fn results_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| workload | untraced | empty probes | leaktrace | bpftrace memleak-style | leaktrace / untraced | leaktrace / empty probes | leaktrace / bpftrace |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    for r in rows {
        let lt = r.get(Setup::Leaktrace);
        s.push_str(&format!(
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.unit,
            cell(r.get(Setup::Untraced)),
            cell(r.get(Setup::EmptyProbes)),
            cell(lt),
            cell(r.get(Setup::Bpftrace)),
            ratio(lt, r.get(Setup::Untraced)),
            ratio(lt, r.get(Setup::EmptyProbes)),
            ratio(lt, r.get(Setup::Bpftrace)),
        ));
    }
    s
}

/// `leaktrace --list-probes` for each workload's target.
fn probe_tables(root: &Path, service: &Path) -> Result<String> {
    let list = |args: &[&str]| -> Result<String> {
        let out = Command::new(leaktrace_bin(root))
            .arg("--list-probes")
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut s = String::new();
    s.push_str("malloc/free microbenchmark:\n\n```\n");
    s.push_str(&list(&[
        "--",
        &root.join("target/bench/malloc_free").display().to_string(),
    ])?);
    s.push_str("```\n\nredis-server:\n\n```\n");
    let redis = Server(
        Command::new("redis-server")
            .args(["--port", &measure::free_port()?.to_string(), "--save", ""])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.push_str(&list(&["--pid", &redis.0.id().to_string()])?);
    drop(redis);
    s.push_str("```\n\nGo net/http service:\n\n```\n");
    s.push_str(&list(&["--", &service.display().to_string()])?);
    s.push_str("```\n");
    Ok(s)
}
