//! Kernel memory (`--kernel`): what the kernel's allocators hold that the
//! traced processes (or anyone, for the whole kernel) made them allocate.
//! The probes (`tracer-ebpf/src/kmem.rs`) keep every outstanding block
//! with its kernel stack; here they are read whole at each report, grouped
//! into sites ([`sites`]), symbolized by `/proc/kallsyms` ([`kallsyms`])
//! and ranked.

mod gfp;
pub mod kallsyms;
mod merged;
mod sites;

use std::{collections::HashMap, os::fd::AsFd, time::Duration};

use aya::maps::IterableMap;
use tracer_common::{Counter, KmemBlock, KmemKey};

use crate::{
    collect::{batch, monotonic_ns, Dropped},
    probes::KmemMaps,
    report::{
        aggregate::GrowthTracker,
        kernel::{KernelDropped, KernelReport, KernelSite},
        suppressions::Suppressions,
    },
    symbolize::{Frame, Symbolizer},
};
use kallsyms::KernelSymbols;
pub use sites::{group, site_function};

/// What each report asks of the kernel-memory table.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub older_than: Duration,
    /// Sites to report (all go to the exports).
    pub top: usize,
    pub suppressions: Option<Suppressions>,
}

/// The kernel-memory tables and what reading them needs.
pub struct KernelMemory {
    maps: KmemMaps,
    symbols: KernelSymbols,
    /// Slab cache names by `struct kmem_cache *`, as the probes filed them.
    caches: HashMap<u64, String>,
    /// Per cache name, the other caches SLUB merged into it.
    merged: HashMap<String, Vec<String>>,
    /// Growth and trend per traced process (0: the whole kernel).
    growth: HashMap<u32, GrowthTracker<KernelSite>>,
    whole_kernel: bool,
}

/// One reading of the kernel block table.
pub struct KernelBlocks {
    blocks: Vec<KmemBlock>,
    now_ns: u64,
}

impl KernelMemory {
    pub fn new(maps: KmemMaps, whole_kernel: bool) -> Result<Self, kallsyms::KallsymsError> {
        Ok(KernelMemory {
            maps,
            symbols: KernelSymbols::load()?,
            caches: HashMap::new(),
            merged: HashMap::new(),
            growth: HashMap::new(),
            whole_kernel,
        })
    }

    /// Every outstanding block, now.
    pub fn read(&self) -> std::io::Result<KernelBlocks> {
        let fd = self.maps.blocks.map().fd().as_fd();
        let blocks = match batch::lookup_all::<KmemKey, KmemBlock>(fd) {
            Ok(all) => all.into_iter().map(|(_, b)| b).collect(),
            Err(_) => self
                .maps
                .blocks
                .iter()
                .filter_map(Result::ok)
                .map(|(_, b)| b)
                .collect(),
        };
        Ok(KernelBlocks {
            blocks,
            now_ns: monotonic_ns(),
        })
    }

    /// What the table holds now for process `tgid` (None: all of it): its
    /// old blocks by site, kernel stacks symbolized; user stacks are
    /// symbolized by [`Pending::user_frames`], then [`KernelMemory::finish`].
    pub fn begin(&mut self, tgid: Option<u32>, older_than: Duration) -> std::io::Result<Pending> {
        let blocks = self.read()?;
        self.learn_caches();
        let mine: Vec<&KmemBlock> = blocks
            .blocks
            .iter()
            .filter(|b| tgid.is_none_or(|t| b.tgid == t))
            .collect();
        let grouped = group(&mine, blocks.now_ns, older_than);
        let mut sites = Vec::with_capacity(grouped.sites.len());
        let mut user_stacks = Vec::with_capacity(grouped.sites.len());
        for g in grouped.sites {
            let frames = self.kernel_frames(g.kernel_stack);
            user_stacks.push(self.user_ips(g.user_stack));
            let mut site = g.into_site(&self.caches, frames, Vec::new());
            if let Some(others) = site.cache.as_ref().and_then(|c| self.merged.get(c)) {
                site.merged_with = others.clone();
            }
            sites.push(site);
        }
        Ok(Pending {
            tgid,
            sites,
            user_stacks,
            live: grouped.live,
            older_than,
            missed: self.maps.missed_events(),
        })
    }

