//! The trend of a Go program's live heap, from one reading per report of
//! the heap left after the last GC.
//!
//! Between GCs the value does not move, so only readings separated by at
//! least one GC say anything. The heap is "growing" when it rose across
//! each of the last [`TREND_STEPS`] such steps by more than noise, the
//! way an unbounded cache grows; a service whose live set is stable
//! wobbles up and down and is "steady".

use super::{runtime::HeapReading, section::GoHeapReport};

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
    fn falling_heap_is_shrinking() {
        let r = run(&[(16 * MB, 1), (12 * MB, 2), (8 * MB, 3), (4 * MB, 4)]);
        assert_eq!(r[3].trend, "shrinking");
    }
}
