//! The stack window: one copy of the user stack memory a walk reads next,
//! shared by the walk (`unwind`), its memo's check (`walk_memo`), and the
//! probes that read their caller right after a walk.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as raw_read_user},
    macros::map,
    maps::PerCpuArray,
};
use tracer_common::Counter;

use crate::counters::count;

/// Bytes of user stack copied at once.
const WINDOW: usize = 512;

/// Room in the window: a walk refills [`WINDOW`] bytes at a time, a
/// remembered walk's check (`walk_memo`) copies the whole span it read.
pub(crate) const WINDOW_ROOM: usize = 2048;

/// A copy of the stack memory the walk reads next. Reading user memory
/// costs about the same for 8 bytes as for a few hundred (the fixed cost
/// of a fault-safe user copy), and a walk reads upwards through adjacent
/// frames: one copy serves several frames.
#[repr(C)]
struct StackWindow {
    /// User address of `bytes[0]`.
    base: u64,
    /// Valid bytes (0: empty).
    len: u64,
    bytes: [u8; WINDOW_ROOM],
}

#[map]
static STACK_WINDOW: PerCpuArray<StackWindow> = PerCpuArray::with_max_entries(1, 0);

/// Fills the window with the `len` bytes of user stack at `base` (at most
/// [`WINDOW_ROOM`]), and returns them.
#[inline(always)]
pub(crate) fn fill_window(base: u64, len: u32) -> Option<&'static [u8; WINDOW_ROOM]> {
    let win = STACK_WINDOW.get_ptr_mut(0)?;
    if len == 0 || len as usize > WINDOW_ROOM {
        return None;
    }
    // SAFETY: this CPU's window, ours while the program runs; the length
    // is bounded by the buffer's.
    unsafe {
        (*win).len = 0;
        let dst = (*win).bytes.as_mut_ptr() as *mut c_void;
        if raw_read_user(dst, len, base as *const c_void) != 0 {
            return None;
        }
        (*win).base = base;
        (*win).len = u64::from(len);
        Some(&(*win).bytes)
    }
}

/// Empties the window: a new walk reads a new stack.
#[inline(always)]
pub(crate) fn clear_window() {
    if let Some(win) = STACK_WINDOW.get_ptr_mut(0) {
        // SAFETY: this CPU's window, ours while the program runs.
        unsafe { (*win).len = 0 };
    }
}

/// Reads a `T` of user memory at `addr`, through the window.
#[inline(always)]
pub(crate) fn read_user<T: Copy>(addr: u64) -> Option<T> {
    let size = core::mem::size_of::<T>() as u64;
    let win = STACK_WINDOW.get_ptr_mut(0)?;
    // SAFETY: this CPU's window, ours while the program runs; offsets into
    // `bytes` are bounded below before each access.
    unsafe {
        let off = addr.wrapping_sub((*win).base);
        let len = (*win).len;
        if len >= size && off <= len - size {
            let at = (off as usize) & (WINDOW_ROOM - 1);
            if at + size as usize <= WINDOW_ROOM {
                return Some(core::ptr::read_unaligned(
                    (*win).bytes.as_ptr().add(at) as *const T
                ));
            }
        }
        // Refill from `addr`: the whole window, else up to the end of its
        // page (the stack's top page ends the mapping).
        let dst = (*win).bytes.as_mut_ptr() as *mut c_void;
        let src = addr as *const c_void;
        let mut got = WINDOW as u64;
        if raw_read_user(dst, WINDOW as u32, src) != 0 {
            got = 4096 - (addr & 4095);
            if got < size || got > WINDOW as u64 || raw_read_user(dst, got as u32, src) != 0 {
                (*win).len = 0;
                // Straddling a page, or unreadable: read it alone.
                return bpf_probe_read_user(addr as *const T).ok();
            }
        }
        (*win).base = addr;
        (*win).len = got;
        Some(core::ptr::read_unaligned((*win).bytes.as_ptr() as *const T))
    }
}

/// A word of this thread's stack, usually out of the window (no copy of
/// its own). Only once this program cleared the window or walked: the
/// window then holds this thread's stack, or nothing.
#[inline(always)]
pub(crate) fn read_stack_word(addr: u64) -> Option<u64> {
    read_user::<u64>(addr)
}

/// A stack word for the walk, noted for [`walk_memo`].

/// The return address at the entry stack pointer `entry_sp`, right after
/// a walk of this thread's stack (out of the stack window it filled).
#[inline(always)]
pub(crate) fn caller_after_walk(entry_sp: u64) -> u64 {
    match read_stack_word(entry_sp) {
        Some(caller) => caller,
        None => {
            count(Counter::CallerUnreadable);
            0
        }
    }
}
