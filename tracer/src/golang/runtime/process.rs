//! One Go process as the report side reads it: its executable, where that
//! is loaded, and the runtime's memory once it is mapped.

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt};

use super::{GoRuntime, GoroutineInfo};
use crate::{golang::GoTarget, process::procfs};

pub struct GoProcess {
    pub pid: u32,
    pub target: GoTarget,
    runtime: Option<GoRuntime>,
    /// Found once the executable is mapped; it does not move after.
    bias: Option<u64>,
    /// The executable, kept open to read wrapper code even after exit.
    exe: Option<File>,
    /// Start functions by link-time address.
    start_names: HashMap<u64, Option<String>>,
}

impl GoProcess {
    pub fn new(pid: u32, target: GoTarget) -> Self {
        let exe = File::open(&target.path).ok();
        GoProcess {
            pid,
            target,
            runtime: None,
            bias: None,
            exe,
            start_names: HashMap::new(),
        }
    }

    /// Where the executable is loaded relative to its link-time addresses
    /// (0 unless PIE); `None` until it is mapped (a command not exec'd yet).
    pub fn load_bias(&mut self) -> Option<u64> {
        if self.bias.is_none() {
            self.bias = load_bias(self.pid, &self.target);
        }
        self.bias
    }

    /// The load bias, 0 when it cannot be found.
    pub fn bias(&mut self) -> u64 {
        self.load_bias().unwrap_or(0)
    }

    /// Opens the target's memory once its executable is mapped.
    pub fn open_runtime(&mut self) -> Result<&mut GoRuntime, String> {
        if self.runtime.is_none() {
            let bias = self.load_bias().ok_or_else(|| {
                format!(
                    "the executable {} is not in /proc/{}/maps",
                    self.target.display, self.pid
                )
            })?;
            let runtime = GoRuntime::open(self.pid, self.target.binary.clone(), bias)
                .map_err(|e| format!("cannot open /proc/{}/mem: {e}", self.pid))?;
            self.runtime = Some(runtime);
        }
        self.runtime
            .as_mut()
            .ok_or_else(|| "the runtime was not opened".to_string())
    }

    pub fn runtime(&mut self) -> Option<&mut GoRuntime> {
        self.open_runtime().ok()
    }

    /// GCs completed so far, when the runtime can be read.
    pub fn gc_count(&mut self) -> Option<u32> {
        self.runtime()
            .and_then(|r| r.heap().ok())
            .map(|h| h.gc_count)
    }

    /// Every goroutine in the runtime's list.
    pub fn goroutines(&mut self) -> Result<Vec<GoroutineInfo>, String> {
        self.open_runtime()?.goroutines().map_err(|e| e.to_string())
    }

    /// Whether a goroutine's function (its start PC in the process) belongs
    /// to the runtime itself (GC workers, finalizers, and the main
    /// goroutine, which lives as long as the program): never a leak.
    pub fn is_system(&mut self, startpc: u64) -> bool {
        let vaddr = startpc.wrapping_sub(self.bias());
        self.target
            .binary
            .symbolize(vaddr)
            .last()
            .is_some_and(|f| f.function.starts_with("runtime."))
    }

    /// The function a goroutine runs, from its start PC in the process; a
    /// compiler wrapper for `go f(args)` is seen through to `f`.
    pub fn start_function(&mut self, startpc: u64) -> Option<String> {
        let vaddr = startpc.wrapping_sub(self.bias());
        if let Some(name) = self.start_names.get(&vaddr) {
            return name.clone();
        }
        let bin = &self.target.binary;
        let name = bin.symbolize(vaddr).pop().map(|f| f.function);
        let resolved = name.map(|n| {
            if !bin.is_go_statement_wrapper(&n) {
                return n;
            }
            let code = bin.function(&n).and_then(|(entry, end)| {
                let off = bin.vaddr_to_file_offset(entry)?;
                let mut code = vec![0u8; end.checked_sub(entry)? as usize];
                self.exe.as_ref()?.read_exact_at(&mut code, off).ok()?;
                Some((code, entry))
            });
            code.and_then(|(code, entry)| bin.wrapped_function(&code, entry))
                .unwrap_or(n)
        });
        self.start_names.insert(vaddr, resolved.clone());
        resolved
    }

    /// The process's OS threads and resident set, for MemStats.
    pub fn threads_and_rss(&self) -> (u64, u64) {
        let pid = self.pid;
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        (threads, rss)
    }
}

/// The load bias from the executable's mapping in /proc/PID/maps.
fn load_bias(pid: u32, target: &GoTarget) -> Option<u64> {
    let maps = procfs::read_maps(pid).ok()?;
    maps.iter()
        .filter(|m| m.inode == target.inode && m.path.is_some())
        .find_map(|m| {
            let vaddr = target.binary.file_offset_to_vaddr(m.file_offset)?;
            Some(m.start.wrapping_sub(vaddr))
        })
}
