//! Building one report from what was collected: the largest sites
//! symbolized, sites with the same symbolized stack merged, growth and
//! trend since earlier reports, top N; threads and the Go section likewise.

use super::ReportKind;
use crate::golang::GoReport;
use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use tracer_common::STACK_UNKNOWN;

use super::{
    aggregate::{self, GrowthTracker, Trend},
    reachability, ExistingThreadReport, Report, SiteReport, ThreadSiteReport,
};
use crate::{
    collect::{stacks::Stacks, tasks::TaskCollector, tasks::TaskKind, SiteId, Snapshot},
    golang::GoTracker,
    process::{
        allocator::Allocator,
        container::ContainerInfo,
        memcg::{MemoryCgroup, MemoryCgroupReading},
    },
    reach::Scan,
    report::{
        profiles::Profiles,
        suppressions::{Suppressed, Suppressions},
    },
    symbolize::Symbolizer,
};

/// How many of the largest sites are symbolized per report, so that sites
/// merging into one stack (see [`aggregate`]) still rank correctly.
fn symbolized_sites(top: usize) -> usize {
    top.saturating_mul(4).max(64)
}

/// The traced process, as every report names it.
pub struct Subject {
    pub pid: u32,
    pub comm: String,
    pub container: ContainerInfo,
    /// Its C allocator (none for a pure Go program).
    pub allocator: Allocator,
}

/// Builds reports from snapshots: symbolization, merging, top-N, growth.
pub struct ReportBuilder {
    subject: Subject,
    top: usize,
    older_than: Duration,
    start: Instant,
    seq: u64,
    growth: GrowthTracker<SiteReport>,
    thread_growth: GrowthTracker<ThreadSiteReport>,
    stacks: Stacks,
    tasks: TaskCollector,
    go: Option<GoTracker>,
    /// Whether reports carry [`Profiles`] for the exports.
    profiles: bool,
    suppressions: Option<Suppressions>,
    memory_cgroup: Option<MemoryCgroup>,
    /// The last reading: an engine removes the cgroup soon after its
    /// container died, and the final report still says what it was.
    last_memory_cgroup: Option<MemoryCgroupReading>,
    /// With --reachability: the scan the next report tells of.
    scan: Option<Scan>,
    /// Definitely lost bytes at the last complete scan.
    last_definitely_lost: Option<u64>,
}

impl ReportBuilder {
    pub fn new(
        subject: Subject,
        top: usize,
        older_than: Duration,
        start: Instant,
        stacks: Stacks,
        tasks: TaskCollector,
        go: Option<GoTracker>,
    ) -> Self {
        ReportBuilder {
            memory_cgroup: MemoryCgroup::of(subject.pid),
            last_memory_cgroup: None,
            scan: None,
            last_definitely_lost: None,
            subject,
            top,
            older_than,
            start,
            seq: 0,
            growth: GrowthTracker::default(),
            thread_growth: GrowthTracker::default(),
            stacks,
            tasks,
            go,
            profiles: false,
            suppressions: None,
        }
    }

    /// Sites matching `rules` are left out of reports (and profiles), and
    /// counted.
    pub fn with_suppressions(mut self, rules: Suppressions) -> Self {
        self.suppressions = Some(rules);
        self
    }

    /// Reports carry the whole reading ([`Report::profiles`]) for pprof,
    /// flame graphs and the live endpoint.
    pub fn with_profiles(mut self) -> Self {
        self.profiles = true;
        self
    }

    /// The engine's names for the target's container, on every report
    /// from now on.
    pub fn set_container_labels(&mut self, labels: crate::process::engine::ContainerLabels) {
        self.subject.container.labels = Some(labels);
    }

    /// The next report tells of `scan`.
    pub fn set_scan(&mut self, scan: Scan) {
        self.scan = Some(scan);
    }

    /// The scan the next report tells of was made as the program called
    /// `_exit`.
    pub fn mark_scan_at_exit(&mut self) {
        if let Some(s) = &mut self.scan {
            s.at_exit = true;
        }
    }

