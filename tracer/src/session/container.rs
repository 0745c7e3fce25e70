//! `--container ID`: every process of a container through one loaded
//! tracer. The container's processes are selected in the kernel: a child a
//! traced process forks is traced from its fork on (before it runs), and a
//! process that execs in the container's PID namespace (`docker exec`) from
//! its exec on; the probes on the container's own files serve all of them
//! with one link each. Userspace hears of newcomers and exec's through a
//! ring buffer and sets up their reports, and of exits through pidfds: a
//! process that exits gets a final report of its own.

use std::{
    collections::HashSet,
    io,
    os::{fd::AsFd, unix::fs::MetadataExt},
    time::Instant,
};

use anyhow::Context;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, interval_at, MissedTickBehavior},
};
use tracer_common::{ProcessEvent, EVENT_ENTERED, EVENT_EXECED, EVENT_FORKED, TRACE_CHILDREN};

use super::{
    reporter_of, stop,
    target::{write_report, Target},
    tracer::{Plan, Tracer},
    Outputs,
};
use crate::{
    cli::Cli,
    collect,
    probes::Scope,
    process::{container, procfs},
    report::{ProcessCounts, Report, Reporter},
};

pub fn run(cli: Cli, prefix: &str) -> anyhow::Result<i32> {
    let id = container::resolve(prefix)?;
    // Bad export options fail before anything is attached.
    let outputs = Outputs::from_cli(&cli)?;
    let pids = container::processes(&id);
    let inside: HashSet<u32> = pids.iter().copied().collect();
    let plans: Vec<Plan> = pids
        .iter()
        .filter_map(|&pid| match Plan::of_process(&cli, pid) {
            Ok(plan) => Some(plan),
            Err(e) => {
                eprintln!("leaktrace: pid {pid}: not traced: {e:#}");
                None
            }
        })
        .collect();
    let Some(first) = plans.first() else {
        anyhow::bail!(
            "container {}: none of its processes can be traced",
            &id[..12]
        );
    };
    let pidns = pid_namespace(first.pid)?;
    // Go programs may start in the container later: their programs too.
    let mut tracer = Tracer::load(&cli, true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Each process's exit watch registers with the runtime.
    let _runtime = runtime.enter();
    let mut supervisor = Supervisor {
        cli,
        id,
        outputs: outputs.serving(),
        targets: Vec::new(),
        joined: 0,
        left: 0,
        reporter: None,
        waiting: Vec::new(),
    };
    supervisor.reporter = Some(reporter_of(&supervisor.cli));
    eprintln!(
        "leaktrace: container {}: tracing its processes, and new ones from their first instruction; Ctrl-C to stop",
        &supervisor.id[..12]
    );
    for plan in plans {
        let scope = scope_for(&plan, &inside);
        supervisor.add(&mut tracer, plan, scope, None)?;
        if supervisor.targets.len() == 1 {
            tracer.probes.follow_pid_namespace(pidns.0, pidns.1)?;
        }
    }
    supervisor.joined = 0;
    runtime.block_on(supervisor.supervise(tracer))
}

/// The nsfs device and inode of process `pid`'s PID namespace.
fn pid_namespace(pid: u32) -> anyhow::Result<(u64, u64)> {
    let md = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .with_context(|| format!("cannot read the PID namespace of pid {pid}"))?;
    Ok((md.dev(), md.ino()))
}

/// Probes for every process of the container when no process outside it
/// maps the files probed (a container's own C library): a process the
/// container starts is then traced from its first instruction. Files the
/// host shares are probed per process, so that nothing outside pays a
/// trap.
fn scope_for(plan: &Plan, inside: &HashSet<u32>) -> Scope {
    let files: HashSet<(String, u64)> = procfs::read_maps(plan.pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.executable
                && m.path.as_deref().is_some_and(|p| {
                    plan.allocator.objects.iter().any(|o| o.display == p)
                        || plan.go.as_ref().is_some_and(|g| g.display == p)
                })
        })
        .map(|m| (m.dev, m.inode))
        .collect();
    if files.is_empty() || mapped_outside(&files, inside) {
        Scope::Process(plan.pid)
    } else {
        Scope::Shared
    }
}

/// Whether a process not in `inside` maps one of `files` (device, inode).
fn mapped_outside(files: &HashSet<(String, u64)>, inside: &HashSet<u32>) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    let own = std::process::id();
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !inside.contains(pid) && *pid != own)
        .any(|pid| {
            procfs::read_maps(pid).is_ok_and(|maps| {
                maps.iter()
                    .any(|m| files.contains(&(m.dev.clone(), m.inode)))
            })
        })
}

struct Supervisor {
    cli: Cli,
    id: String,
    outputs: Outputs,
    targets: Vec<Target>,
    /// Processes that joined since the last report, and that left.
    joined: u64,
    left: u64,
    reporter: Option<Reporter>,
    /// Processes that exec'd in the container (or in it, a new image)
    /// before their loader had mapped the C library: tried again at every
    /// tick until then. The kernel records their allocations meanwhile.
    waiting: Vec<Waiting>,
}

