//! The Go heap of the Go section: the live heap after GC and its trend,
//! the runtime's heap profile by allocation stack (switched on by
//! `--go-memprofile` where the linker had it off), and MemStats.

use std::collections::HashMap;

use super::{
    trend::{HeapTrend, SiteTrends},
    GoHeapReport, GoHeapSiteReport,
};
use crate::{
    golang::runtime::{
        memprofile::{Outcome, Switch, GO_DEFAULT_RATE},
        memstats::MemStats,
        process::GoProcess,
    },
    symbolize::{Frame, Symbolizer, SymbolizerGone},
};

/// Function and line: what makes two profile stacks the same for a reader.
type SourceLine = (Option<String>, Option<u32>);

#[derive(Default)]
pub struct GoHeap {
    trend: HeapTrend,
    /// Trends of the heap profile's sites across GCs.
    site_trends: SiteTrends<Vec<SourceLine>>,
    /// `--go-memprofile`: the switch, until it has been thrown (or found
    /// not to need it).
    memprofile: Option<Switch>,
    /// What `--go-memprofile` did, for the notes.
    memprofile_outcome: Option<Outcome>,
    top: usize,
}

impl GoHeap {
    /// Says in `notes` what the executable does not let us read.
    pub fn new(process: &GoProcess, top: usize, notes: &mut Vec<String>) -> Self {
        let vars = &process.target.binary.vars;
        if vars.gc_controller.is_none() || vars.memstats.is_none() {
            notes.push(
                "no Go heap figures: runtime.gcController and runtime.memstats are neither in \
                 the symbol table nor found through the runtime's code"
                    .into(),
            );
        }
        if vars.mbuckets.is_none() || vars.mem_profile_rate.is_none() {
            notes.push(
                "no Go heap by allocation stack: runtime.mbuckets and runtime.MemProfileRate \
                 are neither in the symbol table nor found through the runtime's code"
                    .into(),
            );
        }
        GoHeap {
            top,
            ..GoHeap::default()
        }
    }

    /// `--go-memprofile`: turns the runtime's heap profiling on if the
    /// linker had it off, now if the runtime is up, else at a later report.
    pub fn set_memprofile(&mut self, process: &mut GoProcess, switch: Switch) {
        self.memprofile = Some(switch);
        self.try_memprofile(process);
    }

    /// Throws the `--go-memprofile` switch once the executable is mapped.
    pub fn try_memprofile(&mut self, process: &mut GoProcess) {
        let Some(switch) = self.memprofile else {
            return;
        };
        let Some(bias) = process.load_bias() else {
            return; // not exec'd yet
        };
        let pid = process.pid;
        match switch.turn_on(pid, bias) {
            Ok(Outcome::NotStarted) => {}
            Ok(outcome) => {
                self.memprofile = None;
                self.memprofile_outcome = Some(outcome);
                say_memprofile(pid, switch.write_rate, outcome);
            }
            Err(e) => {
                self.memprofile = None;
                eprintln!("leaktrace: --go-memprofile: cannot write into pid {pid}: {e}");
            }
        }
    }

