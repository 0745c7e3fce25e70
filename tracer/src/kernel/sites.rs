//! Kernel blocks grouped into sites: one per kernel stack, user stack,
//! cache (or page order) and GFP flags; and the report's totals.

use std::{
    collections::{hash_map::Entry, HashMap},
    time::Duration,
};

use tracer_common::{KmemBlock, KMEM_PAGE, KMEM_PERCPU};

use super::gfp;
use crate::{
    report::{
        aggregate::{StackKey, Tracked, Trend},
        kernel::{Amount, Backing, CacheTotal, KernelKind, KernelReport, KernelSite},
        suppressions::{Suppressed, Suppressions},
    },
    symbolize::Frame,
};

/// What makes blocks one site before symbolizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SiteKey {
    kind: u32,
    /// The cache's address (kmem_cache_alloc), else the object size
    /// (kmalloc: its size class).
    cache_or_size: u64,
    order: u32,
    gfp: u32,
    kernel_stack: u64,
    user_stack: u64,
}

/// One site's old blocks, not yet symbolized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSite {
    key_kind: u32,
    cache: u64,
    size: u64,
    order: u32,
    gfp: u32,
    pub kernel_stack: u64,
    pub user_stack: u64,
    pub bytes: u64,
    pub requested: u64,
    pub blocks: u64,
    pub oldest: Duration,
}

/// Blocks grouped: the old ones by site, largest first, and every one.
pub struct Grouped {
    pub sites: Vec<RawSite>,
    pub live: Amount,
}

/// Groups the blocks older than `older_than` at `now_ns` into sites.
pub fn group(blocks: &[&KmemBlock], now_ns: u64, older_than: Duration) -> Grouped {
    let mut live = Amount::default();
    let mut sites: HashMap<SiteKey, RawSite> = HashMap::new();
    let threshold = older_than.as_nanos() as u64;
    for b in blocks {
        live.add(b.bytes, 1);
        let age = now_ns.saturating_sub(b.ts_ns);
        if age < threshold {
            continue;
        }
        let key = SiteKey {
            kind: b.kind,
            cache_or_size: if b.cache != 0 { b.cache } else { b.bytes },
            order: b.order,
            gfp: b.gfp,
            kernel_stack: b.kernel_stack,
            user_stack: b.user_stack,
        };
        let s = sites.entry(key).or_insert_with(|| RawSite {
            key_kind: b.kind,
            cache: b.cache,
            size: b.bytes,
            order: b.order,
            gfp: b.gfp,
            kernel_stack: b.kernel_stack,
            user_stack: b.user_stack,
            bytes: 0,
            requested: 0,
            blocks: 0,
            oldest: Duration::ZERO,
        });
        s.bytes += b.bytes;
        s.requested += b.requested;
        s.blocks += 1;
        s.oldest = s.oldest.max(Duration::from_nanos(age));
    }
    let mut sites: Vec<RawSite> = sites.into_values().collect();
    sites.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(a.kernel_stack.cmp(&b.kernel_stack))
    });
    Grouped { sites, live }
}

impl RawSite {
    pub fn into_site(
        self,
        caches: &HashMap<u64, String>,
        frames: Vec<Frame>,
        user_frames: Vec<Frame>,
    ) -> KernelSite {
        let kind = match self.key_kind {
            KMEM_PAGE => KernelKind::Page,
            KMEM_PERCPU => KernelKind::Percpu,
            _ => KernelKind::Slab,
        };
        let cache = match kind {
            KernelKind::Slab if self.cache != 0 => Some(
                caches
                    .get(&self.cache)
                    .cloned()
                    .unwrap_or_else(|| format!("cache@{:#x}", self.cache)),
            ),
            KernelKind::Slab => Some(kmalloc_cache(self.size, self.gfp)),
            _ => None,
        };
        KernelSite {
            kind,
            cache,
            order: (kind == KernelKind::Page).then_some(self.order),
            gfp: gfp::names(self.gfp),
            bytes: self.bytes,
            requested: self.requested,
            blocks: self.blocks,
            oldest: self.oldest,
            growth: None,
            trend: Trend::New,
            backing: None,
            merged_with: Vec::new(),
            frames,
            user_frames,
        }
    }
}

/// The kmalloc cache an object of `size` bytes comes from, as
/// /proc/slabinfo names it (`kmalloc-cg-` when accounted to a memory
/// cgroup, `kmalloc-rcl-` when reclaimable); beyond 8 KiB kmalloc takes
/// pages.
pub fn kmalloc_cache(size: u64, gfp_flags: u32) -> String {
    const ACCOUNT: u32 = 1 << 22;
    const RECLAIMABLE: u32 = 1 << 4;
    if size > 8192 {
        return "kmalloc-large".to_string();
    }
    let class = if size >= 1024 && size.is_multiple_of(1024) {
        format!("{}k", size / 1024)
    } else {
        size.to_string()
    };
    let prefix = if gfp_flags & ACCOUNT != 0 {
        "kmalloc-cg-"
    } else if gfp_flags & RECLAIMABLE != 0 {
        "kmalloc-rcl-"
    } else {
        "kmalloc-"
    };
    format!("{prefix}{class}")
}