    /// Reports built so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next report, from `snap` and the other tables as they are now.
    pub async fn build(
        &mut self,
        symbolizer: &Symbolizer,
        snap: Snapshot,
        kind: ReportKind,
    ) -> anyhow::Result<Report> {
        let (final_report, target_exited) = (kind.is_final(), kind.target_exited());
        self.seq += 1;
        let tasks = self.tasks.snapshot().context("reading the task table")?;
        let considered = &snap.sites[..snap.sites.len().min(symbolized_sites(self.top))];
        let heap_stacks: Vec<Vec<u64>> = considered
            .iter()
            .map(|s| self.stacks.frames(s.site.caller, s.site.stack_id))
            .collect();
        let task_stacks: Vec<Vec<u64>> = tasks
            .groups
            .iter()
            .map(|g| self.stacks.frames(g.caller, g.stack_id))
            .collect();
        let probe_ips: Vec<Option<u64>> = considered
            .iter()
            .map(|s| s.site.stack_id)
            .chain(tasks.groups.iter().map(|g| g.stack_id))
            .map(|id| self.stacks.probe_ip(id))
            .collect();

        let by_addr = symbolizer
            .symbolize_set(
                heap_stacks.iter().chain(&task_stacks).flatten().copied(),
                true,
            )
            .await?;
        let probe_by_ip = symbolizer
            .symbolize_set(probe_ips.iter().flatten().copied(), false)
            .await?;
        let symbolized = |stack: &[u64]| -> Vec<_> {
            stack
                .iter()
                .flat_map(|a| by_addr.get(a).cloned().unwrap_or_default())
                .collect()
        };
        // Which probed function a stack starts at, by its file location.
        let called = |ip: Option<u64>, names: &dyn Fn(&str, u64) -> Option<String>| {
            ip.and_then(|ip| probe_by_ip.get(&ip))
                .and_then(|f| f.last())
                .and_then(|f| f.location.as_ref())
                .and_then(|(path, off)| names(path, *off))
        };
        let allocator = &self.subject.allocator;
        let alloc_names = |p: &str, o: u64| allocator.names_at(p, o).map(str::to_string);
        let spawn_names = |p: &str, o: u64| allocator.spawn_at(p, o).map(str::to_string);

        let sites: Vec<SiteReport> = considered
            .iter()
            .zip(&heap_stacks)
            .zip(&probe_ips)
            .map(|((s, stack), ip)| SiteReport {
                bytes: s.bytes,
                blocks: s.blocks,
                oldest: s.oldest,
                growth: None,
                trend: Trend::New,
                allocator: called(*ip, &alloc_names),
                stack_lost: s.site.stack_id == STACK_UNKNOWN,
                cut_short: self
                    .stacks
                    .end(s.site.stack_id)
                    .filter(|e| e.is_cut_short()),
                frames: symbolized(stack),
            })
            .collect();
        let mut sites = aggregate::merge_identical(sites);
        let suppressed = self.suppress(&mut sites);
        self.growth.apply(&mut sites);
        let sites_total = sites.len() + (snap.sites.len() - considered.len());
        sites.truncate(self.top);

        let threads: Vec<ThreadSiteReport> = tasks
            .groups
            .iter()
            .zip(&task_stacks)
            .zip(&probe_ips[considered.len()..])
            .map(|((g, stack), ip)| ThreadSiteReport {
                kind: match g.kind {
                    TaskKind::Thread => "thread",
                    TaskKind::Process => "process",
                },
                count: g.count,
                oldest: g.oldest,
                growth: None,
                trend: Trend::New,
                stack_bytes: g.stack_bytes,
                spawned_by: called(*ip, &spawn_names),
                frames: symbolized(stack),
                cut_short: self.stacks.end(g.stack_id).filter(|e| e.is_cut_short()),
            })
            .collect();
        let mut threads = aggregate::merge_thread_sites(threads);
        self.thread_growth.apply(&mut threads);
        threads.truncate(self.top);
        let go = match &mut self.go {
            Some(t) => Some(
                t.report(symbolizer, &mut self.stacks, target_exited)
                    .await?,
            ),
            None => None,
        };
        // The scan at exit stays for the final report (a regular one may
        // fall between it and the exit).
        let scan = match &self.scan {
            Some(s) if s.at_exit => Some(s.clone()),
            _ => self.scan.take(),
        };
        let unreachable = scan.as_ref().and_then(Scan::unreachable_by_site);
        let reachability = match scan {
            Some(scan) => {
                let r = reachability::section(
                    scan,
                    &mut self.stacks,
                    symbolizer,
                    self.top,
                    self.last_definitely_lost,
                    self.go.is_some(),
                )
                .await?;
                if r.incomplete.is_none() {
                    self.last_definitely_lost = Some(r.totals[0].bytes);
                }
                Some(r)
            }
            None => None,
        };
        let profiles = match self.profiles {
            true => Some(
                self.profiles(symbolizer, &snap, go.as_ref(), unreachable.as_ref())
                    .await?,
            ),
            false => None,
        };

        if let Some(reading) = self.memory_cgroup.as_ref().and_then(MemoryCgroup::read) {
            self.last_memory_cgroup = Some(reading);
        }

        Ok(Report {
            seq: self.seq,
            final_report,
            timestamp: SystemTime::now(),
            elapsed: self.start.elapsed(),
            pid: self.subject.pid,
            comm: self.subject.comm.clone(),
            pid_in_container: self.subject.container.pid_inside,
            container_id: self.subject.container.id.clone(),
            container: self.subject.container.labels.clone(),
            older_than: self.older_than,
            heap_traced: !self.subject.allocator.objects.is_empty(),
            live_bytes: snap.live_bytes,
            live_blocks: snap.live_blocks,
            old_bytes: snap.sites.iter().map(|s| s.bytes).sum(),
            old_blocks: snap.sites.iter().map(|s| s.blocks).sum(),
            sites_total,
            sites,
            dropped: snap.dropped,
            threads,
            threads_before_attach: tasks
                .existing
                .into_iter()
                .map(|t| ExistingThreadReport {
                    tid: t.tid,
                    name: t.name,
                    age: t.age,
                })
                .collect(),
            go,
            target_exited,
            oom_killed: tasks.oom_killed,
            memory_cgroup: self.last_memory_cgroup.clone(),
            profiles,
            suppressed,
            container_processes: None,
            reachability,
            kernel: None,
        })
    }

