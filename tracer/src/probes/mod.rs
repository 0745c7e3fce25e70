//! leaktrace's eBPF programs in the kernel: loading them ([`Probes::load`]),
//! attaching them to the target (`attach`) at the points
//! [`crate::placement`] chose, the tables they fill ([`maps`]), and removing
//! them all again ([`Probes::detach`]).

mod attach;
mod btf;
mod error;
mod kmem;
pub mod maps;
mod multi_link;
mod seccomp_check;
mod stops;
pub mod table;

pub use btf::Btf;
pub use error::ProbeError;
pub use kmem::KmemMaps;
pub use maps::{HeapMaps, MapSizes, Maps, TaskMaps};
pub use seccomp_check::has_seccomp_filter;
pub use stops::{resume_all_in, ExitHold, LoaderWatch};

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{raw_trace_point::RawTracePointLinkId, RawTracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use tracer_common::TaskConfig;

use crate::{golang, process::allocator::ProbeFn};
use attach::Link;
use error::error_chain;

/// The eBPF object built by build.rs from `tracer-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";

/// Loaded programs and the links that attach them. Dropping this removes
/// every probe, in a safe order.
pub struct Probes {
    ebpf: Ebpf,
    entry_links: Vec<Link>,
    return_links: Vec<Link>,
    tracepoint_links: Vec<(&'static str, RawTracePointLinkId)>,
    mode: ProbeMode,
    go: bool,
    load_times: Vec<ProgramLoad>,
    /// Written into `TASK_CONFIG` once the task tracepoints are attached.
    task_config: Option<TaskConfig>,
    /// `TRACED`: which processes probes serving every process record.
    traced: aya::maps::HashMap<MapData, u32, u32>,
    /// `STOPPED`: processes the kernel stopped for us (see [`stops`]).
    stopped: aya::maps::HashMap<MapData, u32, u32>,
}

/// What the probes do: leaktrace's work, or nothing (`cargo xtask bench`
/// measures the cost of the traps alone with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeMode {
    Full,
    Empty,
}

/// Whom a probe serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One process (its pid): the kernel runs the program in it alone.
    Process(u32),
    /// Every traced process that maps the object, one link for all of
    /// them: the program checks `TRACED` first. For a container's own
    /// files, which only its processes map, so that a process it starts is
    /// traced from its first instruction.
    Shared,
}

/// One program's load: how long it took, and how many instructions the
/// kernel's verifier went through (what the time is spent on).
#[derive(Debug, Clone, Copy)]
pub struct ProgramLoad {
    pub name: &'static str,
    pub took: Duration,
    pub verified_insns: Option<u32>,
}

const TASK_TRACEPOINTS: [(&str, &str); 4] = [
    ("task_fork", "sched_process_fork"),
    ("task_exit", "sched_process_exit"),
    ("task_exec", "sched_process_exec"),
    ("oom_victim", "mark_victim"),
];

/// Checks the kernel can run what leaktrace needs, before touching anything.
pub fn check_kernel_support() -> Result<(), ProbeError> {
    check_uprobe_pmu(Path::new(UPROBE_PMU))
}

fn check_uprobe_pmu(pmu: &Path) -> Result<(), ProbeError> {
    if pmu.exists() {
        Ok(())
    } else {
        Err(ProbeError::NoUprobes)
    }
}

/// One entry program serves every allocation function: the attach cookie
/// says which (and so where its arguments are).
fn entry_program(f: ProbeFn) -> &'static str {
    match f {
        ProbeFn::Free => "free_entry",
        ProbeFn::Alloc(_) => "alloc_entry",
    }
}

/// The stack walk and store, tail-called in turn by every program that
/// records a stack (see `tracer-ebpf/src/walker.rs`): each verified once
/// per load. Their index in `WALKERS` is their place here.
const STACK_WALKERS: [&str; 2] = ["stack_walk", "stack_store"];

