//! `--container`, `--pod` and `--all-containers`: every process of one
//! container, or of every container, through one loaded tracer. The
//! processes are selected in the kernel: a child a traced process forks
//! is traced from its fork on (before it runs), and a process that execs
//! in the container's PID namespace (`docker exec`; with
//! `--all-containers`, in any PID namespace but the host's) from its exec
//! on; the probes on the containers' own files serve all of them with one
//! link each. Userspace hears of newcomers and exec's through a ring
//! buffer and sets up their reports, of exits through pidfds (a process
//! that exits gets a final report of its own), and of containers that
//! start, restart and end through the engine's event stream.

mod engine_watch;
mod newcomers;
mod selection;

use std::{
    collections::{BTreeMap, HashSet},
    io,
    os::{fd::AsFd, unix::fs::MetadataExt},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc::UnboundedReceiver,
    time::{interval, interval_at, MissedTickBehavior},
};
use tracer_common::TRACE_CHILDREN;

pub use selection::{resolve, Selection};

use super::{
    reporter_of,
    resume_watchdog::{self, Watchdog},
    stop,
    target::{write_report, Target},
    tracer::{Plan, Tracer},
    Outputs,
};
use crate::{
    cli::Cli,
    collect,
    probes::{LoaderWatch, Scope},
    process::{
        container,
        engine::{ContainerLabels, ContainerRecord, Docker, EventAction},
        procfs,
    },
    report::{ProcessCounts, Report, ReportKind, Reporter},
};
use engine_watch::News;
use newcomers::{Waiting, LOADER_GRACE};
use procfs::alive;

/// How long a container whose processes are all gone may take to start
/// again (`docker restart`) before leaktrace counts it as ended.
const RESTART_GRACE: Duration = Duration::from_secs(5);

pub fn run(cli: Cli, selection: Selection) -> anyhow::Result<i32> {
    // Bad export options fail before anything is attached.
    let outputs = Outputs::from_cli(&cli)?;
    let (watch, containers): (Watch, Vec<(String, Option<ContainerRecord>)>) = match &selection {
        Selection::One { id, record, .. } => (Watch::One, vec![(id.clone(), record.clone())]),
        Selection::All {
            labels, running, ..
        } => (
            Watch::All {
                labels: labels.clone(),
            },
            running
                .iter()
                .map(|c| (c.id.clone(), Some(c.clone())))
                .collect(),
        ),
    };
    let docker = selection.docker().cloned();
    // Subscribed before the processes are listed: a start in between is
    // in the stream.
    let news = match &docker {
        Some(d) => {
            let only = match &selection {
                Selection::One { id, .. } => Some(id.clone()),
                Selection::All { .. } => None,
            };
            Some(engine_watch::watch(d, only).context("cannot follow the engine's events")?)
        }
        None => None,
    };
    let mut watched = BTreeMap::new();
    let mut first: Vec<(String, Vec<Plan>)> = Vec::new();
    for (id, record) in containers {
        let pids = container::processes(&id);
        let plans = plans_of(&cli, &pids);
        if plans.is_empty() && watch == Watch::One {
            anyhow::bail!(
                "container {}: none of its processes can be traced",
                &id[..12]
            );
        }
        watched.insert(id.clone(), Watched::new(&id, record.as_ref()));
        first.push((id, plans));
    }
    // Go programs may start in a container later: their programs too.
    let mut tracer = Tracer::load(&cli, true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Each process's exit watch registers with the runtime.
    let _runtime = runtime.enter();
    // Before the first banner: from then on SIGUSR2 asks for a scan (its
    // default action would end leaktrace).
    let sigusr2 = signal(SignalKind::user_defined2())?;
    let mut supervisor = Supervisor {
        cli,
        watch,
        docker,
        containers: watched,
        outputs: outputs.serving(),
        targets: Vec::new(),
        reporter: None,
        waiting: Vec::new(),
        loaders: std::collections::HashMap::new(),
        _watchdog: None,
        ended_at: None,
        ended: false,
    };
    supervisor.reporter = Some(reporter_of(&supervisor.cli));
    match supervisor.watch {
        Watch::One => eprintln!(
            "leaktrace: container {}: tracing its processes, and new ones from their first instruction; Ctrl-C to stop",
            supervisor.containers.values().next().map_or("", |w| w.name.as_str())
        ),
        Watch::All { .. } => eprintln!(
            "leaktrace: all containers: tracing {} running, and every one started from now on; Ctrl-C to stop",
            supervisor.containers.len()
        ),
    }
    tracer.probes.attach_task_tracepoints()?;
    if matches!(supervisor.watch, Watch::All { .. }) {
        let (dev, ino) = pid_namespace(std::process::id())?;
        tracer.probes.follow_other_pid_namespaces(dev, ino)?;
    }
    supervisor._watchdog = hold_newcomers(&mut tracer);
    for (id, plans) in first {
        supervisor.start_container(&mut tracer, &id, plans)?;
    }
    for w in supervisor.containers.values_mut() {
        w.joined = 0;
    }
    runtime.block_on(supervisor.supervise(tracer, news, sigusr2))
}

/// Newcomers are held still at exec until their probes are in (see
/// [`newcomers`]), once a watchdog makes sure none is left stopped.
fn hold_newcomers(tracer: &mut Tracer) -> Option<Watchdog> {
    if !tracer.probes.follows_tasks() {
        return None;
    }
    let spawned = tracer
        .probes
        .stopped_map_id()
        .ok_or_else(|| io::Error::other("no map id"))
        .and_then(resume_watchdog::spawn);
    let held = spawned.and_then(|w| {
        tracer.probes.stop_at_exec().map_err(io::Error::other)?;
        Ok(w)
    });
    match held {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("leaktrace: warning: newcomers are not held at exec ({e}): a process of a new image is traced once its loader is done, not from its first allocation");
            None
        }
    }
}

