//! Types and constants shared by leaktrace's eBPF programs (`tracer-ebpf`) and
//! its userspace daemon (`tracer`), by program: [`heap`], [`stacks`],
//! [`tasks`], [`goroutines`], [`unwind`], and the [`counters`] of what the
//! probes could not record.
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]` and laid
//! out with explicit padding fields, so that both sides agree byte for byte
//! and no uninitialised padding is ever hashed as part of a map key; its size
//! is checked at compile time beside it ([`shared!`]).
#![no_std]

pub mod counters;
pub mod goroutines;
pub mod heap;
pub mod kmem;
pub mod stacks;
pub mod tasks;
pub mod unwind;

pub use counters::*;
pub use goroutines::*;
pub use heap::*;
pub use kmem::*;
pub use stacks::*;
pub use tasks::*;
pub use unwind::*;

/// A type shared with the kernel: its size checked at compile time, and
/// (for userspace) readable out of BPF maps.
macro_rules! shared {
    ($t:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        // SAFETY: every shared type is #[repr(C)], Copy, made only of
        // integers, with explicit `_pad` fields and no implicit padding (its
        // size, checked above, is the sum of its fields'): every bit pattern
        // is valid and no byte is uninitialised.
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $t {}
    };
}
pub(crate) use shared;

/// Default map sizes (overridable by flags).
pub const DEFAULT_MAX_ALLOCS: u32 = 1 << 20;
pub const DEFAULT_MAX_SITES: u32 = 1 << 16;
pub const DEFAULT_MAX_STACKS: u32 = 1 << 14;
pub const DEFAULT_MAX_THREADS: u32 = 1 << 14;
pub const DEFAULT_MAX_TASKS: u32 = 1 << 16;
pub const DEFAULT_MAX_GOROUTINES: u32 = 1 << 18;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_cookie_round_trips() {
        let g = GoConfig {
            goid_offset: 160,
            gopc_offset: 288,
            startpc_offset: 304,
            parent_goid_offset: 280,
        };
        assert!(go_offsets_fit(g));
        let c = go_cookie(true, g);
        assert_eq!(c & GO_NEW_G_IN_RBX, GO_NEW_G_IN_RBX);
        assert_eq!(c & COOKIE_CHECK_TRACED, 0);
        let back = go_cookie_offsets(c | COOKIE_CHECK_TRACED);
        assert_eq!(
            (
                back.goid_offset,
                back.gopc_offset,
                back.startpc_offset,
                back.parent_goid_offset
            ),
            (160, 288, 304, 280)
        );
        assert!(!go_offsets_fit(GoConfig {
            goid_offset: 4,
            ..g
        }));
    }

    #[test]
    fn cookie_round_trips() {
        for kind in AllocKind::ALL {
            let c = cookie(kind, 24);
            assert_eq!(AllocKind::from_u32(cookie_kind(c)), Some(kind));
            assert_eq!(cookie_stack_delta(c), 24);
        }
    }
}
