//! Running leaktrace: resolve the target (a PID, a command, or every
//! process of a container), attach, report every interval, and on the way
//! out print the final report and remove every probe.

mod container;
mod exit_watch;
mod one;

use anyhow::Context;

use crate::{cli::Cli, golang, privileges, probes, process::launch};

/// Runs leaktrace; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    privileges::check()?;
    probes::check_kernel_support()?;
    if let Some(id) = cli.container.clone() {
        return container::run(cli, &id);
    }

    // Fork the command (if any) before any other thread exists.
    let prepared = match cli.pid {
        Some(pid) => one::prepare(&cli, pid)?,
        None => {
            let paused = launch::spawn_paused(&cli.command)?;
            let comm = paused
                .program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let candidates = launch::program_objects(&paused.program)?;
            let go = golang::of_program(&paused.program)?;
            one::attach(&cli, paused.pid, comm, Some(paused), &candidates, go)?
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(one::trace(cli, prepared))
}
