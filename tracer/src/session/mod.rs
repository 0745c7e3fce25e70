//! Running leaktrace: resolve the target (a PID, a command, or every
//! process of a container), attach, report every interval, and on the way
//! out print the final report and remove every probe.

mod container;
mod exit_watch;
mod kernel;
mod one;
pub mod resume_watchdog;
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
    if let Some(selection) = container::resolve(&cli)? {
        return container::run(cli, selection);
    }
    if cli.list_probes {
        return list_probes(&cli);
    }
    if tracer::whole_kernel(&cli) {
        return kernel::run(cli);
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
    /// An endpoint serving already (`--container`: one for every process).
    pub live: Option<export::server::Shared>,
    /// One of a container's processes: files named by pid, `?pid=N`.
    pub one_of_many: bool,
    pub suppressions: Option<crate::report::suppressions::Suppressions>,
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
            live: None,
            one_of_many: false,
            suppressions,
        })
    }

    fn suppressions_of(
        cli: &Cli,
    ) -> Result<
        Option<crate::report::suppressions::Suppressions>,
        crate::report::suppressions::SuppressionError,
    > {
        cli.suppressions
            .as_deref()
            .map(crate::report::suppressions::Suppressions::load)
            .transpose()
    }

    /// A container's outputs: the endpoint, if any, serving from now on;
    /// one process's share of them with [`Outputs::for_process`].
    fn serving(mut self) -> Self {
        if let Some(l) = self.listener.take() {
            announce(&l, true);
            self.live = Some(export::server::serve(l));
        }
        self
    }

    /// One of a container's processes' share of [`Outputs::serving`].
    fn for_process(&self) -> Self {
        Outputs {
            paths: self.paths.clone(),
            listener: None,
            live: self.live.clone(),
            one_of_many: true,
            suppressions: self.suppressions.clone(),
        }
    }

    /// Whether reports must carry the whole reading.
    pub fn wants_profiles(&self) -> bool {
        self.paths.any() || self.listener.is_some() || self.live.is_some()
    }
}

/// Says where the endpoint serves (and warns when beyond loopback).
pub(crate) fn announce(l: &std::net::TcpListener, many: bool) {
    if let Ok(addr) = l.local_addr() {
        eprintln!(
            "leaktrace: serving http://{addr}/debug/pprof/heap, /debug/pprof/goroutine and /metrics{}",
            if many { " (one process: ?pid=N)" } else { "" }
        );
        if !addr.ip().is_loopback() {
            eprintln!(
                "leaktrace: warning: --listen-public: the target's heap stacks are served to anyone who can reach {addr}"
            );
        }
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
