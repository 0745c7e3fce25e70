//! The goroutines of the Go section: those created since attach and alive
//! past the threshold (from the probes' table), and the census of those
//! that already existed at attach (from the runtime's list).

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
    time::Duration,
};

use super::{
    goroutine_table::{GoroutineCollector, GoroutineSnapshot},
    CensusSiteReport, GoroutineSiteReport,
};
use crate::{
    collect::stacks::Stacks,
    golang::runtime::{process::GoProcess, GoroutineInfo},
    probes::maps::GoroutineTable,
    report::aggregate::{GrowthTracker, Trend},
    symbolize::{Frame, Symbolizer, SymbolizerGone},
};

pub struct Goroutines {
    collector: Option<GoroutineCollector>,
    /// Whether the runtime's goroutine list can be found at all.
    census_possible: bool,
    /// Goids of the goroutines alive when the census was taken, once the
    /// probes were in (None: not taken yet). Goroutines created between the
    /// probes going in and the census are in it too: each report leaves out
    /// those the probes recorded.
    before_attach: Option<HashSet<u64>>,
    last_census: Option<Vec<CensusSiteReport>>,
    growth: GrowthTracker<GoroutineSiteReport>,
    top: usize,
}

/// The sites of goroutines created since attach: the top ones, and all.
pub struct SinceAttach {
    pub top: Vec<GoroutineSiteReport>,
    pub all: Vec<GoroutineSiteReport>,
}

impl Goroutines {
    /// Takes the census of the goroutines that already exist (none for a
    /// command we start, `launched`). `table` is the probes' goroutine
    /// table (absent when the goroutine probes are not loaded).
    pub fn new(
        process: &mut GoProcess,
        table: Option<Rc<GoroutineTable>>,
        older_than: Duration,
        max_goroutines: u32,
        launched: bool,
        top: usize,
        notes: &mut Vec<String>,
    ) -> Self {
        let collector =
            table.map(|m| GoroutineCollector::new(m, process.pid, older_than, max_goroutines));
        let vars = &process.target.binary.vars;
        let census = vars.allgptr.is_some() && vars.allglen.is_some();
        let (census_possible, before_attach) = if !census {
            notes.push(
                "no census of goroutines from before attach: runtime.allgptr is neither in \
                 the symbol table nor found through the runtime's code"
                    .into(),
            );
            (false, None)
        } else if launched {
            (true, Some(HashSet::new()))
        } else {
            // On failure, retried at each report (and said there).
            (true, census_goids(process).ok())
        };
        Goroutines {
            collector,
            census_possible,
            before_attach,
            last_census: None,
            growth: GrowthTracker::default(),
            top,
        }
    }

    /// The probes' table as it stands.
    pub fn snapshot(&self, notes: &mut Vec<String>) -> GoroutineSnapshot {
        let Some(c) = &self.collector else {
            return GoroutineSnapshot::default();
        };
        match c.snapshot() {
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
        }
    }

