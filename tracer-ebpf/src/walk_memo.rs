//! Walks by unwind tables remembered with their inputs, so that the next
//! walk from the same place checks the inputs instead of walking again.
//!
//! A walk is a function of its starting registers (pc, sp, and rbp when a
//! rule used it before the stack gave rbp back), the process's unwind
//! tables (one [`ProcessMappings::generation`] never changes) and the
//! stack words it read and used (a saved rbp no rule used before the next
//! one replaced it changes nothing). If a new walk starts from the same registers in
//! the same tables and every one of those words still holds the value the
//! remembered walk read, it would read and do exactly the same: its stack
//! id is the remembered one. Checking costs one copy of the stack span the
//! walk read and a compare per word; walking costs a cache lookup, a rule
//! lookup and a hash step per frame besides.
//!
//! Walks that read kernel memory (through a return-probe trampoline), hit
//! an unreadable word, read more than [`MEMO_WORDS`] words or read outside
//! the [`WINDOW_ROOM`] bytes above the starting sp are not remembered.
//!
//! [`ProcessMappings::generation`]: tracer_common::ProcessMappings

use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::window::{fill_window, WINDOW_ROOM};

/// Stack words one remembered walk may have read.
const MEMO_WORDS: usize = 64;

/// Remembered walks per CPU, direct-mapped by (pc, sp).
const MEMO_ENTRIES: u32 = 256;

/// One remembered walk. Layout: 3×u64, 6×u32, the values, then the
/// offsets; no implicit padding (MEMO_WORDS × 2 bytes is a multiple of 8).
#[repr(C)]
pub(crate) struct Memo {
    pc: u64,
    sp: u64,
    /// rbp at the start, compared only when `uses_bp`.
    bp: u64,
    slot: u32,
    generation: u32,
    /// Words read; 0 while the entry holds no complete walk.
    words: u32,
    uses_bp: u32,
    id: u32,
    /// Bytes above `sp` the words lie in.
    span: u32,
    values: [u64; MEMO_WORDS],
    /// Each word's offset from `sp`.
    offsets: [u16; MEMO_WORDS],
}

#[map]
static WALK_MEMO: PerCpuArray<Memo> = PerCpuArray::with_max_entries(MEMO_ENTRIES, 0);

/// The walk being recorded. Layout: u64, 4×u32; no implicit padding.
#[repr(C)]
struct Recording {
    sp: u64,
    entry: u32,
    /// Words noted so far; past [`MEMO_WORDS`] when the walk is not to be
    /// remembered.
    words: u32,
    uses_bp: u32,
    span: u32,
}

#[map]
static RECORDING: PerCpuArray<Recording> = PerCpuArray::with_max_entries(1, 0);

const NOT_REMEMBERED: u32 = MEMO_WORDS as u32 + 1;

#[inline(always)]
fn entry_of(pc: u64, sp: u64) -> u32 {
    let h = (pc ^ sp.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 48) as u32 & (MEMO_ENTRIES - 1)
}

/// The stack id of a remembered walk from `(pc, sp, bp)` whose inputs all
/// still hold. Leaves the window holding this thread's stack at `sp` (or
/// empty).
#[inline(always)]
pub(crate) fn replay(slot: u32, generation: u32, pc: u64, sp: u64, bp: u64) -> Option<u32> {
    let m = WALK_MEMO.get_ptr(entry_of(pc, sp))?;
    // SAFETY: this CPU's entry, ours while the program runs.
    let m = unsafe { &*m };
    let words = m.words as usize;
    if words == 0
        || words > MEMO_WORDS
        || m.pc != pc
        || m.sp != sp
        || m.slot != slot
        || m.generation != generation
        || (m.uses_bp != 0 && m.bp != bp)
    {
        return None;
    }
    let stack = fill_window(sp, m.span)?;
    for i in 0..MEMO_WORDS {
        if i >= words {
            return Some(m.id);
        }
        let at = m.offsets[i] as usize & (WINDOW_ROOM - 1);
        if at + 8 > WINDOW_ROOM {
            return None;
        }
        // SAFETY: `at + 8` is within the buffer.
        let v = unsafe { core::ptr::read_unaligned(stack.as_ptr().add(at) as *const u64) };
        if v != m.values[i] {
            return None;
        }
    }
    Some(m.id)
}

