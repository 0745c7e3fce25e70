//! The Go section of a report: goroutines alive past the threshold by
//! creation site, the census of those from before attach, and the Go heap.
//! Each feature in a module of its own ([`goroutines`], [`heap`],
//! [`leak_check`]); [`tracker`] puts them together at each report.

pub mod goroutine_table;
pub mod goroutines;
pub mod heap;
pub mod leak_check;
pub mod tracker;
pub mod trend;

use std::time::Duration;

use crate::{
    report::aggregate::{self, FrameKey, StackKey, Tracked, Trend},
    symbolize::Frame,
};

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
    /// How long the longest-blocked of them has been blocked (`None`: none
    /// blocked, or the runtime has not noted when yet: it does so when a GC
    /// scans a blocked goroutine).
    pub longest_blocked: Option<std::time::Duration>,
}

/// Goroutines from one creation site that the runtime's leak detector
/// proved leaked: blocked on something no runnable goroutine can reach.
#[derive(Debug, Clone)]
pub struct ProvenLeakSite {
    pub count: u64,
    pub created_by: Frame,
    pub start: Option<String>,
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
    /// Change in `bytes` since the reading after the previous GC (`None`:
    /// first seen).
    pub growth: Option<i64>,
    /// Across the last GCs: "growing", "steady", "shrinking", or "new".
    pub trend: &'static str,
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
    /// Every site of `goroutines`, not only the top ones (for the pprof
    /// goroutine profile).
    pub all_goroutines: Vec<GoroutineSiteReport>,
    /// `None` when the census could not be taken (see `notes`).
    pub before_attach: Option<Vec<CensusSiteReport>>,
    pub heap: Option<GoHeapReport>,
    /// In-use heap by allocation stack, largest first; `None` when the
    /// runtime's memory profiling is off (see `notes`).
    pub heap_profile: Option<Vec<GoHeapSiteReport>>,
    /// `runtime.ReadMemStats`' figures read out of process, with the
    /// process's OS threads and RSS (`None`: not readable, see `notes`).
    pub memstats: Option<crate::golang::runtime::memstats::MemStats>,
    /// `--go-leak-check`: goroutines the runtime's detector found leaked,
    /// by creation site, most first; `None` when not asked for, not
    /// available, or not run yet (see `notes`).
    pub proven_leaked: Option<Vec<ProvenLeakSite>>,
    /// What could not be read, and why.
    pub notes: Vec<String>,
}

impl Tracked for GoroutineSiteReport {
    fn key(&self) -> StackKey {
        let mut k = aggregate::key(std::slice::from_ref(&self.created_by));
        k.push(FrameKey::Symbol {
            symbol: self.start.clone().unwrap_or_default(),
            file: None,
            line: None,
            inlined: false,
        });
        k
    }
    fn amount(&self) -> u64 {
        self.count
    }
    fn set_change(&mut self, growth: Option<i64>, trend: Trend) {
        self.growth = growth;
        self.trend = trend;
    }
}
