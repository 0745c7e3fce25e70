//! One traced process's side of a run: its symbolizer, Go tracker, report
//! builder, exports and exit watch. The programs and tables it reads are
//! the run's ([`Tracer`]).

use crate::report::ReportKind;
use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    exit_watch::ExitWatcher,
    tracer::{describe_unwind, Plan, Tracer},
    Outputs,
};
use crate::{
    cli::Cli,
    collect::{stacks::Stacks, tasks::TaskCollector, Snapshot},
    export::{self, Exporter},
    golang::{GoTarget, GoTracker},
    probes::ExitHold,
    process::{allocator::Allocator, container, exit_point::exit_point, loader, procfs::alive},
    reach,
    report::{
        builder::{ReportBuilder, Subject},
        human_duration, Report,
    },
    symbolize::Symbolizer,
};

/// Ticks during which the symbolizer re-reads the target's mappings every
/// time, so that a command started by us (or a process that just exec'd)
/// is seen in its new image even if it exits before the first report.
const EARLY_MAP_REFRESH_TICKS: u32 = 20;

pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub launched: bool,
    /// What a child it forks starts with (for a child gone before
    /// leaktrace could read it: the same mappings).
    pub candidates: Vec<crate::process::allocator::Candidate>,
    pub allocator: crate::process::allocator::Allocator,
    builder: ReportBuilder,
    symbolizer: Symbolizer,
    exporter: Exporter,
    pub exit: ExitWatcher,
    /// Ticks left with early refreshes.
    early_ticks: u32,
    /// `--reachability`: when to scan.
    reach: Option<ReachSchedule>,
    /// `--reachability` of a command leaktrace started: the probe that
    /// stops it as it calls `_exit`, for a last scan (until that scan).
    exit_hold: Option<ExitHold>,
    /// `--kernel`: the kernel-memory tables, and what each report asks.
    kernel: Option<(
        std::rc::Rc<std::cell::RefCell<crate::kernel::KernelMemory>>,
        crate::kernel::Asked,
    )>,
}

/// `--reachability`'s scans: every `every`th report, each within `deadline`.
struct ReachSchedule {
    every: u64,
    deadline: Duration,
    reports: u64,
}

impl Target {
    /// Starts reading process `plan.pid`, attached already: releases a
    /// command held before its exec (and builds its tables once it ran),
    /// and says on stderr that tracing began.
    pub fn start(
        cli: &Cli,
        tracer: &mut Tracer,
        plan: Plan,
        outputs: Outputs,
    ) -> anyhow::Result<Target> {
        let pid = plan.pid;
        Target::start_reading(cli, tracer, plan, outputs, pid)
    }

