//! Prometheus text exposition (format 0.0.4) of one report: what the
//! report says, as gauges and counters named `leaktrace_*`.
//!
//! Labels stay bounded: sites are the report's top N (`--top`), the rest
//! summed under `site="other"`; a site is named by its innermost frame
//! (function and file:line, never an address, which changes per restart).
//! The target's figures never reuse client_golang's `go_*` / `process_*`
//! names, which the target may export itself.

use std::{collections::BTreeMap, fmt::Write};

use crate::{report::Report, symbolize::Frame};

/// leaktrace's own resource use, for its `process`-like metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnUsage {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

impl OwnUsage {
    pub fn now() -> Self {
        // SAFETY: getrusage writes into the zeroed struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_SELF with a valid out pointer.
        let cpu_seconds = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            tv(ru.ru_utime) + tv(ru.ru_stime)
        } else {
            0.0
        };
        let resident_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * page_size());
        OwnUsage {
            cpu_seconds,
            resident_bytes,
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// A metric family being written: HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// How a site is named in a label: its innermost frame.
pub fn site_label(frames: &[Frame]) -> String {
    let Some(f) = frames.first() else {
        return "unknown".to_string();
    };
    match (&f.symbol, &f.file, f.line) {
        (Some(s), Some(file), Some(line)) => {
            let base = file.rsplit('/').next().unwrap_or(file);
            format!("{s} ({base}:{line})")
        }
        (Some(s), _, _) => s.clone(),
        (None, _, _) => match &f.module {
            Some(m) => format!("[{m}]"),
            None => "unknown".to_string(),
        },
    }
}

/// Sums `(label, value)` pairs by label, keeping first-seen order.
fn by_label(items: impl Iterator<Item = (String, u64)>) -> Vec<(String, u64)> {
    let mut order: Vec<String> = Vec::new();
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for (label, v) in items {
        if !sums.contains_key(&label) {
            order.push(label.clone());
        }
        *sums.entry(label).or_default() += v;
    }
    order
        .into_iter()
        .map(|l| {
            let v = sums[&l];
            (l, v)
        })
        .collect()
}

/// The text exposition of `report`.
pub fn render(report: &Report, own: OwnUsage) -> String {
    let mut out = String::new();
    let pid = report.pid.to_string();
    let o = &mut out;

    family(o, "leaktrace_target_info", "gauge", "The traced process (value 1).").sample(
        "leaktrace_target_info",
        &[
            ("pid", &pid),
            ("comm", &report.comm),
            ("go_version", report.go.as_ref().map_or("", |g| g.version.as_str())),
        ],
        1,
    );
    family(o, "leaktrace_report_sequence", "gauge", "Sequence number of the report these values come from.")
        .sample("leaktrace_report_sequence", &[], report.seq);
    family(o, "leaktrace_live_bytes", "gauge", "Bytes of every outstanding traced allocation, young ones included.")
        .sample("leaktrace_live_bytes", &[], report.live_bytes);
    family(o, "leaktrace_live_allocations", "gauge", "Outstanding traced allocations, young ones included.")
        .sample("leaktrace_live_allocations", &[], report.live_blocks);

    let shown_bytes = by_label(report.sites.iter().map(|s| (site_label(&s.frames), s.bytes)));
    let shown_blocks = by_label(report.sites.iter().map(|s| (site_label(&s.frames), s.blocks)));
    let other_bytes = report.old_bytes.saturating_sub(shown_bytes.iter().map(|x| x.1).sum());
    let other_blocks = report.old_blocks.saturating_sub(shown_blocks.iter().map(|x| x.1).sum());
    let mut f = family(
        o,
        "leaktrace_outstanding_bytes",
        "gauge",
        "Bytes outstanding longer than --older-than, by allocation site (top sites; the rest as site=\"other\").",
    );
    for (label, v) in &shown_bytes {
        f.sample("leaktrace_outstanding_bytes", &[("site", label)], v);
    }
    f.sample("leaktrace_outstanding_bytes", &[("site", "other")], other_bytes);
    let mut f = family(
        o,
        "leaktrace_outstanding_allocations",
        "gauge",
        "Blocks outstanding longer than --older-than, by allocation site (top sites; the rest as site=\"other\").",
    );
    for (label, v) in &shown_blocks {
        f.sample("leaktrace_outstanding_allocations", &[("site", label)], v);
    }
    f.sample("leaktrace_outstanding_allocations", &[("site", "other")], other_blocks);
    family(o, "leaktrace_sites", "gauge", "Allocation sites with blocks outstanding longer than --older-than.")
        .sample("leaktrace_sites", &[], report.sites_total);

    let mut f = family(
        o,
        "leaktrace_leaked_threads",
        "gauge",
        "Threads and child processes alive longer than --older-than, by spawn site.",
    );
    for (label, v) in by_label(report.threads.iter().map(|t| (site_label(&t.frames), t.count))) {
        f.sample("leaktrace_leaked_threads", &[("site", &label)], v);
    }
    family(o, "leaktrace_threads_before_attach", "gauge", "Threads that existed at attach and are still alive.")
        .sample("leaktrace_threads_before_attach", &[], report.threads_before_attach.len());

    if let Some(go) = &report.go {
        let mut f = family(
            o,
            "leaktrace_goroutines",
            "gauge",
            "Goroutines alive longer than --older-than by creation site (created=after-attach), and those from before attach.",
        );
        for (label, v) in by_label(go.goroutines.iter().map(|g| (site_label(std::slice::from_ref(&g.created_by)), g.count))) {
            f.sample("leaktrace_goroutines", &[("site", &label), ("created", "after-attach")], v);
        }
        for (label, v) in by_label(go.before_attach.iter().flatten().map(|g| (site_label(std::slice::from_ref(&g.created_by)), g.count))) {
            f.sample("leaktrace_goroutines", &[("site", &label), ("created", "before-attach")], v);
        }
        family(o, "leaktrace_go_goroutines_created_live", "gauge", "Goroutines created since attach and alive now, young ones included.")
            .sample("leaktrace_go_goroutines_created_live", &[], go.goroutines_live);
        if let Some(h) = &go.heap {
            family(o, "leaktrace_go_heap_live_bytes", "gauge", "Go heap bytes marked live by the last GC.")
                .sample("leaktrace_go_heap_live_bytes", &[], h.live_after_gc);
        }
        if let Some(m) = &go.memstats {
            family(o, "leaktrace_go_heap_alloc_bytes", "gauge", "runtime.MemStats.HeapAlloc of the target.")
                .sample("leaktrace_go_heap_alloc_bytes", &[], m.heap_alloc);
            family(o, "leaktrace_go_heap_inuse_bytes", "gauge", "runtime.MemStats.HeapInuse of the target.")
                .sample("leaktrace_go_heap_inuse_bytes", &[], m.heap_inuse);
            family(o, "leaktrace_go_heap_objects", "gauge", "runtime.MemStats.HeapObjects of the target.")
                .sample("leaktrace_go_heap_objects", &[], m.heap_objects);
            family(o, "leaktrace_go_next_gc_bytes", "gauge", "runtime.MemStats.NextGC (heap goal) of the target.")
                .sample("leaktrace_go_next_gc_bytes", &[], m.next_gc);
            family(o, "leaktrace_go_sys_bytes", "gauge", "runtime.MemStats.Sys of the target.")
                .sample("leaktrace_go_sys_bytes", &[], m.sys);
            family(o, "leaktrace_go_gc_cycles_total", "counter", "Completed GC cycles of the target (runtime.MemStats.NumGC).")
                .sample("leaktrace_go_gc_cycles_total", &[], m.num_gc);
            if let Some(n) = m.goroutines {
                family(o, "leaktrace_go_goroutines", "gauge", "Goroutines of the target (what runtime.NumGoroutine returns).")
                    .sample("leaktrace_go_goroutines", &[], n);
            }
            family(o, "leaktrace_target_threads", "gauge", "OS threads of the target.")
                .sample("leaktrace_target_threads", &[], m.os_threads);
            family(o, "leaktrace_target_resident_memory_bytes", "gauge", "Resident memory of the target.")
                .sample("leaktrace_target_resident_memory_bytes", &[], m.rss_bytes);
        }
    }

    let d = &report.dropped;
    let mut f = family(
        o,
        "leaktrace_dropped_events_total",
        "counter",
        "Events the probes could not record since attach, by reason.",
    );
    for (reason, v) in [
        ("alloc_map_full", d.alloc_map_full),
        ("site_map_full", d.site_map_full),
        ("stacks_lost", d.stacks_lost),
        ("pending_map_full", d.pending_map_full),
        ("caller_unreadable", d.caller_unreadable),
        ("result_unreadable", d.result_unreadable),
        ("task_map_full", d.task_map_full),
        ("goroutine_map_full", d.goroutine_map_full),
        ("goroutine_unreadable", d.goroutine_unreadable),
    ] {
        f.sample("leaktrace_dropped_events_total", &[("reason", reason)], v);
    }
    let c = &d.cut_short;
    let mut f = family(
        o,
        "leaktrace_stacks_cut_short_total",
        "counter",
        "Distinct stacks recorded with outer frames missing since attach, by reason.",
    );
    for (reason, v) in [
        ("depth_limit", c.depth_limit),
        ("no_unwind_table", c.no_unwind_table),
        ("unknown_mapping", c.unknown_mapping),
        ("unreadable_stack", c.unreadable_stack),
        ("unsupported_rule", c.unsupported_rule),
    ] {
        f.sample("leaktrace_stacks_cut_short_total", &[("reason", reason)], v);
    }
    if let Some(s) = &report.suppressed {
        family(o, "leaktrace_suppressed_sites", "gauge", "Sites hidden by --suppressions.")
            .sample("leaktrace_suppressed_sites", &[], s.sites);
        family(o, "leaktrace_suppressed_bytes", "gauge", "Outstanding bytes of the sites hidden by --suppressions.")
            .sample("leaktrace_suppressed_bytes", &[], s.bytes);
    }
    family(o, "leaktrace_cpu_seconds_total", "counter", "CPU time leaktrace itself used (user and system).")
        .sample("leaktrace_cpu_seconds_total", &[], format!("{:.6}", own.cpu_seconds));
    family(o, "leaktrace_resident_memory_bytes", "gauge", "Resident memory of leaktrace itself.")
        .sample("leaktrace_resident_memory_bytes", &[], own.resident_bytes);
    out
}
