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
    time::{Duration, Instant},
};

use aya::maps::MapError;
use tracer_common::{Config, Counter, SiteKey, SiteTotals, COUNTER_COUNT, STACK_UNKNOWN};

use crate::probes::HeapMaps;

/// An allocation site: the kernel stack id plus the immediate caller, which
/// the frame-pointer walk from the probe cannot see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId {
    pub caller: u64,
    pub stack_id: u32,
}

impl From<&SiteKey> for SiteId {
    fn from(k: &SiteKey) -> Self {
        SiteId {
            caller: k.caller,
            stack_id: k.stack_id,
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

/// Everything the probes could not record, summed over CPUs, since attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub alloc_map_full: u64,
    pub site_map_full: u64,
    pub stacks_lost: u64,
    pub pending_map_full: u64,
    pub caller_unreadable: u64,
    pub result_unreadable: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.alloc_map_full
            + self.site_map_full
            + self.stacks_lost
            + self.pending_map_full
            + self.caller_unreadable
            + self.result_unreadable
    }
}

/// One reading of the tables.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Survivors older than the threshold, largest first.
    pub sites: Vec<SiteSurvivors>,
    /// All outstanding allocations, young ones included.
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub dropped: Dropped,
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

pub struct Collector {
    maps: HeapMaps,
    older_than: Duration,
    generation: u32,
    horizon: u32,
    gen_start: BTreeMap<u32, Instant>,
    folded: HashMap<SiteId, Folded>,
    stacks: HashMap<u32, Vec<u64>>,
}

impl Collector {
    pub fn new(maps: HeapMaps, older_than: Duration, now: Instant) -> Result<Self, MapError> {
        let mut c = Collector {
            maps,
            older_than,
            generation: 1,
            horizon: 1,
            gen_start: BTreeMap::from([(1, now)]),
            folded: HashMap::new(),
            stacks: HashMap::new(),
        };
        c.publish()?;
        Ok(c)
    }

    /// How often to advance the generation: the age resolution.
    pub fn tick_period(older_than: Duration, interval: Duration) -> Duration {
        (older_than / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1))
            .min(interval)
    }

    fn publish(&mut self) -> Result<(), MapError> {
        let cfg = Config {
            generation: self.generation,
            horizon: self.horizon,
        };
        self.maps.config.set(0, cfg, 0)
    }

    /// End of generation `g` (the start of the next), or `now` if current.
    fn gen_end(&self, g: u32, now: Instant) -> Instant {
        self.gen_start.get(&(g + 1)).copied().unwrap_or(now)
    }

    fn is_old(&self, g: u32, now: Instant) -> bool {
        now.saturating_duration_since(self.gen_end(g, now)) >= self.older_than
    }

    /// Advances the generation and folds what is old for good.
    pub fn tick(&mut self, now: Instant) -> Result<(), MapError> {
        // Fold generations below the horizon published one tick ago: every
        // probe that could still have used an older horizon has finished.
        let mut fold: Vec<(SiteKey, SiteTotals)> = Vec::new();
        let mut empty: Vec<SiteKey> = Vec::new();
        for item in self.maps.sites.iter() {
            let (key, v) = item?;
            if key.generation == 0 {
                continue;
            }
            if key.generation < self.horizon {
                fold.push((key, v));
            } else if key.generation + 1 < self.generation && v == SiteTotals::default() {
                // A past generation whose blocks were all freed: no probe
                // will touch it again.
                empty.push(key);
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
            let _ = self.maps.sites.remove(&key);
        }
        for key in empty {
            let _ = self.maps.sites.remove(&key);
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
                let key = SiteKey {
                    caller: site.caller,
                    stack_id: site.stack_id,
                    generation: 0,
                };
                let k = self.maps.sites.get(&key, 0).unwrap_or_default();
                (f.count + k.count == 0 && f.bytes + k.bytes == 0).then_some(*site)
            })
            .collect();
        for site in settled {
            let key = SiteKey {
                caller: site.caller,
                stack_id: site.stack_id,
                generation: 0,
            };
            let _ = self.maps.sites.remove(&key);
            self.folded.remove(&site);
        }
        Ok(())
    }

