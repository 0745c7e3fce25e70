//! The whole of one reading for the exports (pprof, flame graphs, the live
//! endpoint): every site that holds or allocated memory, not only the top
//! ones a text report shows, merged by symbolized stack like the report's.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::{
    collect::{stacks::Stacks, SiteId, Snapshot},
    golang::GoReport,
    report::aggregate::{self, StackKey},
    report::suppressions::Suppressions,
    symbolize::{Frame, Symbolizer, SymbolizerGone},
};

/// Where a heap sample's blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapSource {
    /// The C allocator, every call traced.
    Malloc,
    /// The Go runtime's own heap profile (sampled, unsampled like pprof).
    Go,
    /// The kernel's allocators (`--kernel`): kernel stack, then the
    /// allocating process's user stack.
    Kernel,
}

impl HeapSource {
    pub fn name(self) -> &'static str {
        match self {
            HeapSource::Malloc => "malloc",
            HeapSource::Go => "go",
            HeapSource::Kernel => "kernel",
        }
    }
}

/// One allocation stack's values.
#[derive(Debug, Clone)]
pub struct HeapSample {
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Outstanding longer than the threshold.
    pub inuse_bytes: u64,
    pub inuse_objects: u64,
    /// Allocated since attach, freed or not.
    pub alloc_bytes: u64,
    pub alloc_objects: u64,
    /// Of the outstanding, what the report's scan found unreachable
    /// (definitely or indirectly lost; see [`Profiles::scanned`]).
    pub unreachable_bytes: u64,
    pub unreachable_objects: u64,
    pub source: HeapSource,
}

/// When a goroutine group was created, relative to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    AfterAttach,
    BeforeAttach,
}

impl Created {
    pub fn name(self) -> &'static str {
        match self {
            Created::AfterAttach => "after-attach",
            Created::BeforeAttach => "before-attach",
        }
    }
}

/// Goroutines of one creation stack.
#[derive(Debug, Clone)]
pub struct GoroutineSample {
    /// The creating stack, innermost first (for goroutines from before
    /// attach, only their `go` statement is known).
    pub frames: Vec<Frame>,
    pub count: u64,
    pub created: Created,
}

/// What one report holds, whole, for the exports.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub pid: u32,
    /// The container's name, when an engine named it (a `container`
    /// label on every heap sample).
    pub container: Option<String>,
    pub older_than: Duration,
    pub taken: SystemTime,
    pub since_attach: Duration,
    /// Every allocation stack with outstanding or allocated bytes.
    pub heap: Vec<HeapSample>,
    /// The report has a complete reachability scan: the heap samples'
    /// unreachable values are its verdicts.
    pub scanned: bool,
    /// Present for Go targets.
    pub goroutines: Option<Vec<GoroutineSample>>,
}

impl Profiles {
    /// Whose they are, as titles say it: `pid 42`, or `the whole kernel`
    /// (pid 0: `--kernel` alone).
    pub fn subject(&self) -> String {
        match self.pid {
            0 => "the whole kernel".to_string(),
            pid => format!("pid {pid}"),
        }
    }

    /// Outstanding bytes of the traced C allocator's sites (what a report
    /// calls outstanding).
    pub fn malloc_inuse_bytes(&self) -> u64 {
        self.heap
            .iter()
            .filter(|s| s.source == HeapSource::Malloc)
            .map(|s| s.inuse_bytes)
            .sum()
    }
}