impl Probes {
    /// Loads the programs; `go`: also those for a Go target's runtime.
    pub fn load(
        sizes: MapSizes,
        mode: ProbeMode,
        go: bool,
        processes: bool,
    ) -> Result<Self, ProbeError> {
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        // Tests only: fewer in-flight slots, so that threads share them.
        let inflight_mask = std::env::var("LEAKTRACE_TEST_INFLIGHT_SLOTS")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| n.is_power_of_two())
            .map(|n| n - 1);
        if let Some(mask) = &inflight_mask {
            loader.override_global("INFLIGHT_MASK", mask, true);
        }
        let ebpf = loader
            .map_max_entries("ALLOCS", sizes.allocs.max(1))
            .map_max_entries("SITES", sizes.sites.max(1))
            .map_max_entries("STACKS", sizes.stacks.max(1))
            .map_max_entries("PENDING", sizes.threads.max(1))
            .map_max_entries("SPAWN_PENDING", sizes.threads.max(1))
            .map_max_entries("TASKS", sizes.tasks.max(1))
            .map_max_entries("GOROUTINES", if go { sizes.goroutines.max(1) } else { 1 })
            .map_max_entries("UNWIND_ROWS", sizes.unwind_rows.max(1))
            .map_max_entries("TRACED", sizes.processes.max(1))
            .map_max_entries("OOM_KILLED", sizes.processes.max(1))
            .map_max_entries("KMEM_BLOCKS", sizes.kmem_blocks.max(1))
            .map_max_entries("KMEM_STACKS", sizes.kmem_stacks.max(1))
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        let mut ebpf = ebpf;
        let traced = ebpf
            .take_map("TRACED")
            .ok_or(ProbeError::Missing("TRACED"))?
            .try_into()
            .map_err(|_| ProbeError::Missing("TRACED"))?;
        let stopped = ebpf
            .take_map("STOPPED")
            .ok_or(ProbeError::Missing("STOPPED"))?
            .try_into()
            .map_err(|_| ProbeError::Missing("STOPPED"))?;
        let mut probes = Self {
            ebpf,
            entry_links: Vec::new(),
            return_links: Vec::new(),
            tracepoint_links: Vec::new(),
            mode,
            go,
            load_times: Vec::new(),
            task_config: None,
            traced,
            stopped,
        };
        let mut names: Vec<&'static str> = match mode {
            // No process to trace (`--kernel` alone): none of the
            // programs for processes is verified.
            _ if !processes => Vec::new(),
            ProbeMode::Full => vec![
                STACK_WALKERS[0],
                STACK_WALKERS[1],
                "alloc_entry",
                "alloc_return",
                "free_entry",
                "spawn_entry",
                "loader_ready",
            ],
            ProbeMode::Empty => vec!["empty_entry", "empty_return"],
        };
        if probes.go && mode == ProbeMode::Full {
            names.extend(golang::PROBE_PROGRAMS);
        }
        for name in names {
            let started = Instant::now();
            let prog = probes.program(name)?;
            prog.load_for_uprobe_multi()
                .map_err(|e| ProbeError::Load(error_chain(&e)))?;
            let insns = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            probes.load_times.push(ProgramLoad {
                name,
                took: started.elapsed(),
                verified_insns: insns,
            });
        }
        if mode == ProbeMode::Full && processes {
            for (name, _) in TASK_TRACEPOINTS {
                probes.load_tracepoint(name)?;
            }
            probes.install_stack_walk()?;
        }
        Ok(probes)
    }

    /// Puts the loaded stack walk where the probes tail-call it.
    fn install_stack_walk(&mut self) -> Result<(), ProbeError> {
        for (index, name) in STACK_WALKERS.into_iter().enumerate() {
            let fd = self
                .program(name)?
                .fd()
                .map_err(|e| ProbeError::Load(error_chain(&e)))?
                .try_clone()
                .map_err(|e| ProbeError::Load(e.to_string()))?;
            let mut walkers: ProgramArray<&mut MapData> = self
                .ebpf
                .map_mut("WALKERS")
                .ok_or(ProbeError::Missing("WALKERS"))?
                .try_into()
                .map_err(|_| ProbeError::Missing("WALKERS"))?;
            walkers
                .set(index as u32, &fd, 0)
                .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        }
        Ok(())
    }

    /// How long each program took to load (mostly the kernel's verifier).
    pub fn load_times(&self) -> &[ProgramLoad] {
        &self.load_times
    }

    /// Writes the one element of a configuration array map.
    fn set_config<T: aya::Pod>(&mut self, map: &'static str, value: T) -> Result<(), ProbeError> {
        let mut config: Array<&mut MapData, T> = self
            .ebpf
            .map_mut(map)
            .ok_or(ProbeError::Missing(map))?
            .try_into()
            .map_err(|_| ProbeError::Missing(map))?;
        config
            .set(0, value, 0)
            .map_err(|e| ProbeError::Load(error_chain(&e)))
    }

    /// Loads (the kernel verifies) tracepoint program `name`, timed.
    fn load_tracepoint(&mut self, name: &'static str) -> Result<(), ProbeError> {
        let started = Instant::now();
        let prog = self.tracepoint(name)?;
        prog.load().map_err(|e| ProbeError::Load(error_chain(&e)))?;
        let insns = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count());
        self.load_times.push(ProgramLoad {
            name,
            took: started.elapsed(),
            verified_insns: insns,
        });
        Ok(())
    }

    /// Attaches loaded program `name` to `tracepoint`, until drop.
    fn attach_tracepoint(
        &mut self,
        name: &'static str,
        tracepoint: &'static str,
    ) -> Result<(), ProbeError> {
        let id = self
            .tracepoint(name)?
            .attach(tracepoint)
            .map_err(|e| ProbeError::Tracepoint {
                tracepoint,
                reason: error_chain(&e),
            })?;
        self.tracepoint_links.push((name, id));
        Ok(())
    }

    fn tracepoint(&mut self, name: &'static str) -> Result<&mut RawTracePoint, ProbeError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
            .ok_or(ProbeError::Missing(name))
    }

    fn program(&mut self, name: &'static str) -> Result<&mut UProbe, ProbeError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut UProbe>::try_from(p).ok())
            .ok_or(ProbeError::Missing(name))
    }

    /// Removes every probe (what dropping does too; see [`Drop`]).
    pub fn detach(self) {
        drop(self);
    }

    /// Process `pid` is traced (for probes serving every process; with
    /// `TRACE_CHILDREN`, the children it forks from now on too).
    pub fn trace(&mut self, pid: u32, flags: u32) -> Result<(), ProbeError> {
        self.traced
            .insert(pid, flags, 0)
            .map_err(|e| ProbeError::Load(error_chain(&e)))
    }

    /// Process `pid` is no longer traced: it exited, or leaktrace let go of
    /// it. Its probes of its own are removed.
    pub fn untrace(&mut self, pid: u32) {
        let _ = self.traced.remove(&pid);
        self.detach_process(pid);
        self.resume(pid);
    }

    /// Probes attached: every uprobe point, and the tracepoints.
    pub fn probe_count(&self) -> usize {
        let points: usize = self
            .entry_links
            .iter()
            .chain(&self.return_links)
            .map(|l| l.probes)
            .sum();
        points + self.tracepoint_links.len()
    }
}

