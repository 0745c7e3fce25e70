//! Thread and child-process tracking: where each task of the target was
//! spawned, and whether it is still alive.
//!
//! Spawn functions (pthread_create, fork, posix_spawn, ...) are probed at
//! entry, where the caller's frame chain is intact, and stash the caller's
//! stack per thread. The `sched_process_fork` tracepoint, which runs in the
//! spawning thread, turns that stash into a record for the new task;
//! `sched_process_exit` removes it.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_attach_cookie, bpf_get_ns_current_pid_tgid, bpf_ktime_get_ns, bpf_send_signal,
        },
    },
    macros::{map, raw_tracepoint, uprobe},
    maps::{Array, HashMap, RingBuf},
    programs::{ProbeContext, RawTracePointContext},
    EbpfContext,
};
use tracer_common::{
    Counter, ProcessEvent, SpawnPending, TaskConfig, TaskRecord, DEFAULT_MAX_TASKS,
    DEFAULT_MAX_THREADS, EVENT_ENTERED, EVENT_EXECED, EVENT_FORKED, EVENT_LOADED, FOLLOW_IN_PIDNS,
    FOLLOW_OUTSIDE_PIDNS, SPAWN_STALE_NS, STACK_UNKNOWN, TASK_PROCESS, TASK_THREAD, TRACE_CHILDREN,
};

use crate::{
    counters::count,
    traced::{self, TRACED},
    unwind,
    walker::{walk_for, WalkFor, FOR_SPAWN},
};

#[map]
static SPAWN_PENDING: HashMap<u32, SpawnPending> =
    HashMap::with_max_entries(DEFAULT_MAX_THREADS, 0);

#[map]
static TASKS: HashMap<u32, TaskRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_TASKS, BPF_F_NO_PREALLOC);

#[map]
static TASK_CONFIG: Array<TaskConfig> = Array::with_max_entries(1, 0);

/// tgid → when the OOM killer chose that traced process (bpf_ktime_get_ns).
#[map]
static OOM_KILLED: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Processes that joined the traced set or exec'd, for userspace.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Processes stopped at exec (or at their loader) until userspace has
/// attached their probes: what leaktrace's resume watchdog continues if
/// leaktrace dies before it does. tgid → 0.
#[map]
static STOPPED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

const SIGSTOP: u32 = 19;

/// Stops the current process (delivered on its way back to user mode,
/// before another instruction of it runs), recorded in `STOPPED` first so
/// that it is never left stopped; false when it could not be.
#[inline(always)]
fn stop_for_probes(tgid: u32) -> bool {
    if STOPPED.insert(&tgid, &0, 0).is_err() {
        return false;
    }
    // SAFETY: helper call with a signal number; it signals the current
    // process (its whole thread group).
    if unsafe { bpf_send_signal(SIGSTOP) } != 0 {
        let _ = STOPPED.remove(&tgid);
        return false;
    }
    true
}

/// Whether exec's are stopped for userspace (see `TaskConfig`).
#[inline(always)]
fn stops_at_exec() -> bool {
    TASK_CONFIG.get(0).is_some_and(|c| c.stop_at_exec != 0)
}

/// Tells userspace about a traced process; a full buffer is counted.
#[inline(always)]
fn tell(kind: u32, tgid: u32, parent: u32, stopped: bool) {
    let event = ProcessEvent {
        kind,
        tgid,
        parent,
        stopped: stopped as u32,
    };
    if EVENTS.output::<ProcessEvent>(&event, 0).is_err() {
        count(Counter::EventLost);
    }
}

/// Entry of a spawn function.
#[uprobe]
pub fn spawn_entry(ctx: ProbeContext) -> u32 {
    // SAFETY: helper call with the program's own context pointer.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if !traced::wanted(cookie, traced::tgid) {
        return 0;
    }
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    let entry_sp = unsafe { (*ctx.regs).rsp };
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // system() calls posix_spawn: keep the outer, fresher-than-stale stash.
    // SAFETY: plain data copied out of the map.
    if let Some(outer) = unsafe { SPAWN_PENDING.get(&tid) } {
        if entry_sp < outer.entry_sp && now.wrapping_sub(outer.since_ns) < SPAWN_STALE_NS {
            return 0;
        }
    }
    // SAFETY: reading the return address at the user stack pointer.
    let caller = unsafe { bpf_probe_read_user(entry_sp as *const u64) }.unwrap_or(0);
    let pending = SpawnPending {
        caller,
        entry_sp,
        since_ns: now,
        stack_id: STACK_UNKNOWN,
        _pad: 0,
    };
    if SPAWN_PENDING.insert(&tid, &pending, 0).is_err() {
        count(Counter::PendingMapFull);
        return 0;
    }
    walk_for(
        &ctx,
        WalkFor {
            what: FOR_SPAWN,
            tid,
            a: 0,
            b: 0,
            c: 0,
            tgid: 0,
            _pad: 0,
        },
    );
    0
}

