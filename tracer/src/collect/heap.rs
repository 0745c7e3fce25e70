//! Reading the kernel's per-site totals and turning them into per-site
//! survivors older than the threshold.
//!
//! Ages are tracked with generations instead of per-allocation timestamps:
//! userspace advances a generation counter every tick, the kernel stamps
//! each allocation with the current generation and keeps totals per
//! (site, generation). A generation is "old" once it ended at least
//! `older_than` ago, so a report reads one entry per (site, live
//! generation) and never walks the live allocations. Generations that are
//! old for good are folded into userspace and generation 0 (see
//! [`tracer_common::Config`]), which keeps the table at a few entries per
//! site however long the run.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::AsFd,
    time::{Duration, Instant},
};

use aya::maps::{IterableMap, MapError};
use tracer_common::{
    AllocKey, AllocRecord, Config, Counter, CounterKind, SiteKey, SiteTotals, COUNTERS,
    COUNTER_COUNT,
};

use crate::probes::HeapMaps;

/// An allocation site of one process: the kernel stack id plus the
/// immediate caller, which the frame-pointer walk from the probe cannot
/// see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId {
    pub caller: u64,
    pub stack_id: u32,
    pub tgid: u32,
}

impl From<&SiteKey> for SiteId {
    fn from(k: &SiteKey) -> Self {
        SiteId {
            caller: k.caller,
            stack_id: k.stack_id,
            tgid: k.tgid,
        }
    }
}

impl SiteId {
    /// The kernel's key of this site in `generation`.
    fn key(&self, generation: u32) -> SiteKey {
        SiteKey {
            caller: self.caller,
            stack_id: self.stack_id,
            generation,
            tgid: self.tgid,
            _pad: 0,
        }
    }
}

/// One site's survivors in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSurvivors {
    pub site: SiteId,
    pub bytes: u64,
    pub blocks: u64,
    /// Age of the oldest surviving block (to within one tick).
    pub oldest: Duration,
}

/// Everything the probes could not record, and the stacks they recorded
/// cut short, summed over CPUs, since attach: one count per counter of
/// `tracer_common::COUNTERS`, the table that names them all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    counts: [u64; COUNTER_COUNT as usize],
}

impl Dropped {
    /// `counts`, indexed by `Counter as usize`.
    pub fn from_counts(counts: [u64; COUNTER_COUNT as usize]) -> Self {
        Dropped { counts }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counts[c as usize]
    }

    /// Each counter of `kind` by its name (JSON key, Prometheus reason), in
    /// the table's order.
    pub fn by_name(&self, kind: CounterKind) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        COUNTERS
            .iter()
            .filter(move |(_, k, _)| *k == kind)
            .map(|(c, _, name)| (*name, self.get(*c)))
    }

    /// Everything not recorded (stacks cut short are not drops).
    pub fn total(&self) -> u64 {
        self.by_name(CounterKind::Dropped).map(|(_, n)| n).sum()
    }

    /// Distinct stacks whose walk ended early.
    pub fn cut_short_total(&self) -> u64 {
        self.by_name(CounterKind::CutShort).map(|(_, n)| n).sum()
    }
}

/// One reading of the tables: of every traced process, or (after
/// [`Snapshot::of`]) of one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Survivors older than the threshold, largest first.
    pub sites: Vec<SiteSurvivors>,
    /// All outstanding allocations, young ones included.
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub dropped: Dropped,
    /// Every site that allocated since attach: bytes and blocks allocated,
    /// freed or not (pprof's `alloc_space` / `alloc_objects`).
    pub allocated: HashMap<SiteId, Allocated>,
    /// Outstanding (bytes, blocks) by process.
    pub live_by_process: HashMap<u32, (u64, u64)>,
}

