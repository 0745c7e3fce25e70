//! Prometheus text exposition (format 0.0.4) of one report: what the
//! report says, as gauges and counters named `leaktrace_*`.
//!
//! Labels stay bounded: sites are the report's top N (`--top`), the rest
//! summed under `site="other"`; a site is named by its innermost frame
//! (function and file:line, never an address, which changes per restart).
//! The target's figures never reuse client_golang's `go_*` / `process_*`
//! names, which the target may export itself.

use std::{collections::BTreeMap, fmt::Write};

use tracer_common::CounterKind;

use crate::{
    golang::GoReport,
    reach::Verdict,
    report::{
        kernel::{KernelReport, KernelSite},
        reachability::{verdict_name, ReachabilityReport, VERDICTS},
        Report, SiteReport,
    },
    symbolize::Frame,
};

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

/// The exposition being written, and the labels every sample carries
/// (which process: several are exported side by side with `--container`).
struct Out {
    text: String,
    base: Vec<(&'static str, String)>,
}

/// A metric family being written: HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut Out,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let out = &mut self.out.text;
        let _ = write!(out, "{}", self.name);
        let base = self.out.base.iter().map(|(k, v)| (*k, v.as_str()));
        let all: Vec<(&str, &str)> = base.chain(labels.iter().copied()).collect();
        if !all.is_empty() {
            out.push('{');
            for (i, (k, v)) in all.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

fn family<'a>(out: &'a mut Out, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out.text, "# HELP {name} {help}");
    let _ = writeln!(out.text, "# TYPE {name} {kind}");
    Family { out, name }
}

/// A gauge with one sample (the process's labels only).
fn gauge(out: &mut Out, name: &'static str, help: &str, value: impl std::fmt::Display) {
    family(out, name, "gauge", help).sample(&[], value);
}

/// A counter with one sample (the process's labels only).
fn counter(out: &mut Out, name: &'static str, help: &str, value: impl std::fmt::Display) {
    family(out, name, "counter", help).sample(&[], value);
}