/// Kernel frames without the ones the tracepoint and its program add on
/// top of the allocator's.
pub fn without_tracing_frames(frames: Vec<Frame>) -> Vec<Frame> {
    let tracing = |f: &Frame| {
        f.symbol.as_deref().is_none_or(|s| {
            s.starts_with("bpf_")
                || s.starts_with("__bpf_trace")
                || s.starts_with("__traceiter_")
                || s.starts_with("trace_")
                || s.starts_with("perf_trace")
        })
    };
    let skip = frames.iter().take_while(|f| tracing(f)).count();
    frames.into_iter().skip(skip).collect()
}

/// Sites whose symbolized stacks, cache or order and GFP flags are the
/// same, as one (two call sites in one function, a stack seen through
/// different return addresses); largest first.
pub fn merge_same(sites: Vec<KernelSite>) -> Vec<KernelSite> {
    let mut index: HashMap<StackKey, usize> = HashMap::new();
    let mut out: Vec<KernelSite> = Vec::with_capacity(sites.len());
    for s in sites {
        match index.entry(s.key()) {
            Entry::Occupied(e) => {
                let m = &mut out[*e.get()];
                m.bytes += s.bytes;
                m.requested += s.requested;
                m.blocks += s.blocks;
                m.oldest = m.oldest.max(s.oldest);
            }
            Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(s);
            }
        }
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
    out
}

/// Takes the sites `rules` name (by a kernel or user frame) out of
/// `sites`, counted.
pub fn suppress(sites: &mut Vec<KernelSite>, rules: &Suppressions) -> Suppressed {
    let mut suppressed = Suppressed::default();
    sites.retain(|s| {
        let rule = rules
            .matching(&s.frames)
            .or_else(|| rules.matching(&s.user_frames));
        match (rule, s.backing) {
            (Some(rule), None) => {
                suppressed.add(rule, s.blocks, s.bytes);
                false
            }
            // Pages under a slab go with it (never reported on their own).
            (Some(_), Some(_)) => false,
            (None, _) => true,
        }
    });
    suppressed
}

/// The function a kernel site is named by: the first frame below the
/// allocator's own (`alloc_pipe_info` under `__kmalloc_cache_noprof`).
pub fn site_function(frames: &[Frame]) -> Option<&str> {
    let allocator = |s: &str| {
        s.ends_with("_noprof")
            || s.contains("kmalloc")
            || s.contains("kmem_cache_alloc")
            || s.contains("alloc_pages")
            || s.contains("folio_alloc")
            || s.contains("slab_alloc")
            || s.starts_with("pcpu_")
            || s.contains("alloc_percpu")
            || s == "allocate_slab"
            || s == "new_slab"
    };
    let named = || frames.iter().filter_map(|f| f.symbol.as_deref());
    named().find(|s| !allocator(s)).or_else(|| named().next())
}

/// Marks page sites whose pages hold what another site reports: a new
/// slab's pages (its objects are the slab sites), a large kmalloc's.
pub fn mark_backing(sites: &mut [KernelSite]) {
    for s in sites.iter_mut().filter(|s| s.kind == KernelKind::Page) {
        let has = |names: &[&str]| {
            s.frames
                .iter()
                .any(|f| f.symbol.as_deref().is_some_and(|n| names.contains(&n)))
        };
        s.backing = if has(&["allocate_slab", "new_slab"]) {
            Some(Backing::Slab)
        } else if has(&[
            "___kmalloc_large_node",
            "__kmalloc_large_node_noprof",
            "__kmalloc_large_noprof",
        ]) {
            Some(Backing::LargeKmalloc)
        } else {
            None
        };
    }
}