impl Snapshot {
    /// What of this reading is process `tgid`'s (the counters of what
    /// could not be recorded are the run's, not one process's).
    pub fn of(&self, tgid: u32) -> Snapshot {
        let (live_bytes, live_blocks) =
            self.live_by_process.get(&tgid).copied().unwrap_or_default();
        Snapshot {
            sites: self
                .sites
                .iter()
                .filter(|s| s.site.tgid == tgid)
                .cloned()
                .collect(),
            live_bytes,
            live_blocks,
            dropped: self.dropped,
            allocated: self
                .allocated
                .iter()
                .filter(|(s, _)| s.tgid == tgid)
                .map(|(s, a)| (*s, *a))
                .collect(),
            live_by_process: HashMap::from([(tgid, (live_bytes, live_blocks))]),
        }
    }
}

/// What one site allocated since attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocated {
    pub bytes: u64,
    pub blocks: u64,
}

impl Allocated {
    fn add(&mut self, v: &SiteTotals) {
        self.bytes += v.allocated_bytes.max(0) as u64;
        self.blocks += v.allocated_count.max(0) as u64;
    }
}

#[derive(Debug, Clone, Copy)]
struct Folded {
    bytes: i64,
    count: i64,
    oldest: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct Acc {
    bytes: i64,
    count: i64,
    /// Net count in the kernel's generation-0 bucket.
    zero_count: i64,
    oldest: Option<Instant>,
}

/// How often to advance the generation: the age resolution.
pub fn tick_period(older_than: Duration, interval: Duration) -> Duration {
    (older_than / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1))
        .min(interval)
}

/// The kernel's per-(site, generation) totals and its configuration slot,
/// as the ledger needs them. Implemented by the real BPF maps; the unit
/// tests implement it with a simulated kernel.
pub trait SiteTable {
    fn entries(&self) -> Result<Vec<(SiteKey, SiteTotals)>, MapError>;
    fn get(&self, key: &SiteKey) -> SiteTotals;
    fn remove(&mut self, key: &SiteKey);
    fn publish(&mut self, config: Config) -> Result<(), MapError>;
    /// Removes the live-block records of process `tgid`.
    fn forget_blocks(&mut self, tgid: u32);
    /// The live-block records of process `tgid`, by address.
    fn blocks(&self, _tgid: u32) -> Vec<(u64, AllocRecord)> {
        Vec::new()
    }
}

/// One outstanding block, as a reachability scan needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveBlock {
    pub addr: u64,
    pub size: u64,
    pub site: SiteId,
    /// Older than the threshold: reported on (younger ones are marked
    /// through, never reported).
    pub old: bool,
}

impl SiteTable for HeapMaps {
    fn entries(&self) -> Result<Vec<(SiteKey, SiteTotals)>, MapError> {
        self.sites.iter().collect()
    }

    fn get(&self, key: &SiteKey) -> SiteTotals {
        self.sites.get(key, 0).unwrap_or_default()
    }

    fn remove(&mut self, key: &SiteKey) {
        // Already gone is fine: nobody else removes entries.
        let _ = self.sites.remove(key);
    }

    fn publish(&mut self, config: Config) -> Result<(), MapError> {
        self.config.set(0, config, 0)
    }

    fn forget_blocks(&mut self, tgid: u32) {
        let keys: Vec<_> = self
            .allocs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for k in keys {
            let _ = self.allocs.remove(&k);
        }
    }

    fn blocks(&self, tgid: u32) -> Vec<(u64, AllocRecord)> {
        let fd = self.allocs.map().fd().as_fd();
        if let Ok(all) = super::batch::lookup_all::<AllocKey, AllocRecord>(fd) {
            return all
                .into_iter()
                .filter(|(k, _)| k.tgid == tgid)
                .map(|(k, v)| (k.addr, v))
                .collect();
        }
        // A kernel without batch lookups: an entry at a time.
        self.allocs
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.tgid == tgid)
            .map(|(k, v)| (k.addr, v))
            .collect()
    }
}

pub struct Collector<T: SiteTable = HeapMaps> {
    maps: T,
    older_than: Duration,
    generation: u32,
    horizon: u32,
    gen_start: BTreeMap<u32, Instant>,
    folded: HashMap<SiteId, Folded>,
    /// Allocated totals of kernel entries folded or removed.
    allocated: HashMap<SiteId, Allocated>,
}

