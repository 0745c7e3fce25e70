//! `--kernel` alone: the whole kernel's memory, reported every interval
//! until a signal or `--count` ends the run (no process is traced), and
//! exported like a process's heap (pprof, folded stacks, flame graph,
//! `/metrics`).

use std::{
    io::{self, Write},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use serde_json::json;
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{interval_at, MissedTickBehavior},
};

use super::{announce, reporter_of, stop, tracer::Tracer, Outputs};
use crate::{
    cli::{Cli, Format},
    export::{self, metrics, Exporter},
    kernel::Asked,
    report::{
        human_duration, kernel,
        profiles::{kernel_samples, Profiles},
    },
};

/// Runs the whole-kernel tracer; the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // Bad export options fail before anything is loaded.
    let outputs = Outputs::from_cli(&cli)?;
    // A signal while loading ends the process (what the kernel holds for
    // it goes with its descriptors); from here on it ends the run.
    let tracer = Tracer::load(&cli, false)?;
    stop::attaching();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(trace(cli, tracer, outputs))
}

async fn trace(cli: Cli, tracer: Tracer, mut outputs: Outputs) -> anyhow::Result<i32> {
    let Some(memory) = tracer.kernel.clone() else {
        anyhow::bail!("--kernel: the kernel-memory programs are not loaded");
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    eprintln!(
        "leaktrace: tracing the whole kernel's memory (slab, pages, per-CPU); reporting every {} on what is older than {}; Ctrl-C to stop",
        human_duration(cli.interval),
        human_duration(cli.older_than)
    );
    let exports = outputs.wants_profiles();
    let live = outputs.listener.take().map(|l| {
        announce(&l, false);
        export::server::serve(l)
    });
    let mut exporter = Exporter::new(outputs.paths.clone(), 0, live);
    let asked = Asked {
        older_than: cli.older_than,
        top: cli.top,
        suppressions: outputs.suppressions.take(),
    };
    let started = Instant::now();
    let mut timer = interval_at((started + cli.interval).into(), cli.interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let style = reporter_of(&cli).style();
    let mut seq = 0;
    let mut done = stop::requested().is_some();
    while !done {
        tokio::select! {
            _ = timer.tick() => {}
            _ = sigint.recv() => done = true,
            _ = sigterm.recv() => done = true,
        }
        seq += 1;
        let last = done || cli.count.is_some_and(|n| seq >= n);
        let pending = memory
            .borrow_mut()
            .begin(None, cli.older_than)
            .context("reading the kernel-memory table")?;
        let dropped = tracer.collector.dropped().context("reading the counters")?;
        let (section, all) = memory
            .borrow_mut()
            .finish(pending, Vec::new(), &asked, &dropped);
        if exports {
            let profiles = Profiles {
                pid: 0,
                container: None,
                older_than: cli.older_than,
                taken: SystemTime::now(),
                since_attach: started.elapsed(),
                heap: kernel_samples(&all),
                scanned: false,
                goroutines: None,
            };
            let text = metrics::render_kernel(&section, seq, metrics::OwnUsage::now());
            if let Err(e) = exporter.write_profiles(seq, &profiles, text) {
                eprintln!("leaktrace: warning: report {seq}: {e}");
            }
        }
        let mut out = io::stdout().lock();
        let written = match cli.format {
            Format::Text => writeln!(
                out,
                "== {} #{seq} · kernel · +{}",
                if last { "final report" } else { "report" },
                human_duration(started.elapsed())
            )
            .and_then(|()| kernel::write_text(&mut out, &section, style))
            .and_then(|()| writeln!(out)),
            Format::Json => writeln!(
                out,
                "{}",
                json!({
                    "type": "kernel_report",
                    "seq": seq,
                    "final": last,
                    "timestamp_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                    "older_than_ms": cli.older_than.as_millis() as u64,
                    "kernel": kernel::to_json(&section),
                })
            ),
        };
        if written.and_then(|()| out.flush()).is_err() || last {
            break;
        }
    }
    drop(tracer);
    eprintln!("leaktrace: all probes removed");
    Ok(0)
}
