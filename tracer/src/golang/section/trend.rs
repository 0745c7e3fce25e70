//! The trend of a Go program's live heap, from one reading per report of
//! the heap left after the last GC.
//!
//! Between GCs the value does not move, so only readings separated by at
//! least one GC say anything. The heap is "growing" when it rose across
//! each of the last [`TREND_STEPS`] such steps by more than noise, the
//! way an unbounded cache grows; a service whose live set is stable
//! wobbles up and down and is "steady".

use std::{collections::HashMap, hash::Hash};

use super::GoHeapReport;
use crate::golang::runtime::HeapReading;

/// Consecutive post-GC rises (or falls) that make a trend.
pub const TREND_STEPS: usize = 3;

/// A step smaller than this (and than 1%) is noise.
const NOISE_BYTES: u64 = 256 * 1024;

#[derive(Debug, Default)]
pub struct HeapTrend {
    previous: Option<HeapReading>,
    /// Post-GC live heap at each report that followed a GC, oldest first.
    after_gc: Vec<u64>,
}

impl HeapTrend {
    pub fn observe(&mut self, now: HeapReading) -> GoHeapReport {
        let (gcs_since_last, growth) = match self.previous {
            Some(p) => (
                Some(now.gc_count.wrapping_sub(p.gc_count)),
                Some(now.live_after_gc as i64 - p.live_after_gc as i64),
            ),
            None => (None, None),
        };
        let new_gc = self.previous.is_none_or(|p| p.gc_count != now.gc_count);
        if new_gc && now.gc_count > 0 {
            self.after_gc.push(now.live_after_gc);
            let keep = TREND_STEPS + 1;
            if self.after_gc.len() > keep {
                self.after_gc.drain(..self.after_gc.len() - keep);
            }
        }
        self.previous = Some(now);
        GoHeapReport {
            live_after_gc: now.live_after_gc,
            gc_count: now.gc_count,
            gcs_since_last,
            growth,
            trend: self.trend(),
        }
    }

    fn trend(&self) -> &'static str {
        if self.after_gc.len() < TREND_STEPS + 1 {
            return "unknown";
        }
        let significant = |a: u64, b: u64| b.abs_diff(a) > NOISE_BYTES.max(a / 100);
        let steps = self.after_gc.windows(2);
        if steps
            .clone()
            .all(|w| w[1] > w[0] && significant(w[0], w[1]))
        {
            "growing"
        } else if steps
            .clone()
            .all(|w| w[1] < w[0] && significant(w[0], w[1]))
        {
            "shrinking"
        } else {
            "steady"
        }
    }
}

/// Per-site trends of the runtime's heap profile. The profile changes only
/// at GCs (it is published by each GC), so a site's in-use bytes are taken
/// once per report that followed a GC: "growing" when they rose at each of
/// the last [`TREND_STEPS`] such readings (an unbounded map), "shrinking"
/// when they fell at each, "steady" otherwise (a bounded cache), "new"
/// until there are that many readings.
#[derive(Debug)]
pub struct SiteTrends<K> {
    last_gc: Option<u32>,
    history: HashMap<K, Vec<u64>>,
}

