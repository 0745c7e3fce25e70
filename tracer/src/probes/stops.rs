//! Processes held still until their probes are in: a process that joins a
//! followed container by exec (or a traced one that execs) is stopped by
//! the exec tracepoint before its first instruction, and, when it has a
//! loader, once more at the loader's `_dl_debug_state` when its libraries
//! are mapped (the breakpoint debuggers use), before their initialisers
//! run. Userspace attaches, then continues it ([`Probes::resume`]). A
//! command leaktrace started with `--reachability` is also stopped as it
//! calls `_exit`, for a last scan.
//!
//! Every stopped process is in the kernel's `STOPPED` map before it stops,
//! so that nothing is ever left stopped: leaktrace continues them when it
//! lets go of them and when it exits, and its resume watchdog
//! (`session::resume_watchdog`), which holds the map too, continues what
//! is left if leaktrace dies, even by SIGKILL.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, IterableMap, MapData};

use super::{error_chain, multi_link, ProbeError, Probes};

/// The loader breakpoint's probe in one process; removed when dropped.
pub struct LoaderWatch {
    _link: OwnedFd,
}

/// The `_exit` probe in one process; removed when dropped.
pub struct ExitHold {
    _link: OwnedFd,
}

impl Probes {
    /// From now on, exec's that join or stay in the traced set stop for
    /// userspace (see the module's doc).
    pub fn stop_at_exec(&mut self) -> Result<(), ProbeError> {
        let Some(mut cfg) = self.task_config else {
            return Err(ProbeError::Missing(
                "task tracepoints before stopping exec's",
            ));
        };
        cfg.stop_at_exec = 1;
        self.set_config("TASK_CONFIG", cfg)?;
        self.task_config = Some(cfg);
        Ok(())
    }

    /// Whether the task tracepoints are in (what stopping needs).
    pub fn follows_tasks(&self) -> bool {
        self.task_config.is_some()
    }

    /// Whether exec's stop for userspace.
    pub fn stops_at_exec(&self) -> bool {
        self.task_config.is_some_and(|c| c.stop_at_exec != 0)
    }

    /// Stops process `pid` again at its loader's breakpoint, the file
    /// offset `offset` of the loader `path` (as this process opens it).
    pub fn watch_loader(
        &mut self,
        pid: u32,
        path: &Path,
        offset: u64,
    ) -> Result<LoaderWatch, ProbeError> {
        let link = self.stop_at("loader_ready", "_dl_debug_state", pid, path, offset)?;
        Ok(LoaderWatch { _link: link })
    }

    /// Stops process `pid` when it calls `_exit`, at the file offset
    /// `offset` of `path` (its C library), for a scan of what it leaves;
    /// the program is loaded then (only `--reachability` of a command
    /// leaktrace starts needs it).
    pub fn hold_at_exit(
        &mut self,
        pid: u32,
        path: &Path,
        offset: u64,
    ) -> Result<ExitHold, ProbeError> {
        let prog = self.program("exit_hold")?;
        if prog.fd().is_err() {
            prog.load_for_uprobe_multi()
                .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        }
        let link = self.stop_at("exit_hold", "_exit", pid, path, offset)?;
        Ok(ExitHold { _link: link })
    }

    /// Attaches the stopping program `name` at `function` (file offset
    /// `offset` of `path`) in process `pid` alone.
    fn stop_at(
        &mut self,
        name: &'static str,
        function: &str,
        pid: u32,
        path: &Path,
        offset: u64,
    ) -> Result<OwnedFd, ProbeError> {
        let prog = self.program(name)?;
        let prog_fd = prog.fd().map_err(|e| ProbeError::Load(error_chain(&e)))?;
        let points = multi_link::MultiPoints {
            path,
            offsets: vec![offset],
            cookies: vec![0],
            returns: false,
            pid: Some(pid),
        };
        multi_link::attach(prog_fd.as_fd(), &points).map_err(|e| ProbeError::Attach {
            function: function.to_string(),
            library: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Waits (briefly) until process `pid`, which the kernel signalled to
    /// stop, has stopped: the kernel may send the signal after the event
    /// that says so (from its irq_work, when the program ran where it
    /// could not signal at once), and a SIGCONT sent before it would be
    /// lost, leaving the process stopped. False if it did not stop in
    /// time (gone, or killed).
    pub fn wait_stopped(&self, pid: u32) -> bool {
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) if stat_state(&stat) == Some('T') => return true,
                Ok(stat) if matches!(stat_state(&stat), Some('Z' | 'X')) => return false,
                Ok(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return false,
            }
        }
    }

    /// Whether the kernel stopped process `pid` for us (or is about to:
    /// the record goes in first) and it has not been continued since.
    pub fn held(&self, pid: u32) -> bool {
        self.stopped.get(&pid, 0).is_ok()
    }

    /// Continues process `pid` if the kernel stopped it for us and no
    /// event says so (a process leaktrace lets go of).
    pub fn resume(&mut self, pid: u32) {
        if self.stopped.remove(&pid).is_ok() {
            send_continue(pid);
        }
    }

    /// Continues process `pid`, which an event said the kernel stopped.
    /// Out of `STOPPED` first: once continued it may stop again at once
    /// (its loader's breakpoint), and that entry must stay.
    pub fn resume_stopped(&mut self, pid: u32) {
        let _ = self.stopped.remove(&pid);
        send_continue(pid);
    }

    /// Continues every process still stopped for us.
    pub(super) fn resume_all(&mut self) {
        let pids: Vec<u32> = self.stopped.keys().filter_map(Result::ok).collect();
        for pid in pids {
            self.resume(pid);
        }
    }

    /// The kernel's id of the `STOPPED` map, for the resume watchdog.
    pub fn stopped_map_id(&self) -> Option<u32> {
        self.stopped.map().info().ok().map(|i| i.id())
    }
}

/// Continues every process in a `STOPPED` map `map` (the
/// resume watchdog's last act).
pub fn resume_all_in(map: HashMap<MapData, u32, u32>) -> usize {
    let mut n = 0;
    for pid in map.keys().filter_map(Result::ok) {
        send_continue(pid);
        n += 1;
    }
    n
}

fn send_continue(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a plain pid and signal number.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

/// How long a process signalled to stop may take to stop.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// The state letter of a /proc/PID/stat line.
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}