/// What `snap` (and the Go section) hold, by symbolized stack, with what
/// a scan found `unreachable` by site.
pub(super) async fn build(
    symbolizer: &Symbolizer,
    stacks: &mut Stacks,
    snap: &Snapshot,
    go: Option<&GoReport>,
    suppressions: Option<&Suppressions>,
    unreachable: Option<&HashMap<SiteId, (u64, u64)>>,
) -> Result<(Vec<HeapSample>, Option<Vec<GoroutineSample>>), SymbolizerGone> {
    let inuse: HashMap<SiteId, (u64, u64)> = snap
        .sites
        .iter()
        .map(|s| (s.site, (s.bytes, s.blocks)))
        .collect();
    let mut ids: Vec<SiteId> = snap.allocated.keys().copied().collect();
    ids.extend(inuse.keys().copied());
    ids.extend(unreachable.into_iter().flat_map(|u| u.keys().copied()));
    ids.sort();
    ids.dedup();
    let addrs: Vec<Vec<u64>> = ids
        .iter()
        .map(|id| stacks.frames(id.caller, id.stack_id))
        .collect();
    let by_addr = symbolizer
        .symbolize_set(addrs.iter().flatten().copied(), true)
        .await?;

    let mut index: HashMap<StackKey, usize> = HashMap::new();
    let mut heap: Vec<HeapSample> = Vec::new();
    for (id, stack) in ids.iter().zip(&addrs) {
        let frames: Vec<_> = stack
            .iter()
            .flat_map(|a| by_addr.get(a).cloned().unwrap_or_default())
            .collect();
        let (inuse_bytes, inuse_objects) = inuse.get(id).copied().unwrap_or_default();
        let allocated = snap.allocated.get(id).copied().unwrap_or_default();
        let (unreachable_bytes, unreachable_objects) = unreachable
            .and_then(|u| u.get(id).copied())
            .unwrap_or_default();
        let i = *index.entry(aggregate::key(&frames)).or_insert_with(|| {
            heap.push(HeapSample {
                frames,
                inuse_bytes: 0,
                inuse_objects: 0,
                alloc_bytes: 0,
                alloc_objects: 0,
                unreachable_bytes: 0,
                unreachable_objects: 0,
                source: HeapSource::Malloc,
            });
            heap.len() - 1
        });
        let s = &mut heap[i];
        s.inuse_bytes += inuse_bytes;
        s.inuse_objects += inuse_objects;
        s.alloc_bytes += allocated.bytes;
        s.alloc_objects += allocated.blocks;
        s.unreachable_bytes += unreachable_bytes;
        s.unreachable_objects += unreachable_objects;
    }
    let hidden = |frames: &[crate::symbolize::Frame]| {
        suppressions.is_some_and(|rules| rules.matching(frames).is_some())
    };
    heap.retain(|s| !hidden(&s.frames));
    heap.sort_by(|a, b| {
        b.inuse_bytes
            .cmp(&a.inuse_bytes)
            .then(b.alloc_bytes.cmp(&a.alloc_bytes))
    });

    let Some(go) = go else {
        return Ok((heap, None));
    };
    // The runtime's own heap profile: in use as of the last GC (its
    // allocated totals are not read).
    for site in go.heap_profile.iter().flatten() {
        if hidden(&site.frames) {
            continue;
        }
        heap.push(HeapSample {
            frames: site.frames.clone(),
            inuse_bytes: site.bytes,
            inuse_objects: site.objects,
            alloc_bytes: 0,
            alloc_objects: 0,
            unreachable_bytes: 0,
            unreachable_objects: 0,
            source: HeapSource::Go,
        });
    }
    let mut goroutines: Vec<GoroutineSample> = go
        .all_goroutines
        .iter()
        .map(|g| GoroutineSample {
            frames: if g.frames.is_empty() {
                vec![g.created_by.clone()]
            } else {
                g.frames.clone()
            },
            count: g.count,
            created: Created::AfterAttach,
        })
        .collect();
    for c in go.before_attach.iter().flatten() {
        goroutines.push(GoroutineSample {
            frames: vec![c.created_by.clone()],
            count: c.count,
            created: Created::BeforeAttach,
        });
    }
    Ok((heap, Some(goroutines)))
}

/// The kernel sites of a report as heap samples: kernel frames, then the
/// user frames that made the system call (pages under slabs and large
/// kmallocs left out: their objects are samples already). Allocated
/// values are the outstanding ones: kernel frees are not counted by site.
pub fn kernel_samples(sites: &[crate::report::kernel::KernelSite]) -> Vec<HeapSample> {
    sites
        .iter()
        .filter(|s| s.backing.is_none())
        .map(|s| HeapSample {
            frames: s.frames.iter().chain(&s.user_frames).cloned().collect(),
            inuse_bytes: s.bytes,
            inuse_objects: s.blocks,
            alloc_bytes: s.bytes,
            alloc_objects: s.blocks,
            unreachable_bytes: 0,
            unreachable_objects: 0,
            source: HeapSource::Kernel,
        })
        .collect()
}