/// The plans for those of `pids` that can be traced (the others said).
fn plans_of(cli: &Cli, pids: &[u32]) -> Vec<Plan> {
    pids.iter()
        .filter_map(|&pid| match Plan::of_process(cli, pid) {
            Ok(plan) => Some(plan),
            Err(e) => {
                eprintln!("leaktrace: pid {pid}: not traced: {e:#}");
                None
            }
        })
        .collect()
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

/// What the run follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watch {
    /// One container (its restarts too).
    One,
    /// Every container with these labels, now and later.
    All { labels: Vec<(String, String)> },
}

/// A container the run follows.
struct Watched {
    /// Its name (the short id when no engine named it).
    name: String,
    labels: Option<ContainerLabels>,
    /// Processes that joined since the last report, and that left.
    joined: u64,
    left: u64,
    restarts: u64,
    /// Its first process, as the engine last named it: another one at a
    /// start is a restart (the engine's die and start events may come in
    /// either order).
    init_pid: Option<u32>,
    /// It died (the engine said so): its processes' exits end the run
    /// unless it starts again.
    died: bool,
}

impl Watched {
    fn new(id: &str, record: Option<&ContainerRecord>) -> Watched {
        Watched {
            name: record.map_or_else(|| id[..12.min(id.len())].to_string(), |r| r.name.clone()),
            labels: record.map(ContainerRecord::labels_for_reports),
            joined: 0,
            left: 0,
            restarts: 0,
            init_pid: record.and_then(|r| r.pid),
            died: false,
        }
    }
}

struct Supervisor {
    cli: Cli,
    watch: Watch,
    docker: Option<Docker>,
    /// By full id.
    containers: BTreeMap<String, Watched>,
    outputs: Outputs,
    /// Each traced process, with its container's id.
    targets: Vec<(Target, String)>,
    reporter: Option<Reporter>,
    /// Processes that exec'd in a container (or in it, a new image)
    /// before their loader had mapped the C library: tried again at every
    /// tick until then. The kernel records their allocations meanwhile.
    waiting: Vec<Waiting>,
    /// Waiting processes held at their loader's breakpoint.
    loaders: std::collections::HashMap<u32, LoaderWatch>,
    /// Continues what the kernel stopped for us should leaktrace die.
    _watchdog: Option<Watchdog>,
    /// `Watch::One`: when its last process left after the engine said it
    /// died (a restart may follow within [`RESTART_GRACE`]).
    ended_at: Option<Instant>,
    /// The run is over: the container ended.
    ended: bool,
}

