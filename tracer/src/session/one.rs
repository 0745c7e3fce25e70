//! Tracing one process: attach, report every interval until it exits, a
//! signal arrives or `--count` reports are out, then remove every probe.

use std::{
    io::{self, IsTerminal},
    time::Instant,
};

use anyhow::Context;
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{interval, interval_at, MissedTickBehavior},
};

use super::{exit_watch::ExitWatcher, stop, Outputs};
use crate::{
    cli::{Cli, ColorChoice, ProbeMode, UnwindMode},
    collect::{self, stacks::Stacks, tasks::TaskCollector, Collector},
    export::{self, Exporter},
    golang::{self, GoTarget, GoTracker},
    probes::{self, MapSizes, Probes},
    process::{
        self,
        allocator::{find_allocator, Allocator, AllocatorError, Candidate},
        container, launch,
    },
    report::{
        builder::{ReportBuilder, Subject},
        bytes, human_duration, Report, Reporter, Style,
    },
    symbolize::Symbolizer,
    unwind::{UnwindSummary, UnwindTables},
};

/// Ticks during which the symbolizer re-reads the target's mappings every
/// time, so that a command started by us is seen after its exec even if it
/// exits before the first report.
const EARLY_MAP_REFRESH_TICKS: u32 = 20;

/// A target with every probe attached, ready to be traced.
pub struct Prepared {
    pid: u32,
    comm: String,
    paused: Option<launch::Paused>,
    allocator: Allocator,
    go: Option<GoTarget>,
    probes: Probes,
    maps: probes::Maps,
    unwind: Option<UnwindTables>,
    memprofile: Option<golang::memprofile::Switch>,
}

/// Inspects the running process `pid` and attaches to it.
pub fn prepare(cli: &Cli, pid: u32) -> anyhow::Result<Prepared> {
    let proc_ = process::inspect(pid)?;
    let candidates = process::mapped_objects(pid)?;
    let go = golang::of_process(pid)?;
    attach(cli, pid, proc_.comm, None, &candidates, go)
}

pub(super) fn attach(
    cli: &Cli,
    pid: u32,
    comm: String,
    paused: Option<launch::Paused>,
    candidates: &[Candidate],
    go: Option<GoTarget>,
) -> anyhow::Result<Prepared> {
    let allocator = allocator_of(candidates, go.is_some())?;
    let memprofile = match (&go, cli.go_memprofile) {
        (Some(go), true) => Some(golang::memprofile::Switch::check(
            go,
            cli.go_memprofile_rate,
        )?),
        (None, true) => anyhow::bail!("--go-memprofile: pid {pid} ({comm}) is not a Go program"),
        (_, false) => None,
    };

    let sizes = MapSizes {
        allocs: cli.max_allocs,
        sites: cli.max_sites,
        stacks: cli.max_stacks,
        threads: cli.max_threads,
        tasks: cli.max_tasks,
        goroutines: cli.max_goroutines,
        unwind_rows: cli.max_unwind_rows,
    };
    let loading = Instant::now();
    stop::test_hold("load");
    let mut probes = Probes::load(sizes, cli.probe_mode, go.is_some())?;
    if cli.verbose {
        let each: Vec<String> = probes
            .load_times()
            .iter()
            .map(|p| {
                let insns = p
                    .verified_insns
                    .map(|n| format!(", {n} insns verified"))
                    .unwrap_or_default();
                format!("{} {:.1} ms{insns}", p.name, p.took.as_secs_f64() * 1e3)
            })
            .collect();
        eprintln!(
            "leaktrace: eBPF programs loaded in {:.1} ms: {}",
            loading.elapsed().as_secs_f64() * 1e3,
            each.join(", ")
        );
    }
    // Tables before probes: the first stacks recorded are walked whole.
    let unwind = unwind_tables(cli, pid, paused.is_some(), candidates, &mut probes)?;
    // A target under seccomp may be killed by return probes on some kernels:
    // find out on a throwaway process first. (A launched command has no
    // filter yet; one it installs later is not checked.)
    if paused.is_none()
        && probes::has_seccomp_filter(pid)
        && !probes.uretprobe_survives_seccomp()?
    {
        return Err(probes::ProbeError::ReturnProbesUnsafe(pid).into());
    }
    // From here on a signal is acted on by this code (what is attached must
    // be removed), between the steps.
    stop::attaching();
    stop::check()?;
    probes.attach(&allocator, pid)?;
    stop::test_hold("attach");
    stop::check()?;
    probes.attach_tasks(&allocator, pid)?;
    stop::check()?;
    if let Some(go) = &go {
        probes.attach_go(go, pid)?;
        stop::check()?;
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
        unwind,
        memprofile,
    })
}

