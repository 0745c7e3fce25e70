//! Building the Go section of each report: goroutines alive past the threshold by
//! creation site, the census of goroutines that existed before attach, and
//! the live heap after GC.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
    rc::Rc,
    time::Duration,
};

use super::heap::SiteTrends;
use super::leakcheck::LeakCheck;
use super::memprofile::{Outcome, Switch, GO_DEFAULT_RATE};
use super::memstats::MemStats;
use super::{
    goroutines::{GoroutineCollector, GoroutineSnapshot},
    heap::HeapTrend,
    runtime::{GoRuntime, GoroutineInfo},
    section::{
        CensusSiteReport, GoHeapReport, GoHeapSiteReport, GoReport, GoroutineSiteReport,
        ProvenLeakSite,
    },
    GoTarget,
};
use crate::{
    collect::stacks::Stacks,
    probes::maps::GoroutineTable,
    process::procfs,
    report::aggregate::{GrowthTracker, Trend},
    symbolize::{Frame, Symbolizer, SymbolizerGone},
};

/// Function and line: what makes two profile stacks the same for a reader.
type SourceLine = (Option<String>, Option<u32>);

pub struct GoTracker {
    pid: u32,
    target: GoTarget,
    runtime: Option<GoRuntime>,
    collector: Option<GoroutineCollector>,
    /// Whether the runtime's goroutine list can be found at all.
    census_possible: bool,
    /// Goids of the goroutines alive when the census was taken, once the
    /// probes were in (None: not taken yet). Goroutines created between the
    /// probes going in and the census are in it too: each report leaves out
    /// those the probes recorded.
    before_attach: Option<HashSet<u64>>,
    last_census: Option<Vec<CensusSiteReport>>,
    heap: HeapTrend,
    growth: GrowthTracker<GoroutineSiteReport>,
    notes: Vec<String>,
    top: usize,
    /// The executable, kept open to read wrapper code even after exit.
    exe: Option<File>,
    start_names: HashMap<u64, Option<String>>,
    /// `--go-memprofile`: the switch, until it has been thrown (or found
    /// not to need it).
    memprofile: Option<Switch>,
    /// What `--go-memprofile` did, for the notes.
    memprofile_outcome: Option<Outcome>,
    /// Trends of the heap profile's sites across GCs.
    site_trends: SiteTrends<Vec<SourceLine>>,
    /// `--go-leak-check`: the detector's trigger (or why there is none),
    /// and the GC count when it was last armed.
    leak_check: Option<Result<LeakCheck, String>>,
    leak_check_armed_at: Option<u32>,
    leak_check_ran: bool,
    /// What was last read out of the process, for the report after it
    /// exited (an OOM kill above all: the state it died in).
    last_read: LastRead,
}