impl<K> Default for SiteTrends<K> {
    fn default() -> Self {
        SiteTrends {
            last_gc: None,
            history: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> SiteTrends<K> {
    /// Takes this report's sites (key, bytes) after `gc_count` GCs; returns
    /// each site's change since its previous reading and its trend.
    pub fn observe(
        &mut self,
        gc_count: u32,
        sites: &[(K, u64)],
    ) -> Vec<(Option<i64>, &'static str)> {
        if self.last_gc != Some(gc_count) {
            self.last_gc = Some(gc_count);
            let keep = TREND_STEPS + 1;
            // Sites gone from the profile read as 0.
            for h in self.history.values_mut() {
                h.push(0);
            }
            for (k, bytes) in sites {
                match self.history.get_mut(k).and_then(|h| h.last_mut()) {
                    Some(last) => *last = *bytes,
                    None => {
                        self.history.insert(k.clone(), vec![*bytes]);
                    }
                }
            }
            for h in self.history.values_mut() {
                if h.len() > keep {
                    h.drain(..h.len() - keep);
                }
            }
            self.history.retain(|_, h| h.iter().any(|&b| b > 0));
        }
        sites
            .iter()
            .map(|(k, _)| match self.history.get(k) {
                Some(h) => (
                    (h.len() >= 2).then(|| h[h.len() - 1] as i64 - h[h.len() - 2] as i64),
                    site_trend(h),
                ),
                None => (None, "new"),
            })
            .collect()
    }
}

fn site_trend(h: &[u64]) -> &'static str {
    if h.len() < TREND_STEPS + 1 {
        return "new";
    }
    let steps = h.windows(2);
    if steps.clone().all(|w| w[1] > w[0]) {
        "growing"
    } else if steps.clone().all(|w| w[1] < w[0]) {
        "shrinking"
    } else {
        "steady"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn run(readings: &[(u64, u32)]) -> Vec<GoHeapReport> {
        let mut t = HeapTrend::default();
        readings
            .iter()
            .map(|&(live_after_gc, gc_count)| {
                t.observe(HeapReading {
                    live_after_gc,
                    gc_count,
                })
            })
            .collect()
    }

    #[test]
    fn rising_after_every_gc_is_growing() {
        let r = run(&[(4 * MB, 1), (6 * MB, 3), (8 * MB, 5), (11 * MB, 6)]);
        assert_eq!(r[0].trend, "unknown");
        assert_eq!(r[2].trend, "unknown");
        assert_eq!(r[3].trend, "growing");
        assert_eq!(r[3].growth, Some(3 * MB as i64));
        assert_eq!(r[3].gcs_since_last, Some(1));
    }

    #[test]
    fn wobbling_heap_is_steady() {
        let r = run(&[
            (4 * MB, 1),
            (4 * MB + 4096, 2),
            (4 * MB - 8192, 3),
            (4 * MB + 100, 4),
        ]);
        assert_eq!(r[3].trend, "steady");
    }

    #[test]
    fn small_rises_are_noise() {
        let r = run(&[
            (4 * MB, 1),
            (4 * MB + 10_000, 2),
            (4 * MB + 20_000, 3),
            (4 * MB + 30_000, 4),
        ]);
        assert_eq!(r[3].trend, "steady");
    }

    #[test]
    fn readings_without_a_gc_in_between_do_not_count() {
        let r = run(&[
            (4 * MB, 1),
            (6 * MB, 2),
            (6 * MB, 2),
            (6 * MB, 2),
            (8 * MB, 3),
        ]);
        assert_eq!(r[4].trend, "unknown");
        assert_eq!(r[3].gcs_since_last, Some(0));
    }

    #[test]
    fn a_site_rising_at_every_gc_is_growing_and_a_flat_one_steady() {
        let mut t = SiteTrends::default();
        let mut last = Vec::new();
        for (gc, map) in [(1, 100), (2, 200), (2, 200), (3, 300), (4, 450)] {
            last = t.observe(gc, &[("map", map), ("cache", 64)]);
        }
        assert_eq!(last[0], (Some(150), "growing"));
        assert_eq!(last[1], (Some(0), "steady"));
    }

    #[test]
    fn a_site_seen_at_fewer_gcs_is_new() {
        let mut t = SiteTrends::default();
        t.observe(1, &[("a", 10)]);
        let r = t.observe(2, &[("a", 20), ("b", 5)]);
        assert_eq!(r[0], (Some(10), "new"));
        assert_eq!(r[1], (None, "new"));
    }

    #[test]
    fn falling_heap_is_shrinking() {
        let r = run(&[(16 * MB, 1), (12 * MB, 2), (8 * MB, 3), (4 * MB, 4)]);
        assert_eq!(r[3].trend, "shrinking");
    }
}
