//! Goroutines of a Go target created after attach and still alive: read
//! from the kernel's goroutine table, grouped by creation site.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    time::Duration,
};

use std::rc::Rc;

use aya::maps::MapError;
use tracer_common::{GoroutineKey, GoroutineRecord};

use crate::{collect::monotonic_ns, probes::maps::GoroutineTable};

/// Goroutines created at one `go` statement with one start function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoroutineGroup {
    /// PC of the `go` statement (a return address).
    pub gopc: u64,
    pub startpc: u64,
    pub count: u64,
    pub oldest: Duration,
    /// Creating stack of the oldest goroutine in the group.
    pub stack_id: u32,
}

#[derive(Debug, Clone, Default)]
pub struct GoroutineSnapshot {
    /// Groups of goroutines older than the threshold, largest first.
    pub groups: Vec<GoroutineGroup>,
    /// Every goroutine created since attach and still alive, young ones too.
    pub live: u64,
    /// Their goids: the census of goroutines from before attach leaves
    /// these out.
    pub goids: HashSet<u64>,
    /// Whether the walk reached the end of the table. A complete walk holds
    /// every goroutine recorded before it began and alive until it ended
    /// (a vanished key only makes the kernel start the walk over); a walk
    /// cut short by its bound may have missed some.
    pub complete: bool,
}

pub struct GoroutineCollector {
    /// Shared by every traced Go process's collector.
    map: Rc<GoroutineTable>,
    tgid: u32,
    older_than: Duration,
    capacity: usize,
}

impl GoroutineCollector {
    pub fn new(map: Rc<GoroutineTable>, tgid: u32, older_than: Duration, capacity: u32) -> Self {
        GoroutineCollector {
            map,
            tgid,
            older_than,
            capacity: capacity as usize,
        }
    }

    pub fn snapshot(&self) -> Result<GoroutineSnapshot, MapError> {
        let now = monotonic_ns();
        // Goroutines come and go while we iterate, and a vanished key makes
        // the kernel restart the walk: dedupe by goid and bound the walk.
        let mut records: StdHashMap<u64, GoroutineRecord> = StdHashMap::new();
        let mut walk = self.map.iter();
        let bound = self.capacity.saturating_mul(2).max(1024);
        let mut complete = false;
        for _ in 0..bound {
            let Some(entry) = walk.next() else {
                complete = true;
                break;
            };
            let (key, rec) = entry?;
            if key.tgid == self.tgid {
                records.insert(key.goid, rec);
            }
        }
        let goids = records.keys().copied().collect();
        let mut snap = group(records.into_values(), now, self.older_than);
        snap.goids = goids;
        snap.complete = complete;
        Ok(snap)
    }

    /// Whether the probes recorded goroutine `goid` (and it has not exited).
    pub fn contains(&self, goid: u64) -> Result<bool, MapError> {
        let key = GoroutineKey {
            goid,
            tgid: self.tgid,
            _pad: 0,
        };
        match self.map.get(&key, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn group(
    records: impl Iterator<Item = GoroutineRecord>,
    now_ns: u64,
    older_than: Duration,
) -> GoroutineSnapshot {
    let mut live = 0;
    let mut groups: StdHashMap<(u64, u64), GoroutineGroup> = StdHashMap::new();
    for rec in records {
        live += 1;
        let age = Duration::from_nanos(now_ns.saturating_sub(rec.created_ns));
        if age < older_than {
            continue;
        }
        let g = groups
            .entry((rec.gopc, rec.startpc))
            .or_insert(GoroutineGroup {
                gopc: rec.gopc,
                startpc: rec.startpc,
                count: 0,
                oldest: Duration::ZERO,
                stack_id: rec.stack_id,
            });
        g.count += 1;
        if age > g.oldest {
            g.oldest = age;
            g.stack_id = rec.stack_id;
        }
    }
    let mut groups: Vec<GoroutineGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.oldest.cmp(&a.oldest))
            .then(a.gopc.cmp(&b.gopc))
    });
    GoroutineSnapshot {
        groups,
        live,
        ..GoroutineSnapshot::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(gopc: u64, startpc: u64, created_ns: u64, stack_id: u32) -> GoroutineRecord {
        GoroutineRecord {
            gopc,
            startpc,
            parent_goid: 1,
            created_ns,
            stack_id,
            _pad: 0,
        }
    }

    #[test]
    fn groups_old_goroutines_by_creation_site() {
        let s = 1_000_000_000;
        let snap = group(
            [
                rec(0x10, 0xa0, s, 7),     // 9 s old
                rec(0x10, 0xa0, 4 * s, 8), // 6 s old
                rec(0x10, 0xb0, 2 * s, 9), // other start function
                rec(0x20, 0xa0, 9 * s, 1), // 1 s old: too young
            ]
            .into_iter(),
            10 * s,
            Duration::from_secs(5),
        );
        assert_eq!(snap.live, 4);
        assert_eq!(
            snap.groups,
            vec![
                GoroutineGroup {
                    gopc: 0x10,
                    startpc: 0xa0,
                    count: 2,
                    oldest: Duration::from_secs(9),
                    stack_id: 7,
                },
                GoroutineGroup {
                    gopc: 0x10,
                    startpc: 0xb0,
                    count: 1,
                    oldest: Duration::from_secs(8),
                    stack_id: 9,
                },
            ]
        );
    }
}
