//! The probes' stack table: user stacks by 32-bit id, without losing a
//! stack to a hash collision.
//!
//! The kernel's stack map (`bpf_get_stackid`) puts each stack in bucket
//! `hash & (n - 1)` and fails with -EEXIST when another stack sits there, so
//! with a few hundred distinct stacks some are lost on every run. Here the
//! frames are copied with `bpf_get_stack`, hashed to 64 bits, and stored under
//! an id taken from that hash; an id held by a different stack (told apart
//! by the full hash) moves the new one to the next id.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::generated::bpf_get_stack,
    macros::map,
    maps::{HashMap, PerCpuArray},
    EbpfContext,
};
use tracer_common::{
    Counter, StackRecord, DEFAULT_MAX_STACKS, MAX_STACK_DEPTH, STACK_ID_PROBES, STACK_UNKNOWN,
};

use crate::heap::{count, EEXIST};

/// Recorded stacks; never updated or deleted once written, so a reader may
/// keep a reference. Allocated on demand (about 1 KiB per distinct stack)
/// rather than preallocated for `--max-stacks`.
#[map]
static STACKS: HashMap<u32, StackRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

/// Per-CPU room to assemble a record: 1 KiB does not fit the BPF stack.
#[map]
static STACK_SCRATCH: PerCpuArray<StackRecord> = PerCpuArray::with_max_entries(1, 0);

/// The user stack of the probed thread (frame-pointer walk), as an id into
/// `STACKS`; a stack that could not be recorded is counted as lost.
#[inline(always)]
pub(crate) fn user_stack_id<C: EbpfContext>(ctx: &C) -> u32 {
    match record_user_stack(ctx) {
        Some(id) => id,
        None => {
            count(Counter::StackLost);
            STACK_UNKNOWN
        }
    }
}

#[inline(always)]
fn record_user_stack<C: EbpfContext>(ctx: &C) -> Option<u32> {
    let scratch = STACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is ours for the duration of this program (a
    // uprobe program does not nest on its CPU); the helper writes at most
    // `size` bytes into `ips` and zeroes what it does not fill.
    let copied = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            (*scratch).ips.as_mut_ptr().cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if copied < 0 {
        return None;
    }
    let frames = copied as usize / 8;
    // FNV-style word hash with a final avalanche; collisions of the full 64
    // bits between real stacks are not a practical concern.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..MAX_STACK_DEPTH {
        if i >= frames {
            break;
        }
        // SAFETY: `i` < MAX_STACK_DEPTH, inside the slot.
        let ip = unsafe { (*scratch).ips[i] };
        hash = (hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
        hash ^= hash >> 29;
    }
    hash = (hash ^ (hash >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    hash ^= hash >> 32;
    // SAFETY: as above.
    unsafe { (*scratch).hash = hash };

    let mut id = hash as u32;
    for _ in 0..STACK_ID_PROBES {
        if id == STACK_UNKNOWN {
            id = 0;
        }
        if holds(id, hash) {
            return Some(id); // the common case: a stack seen before
        }
        // SAFETY: `scratch` points at a whole, initialised record.
        match STACKS.insert(&id, unsafe { &*scratch }, BPF_NOEXIST as u64) {
            Ok(()) => return Some(id),
            // Another CPU stored a stack at this id just now: maybe ours.
            Err(e) if e == -EEXIST => {
                if holds(id, hash) {
                    return Some(id);
                }
            }
            // Table full.
            Err(_) => return None,
        }
        id = id.wrapping_add(1);
    }
    None
}

/// Whether `id` already holds the stack with this hash.
#[inline(always)]
fn holds(id: u32, hash: u64) -> bool {
    // SAFETY: records are never changed after insertion.
    unsafe { STACKS.get(&id) }.is_some_and(|r| r.hash == hash)
}