/// The out-of-process readings of the last report that had them.
#[derive(Default)]
struct LastRead {
    at: Option<std::time::Instant>,
    heap: Option<GoHeapReport>,
    heap_profile: Option<Vec<GoHeapSiteReport>>,
    memstats: Option<super::memstats::MemStats>,
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
        let collector =
            goroutines.map(|m| GoroutineCollector::new(m, pid, older_than, max_goroutines));
        let mut t = GoTracker {
            pid,
            target,
            runtime: None,
            collector,
            census_possible: false,
            before_attach: None,
            last_census: None,
            heap: HeapTrend::default(),
            growth: GrowthTracker::default(),
            notes: Vec::new(),
            top,
            exe: None,
            start_names: HashMap::new(),
            memprofile: None,
            memprofile_outcome: None,
            site_trends: SiteTrends::default(),
            leak_check: None,
            leak_check_armed_at: None,
            leak_check_ran: false,
            last_read: LastRead::default(),
        };
        t.exe = File::open(&t.target.path).ok();
        let vars = &t.target.binary.vars;
        let census = vars.allgptr.is_some() && vars.allglen.is_some();
        let heap = vars.gc_controller.is_some() && vars.memstats.is_some();
        let profile = vars.mbuckets.is_some() && vars.mem_profile_rate.is_some();
        if !census {
            t.notes.push(
                "no census of goroutines from before attach: runtime.allgptr is neither in \
                 the symbol table nor found through the runtime's code"
                    .into(),
            );
        } else if launched {
            t.census_possible = true;
            t.before_attach = Some(HashSet::new());
        } else {
            t.census_possible = true;
            // On failure, retried at each report (and said there).
            t.before_attach = t.census_goids().ok();
        }
        if !heap {
            t.notes.push(
                "no Go heap figures: runtime.gcController and runtime.memstats are neither in \
                 the symbol table nor found through the runtime's code"
                    .into(),
            );
        }
        if !profile {
            t.notes.push(
                "no Go heap by allocation stack: runtime.mbuckets and runtime.MemProfileRate \
                 are neither in the symbol table nor found through the runtime's code"
                    .into(),
            );
        }
        t
    }

    /// `--go-memprofile`: turns the runtime's heap profiling on if the
    /// linker had it off, now if the runtime is up, else at a later report.
    pub fn with_memprofile(mut self, switch: Switch) -> Self {
        self.memprofile = Some(switch);
        self.try_memprofile();
        self
    }

    /// `--go-leak-check`: arms the runtime's goroutine leak detector now
    /// (and again after each run), where the Go version has one.
    pub fn with_leak_check(mut self) -> Self {
        self.leak_check = Some(LeakCheck::of(&self.target));
        self.arm_leak_check();
        match &self.leak_check {
            Some(Ok(_)) => eprintln!(
                "leaktrace: --go-leak-check: set runtime.work.goroutineLeak.pending in pid {}: the \
                 target's next GC runs the runtime's goroutine leak detector (and again after each \
                 run)",
                self.pid
            ),
            Some(Err(why)) => eprintln!("leaktrace: {why}"),
            None => {}
        }
        self
    }

    fn arm_leak_check(&mut self) {
        let Some(Ok(check)) = self.leak_check else {
            return;
        };
        let Some(bias) = load_bias(self.pid, &self.target) else {
            return;
        };
        let gc = self
            .runtime()
            .and_then(|r| r.heap().ok())
            .map(|h| h.gc_count);
        match check.arm(self.pid, bias) {
            Ok(()) => self.leak_check_armed_at = gc,
            Err(e) => {
                self.leak_check = Some(Err(format!(
                    "--go-leak-check: cannot write into pid {}: {e}",
                    self.pid
                )))
            }
        }
    }

    /// MemStats out of process, with the process's threads and RSS.
    fn mem_stats(&mut self, notes: &mut Vec<String>) -> Option<MemStats> {
        let pid = self.pid;
        let runtime = match self.open_runtime() {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!("no MemStats: {e}"));
                return None;
            }
        };
        match runtime.mem_stats() {
            Ok(mut m) => {
                m.os_threads = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| d.count() as u64)
                    .unwrap_or(0);
                m.rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| {
                                v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                            })
                    })
                    .map_or(0, |kb| kb * 1024);
                Some(m)
            }
            Err(e) => {
                notes.push(format!("no MemStats: {e}"));
                None
            }
        }
    }

    /// Goroutines the detector proved leaked, once a GC ran it.
    async fn proven_leaked(
        &mut self,
        notes: &mut Vec<String>,
        symbolizer: &Symbolizer,
    ) -> Result<Option<Vec<ProvenLeakSite>>, SymbolizerGone> {
        match &self.leak_check {
            None => return Ok(None),
            Some(Err(why)) => {
                notes.push(why.clone());
                return Ok(None);
            }
            Some(Ok(_)) => {}
        }
        let gc = self
            .runtime()
            .and_then(|r| r.heap().ok())
            .map(|h| h.gc_count);
        if let (Some(armed), Some(now)) = (self.leak_check_armed_at, gc) {
            if now != armed {
                self.leak_check_ran = true;
                // Leaks since then are found at the next run.
                self.arm_leak_check();
            }
        }
        if !self.leak_check_ran {
            notes.push(
                "--go-leak-check: the runtime's leak detector has not run yet (it runs at the \
                 target's next GC)"
                    .into(),
            );
            return Ok(None);
        }
        let all = match self
            .open_runtime()
            .and_then(|r| r.goroutines().map_err(|e| e.to_string()))
        {
            Ok(all) => all,
            Err(e) => {
                notes.push(format!("--go-leak-check: goroutines not read: {e}"));
                return Ok(None);
            }
        };
        let bias = self.bias();
        let mut groups: HashMap<(u64, u64), u64> = HashMap::new();
        for g in all.iter().filter(|g| g.leaked) {
            *groups.entry((g.gopc, g.startpc)).or_default() += 1;
        }
        let by_addr = symbolizer
            .symbolize_set(groups.keys().map(|k| k.0), true)
            .await?;
        let mut sites: Vec<ProvenLeakSite> = groups
            .into_iter()
            .map(|((gopc, startpc), count)| ProvenLeakSite {
                count,
                created_by: by_addr
                    .get(&gopc)
                    .and_then(|f| f.last().cloned())
                    .unwrap_or_else(|| Frame::unknown(gopc)),
                start: self.start_function(startpc, bias),
            })
            .collect();
        sites.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.created_by.symbol.cmp(&b.created_by.symbol))
        });
        Ok(Some(sites))
    }

    fn try_memprofile(&mut self) {
        let Some(switch) = self.memprofile else {
            return;
        };
        let Some(bias) = load_bias(self.pid, &self.target) else {
            return; // not exec'd yet
        };
        match switch.turn_on(self.pid, bias) {
            Ok(Outcome::NotStarted) => {}
            Ok(outcome) => {
                self.memprofile = None;
                self.memprofile_outcome = Some(outcome);
                let pid = self.pid;
                let rate = switch.write_rate;
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
            Err(e) => {
                self.memprofile = None;
                eprintln!(
                    "leaktrace: --go-memprofile: cannot write into pid {}: {e}",
                    self.pid
                );
            }
        }
    }

    /// Opens the target's memory once its executable is mapped.
    fn open_runtime(&mut self) -> Result<&mut GoRuntime, String> {
        if self.runtime.is_none() {
            let bias = load_bias(self.pid, &self.target).ok_or_else(|| {
                format!(
                    "the executable {} is not in /proc/{}/maps",
                    self.target.display, self.pid
                )
            })?;
            let runtime = GoRuntime::open(self.pid, self.target.binary.clone(), bias)
                .map_err(|e| format!("cannot open /proc/{}/mem: {e}", self.pid))?;
            self.runtime = Some(runtime);
        }
        Ok(self.runtime.as_mut().expect("just opened"))
    }

    fn runtime(&mut self) -> Option<&mut GoRuntime> {
        self.open_runtime().ok()
    }

    fn census_goids(&mut self) -> Result<HashSet<u64>, String> {
        let all = self
            .open_runtime()?
            .goroutines()
            .map_err(|e| e.to_string())?;
        Ok(all.into_iter().map(|g| g.goid).collect())
    }

    /// Which of `goids` (census goroutines still alive) the probes recorded:
    /// created after the probes went in, so reported as created since
    /// attach. Looked up one by one only when the table walk may have
    /// missed some.
    fn recorded_by_probes(
        &self,
        goids: impl Iterator<Item = u64>,
        snap: &GoroutineSnapshot,
        notes: &mut Vec<String>,
    ) -> HashSet<u64> {
        let Some(collector) = &self.collector else {
            return HashSet::new();
        };
        let mut failed = None;
        let recorded = goids
            .filter(|goid| {
                if snap.goids.contains(goid) {
                    return true;
                }
                if snap.complete || failed.is_some() {
                    return false;
                }
                collector.contains(*goid).unwrap_or_else(|e| {
                    failed = Some(e);
                    false
                })
            })
            .collect();
        if let Some(e) = failed {
            notes.push(format!(
                "goroutines from before attach may include some created just after: the \
                 goroutine table could not be read ({e})"
            ));
        }
        recorded
    }

    /// Whether a goroutine's function belongs to the runtime itself (GC
    /// workers, finalizers, and the main goroutine, which lives as long as
    /// the program), which is never a leak.
    fn is_system(&self, startpc_vaddr: u64) -> bool {
        self.target
            .binary
            .symbolize(startpc_vaddr)
            .last()
            .is_some_and(|f| f.function.starts_with("runtime."))
    }

    /// The function a goroutine runs, from its start PC; a compiler
    /// wrapper for `go f(args)` is seen through to `f`.
    fn start_function(&mut self, startpc: u64, bias: u64) -> Option<String> {
        let vaddr = startpc.wrapping_sub(bias);
        if let Some(name) = self.start_names.get(&vaddr) {
            return name.clone();
        }
        let bin = &self.target.binary;
        let name = bin.symbolize(vaddr).pop().map(|f| f.function);
        let resolved = name.map(|n| {
            if !bin.is_go_statement_wrapper(&n) {
                return n;
            }
            let code = bin.function(&n).and_then(|(entry, end)| {
                let off = bin.vaddr_to_file_offset(entry)?;
                let mut code = vec![0u8; end.checked_sub(entry)? as usize];
                self.exe.as_ref()?.read_exact_at(&mut code, off).ok()?;
                Some((code, entry))
            });
            code.and_then(|(code, entry)| bin.wrapped_function(&code, entry))
                .unwrap_or(n)
        });
        self.start_names.insert(vaddr, resolved.clone());
        resolved
    }

    fn bias(&self) -> u64 {
        load_bias(self.pid, &self.target).unwrap_or(0)
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
            self.try_memprofile();
        }
        let mut notes = self.notes.clone();
        let bias = self.bias();
        let snap = match &self.collector {
            Some(c) => match c.snapshot() {
                Ok(snap) => {
                    if !snap.complete {
                        notes.push(
                            "the goroutine table changed too fast to be walked to its end: \
                             goroutines created since attach may be undercounted"
                                .into(),
                        );
                    }
                    snap
                }
                Err(e) => {
                    notes.push(format!("cannot read the goroutine table: {e}"));
                    GoroutineSnapshot::default()
                }
            },
            None => GoroutineSnapshot::default(),
        };
        let groups: Vec<_> = snap
            .groups
            .iter()
            .filter(|g| !self.is_system(g.startpc.wrapping_sub(bias)))
            .take(self.top.saturating_mul(4).max(64))
            .collect();
        let creating: Vec<Vec<u64>> = groups
            .iter()
            .map(|g| stacks.frames(0, g.stack_id))
            .collect();
        let by_addr = symbolizer
            .symbolize_set(
                creating
                    .iter()
                    .flatten()
                    .copied()
                    .chain(groups.iter().map(|g| g.gopc)),
                true,
            )
            .await?;
        let starts: Vec<Option<String>> = groups
            .iter()
            .map(|g| g.startpc)
            .collect::<Vec<_>>()
            .into_iter()
            .map(|pc| self.start_function(pc, bias))
            .collect();
        let frame_of = |addr: u64| -> Frame {
            by_addr
                .get(&addr)
                .and_then(|f| f.last().cloned())
                .unwrap_or_else(|| Frame::unknown(addr))
        };
        let mut goroutines: Vec<GoroutineSiteReport> = groups
            .iter()
            .zip(&creating)
            .zip(starts)
            .map(|((g, stack), start)| GoroutineSiteReport {
                count: g.count,
                oldest: g.oldest,
                growth: None,
                trend: Trend::New,
                created_by: frame_of(g.gopc),
                start,
                frames: creating_stack(
                    stack
                        .iter()
                        .flat_map(|a| by_addr.get(a).cloned().unwrap_or_default())
                        .collect(),
                    g.gopc,
                    &by_addr,
                ),
            })
            .collect();
        self.growth.apply(&mut goroutines);
        let all_goroutines = goroutines.clone();
        goroutines.truncate(self.top);

        let (before_attach, heap, heap_profile, proven_leaked, memstats) = if target_exited {
            let last = &self.last_read;
            if let Some(at) = last.at {
                notes.push(format!(
                    "the target has exited: its Go heap, heap profile and MemStats are as read \
                     {} before",
                    crate::report::human_duration(at.elapsed())
                ));
            }
            (
                self.last_census.clone(),
                last.heap.clone(),
                last.heap_profile.clone(),
                None,
                last.memstats,
            )
        } else {
            let before_attach = self.census(&mut notes, symbolizer, &snap).await?;
            let heap = self.heap_reading(&mut notes);
            let heap_profile = self.heap_profile(&mut notes, symbolizer).await?;
            let proven_leaked = self.proven_leaked(&mut notes, symbolizer).await?;
            let memstats = self.mem_stats(&mut notes);
            let last = &mut self.last_read;
            last.at = Some(std::time::Instant::now());
            last.heap = heap.clone().or(last.heap.take());
            last.heap_profile = heap_profile.clone().or(last.heap_profile.take());
            last.memstats = memstats.or(last.memstats);
            (before_attach, heap, heap_profile, proven_leaked, memstats)
        };
        Ok(GoReport {
            version: self.target.binary.version.clone(),
            goroutines_live: snap.live,
            goroutines,
            all_goroutines,
            before_attach,
            heap,
            heap_profile,
            memstats,
            proven_leaked,
            notes,
        })
    }

    async fn heap_profile(
        &mut self,
        notes: &mut Vec<String>,
        symbolizer: &Symbolizer,
    ) -> Result<Option<Vec<GoHeapSiteReport>>, SymbolizerGone> {
        let vars = &self.target.binary.vars;
        if vars.mbuckets.is_none() || vars.mem_profile_rate.is_none() {
            return Ok(None); // said once, at start
        }
        let Some(runtime) = self.runtime() else {
            return Ok(None);
        };
        let buckets = match runtime.mem_profile_rate() {
            Ok(0) => {
                notes.push(match self.memprofile_outcome {
                    Some(Outcome::OffByChoice) => {
                        "no Go heap by allocation stack: the program set runtime.MemProfileRate \
                         to 0 itself (--go-memprofile left it alone)"
                            .into()
                    }
                    _ => "no Go heap by allocation stack: the runtime's memory profiling is off \
                          (runtime.MemProfileRate is 0; the Go linker turns it off in programs \
                          that never use runtime/pprof); --go-memprofile turns it on"
                        .into(),
                });
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
            // From the allocating function: the runtime's malloc and map
            // internals first are the same for every site.
            let internal = |f: &Frame| {
                f.symbol.as_deref().is_some_and(|s| {
                    s.starts_with("runtime.") || s.starts_with("internal/runtime/")
                })
            };
            let frames = match all.iter().position(|f| !internal(f)) {
                Some(i) => all[i..].to_vec(),
                None => all, // the runtime's own allocations
            };
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
        if let Some(gc_count) = self
            .runtime()
            .and_then(|r| r.heap().ok())
            .map(|h| h.gc_count)
        {
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

    async fn census(
        &mut self,
        notes: &mut Vec<String>,
        symbolizer: &Symbolizer,
        snap: &GoroutineSnapshot,
    ) -> Result<Option<Vec<CensusSiteReport>>, SymbolizerGone> {
        if !self.census_possible {
            return Ok(None); // said once, at start
        }
        if self.before_attach.is_none() {
            // Not taken at attach: taking it now is as good, since what the
            // probes recorded is left out below.
            match self.census_goids() {
                Ok(goids) => self.before_attach = Some(goids),
                Err(e) => {
                    notes.push(format!(
                        "no census of goroutines from before attach yet: {e}"
                    ));
                    return Ok(None);
                }
            }
        }
        let bias = self.bias();
        let listed = match self
            .open_runtime()
            .and_then(|r| r.goroutines().map_err(|e| e.to_string()))
        {
            Ok(list) => list,
            Err(e) => {
                notes.push(format!("goroutine census not refreshed: {e}"));
                return Ok(self.last_census.clone());
            }
        };
        let goids = self.before_attach.as_ref().expect("taken above");
        let mut alive: Vec<GoroutineInfo> = listed
            .into_iter()
            .filter(|g| goids.contains(&g.goid))
            .collect();
        // Created after the probes went in, before the census was read: in
        // the probes' table, so counted among those created since attach.
        let recorded = self.recorded_by_probes(alive.iter().map(|g| g.goid), snap, notes);
        if !recorded.is_empty() {
            alive.retain(|g| !recorded.contains(&g.goid));
            if let Some(goids) = &mut self.before_attach {
                goids.retain(|goid| !recorded.contains(goid));
            }
        }
        alive.retain(|g| !self.is_system(g.startpc.wrapping_sub(bias)));
        // (gopc, startpc) → (count, per-state counts, earliest waitsince).
        type Group = (u64, HashMap<String, u64>, Option<u64>);
        let mut groups: HashMap<(u64, u64), Group> = HashMap::new();
        for g in &alive {
            let e = groups.entry((g.gopc, g.startpc)).or_default();
            e.0 += 1;
            *e.1.entry(g.state.clone()).or_default() += 1;
            if let Some(t) = g.waiting_since_ns {
                e.2 = Some(e.2.map_or(t, |m: u64| m.min(t)));
            }
        }
        let now_ns = crate::collect::monotonic_ns();
        let by_addr = symbolizer
            .symbolize_set(groups.keys().map(|k| k.0), true)
            .await?;
        let starts: HashMap<u64, Option<String>> = groups
            .keys()
            .map(|k| k.1)
            .collect::<Vec<_>>()
            .into_iter()
            .map(|pc| (pc, self.start_function(pc, bias)))
            .collect();
        let mut out: Vec<CensusSiteReport> = groups
            .into_iter()
            .map(|((gopc, startpc), (count, states, since))| {
                let mut states: Vec<(String, u64)> = states.into_iter().collect();
                states.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                CensusSiteReport {
                    count,
                    created_by: by_addr
                        .get(&gopc)
                        .and_then(|f| f.last().cloned())
                        .unwrap_or_else(|| Frame::unknown(gopc)),
                    start: starts.get(&startpc).cloned().flatten(),
                    states,
                    longest_blocked: since
                        .map(|t| std::time::Duration::from_nanos(now_ns.saturating_sub(t))),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.created_by.symbol.cmp(&b.created_by.symbol))
        });
        out.truncate(self.top);
        self.last_census = Some(out.clone());
        Ok(Some(out))
    }

    fn heap_reading(&mut self, notes: &mut Vec<String>) -> Option<GoHeapReport> {
        let vars = &self.target.binary.vars;
        if vars.gc_controller.is_none() || vars.memstats.is_none() {
            return None;
        }
        let reading = match self.runtime()?.heap() {
            Ok(r) => r,
            Err(e) => {
                notes.push(format!("Go heap not read: {e}"));
                return None;
            }
        };
        Some(self.heap.observe(reading))
    }
}

/// The creating stack starts deep in the runtime (newproc1 runs on the
/// system stack): show it from the `go` statement's function outwards.
fn creating_stack(frames: Vec<Frame>, gopc: u64, by_addr: &HashMap<u64, Vec<Frame>>) -> Vec<Frame> {
    let creator = by_addr
        .get(&gopc)
        .and_then(|f| f.last())
        .and_then(|f| f.symbol.clone());
    match creator.and_then(|c| frames.iter().position(|f| f.symbol.as_deref() == Some(&c))) {
        Some(i) => frames[i..].to_vec(),
        None => frames,
    }
}

/// Where the executable is loaded relative to its link-time addresses
/// (0 unless PIE), from its mapping in /proc/PID/maps.
fn load_bias(pid: u32, target: &GoTarget) -> Option<u64> {
    let maps = procfs::read_maps(pid).ok()?;
    maps.iter()
        .filter(|m| m.inode == target.inode && m.path.is_some())
        .find_map(|m| {
            let vaddr = target.binary.file_offset_to_vaddr(m.file_offset)?;
            Some(m.start.wrapping_sub(vaddr))
        })
}
