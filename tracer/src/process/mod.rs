//! What to trace: a running process (`--pid`), a command leaktrace starts
//! (`-- CMD`) or a container's processes, and where the target's allocator
//! lives. (Whether it is a Go program is [`crate::golang`]'s business.)

pub mod allocator;
pub mod container;
pub mod engine;
pub mod exit_point;
pub mod launch;
pub mod loader;
pub mod memcg;
pub mod procfs;

use std::{collections::HashSet, io};

pub use allocator::{
    find_allocator, Allocator, AllocatorError, Candidate, ProbeFn, ProbedObject, Site,
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {0}")]
    NoSuchProcess(u32),
    #[error("PID {0} is a kernel thread; leaktrace traces user-space processes")]
    KernelThread(u32),
    #[error("PID {0} is a zombie (it has exited and holds no memory)")]
    Zombie(u32),
    #[error("cannot read /proc/{pid}: {source} (run leaktrace as root)")]
    Unreadable { pid: u32, source: io::Error },
    #[error("cannot start `{cmd}`: {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("cannot find the shared libraries of `{cmd}`: {reason}")]
    Libraries { cmd: String, reason: String },
}

/// A process that exists and can be traced.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// Checks that `pid` is a live user-space process we can inspect.
pub fn inspect(pid: u32) -> Result<Process, TargetError> {
    if pid == 0 {
        return Err(TargetError::NoSuchProcess(pid));
    }
    let stat = procfs::read_stat(pid).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => TargetError::NoSuchProcess(pid),
        _ => TargetError::Unreadable { pid, source: e },
    })?;
    if stat.is_kernel_thread() {
        return Err(TargetError::KernelThread(pid));
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(TargetError::Zombie(pid));
    }
    Ok(Process {
        pid,
        comm: stat.comm,
    })
}

/// Objects mapped executable in a running process, openable from here even
/// if they live in another mount namespace.
pub fn mapped_objects(pid: u32) -> Result<Vec<Candidate>, TargetError> {
    let maps = procfs::read_maps(pid).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => TargetError::NoSuchProcess(pid),
        _ => TargetError::Unreadable { pid, source: e },
    })?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in maps.iter().filter(|m| m.executable) {
        let Some(path) = &m.path else { continue };
        if !seen.insert(path.clone()) {
            continue;
        }
        // Through map_files: exactly the inode the target maps, whatever
        // mount namespace or chroot it lives in and even if the file was
        // replaced or deleted since (the path in maps is only a name).
        out.push(Candidate {
            display: path.clone(),
            path: m.open_path(pid),
        });
    }
    Ok(out)
}