    /// [`Target::start`], symbolizing with the mappings of process
    /// `symbols_of` (a forked child gone before it could be read: its
    /// parent's).
    pub fn start_reading(
        cli: &Cli,
        tracer: &mut Tracer,
        plan: Plan,
        outputs: Outputs,
        symbols_of: u32,
    ) -> anyhow::Result<Target> {
        let Plan {
            pid,
            comm,
            paused,
            allocator,
            go,
            memprofile,
            candidates,
        } = plan;
        let launched = paused.is_some();
        let tasks = TaskCollector::new(tracer.shared.tasks.clone(), pid, cli.older_than);
        let exit = ExitWatcher::new(pid, launched).context("cannot watch the target for exit")?;
        let symbolizer =
            Symbolizer::start_reading(pid, symbols_of, go.as_ref().map(GoTarget::symbols))
                .context("cannot start the symbolization thread")?;
        let go_version = go.as_ref().map(|g| g.binary.version.clone());
        let go = go.map(|target| {
            GoTracker::new(
                pid,
                target,
                tracer.shared.goroutines.clone(),
                cli.older_than,
                cli.max_goroutines,
                launched,
                cli.top,
            )
        });
        let go = match (go, memprofile) {
            (Some(t), Some(switch)) => Some(t.with_memprofile(switch)),
            (go, _) => go,
        };
        let go = match go {
            Some(t) if cli.go_leak_check => Some(t.with_leak_check()),
            go => go,
        };
        let exit_hold = match &paused {
            Some(_) if cli.reachability => hold_at_exit(tracer, pid, &allocator),
            _ => None,
        };
        if let Some(p) = paused {
            // Tables for the command's mappings before its first
            // allocation: its loader's breakpoint holds it once its
            // libraries are mapped, before their initialisers run, while
            // they are built (else they follow its exec, racing with it).
            let mut watch = match &tracer.unwind {
                Some(_) => loader::breakpoint_of_program(&p.program)
                    .and_then(|at| tracer.probes.watch_loader(pid, &at.path, at.offset).ok()),
                None => None,
            };
            p.release();
            if tracer.unwind.is_some() {
                let objects: Vec<&str> = allocator
                    .objects
                    .iter()
                    .filter_map(|o| o.path.file_name().and_then(|n| n.to_str()))
                    .collect();
                let held = watch.is_some() && hold_until_loaded(tracer, pid, &objects);
                if !held {
                    drop(watch.take());
                    // A stop that came after the last look goes on too.
                    if tracer.probes.held(pid) {
                        tracer.probes.wait_stopped(pid);
                        tracer.probes.resume_stopped(pid);
                    }
                    wait_for_exec(pid, &objects);
                }
                let built = tracer
                    .unwind
                    .as_mut()
                    .map(|t| t.refresh(pid).map(|()| t.summary(pid)));
                drop(watch);
                if held {
                    // Its libraries, for symbols even if it exits at once.
                    symbolizer.refresh_now();
                    tracer.probes.resume_stopped(pid);
                }
                if let Some(summary) = built.transpose().context("building the unwind tables")? {
                    eprintln!("leaktrace: {}", describe_unwind(&summary));
                }
            }
        }
        let heap_via = match (&go_version, allocator.objects.is_empty()) {
            (Some(v), true) => format!("Go {v} (no C allocator)"),
            (Some(v), false) => format!("Go {v} + C heap via {}", allocator.display()),
            (None, _) => format!("heap via {}", allocator.display()),
        };
        eprintln!(
            "leaktrace: tracing pid {pid} ({comm}): {heap_via} ({} probes); reporting every {} on what is older than {}; Ctrl-C to stop",
            tracer.probes.probe_count(),
            human_duration(cli.interval),
            human_duration(cli.older_than),
        );
        let subject = Subject {
            pid,
            comm: comm.clone(),
            container: container::inspect(pid),
            allocator: allocator.clone(),
        };
        let mut builder = ReportBuilder::new(
            subject,
            cli.top,
            cli.older_than,
            Instant::now(),
            Stacks::new(tracer.shared.stacks.clone()),
            tasks,
            go,
        );
        if outputs.wants_profiles() {
            builder = builder.with_profiles();
        }
        let kernel = tracer.kernel.clone().map(|memory| {
            let asked = crate::kernel::Asked {
                older_than: cli.older_than,
                top: cli.top,
                suppressions: outputs.suppressions.clone(),
            };
            (memory, asked)
        });
        if let Some(rules) = outputs.suppressions {
            builder = builder.with_suppressions(rules);
        }
        let live = match (outputs.live, outputs.listener) {
            (Some(live), _) => Some(live),
            (None, Some(l)) => {
                super::announce(&l, false);
                Some(export::server::serve(l))
            }
            (None, None) => None,
        };
        let mut exporter = Exporter::new(outputs.paths, pid, live);
        if outputs.one_of_many {
            exporter = exporter.one_of_many();
        }
        Ok(Target {
            pid,
            comm,
            launched,
            candidates,
            allocator,
            builder,
            symbolizer,
            exporter,
            exit,
            early_ticks: EARLY_MAP_REFRESH_TICKS,
            reach: cli.reachability.then_some(ReachSchedule {
                every: cli.reachability_every,
                deadline: cli.scan_deadline,
                reports: 0,
            }),
            exit_hold,
            kernel,
        })
    }

