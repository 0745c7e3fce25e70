//! Building the Go section of each report from its parts: goroutines
//! (since attach, and the census of those from before), the Go heap, and
//! the runtime's own leak check.

use std::{rc::Rc, time::Duration};

use super::{
    goroutine_table::GoroutineSnapshot,
    goroutines::Goroutines,
    heap::{self, GoHeap},
    leak_check::ProvenLeaks,
    CensusSiteReport, GoHeapReport, GoHeapSiteReport, GoReport, ProvenLeakSite,
};
use crate::{
    collect::stacks::Stacks,
    golang::{
        runtime::{memprofile::Switch, memstats::MemStats, process::GoProcess},
        GoTarget,
    },
    probes::maps::GoroutineTable,
    symbolize::{Symbolizer, SymbolizerGone},
};

pub struct GoTracker {
    process: GoProcess,
    goroutines: Goroutines,
    heap: GoHeap,
    /// `--go-leak-check`.
    leak_check: Option<ProvenLeaks>,
    /// What the executable does not let us read, said in every report.
    notes: Vec<String>,
    /// What was last read out of the process, for the report after it
    /// exited (an OOM kill above all: the state it died in).
    last_read: LastRead,
}

/// What a report reads out of the process's memory.
#[derive(Default, Clone)]
struct Readings {
    before_attach: Option<Vec<CensusSiteReport>>,
    heap: Option<GoHeapReport>,
    heap_profile: Option<Vec<GoHeapSiteReport>>,
    proven_leaked: Option<Vec<ProvenLeakSite>>,
    memstats: Option<MemStats>,
}

/// The out-of-process readings of the last report that had them.
#[derive(Default)]
struct LastRead {
    at: Option<std::time::Instant>,
    heap: Option<GoHeapReport>,
    heap_profile: Option<Vec<GoHeapSiteReport>>,
    memstats: Option<MemStats>,
}

impl GoTracker {
    /// Call once the goroutine probes are attached: takes the census of the
    /// goroutines that already exist (none for a command we start). Taken
    /// after attach, never before: a goroutine created in between would be
    /// in neither the census nor the probes' table.
    /// `goroutines` is the probes' goroutine table (absent when the
    /// goroutine probes are not loaded).
    pub fn new(
        pid: u32,
        target: GoTarget,
        goroutines: Option<Rc<GoroutineTable>>,
        older_than: Duration,
        max_goroutines: u32,
        launched: bool,
        top: usize,
    ) -> Self {
        let mut process = GoProcess::new(pid, target);
        let mut notes = Vec::new();
        let goroutines = Goroutines::new(
            &mut process,
            goroutines,
            older_than,
            max_goroutines,
            launched,
            top,
            &mut notes,
        );
        let heap = GoHeap::new(&process, top, &mut notes);
        GoTracker {
            process,
            goroutines,
            heap,
            leak_check: None,
            notes,
            last_read: LastRead::default(),
        }
    }

    /// `--go-memprofile`: turns the runtime's heap profiling on if the
    /// linker had it off, now if the runtime is up, else at a later report.
    pub fn with_memprofile(mut self, switch: Switch) -> Self {
        self.heap.set_memprofile(&mut self.process, switch);
        self
    }

    /// `--go-leak-check`: arms the runtime's goroutine leak detector now
    /// (and again after each run), where the Go version has one.
    pub fn with_leak_check(mut self) -> Self {
        self.leak_check = Some(ProvenLeaks::start(&mut self.process));
        self
    }

    /// This report's Go section. Once the target has exited, its memory can
    /// no longer be read: the heap, heap profile and MemStats are the last
    /// ones read, and the census the last one taken.
    pub async fn report(
        &mut self,
        symbolizer: &Symbolizer,
        stacks: &mut Stacks,
        target_exited: bool,
    ) -> Result<GoReport, SymbolizerGone> {
        if !target_exited {
            self.heap.try_memprofile(&mut self.process);
        }
        let mut notes = self.notes.clone();
        let snap = self.goroutines.snapshot(&mut notes);
        let since_attach = self
            .goroutines
            .since_attach(&mut self.process, &snap, symbolizer, stacks)
            .await?;
        let read = if target_exited {
            self.as_last_read(&mut notes)
        } else {
            self.read(&mut notes, symbolizer, &snap).await?
        };
        Ok(GoReport {
            version: self.process.target.binary.version.clone(),
            goroutines_live: snap.live,
            goroutines: since_attach.top,
            all_goroutines: since_attach.all,
            before_attach: read.before_attach,
            heap: read.heap,
            heap_profile: read.heap_profile,
            memstats: read.memstats,
            proven_leaked: read.proven_leaked,
            notes,
        })
    }

    /// Reads the process's runtime, and keeps what it read.
    async fn read(
        &mut self,
        notes: &mut Vec<String>,
        symbolizer: &Symbolizer,
        snap: &GoroutineSnapshot,
    ) -> Result<Readings, SymbolizerGone> {
        let process = &mut self.process;
        let before_attach = self
            .goroutines
            .census(process, notes, symbolizer, snap)
            .await?;
        let heap = self.heap.reading(process, notes);
        let heap_profile = self.heap.profile(process, notes, symbolizer).await?;
        let proven_leaked = match &mut self.leak_check {
            Some(check) => check.sites(process, notes, symbolizer).await?,
            None => None,
        };
        let memstats = heap::mem_stats(process, notes);
        let last = &mut self.last_read;
        last.at = Some(std::time::Instant::now());
        last.heap = heap.clone().or(last.heap.take());
        last.heap_profile = heap_profile.clone().or(last.heap_profile.take());
        last.memstats = memstats.or(last.memstats);
        Ok(Readings {
            before_attach,
            heap,
            heap_profile,
            proven_leaked,
            memstats,
        })
    }

    /// The target has exited: what was last read, said as such.
    fn as_last_read(&self, notes: &mut Vec<String>) -> Readings {
        let last = &self.last_read;
        if let Some(at) = last.at {
            notes.push(format!(
                "the target has exited: its Go heap, heap profile and MemStats are as read {} \
                 before",
                crate::report::human_duration(at.elapsed())
            ));
        }
        Readings {
            before_attach: self.goroutines.last_census(),
            heap: last.heap.clone(),
            heap_profile: last.heap_profile.clone(),
            proven_leaked: None,
            memstats: last.memstats,
        }
    }
}