    /// The live heap after the last GC, with its trend.
    pub fn reading(
        &mut self,
        process: &mut GoProcess,
        notes: &mut Vec<String>,
    ) -> Option<GoHeapReport> {
        let vars = &process.target.binary.vars;
        if vars.gc_controller.is_none() || vars.memstats.is_none() {
            return None;
        }
        let reading = match process.runtime()?.heap() {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!("Go heap not read: {e}"));
                return None;
            }
        };
        Some(self.trend.observe(reading))
    }

    /// The runtime's heap profile by allocation site, largest first.
    pub async fn profile(
        &mut self,
        process: &mut GoProcess,
        notes: &mut Vec<String>,
        symbolizer: &Symbolizer,
    ) -> Result<Option<Vec<GoHeapSiteReport>>, SymbolizerGone> {
        let vars = &process.target.binary.vars;
        if vars.mbuckets.is_none() || vars.mem_profile_rate.is_none() {
            return Ok(None); // said once, at start
        }
        let Some(runtime) = process.runtime() else {
            return Ok(None);
        };
        let buckets = match runtime.mem_profile_rate() {
            Ok(0) => {
                notes.push(self.profiling_off());
                return Ok(None);
            }
            Ok(rate) => match runtime.heap_profile(rate) {
                Ok(b) => b,
                Err(e) => {
                    notes.push(format!("Go heap profile not read: {e}"));
                    return Ok(None);
                }
            },
            Err(e) => {
                notes.push(format!("Go heap profile not read: {e}"));
                return Ok(None);
            }
        };
        let by_addr = symbolizer
            .symbolize_set(buckets.iter().flat_map(|b| b.stack.iter().copied()), true)
            .await?;
        let mut merged: HashMap<Vec<SourceLine>, GoHeapSiteReport> = HashMap::new();
        for b in buckets {
            let all: Vec<Frame> = b
                .stack
                .iter()
                .flat_map(|a| by_addr.get(a).cloned().unwrap_or_default())
                .collect();
            let frames = from_allocating_function(all);
            let key = frames.iter().map(|f| (f.symbol.clone(), f.line)).collect();
            let e = merged.entry(key).or_insert(GoHeapSiteReport {
                bytes: 0,
                objects: 0,
                growth: None,
                trend: "new",
                frames,
            });
            e.bytes += b.inuse_bytes;
            e.objects += b.inuse_objects;
        }
        let mut sites: Vec<(Vec<SourceLine>, GoHeapSiteReport)> = merged.into_iter().collect();
        sites.sort_by_key(|(_, s)| std::cmp::Reverse(s.bytes));
        if let Some(gc_count) = process.gc_count() {
            let amounts: Vec<_> = sites.iter().map(|(k, s)| (k.clone(), s.bytes)).collect();
            for ((growth, trend), (_, s)) in self
                .site_trends
                .observe(gc_count, &amounts)
                .into_iter()
                .zip(sites.iter_mut())
            {
                s.growth = growth;
                s.trend = trend;
            }
        }
        let mut sites: Vec<GoHeapSiteReport> = sites.into_iter().map(|(_, s)| s).collect();
        sites.truncate(self.top);
        Ok(Some(sites))
    }

    fn profiling_off(&self) -> String {
        match self.memprofile_outcome {
            Some(Outcome::OffByChoice) => {
                "no Go heap by allocation stack: the program set runtime.MemProfileRate \
                 to 0 itself (--go-memprofile left it alone)"
                    .into()
            }
            _ => "no Go heap by allocation stack: the runtime's memory profiling is off \
                  (runtime.MemProfileRate is 0; the Go linker turns it off in programs \
                  that never use runtime/pprof); --go-memprofile turns it on"
                .into(),
        }
    }
}

/// MemStats out of process, with the process's threads and RSS.
pub fn mem_stats(process: &mut GoProcess, notes: &mut Vec<String>) -> Option<MemStats> {
    let read = process
        .open_runtime()
        .and_then(|r| r.mem_stats().map_err(|e| e.to_string()));
    match read {
        Ok(mut m) => {
            (m.os_threads, m.rss_bytes) = process.threads_and_rss();
            Some(m)
        }
        Err(e) => {
            notes.push(format!("no MemStats: {e}"));
            None
        }
    }
}

/// A profile stack from the allocating function: the runtime's malloc and
/// map internals first are the same for every site.
fn from_allocating_function(all: Vec<Frame>) -> Vec<Frame> {
    let internal = |f: &Frame| {
        f.symbol
            .as_deref()
            .is_some_and(|s| s.starts_with("runtime.") || s.starts_with("internal/runtime/"))
    };
    match all.iter().position(|f| !internal(f)) {
        Some(i) => all[i..].to_vec(),
        None => all, // the runtime's own allocations
    }
}

fn say_memprofile(pid: u32, rate: u64, outcome: Outcome) {
    let which = match rate {
        GO_DEFAULT_RATE => " (Go's default)",
        1 => " (every allocation)",
        _ => "",
    };
    match outcome {
        Outcome::TurnedOn => eprintln!(
            "leaktrace: --go-memprofile: wrote runtime.MemProfileRate = {rate}{which} into pid {pid}, where the linker had turned heap profiling off; heap by allocation stack builds up from now on, over objects allocated from now on"
        ),
        Outcome::AlreadyOn(rate) => eprintln!(
            "leaktrace: --go-memprofile: pid {pid} already profiles its heap (runtime.MemProfileRate = {rate}); nothing written"
        ),
        Outcome::OffByChoice => eprintln!(
            "leaktrace: --go-memprofile: pid {pid} set runtime.MemProfileRate to 0 itself; left alone"
        ),
        Outcome::NotStarted => {}
    }
}