    /// `--reachability` of a command leaktrace started: if it is stopped
    /// at its `_exit`, scans it there (the final report tells of it) and
    /// lets it go on to exit. True when it was.
    pub fn scan_if_exiting(&mut self, tracer: &mut Tracer) -> bool {
        if self.exit_hold.is_none() || !tracer.probes.held(self.pid) {
            return false;
        }
        // Once: a thread calling `_exit` after it goes on.
        self.exit_hold = None;
        if tracer.probes.wait_stopped(self.pid) {
            self.scan_now(tracer);
            self.builder.mark_scan_at_exit();
            // What it mapped since (dlopen), before it is gone.
            self.symbolizer.refresh_now();
        }
        tracer.probes.resume_stopped(self.pid);
        true
    }

    /// `--reachability`: scans the target now if this report is one that
    /// scans; the next report tells of it. A scan that cannot stop the
    /// target (it exits, a debugger took it meanwhile) is told as
    /// incomplete.
    pub fn scan_if_due(&mut self, tracer: &Tracer) {
        let Some(r) = &mut self.reach else {
            return;
        };
        r.reports += 1;
        if (r.reports - 1) % r.every == 0 {
            self.scan_now(tracer);
        }
    }

    /// `--reachability`: scans the target now (SIGUSR2 asks for it); the
    /// next report tells of it. False without --reachability.
    pub fn scan_now(&mut self, tracer: &Tracer) -> bool {
        let Some(r) = &self.reach else {
            return false;
        };
        let pid = self.pid;
        let collector = &tracer.collector;
        // A command leaktrace started was probed before its first
        // allocation: every block is known.
        let known = match self.launched {
            true => reach::Blocks::All,
            false => reach::Blocks::SinceAttach,
        };
        let options = reach::ScanOptions {
            deadline: r.deadline,
            known,
            glibc_heap: self.allocator.is_glibc(),
        };
        let scan = reach::scan(pid, options, || collector.live_blocks(pid, Instant::now()))
            .unwrap_or_else(|e| reach::Scan::incomplete(e.to_string()));
        self.builder.set_scan(scan);
        true
    }

    /// Every tick: early on, re-reads the process's mappings (a command
    /// just started, a process just exec'd).
    pub fn tick(&mut self, tracer: &mut Tracer) -> anyhow::Result<()> {
        if self.early_ticks > 0 {
            self.early_ticks -= 1;
            self.refresh(tracer)?;
        }
        Ok(())
    }

    /// The process replaced its image: its mappings are read anew for a
    /// while, its tables rebuilt now.
    pub fn execed(&mut self, tracer: &mut Tracer) -> anyhow::Result<()> {
        self.early_ticks = EARLY_MAP_REFRESH_TICKS;
        self.refresh(tracer)
    }

    /// Re-reads the mappings (objects mapped since, by dlopen).
    pub fn refresh(&mut self, tracer: &mut Tracer) -> anyhow::Result<()> {
        self.symbolizer.refresh();
        if let Some(tables) = tracer.unwind.as_mut() {
            tables
                .refresh(self.pid)
                .context("updating the unwind tables")?;
        }
        Ok(())
    }

    /// What is left once reporting is over: the exit watch (a command
    /// leaktrace started is still waited for).
    pub fn into_exit_watch(self) -> ExitWatcher {
        self.exit
    }

    /// The exports of its last report, for a container's merged view.
    pub fn last_export(
        &self,
    ) -> Option<(&crate::report::profiles::Profiles, &export::ModuleMap, &str)> {
        self.exporter.last()
    }