/// Starts recording the walk from `(pc, sp)`: its memo entry no longer
/// holds a complete walk.
#[inline(always)]
pub(crate) fn start(pc: u64, sp: u64) {
    let entry = entry_of(pc, sp);
    if let Some(m) = WALK_MEMO.get_ptr_mut(entry) {
        // SAFETY: this CPU's entry.
        unsafe { (*m).words = 0 };
    }
    if let Some(r) = RECORDING.get_ptr_mut(0) {
        // SAFETY: this CPU's recording state.
        unsafe {
            r.write(Recording {
                sp,
                entry,
                words: 0,
                uses_bp: 0,
                span: 0,
            })
        };
    }
}

/// Notes that the walk read `value` at `addr`.
#[inline(always)]
pub(crate) fn note(addr: u64, value: u64) {
    let Some(r) = RECORDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's recording state.
    let r = unsafe { &mut *r };
    let n = r.words as usize;
    let off = addr.wrapping_sub(r.sp);
    if n >= MEMO_WORDS || off > (WINDOW_ROOM - 8) as u64 {
        r.words = NOT_REMEMBERED;
        return;
    }
    if let Some(m) = WALK_MEMO.get_ptr_mut(r.entry) {
        // SAFETY: this CPU's entry; `n` is in bounds.
        unsafe {
            (*m).values[n] = value;
            (*m).offsets[n] = off as u16;
        }
    }
    r.words = n as u32 + 1;
    r.span = r.span.max(off as u32 + 8);
}

/// Keeps the word at `addr`, read but not (yet) needed, within the span a
/// replay copies: the copy succeeding then says it is still readable.
#[inline(always)]
pub(crate) fn cover(addr: u64) {
    let Some(r) = RECORDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's recording state.
    let r = unsafe { &mut *r };
    let off = addr.wrapping_sub(r.sp);
    if off > (WINDOW_ROOM - 8) as u64 {
        r.words = NOT_REMEMBERED;
        return;
    }
    r.span = r.span.max(off as u32 + 8);
}

/// Notes that the walk used rbp as the probe found it.
#[inline(always)]
pub(crate) fn note_initial_bp() {
    if let Some(r) = RECORDING.get_ptr_mut(0) {
        // SAFETY: this CPU's recording state.
        unsafe { (*r).uses_bp = 1 };
    }
}

/// The walk depends on something other than its inputs: forget it.
#[inline(always)]
pub(crate) fn abandon() {
    if let Some(r) = RECORDING.get_ptr_mut(0) {
        // SAFETY: this CPU's recording state.
        unsafe { (*r).words = NOT_REMEMBERED };
    }
}

/// Remembers the walk just recorded as the one giving stack `id`.
#[inline(always)]
pub(crate) fn commit(id: u32, slot: u32, generation: u32, pc: u64, sp: u64, bp: u64) {
    let Some(r) = RECORDING.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's recording state.
    let r = unsafe { &*r };
    if r.words == 0 || r.words as usize > MEMO_WORDS || r.sp != sp {
        return;
    }
    let Some(m) = WALK_MEMO.get_ptr_mut(r.entry) else {
        return;
    };
    // SAFETY: this CPU's entry; `words` goes last, making it complete.
    unsafe {
        (*m).pc = pc;
        (*m).sp = sp;
        (*m).bp = bp;
        (*m).slot = slot;
        (*m).generation = generation;
        (*m).uses_bp = r.uses_bp;
        (*m).id = id;
        (*m).span = r.span;
        (*m).words = r.words;
    }
}