    /// Goroutines created since attach, by site, with their creating stacks.
    pub async fn since_attach(
        &mut self,
        process: &mut GoProcess,
        snap: &GoroutineSnapshot,
        symbolizer: &Symbolizer,
        stacks: &mut Stacks,
    ) -> Result<SinceAttach, SymbolizerGone> {
        let groups: Vec<_> = snap
            .groups
            .iter()
            .filter(|g| !process.is_system(g.startpc))
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
            .map(|g| process.start_function(g.startpc))
            .collect();
        let mut all: Vec<GoroutineSiteReport> = groups
            .iter()
            .zip(&creating)
            .zip(starts)
            .map(|((g, stack), start)| GoroutineSiteReport {
                count: g.count,
                oldest: g.oldest,
                growth: None,
                trend: Trend::New,
                created_by: last_frame(&by_addr, g.gopc),
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
        self.growth.apply(&mut all);
        let mut top = all.clone();
        top.truncate(self.top);
        Ok(SinceAttach { top, all })
    }

    /// The last census taken (for the report after the target exited).
    pub fn last_census(&self) -> Option<Vec<CensusSiteReport>> {
        self.last_census.clone()
    }

    /// Goroutines from before attach still alive, by site.
    pub async fn census(
        &mut self,
        process: &mut GoProcess,
        notes: &mut Vec<String>,
        symbolizer: &Symbolizer,
        snap: &GoroutineSnapshot,
    ) -> Result<Option<Vec<CensusSiteReport>>, SymbolizerGone> {
        if !self.census_possible {
            return Ok(None); // said once, at start
        }
        let goids = match self.before_attach.take() {
            Some(goids) => goids,
            // Not taken at attach: taking it now is as good, since what the
            // probes recorded is left out below.
            None => match census_goids(process) {
                Ok(goids) => goids,
                Err(e) => {
                    notes.push(format!(
                        "no census of goroutines from before attach yet: {e}"
                    ));
                    return Ok(None);
                }
            },
        };
        let goids = self.before_attach.insert(goids);
        let listed = match process.goroutines() {
            Ok(list) => list,
            Err(e) => {
                notes.push(format!("goroutine census not refreshed: {e}"));
                return Ok(self.last_census.clone());
            }
        };
        let mut alive: Vec<GoroutineInfo> = listed
            .into_iter()
            .filter(|g| goids.contains(&g.goid))
            .collect();
        // Created after the probes went in, before the census was read: in
        // the probes' table, so counted among those created since attach.
        let recorded = recorded_by_probes(
            self.collector.as_ref(),
            alive.iter().map(|g| g.goid),
            snap,
            notes,
        );
        if !recorded.is_empty() {
            alive.retain(|g| !recorded.contains(&g.goid));
            goids.retain(|goid| !recorded.contains(goid));
        }
        alive.retain(|g| !process.is_system(g.startpc));
        let mut out = census_sites(process, &alive, symbolizer).await?;
        out.truncate(self.top);
        self.last_census = Some(out.clone());
        Ok(Some(out))
    }
}

fn census_goids(process: &mut GoProcess) -> Result<HashSet<u64>, String> {
    Ok(process.goroutines()?.into_iter().map(|g| g.goid).collect())
}

/// Census goroutines grouped by site, most first.
async fn census_sites(
    process: &mut GoProcess,
    alive: &[GoroutineInfo],
    symbolizer: &Symbolizer,
) -> Result<Vec<CensusSiteReport>, SymbolizerGone> {
    // (gopc, startpc) → (count, per-state counts, earliest waitsince).
    type Group = (u64, HashMap<String, u64>, Option<u64>);
    let mut groups: HashMap<(u64, u64), Group> = HashMap::new();
    for g in alive {
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
        .map(|k| (k.1, process.start_function(k.1)))
        .collect();
    let mut out: Vec<CensusSiteReport> = groups
        .into_iter()
        .map(|((gopc, startpc), (count, states, since))| {
            let mut states: Vec<(String, u64)> = states.into_iter().collect();
            states.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            CensusSiteReport {
                count,
                created_by: last_frame(&by_addr, gopc),
                start: starts.get(&startpc).cloned().flatten(),
                states,
                longest_blocked: since.map(|t| Duration::from_nanos(now_ns.saturating_sub(t))),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.created_by.symbol.cmp(&b.created_by.symbol))
    });
    Ok(out)
}

/// Which of `goids` (census goroutines still alive) the probes recorded:
/// created after the probes went in, so reported as created since
/// attach. Looked up one by one only when the table walk may have
/// missed some.
fn recorded_by_probes(
    collector: Option<&GoroutineCollector>,
    goids: impl Iterator<Item = u64>,
    snap: &GoroutineSnapshot,
    notes: &mut Vec<String>,
) -> HashSet<u64> {
    let Some(collector) = collector else {
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

/// The innermost frame symbolized at `addr` (a `go` statement's).
pub fn last_frame(by_addr: &HashMap<u64, Vec<Frame>>, addr: u64) -> Frame {
    by_addr
        .get(&addr)
        .and_then(|f| f.last().cloned())
        .unwrap_or_else(|| Frame::unknown(addr))
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
