//! Noticing when the target exits (and, for a command leaktrace started,
//! with which status).

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

/// Notices when the target exits, through a pidfd (readable on exit).
pub(super) struct ExitWatcher {
    pid: u32,
    fd: Option<AsyncFd<OwnedFd>>,
    /// We started the target: reap it and report its status.
    is_child: bool,
    exited: bool,
}

impl ExitWatcher {
    pub(super) fn new(pid: u32, is_child: bool) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let fd = if fd >= 0 {
            // SAFETY: the kernel just gave us this fd, so we own it, and
            // the OwnedFd is registered once and only closed by AsyncFd.
            let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: `owned` is a valid fd exclusively owned by the AsyncFd.
            Some(unsafe { AsyncFd::register(owned) }.map_err(io::Error::from)?)
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            None // already gone
        } else {
            return Err(io::Error::last_os_error());
        };
        Ok(ExitWatcher {
            pid,
            exited: fd.is_none(),
            fd,
            is_child,
        })
    }

    pub(super) fn has_exited(&self) -> bool {
        self.exited
    }

    /// Whether the target has exited by now, without waiting (a pidfd is
    /// readable once it has). For processes leaktrace did not start.
    pub(super) fn check_now(&mut self) -> bool {
        if self.exited {
            return true;
        }
        if let Some(fd) = &self.fd {
            use std::os::fd::AsRawFd;
            let mut p = libc::pollfd {
                fd: fd.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd we own, without waiting.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            if n > 0 && p.revents != 0 {
                self.exited = true;
            }
        }
        self.exited
    }

    /// Resolves when the target exits; for our own child, with its exit
    /// code (128 + signal if killed). Pending forever once it has resolved.
    pub(super) async fn exited(&mut self) -> Option<i32> {
        if self.exited {
            return std::future::pending().await;
        }
        if let Some(fd) = &self.fd {
            if let Ok(mut guard) = fd.readable().await {
                guard.retain_ready();
            }
        }
        self.exited = true;
        if !self.is_child {
            return None;
        }
        let mut status = 0;
        // SAFETY: reaping our own exited child; status is a valid out-pointer.
        let r = unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
        if r < 0 {
            return None;
        }
        if libc::WIFEXITED(status) {
            Some(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Some(128 + libc::WTERMSIG(status))
        } else {
            None
        }
    }
}