/// A process whose image is not ready to read yet.
struct Waiting {
    pid: u32,
    /// A traced process's new image (else a newcomer).
    execed: bool,
    until: Instant,
}

/// How long a process that exec'd may take to map its C library.
const LOADER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Supervisor {
    /// Attaches to (or, for a forked child, only starts reading) the
    /// process `plan` names; `fork_of`: the traced parent of a child the
    /// kernel already traces, whose mappings it has.
    fn add(
        &mut self,
        tracer: &mut Tracer,
        plan: Plan,
        scope: Scope,
        fork_of: Option<u32>,
    ) -> anyhow::Result<()> {
        let pid = plan.pid;
        if fork_of.is_some() {
            // The kernel traces it already, through its parent's probes
            // (every process's, on the container's files): only its
            // tables are its own. It may be gone already.
            if let Some(tables) = tracer.unwind.as_mut() {
                let _ = tables.refresh(pid);
            }
        } else if let Err(e) = tracer.attach(&self.cli, &plan, scope, TRACE_CHILDREN) {
            tracer.release(pid);
            return Err(e);
        }
        let outputs = self.outputs.for_process();
        let symbols_of = match fork_of {
            Some(parent) if !alive(pid) => parent,
            _ => pid,
        };
        let target = Target::start_reading(&self.cli, tracer, plan, outputs, symbols_of)?;
        self.targets.push(target);
        self.joined += 1;
        Ok(())
    }

    async fn supervise(mut self, mut tracer: Tracer) -> anyhow::Result<i32> {
        let cli = self.cli.clone();
        let tick_period = collect::tick_period(cli.older_than, cli.interval);
        let mut tick = interval(tick_period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut report_timer = interval_at((Instant::now() + cli.interval).into(), cli.interval);
        report_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let events_fd = tracer
            .events
            .as_fd()
            .try_clone_to_owned()
            .context("cannot watch the event buffer")?;
        // SAFETY: a duplicate of the ring buffer's fd, owned by the AsyncFd
        // alone and registered once.
        let events = unsafe { AsyncFd::register(events_fd) }
            .map_err(io::Error::from)
            .context("cannot watch the event buffer")?;
        let mut rounds = 0u64;
        let mut stopped = stop::requested().is_some();
        while !stopped {
            tokio::select! {
                _ = tick.tick() => {
                    tracer.collector.tick(Instant::now()).context("reading the eBPF maps")?;
                    for t in &mut self.targets {
                        t.tick(&mut tracer)?;
                    }
                    self.retry_waiting(&mut tracer);
                    self.reap(&mut tracer).await?;
                }
                ready = events.readable() => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    self.take_events(&mut tracer);
                }
                _ = report_timer.tick() => {
                    self.take_events(&mut tracer);
                    self.reap(&mut tracer).await?;
                    rounds += 1;
                    let last = cli.count.is_some_and(|n| rounds >= n);
                    if !self.report_all(&mut tracer, last).await? || last {
                        stopped = true;
                    }
                }
                _ = sigint.recv() => stopped = true,
                _ = sigterm.recv() => stopped = true,
            }
        }
        if cli.count.is_none_or(|n| rounds < n) {
            self.take_events(&mut tracer);
            self.reap(&mut tracer).await?;
            self.report_all(&mut tracer, true).await?;
        }
        drop(self);
        drop(tracer);
        eprintln!("leaktrace: all probes removed");
        Ok(0)
    }

    /// Newcomers and exec's the kernel told of.
    fn take_events(&mut self, tracer: &mut Tracer) {
        let mut events = Vec::new();
        while let Some(item) = tracer.events.next() {
            if item.len() >= std::mem::size_of::<ProcessEvent>() {
                // SAFETY: the kernel wrote a whole ProcessEvent (checked
                // length); read unaligned from the ring buffer's bytes.
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<ProcessEvent>())
                });
            }
        }
        for e in events {
            match e.kind {
                EVENT_FORKED => self.forked(tracer, e.tgid, e.parent),
                EVENT_ENTERED => self.entered(tracer, e.tgid),
                EVENT_EXECED => self.execed(tracer, e.tgid),
                _ => {}
            }
        }
    }

    fn forked(&mut self, tracer: &mut Tracer, pid: u32, parent: u32) {
        if self.targets.iter().any(|t| t.pid == pid) {
            return;
        }
        let plan = match Plan::of_process(&self.cli, pid) {
            Ok(plan) => plan,
            // Gone already: it had its parent's mappings.
            Err(_) => match self.targets.iter().find(|t| t.pid == parent) {
                Some(p) => Plan {
                    pid,
                    comm: p.comm.clone(),
                    paused: None,
                    candidates: p.candidates.clone(),
                    allocator: p.allocator.clone(),
                    go: None,
                    memprofile: None,
                },
                None => return,
            },
        };
        // The kernel traces it already, through its parent's probes.
        if let Err(e) = self.add(tracer, plan, Scope::Shared, Some(parent)) {
            eprintln!("leaktrace: pid {pid}: not traced: {e:#}");
        }
    }

    fn entered(&mut self, tracer: &mut Tracer, pid: u32) {
        if self.targets.iter().any(|t| t.pid == pid) {
            return;
        }
        self.waiting.push(Waiting {
            pid,
            execed: false,
            until: Instant::now() + LOADER_GRACE,
        });
        self.retry_waiting(tracer);
    }

    /// A traced process exec'd: its new objects get probes (once its
    /// loader has mapped them), its tables and symbols are read anew.
    fn execed(&mut self, tracer: &mut Tracer, pid: u32) {
        let Some(at) = self.targets.iter().position(|t| t.pid == pid) else {
            return;
        };
        if let Err(e) = self.targets[at].execed(tracer) {
            eprintln!("leaktrace: pid {pid}: {e:#}");
        }
        self.waiting.retain(|w| w.pid != pid);
        self.waiting.push(Waiting {
            pid,
            execed: true,
            until: Instant::now() + LOADER_GRACE,
        });
        self.retry_waiting(tracer);
    }

    /// Tries again to read the processes whose loader was not done.
    fn retry_waiting(&mut self, tracer: &mut Tracer) {
        let now = Instant::now();
        for w in std::mem::take(&mut self.waiting) {
            if !alive(w.pid) {
                continue;
            }
            match Plan::of_process(&self.cli, w.pid) {
                Ok(plan) => {
                    let inside: HashSet<u32> = container::processes(&self.id).into_iter().collect();
                    let scope = scope_for(&plan, &inside);
                    let outcome = if w.execed {
                        let attached = tracer.attach(&self.cli, &plan, scope, TRACE_CHILDREN);
                        if let Some(t) = self.targets.iter_mut().find(|t| t.pid == w.pid) {
                            let _ = t.refresh(tracer);
                        }
                        attached
                    } else {
                        self.add(tracer, plan, scope, None)
                    };
                    if let Err(e) = outcome {
                        eprintln!("leaktrace: pid {}: not traced: {e:#}", w.pid);
                    }
                }
                Err(_) if now < w.until => self.waiting.push(w),
                Err(e) if w.execed => eprintln!(
                    "leaktrace: pid {}: its new image was not read (its stacks may stay unsymbolized): {e:#}",
                    w.pid
                ),
                Err(e) => eprintln!("leaktrace: pid {}: not traced: {e:#}", w.pid),
            }
        }
    }

    /// Processes that exited: a final report each, then let go.
    async fn reap(&mut self, tracer: &mut Tracer) -> anyhow::Result<()> {
        let gone: Vec<usize> = self
            .targets
            .iter_mut()
            .enumerate()
            .filter_map(|(i, t)| t.exit.check_now().then_some(i))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let snap = tracer
            .collector
            .read(Instant::now())
            .context("reading the eBPF maps")?;
        for i in gone.into_iter().rev() {
            let mut t = self.targets.remove(i);
            self.left += 1;
            let mut report = t.report(&snap, true, true).await?;
            report.container_processes = Some(self.counts());
            self.write(&report)?;
            tracer.release(t.pid);
        }
        Ok(())
    }

    /// A report of every traced process; false when stdout's reader has
    /// gone away.
    async fn report_all(&mut self, tracer: &mut Tracer, last: bool) -> anyhow::Result<bool> {
        for t in &mut self.targets {
            t.refresh(tracer)?;
        }
        tracer.collector.prune_dead_threads();
        let snap = tracer
            .collector
            .read(Instant::now())
            .context("reading the eBPF maps")?;
        let mut open = true;
        let counts = self.counts();
        for i in 0..self.targets.len() {
            let mut report = self.targets[i].report(&snap, last, false).await?;
            report.container_processes = Some(counts);
            open &= self.write(&report)?;
        }
        if let Some(live) = &self.outputs.live {
            let parts: Vec<_> = self
                .targets
                .iter()
                .filter_map(Target::last_export)
                .collect();
            if !parts.is_empty() {
                if let Err(e) = crate::export::publish_merged(live, &parts) {
                    eprintln!("leaktrace: warning: the container's merged profile: {e}");
                }
            }
        }
        eprintln!(
            "leaktrace: container {}: {} processes traced; {} joined and {} left since the last report",
            &self.id[..12],
            self.targets.len(),
            self.joined,
            self.left
        );
        self.joined = 0;
        self.left = 0;
        Ok(open)
    }

    /// The container's processes, for its reports.
    fn counts(&self) -> ProcessCounts {
        ProcessCounts {
            traced: self.targets.len() as u64,
            joined: self.joined,
            left: self.left,
        }
    }

    fn write(&self, report: &Report) -> anyhow::Result<bool> {
        match &self.reporter {
            Some(r) => write_report(r, &mut io::stdout().lock(), report),
            None => Ok(true),
        }
    }
}

/// Whether process `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    procfs::read_stat(pid).is_ok_and(|s| s.state != 'Z')
}
