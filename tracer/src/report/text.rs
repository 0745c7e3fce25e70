//! Human-readable reports.

use std::{
    io::{self, Write},
    time::Duration,
};
use tracer_common::{Counter, StackEnd};

use super::reachability::{verdict_name, ReachabilityReport, VERDICTS};
use super::{
    aggregate::{Trend, TREND_WINDOW},
    Report, SiteReport, ThreadSiteReport,
};
use crate::{golang::GoReport, reach::Verdict, symbolize::Frame};

/// Whether to emit ANSI colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Color,
}

impl Style {
    pub(super) fn paint(self, code: &str, s: &str) -> String {
        match self {
            Style::Plain => s.to_string(),
            Style::Color => format!("\x1b[{code}m{s}\x1b[0m"),
        }
    }
}

pub fn write(out: &mut impl Write, r: &Report, style: Style) -> io::Result<()> {
    let kind = if r.final_report {
        "final report"
    } else {
        "report"
    };
    let exited = match (r.oom_killed, r.target_exited) {
        (true, true) => ", target killed by the OOM killer",
        (true, false) => ", target being killed by the OOM killer",
        (false, true) => ", target exited",
        (false, false) => "",
    };
    let named = r.container.as_ref().map(|c| match (&c.namespace, &c.pod) {
        (Some(ns), Some(pod)) => format!(
            "pod {ns}/{pod}, container {}",
            c.pod_container.as_deref().unwrap_or(&c.name)
        ),
        _ => format!("container {}", c.name),
    });
    let container = match (&r.container_id, r.pid_in_container) {
        (Some(_), Some(p)) if named.is_some() => {
            format!(" [{}, pid {p} inside]", named.unwrap_or_default())
        }
        (Some(id), Some(p)) => format!(" [container {}, pid {p} inside]", &id[..12.min(id.len())]),
        (Some(id), None) => format!(" [container {}]", &id[..12.min(id.len())]),
        (None, Some(p)) => format!(" [pid {p} in its namespace]"),
        (None, None) => String::new(),
    };
    writeln!(
        out,
        "{}",
        style.paint(
            "1",
            &format!(
                "== {kind} #{} · pid {} ({}){container} · +{}{exited}",
                r.seq,
                r.pid,
                r.comm,
                human_duration(r.elapsed)
            )
        )
    )?;
    if let Some(m) = &r.memory_cgroup {
        memory_cgroup(out, m)?;
    }
    if let Some(c) = &r.container_processes {
        writeln!(
            out,
            "   container: {} processes traced; {} joined and {} left since the last round of reports{}",
            c.traced,
            c.joined,
            c.left,
            match c.restarts {
                0 => String::new(),
                1 => "; restarted once since attach".to_string(),
                n => format!("; restarted {n} times since attach"),
            }
        )?;
    }
    if !r.heap_traced {
        writeln!(
            out,
            "   C heap: not traced (no C allocator in the target: a pure Go program)"
        )?;
    } else {
        heap_summary(out, r)?;
    }
    for (i, s) in r.sites.iter().enumerate() {
        site(out, i + 1, s, style)?;
    }
    if r.sites.len() < r.sites_total {
        writeln!(
            out,
            "   ({} smaller sites not shown; see --top)",
            r.sites_total - r.sites.len()
        )?;
    }
    if !r.threads.is_empty() {
        let total: u64 = r.threads.iter().map(|t| t.count).sum();
        writeln!(
            out,
            "   threads/processes alive longer than {}: {total} from {} spawn site(s)",
            human_duration(r.older_than),
            r.threads.len()
        )?;
        for (i, t) in r.threads.iter().enumerate() {
            thread_site(out, i + 1, t, style)?;
        }
    }
    // The main thread is always there; list only the others.
    let before: Vec<String> = r
        .threads_before_attach
        .iter()
        .filter(|t| t.tid != r.pid)
        .map(|t| format!("{} {} ({})", t.tid, t.name, human_duration(t.age)))
        .collect();
    if !before.is_empty() {
        writeln!(
            out,
            "   {} other thread(s) from before attach, spawn site unknown: {}",
            before.len(),
            before.join(", ")
        )?;
    }
    if let Some(go) = &r.go {
        go_section(out, r, go, style)?;
    }
    if let Some(reach) = &r.reachability {
        reachability(out, reach, style)?;
    }
    if let Some(k) = &r.kernel {
        super::kernel::write_text(out, k, style)?;
    }
    if let Some(sup) = &r.suppressed {
        writeln!(out, "   suppressed: {}", sup.summary())?;
    }
    let d = &r.dropped;
    let line = format!(
        "   not recorded: {} allocations (table full: allocs {}, sites {}, threads {}; unreadable {}), {} stacks lost, {} tasks, {} goroutines{}{}",
        d.get(Counter::AllocMapFull) + d.get(Counter::SiteMapFull) + d.get(Counter::PendingMapFull) + d.get(Counter::ResultUnreadable),
        d.get(Counter::AllocMapFull),
        d.get(Counter::SiteMapFull),
        d.get(Counter::PendingMapFull),
        d.get(Counter::ResultUnreadable),
        d.get(Counter::StackLost),
        d.get(Counter::TaskMapFull),
        d.get(Counter::GoroutineMapFull) + d.get(Counter::GoroutineUnreadable),
        if d.get(Counter::ProcessMapFull) + d.get(Counter::EventLost) > 0 {
            format!(
                ", {} processes (table full {}, events lost {})",
                d.get(Counter::ProcessMapFull) + d.get(Counter::EventLost),
                d.get(Counter::ProcessMapFull),
                d.get(Counter::EventLost)
            )
        } else {
            String::new()
        },
        // Recorded, but without the caller's address (no site frame).
        match d.get(Counter::CallerUnreadable) {
            0 => String::new(),
            n => format!(", {n} callers unreadable"),
        },
    );
    if d.total() > 0 {
        writeln!(out, "{}", style.paint("33", &line))?;
    } else {
        writeln!(out, "{line}")?;
    }
    if d.cut_short_total() > 0 {
        writeln!(
            out,
            "   stacks cut short: {} (too deep {}, no unwind table {}, unknown mapping {}, unreadable {}, unsupported rule {})",
            d.cut_short_total(),
            d.get(Counter::StackDepthLimit),
            d.get(Counter::StackNoTable),
            d.get(Counter::StackNoMapping),
            d.get(Counter::StackUnreadable),
            d.get(Counter::StackUnsupported)
        )?;
    }
    writeln!(out)
}

