//! Reports: what one interval's reading says, rendered as text or JSON.

mod json;
mod text;

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};

use crate::{aggregate::Trend, cli::Format, collect::Dropped, symbolize::Frame};

pub use text::{bytes, human_duration, Style};

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
}

/// A thread that existed before attach (its spawn site is unknown).
#[derive(Debug, Clone)]
pub struct ExistingThreadReport {
    pub tid: u32,
    pub name: String,
    pub age: Duration,
}

/// Goroutines from one `go` statement, alive longer than the threshold.
#[derive(Debug, Clone)]
pub struct GoroutineSiteReport {
    pub count: u64,
    pub oldest: Duration,
    /// Change in `count` since the previous report (`None`: first seen).
    pub growth: Option<i64>,
    /// How the count moved over the last few reports.
    pub trend: Trend,
    /// The `go` statement: function, file:line ("created by" in a dump).
    pub created_by: Frame,
    /// The goroutine's own function.
    pub start: Option<String>,
    /// Creating stack, innermost first.
    pub frames: Vec<Frame>,
}

/// Goroutines that already existed at attach and are still alive, from
/// one creation site (read from the runtime's goroutine list).
#[derive(Debug, Clone)]
pub struct CensusSiteReport {
    pub count: u64,
    pub created_by: Frame,
    pub start: Option<String>,
    /// Goroutines per state ("chan receive", "select", "runnable", ...),
    /// most common first.
    pub states: Vec<(String, u64)>,
}

/// The Go heap: live bytes after the last GC, and their trend.
#[derive(Debug, Clone)]
pub struct GoHeapReport {
    pub live_after_gc: u64,
    pub gc_count: u32,
    /// GCs completed since the previous report (`None`: first report).
    pub gcs_since_last: Option<u32>,
    /// Change in `live_after_gc` since the previous report.
    pub growth: Option<i64>,
    /// "growing", "shrinking", "steady", or "unknown" (too few GCs yet).
    pub trend: &'static str,
}

/// One allocation stack of the Go runtime's own heap profile: in use as of
/// the last GC, unsampled like pprof does.
#[derive(Debug, Clone)]
pub struct GoHeapSiteReport {
    pub bytes: u64,
    pub objects: u64,
    /// Allocation stack, innermost first, from the allocating function
    /// (the runtime's own allocation frames are left out).
    pub frames: Vec<Frame>,
}

/// What leaktrace sees of a Go target's runtime.
#[derive(Debug, Clone)]
pub struct GoReport {
    /// "go1.25.5".
    pub version: String,
    /// Goroutines created since attach and alive now, young ones included.
    pub goroutines_live: u64,
    pub goroutines: Vec<GoroutineSiteReport>,
    /// `None` when the census could not be taken (see `notes`).
    pub before_attach: Option<Vec<CensusSiteReport>>,
    pub heap: Option<GoHeapReport>,
    /// In-use heap by allocation stack, largest first; `None` when the
    /// runtime's memory profiling is off (see `notes`).
    pub heap_profile: Option<Vec<GoHeapSiteReport>>,
    /// What could not be read, and why.
    pub notes: Vec<String>,
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

    pub fn write(&self, out: &mut impl Write, report: &Report) -> io::Result<()> {
        match self.format {
            Format::Text => text::write(out, report, self.style)?,
            Format::Json => json::write(out, report)?,
        }
        out.flush()
    }
}
