//! The probes' stack table: one record per distinct user stack.

use crate::shared;

/// Stack id used when no stack could be recorded (stack table full,
/// unreadable user stack). The bytes are still accounted, under
/// the immediate caller only, and the failure is counted.
pub const STACK_UNKNOWN: u32 = u32::MAX;

/// One user stack in the probes' stack table, keyed by a 32-bit stack id
/// derived from `hash`. The kernel's own stack map loses a stack whenever two
/// stacks share a bucket (-EEXIST); this table resolves such collisions by
/// comparing the full 64-bit hash and moving on to the next id.
/// 8 + 4 + 4 + 127×8 = 1032 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackRecord {
    /// 64-bit hash of the frames.
    pub hash: u64,
    /// Why the walk ended: a [`StackEnd`].
    pub end: u32,
    pub _pad: u32,
    /// Return addresses, innermost (the probed instruction) first, ended by
    /// a zero slot unless all are used; slots after that are unspecified.
    pub ips: [u64; MAX_STACK_DEPTH],
}
shared!(StackRecord, 1032);

/// How many consecutive ids a stack may try before it is counted as lost
/// (each step means another stack already holds the id: rare at 2^32 ids).
pub const STACK_ID_PROBES: u32 = 4;

/// Frames stored per stack (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;
