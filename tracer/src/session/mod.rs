//! Running leaktrace: resolve the target (a PID, a command, or every
//! process of a container), attach, report every interval, and on the way
//! out print the final report and remove every probe.

mod container;
mod exit_watch;
mod one;
pub mod stop;
mod target;
mod tracer;

use anyhow::Context;

use crate::{
    cli::Cli,
    export, golang, privileges, probes,
    process::{self, launch},
};

/// Runs leaktrace; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    stop::install();
    privileges::check()?;
    probes::check_kernel_support()?;
    if let Some(id) = cli.container.clone() {
        return container::run(cli, &id);
    }
    if cli.list_probes {
        return list_probes(&cli);
    }
    // Bad export options fail before anything is attached or started.
    let outputs = Outputs::from_cli(&cli)?;

    // Fork the command (if any) before any other thread exists.
    let plan = match cli.pid {
        Some(pid) => tracer::Plan::of_process(&cli, pid)?,
        None => {
            let paused = launch::spawn_paused(&cli.command)?;
            let comm = paused
                .program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let candidates = launch::program_objects(&paused.program)?;
            let go = golang::of_program(&paused.program)?;
            tracer::Plan::new(&cli, paused.pid, comm, Some(paused), candidates, go)?
        }
    };
    let tracer = one::attach(&cli, &plan)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(one::trace(cli, tracer, plan, outputs))
}

/// How reports are written to stdout: the format asked for, colour only on
/// a terminal (and never with NO_COLOR).
pub(crate) fn reporter_of(cli: &Cli) -> crate::report::Reporter {
    use crate::{cli::ColorChoice, report::Style};
    use std::io::IsTerminal;
    let style = match cli.color {
        ColorChoice::Always => Style::Color,
        ColorChoice::Never => Style::Plain,
        ColorChoice::Auto
            if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() =>
        {
            Style::Color
        }
        ColorChoice::Auto => Style::Plain,
    };
    crate::report::Reporter::new(cli.format, style)
}

/// Where reports go besides stdout, checked before attach.
pub(crate) struct Outputs {
    pub paths: export::ExportPaths,
    pub listener: Option<std::net::TcpListener>,
    pub suppressions: Option<export::suppressions::Suppressions>,
}

impl Outputs {
    fn from_cli(cli: &Cli) -> anyhow::Result<Self> {
        let paths = export::ExportPaths {
            pprof_dir: cli.pprof_dir.clone(),
            folded: cli.folded.clone(),
            flamegraph: cli.flamegraph.clone(),
        };
        paths.check()?;
        let listener = match &cli.listen {
            Some(addr) => Some(export::server::bind(addr, cli.listen_public)?),
            None => None,
        };
        let suppressions = Self::suppressions_of(cli)?;
        Ok(Outputs {
            paths,
            listener,
            suppressions,
        })
    }

    fn suppressions_of(
        cli: &Cli,
    ) -> Result<Option<export::suppressions::Suppressions>, export::suppressions::SuppressionError>
    {
        cli.suppressions
            .as_deref()
            .map(export::suppressions::Suppressions::load)
            .transpose()
    }

    /// Container mode: each process's reports go to stdout only (the file
    /// and endpoint exports name one target).
    fn per_process(suppressions: Option<export::suppressions::Suppressions>) -> Self {
        Outputs {
            paths: export::ExportPaths::default(),
            listener: None,
            suppressions,
        }
    }

    /// Whether reports must carry the whole reading.
    pub fn wants_profiles(&self) -> bool {
        self.paths.any() || self.listener.is_some()
    }
}

/// `--list-probes`: resolve the target as for tracing, print where each
/// probe would go, attach nothing.
fn list_probes(cli: &Cli) -> anyhow::Result<i32> {
    let (candidates, go) = match cli.pid {
        Some(pid) => {
            process::inspect(pid)?;
            (process::mapped_objects(pid)?, golang::of_process(pid)?)
        }
        None => {
            let program = launch::resolve_command(&cli.command)?;
            (
                launch::program_objects(&program)?,
                golang::of_program(&program)?,
            )
        }
    };
    let allocator = tracer::allocator_of(&candidates, go.is_some())?;
    let rows = probes::table::rows(&allocator, go.as_ref());
    probes::table::write(&mut std::io::stdout().lock(), &rows)?;
    Ok(0)
}
