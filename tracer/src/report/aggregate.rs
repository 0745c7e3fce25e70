//! Merging sites whose symbolized stacks are the same (one source line
//! compiled into several call instructions, e.g. an unrolled loop), and
//! growth and trend between reports.

use std::collections::{HashMap, VecDeque};

use crate::{
    report::{SiteReport, ThreadSiteReport},
    symbolize::Frame,
};

/// What makes two frames "the same place" for a reader: function, file,
/// line; the address only when nothing else is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FrameKey {
    Symbol {
        symbol: String,
        file: Option<String>,
        line: Option<u32>,
        inlined: bool,
    },
    Address(u64),
}

pub type StackKey = Vec<FrameKey>;

/// The identity of a stack across reports.
pub fn key(frames: &[Frame]) -> StackKey {
    frames
        .iter()
        .map(|f| match &f.symbol {
            Some(symbol) => FrameKey::Symbol {
                symbol: symbol.clone(),
                file: f.file.clone(),
                line: f.line,
                inlined: f.inlined,
            },
            None => FrameKey::Address(f.address),
        })
        .collect()
}

/// Merges sites with identical symbolized stacks; largest first.
pub fn merge_identical(sites: Vec<SiteReport>) -> Vec<SiteReport> {
    let mut index: HashMap<StackKey, usize> = HashMap::new();
    let mut out: Vec<SiteReport> = Vec::new();
    for s in sites {
        let k = key(&s.frames);
        match index.get(&k) {
            Some(&i) => {
                let m = &mut out[i];
                m.bytes += s.bytes;
                m.blocks += s.blocks;
                m.oldest = m.oldest.max(s.oldest);
                m.stack_lost |= s.stack_lost;
                m.cut_short = m.cut_short.or(s.cut_short);
                if m.allocator.is_none() {
                    m.allocator = s.allocator;
                } else if let (Some(a), Some(b)) = (&mut m.allocator, s.allocator) {
                    if !a.split('/').any(|x| x == b) {
                        a.push('/');
                        a.push_str(&b);
                    }
                }
            }
            None => {
                index.insert(k, out.len());
                out.push(s);
            }
        }
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
    out
}

/// Something reported per stack whose size is compared report to report.
pub trait Tracked {
    /// Identity across reports.
    fn key(&self) -> StackKey;
    fn amount(&self) -> u64;
    fn set_change(&mut self, growth: Option<i64>, trend: Trend);
}

impl Tracked for SiteReport {
    fn key(&self) -> StackKey {
        key(&self.frames)
    }
    fn amount(&self) -> u64 {
        self.bytes
    }
    fn set_change(&mut self, growth: Option<i64>, trend: Trend) {
        self.growth = growth;
        self.trend = trend;
    }
}

impl Tracked for ThreadSiteReport {
    fn key(&self) -> StackKey {
        // Same stack, but thread vs process or a different spawn function,
        // is a different site.
        let label = |symbol: String| FrameKey::Symbol {
            symbol,
            file: None,
            line: None,
            inlined: false,
        };
        let mut k = key(&self.frames);
        k.push(label(self.kind.to_string()));
        k.push(label(self.spawned_by.clone().unwrap_or_default()));
        k
    }
    fn amount(&self) -> u64 {
        self.count
    }
    fn set_change(&mut self, growth: Option<i64>, trend: Trend) {
        self.growth = growth;
        self.trend = trend;
    }
}

/// Reports a trend looks back over (the current one included).
pub const TREND_WINDOW: usize = 4;

/// How an amount moved over the last [`TREND_WINDOW`] reports. A leak
/// never gives anything back, so it only rises; a cache or pool levels off,
/// or gives back as well as takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// Seen in fewer reports than the window.
    New,
    /// Rose at least once and never fell: what a leak looks like.
    Growing,
    /// No change: a bounded cache, a pool, one-time set-up (or a leak that
    /// has stopped).
    Steady,
    /// Rose and fell: memory in use and being given back.
    Fluctuating,
    /// Fell at least once and never rose.
    Shrinking,
}

impl Trend {
    pub fn name(self) -> &'static str {
        match self {
            Trend::New => "new",
            Trend::Growing => "growing",
            Trend::Steady => "steady",
            Trend::Fluctuating => "fluctuating",
            Trend::Shrinking => "shrinking",
        }
    }

    /// The trend of `amounts`, oldest first.
    pub fn of(amounts: &VecDeque<u64>) -> Trend {
        if amounts.len() < TREND_WINDOW {
            return Trend::New;
        }
        let steps = amounts.iter().zip(amounts.iter().skip(1));
        let (mut rose, mut fell) = (false, false);
        for (a, b) in steps {
            rose |= b > a;
            fell |= b < a;
        }
        match (rose, fell) {
            (true, false) => Trend::Growing,
            (false, false) => Trend::Steady,
            (true, true) => Trend::Fluctuating,
            (false, true) => Trend::Shrinking,
        }
    }
}

/// Remembers each stack's amounts over the last reports.
pub struct GrowthTracker<T> {
    history: HashMap<StackKey, VecDeque<u64>>,
    _kind: std::marker::PhantomData<T>,
}

impl<T> Default for GrowthTracker<T> {
    fn default() -> Self {
        GrowthTracker {
            history: HashMap::new(),
            _kind: std::marker::PhantomData,
        }
    }
}

