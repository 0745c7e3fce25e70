//! Reading what the probes recorded: per-site heap totals aged by
//! generation ([`heap`]), the threads and child processes the target keeps
//! ([`tasks`]), and the recorded stacks ([`stacks`]).

pub(crate) mod batch;
pub mod heap;
pub mod stacks;
pub mod tasks;

pub use heap::{tick_period, Collector, Dropped, LiveBlock, SiteId, SiteSurvivors, Snapshot};

/// CLOCK_MONOTONIC in nanoseconds: the clock the probes stamp records with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
