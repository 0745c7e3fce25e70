//! Walking a user stack by the unwind tables userspace built from each
//! mapped object's `.eh_frame` (see `tracer-common`'s unwind types), for
//! code without frame pointers; frame pointers where a mapping is Go code,
//! and for a whole walk when the process has no tables.
//!
//! One frame per `bpf_loop` iteration: the callback is verified once, so the
//! two bounded binary searches inside it (mapping, then row) do not multiply
//! the verifier's work by the depth.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_loop},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use tracer_common::{
    cfa, rbp, walk, CachedStep, ProcessMappings, ReturnProbeOffsets, StackEnd, StackRecord,
    UnwindRow, UnwindRule, MAX_STACK_DEPTH, MAX_UNWIND_MAPPINGS, MAX_UNWIND_PROCESSES,
    MAX_UNWIND_RULES, UNWIND_CACHE_ENTRIES,
};

use crate::{
    stack_record::{mix, STACK_SCRATCH},
    walk_memo,
    window::read_user,
};

/// A frame record as `push %rbp; mov %rsp,%rbp` leaves it.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct FrameRecord {
    pub(crate) next: u64,
    pub(crate) ret: u64,
}

/// Every object's rows, back to back; userspace sizes it and fills it
/// through a memory mapping before a process's mappings point into it.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
static UNWIND_RULES: Array<UnwindRule> = Array::with_max_entries(MAX_UNWIND_RULES, 0);

#[map]
static UNWIND_PROCESSES: Array<ProcessMappings> = Array::with_max_entries(MAX_UNWIND_PROCESSES, 0);

/// tgid → its slot in `UNWIND_PROCESSES`. A process without a slot is
/// walked by frame pointers (`--unwind fp`).
#[map]
static UNWIND_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_UNWIND_PROCESSES, 0);

/// Bumped after every change to `UNWIND_SLOTS`: [0] by userspace, [1] by
/// the task tracepoints (one counter each, so that neither overwrites the
/// other's count).
#[map]
static UNWIND_PUBLISHED: Array<u64> = Array::with_max_entries(2, 0);

/// This CPU's last answer of `UNWIND_SLOTS`: [tgid, slot, both publish
/// counts]. Saves the hash lookup on every walk while nothing was
/// published since.
#[map]
static LAST_SLOT: PerCpuArray<[u64; 4]> = PerCpuArray::with_max_entries(1, 0);

/// A forked child walks by its parent's tables (a fork copies the
/// mappings) until userspace publishes its own.
#[inline(always)]
pub(crate) fn inherit_slot(parent: u32, child: u32) {
    // SAFETY: plain data copied out of the map.
    if let Some(slot) = unsafe { UNWIND_SLOTS.get(&parent) }.copied() {
        let _ = UNWIND_SLOTS.insert(&child, &slot, 0);
    }
}

/// A process that exec'd has none of the mappings its tables describe:
/// frame pointers until userspace publishes new ones.
#[inline(always)]
pub(crate) fn forget_slot(tgid: u32) {
    // SAFETY: only checks presence.
    if unsafe { UNWIND_SLOTS.get(&tgid) }.is_some() {
        let _ = UNWIND_SLOTS.remove(&tgid);
        if let Some(n) = UNWIND_PUBLISHED.get_ptr_mut(1) {
            // SAFETY: the map's value; other CPUs add to it too.
            unsafe { crate::counters::atomic_add(n as *mut i64, 1) };
        }
    }
}

/// Return addresses already looked up, direct-mapped by address: a hit
/// replaces the two binary searches (mapping, then row), about half of a
/// frame's cost when measured.
#[map]
static UNWIND_CACHE: PerCpuArray<CachedStep> =
    PerCpuArray::with_max_entries(UNWIND_CACHE_ENTRIES, 0);

#[inline(always)]
fn cache_index(look: u64, generation: u32) -> u32 {
    let h = (look ^ u64::from(generation)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 40) as u32 & (UNWIND_CACHE_ENTRIES - 1)
}

/// A binary search's bounds, kept in map memory rather than registers: the
/// verifier does not track values it reloads from there, so both halves
/// of each step leave the same state behind and its work stays linear in
/// the steps (in registers, their ranges multiplied it until a program
/// took seconds to load).
#[map]
static SEARCH: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn set_range(range: *mut [u32; 2], lo: u32, hi: u32) {
    // SAFETY: a per-CPU map value of this program's CPU.
    unsafe { core::ptr::write_volatile(range, [lo, hi]) };
}

