//! The figures of `runtime.ReadMemStats` (as `gops memstats` shows them),
//! rebuilt out of process from the runtime's own counters, the way
//! `readmemstats_m` computes them (mstats.go). Offsets are from the DWARF
//! of linux/amd64 builds of each release (docs/go.md, "Memory statistics",
//! checked against the fixtures' DWARF): `gcControllerState` kept its
//! fields 1.21–1.27; 1.25 shrank `heapStatsDelta` (and so moved what
//! follows it in `mstats`); `schedt.ngsys` moved in 1.25 and 1.26.
//!
//! Every read races with the running program (`ReadMemStats` stops the
//! world for a consistent snapshot); each 8-byte field is coherent.

use crate::golang::binary::go_minor;

/// Offsets that differ between releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemStatsLayout {
    /// `heapStatsDelta`: size, and its counters.
    delta_size: u64,
    tiny_alloc_count: u64,
    large_alloc_count: u64,
    small_alloc_count: u64,
    large_free_count: u64,
    small_free_count: u64,
    /// `mstats.stacks_sys`; `mspan_sys`, `mcache_sys`, `buckhash_sys`,
    /// `gcMiscSys`, `other_sys` follow it, 8 bytes apart.
    stacks_sys: u64,
    /// `schedt.ngsys`.
    ngsys: u64,
    /// `heapStatsDelta.inPtrScalarBits` (counted in Sys; gone in 1.25).
    in_ptr_scalar_bits: Option<u64>,
}

/// `heapStatsDelta.inStacks`, `.inWorkBufs`.
const IN_STACKS: u64 = 24;
const IN_WORK_BUFS: u64 = 32;
/// Size classes in `smallAllocCount`/`smallFreeCount`.
const SIZE_CLASSES: u64 = 68;
/// `gcControllerState` (the same in 1.21–1.27).
pub const GC_PERCENT_HEAP_GOAL: u64 = 72;
pub const HEAP_IN_USE: u64 = 272;
pub const HEAP_RELEASED: u64 = 280;
pub const HEAP_FREE: u64 = 288;
pub const TOTAL_ALLOC: u64 = 296;
pub const TOTAL_FREE: u64 = 304;

impl MemStatsLayout {
    /// The layout of go1.`minor`, for the releases it was checked on.
    pub fn of_version(version: &str) -> Option<MemStatsLayout> {
        let minor = go_minor(version)?;
        let (small, ngsys) = match minor {
            21..=24 => (false, 72),
            25 => (true, 80),
            26..=27 => (true, 96),
            _ => return None,
        };
        Some(if small {
            MemStatsLayout {
                delta_size: 1168,
                tiny_alloc_count: 40,
                large_alloc_count: 56,
                small_alloc_count: 64,
                large_free_count: 616,
                small_free_count: 624,
                stacks_sys: 3520,
                ngsys,
                in_ptr_scalar_bits: None,
            }
        } else {
            MemStatsLayout {
                delta_size: 1176,
                tiny_alloc_count: 48,
                large_alloc_count: 64,
                small_alloc_count: 72,
                large_free_count: 624,
                small_free_count: 632,
                stacks_sys: 3544,
                ngsys,
                in_ptr_scalar_bits: Some(40),
            }
        })
    }
}

/// `ReadMemStats`' figures, plus what a process view adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    pub heap_alloc: u64,
    pub heap_inuse: u64,
    pub heap_objects: u64,
    pub num_gc: u32,
    pub next_gc: u64,
    pub sys: u64,
    pub stack_inuse: u64,
    /// `None` in a stripped binary (`runtime.sched` not found).
    pub goroutines: Option<u64>,
    /// `None` in a stripped binary (`runtime.gomaxprocs` not found).
    pub gomaxprocs: Option<u32>,
    pub os_threads: u64,
    pub rss_bytes: u64,
}

/// Reads 8-byte words of the target at absolute addresses.
pub trait Words {
    fn word(&self, addr: u64) -> Option<u64>;
}

/// The runtime's counters (addresses already biased), as MemStats.
pub struct Addresses {
    pub gc_controller: u64,
    pub memstats: u64,
    pub gomaxprocs: Option<u64>,
    pub sched: Option<u64>,
    pub numgc_offset: u64,
}

/// `ReadMemStats`' figures from the counters; `goroutines_alive` is the
/// number of goroutines not dead in `allgs` (system ones included).
pub fn read(
    mem: &impl Words,
    at: &Addresses,
    layout: MemStatsLayout,
    goroutines_alive: u64,
) -> Option<MemStats> {
    let gc = |off: u64| mem.word(at.gc_controller + off);
    let ms = |off: u64| mem.word(at.memstats + off);
    // The three shards of `memstats.heapStats` (at offset 0), summed.
    // Objects: allocations minus frees, large and per size class (MemStats
    // adds tiny allocations to both, so they cancel).
    let mut objects: i64 = 0;
    let (mut in_stacks, mut in_work_bufs, mut in_bits) = (0u64, 0u64, 0u64);
    for shard in 0..3 {
        let base = shard * layout.delta_size;
        let d = |off: u64| ms(base + off).map(|v| v as i64);
        objects += d(layout.large_alloc_count)? - d(layout.large_free_count)?;
        for class in 0..SIZE_CLASSES {
            objects += d(layout.small_alloc_count + class * 8)?;
            objects -= d(layout.small_free_count + class * 8)?;
        }
        in_stacks = in_stacks.wrapping_add(d(IN_STACKS)? as u64);
        in_work_bufs = in_work_bufs.wrapping_add(d(IN_WORK_BUFS)? as u64);
        if let Some(off) = layout.in_ptr_scalar_bits {
            in_bits = in_bits.wrapping_add(d(off)? as u64);
        }
    }
    let heap_inuse = gc(HEAP_IN_USE)?;
    let mut sys = heap_inuse + gc(HEAP_FREE)? + gc(HEAP_RELEASED)?;
    for i in 0..6 {
        sys = sys.wrapping_add(ms(layout.stacks_sys + i * 8)?);
    }
    sys = sys
        .wrapping_add(in_stacks)
        .wrapping_add(in_work_bufs)
        .wrapping_add(in_bits);
    let goroutines = match at.sched {
        Some(sched) => {
            Some(goroutines_alive.saturating_sub(mem.word(sched + layout.ngsys)? as u32 as u64))
        }
        None => None,
    };
    let gomaxprocs = match at.gomaxprocs {
        Some(a) => Some(mem.word(a)? as u32),
        None => None,
    };
    Some(MemStats {
        heap_alloc: gc(TOTAL_ALLOC)?.wrapping_sub(gc(TOTAL_FREE)?),
        heap_inuse,
        heap_objects: objects.max(0) as u64,
        num_gc: ms(at.numgc_offset)? as u32,
        next_gc: gc(GC_PERCENT_HEAP_GOAL)?,
        sys,
        stack_inuse: in_stacks,
        goroutines,
        gomaxprocs,
        os_threads: 0,
        rss_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cover_the_checked_releases_only() {
        assert_eq!(MemStatsLayout::of_version("go1.20.1"), None);
        assert_eq!(MemStatsLayout::of_version("go1.28.0"), None);
        assert_eq!(
            MemStatsLayout::of_version("go1.24.11").map(|l| l.delta_size),
            Some(1176)
        );
        assert_eq!(
            MemStatsLayout::of_version("go1.25.5").map(|l| l.ngsys),
            Some(80)
        );
        assert_eq!(
            MemStatsLayout::of_version("go1.27.3").map(|l| l.stacks_sys),
            Some(3520)
        );
    }
}
