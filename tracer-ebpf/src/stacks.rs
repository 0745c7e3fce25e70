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
//! A process userspace gave unwind tables is walked by them (`unwind`);
//! otherwise (`--unwind fp`) by frame pointers. That walk is our own
//! rather than `bpf_get_stack`'s: the
//! kernel's walk ends by reading the frame record at the outermost frame
//! pointer, which is 0 (`_start` and Go's goroutine entry clear it), and
//! that read page-faults. Measured here, the fault made `bpf_get_stack`
//! cost ~1.35 µs per call on a five-frame stack; the walk below stops
//! before reading a null or misaligned frame pointer.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use tracer_common::{
    Counter, StackEnd, StackRecord, DEFAULT_MAX_STACKS, MAX_STACK_DEPTH, STACK_ID_PROBES,
    STACK_UNKNOWN,
};

use crate::{
    counters::count,
    stack_record::{HASH_SEED, STACK_SCRATCH},
    unwind::{generation_of, slot_of, walk, FRAME_POINTERS_ONLY},
    walk_memo,
    window::clear_window,
    EEXIST,
};

/// Recorded stacks; never updated or deleted once written, so a reader may
/// keep a reference. Allocated on demand (about 1 KiB per distinct stack)
/// rather than preallocated for `--max-stacks`.
#[map]
static STACKS: HashMap<u32, StackRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

/// Stacks this CPU found stored, direct-mapped by hash: (id, hash). A
/// stored stack never changes, so a hit proves the id and saves the table
/// lookup on every allocation from a known site.
#[map]
static KNOWN_STACKS: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(KNOWN_STACKS_SIZE, 0);

const KNOWN_STACKS_SIZE: u32 = 1 << 10;

/// What the walk ([`walk_user_stack`]) leaves for the store
/// ([`store_walked`]), which runs as another program. Layout: 4×u64, 4×u32;
/// no implicit padding.
#[repr(C)]
pub(crate) struct Walked {
    ip: u64,
    sp: u64,
    fp: u64,
    hash: u64,
    frames: u32,
    end: u32,
    /// The process's unwind slot, or [`FRAME_POINTERS_ONLY`].
    slot: u32,
    generation: u32,
}

#[map]
static WALKED: PerCpuArray<Walked> = PerCpuArray::with_max_entries(1, 0);

/// What [`walk_user_stack`] found.
pub(crate) enum Walk {
    /// A remembered walk with the same inputs: its stack id.
    Remembered(u32),
    /// Walked into the scratch record: [`store_walked`] stores it.
    Walked,
    /// Nowhere to walk it to.
    Failed,
}