impl Supervisor {
    /// Traces the processes of container `id` in `plans` (its first, or
    /// after a restart); follows its PID namespace when it is the one
    /// container watched.
    fn start_container(
        &mut self,
        tracer: &mut Tracer,
        id: &str,
        plans: Vec<Plan>,
    ) -> anyhow::Result<()> {
        if self.watch == Watch::One {
            if let Some(plan) = plans.first() {
                let (dev, ino) = pid_namespace(plan.pid)?;
                tracer.probes.follow_pid_namespace(dev, ino)?;
            }
        }
        let inside: HashSet<u32> = container::processes(id).into_iter().collect();
        for plan in plans {
            if self.targets.iter().any(|(t, _)| t.pid == plan.pid) {
                continue;
            }
            let pid = plan.pid;
            let scope = scope_for(&plan, &inside);
            match self.add(tracer, plan, scope, None, id) {
                Ok(()) => {}
                Err(e) if self.watch == Watch::One && self.targets.is_empty() => return Err(e),
                Err(e) => eprintln!("leaktrace: pid {pid}: not traced: {e:#}"),
            }
        }
        Ok(())
    }

    /// Attaches to (or, for a forked child, only starts reading) the
    /// process `plan` names, of container `id`; `fork_of`: the traced
    /// parent of a child the kernel already traces, whose mappings it has.
    fn add(
        &mut self,
        tracer: &mut Tracer,
        plan: Plan,
        scope: Scope,
        fork_of: Option<u32>,
        id: &str,
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
        let mut target = Target::start_reading(&self.cli, tracer, plan, outputs, symbols_of)?;
        if let Some(w) = self.containers.get_mut(id) {
            if let Some(labels) = &w.labels {
                target.set_container_labels(labels.clone());
            }
            w.joined += 1;
        }
        self.targets.push((target, id.to_string()));
        self.ended_at = None;
        Ok(())
    }