    /// Reads the survivors older than the threshold.
    pub fn snapshot(&mut self, now: Instant) -> Result<Snapshot, MapError> {
        let mut acc: HashMap<SiteId, Acc> = HashMap::new();
        let (mut live_bytes, mut live_blocks) = (0i64, 0i64);
        for item in self.maps.sites.iter() {
            let (key, v) = item?;
            live_bytes += v.bytes;
            live_blocks += v.count;
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
            dropped: self.dropped()?,
        })
    }

    fn dropped(&self) -> Result<Dropped, MapError> {
        let mut sums = [0u64; COUNTER_COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum = self.maps.counters.get(&(i as u32), 0)?.iter().sum();
        }
        let at = |c: Counter| sums[c as usize];
        Ok(Dropped {
            alloc_map_full: at(Counter::AllocMapFull),
            site_map_full: at(Counter::SiteMapFull),
            stacks_lost: at(Counter::StackLost),
            pending_map_full: at(Counter::PendingMapFull),
            caller_unreadable: at(Counter::CallerUnreadable),
            result_unreadable: at(Counter::ResultUnreadable),
        })
    }

    /// Return addresses of a site, innermost first: the caller, then the
    /// frame-pointer walk (whose frame 0, the probed instruction, is dropped).
    pub fn site_frames(&mut self, site: SiteId) -> Vec<u64> {
        let mut frames = vec![site.caller];
        if site.stack_id == STACK_UNKNOWN {
            return frames;
        }
        let stack = match self.stacks.get(&site.stack_id) {
            Some(s) => s,
            None => {
                let ips: Vec<u64> = self
                    .maps
                    .stacks
                    .get(&site.stack_id, 0)
                    .map(|t| t.frames().iter().map(|f| f.ip).collect())
                    .unwrap_or_default();
                self.stacks.entry(site.stack_id).or_insert(ips)
            }
        };
        let walk = stack.get(1..).unwrap_or(&[]);
        // Kernels that recover the caller themselves (probe on `push %rbp`)
        // already list it first.
        let walk = match walk.first() {
            Some(&first) if first == site.caller => &walk[1..],
            _ => walk,
        };
        frames.extend(walk.iter().copied().filter(|&ip| ip != 0));
        frames
    }

    /// The probed instruction a site's stack starts at (which allocator).
    pub fn site_probe_ip(&self, site: SiteId) -> Option<u64> {
        self.stacks
            .get(&site.stack_id)
            .and_then(|s| s.first().copied())
    }

    /// Forgets per-thread entry state of threads that no longer exist (a
    /// thread killed inside malloc never returns).
    pub fn prune_dead_threads(&mut self, pid: u32) {
        let alive = |tid: u32| std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
        let dead: Vec<_> = self
            .maps
            .pending
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !alive(k.tid))
            .collect();
        for k in dead {
            let _ = self.maps.pending.remove(&k);
        }
        let dead: Vec<u32> = self
            .maps
            .inflight
            .keys()
            .filter_map(Result::ok)
            .filter(|t| !alive(*t))
            .collect();
        for t in dead {
            let _ = self.maps.inflight.remove(&t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_period_is_bounded() {
        let i = Duration::from_secs(5);
        assert_eq!(
            Collector::tick_period(Duration::from_millis(500), i),
            Duration::from_millis(125)
        );
        assert_eq!(
            Collector::tick_period(Duration::ZERO, i),
            Duration::from_millis(20)
        );
        assert_eq!(
            Collector::tick_period(Duration::from_secs(60), i),
            Duration::from_secs(1)
        );
        assert_eq!(
            Collector::tick_period(Duration::from_secs(60), Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
