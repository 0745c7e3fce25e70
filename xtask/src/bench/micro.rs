//! The malloc(64)+free microbenchmark, run in launch mode so that the
//! probes are attached before its first allocation.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use super::measure::{stats_during, BpfStats, Setup};
use crate::{compile_c, leaktrace_bin};

pub const SETUPS: &[Setup] = &[Setup::Untraced, Setup::EmptyProbes, Setup::Leaktrace];

/// Pairs per second in `setup`; with BPF statistics if `stats` (leaktrace only).
pub fn run(
    root: &Path,
    setup: Setup,
    seconds: f64,
    stats: bool,
) -> Result<(f64, Option<BpfStats>)> {
    let bench = root.join("target/bench/malloc_free");
    compile_c(&root.join("xtask/bench/malloc_free.c"), &bench)?;
    let secs = seconds.to_string();
    let mut cmd = match setup {
        Setup::Untraced => Command::new(&bench),
        _ => {
            let mut c = Command::new(leaktrace_bin(root));
            if setup == Setup::EmptyProbes {
                c.args(["--probe-mode", "empty"]);
            }
            c.args(["--interval", "3600", "--format", "json", "--"])
                .arg(&bench);
            c
        }
    };
    cmd.arg(&secs);
    let stats = (stats && setup == Setup::Leaktrace).then(|| {
        BpfStats::enable(true);
        stats_during(Duration::from_secs_f64(seconds * 0.8 + 0.5))
    });
    let out = cmd
        .output()
        .with_context(|| format!("running the microbenchmark {}", setup.label()))?;
    let stats = stats.and_then(|h| h.join().ok());
    BpfStats::enable(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rate = stderr
        .lines()
        .find_map(|l| l.strip_prefix("pairs_per_sec "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    match rate {
        Some(r) if out.status.success() => Ok((r, stats)),
        _ => bail!("{} run failed ({}): {stderr}", setup.label(), out.status),
    }
}