    async fn supervise(
        mut self,
        mut tracer: Tracer,
        mut news: Option<UnboundedReceiver<News>>,
        mut sigusr2: Signal,
    ) -> anyhow::Result<i32> {
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
        while !stopped && !self.ended {
            tokio::select! {
                _ = tick.tick() => {
                    tracer.collector.tick(Instant::now()).context("reading the eBPF maps")?;
                    for (t, _) in &mut self.targets {
                        t.tick(&mut tracer)?;
                    }
                    self.retry_waiting(&mut tracer);
                    self.reap(&mut tracer).await?;
                    self.check_ended();
                }
                ready = events.readable() => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    self.take_events(&mut tracer);
                }
                Some(item) = next_news(&mut news) => {
                    match item {
                        News::Event(e) => self.engine_event(&mut tracer, e.action, &e.id).await?,
                        News::Lost(why) => {
                            eprintln!("leaktrace: warning: the engine's events are no longer heard ({why}): restarts and new containers go unseen");
                            news = None;
                        }
                    }
                }
                _ = report_timer.tick() => {
                    self.take_events(&mut tracer);
                    self.reap(&mut tracer).await?;
                    rounds += 1;
                    let last = cli.count.is_some_and(|n| rounds >= n);
                    if !last {
                        for (t, _) in &mut self.targets {
                            t.scan_if_due(&tracer);
                        }
                    }
                    if !self.report_all(&mut tracer, last).await? || last {
                        stopped = true;
                    }
                }
                _ = sigusr2.recv() => {
                    // Scans asked for (--reachability only): every
                    // process, one at a time, and a report now.
                    let mut scanned = false;
                    for (t, _) in &mut self.targets {
                        scanned |= t.scan_now(&tracer);
                    }
                    if scanned && !self.report_all(&mut tracer, false).await? {
                        stopped = true;
                    }
                }
                _ = sigint.recv() => stopped = true,
                _ = sigterm.recv() => stopped = true,
            }
        }
        if self.ended {
            let names: Vec<&str> = self.containers.values().map(|w| w.name.as_str()).collect();
            eprintln!("leaktrace: container {} ended", names.join(", "));
        } else if cli.count.is_none_or(|n| rounds < n) {
            self.take_events(&mut tracer);
            self.reap(&mut tracer).await?;
            self.report_all(&mut tracer, true).await?;
        }
        drop(self);
        drop(tracer);
        eprintln!("leaktrace: all probes removed");
        Ok(0)
    }

    /// The engine's news of a container.
    async fn engine_event(
        &mut self,
        tracer: &mut Tracer,
        action: EventAction,
        id: &str,
    ) -> anyhow::Result<()> {
        match action {
            EventAction::Start => self.container_started(tracer, id),
            EventAction::Die => {
                // A die that comes after the restart's start is old news.
                let running = self
                    .docker
                    .as_ref()
                    .and_then(|d| d.inspect(id).ok().flatten())
                    .is_some_and(|r| r.running);
                if let Some(w) = self.containers.get_mut(id) {
                    w.died = !running;
                }
                // Its processes' exits come through their pidfds.
                self.reap(tracer).await?;
                self.check_ended();
                Ok(())
            }
            EventAction::Destroy => {
                self.reap(tracer).await?;
                match self.watch {
                    Watch::One if self.containers.contains_key(id) => self.ended = true,
                    _ => {
                        if let Some(w) = self.containers.remove(id) {
                            if let Some(live) = &self.outputs.live {
                                live.forget_container(&w.name);
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// A container started: the one watched, again (a restart), or one
    /// more for the node agent if its labels match.
    fn container_started(&mut self, tracer: &mut Tracer, id: &str) -> anyhow::Result<()> {
        let Some(docker) = self.docker.clone() else {
            return Ok(());
        };
        let record = match docker.inspect(id) {
            Ok(Some(r)) if r.running => r,
            Ok(_) => return Ok(()),
            Err(e) => {
                eprintln!(
                    "leaktrace: warning: container {}: {e}",
                    &id[..12.min(id.len())]
                );
                return Ok(());
            }
        };
        let known = self.containers.contains_key(id);
        if own_container().as_deref() == Some(id) {
            return Ok(());
        }
        match (&self.watch, known) {
            (Watch::One, false) => return Ok(()),
            (Watch::All { labels }, false) if !record.has_labels(labels) => return Ok(()),
            _ => {}
        }
        let pids = container::processes(id);
        match self.containers.get_mut(id) {
            Some(w) => {
                // (Its new first process may be traced already: a freed
                // PID namespace's inode number can come back at once for
                // the new one, which the exec tracepoint then follows.)
                if record.pid.is_some() && record.pid != w.init_pid {
                    w.init_pid = record.pid;
                    w.restarts += 1;
                    w.died = false;
                    eprintln!(
                        "leaktrace: container {} restarted: tracing its new processes",
                        w.name
                    );
                }
            }
            None => {
                eprintln!(
                    "leaktrace: container {} ({}) started: tracing it",
                    record.name, record.image
                );
                self.containers
                    .insert(id.to_string(), Watched::new(id, Some(&record)));
            }
        }
        // Already traced: this start was replayed, or its exec seen.
        let untraced: Vec<u32> = pids
            .into_iter()
            .filter(|p| !self.targets.iter().any(|(t, _)| t.pid == *p))
            .collect();
        // The kernel follows the new PID namespace from now on (a restart
        // makes one), so that what the new processes exec is traced.
        if self.watch == Watch::One {
            if let Some(Ok((dev, ino))) = record.pid.map(pid_namespace) {
                tracer.probes.follow_pid_namespace(dev, ino)?;
            }
        }
        // Its processes may not be done starting (runc's init before its
        // exec, a loader still mapping): read again each tick, as a
        // newcomer the kernel told of.
        let until = Instant::now() + LOADER_GRACE;
        for pid in untraced {
            self.waiting.retain(|w| w.pid != pid);
            self.waiting.push(Waiting {
                pid,
                execed: false,
                until,
            });
        }
        self.retry_waiting(tracer);
        Ok(())
    }

    /// `Watch::One`: the container died and every process of it has left;
    /// ended once no restart came within the grace.
    fn check_ended(&mut self) {
        if self.watch != Watch::One || !self.targets.is_empty() {
            return;
        }
        let died = self.containers.values().any(|w| w.died);
        if !died {
            return;
        }
        let at = *self.ended_at.get_or_insert_with(Instant::now);
        if at.elapsed() >= RESTART_GRACE {
            self.ended = true;
        }
    }

    /// Processes that exited: a final report each, then let go.
    async fn reap(&mut self, tracer: &mut Tracer) -> anyhow::Result<()> {
        let gone: Vec<usize> = self
            .targets
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (t, _))| t.exit.check_now().then_some(i))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let snap = tracer
            .collector
            .read(Instant::now())
            .context("reading the eBPF maps")?;
        for i in gone.into_iter().rev() {
            let (mut t, id) = self.targets.remove(i);
            if let Some(w) = self.containers.get_mut(&id) {
                w.left += 1;
            }
            let mut report = t.report(&snap, ReportKind::TargetExited).await?;
            report.container_processes = Some(self.counts(&id));
            self.write(&report)?;
            tracer.release(t.pid);
        }
        Ok(())
    }

    /// A report of every traced process; false when stdout's reader has
    /// gone away.
    async fn report_all(&mut self, tracer: &mut Tracer, last: bool) -> anyhow::Result<bool> {
        for (t, _) in &mut self.targets {
            t.refresh(tracer)?;
        }
        tracer.collector.prune_dead_threads();
        let snap = tracer
            .collector
            .read(Instant::now())
            .context("reading the eBPF maps")?;
        let mut open = true;
        for i in 0..self.targets.len() {
            let counts = self.counts(&self.targets[i].1);
            let mut report = self.targets[i]
                .0
                .report(&snap, ReportKind::regular_or_final(last))
                .await?;
            report.container_processes = Some(counts);
            open &= self.write(&report)?;
        }
        self.publish_merged();
        for (id, w) in &mut self.containers {
            let traced = self.targets.iter().filter(|(_, c)| c == id).count();
            eprintln!(
                "leaktrace: container {}: {traced} processes traced; {} joined and {} left since the last report",
                w.name, w.joined, w.left
            );
            w.joined = 0;
            w.left = 0;
        }
        Ok(open)
    }

    /// The endpoint's merged views: every process, and each container's.
    fn publish_merged(&self) {
        let Some(live) = &self.outputs.live else {
            return;
        };
        let parts: Vec<_> = self
            .targets
            .iter()
            .filter_map(|(t, _)| t.last_export())
            .collect();
        if !parts.is_empty() {
            if let Err(e) = crate::export::publish_merged(live, &parts) {
                eprintln!("leaktrace: warning: the merged profile: {e}");
            }
        }
        for (id, w) in &self.containers {
            let parts: Vec<_> = self
                .targets
                .iter()
                .filter(|(_, c)| c == id)
                .filter_map(|(t, _)| t.last_export())
                .collect();
            if parts.is_empty() {
                continue;
            }
            if let Err(e) = crate::export::publish_container(live, &w.name, &parts) {
                eprintln!("leaktrace: warning: container {}'s profile: {e}", w.name);
            }
        }
    }

    /// Container `id`'s processes, for its reports.
    fn counts(&self, id: &str) -> ProcessCounts {
        let w = self.containers.get(id);
        ProcessCounts {
            traced: self.targets.iter().filter(|(_, c)| c == id).count() as u64,
            joined: w.map_or(0, |w| w.joined),
            left: w.map_or(0, |w| w.left),
            restarts: w.map_or(0, |w| w.restarts),
        }
    }

    fn write(&self, report: &Report) -> anyhow::Result<bool> {
        match &self.reporter {
            Some(r) => write_report(r, &mut io::stdout().lock(), report),
            None => Ok(true),
        }
    }
}

/// The next piece of engine news; never, without an engine.
async fn next_news(news: &mut Option<UnboundedReceiver<News>>) -> Option<News> {
    match news {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The container leaktrace itself runs in (the node agent's), if any.
fn own_container() -> Option<String> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| container::inspect(std::process::id()).id)
        .clone()
}
