//! The kernel-memory section of a report (`--kernel`): what the kernel's
//! allocators hold, by kernel stack, rendered as text and JSON.

use std::{
    io::{self, Write},
    time::Duration,
};

use serde_json::{json, Value};

use super::{
    aggregate::{self, FrameKey, StackKey, Tracked, Trend},
    bytes, human_duration,
    suppressions::Suppressed,
    Style,
};
use crate::symbolize::Frame;

/// Which kernel allocator a block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelKind {
    /// kmalloc or kmem_cache_alloc.
    Slab,
    Page,
    Percpu,
}

impl KernelKind {
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Slab => "slab",
            KernelKind::Page => "page",
            KernelKind::Percpu => "percpu",
        }
    }
}

/// What a page allocation is for, when its stack says it holds memory
/// reported already: a slab's objects, or one large kmalloc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    Slab,
    LargeKmalloc,
}

impl Backing {
    pub fn name(self) -> &'static str {
        match self {
            Backing::Slab => "slab",
            Backing::LargeKmalloc => "kmalloc",
        }
    }
}

/// One kernel allocation site: a kernel stack (and the traced process's
/// user stack), one cache or page order and GFP flags.
#[derive(Debug, Clone)]
pub struct KernelSite {
    pub kind: KernelKind,
    /// Slab objects: the cache (`kmalloc-192`, `filp`, ...).
    pub cache: Option<String>,
    /// Pages: the order of the allocation.
    pub order: Option<u32>,
    pub gfp: String,
    pub bytes: u64,
    /// Bytes asked for (kmalloc and per-CPU requests; else `bytes`).
    pub requested: u64,
    pub blocks: u64,
    pub oldest: Duration,
    pub growth: Option<i64>,
    pub trend: Trend,
    /// Pages holding what other sites report already (not in the totals).
    pub backing: Option<Backing>,
    /// The other slab caches SLUB merged into `cache` (the objects may be
    /// any of them: `struct kmem_cache` names only the first).
    pub merged_with: Vec<String>,
    /// Kernel stack, innermost first (the allocator's own frame first).
    pub frames: Vec<Frame>,
    /// The allocating process's user stack (traced processes only).
    pub user_frames: Vec<Frame>,
}

impl KernelSite {
    /// What the site allocates: `slab filp`, `page order 0`, `percpu`.
    pub fn what(&self) -> String {
        match (self.kind, &self.cache, self.order) {
            (KernelKind::Slab, Some(c), _) => format!("slab {c}"),
            (KernelKind::Page, _, Some(o)) => format!("page order {o}"),
            (k, _, _) => k.name().to_string(),
        }
    }
}

impl Tracked for KernelSite {
    fn key(&self) -> StackKey {
        let mut k = vec![FrameKey::Symbol {
            symbol: format!("{} {}", self.what(), self.gfp),
            file: None,
            line: None,
            inlined: false,
        }];
        k.extend(aggregate::key(&self.frames));
        k.extend(aggregate::key(&self.user_frames));
        k
    }
    fn amount(&self) -> u64 {
        self.bytes
    }
    fn set_change(&mut self, growth: Option<i64>, trend: Trend) {
        self.growth = growth;
        self.trend = trend;
    }
}

/// Bytes and blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub bytes: u64,
    pub blocks: u64,
}

impl Amount {
    pub fn add(&mut self, bytes: u64, blocks: u64) {
        self.bytes += bytes;
        self.blocks += blocks;
    }
}

/// One slab cache's share of the old objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTotal {
    pub name: String,
    pub amount: Amount,
}

/// What could not be recorded (since attach).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelDropped {
    /// Blocks not recorded: the table was full.
    pub blocks: u64,
    /// Blocks recorded without their kernel stack.
    pub stacks: u64,
    /// Program runs the kernel skipped (one of them already running on
    /// that CPU): allocations or frees not seen.
    pub missed: u64,
    /// Frees whose block the table failed to remove (it stays).
    pub frees_failed: u64,
}

/// The kernel memory a report covers.
#[derive(Debug, Clone)]
pub struct KernelReport {
    /// The whole kernel's (`--kernel` alone), or only what the target's
    /// processes made it allocate.
    pub whole_kernel: bool,
    pub older_than: Duration,
    /// Every outstanding block recorded, young ones included (backing
    /// pages excepted).
    pub live: Amount,
    /// Outstanding longer than the threshold, by allocator (backing pages
    /// excepted).
    pub old_slab: Amount,
    pub old_pages: Amount,
    pub old_percpu: Amount,
    /// Pages older than the threshold that hold slab objects or a large
    /// kmalloc (reported through those).
    pub old_backing: Amount,
    /// Slab caches by old bytes, largest first.
    pub caches: Vec<CacheTotal>,
    pub sites_total: usize,
    /// The largest sites (--top); pages under slabs and large kmallocs
    /// are in `old_backing` only.
    pub sites: Vec<KernelSite>,
    pub dropped: KernelDropped,
    /// With --suppressions: the kernel sites the rules hid.
    pub suppressed: Option<Suppressed>,
}

impl KernelReport {
    pub fn old(&self) -> Amount {
        let mut a = Amount::default();
        for x in [self.old_slab, self.old_pages, self.old_percpu] {
            a.add(x.bytes, x.blocks);
        }
        a
    }
}

fn frame_text(f: &Frame) -> String {
    let name = f.symbol.as_deref().unwrap_or("??");
    match (&f.file, f.line, &f.module) {
        (Some(file), Some(line), _) => format!("{name} ({file}:{line})"),
        (_, _, Some(m)) if m != "kernel" => format!("{name} [{m}]"),
        _ => name.to_string(),
    }
}

