//! Stack walking cost: the malloc/free pair ten calls deep, built without
//! frame pointers (leaktrace walks it by unwind tables) and with them
//! (walked by frame pointers, `--unwind fp`). The bound: the cost
//! a traced pair adds with tables at most 1.5× the cost with frame
//! pointers.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use super::measure::{median, stats_during, BpfStats};
use crate::{leaktrace_bin, run};

/// One build of the benchmark and how leaktrace walks it.
#[derive(Clone, Copy)]
pub struct Variant {
    pub label: &'static str,
    binary: &'static str,
    cflags: &'static [&'static str],
    unwind: &'static str,
}

pub const VARIANTS: [Variant; 2] = [
    Variant {
        label: "-O2, no frame pointers, --unwind auto (tables)",
        binary: "malloc_free_deep_o2",
        cflags: &["-O2", "-g"],
        unwind: "auto",
    },
    Variant {
        label: "-O2 -fno-omit-frame-pointer, --unwind fp",
        binary: "malloc_free_deep_fp",
        cflags: &["-O2", "-g", "-fno-omit-frame-pointer"],
        unwind: "fp",
    },
];

/// Medians over rounds for one variant.
pub struct Measured {
    pub untraced: f64,
    pub traced: f64,
    /// BPF ns per run of the malloc entry program (last round).
    pub entry_ns: Option<f64>,
}

impl Measured {
    /// Microseconds tracing adds to one pair.
    pub fn added_us(&self) -> f64 {
        (1.0 / self.traced - 1.0 / self.untraced) * 1e6
    }
}

pub fn measure(root: &Path, seconds: f64, rounds: usize) -> Result<Vec<Measured>> {
    let mut out = Vec::new();
    for v in VARIANTS {
        let bin = root.join("target/bench").join(v.binary);
        std::fs::create_dir_all(root.join("target/bench"))?;
        run(Command::new("cc")
            .args(v.cflags)
            .arg("-o")
            .arg(&bin)
            .arg(root.join("xtask/bench/malloc_free_deep.c")))?;
        let (mut untraced, mut traced) = (Vec::new(), Vec::new());
        let mut entry_ns = None;
        for round in 0..rounds {
            let u = pairs_per_sec(Command::new(&bin).arg(seconds.to_string()))?;
            BpfStats::enable(true);
            let stats = stats_during(Duration::from_secs_f64(seconds * 0.8 + 0.5));
            let t = pairs_per_sec(
                Command::new(leaktrace_bin(root))
                    .args([
                        "--unwind",
                        v.unwind,
                        "--interval",
                        "3600",
                        "--format",
                        "json",
                        "--",
                    ])
                    .arg(&bin)
                    .arg(seconds.to_string()),
            );
            let stats = stats.join().ok();
            BpfStats::enable(false);
            let t = t?;
            eprintln!(
                "unwind round {}: {:<48} untraced {u:>10.0} traced {t:>10.0} pairs/s",
                round + 1,
                v.label
            );
            untraced.push(u);
            traced.push(t);
            entry_ns = stats.and_then(|s| {
                s.programs
                    .iter()
                    .find(|(n, _, _)| n.starts_with("alloc_entry_siz"))
                    .map(|(_, runs, ns)| *ns as f64 / *runs as f64)
            });
        }
        out.push(Measured {
            untraced: median(&mut untraced),
            traced: median(&mut traced),
            entry_ns,
        });
    }
    Ok(out)
}

fn pairs_per_sec(cmd: &mut Command) -> Result<f64> {
    let out = cmd.output().context("running the deep microbenchmark")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr
        .lines()
        .find_map(|l| l.strip_prefix("pairs_per_sec "))
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        Some(r) if out.status.success() => Ok(r),
        _ => bail!("deep microbenchmark failed ({}): {stderr}", out.status),
    }
}

/// The markdown table and the ratio the issue bounds.
pub fn table(m: &[Measured]) -> String {
    let mut s = String::from(
        "| build, walk | untraced (pairs/s) | leaktrace (pairs/s) | added per pair (µs) | BPF ns per malloc entry |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    for (v, r) in VARIANTS.iter().zip(m) {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {} |\n",
            v.label,
            r.untraced,
            r.traced,
            r.added_us(),
            r.entry_ns
                .map(|n| format!("{n:.0}"))
                .unwrap_or_else(|| "–".into())
        ));
    }
    if let [tables, fp] = m {
        s.push_str(&format!(
            "\nCost per traced pair, unwind tables / frame pointers: {:.2}× (bound: 1.5×)\n",
            tables.added_us() / fp.added_us()
        ));
    }
    s
}