/// The unwind tables for `pid`'s objects, unless stacks are walked by frame
/// pointers only (or not recorded at all, in the empty probe mode).
fn unwind_tables(
    cli: &Cli,
    pid: u32,
    launched: bool,
    candidates: &[Candidate],
    probes: &mut Probes,
) -> anyhow::Result<Option<UnwindTables>> {
    if cli.unwind == UnwindMode::Fp || cli.probe_mode != ProbeMode::Full {
        return Ok(None);
    }
    let maps = probes.take_unwind_maps()?;
    let mut tables = UnwindTables::new(pid, cli.unwind, maps, cli.max_unwind_rows)
        .context("cannot set up the unwind tables")?;
    // A command held before its exec still maps leaktrace's own objects:
    // its tables are built once it runs (until then stacks are walked by
    // frame pointers), never from mappings about to be replaced.
    if launched {
        // Rows of the command and its libraries now, so that its mappings
        // can be published the moment it has them.
        let paths: Vec<&std::path::Path> = candidates.iter().map(|c| c.path.as_path()).collect();
        tables.preload(&paths);
    } else {
        stop::test_hold("unwind");
        tables.refresh().context("cannot build the unwind tables")?;
        eprintln!("leaktrace: {}", describe_unwind(&tables.summary));
    }
    Ok(Some(tables))
}

/// The start banner's line on unwind tables.
fn describe_unwind(s: &UnwindSummary) -> String {
    let mut line = format!(
        "unwind tables: {} objects, {} rows, {} rules ({:.1} KiB in the kernel)",
        s.objects,
        s.rows,
        s.rules,
        s.bytes as f64 / 1024.0
    );
    if !s.frame_pointer_objects.is_empty() {
        line += &format!(
            "; by frame pointers (Go): {}",
            s.frame_pointer_objects.join(", ")
        );
    }
    if !s.without_tables.is_empty() {
        line += &format!(
            "; no unwind information (stacks end there): {}",
            s.without_tables.join(", ")
        );
    }
    if !s.no_room.is_empty() {
        line += &format!(
            "; not loaded, --max-unwind-rows too small: {}",
            s.no_room.join(", ")
        );
    }
    if s.mappings_dropped > 0 {
        line += &format!(
            "; {} executable mappings beyond the table's room",
            s.mappings_dropped
        );
    }
    line
}

/// The allocator to probe among `candidates`: a pure Go program has none,
/// a cgo one has the C library's.
pub(super) fn allocator_of(candidates: &[Candidate], is_go: bool) -> anyhow::Result<Allocator> {
    match find_allocator(candidates) {
        Ok(a) => Ok(a),
        Err(AllocatorError::NotFound) if is_go => Ok(Allocator::none()),
        Err(e) => Err(e.into()),
    }
}

