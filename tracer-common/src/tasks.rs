//! Threads, child processes and traced processes: spawn sites, task
//! records, the task tracepoints' configuration and their events.

use crate::shared;

/// Spawn functions probed at entry to learn where a thread or child process
/// comes from (the frame chain is intact at their public entry, unlike at
/// the clone syscall deep inside libc).
pub const SPAWN_SYMBOLS: [&str; 6] = [
    "pthread_create",
    "fork",
    "vfork",
    "posix_spawn",
    "posix_spawnp",
    "system",
];

/// State stashed at a spawn function's entry, consumed by the fork
/// tracepoint in the same thread. 32 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpawnPending {
    pub caller: u64,
    pub entry_sp: u64,
    pub since_ns: u64,
    pub stack_id: u32,
    pub _pad: u32,
}
shared!(SpawnPending, 32);

/// A spawn stash older than this belongs to a call that created nothing.
pub const SPAWN_STALE_NS: u64 = 1_000_000_000;

/// Task kinds in [`TaskRecord::kind`].
pub const TASK_THREAD: u32 = 0;
pub const TASK_PROCESS: u32 = 1;

/// A thread or child process created by the target after attach, keyed by
/// its TID. 32 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskRecord {
    /// Return address into the caller of the spawn function (0: unknown).
    pub caller: u64,
    /// bpf_ktime_get_ns() at creation (CLOCK_MONOTONIC).
    pub start_ns: u64,
    pub stack_id: u32,
    pub kind: u32,
    pub parent_tid: u32,
    /// The traced process that created it (its tgid).
    pub owner: u32,
}
shared!(TaskRecord, 32);

/// Written by userspace before attach: where `pid`/`tgid` live in this
/// kernel's `struct task_struct` (from its BTF), and the PID namespace of
/// a traced container (a process that execs in it is traced from then
/// on). 32 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskConfig {
    pub pid_offset: u32,
    pub tgid_offset: u32,
    /// The namespace's nsfs device and inode (`stat /proc/PID/ns/pid`).
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// Which exec's join the traced set: none (0), those in the
    /// namespace `pidns_*` names ([`FOLLOW_IN_PIDNS`]: one container), or
    /// those in any other ([`FOLLOW_OUTSIDE_PIDNS`], `pidns_*` naming the
    /// host's: every container).
    pub follow_pidns: u32,
    /// Nonzero: a process that joins the traced set by exec, or a traced
    /// one that execs, is stopped (SIGSTOP) before its first instruction,
    /// and again when its loader has mapped its libraries, so that its
    /// probes are in before it runs (see `EVENT_LOADED`).
    pub stop_at_exec: u32,
}
shared!(TaskConfig, 32);

/// `TaskConfig::follow_pidns`: exec's in the namespace named.
pub const FOLLOW_IN_PIDNS: u32 = 1;
/// `TaskConfig::follow_pidns`: exec's in any namespace but the one named.
pub const FOLLOW_OUTSIDE_PIDNS: u32 = 2;

/// `TRACED` value flags: children this process forks are traced too, from
/// the fork on (a container's processes).
pub const TRACE_CHILDREN: u32 = 1;

/// What the kernel tells userspace about traced processes (`EVENTS` ring
/// buffer). 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEvent {
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    pub tgid: u32,
    /// EVENT_FORKED: the traced parent's tgid.
    pub parent: u32,
    /// Nonzero: the process was stopped (SIGSTOP) for userspace to
    /// attach, and waits for its SIGCONT.
    pub stopped: u32,
}
shared!(ProcessEvent, 16);

/// A traced process forked a child, traced from its first instruction.
pub const EVENT_FORKED: u32 = 1;
/// A traced process replaced its image (exec): new objects to probe.
pub const EVENT_EXECED: u32 = 2;
/// A process exec'd in the followed PID namespace (`docker exec`) and is
/// traced from then on.
pub const EVENT_ENTERED: u32 = 3;
/// A process stopped at exec reached its loader's `_dl_debug_state` (its
/// libraries mapped, or about to be), where it stopped again.
pub const EVENT_LOADED: u32 = 4;
