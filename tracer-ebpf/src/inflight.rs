//! The allocator call each thread has in flight, from its entry probe to
//! its return probe.
//!
//! A direct-mapped array indexed by thread id holds almost every call: a
//! slot is claimed with one compare-and-swap at entry and given back with a
//! store at return, where a hash map keyed by thread id cost four hash
//! operations per call (on the malloc/free microbenchmark the entry and
//! return programs went from 448 + 211 ns to 359 + 144 ns). Threads whose
//! slot another thread holds (ids equal modulo the slot count and both
//! inside an allocator at once) use the hash map, as before.
//!
//! The return gives the slot back, as the hash map's delete did: keeping
//! a thread's state between calls lost calls now and then while other
//! tracers attached to the same library (measured with the hash map: 1 in
//! 8 runs of concurrent_threads_are_counted_exactly).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap},
};
use tracer_common::{Counter, Pending, DEFAULT_MAX_THREADS, INFLIGHT_STALE_JIFFIES};

use crate::counters::{atomic_add, count};

/// Slots of the direct-mapped table; threads of one process have mostly
/// consecutive ids, so up to this many of them never share a slot.
const SLOTS: u32 = 1 << 14;

/// Slot index mask: `SLOTS - 1`, unless userspace set fewer slots (a test
/// does, to send most calls down the shared-slot path).
#[no_mangle]
static INFLIGHT_MASK: u32 = SLOTS - 1;

#[inline(always)]
fn slot_for(tid: u32) -> Option<*mut Slot> {
    // SAFETY: a constant userspace may set at load time.
    let mask = unsafe { core::ptr::read_volatile(&INFLIGHT_MASK) };
    INFLIGHT.get_ptr_mut(tid & mask & (SLOTS - 1))
}

/// One slot: who holds it, and the call.
#[repr(C)]
pub(crate) struct Slot {
    /// 0 when free, else the holder's thread id (low 32 bits) and the time
    /// it claimed the slot in jiffies (their low 32 bits). One word, so
    /// that taking over a stale slot is one compare-and-swap that fails if
    /// the holder gave it back or claimed it again meanwhile.
    holder: u64,
    call: Pending,
}

#[map]
static INFLIGHT: Array<Slot> = Array::with_max_entries(SLOTS, 0);

/// Per thread, for threads whose slot was held by another: the call in
/// flight. Sized by userspace from its flags.
#[map]
static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(DEFAULT_MAX_THREADS, 0);

/// Entries `PENDING` may hold: added to on insert, taken from on delete
/// (never by userspace's pruning, so it can only be too high, which costs
/// a lookup and nothing else). While it is 0, a thread claiming a free slot
/// knows no outer call of its own sits in `PENDING`.
#[map]
static PENDING_USED: Array<i64> = Array::with_max_entries(1, 0);

/// Where a call's state goes.
pub(crate) enum Place {
    Slot(*mut Slot),
    /// `PENDING`; `existing` when the thread's entry is already there.
    Hash {
        existing: bool,
    },
}

#[inline(always)]
pub(crate) fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn holder_word(tid: u32, now: u64) -> u64 {
    (now << 32) | u64::from(tid)
}

#[inline(always)]
fn stale_holder(word: u64, now: u64) -> bool {
    (now as u32).wrapping_sub((word >> 32) as u32) as u64 > INFLIGHT_STALE_JIFFIES
}

/// A call entered while `outer` is in flight is internal to it (realloc →
/// malloc, or a tail call in the same frame) unless `outer` went stale.
#[inline(always)]
fn inside(outer: &Pending, entry_sp: u64, now: u64) -> bool {
    outer.entry_sp != 0
        && entry_sp <= outer.entry_sp
        && now.wrapping_sub(outer.since_jiffies) < INFLIGHT_STALE_JIFFIES
}

/// `*dst` becomes `new` if it is `old`; returns what it was.
///
/// # Safety
/// `dst` must point into a live map value.
#[inline(always)]
unsafe fn compare_exchange(dst: *mut u64, old: u64, new: u64) -> u64 {
    let mut seen = old;
    // SAFETY: caller guarantees `dst` is a valid map value pointer; BPF's
    // cmpxchg takes the expected value in r0 and leaves the old one there.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({dst} + 0, r0, {new})",
            dst = in(reg) dst,
            new = in(reg) new,
            inout("r0") seen,
        );
    }
    seen
}

#[inline(always)]
fn pending_used(delta: i64) {
    if let Some(n) = PENDING_USED.get_ptr_mut(0) {
        // SAFETY: the map's only value.
        unsafe { atomic_add(n, delta) };
    }
}