pub fn write_text(out: &mut impl Write, k: &KernelReport, style: Style) -> io::Result<()> {
    let old = k.old();
    let whose = if k.whole_kernel {
        "the whole kernel"
    } else {
        "allocated for this process"
    };
    writeln!(
        out,
        "   kernel memory ({whose}): {} in {} blocks outstanding, {} in {} older than {} (slab {} in {}, pages {} in {}, percpu {} in {})",
        bytes(k.live.bytes),
        k.live.blocks,
        bytes(old.bytes),
        old.blocks,
        human_duration(k.older_than),
        bytes(k.old_slab.bytes),
        k.old_slab.blocks,
        bytes(k.old_pages.bytes),
        k.old_pages.blocks,
        bytes(k.old_percpu.bytes),
        k.old_percpu.blocks,
    )?;
    if k.old_backing.blocks > 0 {
        writeln!(
            out,
            "   (and {} in {} pages under slabs and large kmallocs, counted as their objects)",
            bytes(k.old_backing.bytes),
            k.old_backing.blocks
        )?;
    }
    if !k.caches.is_empty() {
        let top: Vec<String> = k
            .caches
            .iter()
            .take(8)
            .map(|c| format!("{} {} ({})", c.name, bytes(c.amount.bytes), c.amount.blocks))
            .collect();
        writeln!(out, "   slab caches: {}", top.join(", "))?;
    }
    if let Some(sup) = &k.suppressed {
        writeln!(out, "   kernel suppressed: {}", sup.summary())?;
    }
    let d = k.dropped;
    if d.blocks + d.stacks + d.missed + d.frees_failed > 0 {
        writeln!(
            out,
            "   kernel: not recorded since attach: {} blocks (table full, see --max-kernel-blocks), {} stacks, {} events missed (a probe already running on that CPU), {} frees failed",
            d.blocks, d.stacks, d.missed, d.frees_failed
        )?;
    }
    for (i, s) in k.sites.iter().enumerate() {
        let growth = match s.growth {
            Some(g) if g > 0 => format!(", +{} since last", bytes(g as u64)),
            Some(g) if g < 0 => format!(", -{} since last", bytes(g.unsigned_abs())),
            Some(_) => ", unchanged".to_string(),
            None => String::new(),
        };
        writeln!(
            out,
            "   {}",
            style.paint(
                "33",
                &format!(
                    "kernel #{} {}{} {}: {} in {} blocks, oldest {}{growth}, {}",
                    i + 1,
                    s.what(),
                    if s.merged_with.is_empty() {
                        String::new()
                    } else {
                        format!(" (merged with {})", s.merged_with.join(", "))
                    },
                    s.gfp,
                    bytes(s.bytes),
                    s.blocks,
                    human_duration(s.oldest),
                    s.trend.name()
                )
            )
        )?;
        for f in &s.frames {
            writeln!(out, "       {}", frame_text(f))?;
        }
        if !s.user_frames.is_empty() {
            writeln!(out, "       -- user --")?;
            for f in &s.user_frames {
                writeln!(out, "       {}", frame_text(f))?;
            }
        }
    }
    if k.sites.len() < k.sites_total {
        writeln!(
            out,
            "   ({} smaller kernel sites not shown; see --top)",
            k.sites_total - k.sites.len()
        )?;
    }
    Ok(())
}

fn amount(a: Amount) -> Value {
    json!({"bytes": a.bytes, "blocks": a.blocks})
}

fn frames_json(frames: &[Frame]) -> Value {
    Value::Array(
        frames
            .iter()
            .map(|f| {
                json!({
                    "address": format!("{:#x}", f.address),
                    "function": f.symbol,
                    "module": f.module,
                })
            })
            .collect(),
    )
}

pub fn to_json(k: &KernelReport) -> Value {
    json!({
        "whole_kernel": k.whole_kernel,
        "live": amount(k.live),
        "old": amount(k.old()),
        "old_by_kind": {
            "slab": amount(k.old_slab),
            "page": amount(k.old_pages),
            "percpu": amount(k.old_percpu),
        },
        "old_backing_pages": amount(k.old_backing),
        "caches": k.caches.iter().map(|c| json!({
            "name": c.name, "bytes": c.amount.bytes, "blocks": c.amount.blocks,
        })).collect::<Vec<_>>(),
        "dropped": {
            "blocks": k.dropped.blocks,
            "stacks": k.dropped.stacks,
            "missed_events": k.dropped.missed,
            "frees_failed": k.dropped.frees_failed,
        },
        "suppressed": k.suppressed.as_ref().map(Suppressed::to_json),
        "sites_total": k.sites_total,
        "sites": k.sites.iter().map(|s| json!({
            "site": crate::kernel::site_function(&s.frames),
            "kind": s.kind.name(),
            "cache": s.cache,
            "cache_merged_with": s.merged_with,
            "order": s.order,
            "gfp": s.gfp,
            "bytes": s.bytes,
            "requested_bytes": s.requested,
            "blocks": s.blocks,
            "oldest_ms": s.oldest.as_millis() as u64,
            "growth_bytes": s.growth,
            "trend": s.trend.name(),
            "backing": s.backing.map(Backing::name),
            "stack": frames_json(&s.frames),
            "user_stack": frames_json(&s.user_frames),
        })).collect::<Vec<_>>(),
    })
}