/// Several processes' expositions as one: each family's HELP and TYPE
/// once, followed by every process's samples of it (told apart by their
/// `pid` label), families in first-seen order.
pub fn merge(texts: &[String]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut heads: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut samples: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for text in texts {
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                current = rest.split_whitespace().next().unwrap_or("");
                let h = heads.entry(current).or_default();
                if h.len() < 2 {
                    if h.is_empty() {
                        order.push(current);
                    }
                    h.push(line);
                }
            } else if !line.is_empty() {
                samples.entry(current).or_default().push(line);
            }
        }
    }
    let mut out = String::new();
    for name in order {
        for line in heads
            .get(name)
            .into_iter()
            .flatten()
            .chain(samples.get(name).into_iter().flatten())
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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

/// The labels of every sample: the process (`pid`, `comm`) and its
/// container (`container`: its name when an engine named it, else its id;
/// empty outside a container), with, once an engine named it, `image`,
/// `container_id` and under Kubernetes `pod`, `namespace` and
/// `pod_container`.
fn base_labels(report: &Report) -> Vec<(&'static str, String)> {
    let id = report.container_id.clone().unwrap_or_default();
    let mut base = vec![
        ("pid", report.pid.to_string()),
        ("comm", report.comm.clone()),
    ];
    match &report.container {
        None => base.push(("container", id)),
        Some(c) => {
            base.push(("container", c.name.clone()));
            base.push(("container_id", id));
            base.push(("image", c.image.clone()));
            for (k, v) in [
                ("pod", &c.pod),
                ("namespace", &c.namespace),
                ("pod_container", &c.pod_container),
            ] {
                if let Some(v) = v {
                    base.push((k, v.clone()));
                }
            }
        }
    }
    base
}

/// The text exposition of `report`, every sample labelled as
/// [`base_labels`] says.
pub fn render(report: &Report, own: OwnUsage) -> String {
    let mut out = Out {
        text: String::new(),
        base: base_labels(report),
    };
    let o = &mut out;
    summary(o, report);
    heap_sites(o, report);
    threads(o, report);
    if let Some(go) = &report.go {
        goroutines_and_go_heap(o, go);
    }
    if let Some(r) = &report.reachability {
        reachability(o, r);
    }
    if let Some(k) = &report.kernel {
        kernel_memory(o, k);
    }
    not_recorded(o, report);
    own_usage(o, own);
    out.text
}

/// The exposition of a whole-kernel report (`--kernel` alone: no process,
/// no process labels).
pub fn render_kernel(k: &KernelReport, seq: u64, own: OwnUsage) -> String {
    let mut out = Out {
        text: String::new(),
        base: Vec::new(),
    };
    let o = &mut out;
    gauge(
        o,
        "leaktrace_report_sequence",
        "Sequence number of the report these values come from.",
        seq,
    );
    kernel_memory(o, k);
    own_usage(o, own);
    out.text
}

/// What the kernel's allocators hold (`--kernel`): by site (its function
/// below the allocator's, cache or page, allocator kind; the top sites,
/// the rest as site="other"), by slab cache, and what was not recorded.
fn kernel_memory(o: &mut Out, k: &KernelReport) {
    gauge(
        o,
        "leaktrace_kernel_live_bytes",
        "Bytes the kernel's allocators hold that leaktrace saw allocated, young ones included.",
        k.live.bytes,
    );
    let old = k.old();
    for (name, what, total, amount) in [
        (
            "leaktrace_kernel_outstanding_bytes",
            "Bytes",
            old.bytes,
            (|s: &KernelSite| s.bytes) as fn(&KernelSite) -> u64,
        ),
        (
            "leaktrace_kernel_outstanding_allocations",
            "Blocks",
            old.blocks,
            |s: &KernelSite| s.blocks,
        ),
    ] {
        let help = format!(
            "{what} the kernel holds longer than --older-than, by kernel site, cache (or page order) and allocator kind (top sites; the rest as site=\"other\")."
        );
        let mut shown: BTreeMap<(String, String, &'static str), u64> = BTreeMap::new();
        for s in &k.sites {
            let site = crate::kernel::site_function(&s.frames).unwrap_or("unknown");
            let cache = match (&s.cache, s.order) {
                (Some(c), _) => c.clone(),
                (None, Some(order)) => format!("order-{order}"),
                (None, None) => String::new(),
            };
            *shown
                .entry((site.to_string(), cache, s.kind.name()))
                .or_default() += amount(s);
        }
        let other = total.saturating_sub(shown.values().sum());
        let mut f = family(o, name, "gauge", &help);
        for ((site, cache, kind), v) in &shown {
            f.sample(&[("site", site), ("cache", cache), ("kind", kind)], v);
        }
        f.sample(&[("site", "other"), ("cache", ""), ("kind", "")], other);
    }
    let mut f = family(
        o,
        "leaktrace_kernel_slab_cache_bytes",
        "gauge",
        "Bytes of slab objects outstanding longer than --older-than, by cache.",
    );
    for c in &k.caches {
        f.sample(&[("cache", &c.name)], c.amount.bytes);
    }
    let d = k.dropped;
    let mut f = family(
        o,
        "leaktrace_kernel_not_recorded_total",
        "counter",
        "Kernel allocations or frees not recorded since attach, by reason (block_table_full: see --max-kernel-blocks; stack_lost: recorded without a stack; missed: a probe already running on that CPU; free_failed: a freed block the table kept).",
    );
    for (reason, v) in [
        ("block_table_full", d.blocks),
        ("stack_lost", d.stacks),
        ("missed", d.missed),
        ("free_failed", d.frees_failed),
    ] {
        f.sample(&[("reason", reason)], v);
    }
    if let Some(sup) = &k.suppressed {
        gauge(
            o,
            "leaktrace_kernel_suppressed_bytes",
            "Outstanding bytes of the kernel sites hidden by --suppressions.",
            sup.bytes,
        );
    }
}

/// The target, the report, and everything outstanding.
fn summary(o: &mut Out, report: &Report) {
    let go_version = report.go.as_ref().map_or("", |g| g.version.as_str());
    family(
        o,
        "leaktrace_target_info",
        "gauge",
        "The traced process (value 1).",
    )
    .sample(&[("go_version", go_version)], 1);
    gauge(
        o,
        "leaktrace_report_sequence",
        "Sequence number of the report these values come from.",
        report.seq,
    );
    gauge(
        o,
        "leaktrace_live_bytes",
        "Bytes of every outstanding traced allocation, young ones included.",
        report.live_bytes,
    );
    gauge(
        o,
        "leaktrace_live_allocations",
        "Outstanding traced allocations, young ones included.",
        report.live_blocks,
    );
}

/// A scan's verdicts (--reachability, in a report that scanned).
fn reachability(o: &mut Out, r: &ReachabilityReport) {
    gauge(
        o,
        "leaktrace_reachability_scan_complete",
        "Whether the last scan gave verdicts (1), or was abandoned (0).",
        u8::from(r.incomplete.is_none()),
    );
    gauge(
        o,
        "leaktrace_reachability_stop_seconds",
        "How long the last scan kept the target stopped.",
        r.stopped.as_secs_f64(),
    );
    gauge(
        o,
        "leaktrace_reachability_scanned_bytes",
        "Memory the last scan read (roots and blocks).",
        r.scanned_bytes,
    );
    if r.incomplete.is_some() {
        return;
    }
    let mut f = family(
        o,
        "leaktrace_reachability_bytes",
        "gauge",
        "Bytes outstanding longer than --older-than, by valgrind's kind (definitely_lost, indirectly_lost, possibly_lost, still_reachable).",
    );
    for (v, a) in VERDICTS.iter().zip(&r.totals) {
        f.sample(&[("kind", verdict_name(*v))], a.bytes);
    }
    let unreachable = by_label(
        r.records
            .iter()
            .filter(|l| matches!(l.verdict, Verdict::DefinitelyLost | Verdict::IndirectlyLost))
            .map(|l| (site_label(&l.frames), l.bytes)),
    );
    let mut f = family(
        o,
        "leaktrace_unreachable_bytes",
        "gauge",
        "Bytes nothing points to any more (definitely and indirectly lost), by allocation site.",
    );
    for (label, v) in &unreachable {
        f.sample(&[("site", label)], v);
    }
}

/// Top sites by label, the rest of the report's total as "other".
fn heap_sites(o: &mut Out, report: &Report) {
    for (name, what, total, amount) in [
        (
            "leaktrace_outstanding_bytes",
            "Bytes",
            report.old_bytes,
            (|s: &SiteReport| s.bytes) as fn(&SiteReport) -> u64,
        ),
        (
            "leaktrace_outstanding_allocations",
            "Blocks",
            report.old_blocks,
            |s: &SiteReport| s.blocks,
        ),
    ] {
        let help = format!(
            "{what} outstanding longer than --older-than, by allocation site (top sites; the rest as site=\"other\")."
        );
        let shown = by_label(
            report
                .sites
                .iter()
                .map(|s| (site_label(&s.frames), amount(s))),
        );
        let other = total.saturating_sub(shown.iter().map(|x| x.1).sum());
        let mut f = family(o, name, "gauge", &help);
        for (label, v) in &shown {
            f.sample(&[("site", label)], v);
        }
        f.sample(&[("site", "other")], other);
    }
    gauge(
        o,
        "leaktrace_sites",
        "Allocation sites with blocks outstanding longer than --older-than.",
        report.sites_total,
    );
}

/// Threads and child processes that stay, and those from before attach.
fn threads(o: &mut Out, report: &Report) {
    let mut f = family(
        o,
        "leaktrace_leaked_threads",
        "gauge",
        "Threads and child processes alive longer than --older-than, by spawn site.",
    );
    for (label, v) in by_label(
        report
            .threads
            .iter()
            .map(|t| (site_label(&t.frames), t.count)),
    ) {
        f.sample(&[("site", &label)], v);
    }
    gauge(
        o,
        "leaktrace_threads_before_attach",
        "Threads that existed at attach and are still alive.",
        report.threads_before_attach.len(),
    );
}

/// A Go target's goroutines, heap and runtime statistics.
fn goroutines_and_go_heap(o: &mut Out, go: &GoReport) {
    let mut f = family(
        o,
        "leaktrace_goroutines",
        "gauge",
        "Goroutines alive longer than --older-than by creation site (created=after-attach), and those from before attach.",
    );
    let created_at = |f: &Frame| site_label(std::slice::from_ref(f));
    for (label, v) in by_label(
        go.goroutines
            .iter()
            .map(|g| (created_at(&g.created_by), g.count)),
    ) {
        f.sample(&[("site", &label), ("created", "after-attach")], v);
    }
    for (label, v) in by_label(
        go.before_attach
            .iter()
            .flatten()
            .map(|g| (created_at(&g.created_by), g.count)),
    ) {
        f.sample(&[("site", &label), ("created", "before-attach")], v);
    }
    gauge(
        o,
        "leaktrace_go_goroutines_created_live",
        "Goroutines created since attach and alive now, young ones included.",
        go.goroutines_live,
    );
    if let Some(h) = &go.heap {
        gauge(
            o,
            "leaktrace_go_heap_live_bytes",
            "Go heap bytes marked live by the last GC.",
            h.live_after_gc,
        );
    }
    if let Some(m) = &go.memstats {
        gauge(
            o,
            "leaktrace_go_heap_alloc_bytes",
            "runtime.MemStats.HeapAlloc of the target.",
            m.heap_alloc,
        );
        gauge(
            o,
            "leaktrace_go_heap_inuse_bytes",
            "runtime.MemStats.HeapInuse of the target.",
            m.heap_inuse,
        );
        gauge(
            o,
            "leaktrace_go_heap_objects",
            "runtime.MemStats.HeapObjects of the target.",
            m.heap_objects,
        );
        gauge(
            o,
            "leaktrace_go_next_gc_bytes",
            "runtime.MemStats.NextGC (heap goal) of the target.",
            m.next_gc,
        );
        gauge(
            o,
            "leaktrace_go_sys_bytes",
            "runtime.MemStats.Sys of the target.",
            m.sys,
        );
        counter(
            o,
            "leaktrace_go_gc_cycles_total",
            "Completed GC cycles of the target (runtime.MemStats.NumGC).",
            m.num_gc,
        );
        if let Some(n) = m.goroutines {
            gauge(
                o,
                "leaktrace_go_goroutines",
                "Goroutines of the target (what runtime.NumGoroutine returns).",
                n,
            );
        }
        gauge(
            o,
            "leaktrace_target_threads",
            "OS threads of the target.",
            m.os_threads,
        );
        gauge(
            o,
            "leaktrace_target_resident_memory_bytes",
            "Resident memory of the target.",
            m.rss_bytes,
        );
    }
}

/// What the probes could not record, and stacks cut short.
fn not_recorded(o: &mut Out, report: &Report) {
    let d = &report.dropped;
    let mut f = family(
        o,
        "leaktrace_dropped_events_total",
        "counter",
        "Events the probes could not record since attach, by reason.",
    );
    for (reason, v) in d.by_name(CounterKind::Dropped) {
        f.sample(&[("reason", reason)], v);
    }
    let mut f = family(
        o,
        "leaktrace_stacks_cut_short_total",
        "counter",
        "Distinct stacks recorded with outer frames missing since attach, by reason.",
    );
    for (reason, v) in d.by_name(CounterKind::CutShort) {
        f.sample(&[("reason", reason)], v);
    }
    if let Some(s) = &report.suppressed {
        gauge(
            o,
            "leaktrace_suppressed_sites",
            "Sites hidden by --suppressions.",
            s.sites,
        );
        gauge(
            o,
            "leaktrace_suppressed_bytes",
            "Outstanding bytes of the sites hidden by --suppressions.",
            s.bytes,
        );
    }
}

/// leaktrace's own resource use.
fn own_usage(o: &mut Out, own: OwnUsage) {
    counter(
        o,
        "leaktrace_cpu_seconds_total",
        "CPU time leaktrace itself used (user and system).",
        format!("{:.6}", own.cpu_seconds),
    );
    gauge(
        o,
        "leaktrace_resident_memory_bytes",
        "Resident memory of leaktrace itself.",
        own.resident_bytes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_expositions_have_each_family_once() {
        let one = "# HELP a_bytes A.\n# TYPE a_bytes gauge\na_bytes{pid=\"1\"} 5\n# HELP b_total B.\n# TYPE b_total counter\nb_total{pid=\"1\"} 1\n";
        let two = "# HELP a_bytes A.\n# TYPE a_bytes gauge\na_bytes{pid=\"2\"} 7\n# HELP b_total B.\n# TYPE b_total counter\nb_total{pid=\"2\"} 3\n";
        assert_eq!(
            merge(&[one.to_string(), two.to_string()]),
            "# HELP a_bytes A.\n# TYPE a_bytes gauge\na_bytes{pid=\"1\"} 5\na_bytes{pid=\"2\"} 7\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total{pid=\"1\"} 1\nb_total{pid=\"2\"} 3\n"
        );
    }
}