#[inline(always)]
fn get_range(range: *mut [u32; 2]) -> (u32, u32) {
    // SAFETY: as in `set_range`.
    let [lo, hi] = unsafe { core::ptr::read_volatile(range) };
    (lo, hi)
}

/// The next frame's pc is exact (after a signal frame): look it up as is,
/// not as a return address (which points after its call).
const EXACT_PC: u32 = 1;
/// rbp's value is unknown from this frame on.
const RBP_LOST: u32 = 2;
/// rbp still holds the value the probe found (no frame gave it back yet).
const BP_INITIAL: u32 = 4;
/// rbp came from the stack word at `Walk::bp_at` and no rule has used it
/// yet: [`walk_memo`] needs the word only once one does (code without
/// frame pointers saves data in rbp, which changes from call to call).
const BP_UNNOTED: u32 = 8;

/// The walk's state between frames, in map memory for the same reason as
/// [`SEARCH`]: on the BPF stack its values were tracked across iterations,
/// and the verifier simulated the callback frame by frame (0.3 s per
/// program at load).
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// The walk's state between frames.
#[repr(C)]
struct Walk {
    pc: u64,
    sp: u64,
    bp: u64,
    hash: u64,
    /// The next pending return probe's `return_instance` (kernel
    /// address), once the walk has met the trampoline.
    instance: u64,
    /// Where `bp` was read from, while [`BP_UNNOTED`].
    bp_at: u64,
    slot: u32,
    frames: u32,
    end: u32,
    flags: u32,
}

