//! Would a return probe kill this target?
//!
//! Since Linux 6.11 a uretprobe returns through a dedicated syscall. Until
//! seccomp learned to let that syscall through, a process under a seccomp
//! filter that does not know it (Docker's default profile, systemd's
//! SystemCallFilter) was killed on its first probed return. Which kernels
//! carry the fix depends on stable backports, so instead of guessing from
//! the version, leaktrace asks the kernel: a throwaway child installs a
//! filter that kills on that syscall, gets a return probe, and calls the
//! probed function. If the child dies, so would the target.

use std::{fs, num::NonZeroU32};

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};

use super::{error_chain, ProbeError, Probes};
use crate::process::{allocator::function_offsets, procfs};

/// x86-64 syscall number of `uretprobe` (Linux 6.11+).
const NR_URETPROBE: u32 = 335;

/// Whether `pid` runs under a seccomp filter (mode 2).
pub fn has_seccomp_filter(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_seccomp_mode(&s) == Some(2))
        .unwrap_or(false)
}

fn parse_seccomp_mode(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Probes {
    /// Runs the experiment described in the module docs; `Ok(true)` when a
    /// return probe is safe under a seccomp filter that rejects the
    /// uretprobe syscall.
    pub fn uretprobe_survives_seccomp(&mut self) -> Result<bool, ProbeError> {
        // Our own libc's getppid: a trivial function the child can call.
        let maps = procfs::read_maps(std::process::id()).unwrap_or_default();
        let libc = maps
            .iter()
            .find(|m| m.executable && m.path.as_deref().is_some_and(|p| p.contains("libc.so")))
            .ok_or(ProbeError::Missing("own libc mapping"))?;
        let path = libc.open_path(std::process::id());
        let data = fs::read(&path).map_err(|e| ProbeError::Load(e.to_string()))?;
        let offset = *function_offsets(&data)
            .and_then(|f| f.get("getppid").copied())
            .as_ref()
            .ok_or(ProbeError::Missing("getppid in our libc"))?;

        let child = SeccompChild::spawn()?;
        let prog = self.program("seccomp_check_return")?;
        prog.load().or_else(|e| match e {
            aya::programs::ProgramError::AlreadyLoaded => Ok(()),
            e => Err(ProbeError::Load(error_chain(&e))),
        })?;
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(child.pid).ok_or(ProbeError::Missing("child pid"))?,
        );
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: None,
        };
        let link = prog
            .attach(point, &path, scope)
            .map_err(|e| ProbeError::Attach {
                function: "getppid".into(),
                library: "leaktrace's libc".into(),
                reason: error_chain(&e),
            })?;
        let survived = child.run();
        let _ = self.program("seccomp_check_return")?.detach(link);
        Ok(survived)
    }
}

/// A forked child that, once released, installs a seccomp filter killing on
/// the uretprobe syscall, calls getppid and exits 0.
struct SeccompChild {
    pid: u32,
    go_fd: libc::c_int,
}

impl SeccompChild {
    fn spawn() -> Result<Self, ProbeError> {
        // Classic BPF: kill the process on the uretprobe syscall, allow the rest.
        let filter = [
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: NR_URETPROBE,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_KILL_PROCESS,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut _,
        };
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills the two-element array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(ProbeError::Load(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        let [read_fd, write_fd] = fds;
        // SAFETY: the child only calls async-signal-safe functions on data
        // prepared before the fork, then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(ProbeError::Load(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::close(write_fd);
                let mut byte = 0u8;
                if libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) != 1 {
                    libc::_exit(3);
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const libc::sock_fprog,
                    ) != 0
                {
                    libc::_exit(4);
                }
                libc::getppid();
                libc::_exit(0);
            }
        }
        // SAFETY: closing the child's end in the parent.
        unsafe { libc::close(read_fd) };
        Ok(SeccompChild {
            pid: pid as u32,
            go_fd: write_fd,
        })
    }

    /// Releases the child and reports whether it exited normally.
    fn run(self) -> bool {
        let byte = 1u8;
        let mut status = 0;
        // SAFETY: writing to our pipe, then reaping our own child.
        unsafe {
            libc::write(self.go_fd, (&byte as *const u8).cast(), 1);
            libc::close(self.go_fd);
            libc::waitpid(self.pid as i32, &mut status, 0);
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seccomp_mode() {
        assert_eq!(
            parse_seccomp_mode("Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(2)
        );
        assert_eq!(parse_seccomp_mode("Seccomp:\t0\n"), Some(0));
        assert_eq!(parse_seccomp_mode("nothing"), None);
    }
}