impl Drop for Probes {
    /// Removes every probe: entries first, so that no new call starts being
    /// traced while its return probe is already gone.
    ///
    /// Removing a link waits for the kernel's RCU grace periods (about
    /// 85 ms here, for each): the links of each kind are closed all at
    /// once, on threads of their own.
    fn drop(&mut self) {
        drop_all_at_once(std::mem::take(&mut self.entry_links));
        drop_all_at_once(std::mem::take(&mut self.return_links));
        for (name, id) in std::mem::take(&mut self.tracepoint_links) {
            if let Ok(p) = self.tracepoint(name) {
                let _ = p.detach(id);
            }
        }
        // No exec stops any more: what is still stopped goes on.
        self.resume_all();
        // `self.ebpf`, dropped next, unloads the programs and closes the maps.
    }
}

/// Drops `items` on threads of their own (at most [`DETACH_THREADS`]), and
/// returns once all are dropped.
fn drop_all_at_once<T: Send>(items: Vec<T>) {
    if items.len() <= 1 {
        return;
    }
    let per_thread = items.len().div_ceil(DETACH_THREADS);
    let mut items = items;
    std::thread::scope(|scope| {
        while !items.is_empty() {
            let batch: Vec<T> = items.drain(..per_thread.min(items.len())).collect();
            // A thread that cannot start drops its batch here instead.
            if std::thread::Builder::new()
                .name("detach".into())
                .spawn_scoped(scope, move || drop(batch))
                .is_err()
            {
                continue;
            }
        }
    });
}

/// Threads closing links at once: each close waits for grace periods,
/// which concurrent closes share.
const DETACH_THREADS: usize = 64;

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Raising it can
/// fail without CAP_SYS_RESOURCE; that is harmless on newer kernels, where
/// the memory is charged to the cgroup, so the result is ignored.
fn raise_memlock_limit() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

#[cfg(test)]
mod tests {
    use tracer_common::AllocKind;

    use super::*;

    #[test]
    fn missing_uprobe_support_is_a_clear_error() {
        let err = check_uprobe_pmu(Path::new("/nonexistent/uprobe/type")).expect_err("no PMU");
        assert_eq!(
            err.to_string(),
            "this kernel has no uprobe support (no /sys/bus/event_source/devices/uprobe/type; needs CONFIG_UPROBE_EVENTS)"
        );
        // This machine's kernel has them (the end-to-end tests rely on it).
        assert!(check_kernel_support().is_ok());
    }

    #[test]
    fn every_alloc_kind_has_an_entry_program() {
        for kind in AllocKind::ALL {
            assert_eq!(entry_program(ProbeFn::Alloc(kind)), "alloc_entry");
        }
        assert_eq!(entry_program(ProbeFn::Free), "free_entry");
    }
}
