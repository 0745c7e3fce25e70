//! Launch mode: start a command held just before `exec`, so that probes are
//! in place before it runs its first allocation.
//!
//! std's `Command::spawn` waits until the child has exec'd, so it cannot
//! hold a child before exec; this forks directly. Everything the child needs
//! (resolved path, argv, envp) is prepared before the fork, and the child
//! only calls async-signal-safe functions (read, close, execve, _exit).

use std::{
    env,
    ffi::{CString, OsStr, OsString},
    fs,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    process::Command,
};

use object::read::elf::{ElfFile64, ProgramHeader};

use super::{Candidate, TargetError};

/// A forked child waiting for [`Paused::release`] before it execs.
#[derive(Debug)]
pub struct Paused {
    pub pid: u32,
    pub program: PathBuf,
    go_fd: libc::c_int,
}

impl Paused {
    /// Lets the child exec the command.
    pub fn release(mut self) {
        let byte = 1u8;
        // SAFETY: writing one byte from a valid buffer to our own pipe fd.
        unsafe {
            libc::write(self.go_fd, (&byte as *const u8).cast(), 1);
            libc::close(self.go_fd);
        }
        self.go_fd = -1;
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.go_fd >= 0 {
            // Never released (setup failed): closing the pipe makes the
            // child exit without running the command.
            // SAFETY: closing our own fd once.
            unsafe { libc::close(self.go_fd) };
        }
    }
}

/// Forks a child that will exec `argv` once released.
///
/// Call this before any other thread exists (before the async runtime).
pub fn spawn_paused(argv: &[OsString]) -> Result<Paused, TargetError> {
    let program = resolve_command(argv)?;
    let cmd = argv[0].to_string_lossy().into_owned();

    let cstr = |s: &OsStr| CString::new(s.as_bytes()).ok();
    let c_program = cstr(program.as_os_str());
    let c_args: Option<Vec<CString>> = argv.iter().map(|a| cstr(a)).collect();
    let c_env: Option<Vec<CString>> = env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    let (Some(c_program), Some(c_args), Some(c_env)) = (c_program, c_args, c_env) else {
        return Err(TargetError::Spawn {
            cmd,
            source: std::io::Error::other("argument or environment contains a NUL byte"),
        });
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = c_env.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());

    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(TargetError::Spawn {
            cmd,
            source: std::io::Error::last_os_error(),
        });
    }
    let [read_fd, write_fd] = fds;

    // SAFETY: the child branch only calls async-signal-safe functions on
    // memory prepared before the fork, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(TargetError::Spawn {
            cmd,
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: see above; all pointers stay valid in the child's copy.
        unsafe {
            libc::close(write_fd);
            let mut byte = 0u8;
            loop {
                let n = libc::read(read_fd, (&mut byte as *mut u8).cast(), 1);
                if n == 1 {
                    break;
                }
                if n == 0 || *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127); // leaktrace gave up before releasing us
                }
            }
            libc::execve(c_program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: closing the child's end in the parent.
    unsafe { libc::close(read_fd) };
    Ok(Paused {
        pid: pid as u32,
        program,
        go_fd: write_fd,
    })
}

/// The program `argv[0]` names, as execvp would find it.
pub fn resolve_command(argv: &[OsString]) -> Result<PathBuf, TargetError> {
    let name = argv.first().ok_or_else(|| TargetError::Spawn {
        cmd: String::new(),
        source: std::io::Error::other("empty command"),
    })?;
    resolve_program(name).ok_or_else(|| TargetError::Spawn {
        cmd: name.to_string_lossy().into_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "command not found"),
    })
}

/// `name` as execvp would find it.
fn resolve_program(name: &OsStr) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then(|| fs::canonicalize(&p).unwrap_or(p));
    }
    env::split_paths(&env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

/// The objects `program` will map: itself and the libraries its dynamic
/// loader resolves (`ld.so --list`, honouring LD_LIBRARY_PATH and friends).
pub fn program_objects(program: &Path) -> Result<Vec<Candidate>, TargetError> {
    let cmd = program.display().to_string();
    let data = fs::read(program).map_err(|e| TargetError::Libraries {
        cmd: cmd.clone(),
        reason: e.to_string(),
    })?;
    let program = fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let mut out = vec![Candidate {
        display: program.display().to_string(),
        path: program.clone(),
    }];
    let Some(interp) = interpreter(&data) else {
        return Ok(out); // statically linked
    };
    let output = Command::new(&interp)
        .arg("--list")
        .arg(&program)
        .output()
        .map_err(|e| TargetError::Libraries {
            cmd: cmd.clone(),
            reason: format!("{}: {e}", interp.display()),
        })?;
    if !output.status.success() {
        return Err(TargetError::Libraries {
            cmd,
            reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    for path in parse_ld_list(&String::from_utf8_lossy(&output.stdout)) {
        // The kernel names mappings by their canonical path (/usr/lib, not
        // the /lib symlink): match that, so reports can tell functions apart.
        let path = fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(path));
        out.push(Candidate {
            display: path.display().to_string(),
            path,
        });
    }
    Ok(out)
}

fn interpreter(data: &[u8]) -> Option<PathBuf> {
    let elf = ElfFile64::<object::Endianness>::parse(data).ok()?;
    let endian = elf.endian();
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) == object::elf::PT_INTERP {
            let bytes = ph.data(endian, data).ok()?;
            let bytes = bytes.split(|b| *b == 0).next()?;
            return Some(PathBuf::from(OsStr::from_bytes(bytes)));
        }
    }
    None
}

/// Resolved paths from `ld.so --list` output.
fn parse_ld_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once(" => ") {
                Some((_, rest)) => rest,
                None => line,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ld_list() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f12)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f34)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ld_list(text),
            vec![
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn finds_libc_of_a_system_binary() {
        let ls = resolve_program(OsStr::new("ls")).expect("ls on PATH");
        let objs = program_objects(&ls).expect("ld.so --list works");
        assert!(
            objs.iter().any(|c| c.display.contains("libc.so")),
            "{objs:?}"
        );
    }
}