impl<T: SiteTable> Collector<T> {
    pub fn new(maps: T, older_than: Duration, now: Instant) -> Result<Self, MapError> {
        let mut c = Collector {
            maps,
            older_than,
            generation: 1,
            horizon: 1,
            gen_start: BTreeMap::from([(1, now)]),
            folded: HashMap::new(),
            allocated: HashMap::new(),
        };
        c.publish()?;
        Ok(c)
    }

    fn publish(&mut self) -> Result<(), MapError> {
        let cfg = Config {
            generation: self.generation,
            horizon: self.horizon,
        };
        self.maps.publish(cfg)
    }

    /// End of generation `g` (the start of the next), or `now` if current.
    fn gen_end(&self, g: u32, now: Instant) -> Instant {
        self.gen_start.get(&(g + 1)).copied().unwrap_or(now)
    }

    /// The outstanding blocks of process `tgid`, each with its site and
    /// whether it is older than the threshold (a folded generation, below
    /// the horizon, is).
    pub fn live_blocks(&self, tgid: u32, now: Instant) -> Vec<LiveBlock> {
        self.maps
            .blocks(tgid)
            .into_iter()
            .map(|(addr, r)| LiveBlock {
                addr,
                size: r.size,
                site: SiteId {
                    caller: r.caller,
                    stack_id: r.stack_id,
                    tgid,
                },
                old: r.generation < self.horizon || self.is_old(r.generation, now),
            })
            .collect()
    }

    fn is_old(&self, g: u32, now: Instant) -> bool {
        now.saturating_duration_since(self.gen_end(g, now)) >= self.older_than
    }

    /// Advances the generation and folds what is old for good.
    pub fn tick(&mut self, now: Instant) -> Result<(), MapError> {
        // Fold generations below the horizon published one tick ago: every
        // probe that could still have used an older horizon has finished.
        let mut fold: Vec<(SiteKey, SiteTotals)> = Vec::new();
        let mut empty: Vec<(SiteKey, SiteTotals)> = Vec::new();
        for (key, v) in self.maps.entries()? {
            if key.generation == 0 {
                continue;
            }
            if key.generation < self.horizon {
                fold.push((key, v));
            } else if key.generation + 1 < self.generation && v.is_settled() {
                // A past generation whose blocks were all freed: no probe
                // will touch it again.
                empty.push((key, v));
            }
        }
        for (key, v) in fold {
            let site = SiteId::from(&key);
            let start = self.gen_start.get(&key.generation).copied().unwrap_or(now);
            let f = self.folded.entry(site).or_insert(Folded {
                bytes: 0,
                count: 0,
                oldest: start,
            });
            if f.count <= 0 || (v.count > 0 && start < f.oldest) {
                f.oldest = start;
            }
            f.bytes += v.bytes;
            f.count += v.count;
            self.allocated.entry(site).or_default().add(&v);
            self.maps.remove(&key);
        }
        for (key, v) in empty {
            self.allocated
                .entry(SiteId::from(&key))
                .or_default()
                .add(&v);
            self.maps.remove(&key);
        }
        self.drop_settled_folds()?;

        self.generation += 1;
        self.gen_start.insert(self.generation, now);
        let folded_below = self.horizon;
        let mut h = self.horizon;
        while h + 1 < self.generation && self.is_old(h, now) {
            h += 1;
        }
        self.horizon = h;
        // Starts of generations already folded are no longer needed (folded
        // sites keep their own oldest start); the next tick folds from here.
        self.gen_start = self.gen_start.split_off(&folded_below);
        self.publish()
    }

    /// Once a site's folded blocks are all freed, its generation-0 entry
    /// can go: no probe will touch it again.
    fn drop_settled_folds(&mut self) -> Result<(), MapError> {
        let settled: Vec<SiteId> = self
            .folded
            .iter()
            .filter_map(|(site, f)| {
                let k = self.maps.get(&site.key(0));
                (f.count + k.count == 0 && f.bytes + k.bytes == 0).then_some(*site)
            })
            .collect();
        for site in settled {
            self.maps.remove(&site.key(0));
            self.folded.remove(&site);
        }
        Ok(())
    }