/// Only for a cgroup with a limit or a kill: "/" on a host says nothing.
/// " at exit" for the scan made as the program called `_exit`.
fn at_exit(r: &ReachabilityReport) -> &'static str {
    if r.at_exit {
        " at exit"
    } else {
        ""
    }
}

/// The scan's verdicts, in LeakSanitizer's words for the lost ones.
fn reachability(out: &mut impl Write, r: &ReachabilityReport, style: Style) -> io::Result<()> {
    if let Some(why) = &r.incomplete {
        return writeln!(
            out,
            "{}",
            style.paint(
                "33",
                &format!("   reachability{}: scan incomplete: {why}", at_exit(r))
            )
        );
    }
    let totals: Vec<String> = VERDICTS
        .iter()
        .zip(&r.totals)
        .map(|(v, a)| {
            format!(
                "{}: {} in {} block(s)",
                verdict_name(*v).replace('_', " "),
                bytes(a.bytes),
                a.blocks
            )
        })
        .collect();
    writeln!(
        out,
        "   reachability{}: {}{} (target stopped {:.1} ms, {} thread(s), {} scanned{})",
        at_exit(r),
        totals.join(", "),
        match r.definitely_lost_growth {
            Some(g) if g != 0 => format!(" ({g:+} B definitely lost since the last scan)"),
            _ => String::new(),
        },
        r.stopped.as_secs_f64() * 1000.0,
        r.threads,
        bytes(r.scanned_bytes),
        match r.unreadable_bytes {
            0 => String::new(),
            n => format!(", {n} B unreadable"),
        },
    )?;
    if r.go_heap_not_scanned {
        writeln!(
            out,
            "   (the Go heap is not scanned: pointers held only there are not seen, and Go objects are not classified)"
        )?;
    }
    for l in r
        .records
        .iter()
        .filter(|l| l.verdict != Verdict::StillReachable)
    {
        let what = match l.verdict {
            Verdict::DefinitelyLost => "Direct leak",
            Verdict::IndirectlyLost => "Indirect leak",
            _ => "Possible leak",
        };
        let indirect = match l.indirect_bytes {
            0 => String::new(),
            n => format!(" ({n} byte(s) indirectly lost through it)"),
        };
        writeln!(
            out,
            "   {} of {} byte(s) in {} object(s){indirect} allocated from:",
            style.paint("1", what),
            l.bytes,
            l.blocks
        )?;
        frames(out, &l.frames, style)?;
    }
    Ok(())
}

