//! Reports: what one interval's reading says ([`builder`]: symbolized,
//! merged, ranked, with growth and trend from [`aggregate`]), rendered as
//! text or JSON lines.

pub mod aggregate;
pub mod builder;
mod json;
pub mod kernel;
pub mod profiles;
pub mod reachability;
pub mod suppressions;
mod text;

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};
use tracer_common::StackEnd;

use crate::{collect::Dropped, golang::GoReport, symbolize::Frame};

pub use aggregate::Trend;

pub use text::{bytes, human_duration, Style};

/// How reports are written: text for people, one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Which report of a run: one of the regular ones, or the last, and then
/// whether it is the last because the target exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Regular,
    /// Stopped (signal, `--count`, a closed pipe) while the target runs.
    Final,
    /// The target exited.
    TargetExited,
}

impl ReportKind {
    /// The last report, with whether the target exited.
    pub fn last(target_exited: bool) -> Self {
        if target_exited {
            ReportKind::TargetExited
        } else {
            ReportKind::Final
        }
    }

    /// `last`: the final report, else a regular one.
    pub fn regular_or_final(last: bool) -> Self {
        if last {
            ReportKind::Final
        } else {
            ReportKind::Regular
        }
    }

    pub fn is_final(self) -> bool {
        self != ReportKind::Regular
    }

    pub fn target_exited(self) -> bool {
        self == ReportKind::TargetExited
    }
}

/// One allocation site in a report.
#[derive(Debug, Clone)]
pub struct SiteReport {
    pub bytes: u64,
    pub blocks: u64,
    pub oldest: Duration,
    /// Change in bytes since the previous report (`None`: first seen).
    pub growth: Option<i64>,
    /// How the bytes moved over the last few reports.
    pub trend: Trend,
    /// The allocator function(s) called (malloc, calloc, ...), when known.
    pub allocator: Option<String>,
    /// This site's stack could not be stored: only the immediate caller is
    /// known.
    pub stack_lost: bool,
    /// Why the stack's walk ended early (`None`: it is whole).
    pub cut_short: Option<StackEnd>,
    pub frames: Vec<Frame>,
}

/// Threads (or child processes) from one spawn site, alive longer than the threshold.
#[derive(Debug, Clone)]
pub struct ThreadSiteReport {
    /// "thread" or "process".
    pub kind: &'static str,
    pub count: u64,
    pub oldest: Duration,
    /// Change in `count` since the previous report (`None`: first seen).
    pub growth: Option<i64>,
    /// How the count moved over the last few reports.
    pub trend: Trend,
    /// Bytes of the stack mappings the threads hold.
    pub stack_bytes: u64,
    /// The spawn function called (pthread_create, fork, ...), when known.
    pub spawned_by: Option<String>,
    /// Spawn stack, innermost first; empty when the task was created
    /// without a probed spawn function (a raw clone).
    pub frames: Vec<Frame>,
    /// Why the spawn stack's walk ended early (`None`: it is whole).
    pub cut_short: Option<StackEnd>,
}

/// A thread that existed before attach (its spawn site is unknown).
#[derive(Debug, Clone)]
pub struct ExistingThreadReport {
    pub tid: u32,
    pub name: String,
    pub age: Duration,
}

/// One report: survivors older than the threshold, largest sites first.
#[derive(Debug, Clone)]
pub struct Report {
    pub seq: u64,
    pub final_report: bool,
    pub timestamp: SystemTime,
    pub elapsed: Duration,
    pub pid: u32,
    pub comm: String,
    /// The target's PID inside its container's PID namespace.
    pub pid_in_container: Option<u32>,
    /// The container the target runs in (64 hex digits).
    pub container_id: Option<String>,
    /// The container's name, image and pod, when an engine named them.
    pub container: Option<crate::process::engine::ContainerLabels>,
    pub older_than: Duration,
    /// Whether the target has a C allocator to trace (not so for pure Go).
    pub heap_traced: bool,
    /// Every outstanding allocation, including young ones.
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// Survivors older than the threshold, over all sites (not just shown ones).
    pub old_bytes: u64,
    pub old_blocks: u64,
    pub sites_total: usize,
    pub sites: Vec<SiteReport>,
    pub dropped: Dropped,
    /// Threads and child processes alive longer than the threshold, by spawn site.
    pub threads: Vec<ThreadSiteReport>,
    /// Threads that already existed at attach and are still alive.
    pub threads_before_attach: Vec<ExistingThreadReport>,
    /// Present for Go targets.
    pub go: Option<GoReport>,
    /// Set when the target exited before this report.
    pub target_exited: bool,
    /// The kernel's OOM killer chose the target (it is dying or dead of it).
    pub oom_killed: bool,
    /// The target's memory cgroup (a container's limit), when mounted.
    pub memory_cgroup: Option<crate::process::memcg::MemoryCgroupReading>,
    /// The whole reading, when exports (pprof, flame graphs, --listen) are on.
    pub profiles: Option<profiles::Profiles>,
    /// With --suppressions: what the rules hid.
    pub suppressed: Option<suppressions::Suppressed>,
    /// With --container: the container's traced processes now, and how
    /// many joined and left since the previous round of reports.
    pub container_processes: Option<ProcessCounts>,
    /// With --reachability, at a report that scanned: the verdicts.
    pub reachability: Option<reachability::ReachabilityReport>,
    /// With --kernel: what the kernel holds (for this process, or the
    /// whole kernel's).
    pub kernel: Option<kernel::KernelReport>,
}

/// A traced container's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    pub traced: u64,
    pub joined: u64,
    pub left: u64,
    /// Times the container restarted (new processes, same container)
    /// since leaktrace attached.
    pub restarts: u64,
}

/// Writes reports in the chosen format, one at a time, flushing each.
pub struct Reporter {
    format: Format,
    style: Style,
}

impl Reporter {
    pub fn new(format: Format, style: Style) -> Self {
        Reporter { format, style }
    }

    /// The text style reports are written in.
    pub fn style(&self) -> Style {
        self.style
    }

    pub fn write(&self, out: &mut impl Write, report: &Report) -> io::Result<()> {
        match self.format {
            Format::Text => text::write(out, report, self.style)?,
            Format::Json => json::write(out, report)?,
        }
        out.flush()
    }
}
