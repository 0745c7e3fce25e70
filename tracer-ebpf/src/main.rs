//! leaktrace's kernel side: uprobes on the target's allocator, thread spawns and Go
//! runtime, and the scheduler tracepoints for task lifetimes.
//!
//! Entry probes stash `(size, caller, stack)` per thread (`inflight`);
//! return probes turn a successful result into an [`AllocRecord`] keyed by
//! address and add it to per-site totals; `free` removes the record and
//! subtracts it again. Userspace only ever reads the per-site totals and the
//! stacks, so a report costs work per site, not per live allocation.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Inline BPF assembly (atomic add) is still unstable; the build sets RUSTC_BOOTSTRAP.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod goroutines;
#[cfg(target_arch = "bpf")]
mod heap;
#[cfg(target_arch = "bpf")]
mod inflight;
#[cfg(target_arch = "bpf")]
mod kmem;
#[cfg(target_arch = "bpf")]
mod stack_record;
#[cfg(target_arch = "bpf")]
mod stacks;
#[cfg(target_arch = "bpf")]
mod tasks;
#[cfg(target_arch = "bpf")]
mod traced;
#[cfg(target_arch = "bpf")]
mod unwind;
#[cfg(target_arch = "bpf")]
mod walk_memo;
#[cfg(target_arch = "bpf")]
mod walker;
#[cfg(target_arch = "bpf")]
mod window;

/// The errno of a map insert with `BPF_NOEXIST` that found the key.
#[cfg(target_arch = "bpf")]
pub(crate) const EEXIST: i32 = 17;
/// The errno of a map delete that did not find the key.
#[cfg(target_arch = "bpf")]
pub(crate) const ENOENT: i32 = 2;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it is here
    // only because no_std requires one.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds of the workspace compile this crate as an empty binary.
}