fn memory_cgroup(
    out: &mut impl Write,
    m: &crate::process::memcg::MemoryCgroupReading,
) -> io::Result<()> {
    let kills = match m.oom_kills {
        0 => String::new(),
        1 => ", 1 OOM kill".to_string(),
        n => format!(", {n} OOM kills"),
    };
    let percent = |of: u64, limit: u64| of.saturating_mul(100) / limit.max(1);
    match m.limit {
        Some(limit) => writeln!(
            out,
            "   memory cgroup {}: {} of its {} limit ({}%){}{kills}",
            m.path,
            bytes(m.usage),
            bytes(limit),
            percent(m.usage, limit),
            m.peak
                .map(|p| format!(", peak {} ({}%)", bytes(p), percent(p, limit)))
                .unwrap_or_default(),
        ),
        None if m.oom_kills > 0 => {
            writeln!(
                out,
                "   memory cgroup {}: {}, no limit{kills}",
                m.path,
                bytes(m.usage)
            )
        }
        None => Ok(()),
    }
}

fn heap_summary(out: &mut impl Write, r: &Report) -> io::Result<()> {
    writeln!(
        out,
        "   outstanding: {} in {} blocks; older than {}: {} in {} blocks at {} site(s)",
        bytes(r.live_bytes),
        r.live_blocks,
        human_duration(r.older_than),
        bytes(r.old_bytes),
        r.old_blocks,
        r.sites_total,
    )?;
    Ok(())
}