/// Reports on a prepared target until it exits, a signal arrives or
/// `--count` reports are out; then removes every probe.
pub async fn trace(cli: Cli, prepared: Prepared, outputs: Outputs) -> anyhow::Result<i32> {
    let Prepared {
        pid,
        comm,
        paused,
        allocator,
        go,
        probes,
        maps,
        mut unwind,
        memprofile,
    } = prepared;
    let start = Instant::now();
    let launched = paused.is_some();
    let mut collector = Collector::new(maps.heap, cli.older_than, start)
        .context("cannot initialise the eBPF maps")?;
    let tasks = TaskCollector::new(maps.tasks, pid, cli.older_than);
    let mut exit = ExitWatcher::new(pid, launched).context("cannot watch the target for exit")?;
    let symbolizer = Symbolizer::start(pid, go.as_ref().map(GoTarget::symbols))
        .context("cannot start the symbolization thread")?;
    let go_version = go.as_ref().map(|g| g.binary.version.clone());
    let go = go.map(|target| {
        GoTracker::new(
            pid,
            target,
            maps.goroutines,
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
    if let Some(p) = paused {
        p.release();
        if let Some(tables) = unwind.as_mut() {
            // Tables for the command's own mappings as soon as it has
            // exec'd (until then its stacks are walked by frame pointers);
            // objects its loader maps next come in with the early ticks.
            let objects: Vec<&str> = allocator
                .objects
                .iter()
                .filter_map(|o| o.path.file_name().and_then(|n| n.to_str()))
                .collect();
            wait_for_exec(pid, &objects);
            tables.refresh().context("building the unwind tables")?;
            eprintln!("leaktrace: {}", describe_unwind(&tables.summary));
        }
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
        human_duration(cli.interval),
        human_duration(cli.older_than),
    );

    let tick_period = collect::tick_period(cli.older_than, cli.interval);
    let mut tick = interval(tick_period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report_timer = interval_at((start + cli.interval).into(), cli.interval);
    report_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let subject = Subject {
        pid,
        comm,
        container: container::inspect(pid),
        allocator,
    };
    let wants_profiles = outputs.wants_profiles();
    let mut builder = ReportBuilder::new(
        subject,
        cli.top,
        cli.older_than,
        start,
        Stacks::new(maps.stacks),
        tasks,
        go,
    );
    if wants_profiles {
        builder = builder.with_profiles();
    }
    if let Some(rules) = outputs.suppressions {
        builder = builder.with_suppressions(rules);
    }
    let live = outputs.listener.map(|l| {
        if let Ok(addr) = l.local_addr() {
            eprintln!(
                "leaktrace: serving http://{addr}/debug/pprof/heap{} and /metrics",
                if go_version.is_some() { ", /debug/pprof/goroutine" } else { "" }
            );
            if !addr.ip().is_loopback() {
                eprintln!(
                    "leaktrace: warning: --listen-public: the target's heap stacks are served to anyone who can reach {addr}"
                );
            }
        }
        export::server::serve(l)
    });
    let mut exporter = Exporter::new(outputs.paths, pid, live);
    let mut ticks = 0u32;
    let mut exit_status: Option<i32> = None;
    // A signal that came while the reading was set up ends the run now.
    let mut stop_signal: Option<i32> = stop::requested();
    // Locked per report: in container mode several targets share stdout.
    let final_done = stop_signal.is_none()
        && loop {
            tokio::select! {
                _ = tick.tick() => {
                    collector.tick(Instant::now()).context("reading the eBPF maps")?;
                    ticks += 1;
                    if ticks <= EARLY_MAP_REFRESH_TICKS {
                        symbolizer.refresh();
                        if let Some(tables) = unwind.as_mut() {
                            tables.refresh().context("updating the unwind tables")?;
                        }
                    }
                }
                _ = report_timer.tick() => {
                    symbolizer.refresh();
                    if let Some(tables) = unwind.as_mut() {
                        // Objects mapped since (dlopen) get their tables.
                        tables.refresh().context("updating the unwind tables")?;
                    }
                    collector.prune_dead_threads(pid);
                    let snap = collector.read(Instant::now()).context("reading the eBPF maps")?;
                    let last = cli.count.is_some_and(|n| builder.seq() + 1 >= n);
                    let report = builder.build(&symbolizer, snap, last, false).await?;
                    export_report(&mut exporter, &report);
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
        export_report(&mut exporter, &report);
        write_report(&reporter, &mut io::stdout().lock(), &report)?;
        if report.oom_killed && report.target_exited {
            let limit = report
                .memory_cgroup
                .as_ref()
                .and_then(|m| {
                    Some(format!(
                        " (memory cgroup {}, limit {})",
                        m.path,
                        bytes(m.limit?)
                    ))
                })
                .unwrap_or_default();
            eprintln!(
                "leaktrace: pid {pid} was killed by the OOM killer{limit}; \
                 the final report shows what it held when it died"
            );
        }
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

/// Waits (briefly) until a released command has replaced leaktrace's
/// image with its own and its loader has mapped `objects` (the allocator's:
/// nothing is probed before they are there).
fn wait_for_exec(pid: u32, objects: &[&str]) {
    let ours = std::fs::read_link("/proc/self/exe").ok();
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
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

fn signal_child(pid: u32, sig: i32) {
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Writes a report's exports; a failure (disk full) is said and tracing
/// goes on.
fn export_report(exporter: &mut Exporter, report: &Report) {
    if let Err(e) = exporter.write(report) {
        eprintln!("leaktrace: warning: report {}: {e}", report.seq);
    }
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
