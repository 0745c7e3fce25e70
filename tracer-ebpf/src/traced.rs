//! Which processes are traced, for probes one link attaches for every
//! process that maps an object (a container's own C library, say): such a
//! probe's cookie carries `COOKIE_CHECK_TRACED`, and the program leaves at
//! once in a process not in [`TRACED`]. Userspace adds the processes it
//! attaches to; the fork tracepoint adds the children of processes traced
//! with `TRACE_CHILDREN` before they run, and the exec tracepoint those
//! that exec in a followed PID namespace.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::HashMap};
use tracer_common::COOKIE_CHECK_TRACED;

/// tgid → `TRACE_*` flags; sized by userspace.
#[map]
pub(crate) static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// The current process's tgid.
#[inline(always)]
pub(crate) fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Whether a probe with this cookie should record anything in the process
/// `tgid` gives: always, unless the probe serves every process and this
/// one is not traced (only then is the process asked for).
#[inline(always)]
pub(crate) fn wanted(cookie: u64, tgid: impl FnOnce() -> u32) -> bool {
    // SAFETY: only checks presence.
    cookie & COOKIE_CHECK_TRACED == 0 || unsafe { TRACED.get(&tgid()) }.is_some()
}

/// The flags process `tgid` is traced with, if it is.
#[inline(always)]
pub(crate) fn flags_of(tgid: u32) -> Option<u32> {
    // SAFETY: plain data copied out of the map.
    unsafe { TRACED.get(&tgid) }.copied()
}
