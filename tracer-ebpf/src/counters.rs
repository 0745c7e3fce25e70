//! What every program counts: the drop and cut-short counters userspace
//! reports (tracer-common's `counters!` table), and atomic adds into
//! shared map values.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::{Counter, COUNTER_COUNT};

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// `*dst += v` as one BPF atomic add (core's atomics need compare-and-swap,
/// which the BPF target does not offer).
///
/// # Safety
/// `dst` must point into a live map value.
#[inline(always)]
pub(crate) unsafe fn atomic_add(dst: *mut i64, v: i64) {
    // SAFETY: caller guarantees `dst` is a valid map value pointer.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) dst, in(reg) v);
    }
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and uprobe programs do not nest on one CPU
        // for the same program type, so nobody else writes it concurrently.
        unsafe { *slot += 1 };
    }
}
