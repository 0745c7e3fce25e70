//! `cargo xtask bench`: the malloc/free microbenchmark from DESIGN.md, run
//! untraced, under do-nothing probes at the same sites (the floor any
//! uprobe-based tracer pays), and under leaktrace, in one run.

use std::{fs, io::Write, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{compile_c, leaktrace_bin};

#[derive(Clone, Copy)]
enum Setup {
    Untraced,
    EmptyProbes,
    Leaktrace,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::EmptyProbes => "empty probes (floor)",
            Setup::Leaktrace => "leaktrace",
        }
    }
}

pub fn run(root: &Path, seconds: f64, rounds: usize, record: bool) -> Result<()> {
    let bench = root.join("target/bench/malloc_free");
    compile_c(&root.join("xtask/bench/malloc_free.c"), &bench)?;
    let secs = seconds.to_string();
    let setups = [Setup::Untraced, Setup::EmptyProbes, Setup::Leaktrace];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds.max(1) {
        for (i, setup) in setups.iter().enumerate() {
            let mut cmd = match setup {
                Setup::Untraced => Command::new(&bench),
                Setup::EmptyProbes | Setup::Leaktrace => {
                    let mut c = Command::new(leaktrace_bin(root));
                    if matches!(setup, Setup::EmptyProbes) {
                        c.args(["--probe-mode", "empty"]);
                    }
                    // One (final) report at the end; launch mode attaches
                    // before the benchmark's first allocation.
                    c.args(["--interval", "3600", "--format", "json", "--"])
                        .arg(&bench);
                    c
                }
            };
            cmd.arg(&secs);
            let out = cmd
                .output()
                .with_context(|| format!("running {}", setup.label()))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let rate = stderr
                .lines()
                .find_map(|l| l.strip_prefix("pairs_per_sec "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            match rate {
                Some(r) if out.status.success() => {
                    eprintln!(
                        "round {}: {:<22} {:>14.0} pairs/s",
                        round + 1,
                        setup.label(),
                        r
                    );
                    results[i].push(r);
                }
                _ => bail!("{} run failed ({}): {stderr}", setup.label(), out.status),
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = results.iter_mut().map(median).collect();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut table = String::new();
    table.push_str("| setup | pairs/s (median) | vs untraced | vs empty probes |\n| --- | ---: | ---: | ---: |\n");
    for (setup, rate) in setups.iter().zip(&m) {
        table.push_str(&format!(
            "| {} | {:.0} | {:.4} | {:.2} |\n",
            setup.label(),
            rate,
            rate / m[0],
            rate / m[1]
        ));
    }
    println!("\nmalloc(64)+free pairs, {rounds} rounds of {seconds}s, kernel {kernel}\n\n{table}");
    if record {
        let date = Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let path = root.join("bench/RESULTS.md");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(
            f,
            "\n## {date}, kernel {kernel}, {rounds} rounds of {seconds}s\n\n{table}"
        )?;
        eprintln!("xtask: recorded in {}", path.display());
    }
    Ok(())
}
