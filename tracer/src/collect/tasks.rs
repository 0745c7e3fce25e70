//! Threads and child processes of the target that stay alive: read from the
//! kernel's task table (tasks created after attach, with their spawn
//! stacks) and from /proc (tasks that already existed at attach).

use std::{collections::HashMap, fs, rc::Rc, time::Duration};

use aya::maps::MapError;
use tracer_common::{TaskRecord, TASK_PROCESS};

use super::monotonic_ns;
use crate::{probes::TaskMaps, process::procfs};

/// Thread or child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    Thread,
    Process,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Thread => "thread",
            TaskKind::Process => "process",
        }
    }
}

/// Tasks from one spawn site (same stack), older than the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnGroup {
    pub kind: TaskKind,
    pub caller: u64,
    pub stack_id: u32,
    pub count: u64,
    pub oldest: Duration,
    /// Bytes of the stack mappings these threads run on (0 for processes or
    /// when a thread's stack pointer could not be read).
    pub stack_bytes: u64,
}

/// A task that existed before attach: its spawn site is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingTask {
    pub tid: u32,
    pub name: String,
    pub age: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct TaskSnapshot {
    pub groups: Vec<SpawnGroup>,
    pub existing: Vec<ExistingTask>,
    /// The OOM killer chose the target (it dies, or has died, of it).
    pub oom_killed: bool,
}

pub struct TaskCollector {
    /// Shared by every traced process's collector; records carry their
    /// owner.
    maps: Rc<TaskMaps>,
    pid: u32,
    older_than: Duration,
    existing_at_attach: Vec<u32>,
}

impl TaskCollector {
    /// Call right after the fork/exit tracepoints are attached.
    pub fn new(maps: Rc<TaskMaps>, pid: u32, older_than: Duration) -> Self {
        let existing_at_attach = list_tids(pid);
        TaskCollector {
            maps,
            pid,
            older_than,
            existing_at_attach,
        }
    }

    pub fn snapshot(&mut self) -> Result<TaskSnapshot, MapError> {
        let now = monotonic_ns();
        let records: Vec<(u32, TaskRecord)> = self.maps.tasks.iter().collect::<Result<_, _>>()?;
        let maps = procfs::read_maps(self.pid).unwrap_or_default();
        let mut groups: HashMap<(TaskKind, u64, u32), SpawnGroup> = HashMap::new();
        for (tid, rec) in records {
            if rec.owner != self.pid {
                continue;
            }
            let age = Duration::from_nanos(now.saturating_sub(rec.start_ns));
            if age < self.older_than {
                continue;
            }
            let kind = if rec.kind == TASK_PROCESS {
                TaskKind::Process
            } else {
                TaskKind::Thread
            };
            let g = groups
                .entry((kind, rec.caller, rec.stack_id))
                .or_insert(SpawnGroup {
                    kind,
                    caller: rec.caller,
                    stack_id: rec.stack_id,
                    count: 0,
                    oldest: Duration::ZERO,
                    stack_bytes: 0,
                });
            g.count += 1;
            g.oldest = g.oldest.max(age);
            // pthread_create gives each thread a mapping of its own; a raw
            // clone (the Go runtime's threads) runs on memory its creator
            // chose, e.g. inside the Go heap, which is not this thread's.
            let own_stack = rec.caller != 0;
            if kind == TaskKind::Thread && own_stack {
                g.stack_bytes += thread_stack_bytes(self.pid, tid, &maps).unwrap_or(0);
            }
        }
        let mut groups: Vec<SpawnGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.oldest.cmp(&a.oldest)));

        let existing = self
            .existing_at_attach
            .iter()
            .filter_map(|&tid| {
                let stat = procfs::read_task_stat(self.pid, tid).ok()?;
                Some(ExistingTask {
                    tid,
                    name: stat.comm,
                    age: age_since_boot_ticks(stat.start_ticks),
                })
            })
            .collect();
        let oom_killed = match self.maps.oom_killed.get(&self.pid, 0) {
            Ok(at) => at != 0,
            Err(MapError::KeyNotFound) => false,
            Err(e) => return Err(e),
        };
        Ok(TaskSnapshot {
            groups,
            existing,
            oom_killed,
        })
    }
}

fn list_tids(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// Size of the mapping holding the thread's stack pointer (from
/// /proc/PID/task/TID/syscall, which shows it while the thread is blocked).
fn thread_stack_bytes(pid: u32, tid: u32, maps: &[procfs::Mapping]) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let sp = parse_syscall_sp(&text)?;
    maps.iter()
        .find(|m| m.contains(sp))
        .map(|m| m.end - m.start)
}

/// `nr args... sp pc` or `-1 sp pc` (blocked); `running` has no sp.
fn parse_syscall_sp(text: &str) -> Option<u64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let sp = fields[fields.len() - 2];
    u64::from_str_radix(sp.trim_start_matches("0x"), 16).ok()
}

fn age_since_boot_ticks(start_ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let uptime = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Duration::from_secs_f64((uptime - start_ticks as f64 / hz).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stack_pointer_from_syscall_file() {
        assert_eq!(
            parse_syscall_sp("202 0x7f00 0x80 0x0 0x0 0x0 0x0 0x7ffd1000 0x7f12ab\n"),
            Some(0x7ffd1000)
        );
        assert_eq!(
            parse_syscall_sp("-1 0x7ffd2000 0x401000\n"),
            Some(0x7ffd2000)
        );
        assert_eq!(parse_syscall_sp("running\n"), None);
    }

    #[test]
    fn lists_own_threads() {
        let tids = list_tids(std::process::id());
        assert!(tids.contains(&std::process::id()));
    }
}