    /// Reads the survivors older than the threshold.
    pub fn snapshot(&mut self, now: Instant) -> Result<Snapshot, MapError> {
        let mut acc: HashMap<SiteId, Acc> = HashMap::new();
        let mut allocated = self.allocated.clone();
        let (mut live_bytes, mut live_blocks) = (0i64, 0i64);
        let mut live: HashMap<u32, (i64, i64)> = HashMap::new();
        for (key, v) in self.maps.entries()? {
            if v.allocated_count != 0 {
                allocated.entry(SiteId::from(&key)).or_default().add(&v);
            }
            live_bytes += v.bytes;
            live_blocks += v.count;
            let l = live.entry(key.tgid).or_default();
            l.0 += v.bytes;
            l.1 += v.count;
            let a = acc.entry(SiteId::from(&key)).or_default();
            if key.generation == 0 {
                a.bytes += v.bytes;
                a.count += v.count;
                a.zero_count += v.count;
            } else if self.is_old(key.generation, now) {
                a.bytes += v.bytes;
                a.count += v.count;
                if v.count > 0 {
                    let start = self.gen_start.get(&key.generation).copied().unwrap_or(now);
                    a.oldest = Some(a.oldest.map_or(start, |o| o.min(start)));
                }
            }
        }
        for (site, f) in &self.folded {
            live_bytes += f.bytes;
            live_blocks += f.count;
            let l = live.entry(site.tgid).or_default();
            l.0 += f.bytes;
            l.1 += f.count;
            let a = acc.entry(*site).or_default();
            a.bytes += f.bytes;
            a.count += f.count;
            a.zero_count += f.count;
            if a.zero_count > 0 {
                a.oldest = Some(a.oldest.map_or(f.oldest, |o| o.min(f.oldest)));
            }
        }

        let mut sites: Vec<SiteSurvivors> = acc
            .into_iter()
            .filter(|(_, a)| a.count > 0)
            .map(|(site, a)| SiteSurvivors {
                site,
                bytes: a.bytes.max(0) as u64,
                blocks: a.count as u64,
                oldest: a
                    .oldest
                    .map_or(self.older_than, |o| now.saturating_duration_since(o)),
            })
            .collect();
        sites.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.blocks.cmp(&a.blocks))
                .then(a.site.cmp(&b.site))
        });
        Ok(Snapshot {
            sites,
            live_bytes: live_bytes.max(0) as u64,
            live_blocks: live_blocks.max(0) as u64,
            dropped: Dropped::default(),
            allocated,
            live_by_process: live
                .into_iter()
                .map(|(t, (b, c))| (t, (b.max(0) as u64, c.max(0) as u64)))
                .collect(),
        })
    }

    /// Forgets everything of process `tgid` (gone, and reported on): its
    /// folded sites, allocated totals and table entries.
    pub fn forget_process(&mut self, tgid: u32) -> Result<(), MapError> {
        self.folded.retain(|s, _| s.tgid != tgid);
        self.allocated.retain(|s, _| s.tgid != tgid);
        for (key, _) in self.maps.entries()? {
            if key.tgid == tgid {
                self.maps.remove(&key);
            }
        }
        self.maps.forget_blocks(tgid);
        Ok(())
    }
}

impl Collector<HeapMaps> {
    /// Reads the survivors and the counts of what could not be recorded.
    pub fn read(&mut self, now: Instant) -> Result<Snapshot, MapError> {
        let mut snap = self.snapshot(now)?;
        snap.dropped = self.dropped()?;
        Ok(snap)
    }

