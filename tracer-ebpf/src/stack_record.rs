//! The stack being recorded: the per-CPU record the walk (`unwind`) fills
//! frame by frame and the store (`stacks`) files away, and its hash.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::StackRecord;

/// Per-CPU room to assemble a record: 1 KiB does not fit the BPF stack.
#[map]
pub(crate) static STACK_SCRATCH: PerCpuArray<StackRecord> = PerCpuArray::with_max_entries(1, 0);

/// FNV-style word hash, one step per frame (computed during the walk: one
/// loop keeps verification linear); collisions of the full 64 bits between
/// real stacks are not a practical concern.
#[inline(always)]
pub(crate) fn mix(hash: u64, ip: u64) -> u64 {
    let h = (hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
    h ^ (h >> 29)
}

pub(crate) const HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;