fn go_section(out: &mut impl Write, r: &Report, go: &GoReport, style: Style) -> io::Result<()> {
    let total: u64 = go.goroutines.iter().map(|g| g.count).sum();
    writeln!(
        out,
        "   {} · goroutines alive longer than {}: {total} from {} creation site(s); {} created since attach still alive",
        go.version,
        human_duration(r.older_than),
        go.goroutines.len(),
        go.goroutines_live,
    )?;
    let created_by = |f: &Frame| {
        let name = f.symbol.as_deref().unwrap_or("??");
        match (&f.file, f.line) {
            (Some(file), Some(line)) => format!("{name} {file}:{line}"),
            _ => name.to_string(),
        }
    };
    for (i, g) in go.goroutines.iter().enumerate() {
        writeln!(
            out,
            "  [G{}] {} goroutine(s) in {} · created by {} · oldest {} · {}",
            i + 1,
            style.paint("1;31", &g.count.to_string()),
            g.start.as_deref().unwrap_or("??"),
            style.paint("36", &created_by(&g.created_by)),
            human_duration(g.oldest),
            growth_text(g.growth, g.trend, |c| c.to_string(), style),
        )?;
        frames(out, &g.frames, style)?;
    }
    if let Some(before) = &go.before_attach {
        let total: u64 = before.iter().map(|g| g.count).sum();
        writeln!(
            out,
            "   goroutines from before attach still alive: {total} from {} creation site(s)",
            before.len()
        )?;
        for (i, g) in before.iter().enumerate() {
            let states: Vec<String> = g.states.iter().map(|(s, n)| format!("{s} ×{n}")).collect();
            let blocked = g
                .longest_blocked
                .map(|d| format!(" · blocked up to {}", human_duration(d)))
                .unwrap_or_default();
            writeln!(
                out,
                "  [B{}] {} goroutine(s) in {} · created by {} · {}{blocked}",
                i + 1,
                style.paint("1;31", &g.count.to_string()),
                g.start.as_deref().unwrap_or("??"),
                style.paint("36", &created_by(&g.created_by)),
                states.join(", "),
            )?;
        }
    }
    if go.heap.as_ref().is_some_and(|h| h.gc_count == 0) {
        writeln!(out, "   Go heap: no GC has completed yet")?;
    } else if let Some(h) = &go.heap {
        let gcs = match h.gcs_since_last {
            Some(n) => format!(" (+{n} since last report)"),
            None => String::new(),
        };
        writeln!(
            out,
            "   Go heap: {} live after the last GC · {} GCs{gcs} · {} · trend {}",
            bytes(h.live_after_gc),
            h.gc_count,
            growth_text(h.growth, Trend::New, bytes, style),
            match h.trend {
                "growing" => style.paint("1;31", "growing"),
                t => t.to_string(),
            },
        )?;
    }
    if let Some(profile) = &go.heap_profile {
        writeln!(
            out,
            "   Go heap in use by allocation stack (runtime profile, as of the last GC):{}",
            if profile.is_empty() { " none yet" } else { "" }
        )?;
        for (i, p) in profile.iter().enumerate() {
            writeln!(
                out,
                "  [H{}] {} in {} object(s) · {}",
                i + 1,
                style.paint("1;31", &bytes(p.bytes)),
                p.objects,
                match p.trend {
                    "growing" => style.paint("1;31", "growing"),
                    "new" => "new".to_string(),
                    t => format!("{t} across GCs"),
                },
            )?;
            frames(out, &p.frames, style)?;
        }
    }
    if let Some(m) = &go.memstats {
        writeln!(
            out,
            "   MemStats: HeapAlloc {} · HeapInuse {} · HeapObjects {} · NumGC {} · NextGC {} · Sys {} · StackInuse {} · goroutines {} · GOMAXPROCS {} · OS threads {} · RSS {}",
            bytes(m.heap_alloc),
            bytes(m.heap_inuse),
            m.heap_objects,
            m.num_gc,
            bytes(m.next_gc),
            bytes(m.sys),
            bytes(m.stack_inuse),
            m.goroutines.map_or("?".to_string(), |n| n.to_string()),
            m.gomaxprocs.map_or("?".to_string(), |n| n.to_string()),
            m.os_threads,
            bytes(m.rss_bytes),
        )?;
    }
    if let Some(leaked) = &go.proven_leaked {
        let total: u64 = leaked.iter().map(|s| s.count).sum();
        writeln!(
            out,
            "   goroutines the runtime proves leaked (its GC-based leak detector): {total} from {} creation site(s)",
            leaked.len()
        )?;
        for (i, s) in leaked.iter().enumerate() {
            writeln!(
                out,
                "  [L{}] {} goroutine(s) in {} · created by {}",
                i + 1,
                style.paint("1;31", &s.count.to_string()),
                s.start.as_deref().unwrap_or("??"),
                style.paint("36", &created_by(&s.created_by)),
            )?;
        }
    }
    for note in &go.notes {
        writeln!(out, "   note: {note}")?;
    }
    Ok(())
}

/// The change since the last report, then the trend over the last few
/// (the leak-or-cache verdict), highlighted when growing.
fn growth_text(
    growth: Option<i64>,
    trend: Trend,
    unit: impl Fn(u64) -> String,
    style: Style,
) -> String {
    let change = match growth {
        None => return "new".to_string(),
        Some(0) => "unchanged".to_string(),
        Some(g) if g > 0 => format!("+{} since last report", unit(g as u64)),
        Some(g) => format!("-{} since last report", unit(g.unsigned_abs())),
    };
    let trend = match trend {
        Trend::New => return change,
        Trend::Growing => style.paint("1;31", "growing"),
        t => t.name().to_string(),
    };
    format!("{change} · {trend} over {TREND_WINDOW} reports")
}

