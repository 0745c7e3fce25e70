//! `--container ID`: every process of a container, each traced as with
//! `--pid` (its own probes, tables and reports), including processes that
//! start after attach, which are picked up within one poll period.

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use tokio::{
    signal::unix::{signal, SignalKind},
    task::{JoinHandle, LocalSet},
    time::{interval, MissedTickBehavior},
};

use super::{one, Outputs};
use crate::{cli::Cli, process::container};

/// How often the container's process list is read for newcomers.
const POLL: Duration = Duration::from_millis(250);

pub fn run(cli: Cli, prefix: &str) -> anyhow::Result<i32> {
    let id = container::resolve(prefix)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    LocalSet::new().block_on(&runtime, supervise(cli, id))
}

async fn supervise(cli: Cli, id: String) -> anyhow::Result<i32> {
    eprintln!(
        "leaktrace: container {}: tracing its processes, and new ones as they start; Ctrl-C to stop",
        &id[..12]
    );
    let suppressions = Outputs::suppressions_of(&cli)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut poll = interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seen: HashSet<u32> = HashSet::new();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            _ = poll.tick() => {
                for pid in container::processes(&id) {
                    if !seen.insert(pid) {
                        continue;
                    }
                    // Attaching blocks this thread briefly; reports of the
                    // other processes wait that long.
                    match one::prepare(&cli, pid) {
                        Ok(prepared) => {
                            let cli = cli.clone();
                            let outputs = Outputs::per_process(suppressions.clone());
                            tasks.push(tokio::task::spawn_local(async move {
                                if let Err(e) = one::trace(cli, prepared, outputs).await {
                                    eprintln!("leaktrace: pid {pid}: {e:#}");
                                }
                            }));
                        }
                        Err(e) => eprintln!("leaktrace: pid {pid}: not traced: {e:#}"),
                    }
                }
                tasks.retain(|t| !t.is_finished());
                // With --count, stop once every traced process is done.
                if cli.count.is_some() && tasks.is_empty() && !seen.is_empty() {
                    break;
                }
            }
            // Each trace hears the signal too and ends with a final report.
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(0)
}