    /// Takes the sites `--suppressions` names out of `sites`, counted.
    fn suppress(&self, sites: &mut Vec<SiteReport>) -> Option<Suppressed> {
        self.suppressions.as_ref().map(|rules| {
            let mut counted = Suppressed::default();
            sites.retain(|s| match rules.matching(&s.frames) {
                Some(rule) => {
                    counted.add(rule, s.blocks, s.bytes);
                    false
                }
                None => true,
            });
            // Rules in file order, as the user wrote them.
            counted
                .by_rule
                .sort_by_key(|(rule, _, _)| rules.patterns.iter().position(|p| p == rule));
            counted
        })
    }

    /// This report's pprof profiles.
    async fn profiles(
        &mut self,
        symbolizer: &Symbolizer,
        snap: &Snapshot,
        go: Option<&GoReport>,
        unreachable: Option<&HashMap<SiteId, (u64, u64)>>,
    ) -> anyhow::Result<Profiles> {
        let (heap, goroutines) = super::profiles::build(
            symbolizer,
            &mut self.stacks,
            snap,
            go,
            self.suppressions.as_ref(),
            unreachable,
        )
        .await?;
        Ok(Profiles {
            pid: self.subject.pid,
            container: self
                .subject
                .container
                .labels
                .as_ref()
                .map(|l| l.name.clone()),
            older_than: self.older_than,
            taken: SystemTime::now(),
            since_attach: self.start.elapsed(),
            heap,
            scanned: unreachable.is_some(),
            goroutines,
        })
    }
}