/// The slot of the probed process's mappings, if its stacks are walked by
/// tables.
#[inline(always)]
pub(crate) fn slot_of(tgid: u32) -> Option<u32> {
    // Read before the slot: an answer is kept with the count it was read
    // under, so a publish in between only makes it miss next time.
    let read = |i: u32| match UNWIND_PUBLISHED.get_ptr(i) {
        // SAFETY: a value of the map; a u64 is read whole.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    };
    let (by_user, by_kernel) = (read(0), read(1));
    let last = LAST_SLOT.get_ptr_mut(0);
    if let Some(last) = last {
        // SAFETY: this CPU's entry, ours while the program runs.
        let [t, slot, user, kernel] = unsafe { *last };
        if by_user != 0 && user == by_user && kernel == by_kernel && t == u64::from(tgid) {
            return Some(slot as u32);
        }
    }
    // SAFETY: plain data copied out of the map.
    let slot = unsafe { UNWIND_SLOTS.get(&tgid) }.copied()?;
    if let Some(last) = last {
        // SAFETY: as above.
        unsafe { *last = [u64::from(tgid), u64::from(slot), by_user, by_kernel] };
    }
    Some(slot)
}

/// The generation of the unwind table published for `slot`.
#[inline(always)]
pub(crate) fn generation_of(slot: u32) -> Option<u32> {
    // SAFETY: map value pointer.
    UNWIND_PROCESSES
        .get_ptr(slot)
        .map(|p| unsafe { (*p).generation })
}

/// The `slot` of a walk by frame pointers alone (`--unwind fp`, or a
/// process without tables yet).
pub(crate) const FRAME_POINTERS_ONLY: u32 = u32::MAX;

/// Walks the stack from `(pc, sp, bp)` into the per-CPU scratch record:
/// frames, their hash seed folded in, and why the walk ended. By the
/// tables of process `slot`, or by frame pointers alone
/// ([`FRAME_POINTERS_ONLY`]). The words a walk by tables reads are noted
/// for [`walk_memo`]. The caller has emptied the stack window (or filled it
/// from this thread's stack).
///
/// Both kinds run one frame per `bpf_loop` iteration: a loop the verifier
/// unrolled left as many states after it as it had exits (the frame count
/// indexes the record), and each went through the rest of the program.
#[inline(always)]
pub(crate) fn walk(slot: u32, pc: u64, sp: u64, bp: u64, seed: u64) -> (u32, u64, u32) {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return (0, seed, StackEnd::Unreadable as u32);
    };
    if slot == FRAME_POINTERS_ONLY {
        walk_memo::abandon(); // nothing to remember it by
    } else {
        walk_memo::start(pc, sp);
    }
    // SAFETY: this CPU's slot, ours while the program runs.
    unsafe {
        w.write(Walk {
            pc,
            sp,
            bp,
            hash: seed,
            instance: 0,
            bp_at: 0,
            slot,
            frames: 0,
            end: StackEnd::DepthLimit as u32,
            flags: BP_INITIAL,
        })
    };
    // SAFETY: `step` has the callback signature bpf_loop expects.
    unsafe {
        bpf_loop(
            // One more than the depth, to tell a stack that ends there from
            // a deeper one, and room for trampolines seen through.
            MAX_STACK_DEPTH as u32 + 9,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above.
    let w = unsafe { &*w };
    (w.frames, w.hash, w.end)
}

#[inline(always)]
fn stop(w: &mut Walk, end: StackEnd) -> i64 {
    w.end = end as u32;
    1
}

#[inline(always)]
fn walk_read_u64(addr: u64) -> Option<u64> {
    let v = read_user::<u64>(addr)?;
    walk_memo::note(addr, v);
    Some(v)
}

/// A frame record for the walk; its return address noted for
/// [`walk_memo`] (its rbp once used, by [`set_bp_from`]).
#[inline(always)]
fn walk_read_frame(addr: u64) -> Option<FrameRecord> {
    let rec = read_user::<FrameRecord>(addr)?;
    walk_memo::note(addr + 8, rec.ret);
    Some(rec)
}

/// The walk is about to use rbp: what it depends on is noted.
#[inline(always)]
fn use_bp(w: &mut Walk) -> u64 {
    if w.flags & BP_INITIAL != 0 {
        walk_memo::note_initial_bp();
    }
    if w.flags & BP_UNNOTED != 0 {
        walk_memo::note(w.bp_at, w.bp);
        w.flags &= !BP_UNNOTED;
    }
    w.bp
}

/// rbp is the stack word `bp` read at `addr` from here on.
#[inline(always)]
fn set_bp_from(w: &mut Walk, addr: u64, bp: u64) {
    walk_memo::cover(addr);
    w.bp = bp;
    w.bp_at = addr;
    w.flags = (w.flags & !(RBP_LOST | BP_INITIAL)) | BP_UNNOTED;
}

/// One frame: find `w.pc`'s mapping, record it, then find the caller's
/// registers.
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's walk state, ours while the program runs.
    let w = unsafe { &mut *w };
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        return stop(w, StackEnd::Unreadable);
    };
    let n = w.frames as usize;
    if n >= MAX_STACK_DEPTH {
        return stop(w, StackEnd::DepthLimit);
    }
    if w.slot == FRAME_POINTERS_ONLY {
        record_frame(w, scratch, n);
        return frame_pointer_step(w);
    }
    // A return address points after its call, possibly past the end of the
    // caller's last row: look up the call instruction itself.
    let look = if n == 0 || w.flags & EXACT_PC != 0 {
        w.pc
    } else {
        w.pc.wrapping_sub(1)
    };
    let Some(procs) = UNWIND_PROCESSES.get_ptr(w.slot) else {
        return stop(w, StackEnd::NoMapping);
    };
    // SAFETY: map value pointer.
    let generation = unsafe { (*procs).generation };
    let cached = UNWIND_CACHE.get_ptr_mut(cache_index(look, generation));
    if let Some(c) = cached {
        // SAFETY: this CPU's cache entry, ours while the program runs.
        let c = unsafe { *c };
        if c.pc == look && c.generation == generation {
            record_frame(w, scratch, n);
            return walk_on(w, c.walk as u32, c.rule as u32);
        }
    }
    // SAFETY: map value pointer; `count` is clamped below.
    let count = unsafe { (*procs).count }.min(MAX_UNWIND_MAPPINGS as u32);
    // The last mapping starting at or below `look`.
    let Some(range) = SEARCH.get_ptr_mut(0) else {
        return stop(w, StackEnd::NoMapping);
    };
    set_range(range, 0, count);
    for _ in 0..9 {
        let (lo, hi) = get_range(range);
        if lo >= hi {
            break;
        }
        let mid = (lo + hi) / 2;
        if mid as usize >= MAX_UNWIND_MAPPINGS {
            break;
        }
        // SAFETY: index checked above.
        if unsafe { (*procs).mappings[mid as usize].start } <= look {
            set_range(range, mid + 1, hi);
        } else {
            set_range(range, lo, mid);
        }
    }
    let i = get_range(range).0.wrapping_sub(1) as usize;
    // SAFETY: index checked first.
    if i >= MAX_UNWIND_MAPPINGS || look >= unsafe { (*procs).mappings[i].end } {
        // In no mapping: maybe the trampoline a pending return probe put in
        // place of this return address; the kernel keeps the real one
        // (innermost first). The next iteration walks on from there.
        // SAFETY: map value pointer.
        let offsets = unsafe { (*procs).offsets };
        walk_memo::abandon(); // what the kernel keeps is no stack word
        return match original_return(w, offsets) {
            Some(ra) => {
                w.pc = ra;
                0
            }
            None => {
                // The address itself is right, only its caller unknown.
                // SAFETY: as below.
                unsafe { (*scratch).ips[n] = w.pc };
                w.hash = mix(w.hash, w.pc);
                w.frames = n as u32 + 1;
                stop(w, StackEnd::NoMapping)
            }
        };
    }
    // SAFETY: index checked above.
    let m = unsafe { (*procs).mappings[i] };
    let (kind, rule) = match m.walk {
        walk::TABLE => match find_rule(look - m.bias, m.row_base, m.row_count) {
            Some(rule) => (walk::TABLE, rule),
            None => (walk::NONE, 0),
        },
        kind => (kind, 0),
    };
    if let Some(c) = cached {
        // SAFETY: as above.
        unsafe {
            c.write(CachedStep {
                pc: look,
                generation,
                walk: kind as u16,
                rule: rule as u16,
            })
        };
    }
    record_frame(w, scratch, n);
    walk_on(w, kind, rule)
}