    /// The report of `pending` (its `top` sites, those `suppressions`
    /// name left out), with every site for the exports.
    pub fn finish(
        &mut self,
        mut pending: Pending,
        user_frames: Vec<Vec<Frame>>,
        asked: &Asked,
        dropped: &Dropped,
    ) -> (KernelReport, Vec<KernelSite>) {
        for (site, frames) in pending.sites.iter_mut().zip(user_frames) {
            site.user_frames = frames;
        }
        let mut sites = sites::merge_same(pending.sites);
        sites::mark_backing(&mut sites);
        let suppressed = asked
            .suppressions
            .as_ref()
            .map(|rules| sites::suppress(&mut sites, rules));
        self.growth
            .entry(pending.tgid.unwrap_or(0))
            .or_default()
            .apply(&mut sites);
        let all = sites.clone();
        let mut report = sites::totals(sites, &pending.live, pending.older_than, asked.top);
        report.whole_kernel = self.whole_kernel;
        report.suppressed = suppressed;
        report.dropped = KernelDropped {
            blocks: dropped.get(Counter::KmemMapFull),
            stacks: dropped.get(Counter::KmemStackLost),
            missed: pending.missed + dropped.get(Counter::KmemAllocNested),
            frees_failed: dropped.get(Counter::KmemFreeFailed),
        };
        (report, all)
    }

    /// Caches the probes named since the last report (and, when there
    /// are new ones, which caches the kernel merged).
    fn learn_caches(&mut self) {
        let mut learned = false;
        for (ptr, name) in self.maps.caches.iter().filter_map(Result::ok) {
            self.caches.entry(ptr).or_insert_with(|| {
                learned = true;
                let end = name.name.iter().position(|&b| b == 0).unwrap_or(32);
                String::from_utf8_lossy(&name.name[..end]).into_owned()
            });
        }
        if learned {
            self.merged = merged::read(std::path::Path::new(merged::SLAB_DIR));
        }
    }

    /// The kernel stack `id`, symbolized, tracing machinery left out.
    fn kernel_frames(&self, id: u64) -> Vec<Frame> {
        let Ok(stack) = self.maps.stacks.get(&id, 0) else {
            return Vec::new();
        };
        let frames: Vec<Frame> = stack
            .ips
            .iter()
            .take_while(|&&ip| ip != 0)
            .map(|&ip| self.symbols.frame(ip))
            .collect();
        sites::without_tracing_frames(frames)
    }

    fn user_ips(&self, id: u64) -> Vec<u64> {
        match (id, self.maps.stacks.get(&id, 0)) {
            (0, _) | (_, Err(_)) => Vec::new(),
            (_, Ok(stack)) => stack
                .ips
                .iter()
                .take_while(|&&ip| ip != 0)
                .copied()
                .collect(),
        }
    }
}

/// A report begun: its sites with kernel frames, their user stacks still
/// addresses.
pub struct Pending {
    tgid: Option<u32>,
    sites: Vec<KernelSite>,
    user_stacks: Vec<Vec<u64>>,
    live: crate::report::kernel::Amount,
    older_than: Duration,
    missed: u64,
}

impl Pending {
    /// Each site's user stack, symbolized by `user` (the traced process's).
    pub async fn user_frames(&self, user: Option<&Symbolizer>) -> Vec<Vec<Frame>> {
        let mut out = Vec::with_capacity(self.user_stacks.len());
        for ips in &self.user_stacks {
            let frames = match user {
                Some(sym) if !ips.is_empty() => sym
                    .symbolize(ips.clone(), true)
                    .await
                    .map(|f| f.into_iter().flatten().collect())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            out.push(frames);
        }
        out
    }
}