    /// The engine's names for its container, on its reports from now on.
    pub fn set_container_labels(&mut self, labels: crate::process::engine::ContainerLabels) {
        self.builder.set_container_labels(labels);
    }

    /// Reports made so far.
    pub fn seq(&self) -> u64 {
        self.builder.seq()
    }

    /// The report on this process's part of `snap`.
    pub async fn report(&mut self, snap: &Snapshot, kind: ReportKind) -> anyhow::Result<Report> {
        let mut report = self
            .builder
            .build(&self.symbolizer, snap.of(self.pid), kind)
            .await?;
        if let Some((kernel, asked)) = &self.kernel {
            let pending = kernel
                .borrow_mut()
                .begin(Some(self.pid), asked.older_than)
                .context("reading the kernel-memory table")?;
            let user = pending.user_frames(Some(&self.symbolizer)).await;
            let (section, all) = kernel
                .borrow_mut()
                .finish(pending, user, asked, &report.dropped);
            if let Some(p) = report.profiles.as_mut() {
                p.heap.extend(crate::report::profiles::kernel_samples(&all));
            }
            report.kernel = Some(section);
        }
        if let Err(e) = self.exporter.write(&report) {
            eprintln!("leaktrace: warning: report {}: {e}", report.seq);
        }
        Ok(report)
    }
}

/// The probe that stops command `pid` as it calls `_exit` (its C
/// library's, found among the allocator's `objects`); None, said on
/// stderr, when it cannot be placed (the scan at exit is not made).
fn hold_at_exit(tracer: &mut Tracer, pid: u32, allocator: &Allocator) -> Option<ExitHold> {
    let Some(at) = exit_point(&allocator.objects) else {
        eprintln!(
            "leaktrace: warning: no _exit in {}: no reachability scan at exit",
            allocator.display()
        );
        return None;
    };
    match tracer.probes.hold_at_exit(pid, &at.path, at.offset) {
        Ok(hold) => Some(hold),
        Err(e) => {
            eprintln!("leaktrace: warning: no reachability scan at exit: {e}");
            None
        }
    }
}

/// Waits (briefly) until a released command has replaced leaktrace's
/// image with its own and its loader has mapped `objects` (the allocator's:
/// nothing is probed before they are there).
/// Waits until the launched command `pid` stops at its loader's
/// breakpoint with `objects` (file names) mapped, continuing it past the
/// stops before (the loader's first call, as it starts mapping). True
/// when it is stopped there now; false if it did not get there in time
/// (it runs then).
fn hold_until_loaded(tracer: &mut Tracer, pid: u32, objects: &[&str]) -> bool {
    let deadline = Instant::now() + LOADER_GRACE;
    while Instant::now() < deadline {
        // The kernel records each stop of ours before it stops the
        // process; continuing it removes the record first.
        if !tracer.probes.held(pid) {
            if !alive(pid) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        if !tracer.probes.wait_stopped(pid) {
            return false; // gone
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if objects.iter().all(|o| maps.contains(o)) {
            return true;
        }
        tracer.probes.resume_stopped(pid);
    }
    false
}

/// How long a launched command may take from its exec to its loader's
/// breakpoint.
const LOADER_GRACE: Duration = Duration::from_secs(5);

fn wait_for_exec(pid: u32, objects: &[&str]) {
    let ours: Option<PathBuf> = std::fs::read_link("/proc/self/exe").ok();
    for _ in 0..2000 {
        let exec_done = match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(exe) => Some(&exe) != ours.as_ref(),
            Err(_) => return, // gone
        };
        if exec_done {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            if objects.iter().all(|o| maps.contains(o)) {
                return;
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Writes one report; `Ok(false)` when stdout's reader has gone away.
pub(super) fn write_report(
    reporter: &crate::report::Reporter,
    out: &mut impl io::Write,
    report: &Report,
) -> anyhow::Result<bool> {
    match reporter.write(out, report) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("writing the report")),
    }
}