/// Records `w.pc` as frame `n`.
#[inline(always)]
fn record_frame(w: &mut Walk, scratch: *mut StackRecord, n: usize) {
    w.flags &= !EXACT_PC;
    if n < MAX_STACK_DEPTH {
        // SAFETY: the per-CPU record is ours while this program runs; n is
        // in bounds.
        unsafe { (*scratch).ips[n] = w.pc };
    }
    w.hash = mix(w.hash, w.pc);
    w.frames = n as u32 + 1;
}

/// Finds the caller's registers by the frame's walk kind (and rule).
#[inline(always)]
fn walk_on(w: &mut Walk, kind: u32, rule: u32) -> i64 {
    match kind {
        walk::TABLE => rule_step(w, rule),
        walk::FRAME_POINTER => frame_pointer_step(w),
        _ => stop(w, StackEnd::NoTable),
    }
}

/// If `w.pc` is this task's return-probe trampoline, the return address
/// the next pending return probe replaced.
#[inline(always)]
fn original_return(w: &mut Walk, o: ReturnProbeOffsets) -> Option<u64> {
    let read = |addr: u64| -> Option<u64> {
        // SAFETY: bpf_probe_read_kernel copes with any address.
        unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
    };
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let mm = read(task + o.mm as u64)?;
    let area = read(mm + o.xol_area as u64)?;
    if area == 0 || read(area + o.xol_vaddr as u64)? != w.pc {
        return None;
    }
    if w.instance == 0 {
        let utask = read(task + o.utask as u64)?;
        if utask == 0 {
            return None;
        }
        w.instance = read(utask + o.instances as u64)?;
    }
    if w.instance == 0 {
        return None;
    }
    let ra = read(w.instance + o.orig_ret as u64)?;
    w.instance = read(w.instance + o.next as u64)?;
    Some(ra)
}

/// The rule of the row covering `offset` (an ELF address), if any.
#[inline(always)]
fn find_rule(offset: u64, base: u32, count: u32) -> Option<u32> {
    if offset > u32::MAX as u64 {
        return None;
    }
    let offset = offset as u32;
    // The last row starting at or below `offset`: 24 halvings cover 2^24 rows.
    let range = SEARCH.get_ptr_mut(0)?;
    set_range(range, 0, count);
    for _ in 0..24 {
        let (lo, hi) = get_range(range);
        if lo >= hi {
            break;
        }
        let mid = (lo + hi) / 2;
        let row = UNWIND_ROWS.get(base.wrapping_add(mid))?;
        if row.pc <= offset {
            set_range(range, mid + 1, hi);
        } else {
            set_range(range, lo, mid);
        }
    }
    let lo = get_range(range).0;
    if lo == 0 {
        return None;
    }
    UNWIND_ROWS
        .get(base.wrapping_add(lo - 1))
        .map(|row| row.rule as u32)
}

