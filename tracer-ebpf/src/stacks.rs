//! The probes' stack table: user stacks by 32-bit id, without losing a
//! stack to a hash collision.
//!
//! The kernel's stack map (`bpf_get_stackid`) puts each stack in bucket
//! `hash & (n - 1)` and fails with -EEXIST when another stack sits there, so
//! with a few hundred distinct stacks some are lost on every run. Here the
//! frames are hashed to 64 bits and stored under an id taken from that
//! hash; an id held by a different stack (told apart by the full hash)
//! moves the new one to the next id.
//!
//! The frame-pointer walk is our own rather than `bpf_get_stack`'s: the
//! kernel's walk ends by reading the frame record at the outermost frame
//! pointer, which is 0 (`_start` and Go's goroutine entry clear it), and
//! that read page-faults. Measured here, the fault made `bpf_get_stack`
//! cost ~1.35 µs per call on a five-frame stack; the walk below stops
//! before reading a null or misaligned frame pointer.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
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
pub(crate) fn user_stack_id(ctx: &ProbeContext) -> u32 {
    match record_user_stack(ctx) {
        Some(id) => id,
        None => {
            count(Counter::StackLost);
            STACK_UNKNOWN
        }
    }
}

/// A frame record as `push %rbp; mov %rsp,%rbp` leaves it.
#[repr(C)]
#[derive(Clone, Copy)]
struct FrameRecord {
    next: u64,
    ret: u64,
}

#[inline(always)]
fn record_user_stack(ctx: &ProbeContext) -> Option<u32> {
    let scratch = STACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    let (ip, mut fp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rbp) };
    // SAFETY (for every access to `scratch` below): the per-CPU slot is
    // ours for the duration of this program, and indices stay below
    // MAX_STACK_DEPTH.
    unsafe { (*scratch).ips[0] = ip };
    // FNV-style word hash with a final avalanche, computed during the walk
    // (one loop keeps verification linear); collisions of the full 64 bits
    // between real stacks are not a practical concern.
    let mix = |hash: u64, ip: u64| {
        let h = (hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
        h ^ (h >> 29)
    };
    let mut hash = mix(0xcbf2_9ce4_8422_2325, ip);
    let mut frames = 1;
    for i in 1..MAX_STACK_DEPTH {
        if fp == 0 || fp & 7 != 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user copes with any address.
        let Ok(rec) = (unsafe { bpf_probe_read_user(fp as *const FrameRecord) }) else {
            break;
        };
        if rec.ret == 0 {
            break;
        }
        // SAFETY: as above.
        unsafe { (*scratch).ips[i] = rec.ret };
        hash = mix(hash, rec.ret);
        frames = i + 1;
        fp = rec.next;
    }
    if frames < MAX_STACK_DEPTH {
        // Readers stop at the first empty slot; the slots after it may
        // still hold an earlier stack's frames.
        // SAFETY: as above.
        unsafe { (*scratch).ips[frames] = 0 };
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
