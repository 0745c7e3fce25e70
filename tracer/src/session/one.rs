//! Tracing one process (`--pid`, or a command leaktrace starts): attach,
//! report every interval until it exits, a signal arrives or `--count`
//! reports are out, then remove every probe.

use std::{io, time::Instant};

use anyhow::Context;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::{interval, interval_at, MissedTickBehavior},
};

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
    report::{bytes, Report, ReportKind},
};

/// Loads the programs and attaches to the process `plan` names.
pub fn attach(cli: &Cli, plan: &Plan) -> anyhow::Result<Tracer> {
    let mut tracer = Tracer::load(cli, plan.go.is_some())?;
    tracer.attach(cli, plan, Scope::Process(plan.pid), 0)?;
    Ok(tracer)
}

/// Reports on an attached process until it exits, a signal arrives or
/// `--count` reports are out; then removes every probe.
pub async fn trace(
    cli: Cli,
    mut tracer: Tracer,
    plan: Plan,
    outputs: Outputs,
) -> anyhow::Result<i32> {
    let pid = plan.pid;
    // Before the banner says tracing began: from then on SIGUSR2 asks for
    // a scan (its default action would end leaktrace).
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    // A command leaktrace starts is stopped at its `_exit` for a last
    // scan, which SIGCHLD tells of; heard from before it is released.
    let mut sigchld = match cli.reachability && plan.paused.is_some() {
        true => Some(signal(SignalKind::child())?),
        false => None,
    };
    let mut target = Target::start(&cli, &mut tracer, plan, outputs)?;
    let reporter = reporter_of(&cli);

    let tick_period = collect::tick_period(cli.older_than, cli.interval);
    let mut tick = interval(tick_period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report_timer = interval_at((Instant::now() + cli.interval).into(), cli.interval);
    report_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let mut exit_status: Option<i32> = None;
    // A signal that came while the reading was set up ends the run now.
    let mut stop_signal: Option<i32> = stop::requested();
    let final_done = stop_signal.is_none()
        && loop {
            tokio::select! {
                _ = tick.tick() => {
                    tracer.collector.tick(Instant::now()).context("reading the eBPF maps")?;
                    target.tick(&mut tracer)?;
                    // (A stop at exit is heard by SIGCHLD; this is the
                    // belt to its braces.)
                    target.scan_if_exiting(&mut tracer);
                }
                _ = child_signal(&mut sigchld) => {
                    target.scan_if_exiting(&mut tracer);
                }
                _ = report_timer.tick() => {
                    // Objects mapped since (dlopen) get their tables.
                    target.refresh(&mut tracer)?;
                    tracer.collector.prune_dead_threads();
                    let snap = tracer.collector.read(Instant::now()).context("reading the eBPF maps")?;
                    let last = cli.count.is_some_and(|n| target.seq() + 1 >= n);
                    target.scan_if_due(&tracer);
                    let report = target.report(&snap, ReportKind::regular_or_final(last)).await?;
                    if !write_report(&reporter, &mut io::stdout().lock(), &report)? {
                        break true; // reader went away (e.g. `| head`): stop quietly
                    }
                    if last {
                        break true;
                    }
                }
                _ = sigusr2.recv() => {
                    // A scan asked for: it and a report now, whatever the
                    // schedule (--reachability only).
                    if target.scan_now(&tracer) {
                        let snap = tracer.collector.read(Instant::now()).context("reading the eBPF maps")?;
                        let report = target.report(&snap, ReportKind::regular_or_final(false)).await?;
                        if !write_report(&reporter, &mut io::stdout().lock(), &report)? {
                            break true;
                        }
                    }
                }
                _ = sigint.recv() => { stop_signal = Some(libc::SIGINT); break false; }
                _ = sigterm.recv() => { stop_signal = Some(libc::SIGTERM); break false; }
                status = target.exit.exited() => { exit_status = status; break false; }
            }
        };
    if !final_done {
        let snap = tracer
            .collector
            .read(Instant::now())
            .context("reading the eBPF maps")?;
        let exited = target.exit.has_exited();
        let report = target.report(&snap, ReportKind::last(exited)).await?;
        write_report(&reporter, &mut io::stdout().lock(), &report)?;
        say_if_oom_killed(pid, &report);
    }
    let launched = target.launched;
    let exit = target.into_exit_watch();
    drop(tracer);
    eprintln!("leaktrace: all probes removed");

    if !launched {
        return Ok(0);
    }
    // Launch mode: leaktrace ends with the command, and with its status.
    Ok(end_with_command(pid, exit_status, stop_signal, exit, sigint, sigterm).await)
}

/// The next SIGCHLD, if heard; never otherwise.
async fn child_signal(sigchld: &mut Option<Signal>) {
    match sigchld {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Says so when the OOM killer ended the target.
fn say_if_oom_killed(pid: u32, report: &Report) {
    if !(report.oom_killed && report.target_exited) {
        return;
    }
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

/// Launch mode: the exit status of the command leaktrace started (waited
/// for, signals passed on to it).
async fn end_with_command(
    pid: u32,
    exit_status: Option<i32>,
    stop_signal: Option<i32>,
    mut exit: super::exit_watch::ExitWatcher,
    mut sigint: Signal,
    mut sigterm: Signal,
) -> i32 {
    if let Some(status) = exit_status {
        return status;
    }
    if stop_signal == Some(libc::SIGTERM) {
        signal_child(pid, libc::SIGTERM);
    }
    loop {
        tokio::select! {
            status = exit.exited() => return status.unwrap_or(0),
            _ = sigint.recv() => { signal_child(pid, libc::SIGINT); }
            _ = sigterm.recv() => { signal_child(pid, libc::SIGTERM); }
        }
    }
}

fn signal_child(pid: u32, sig: i32) {
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(pid as i32, sig) };
}