/// The walk's result for the spawn call `tid` stashed.
#[inline(always)]
pub(crate) fn set_spawn_stack(tid: u32, stack_id: u32) {
    if let Some(p) = SPAWN_PENDING.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry; only it writes it.
        unsafe { (*p).stack_id = stack_id };
    }
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`,
/// in the parent's context, before the child runs.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn task_fork(ctx: RawTracePointContext) -> i32 {
    let cfg = match TASK_CONFIG.get(0) {
        Some(c) => *c,
        None => return 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent_tgid = (pid_tgid >> 32) as u32;
    let Some(flags) = traced::flags_of(parent_tgid) else {
        return 0;
    };
    let parent_tid = pid_tgid as u32;
    let child: u64 = ctx.arg(1);
    // SAFETY: reading two integers of a live task_struct at offsets taken
    // from this kernel's BTF; failures are handled.
    let (tid, tgid) = unsafe {
        (
            bpf_probe_read_kernel((child + cfg.pid_offset as u64) as *const i32),
            bpf_probe_read_kernel((child + cfg.tgid_offset as u64) as *const i32),
        )
    };
    let (Ok(tid), Ok(tgid)) = (tid, tgid) else {
        return 0;
    };
    let (tid, tgid) = (tid as u32, tgid as u32);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain data copied out of the map.
    let spawn = unsafe { SPAWN_PENDING.get(&parent_tid) }.copied();
    let (caller, stack_id) = match spawn {
        Some(p) if now.wrapping_sub(p.since_ns) < SPAWN_STALE_NS => (p.caller, p.stack_id),
        _ => (0, STACK_UNKNOWN),
    };
    if spawn.is_some() {
        let _ = SPAWN_PENDING.remove(&parent_tid);
    }
    let new_process = tgid != parent_tgid;
    let rec = TaskRecord {
        caller,
        start_ns: now,
        stack_id,
        kind: if new_process {
            TASK_PROCESS
        } else {
            TASK_THREAD
        },
        parent_tid,
        owner: parent_tgid,
    };
    if TASKS.insert(&tid, &rec, 0).is_err() {
        count(Counter::TaskMapFull);
    }
    if new_process && flags & TRACE_CHILDREN != 0 {
        // Traced from its first instruction, with its parent's mappings
        // (a fork copies them) until userspace gives it its own.
        if TRACED.insert(&tgid, &flags, 0).is_err() {
            count(Counter::ProcessMapFull);
            return 0;
        }
        unwind::inherit_slot(parent_tgid, tgid);
        tell(EVENT_FORKED, tgid, parent_tgid, false);
    }
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct
/// linux_binprm *bprm)`, in the exec'ing task's context, once the new
/// image is in place.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn task_exec(_ctx: RawTracePointContext) -> i32 {
    let tgid = traced::tgid();
    if traced::flags_of(tgid).is_some() {
        // Its mappings are gone: frame pointers until userspace has read
        // the new ones.
        unwind::forget_slot(tgid);
        let stopped = stops_at_exec() && stop_for_probes(tgid);
        tell(EVENT_EXECED, tgid, 0, stopped);
        return 0;
    }
    let Some(cfg) = TASK_CONFIG.get(0).copied() else {
        return 0;
    };
    if cfg.follow_pidns == 0 {
        return 0;
    }
    let mut ns = [0u32; 2];
    // SAFETY: the helper writes at most `size` bytes into `ns`; it fails
    // unless the current task's PID namespace is the one named.
    let in_ns = unsafe {
        bpf_get_ns_current_pid_tgid(
            cfg.pidns_dev,
            cfg.pidns_ino,
            ns.as_mut_ptr().cast(),
            core::mem::size_of_val(&ns) as u32,
        )
    } == 0;
    let follow = match cfg.follow_pidns {
        FOLLOW_IN_PIDNS => in_ns,
        FOLLOW_OUTSIDE_PIDNS => !in_ns,
        _ => false,
    };
    if follow {
        if TRACED.insert(&tgid, &TRACE_CHILDREN, 0).is_err() {
            count(Counter::ProcessMapFull);
            return 0;
        }
        let stopped = cfg.stop_at_exec != 0 && stop_for_probes(tgid);
        tell(EVENT_ENTERED, tgid, 0, stopped);
    }
    0
}

/// The loader's `_dl_debug_state` in a process stopped at exec (a link
/// for that process alone): called as it starts mapping the libraries
/// and once they are all mapped, before their initialisers run. Stops it
/// again, for userspace to probe what is mapped.
#[uprobe]
pub fn loader_ready(_ctx: ProbeContext) -> u32 {
    let tgid = traced::tgid();
    let stopped = stop_for_probes(tgid);
    tell(EVENT_LOADED, tgid, 0, stopped);
    0
}

/// `_exit` in a command leaktrace started with `--reachability` (a link
/// for that process alone): the program is ending, its heap as it leaves
/// it. Stops it, for userspace to scan before it goes.
#[uprobe]
pub fn exit_hold(_ctx: ProbeContext) -> u32 {
    stop_for_probes(traced::tgid());
    0
}

/// `sched_process_exit`, in the exiting task's context.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn task_exit(_ctx: RawTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: only checks presence; nothing is dereferenced.
    if unsafe { TASKS.get(&tid) }.is_some() {
        let _ = TASKS.remove(&tid);
    }
    // A thread that dies inside a spawn call leaves its stash behind.
    // SAFETY: as above.
    if unsafe { SPAWN_PENDING.get(&tid) }.is_some() {
        let _ = SPAWN_PENDING.remove(&tid);
    }
    0
}

/// `mark_victim(struct task_struct *task, uid_t uid)`: the OOM killer has
/// chosen `task`, in whichever task ran out of memory. Fires once per kill,
/// so it costs nothing while the target lives.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_victim(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = TASK_CONFIG.get(0).copied() else {
        return 0;
    };
    let victim: u64 = ctx.arg(0);
    // SAFETY: reading one integer of a live task_struct at an offset taken
    // from this kernel's BTF; a failure is handled.
    let tgid = unsafe { bpf_probe_read_kernel((victim + cfg.tgid_offset as u64) as *const i32) };
    let Ok(tgid) = tgid else {
        return 0;
    };
    let tgid = tgid as u32;
    if traced::flags_of(tgid).is_none() {
        return 0;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = OOM_KILLED.insert(&tgid, &now, 0);
    0
}
