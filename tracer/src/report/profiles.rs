//! The whole of one reading for the exports (pprof, flame graphs, the live
//! endpoint): every site that holds or allocated memory, not only the top
//! ones a text report shows, merged by symbolized stack like the report's.

use std::collections::HashMap;

use crate::{
    collect::{stacks::Stacks, SiteId, Snapshot},
    export::{suppressions::Suppressions, Created, GoroutineSample, HeapSample, HeapSource},
    golang::GoReport,
    report::aggregate::{self, StackKey},
    symbolize::{Symbolizer, SymbolizerGone},
};

/// What `snap` (and the Go section) hold, by symbolized stack.
pub(super) async fn build(
    symbolizer: &Symbolizer,
    stacks: &mut Stacks,
    snap: &Snapshot,
    go: Option<&GoReport>,
    suppressions: Option<&Suppressions>,
) -> Result<(Vec<HeapSample>, Option<Vec<GoroutineSample>>), SymbolizerGone> {
    let inuse: HashMap<SiteId, (u64, u64)> = snap
        .sites
        .iter()
        .map(|s| (s.site, (s.bytes, s.blocks)))
        .collect();
    let mut ids: Vec<SiteId> = snap.allocated.keys().copied().collect();
    ids.extend(inuse.keys().filter(|id| !snap.allocated.contains_key(id)));
    ids.sort();
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
        let i = *index.entry(aggregate::key(&frames)).or_insert_with(|| {
            heap.push(HeapSample {
                frames,
                inuse_bytes: 0,
                inuse_objects: 0,
                alloc_bytes: 0,
                alloc_objects: 0,
                source: HeapSource::Malloc,
            });
            heap.len() - 1
        });
        let s = &mut heap[i];
        s.inuse_bytes += inuse_bytes;
        s.inuse_objects += inuse_objects;
        s.alloc_bytes += allocated.bytes;
        s.alloc_objects += allocated.blocks;
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
