//! Holding every thread of the target still for a scan, and letting it go.
//!
//! Each thread is seized with ptrace (`PTRACE_SEIZE`, which neither stops
//! nor signals it) and interrupted (`PTRACE_INTERRUPT`); the thread list is
//! read again until no thread is left that is not stopped, since a running
//! thread may create another. A thread that stops for a signal instead
//! (a signal-delivery stop) gets that signal back when it is let go.
//!
//! Nothing can leave the target stopped: the threads are let go when the
//! [`Frozen`] is dropped, on every path out of a scan, and if leaktrace
//! dies the kernel detaches them itself (a dead tracer's tracees run on).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

/// `PTRACE_EVENT_STOP` in `status >> 16` (an interrupt or group stop).
const PTRACE_EVENT_STOP: i32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("pid {0} is already traced (by a debugger or another tracer): it cannot be stopped for a scan")]
    AlreadyTraced(u32),
    #[error("cannot stop thread {tid} of pid {pid}: {source}")]
    Seize {
        pid: u32,
        tid: u32,
        source: std::io::Error,
    },
    #[error("pid {0} has exited")]
    Gone(u32),
    #[error("the threads of pid {0} did not all stop before the deadline")]
    Deadline(u32),
}

/// One stopped thread.
pub struct Thread {
    pub tid: u32,
    pub regs: libc::user_regs_struct,
    /// A signal it stopped for, delivered again when it goes on.
    pending_signal: i32,
}

/// Every thread of a process, stopped; let go when dropped.
pub struct Frozen {
    pub pid: u32,
    pub threads: Vec<Thread>,
    /// Seized threads not yet stopped (only while freezing).
    seized: BTreeSet<u32>,
    pub took: Duration,
}

impl Frozen {
    /// Stops every thread of `pid`, giving up at `deadline`.
    pub fn freeze(pid: u32, deadline: Instant) -> Result<Frozen, FreezeError> {
        let start = Instant::now();
        if tracer_pid(pid).is_some_and(|t| t != 0) {
            return Err(FreezeError::AlreadyTraced(pid));
        }
        let mut frozen = Frozen {
            pid,
            threads: Vec::new(),
            seized: BTreeSet::new(),
            took: Duration::ZERO,
        };
        loop {
            let tids = threads_of(pid).ok_or(FreezeError::Gone(pid))?;
            let new: Vec<u32> = tids.into_iter().filter(|t| !frozen.has(*t)).collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                if Instant::now() >= deadline {
                    return Err(FreezeError::Deadline(pid));
                }
                frozen.stop(tid)?;
            }
        }
        frozen.took = start.elapsed();
        Ok(frozen)
    }

    fn has(&self, tid: u32) -> bool {
        self.seized.contains(&tid) || self.threads.iter().any(|t| t.tid == tid)
    }

    /// Seizes, interrupts and waits for thread `tid`; a thread gone
    /// meanwhile is skipped.
    fn stop(&mut self, tid: u32) -> Result<(), FreezeError> {
        let pid = self.pid;
        // SAFETY: ptrace on a thread id with no data pointer.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(()), // exited meanwhile
                Some(libc::EPERM) if tracer_pid(pid).is_some_and(|t| t != 0) => {
                    Err(FreezeError::AlreadyTraced(pid))
                }
                _ => Err(FreezeError::Seize {
                    pid,
                    tid,
                    source: e,
                }),
            };
        }
        self.seized.insert(tid);
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        let mut pending_signal = 0;
        loop {
            let mut status = 0;
            // SAFETY: waiting for one tracee; status is a local.
            let r = unsafe { libc::waitpid(tid as i32, &mut status, libc::__WALL) };
            if r < 0 {
                // Gone (exited, or the whole process was killed).
                self.seized.remove(&tid);
                return Ok(());
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.seized.remove(&tid);
                return Ok(());
            }
            if libc::WIFSTOPPED(status) {
                if status >> 16 == PTRACE_EVENT_STOP {
                    break;
                }
                // A signal-delivery stop: keep the signal for later, and
                // wait on for the interrupt (it stays pending).
                pending_signal = libc::WSTOPSIG(status);
                // SAFETY: resuming our tracee with its signal withheld.
                unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0, 0) };
            }
        }
        let mut regs: libc::user_regs_struct =
            // SAFETY: a plain C struct of integers; all-zero is valid.
            unsafe { std::mem::zeroed() };
        // SAFETY: the thread is in a ptrace stop; regs is a valid buffer
        // of the type PTRACE_GETREGS writes.
        // Unreadable (the thread is exiting): left zero, no roots.
        unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs) };
        self.seized.remove(&tid);
        self.threads.push(Thread {
            tid,
            regs,
            pending_signal,
        });
        Ok(())
    }

    /// The stack pointers, one per thread.
    pub fn stack_pointers(&self) -> Vec<u64> {
        self.threads.iter().map(|t| t.regs.rsp).collect()
    }

    /// Every general-purpose register of every thread (valgrind's
    /// register roots).
    pub fn registers(&self) -> Vec<u64> {
        self.threads
            .iter()
            .flat_map(|t| {
                let r = &t.regs;
                [
                    r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10,
                    r.r11, r.r12, r.r13, r.r14, r.r15, r.rip, r.fs_base, r.gs_base,
                ]
            })
            .collect()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for t in &self.threads {
            // SAFETY: detaching our tracee, stopped.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, t.tid, 0, 0) };
            if t.pending_signal != 0 {
                // Detaching from an interrupt stop cannot inject it: sent
                // again, to that thread.
                // SAFETY: tgkill with plain integers.
                unsafe {
                    libc::syscall(
                        libc::SYS_tgkill,
                        self.pid as libc::c_long,
                        t.tid as libc::c_long,
                        t.pending_signal as libc::c_long,
                    )
                };
            }
        }
        for &tid in &self.seized {
            // SAFETY: as above; a seized thread not yet stopped detaches
            // once it stops (the kernel ends the seize at once otherwise).
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
        }
    }
}

/// The thread ids of `pid`; None when it is gone.
fn threads_of(pid: u32) -> Option<Vec<u32>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
    )
}

/// Whether a debugger or another tracer has `pid` (it cannot be scanned).
pub fn traced_by_another(pid: u32) -> bool {
    tracer_pid(pid).is_some_and(|t| t != 0)
}

/// The `TracerPid` of `pid`'s status.
fn tracer_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}