/// The report of symbolized `sites` (largest first): totals by kind and
/// cache, the `top` largest kept.
pub fn totals(
    sites: Vec<KernelSite>,
    live: &Amount,
    older_than: Duration,
    top: usize,
) -> KernelReport {
    let mut report = KernelReport {
        whole_kernel: false,
        older_than,
        live: *live,
        old_slab: Amount::default(),
        old_pages: Amount::default(),
        old_percpu: Amount::default(),
        old_backing: Amount::default(),
        caches: Vec::new(),
        sites_total: sites.len(),
        sites: Vec::new(),
        dropped: Default::default(),
        suppressed: None,
    };
    let mut caches: HashMap<String, Amount> = HashMap::new();
    for s in &sites {
        let into = match (s.backing, s.kind) {
            (Some(_), _) => &mut report.old_backing,
            (None, KernelKind::Slab) => &mut report.old_slab,
            (None, KernelKind::Page) => &mut report.old_pages,
            (None, KernelKind::Percpu) => &mut report.old_percpu,
        };
        into.add(s.bytes, s.blocks);
        if let Some(c) = &s.cache {
            caches.entry(c.clone()).or_default().add(s.bytes, s.blocks);
        }
    }
    // Backing pages are not outstanding twice.
    report.live.bytes = report.live.bytes.saturating_sub(report.old_backing.bytes);
    report.live.blocks = report.live.blocks.saturating_sub(report.old_backing.blocks);
    let mut caches: Vec<CacheTotal> = caches
        .into_iter()
        .map(|(name, amount)| CacheTotal { name, amount })
        .collect();
    caches.sort_by(|a, b| {
        b.amount
            .bytes
            .cmp(&a.amount.bytes)
            .then(a.name.cmp(&b.name))
    });
    report.caches = caches;
    report.sites_total = sites.iter().filter(|s| s.backing.is_none()).count();
    report.sites = sites
        .into_iter()
        .filter(|s| s.backing.is_none())
        .take(top)
        .collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::KMEM_SLAB;

    fn block(kind: u32, bytes: u64, ts_ns: u64, stack: u64) -> KmemBlock {
        KmemBlock {
            ts_ns,
            bytes,
            requested: bytes,
            kernel_stack: stack,
            kind,
            ..KmemBlock::default()
        }
    }

    #[test]
    fn groups_old_blocks_by_stack_and_size() {
        let s = 1_000_000_000;
        let blocks = [
            block(KMEM_SLAB, 192, 0, 7),
            block(KMEM_SLAB, 192, s / 2, 7),
            block(KMEM_SLAB, 64, 0, 7),
            block(KMEM_PAGE, 4096, 0, 9),
            block(KMEM_SLAB, 192, 3 * s, 7), // young
        ];
        let refs: Vec<&KmemBlock> = blocks.iter().collect();
        let g = group(&refs, 3 * s, Duration::from_secs(1));
        assert_eq!(
            g.live,
            Amount {
                bytes: 192 * 3 + 64 + 4096,
                blocks: 5
            }
        );
        let got: Vec<(u64, u64, u64)> = g
            .sites
            .iter()
            .map(|s| (s.kernel_stack, s.bytes, s.blocks))
            .collect();
        assert_eq!(got, vec![(9, 4096, 1), (7, 384, 2), (7, 64, 1)]);
        assert_eq!(g.sites[1].oldest, Duration::from_secs(3));
    }

    fn frame(symbol: &str, address: u64) -> Frame {
        Frame {
            symbol: Some(symbol.to_string()),
            module: Some("kernel".to_string()),
            ..Frame::unknown(address)
        }
    }

    fn site(bytes: u64, frames: Vec<Frame>) -> KernelSite {
        let raw = group(&[&block(KMEM_SLAB, bytes, 0, 1)], 1, Duration::ZERO)
            .sites
            .remove(0);
        raw.into_site(&HashMap::new(), frames, Vec::new())
    }

    #[test]
    fn sites_of_one_symbolized_stack_merge_and_rules_take_them_out() {
        let pipe = |at| {
            vec![
                frame("__kmalloc_noprof", at),
                frame("alloc_pipe_info", at + 1),
            ]
        };
        let sock = vec![
            frame("kmem_cache_alloc_noprof", 9),
            frame("unix_create1", 10),
        ];
        let merged = merge_same(vec![
            site(1024, pipe(1)),
            site(64, sock.clone()),
            site(1024, pipe(5)),
        ]);
        let got: Vec<(Option<&str>, u64, u64)> = merged
            .iter()
            .map(|s| (site_function(&s.frames), s.bytes, s.blocks))
            .collect();
        assert_eq!(
            got,
            [
                (Some("alloc_pipe_info"), 2048, 2),
                (Some("unix_create1"), 64, 1)
            ]
        );
        let rules = Suppressions::parse("leak:^unix_\n", "f").expect("rules");
        let mut left = merged;
        let hidden = suppress(&mut left, &rules);
        assert_eq!(left.len(), 1);
        assert_eq!((hidden.sites, hidden.blocks, hidden.bytes), (1, 1, 64));
    }

    #[test]
    fn kmalloc_caches_named_as_slabinfo_does() {
        assert_eq!(kmalloc_cache(192, 0xcc0), "kmalloc-192");
        assert_eq!(kmalloc_cache(1024, 0x400cc0), "kmalloc-cg-1k");
        assert_eq!(kmalloc_cache(16384, 0xcc0), "kmalloc-large");
    }
}
