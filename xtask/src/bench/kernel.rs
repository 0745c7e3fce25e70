//! What `--kernel` costs a socket-heavy service: the Go net/http service
//! with a new connection per request (each one a socket, its skbs, a
//! file and an inode allocated and freed in the kernel), untraced, traced
//! without and with `--kernel`, and with `--kernel` alone (the whole
//! kernel, the service not traced), against bcc memleak's kernel mode as a
//! bpftrace script (the whole kernel: kmalloc, kmem_cache and page
//! allocations with their stacks by address); and the BPF time per run of
//! the kernel-memory programs.

use std::path::Path;

use anyhow::Result;

use super::{
    http,
    measure::{bpftrace, median, stats_during, BpfStats, Tracer},
};

/// How the service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelSetup {
    Untraced,
    /// `leaktrace --pid`.
    Heap,
    /// `leaktrace --pid --kernel`.
    HeapAndKernel,
    /// `leaktrace --kernel`: every kernel allocation, no process traced.
    WholeKernel,
    /// memleak without `-p`, as bpftrace.
    Bpftrace,
}

const SETUPS: [KernelSetup; 5] = [
    KernelSetup::Untraced,
    KernelSetup::Heap,
    KernelSetup::HeapAndKernel,
    KernelSetup::WholeKernel,
    KernelSetup::Bpftrace,
];

/// memleak's kernel bookkeeping (its tracepoints, sizes and stacks of live
/// blocks by address, pages by frame number), maps as large as
/// leaktrace's block table.
const MEMLEAK_KERNEL: &str = "\
tracepoint:kmem:kmalloc, tracepoint:kmem:kmem_cache_alloc { @live[args->ptr] = (args->bytes_alloc, kstack); }
tracepoint:kmem:kfree, tracepoint:kmem:kmem_cache_free { delete(@live[args->ptr]); }
tracepoint:kmem:mm_page_alloc { @pages[args->pfn] = (args->order, kstack); }
tracepoint:kmem:mm_page_free { delete(@pages[args->pfn]); }
";

impl KernelSetup {
    fn label(self) -> &'static str {
        match self {
            KernelSetup::Untraced => "untraced",
            KernelSetup::Heap => "leaktrace --pid",
            KernelSetup::HeapAndKernel => "leaktrace --pid --kernel",
            KernelSetup::WholeKernel => "leaktrace --kernel (whole kernel)",
            KernelSetup::Bpftrace => "bpftrace memleak-style (whole kernel)",
        }
    }
}

/// Requests per second per setup (medians), and the kernel programs' BPF
/// time in a run of its own.
pub struct KernelCost {
    rates: Vec<(KernelSetup, f64)>,
    stats: Option<BpfStats>,
}

pub fn measure(root: &Path, service: &Path, seconds: f64, rounds: usize) -> Result<KernelCost> {
    let mut rates = vec![Vec::new(); SETUPS.len()];
    for round in 0..rounds {
        for (i, &setup) in SETUPS.iter().enumerate() {
            let (r, _) = run(root, service, setup, seconds, false)?;
            eprintln!(
                "kernel round {}: {:<34} close {r:>9.0} req/s",
                round + 1,
                setup.label()
            );
            rates[i].push(r);
        }
    }
    let (_, stats) = run(root, service, KernelSetup::HeapAndKernel, seconds, true)?;
    Ok(KernelCost {
        rates: SETUPS
            .iter()
            .zip(rates.iter_mut())
            .map(|(s, r)| (*s, median(r)))
            .collect(),
        stats,
    })
}

/// One run: requests per second with a new connection per request.
fn run(
    root: &Path,
    service: &Path,
    setup: KernelSetup,
    seconds: f64,
    stats: bool,
) -> Result<(f64, Option<BpfStats>)> {
    let (server, port) = http::serve(service)?;
    let pid = server.0.id().to_string();
    // bpftrace's tracepoints need tracefs (leaktrace's raw ones do not).
    let bpftrace = match setup {
        KernelSetup::Bpftrace => {
            mount_tracefs();
            Some(bpftrace(
                "memleak-kernel",
                MEMLEAK_KERNEL,
                &[],
                Some(262_144),
            )?)
        }
        _ => None,
    };
    let tracer = match setup {
        KernelSetup::Untraced | KernelSetup::Bpftrace => None,
        KernelSetup::Heap => Some(Tracer::start(root, &["--pid", &pid], "tracing pid")?),
        KernelSetup::HeapAndKernel => Some(Tracer::start(
            root,
            &["--kernel", "--pid", &pid],
            "tracing pid",
        )?),
        KernelSetup::WholeKernel => Some(Tracer::start(
            root,
            &["--kernel"],
            "tracing the whole kernel",
        )?),
    };
    let url = format!("http://127.0.0.1:{port}/ping");
    let secs = format!("{}s", seconds.max(1.0).round());
    let stats = stats.then(|| {
        BpfStats::enable(true);
        stats_during(std::time::Duration::from_secs_f64(seconds * 0.8))
    });
    let rate = http::wrk(&url, &secs, true)?;
    let stats = stats.and_then(|h| h.join().ok()).map(|mut s| {
        s.programs.retain(|(name, _, _)| name.starts_with("kmem_"));
        s
    });
    BpfStats::enable(false);
    if let Some(t) = tracer {
        t.stop()?;
    }
    drop(bpftrace);
    drop(server);
    Ok((rate, stats))
}

/// Mounts tracefs where bpftrace looks, unless it is there already.
fn mount_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
}

impl KernelCost {
    pub fn table(&self) -> String {
        let get = |s: KernelSetup| {
            self.rates
                .iter()
                .find(|(x, _)| *x == s)
                .map_or(0.0, |(_, v)| *v)
        };
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "–".into()
            }
        };
        let mut s = String::from(
            "| setup | new connection per request (req/s) | / untraced | / leaktrace --pid | / bpftrace |\n\
             | --- | ---: | ---: | ---: | ---: |\n",
        );
        for &(setup, v) in &self.rates {
            s.push_str(&format!(
                "| {} | {v:.0} | {} | {} | {} |\n",
                setup.label(),
                ratio(v, get(KernelSetup::Untraced)),
                ratio(v, get(KernelSetup::Heap)),
                ratio(v, get(KernelSetup::Bpftrace)),
            ));
        }
        if let Some(stats) = &self.stats {
            s.push_str(
                "\nBPF time per run of the kernel-memory programs, leaktrace --pid --kernel \
                 (a run of its own):\n\n",
            );
            s.push_str(&stats.table());
        }
        s
    }
}