fn frames(
    out: &mut impl Write,
    frames: &[crate::symbolize::Frame],
    style: Style,
) -> io::Result<()> {
    for f in frames {
        let sym = f.symbol.as_deref().unwrap_or("??");
        let loc = match (&f.file, f.line) {
            (Some(file), Some(line)) => format!(" {file}:{line}"),
            (Some(file), None) => format!(" {file}"),
            _ => String::new(),
        };
        let module = f
            .module
            .as_deref()
            .map(|m| format!(" [{m}]"))
            .unwrap_or_default();
        let inl = if f.inlined { " (inlined)" } else { "" };
        writeln!(
            out,
            "        {:#014x} {}{}{}{inl}",
            f.address,
            style.paint("36", sym),
            style.paint("2", &loc),
            module
        )?;
    }
    Ok(())
}

fn thread_site(
    out: &mut impl Write,
    n: usize,
    t: &ThreadSiteReport,
    style: Style,
) -> io::Result<()> {
    let via = t
        .spawned_by
        .as_deref()
        .map(|a| format!(" via {a}"))
        .unwrap_or_default();
    let stacks = if t.stack_bytes > 0 {
        format!(" · stacks {}", bytes(t.stack_bytes))
    } else {
        String::new()
    };
    writeln!(
        out,
        "  [T{n}] {} {}(s){via} · oldest {}{stacks} · {}",
        style.paint("1;31", &t.count.to_string()),
        t.kind,
        human_duration(t.oldest),
        growth_text(t.growth, t.trend, |c| c.to_string(), style),
    )?;
    if t.frames.is_empty() {
        writeln!(
            out,
            "        (spawn site unknown: not created through a probed spawn function)"
        )?;
    }
    frames(out, &t.frames, style)?;
    cut_short(out, t.cut_short, style)
}

/// The line under a stack whose walk ended early.
fn cut_short(out: &mut impl Write, end: Option<StackEnd>, style: Style) -> io::Result<()> {
    let Some(end) = end else {
        return Ok(());
    };
    let why = match end {
        StackEnd::DepthLimit => "deeper than the 127 frames kept",
        StackEnd::NoTable => "next frame in code without unwind information",
        StackEnd::NoMapping => {
            "next frame in memory leaktrace has no table for (JIT code, or mapped just now)"
        }
        StackEnd::Unreadable => "stack memory unreadable",
        StackEnd::Unsupported => "an unwind rule leaktrace does not follow",
        StackEnd::Complete | StackEnd::FramePointers => return Ok(()),
    };
    writeln!(
        out,
        "        {}",
        style.paint("33", &format!("(stack cut short: {why})"))
    )
}

fn site(out: &mut impl Write, n: usize, s: &SiteReport, style: Style) -> io::Result<()> {
    let via = s
        .allocator
        .as_deref()
        .map(|a| format!(" via {a}"))
        .unwrap_or_default();
    writeln!(
        out,
        "  [{n}] {} in {} blocks{via} · oldest {} · {}",
        style.paint("1;31", &bytes(s.bytes)),
        s.blocks,
        human_duration(s.oldest),
        growth_text(s.growth, s.trend, bytes, style),
    )?;
    frames(out, &s.frames, style)?;
    cut_short(out, s.cut_short, style)?;
    if s.stack_lost {
        writeln!(
            out,
            "        (rest of stack lost: stack table full, or the user stack unreadable)"
        )?;
    }
    Ok(())
}

/// Exact bytes, plus a binary-prefixed size when large.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{b} B ({v:.1} {unit})")
}

pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_and_ages() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(4096), "4096 B (4.0 KiB)");
        assert_eq!(bytes(3 * 1024 * 1024), "3145728 B (3.0 MiB)");
        assert_eq!(human_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(7260)), "2h01m");
    }
}