/// Walks the probed thread's user stack (by unwind tables, or frame
/// pointers) into the per-CPU scratch record, or finds it remembered.
#[inline(always)]
pub(crate) fn walk_user_stack(ctx: &ProbeContext) -> Walk {
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    let (ip, sp, fp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(out) = WALKED.get_ptr_mut(0) else {
        return Walk::Failed;
    };
    // Callers may read the walked stack through the window: from here on
    // it holds this thread's stack only.
    clear_window();
    let by_tables = slot_of(tgid).and_then(|slot| Some((slot, generation_of(slot)?)));
    let (slot, generation) = by_tables.unwrap_or((FRAME_POINTERS_ONLY, 0));
    let mut walked = Walked {
        ip,
        sp,
        fp,
        hash: 0,
        frames: 0,
        end: 0,
        slot,
        generation,
    };
    let replayed = match by_tables {
        Some((slot, generation)) => walk_memo::replay(slot, generation, ip, sp, fp),
        None => None,
    };
    if let Some(id) = replayed {
        return Walk::Remembered(id); // the common case: the same walk as before
    }
    let (frames, hash, end) = walk(slot, ip, sp, fp, HASH_SEED);
    walked.frames = frames;
    walked.hash = hash;
    walked.end = end;
    // SAFETY: this CPU's entry, ours while the programs run.
    unsafe { out.write(walked) };
    Walk::Walked
}

/// The id of the stack [`walk_user_stack`] walked, stored if new and its
/// walk remembered; `None` (counted) if it could not be stored.
#[inline(always)]
pub(crate) fn store_walked() -> Option<u32> {
    let w = WALKED.get_ptr(0)?;
    // SAFETY: this CPU's entry, written by the walk just before.
    let w = unsafe { &*w };
    let scratch = STACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY (for every access to `scratch` below): the per-CPU slot is
    // ours for the duration of this program, and indices stay below
    // MAX_STACK_DEPTH.
    unsafe { (*scratch).end = w.end };
    let frames = w.frames as usize;
    if frames < MAX_STACK_DEPTH {
        // Readers stop at the first empty slot; the slots after it may
        // still hold an earlier stack's frames.
        // SAFETY: as above.
        unsafe { (*scratch).ips[frames] = 0 };
    }
    let mut hash = w.hash;
    hash = (hash ^ (hash >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    hash ^= hash >> 32;
    // SAFETY: as above.
    unsafe { (*scratch).hash = hash };
    let Some(id) = known_or_stored(scratch, hash, w.end) else {
        count(Counter::StackLost);
        return None;
    };
    // A walk that met an unreadable word might read it next time.
    if w.slot != FRAME_POINTERS_ONLY && w.end != StackEnd::Unreadable as u32 {
        walk_memo::commit(id, w.slot, w.generation, w.ip, w.sp, w.fp);
    }
    Some(id)
}

/// The id of the stack in `scratch`: from this CPU's cache of known stacks,
/// else from the table (storing it if new).
#[inline(always)]
fn known_or_stored(scratch: *mut StackRecord, hash: u64, end: u32) -> Option<u32> {
    let known = KNOWN_STACKS.get_ptr_mut(hash as u32 & (KNOWN_STACKS_SIZE - 1));
    if let Some(k) = known {
        // SAFETY: this CPU's entry, ours while the program runs.
        let [id, known_hash] = unsafe { *k };
        if known_hash == hash && hash != 0 {
            return Some(id as u32); // a stack seen before
        }
    }
    let id = store(scratch, hash, end)?;
    if let Some(k) = known {
        // SAFETY: as above.
        unsafe { *k = [u64::from(id), hash] };
    }
    Some(id)
}

/// The id holding the stack assembled in `scratch`, storing it if new.
#[inline(always)]
fn store(scratch: *mut StackRecord, hash: u64, end: u32) -> Option<u32> {
    let mut id = hash as u32;
    for _ in 0..STACK_ID_PROBES {
        if id == STACK_UNKNOWN {
            id = 0;
        }
        if holds(id, hash) {
            return Some(id);
        }
        // SAFETY: `scratch` points at a whole, initialised record.
        match STACKS.insert(&id, unsafe { &*scratch }, BPF_NOEXIST as u64) {
            Ok(()) => {
                count_cut_short(end);
                return Some(id);
            }
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

/// Counts a new stack that ends early, by why.
#[inline(always)]
fn count_cut_short(end: u32) {
    let counter = match end {
        e if e == StackEnd::DepthLimit as u32 => Counter::StackDepthLimit,
        e if e == StackEnd::NoTable as u32 => Counter::StackNoTable,
        e if e == StackEnd::NoMapping as u32 => Counter::StackNoMapping,
        e if e == StackEnd::Unreadable as u32 => Counter::StackUnreadable,
        e if e == StackEnd::Unsupported as u32 => Counter::StackUnsupported,
        _ => return,
    };
    count(counter);
}

/// Whether `id` already holds the stack with this hash.
#[inline(always)]
fn holds(id: u32, hash: u64) -> bool {
    // SAFETY: records are never changed after insertion.
    unsafe { STACKS.get(&id) }.is_some_and(|r| r.hash == hash)
}