/// At an allocator's entry: where to stash the call, or `None` when it is
/// internal to an outer call of the same thread.
#[inline(always)]
pub(crate) fn begin(tid: u32, entry_sp: u64, now: u64) -> Option<Place> {
    let slot = slot_for(tid)?;
    // SAFETY: a live map value; the holder word is only ever changed whole
    // (store or compare-and-swap), so this read is one of its values.
    let word = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*slot).holder)) };
    if word != 0 && word as u32 == tid {
        // SAFETY: the call data of a slot is only written by its holder.
        let outer = unsafe { &(*slot).call };
        if inside(outer, entry_sp, now) {
            return None;
        }
        // The thread still holds the slot from a call whose return was not
        // seen: a new call renews the claim time, or other threads would
        // take the slot from under it as stale.
        return claim(slot, word, tid, entry_sp, now);
    }
    if word != 0 && !stale_holder(word, now) {
        return in_hash(tid, entry_sp, now);
    }
    // The slot is free (or stale): the thread's own outer call, if any, can
    // only be in the hash map.
    if PENDING_USED.get(0).is_some_and(|n| *n > 0) {
        // SAFETY: plain data copied out of the map.
        if let Some(outer) = unsafe { PENDING.get(&tid) } {
            if inside(outer, entry_sp, now) {
                return None;
            }
        }
    }
    claim(slot, word, tid, entry_sp, now)
}

/// Takes `slot`, last seen holding `word`, for a new call of `tid`; if
/// another thread changed it meanwhile, the call goes to the hash map.
#[inline(always)]
fn claim(slot: *mut Slot, word: u64, tid: u32, entry_sp: u64, now: u64) -> Option<Place> {
    // SAFETY: a live map value (from `slot_for`).
    let seen = unsafe {
        compare_exchange(
            core::ptr::addr_of_mut!((*slot).holder),
            word,
            holder_word(tid, now),
        )
    };
    if seen == word {
        Some(Place::Slot(slot))
    } else {
        in_hash(tid, entry_sp, now)
    }
}

#[inline(always)]
fn in_hash(tid: u32, entry_sp: u64, now: u64) -> Option<Place> {
    // SAFETY: plain data copied out of the map.
    match unsafe { PENDING.get(&tid) } {
        Some(outer) if inside(outer, entry_sp, now) => None,
        Some(_) => Some(Place::Hash { existing: true }),
        None => Some(Place::Hash { existing: false }),
    }
}

/// Stashes `call` where [`begin`] said; false if it could not be.
#[inline(always)]
pub(crate) fn stash(place: Place, tid: u32, call: Pending) -> bool {
    match place {
        Place::Slot(slot) => {
            // SAFETY: this thread holds the slot; only the holder writes it.
            unsafe { (*slot).call = call };
            true
        }
        Place::Hash { existing } => {
            if PENDING.insert(&tid, &call, 0).is_err() {
                count(Counter::PendingMapFull);
                return false;
            }
            if !existing {
                pending_used(1);
            }
            true
        }
    }
}

/// Fills in the stack and caller of the call `tid` stashed at `entry_sp`
/// (the walk runs after the stash: see `walker`).
#[inline(always)]
pub(crate) fn set_stack(tid: u32, entry_sp: u64, stack_id: u32, caller: u64) {
    let Some(slot) = slot_for(tid) else {
        return;
    };
    // SAFETY: as in `begin`.
    let word = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*slot).holder)) };
    if word != 0 && word as u32 == tid {
        // SAFETY: this thread holds the slot; only the holder writes it.
        let call = unsafe { &mut (*slot).call };
        if call.entry_sp == entry_sp {
            call.stack_id = stack_id;
            call.caller = caller;
            return;
        }
    }
    if let Some(call) = PENDING.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry; only it writes it.
        unsafe {
            if (*call).entry_sp == entry_sp {
                (*call).stack_id = stack_id;
                (*call).caller = caller;
            }
        }
    }
}

/// At an allocator's return (stack pointer `rsp`, function kind `kind`):
/// the call this return ends, taken out of its place. The return of a
/// call nested inside the stashed one (higher on the stack, or another
/// function) leaves it in place.
#[inline(always)]
pub(crate) fn finish(tid: u32, kind: u32, rsp: u64) -> Option<Pending> {
    let ends = |p: &Pending| p.entry_sp != 0 && p.kind == kind && rsp == p.entry_sp + 8;
    let slot = slot_for(tid)?;
    // SAFETY: as in `begin`.
    let word = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*slot).holder)) };
    if word != 0 && word as u32 == tid {
        // SAFETY: this thread holds the slot.
        let call = unsafe { (*slot).call };
        if !ends(&call) {
            return None;
        }
        // SAFETY: as above; one store gives the slot back.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*slot).holder), 0) };
        return Some(call);
    }
    // SAFETY: plain data copied out of the map.
    let call = *unsafe { PENDING.get(&tid) }?;
    if !ends(&call) {
        return None;
    }
    if PENDING.remove(&tid).is_ok() {
        pending_used(-1);
    }
    Some(call)
}