impl<T: Tracked> GrowthTracker<T> {
    /// Sets the growth since the previous report and the trend of every
    /// item, and remembers the current amounts. A stack absent from a
    /// report starts over when it comes back.
    pub fn apply(&mut self, items: &mut [T]) {
        let mut current = HashMap::with_capacity(items.len());
        for item in items.iter_mut() {
            let k = item.key();
            let amount = item.amount();
            let mut amounts = self.history.remove(&k).unwrap_or_default();
            let growth = amounts.back().map(|&p| amount as i64 - p as i64);
            amounts.push_back(amount);
            if amounts.len() > TREND_WINDOW {
                amounts.pop_front();
            }
            item.set_change(growth, Trend::of(&amounts));
            current.insert(k, amounts);
        }
        self.history = current;
    }
}

/// Merges thread groups whose spawn stacks (and kind) are the same.
pub fn merge_thread_sites(groups: Vec<ThreadSiteReport>) -> Vec<ThreadSiteReport> {
    let mut index: HashMap<StackKey, usize> = HashMap::new();
    let mut out: Vec<ThreadSiteReport> = Vec::new();
    for g in groups {
        let k = g.key();
        match index.get(&k) {
            Some(&i) => {
                let m = &mut out[i];
                m.count += g.count;
                m.oldest = m.oldest.max(g.oldest);
                m.stack_bytes += g.stack_bytes;
            }
            None => {
                index.insert(k, out.len());
                out.push(g);
            }
        }
    }
    out.sort_by(|a, b| b.count.cmp(&a.count).then(b.oldest.cmp(&a.oldest)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(address: u64, symbol: Option<&str>, line: u32) -> Frame {
        Frame {
            address,
            symbol: symbol.map(str::to_string),
            module: Some("demo".into()),
            file: Some("demo.c".into()),
            line: Some(line),
            inlined: false,
            location: None,
        }
    }

    fn site(bytes: u64, blocks: u64, age_ms: u64, alloc: &str, frames: Vec<Frame>) -> SiteReport {
        SiteReport {
            bytes,
            blocks,
            oldest: Duration::from_millis(age_ms),
            growth: None,
            trend: Trend::New,
            allocator: Some(alloc.into()),
            stack_lost: false,
            cut_short: None,
            frames,
        }
    }

    #[test]
    fn merges_same_line_different_addresses() {
        let a = site(
            1000,
            1,
            100,
            "calloc",
            vec![frame(0x10, Some("leak"), 7), frame(0x99, Some("main"), 20)],
        );
        let b = site(
            1000,
            1,
            300,
            "calloc",
            vec![frame(0x18, Some("leak"), 7), frame(0x99, Some("main"), 20)],
        );
        let c = site(50, 1, 300, "malloc", vec![frame(0x30, Some("other"), 9)]);
        let merged = merge_identical(vec![c, a, b]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].bytes, 2000);
        assert_eq!(merged[0].blocks, 2);
        assert_eq!(merged[0].oldest, Duration::from_millis(300));
        assert_eq!(merged[0].allocator.as_deref(), Some("calloc"));
        assert_eq!(merged[1].bytes, 50);
    }

    #[test]
    fn unknown_frames_merge_only_on_equal_addresses() {
        let a = site(1, 1, 0, "malloc", vec![frame(0x10, None, 0)]);
        let b = site(1, 1, 0, "malloc", vec![frame(0x11, None, 0)]);
        assert_eq!(merge_identical(vec![a, b]).len(), 2);
    }

    #[test]
    fn growth_between_reports() {
        let mut g = GrowthTracker::<SiteReport>::default();
        let mut first = vec![site(100, 1, 0, "malloc", vec![frame(1, Some("f"), 1)])];
        g.apply(&mut first);
        assert_eq!(first[0].growth, None);
        let mut second = vec![
            site(300, 3, 0, "malloc", vec![frame(1, Some("f"), 1)]),
            site(10, 1, 0, "malloc", vec![frame(2, Some("g"), 2)]),
        ];
        g.apply(&mut second);
        assert_eq!(second[0].growth, Some(200));
        assert_eq!(second[1].growth, None);
    }

    /// Amounts of one stack over successive reports, and the trend after
    /// the last of them.
    fn trend_after(amounts: &[u64]) -> Trend {
        let mut g = GrowthTracker::<SiteReport>::default();
        let mut trend = Trend::New;
        for &a in amounts {
            let mut items = vec![site(a, 1, 0, "malloc", vec![frame(1, Some("f"), 1)])];
            g.apply(&mut items);
            trend = items[0].trend;
        }
        trend
    }

    #[test]
    fn trends_tell_leaks_from_caches() {
        assert_eq!(trend_after(&[100, 200, 300]), Trend::New);
        // A leak only rises, even when it pauses.
        assert_eq!(trend_after(&[100, 200, 200, 300]), Trend::Growing);
        // A cache that filled up stays put once the window has passed.
        assert_eq!(trend_after(&[100, 200, 300, 300]), Trend::Growing);
        assert_eq!(trend_after(&[100, 200, 300, 300, 300, 300]), Trend::Steady);
        // A working set takes and gives back.
        assert_eq!(trend_after(&[100, 300, 200, 300]), Trend::Fluctuating);
        assert_eq!(trend_after(&[400, 300, 300, 100]), Trend::Shrinking);
        // Only the last four reports count.
        assert_eq!(trend_after(&[500, 100, 200, 300, 400]), Trend::Growing);
    }

    #[test]
    fn a_stack_that_drops_out_starts_over() {
        let mut g = GrowthTracker::<SiteReport>::default();
        let f = || site(100, 1, 0, "malloc", vec![frame(1, Some("f"), 1)]);
        let other = || site(5, 1, 0, "malloc", vec![frame(2, Some("g"), 2)]);
        for _ in 0..TREND_WINDOW {
            g.apply(&mut [f()]);
        }
        g.apply(&mut [other()]);
        let mut back = [f()];
        g.apply(&mut back);
        assert_eq!((back[0].growth, back[0].trend), (None, Trend::New));
    }
}
