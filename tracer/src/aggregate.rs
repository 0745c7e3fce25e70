//! Merging sites whose symbolized stacks are the same (one source line
//! compiled into several call instructions, e.g. an unrolled loop), and
//! growth between reports.

use std::collections::HashMap;

use crate::{
    report::{GoroutineSiteReport, SiteReport, ThreadSiteReport},
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

fn key(frames: &[Frame]) -> StackKey {
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
    fn set_growth(&mut self, growth: Option<i64>);
}

impl Tracked for SiteReport {
    fn key(&self) -> StackKey {
        key(&self.frames)
    }
    fn amount(&self) -> u64 {
        self.bytes
    }
    fn set_growth(&mut self, growth: Option<i64>) {
        self.growth = growth;
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
    fn set_growth(&mut self, growth: Option<i64>) {
        self.growth = growth;
    }
}

impl Tracked for GoroutineSiteReport {
    fn key(&self) -> StackKey {
        let mut k = key(std::slice::from_ref(&self.created_by));
        k.push(FrameKey::Symbol {
            symbol: self.start.clone().unwrap_or_default(),
            file: None,
            line: None,
            inlined: false,
        });
        k
    }
    fn amount(&self) -> u64 {
        self.count
    }
    fn set_growth(&mut self, growth: Option<i64>) {
        self.growth = growth;
    }
}

/// Remembers each stack's amount from the previous report.
pub struct GrowthTracker<T> {
    previous: HashMap<StackKey, u64>,
    _kind: std::marker::PhantomData<T>,
}

impl<T> Default for GrowthTracker<T> {
    fn default() -> Self {
        GrowthTracker {
            previous: HashMap::new(),
            _kind: std::marker::PhantomData,
        }
    }
}

impl<T: Tracked> GrowthTracker<T> {
    /// Sets the growth of every item and remembers the current amounts.
    pub fn apply(&mut self, items: &mut [T]) {
        let mut current = HashMap::with_capacity(items.len());
        for item in items.iter_mut() {
            let k = item.key();
            let amount = item.amount();
            item.set_growth(self.previous.get(&k).map(|&p| amount as i64 - p as i64));
            current.insert(k, amount);
        }
        self.previous = current;
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
            allocator: Some(alloc.into()),
            stack_lost: false,
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
}