/// Unwinds one frame by `rule`.
#[inline(always)]
fn rule_step(w: &mut Walk, rule: u32) -> i64 {
    let Some(rule) = UNWIND_RULES.get(rule) else {
        return stop(w, StackEnd::NoTable);
    };
    let rule = *rule;
    let off = rule.cfa_offset as i64 as u64;
    let bp_known = w.flags & RBP_LOST == 0;
    let cfa = match rule.cfa {
        cfa::RSP => w.sp.wrapping_add(off),
        cfa::RBP if bp_known => use_bp(w).wrapping_add(off),
        cfa::PLT => {
            let past = if (w.pc & 15) as i32 >= rule.extra {
                8
            } else {
                0
            };
            w.sp.wrapping_add(off).wrapping_add(past)
        }
        cfa::DEREF_RSP => match walk_read_u64(w.sp.wrapping_add(off)) {
            Some(v) => v.wrapping_add(rule.extra as i64 as u64),
            None => return stop(w, StackEnd::Unreadable),
        },
        cfa::DEREF_RBP if bp_known => match walk_read_u64(use_bp(w).wrapping_add(off)) {
            Some(v) => v.wrapping_add(rule.extra as i64 as u64),
            None => return stop(w, StackEnd::Unreadable),
        },
        cfa::SIGNAL => return signal_step(w),
        cfa::ROOT => return stop(w, StackEnd::Complete),
        cfa::NONE => return stop(w, StackEnd::NoTable),
        _ => return stop(w, StackEnd::Unsupported),
    };
    if cfa <= w.sp {
        return stop(w, StackEnd::Unsupported);
    }
    let ra = if rule.rbp == rbp::AT_CFA && rule.rbp_offset == -16 {
        // The usual `push %rbp` frame: rbp and the return address side by
        // side, one read.
        match walk_read_frame(cfa - 16) {
            Some(rec) => {
                set_bp_from(w, cfa - 16, rec.next);
                rec.ret
            }
            None => return stop(w, StackEnd::Unreadable),
        }
    } else {
        let Some(ra) = walk_read_u64(cfa - 8) else {
            return stop(w, StackEnd::Unreadable);
        };
        match rule.rbp {
            rbp::AT_CFA => {
                let at = cfa.wrapping_add(rule.rbp_offset as i64 as u64);
                match read_user::<u64>(at) {
                    Some(bp) => set_bp_from(w, at, bp),
                    None => return stop(w, StackEnd::Unreadable),
                }
            }
            rbp::LOST => w.flags |= RBP_LOST,
            _ => {}
        }
        ra
    };
    if ra == 0 {
        return stop(w, StackEnd::Complete);
    }
    w.sp = cfa;
    w.pc = ra;
    0
}

/// Offsets in the `ucontext_t` a signal handler's frame starts with:
/// `uc_mcontext.gregs` at 40, rbp, rsp and rip its 11th, 16th and 17th.
const UC_GREGS: u64 = 40;
const REG_RBP: u64 = 10;
const REG_RSP: u64 = 15;
const REG_RIP: u64 = 16;

/// Continues into the code a signal interrupted (the frame is the kernel's
/// signal trampoline, `__restore_rt`).
#[inline(always)]
fn signal_step(w: &mut Walk) -> i64 {
    let gregs = w.sp + UC_GREGS;
    let (Some(bp), Some(sp), Some(pc)) = (
        walk_read_u64(gregs + REG_RBP * 8),
        walk_read_u64(gregs + REG_RSP * 8),
        walk_read_u64(gregs + REG_RIP * 8),
    ) else {
        return stop(w, StackEnd::Unreadable);
    };
    w.bp = bp;
    w.sp = sp;
    w.pc = pc;
    w.flags = EXACT_PC;
    0
}

/// One frame by its frame record (Go code).
#[inline(always)]
fn frame_pointer_step(w: &mut Walk) -> i64 {
    if w.flags & RBP_LOST != 0 {
        return stop(w, StackEnd::Unsupported);
    }
    let fp = use_bp(w);
    if fp == 0 {
        return stop(w, StackEnd::FramePointers);
    }
    if fp & 7 != 0 {
        return stop(w, StackEnd::Unreadable);
    }
    let Some(rec) = walk_read_frame(fp) else {
        return stop(w, StackEnd::Unreadable);
    };
    if rec.ret == 0 {
        return stop(w, StackEnd::FramePointers);
    }
    w.pc = rec.ret;
    w.sp = fp + 16;
    set_bp_from(w, fp, rec.next);
    0
}
