//! `reachability`: what a scan costs. A C program holding 10 MB, 100 MB
//! and 1 GB of live heap (xtask/bench/reach_heap.c, 4 KiB blocks, all
//! reachable) is scanned at every report by `--pid --reachability`: how
//! long its threads stay stopped per scan, per 100 MB read; and its
//! malloc/free throughput untraced, traced, and traced with a scan at
//! every report (one a second). By `--pid` its heap is from before attach,
//! read as roots; started by leaktrace (`-- reach_heap MB`) every block is
//! traced, and is read and marked as a block: both stop times are given.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::measure::median;
use crate::{compile_c, leaktrace_bin};

pub struct ScanCost {
    pub heap_mb: u64,
    /// Per scan, median of the scans taken.
    pub stopped_ms: f64,
    /// The same, every block traced (started by leaktrace).
    pub stopped_traced_ms: f64,
    /// Of which reading the blocks from the kernel.
    pub blocks_read_ms: f64,
    pub scanned_bytes: u64,
    pub complete: bool,
    /// Pairs per second: untraced, traced, traced with scans.
    pub untraced: f64,
    pub traced: f64,
    pub scanning: f64,
}

const SIZES_MB: [u64; 3] = [10, 100, 1024];
const SCANS: usize = 3;

pub fn measure(root: &Path) -> Result<Vec<ScanCost>> {
    let bin = root.join("target/bench/reach_heap");
    compile_c(&root.join("xtask/bench/reach_heap.c"), &bin)?;
    SIZES_MB.iter().map(|&mb| one(root, &bin, mb)).collect()
}

/// The program, with its per-second throughput lines on a channel.
fn start(bin: &Path, mb: u64) -> Result<(Child, mpsc::Receiver<f64>)> {
    let mut child = Command::new(bin)
        .arg(mb.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting reach_heap")?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line == "ready" {
                let _ = ready_tx.send(());
            } else if let Ok(n) = line.parse::<f64>() {
                if tx.send(n).is_err() {
                    break;
                }
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(120))
        .context("reach_heap never got ready")?;
    Ok((child, rx))
}

/// The median of the next `n` seconds' throughput, after dropping what
/// came before.
fn throughput(rx: &mpsc::Receiver<f64>, n: usize) -> Result<f64> {
    while rx.try_recv().is_ok() {}
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            rx.recv_timeout(Duration::from_secs(10))
                .context("throughput")?,
        );
    }
    Ok(median(&mut v))
}

fn one(root: &Path, bin: &Path, mb: u64) -> Result<ScanCost> {
    let (mut program, rates) = start(bin, mb)?;
    let pid = program.id().to_string();
    let untraced = throughput(&rates, 3)?;
    let traced = {
        let mut lt = leaktrace(root, &["--pid", &pid, "-i", "1"])?;
        let reports = reports_of(&mut lt)?;
        reports
            .recv_timeout(Duration::from_secs(60))
            .context("a report")?;
        let t = throughput(&rates, 3)?;
        stop(lt);
        t
    };
    let mut lt = scanning(root, &["--pid", &pid])?;
    let reports = reports_of(&mut lt)?;
    let mut stopped = Vec::new();
    let (mut scanned, mut complete) = (0, true);
    while stopped.len() < SCANS {
        let r = reports
            .recv_timeout(Duration::from_secs(120))
            .context("a report with a scan")?;
        let s = &r["reachability"];
        if !s.is_object() {
            continue;
        }
        complete &= s["complete"] == true;
        stopped.push(s["stopped_us"].as_f64().unwrap_or(0.0) / 1000.0);
        scanned = s["scanned_bytes"].as_u64().unwrap_or(0);
    }
    let scanning = throughput(&rates, 3)?;
    stop(lt);
    let _ = program.kill();
    let _ = program.wait();
    if scanned == 0 {
        bail!("{mb} MB: nothing scanned");
    }
    let (stopped_traced_ms, blocks_read_ms, traced_complete) = traced_blocks(root, bin, mb)?;
    complete &= traced_complete;
    Ok(ScanCost {
        heap_mb: mb,
        stopped_ms: median(&mut stopped),
        stopped_traced_ms,
        blocks_read_ms,
        scanned_bytes: scanned,
        complete,
        untraced,
        traced,
        scanning,
    })
}

/// leaktrace on `target` (`--pid N` or `-- CMD`), scanning every block at
/// each report (one a second) with no deadline to cut it.
fn scanning(root: &Path, target: &[&str]) -> Result<std::process::Child> {
    let mut args = vec![
        "-i",
        "1",
        "--older-than",
        "0",
        "--reachability",
        "--scan-deadline",
        "30s",
    ];
    args.extend_from_slice(target);
    leaktrace(root, &args)
}

/// reach_heap started by leaktrace, scanned at every report once its
/// blocks are all made: the median stop and block-read times (ms), and
/// whether every scan completed.
fn traced_blocks(root: &Path, bin: &Path, mb: u64) -> Result<(f64, f64, bool)> {
    let size = mb.to_string();
    let program = bin.to_str().context("utf8 path")?;
    let mut lt = scanning(root, &["--", program, &size])?;
    let reports = reports_of(&mut lt)?;
    let blocks = mb * 1024 * 1024 / 4096;
    let (mut stopped, mut read, mut complete) = (Vec::new(), Vec::new(), true);
    while stopped.len() < SCANS {
        let r = reports
            .recv_timeout(Duration::from_secs(120))
            .context("a report with a scan of the traced blocks")?;
        let s = &r["reachability"];
        let reachable = s["totals"]["still_reachable"]["blocks"]
            .as_u64()
            .unwrap_or(0);
        if !s.is_object() || (s["complete"] == true && reachable < blocks) {
            continue; // still making its heap
        }
        complete &= s["complete"] == true;
        stopped.push(s["stopped_us"].as_f64().unwrap_or(0.0) / 1000.0);
        read.push(s["blocks_read_us"].as_f64().unwrap_or(0.0) / 1000.0);
    }
    // SIGTERM: leaktrace passes it on to the command it started (SIGINT
    // it leaves to the terminal, and would wait for reach_heap forever).
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGTERM) };
    let _ = lt.wait();
    Ok((median(&mut stopped), median(&mut read), complete))
}

fn leaktrace(root: &Path, args: &[&str]) -> Result<Child> {
    Command::new(leaktrace_bin(root))
        .args(["--format", "json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting leaktrace")
}

fn reports_of(lt: &mut Child) -> Result<mpsc::Receiver<Value>> {
    let out = lt.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

fn stop(mut lt: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(lt.id() as i32, libc::SIGINT) };
    let _ = lt.wait();
}

pub fn table(rows: &[ScanCost]) -> String {
    let mut s = String::from(
        "| live heap | target stopped per scan (median), heap from before attach | read per scan | stopped per 100 MB read | every block traced: stopped per scan | of which reading the blocks | per 100 MB | complete | malloc/free untraced | traced | traced, a scan a second | scanning / traced |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let mb = r.scanned_bytes as f64 / 1e6;
        s.push_str(&format!(
            "| {} MB | {:.1} ms | {:.0} MB | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.0}/s | {:.0}/s | {:.0}/s | {:.2} |\n",
            r.heap_mb,
            r.stopped_ms,
            mb,
            r.stopped_ms / mb * 100.0,
            r.stopped_traced_ms,
            r.blocks_read_ms,
            r.stopped_traced_ms / mb * 100.0,
            if r.complete { "yes" } else { "NO" },
            r.untraced,
            r.traced,
            r.scanning,
            r.scanning / r.traced.max(1.0),
        ));
    }
    s
}
