//! One tracing session: resolve the target, attach, report every interval,
//! and on the way out print the final report and remove every probe.

use std::{
    io::{self, IsTerminal},
    os::fd::{FromRawFd, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, interval_at, MissedTickBehavior},
};
use tracer_common::STACK_UNKNOWN;

use crate::{
    aggregate::{self, GrowthTracker, Trend},
    cli::{Cli, ColorChoice},
    collect::{self, Collector, Snapshot},
    go_report::GoTracker,
    goroutines::GoroutineCollector,
    privileges,
    probes::{self, MapSizes, Probes},
    report::{ExistingThreadReport, Report, Reporter, SiteReport, Style, ThreadSiteReport},
    stacks::Stacks,
    symbolize::{GoModule, Symbolizer},
    target::{
        self,
        container::{self, ContainerInfo},
        executable, launch, Allocator, AllocatorError, GoTarget,
    },
    threads::{TaskCollector, TaskKind},
};

/// Ticks during which the symbolizer re-reads the target's mappings every
/// time, so that a command started by us is seen after its exec even if it
/// exits before the first report.
const EARLY_MAP_REFRESH_TICKS: u32 = 20;

/// Runs leaktrace; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    privileges::check()?;
    probes::check_kernel_support()?;
    if let Some(id) = cli.container.clone() {
        return crate::container_session::run(cli, &id);
    }

    // Fork the command (if any) before any other thread exists.
    let prepared = match cli.pid {
        Some(pid) => prepare(&cli, pid)?,
        None => {
            let paused = launch::spawn_paused(&cli.command)?;
            let comm = paused
                .program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let candidates = launch::program_objects(&paused.program)?;
            let go = executable::of_program(&paused.program)?;
            attach(&cli, paused.pid, comm, Some(paused), &candidates, go)?
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(trace(cli, prepared))
}

/// A target with every probe attached, ready to be traced.
pub struct Prepared {
    pid: u32,
    comm: String,
    paused: Option<launch::Paused>,
    allocator: Allocator,
    go: Option<GoTarget>,
    probes: Probes,
    maps: probes::Maps,
}

/// Inspects the running process `pid` and attaches to it.
pub fn prepare(cli: &Cli, pid: u32) -> anyhow::Result<Prepared> {
    let proc_ = target::inspect(pid)?;
    let candidates = target::mapped_objects(pid)?;
    let go = executable::of_process(pid)?;
    attach(cli, pid, proc_.comm, None, &candidates, go)
}

fn attach(
    cli: &Cli,
    pid: u32,
    comm: String,
    paused: Option<launch::Paused>,
    candidates: &[target::Candidate],
    go: Option<GoTarget>,
) -> anyhow::Result<Prepared> {
    // A pure Go program has no C allocator; a cgo one has the C library's.
    let allocator = match target::find_allocator(candidates) {
        Ok(a) => a,
        Err(AllocatorError::NotFound) if go.is_some() => Allocator::none(),
        Err(e) => return Err(e.into()),
    };

    let sizes = MapSizes {
        allocs: cli.max_allocs,
        sites: cli.max_sites,
        stacks: cli.max_stacks,
        threads: cli.max_threads,
        tasks: cli.max_tasks,
        goroutines: cli.max_goroutines,
    };
    let mut probes = Probes::load(sizes, cli.probe_mode, go.is_some())?;
    // A target under seccomp may be killed by return probes on some kernels:
    // find out on a throwaway process first. (A launched command has no
    // filter yet; one it installs later is not checked.)
    if paused.is_none()
        && probes::has_seccomp_filter(pid)
        && !probes.uretprobe_survives_seccomp()?
    {
        return Err(probes::ProbeError::ReturnProbesUnsafe(pid).into());
    }
    probes.attach(&allocator, pid)?;
    probes.attach_tasks(&allocator, pid)?;
    if let Some(go) = &go {
        probes.attach_go(go, pid)?;
    }
    let maps = probes.take_maps()?;
    Ok(Prepared {
        pid,
        comm,
        paused,
        allocator,
        go,
        probes,
        maps,
    })
}

/// Reports on a prepared target until it exits, a signal arrives or
/// `--count` reports are out; then removes every probe.
pub async fn trace(cli: Cli, prepared: Prepared) -> anyhow::Result<i32> {
    let Prepared {
        pid,
        comm,
        paused,
        allocator,
        go,
        probes,
        maps,
    } = prepared;
    let start = Instant::now();
    let launched = paused.is_some();
    let mut collector = Collector::new(maps.heap, cli.older_than, start)
        .context("cannot initialise the eBPF maps")?;
    let tasks = TaskCollector::new(maps.tasks, pid, cli.older_than);
    let mut exit = ExitWatcher::new(pid, launched).context("cannot watch the target for exit")?;
    let go_module = go.as_ref().map(|g| GoModule {
        inode: g.inode,
        binary: g.binary.clone(),
    });
    let symbolizer =
        Symbolizer::start(pid, go_module).context("cannot start the symbolization thread")?;
    let go_version = go.as_ref().map(|g| g.binary.version.clone());
    let go = go.map(|target| {
        let collector = maps
            .goroutines
            .map(|m| GoroutineCollector::new(m, cli.older_than, cli.max_goroutines));
        GoTracker::new(pid, target, collector, launched, cli.top)
    });
    if let Some(p) = paused {
        p.release();
    }

    let style = match cli.color {
        ColorChoice::Always => Style::Color,
        ColorChoice::Never => Style::Plain,
        ColorChoice::Auto
            if io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() =>
        {
            Style::Color
        }
        ColorChoice::Auto => Style::Plain,
    };
    let reporter = Reporter::new(cli.format, style);
    let heap_via = match (&go_version, allocator.objects.is_empty()) {
        (Some(v), true) => format!("Go {v} (no C allocator)"),
        (Some(v), false) => format!("Go {v} + C heap via {}", allocator.display()),
        (None, _) => format!("heap via {}", allocator.display()),
    };
    eprintln!(
        "leaktrace: tracing pid {pid} ({comm}): {heap_via} ({} probes); reporting every {} on what is older than {}; Ctrl-C to stop",
        probes.probe_count(),
        crate::report::human_duration(cli.interval),
        crate::report::human_duration(cli.older_than),
    );

    let tick_period = collect::tick_period(cli.older_than, cli.interval);
    let mut tick = interval(tick_period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report_timer = interval_at((start + cli.interval).into(), cli.interval);
    report_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let mut builder = ReportBuilder {
        pid,
        comm,
        allocator,
        top: cli.top,
        older_than: cli.older_than,
        start,
        seq: 0,
        growth: GrowthTracker::default(),
        thread_growth: GrowthTracker::default(),
        stacks: Stacks::new(maps.stacks),
        tasks,
        container: container::inspect(pid),
        go,
    };
    let mut ticks = 0u32;
    let mut exit_status: Option<i32> = None;
    let mut stop_signal: Option<i32> = None;
    // Locked per report: in container mode several targets share stdout.
    let final_done = loop {
        tokio::select! {
            _ = tick.tick() => {
                collector.tick(Instant::now()).context("reading the eBPF maps")?;
                ticks += 1;
                if ticks <= EARLY_MAP_REFRESH_TICKS {
                    symbolizer.refresh();
                }
            }
            _ = report_timer.tick() => {
                symbolizer.refresh();
                collector.prune_dead_threads(pid);
                let snap = collector.read(Instant::now()).context("reading the eBPF maps")?;
                let last = cli.count.is_some_and(|n| builder.seq + 1 >= n);
                let report = builder.build(&symbolizer, snap, last, false).await?;
                if !write_report(&reporter, &mut io::stdout().lock(), &report)? {
                    break true; // reader went away (e.g. `| head`): stop quietly
                }
                if last {
                    break true;
                }
            }
            _ = sigint.recv() => { stop_signal = Some(libc::SIGINT); break false; }
            _ = sigterm.recv() => { stop_signal = Some(libc::SIGTERM); break false; }
            status = exit.exited() => { exit_status = status; break false; }
        }
    };
    if !final_done {
        let snap = collector
            .read(Instant::now())
            .context("reading the eBPF maps")?;
        let report = builder
            .build(&symbolizer, snap, true, exit.has_exited())
            .await?;
        write_report(&reporter, &mut io::stdout().lock(), &report)?;
    }
    probes.detach();
    drop(collector);
    drop(symbolizer);
    eprintln!("leaktrace: all probes removed");

    if !launched {
        return Ok(0);
    }
    // Launch mode: leaktrace ends with the command, and with its status.
    if let Some(status) = exit_status {
        return Ok(status);
    }
    if stop_signal == Some(libc::SIGTERM) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    loop {
        tokio::select! {
            status = exit.exited() => return Ok(status.unwrap_or(0)),
            _ = sigint.recv() => { signal_child(pid, libc::SIGINT); }
            _ = sigterm.recv() => { signal_child(pid, libc::SIGTERM); }
        }
    }
}

fn signal_child(pid: u32, sig: i32) {
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Writes one report; `Ok(false)` when stdout's reader has gone away.
fn write_report(
    reporter: &Reporter,
    out: &mut impl io::Write,
    report: &Report,
) -> anyhow::Result<bool> {
    match reporter.write(out, report) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("writing the report")),
    }
}

/// How many of the largest sites are symbolized per report, so that sites
/// merging into one stack (see [`aggregate`]) still rank correctly.
fn symbolized_sites(top: usize) -> usize {
    top.saturating_mul(4).max(64)
}

/// Builds reports from snapshots: symbolization, merging, top-N, growth.
struct ReportBuilder {
    pid: u32,
    comm: String,
    allocator: Allocator,
    top: usize,
    older_than: Duration,
    start: Instant,
    seq: u64,
    growth: GrowthTracker<SiteReport>,
    thread_growth: GrowthTracker<ThreadSiteReport>,
    stacks: Stacks,
    tasks: TaskCollector,
    container: ContainerInfo,
    go: Option<GoTracker>,
}

impl ReportBuilder {
    async fn build(
        &mut self,
        symbolizer: &Symbolizer,
        snap: Snapshot,
        final_report: bool,
        target_exited: bool,
    ) -> anyhow::Result<Report> {
        self.seq += 1;
        let tasks = self.tasks.snapshot().context("reading the task table")?;
        let considered = &snap.sites[..snap.sites.len().min(symbolized_sites(self.top))];
        let heap_stacks: Vec<Vec<u64>> = considered
            .iter()
            .map(|s| self.stacks.frames(s.site.caller, s.site.stack_id))
            .collect();
        let task_stacks: Vec<Vec<u64>> = tasks
            .groups
            .iter()
            .map(|g| self.stacks.frames(g.caller, g.stack_id))
            .collect();
        let probe_ips: Vec<Option<u64>> = considered
            .iter()
            .map(|s| s.site.stack_id)
            .chain(tasks.groups.iter().map(|g| g.stack_id))
            .map(|id| self.stacks.probe_ip(id))
            .collect();

        let by_addr = symbolizer
            .symbolize_set(
                heap_stacks.iter().chain(&task_stacks).flatten().copied(),
                true,
            )
            .await?;
        let probe_by_ip = symbolizer
            .symbolize_set(probe_ips.iter().flatten().copied(), false)
            .await?;
        let symbolized = |stack: &[u64]| -> Vec<_> {
            stack
                .iter()
                .flat_map(|a| by_addr.get(a).cloned().unwrap_or_default())
                .collect()
        };
        // Which probed function a stack starts at, by its file location.
        let called = |ip: Option<u64>, names: &dyn Fn(&str, u64) -> Option<String>| {
            ip.and_then(|ip| probe_by_ip.get(&ip))
                .and_then(|f| f.last())
                .and_then(|f| f.location.as_ref())
                .and_then(|(path, off)| names(path, *off))
        };
        let allocator = &self.allocator;
        let alloc_names = |p: &str, o: u64| allocator.names_at(p, o).map(str::to_string);
        let spawn_names = |p: &str, o: u64| allocator.spawn_at(p, o).map(str::to_string);

        let sites: Vec<SiteReport> = considered
            .iter()
            .zip(&heap_stacks)
            .zip(&probe_ips)
            .map(|((s, stack), ip)| SiteReport {
                bytes: s.bytes,
                blocks: s.blocks,
                oldest: s.oldest,
                growth: None,
                trend: Trend::New,
                allocator: called(*ip, &alloc_names),
                stack_lost: s.site.stack_id == STACK_UNKNOWN,
                frames: symbolized(stack),
            })
            .collect();
        let mut sites = aggregate::merge_identical(sites);
        self.growth.apply(&mut sites);
        let sites_total = sites.len() + (snap.sites.len() - considered.len());
        sites.truncate(self.top);

        let threads: Vec<ThreadSiteReport> = tasks
            .groups
            .iter()
            .zip(&task_stacks)
            .zip(&probe_ips[considered.len()..])
            .map(|((g, stack), ip)| ThreadSiteReport {
                kind: match g.kind {
                    TaskKind::Thread => "thread",
                    TaskKind::Process => "process",
                },
                count: g.count,
                oldest: g.oldest,
                growth: None,
                trend: Trend::New,
                stack_bytes: g.stack_bytes,
                spawned_by: called(*ip, &spawn_names),
                frames: symbolized(stack),
            })
            .collect();
        let mut threads = aggregate::merge_thread_sites(threads);
        self.thread_growth.apply(&mut threads);
        threads.truncate(self.top);
        let go = match &mut self.go {
            Some(t) => Some(t.report(symbolizer, &mut self.stacks).await?),
            None => None,
        };

        Ok(Report {
            seq: self.seq,
            final_report,
            timestamp: SystemTime::now(),
            elapsed: self.start.elapsed(),
            pid: self.pid,
            comm: self.comm.clone(),
            pid_in_container: self.container.pid_inside,
            container_id: self.container.id.clone(),
            older_than: self.older_than,
            heap_traced: !self.allocator.objects.is_empty(),
            live_bytes: snap.live_bytes,
            live_blocks: snap.live_blocks,
            old_bytes: snap.sites.iter().map(|s| s.bytes).sum(),
            old_blocks: snap.sites.iter().map(|s| s.blocks).sum(),
            sites_total,
            sites,
            dropped: snap.dropped,
            threads,
            threads_before_attach: tasks
                .existing
                .into_iter()
                .map(|t| ExistingThreadReport {
                    tid: t.tid,
                    name: t.name,
                    age: t.age,
                })
                .collect(),
            go,
            target_exited,
        })
    }
}

/// Notices when the target exits, through a pidfd (readable on exit).
struct ExitWatcher {
    pid: u32,
    fd: Option<AsyncFd<OwnedFd>>,
    /// We started the target: reap it and report its status.
    is_child: bool,
    exited: bool,
}

impl ExitWatcher {
    fn new(pid: u32, is_child: bool) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let fd = if fd >= 0 {
            // SAFETY: the kernel just gave us this fd, so we own it, and
            // the OwnedFd is registered once and only closed by AsyncFd.
            let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: `owned` is a valid fd exclusively owned by the AsyncFd.
            Some(unsafe { AsyncFd::register(owned) }.map_err(io::Error::from)?)
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            None // already gone
        } else {
            return Err(io::Error::last_os_error());
        };
        Ok(ExitWatcher {
            pid,
            exited: fd.is_none(),
            fd,
            is_child,
        })
    }

    fn has_exited(&self) -> bool {
        self.exited
    }

    /// Resolves when the target exits; for our own child, with its exit
    /// code (128 + signal if killed). Pending forever once it has resolved.
    async fn exited(&mut self) -> Option<i32> {
        if self.exited {
            return std::future::pending().await;
        }
        if let Some(fd) = &self.fd {
            if let Ok(mut guard) = fd.readable().await {
                guard.retain_ready();
            }
        }
        self.exited = true;
        if !self.is_child {
            return None;
        }
        let mut status = 0;
        // SAFETY: reaping our own exited child; status is a valid out-pointer.
        let r = unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
        if r < 0 {
            return None;
        }
        if libc::WIFEXITED(status) {
            Some(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Some(128 + libc::WTERMSIG(status))
        } else {
            None
        }
    }
}