    pub fn dropped(&self) -> Result<Dropped, MapError> {
        let mut sums = [0u64; COUNTER_COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum = self.maps.counters.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(Dropped::from_counts(sums))
    }

    /// Forgets per-thread entry state of threads that no longer exist (a
    /// thread killed inside malloc never returns).
    pub fn prune_dead_threads(&mut self) {
        // /proc/TID exists for every thread, listed or not.
        let alive = |tid: u32| std::path::Path::new(&format!("/proc/{tid}")).exists();
        let dead: Vec<u32> = self
            .maps
            .pending
            .keys()
            .filter_map(Result::ok)
            .filter(|t| !alive(*t))
            .collect();
        for t in dead {
            let _ = self.maps.pending.remove(&t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated kernel side, doing what tracer-ebpf's record/release do
    /// with the per-site table.
    #[derive(Default)]
    struct SimKernel {
        sites: HashMap<SiteKey, SiteTotals>,
        config: Config,
        live: HashMap<u64, (SiteId, u64, u32)>,
    }

    impl SimKernel {
        fn add(&mut self, key: SiteKey, bytes: i64, count: i64) {
            let v = self.sites.entry(key).or_default();
            v.bytes += bytes;
            v.count += count;
            if count > 0 {
                v.allocated_bytes += bytes;
                v.allocated_count += count;
            }
        }

        fn alloc(&mut self, addr: u64, site: SiteId, size: u64) {
            let generation = self.config.generation;
            self.add(site.key(generation), size as i64, 1);
            self.live.insert(addr, (site, size, generation));
        }

        fn free(&mut self, addr: u64) {
            let (site, size, g) = self.live.remove(&addr).expect("live block");
            let generation = if g < self.config.horizon { 0 } else { g };
            self.add(site.key(generation), -(size as i64), -1);
        }
    }

    impl SiteTable for SimKernel {
        fn entries(&self) -> Result<Vec<(SiteKey, SiteTotals)>, MapError> {
            Ok(self.sites.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn get(&self, key: &SiteKey) -> SiteTotals {
            self.sites.get(key).copied().unwrap_or_default()
        }
        fn remove(&mut self, key: &SiteKey) {
            self.sites.remove(key);
        }
        fn publish(&mut self, config: Config) -> Result<(), MapError> {
            self.config = config;
            Ok(())
        }
        fn forget_blocks(&mut self, tgid: u32) {
            self.live.retain(|_, (s, _, _)| s.tgid != tgid);
        }
    }

    const A: SiteId = SiteId {
        caller: 0x1000,
        stack_id: 1,
        tgid: 7,
    };
    const B: SiteId = SiteId {
        caller: 0x2000,
        stack_id: 2,
        tgid: 7,
    };
    /// The same site in another process (a forked worker).
    const A2: SiteId = SiteId { tgid: 8, ..A };
    const MS: Duration = Duration::from_millis(1);

    fn collector(older_than: Duration, t0: Instant) -> Collector<SimKernel> {
        Collector::new(SimKernel::default(), older_than, t0).expect("sim never fails")
    }

    #[test]
    fn young_blocks_are_hidden_until_older_than_the_threshold() {
        let t0 = Instant::now();
        let mut c = collector(100 * MS, t0);
        c.maps.alloc(1, A, 64);
        for i in 1..=2 {
            c.tick(t0 + 25 * MS * i).expect("tick");
        }
        let snap = c.snapshot(t0 + 60 * MS).expect("snapshot");
        assert!(snap.sites.is_empty(), "60ms old block is young");
        assert_eq!((snap.live_bytes, snap.live_blocks), (64, 1));
        for i in 3..=8 {
            c.tick(t0 + 25 * MS * i).expect("tick");
        }
        let snap = c.snapshot(t0 + 200 * MS).expect("snapshot");
        assert_eq!(snap.sites.len(), 1);
        assert_eq!((snap.sites[0].bytes, snap.sites[0].blocks), (64, 1));
        assert!(snap.sites[0].oldest >= 100 * MS && snap.sites[0].oldest <= 200 * MS);
    }

    #[test]
    fn folding_keeps_totals_exact_and_the_table_small() {
        let t0 = Instant::now();
        let tick = 25 * MS;
        let mut c = collector(100 * MS, t0);
        // Site A leaks one block per tick for 400 ticks; B allocates and
        // frees; every 4th A block is freed again, some long after folding.
        let mut now = t0;
        let mut next_addr = 1u64;
        let mut a_blocks = Vec::new();
        for i in 0..400u64 {
            c.maps.alloc(next_addr, A, 10);
            a_blocks.push(next_addr);
            next_addr += 1;
            c.maps.alloc(next_addr, B, 7);
            c.maps.free(next_addr);
            next_addr += 1;
            if i % 4 == 3 {
                let victim = a_blocks.remove(a_blocks.len() / 2);
                c.maps.free(victim);
            }
            now += tick;
            c.tick(now).expect("tick");
            // Entries: the folded bucket plus the generations within the threshold.
            assert!(
                c.maps.sites.len() <= 10,
                "table stays small: {}",
                c.maps.sites.len()
            );
        }
        let snap = c.snapshot(now + 200 * MS).expect("snapshot");
        // Allocated totals survive folding and the removal of settled
        // generations: every block ever allocated, freed or not.
        assert_eq!(
            snap.allocated[&A],
            Allocated {
                bytes: 4000,
                blocks: 400
            }
        );
        assert_eq!(
            snap.allocated[&B],
            Allocated {
                bytes: 2800,
                blocks: 400
            }
        );
        assert_eq!(snap.sites.len(), 1, "B never survives");
        assert_eq!(snap.sites[0].site, A);
        assert_eq!(snap.sites[0].blocks, a_blocks.len() as u64);
        assert_eq!(snap.sites[0].bytes, 10 * a_blocks.len() as u64);
        // The first block of A is still alive: oldest is the whole run.
        assert!(snap.sites[0].oldest >= 400 * tick);

        // Free everything: A disappears and its folded state is dropped.
        for addr in a_blocks {
            c.maps.free(addr);
        }
        for _ in 0..8 {
            now += tick;
            c.tick(now).expect("tick");
        }
        let snap = c.snapshot(now).expect("snapshot");
        assert!(snap.sites.is_empty());
        assert_eq!((snap.live_bytes, snap.live_blocks), (0, 0));
        assert!(c.folded.is_empty());
        assert!(c.maps.sites.is_empty(), "{:?}", c.maps.sites);
    }

    #[test]
    fn processes_are_read_apart_and_forgotten_apart() {
        let t0 = Instant::now();
        let mut c = collector(Duration::ZERO, t0);
        // Forked processes: same addresses, same site, different tgid.
        c.maps.alloc(1, A, 5);
        c.maps.alloc(1, A2, 7);
        c.maps.alloc(2, A2, 9);
        let all = c.snapshot(t0).expect("snapshot");
        let (seven, eight) = (all.of(7), all.of(8));
        assert_eq!((seven.live_bytes, seven.live_blocks), (5, 1));
        assert_eq!((eight.live_bytes, eight.live_blocks), (16, 2));
        assert_eq!(seven.sites.len(), 1);
        assert_eq!((eight.sites[0].site, eight.sites[0].bytes), (A2, 16));
        assert_eq!(eight.allocated[&A2].bytes, 16);
        assert!(!eight.allocated.contains_key(&A));
        c.forget_process(8).expect("forget");
        let all = c.snapshot(t0).expect("snapshot");
        assert_eq!(all.sites.len(), 1);
        assert_eq!(all.sites[0].site, A);
        assert!(all.of(8).sites.is_empty());
        assert!(c.maps.live.values().all(|(s, _, _)| s.tgid == 7));
    }

    #[test]
    fn zero_threshold_reports_the_current_generation() {
        let t0 = Instant::now();
        let mut c = collector(Duration::ZERO, t0);
        c.maps.alloc(1, A, 5);
        let snap = c.snapshot(t0).expect("snapshot");
        assert_eq!(snap.sites.len(), 1);
        assert_eq!(snap.sites[0].bytes, 5);
    }

    #[test]
    fn tick_period_is_bounded() {
        let i = Duration::from_secs(5);
        assert_eq!(
            tick_period(Duration::from_millis(500), i),
            Duration::from_millis(125)
        );
        assert_eq!(tick_period(Duration::ZERO, i), Duration::from_millis(20));
        assert_eq!(
            tick_period(Duration::from_secs(60), i),
            Duration::from_secs(1)
        );
        assert_eq!(
            tick_period(Duration::from_secs(60), Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
