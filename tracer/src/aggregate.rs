//! Merging sites whose symbolized stacks are the same (one source line
//! compiled into several call instructions, e.g. an unrolled loop), and
//! growth between reports.

use std::collections::HashMap;

use crate::{report::SiteReport, symbolize::Frame};

/// What makes two frames "the same place" for a reader: function, file,
/// line; the address only when nothing else is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FrameKey {
    Symbol {
        symbol: String,
        file: Option<String>,
        line: Option<u32>,
        inlined: bool,
    },
    Address(u64),
}

type StackKey = Vec<FrameKey>;

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

/// Remembers each stack's bytes from the previous report.
#[derive(Default)]
pub struct GrowthTracker {
    previous: HashMap<StackKey, u64>,
}

impl GrowthTracker {
    /// Sets `growth` on every site and remembers the current bytes.
    pub fn apply(&mut self, sites: &mut [SiteReport]) {
        let mut current = HashMap::with_capacity(sites.len());
        for s in sites.iter_mut() {
            let k = key(&s.frames);
            s.growth = self.previous.get(&k).map(|&p| s.bytes as i64 - p as i64);
            current.insert(k, s.bytes);
        }
        self.previous = current;
    }
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
        let mut g = GrowthTracker::default();
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
