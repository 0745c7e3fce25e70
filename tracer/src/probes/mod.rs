//! Loading leaktrace's eBPF object and attaching its probes to the target.

mod btf;
mod seccomp_check;

pub use seccomp_check::has_seccomp_filter;

use std::{num::NonZeroU32, path::Path};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        raw_trace_point::RawTracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        ProbeKind, RawTracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    cookie, AllocKind, Config, GoConfig, GoroutineRecord, InFlight, Pending, PendingKey, SiteKey,
    SiteTotals, SpawnPending, TaskConfig, TaskRecord,
};

use crate::{
    cli::ProbeMode,
    stacks::StackTable,
    target::{executable::is_go_binary, Allocator, GoTarget, ProbeFn, ProbedObject},
};

/// The eBPF object built by build.rs from `tracer-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this kernel has no uprobe support (no {UPROBE_PMU}; needs CONFIG_UPROBE_EVENTS)")]
    NoUprobes,
    #[error("cannot load eBPF programs into this kernel: {0} (needs CONFIG_BPF_SYSCALL, kernel 5.15 or newer)")]
    Load(String),
    #[error("cannot attach a probe to {function} in {library}: {reason}")]
    Attach {
        function: &'static str,
        library: String,
        reason: String,
    },
    #[error("eBPF object lacks {0} (build mismatch)")]
    Missing(&'static str),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(
        "refusing to attach: PID {0} runs under a seccomp filter and on this kernel return probes \
         would kill it (uretprobe syscall not let through by seccomp; fixed in newer kernels)"
    )]
    ReturnProbesUnsafe(u32),
    #[error(
        "refusing a return probe on {0}: it is Go code, and Go moves goroutine stacks, so a \
         hijacked return address would crash the program"
    )]
    ReturnProbeOnGo(String),
    #[error("cannot read {0} to check it before attaching return probes: {1}")]
    Unreadable(String, std::io::Error),
    #[error("cannot attach to the {tracepoint} tracepoint: {reason}")]
    Tracepoint {
        tracepoint: &'static str,
        reason: String,
    },
}

/// Capacities of the kernel-side tables.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub allocs: u32,
    pub sites: u32,
    pub stacks: u32,
    pub threads: u32,
    pub tasks: u32,
    pub goroutines: u32,
}

/// The maps userspace reads while tracing.
pub struct Maps {
    pub heap: HeapMaps,
    pub tasks: TaskMaps,
    pub stacks: StackTable,
    /// Present when the target is a Go program.
    pub goroutines: Option<HashMap<MapData, u64, GoroutineRecord>>,
}

/// Heap tables.
pub struct HeapMaps {
    pub sites: HashMap<MapData, SiteKey, SiteTotals>,
    pub config: Array<MapData, Config>,
    pub counters: PerCpuArray<MapData, u64>,
    pub pending: HashMap<MapData, PendingKey, Pending>,
    pub inflight: HashMap<MapData, u32, InFlight>,
}

/// Thread and child-process tables.
pub struct TaskMaps {
    pub tasks: HashMap<MapData, u32, TaskRecord>,
    pub spawn_pending: HashMap<MapData, u32, SpawnPending>,
}

struct Link {
    program: &'static str,
    id: UProbeLinkId,
}

/// Loaded programs and the links that attach them. Dropping this detaches
/// everything too; [`Probes::detach`] does it in a safe order.
pub struct Probes {
    ebpf: Ebpf,
    entry_links: Vec<Link>,
    return_links: Vec<Link>,
    tracepoint_links: Vec<(&'static str, RawTracePointLinkId)>,
    mode: ProbeMode,
    go: bool,
}

/// An object proven not to be Go code: the only kind of object a return
/// probe can be attached to (see [`Probes::attach_return`]).
struct NotGo<'a>(&'a ProbedObject);

impl<'a> NotGo<'a> {
    fn check(object: &'a ProbedObject) -> Result<Self, ProbeError> {
        let data = std::fs::read(&object.path)
            .map_err(|e| ProbeError::Unreadable(object.display.clone(), e))?;
        if is_go_binary(&data) {
            return Err(ProbeError::ReturnProbeOnGo(object.display.clone()));
        }
        Ok(NotGo(object))
    }
}

const TASK_TRACEPOINTS: [(&str, &str); 2] = [
    ("task_fork", "sched_process_fork"),
    ("task_exit", "sched_process_exit"),
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

fn entry_program(f: ProbeFn) -> &'static str {
    match f {
        ProbeFn::Free => "free_entry",
        ProbeFn::Alloc(k) => match k {
            AllocKind::Malloc
            | AllocKind::Valloc
            | AllocKind::Pvalloc
            | AllocKind::OperatorNew
            | AllocKind::Mallocx
            | AllocKind::MallocAligned => "alloc_entry_size0",
            AllocKind::AlignedAlloc | AllocKind::Memalign => "alloc_entry_size1",
            AllocKind::Calloc => "alloc_entry_calloc",
            AllocKind::Realloc | AllocKind::Rallocx | AllocKind::ReallocAligned => {
                "alloc_entry_realloc"
            }
            AllocKind::Reallocarray => "alloc_entry_reallocarray",
            AllocKind::PosixMemalign => "alloc_entry_posix_memalign",
        },
    }
}

impl Probes {
    /// Loads the programs; `go`: also those for a Go target's runtime.
    pub fn load(sizes: MapSizes, mode: ProbeMode, go: bool) -> Result<Self, ProbeError> {
        raise_memlock_limit();
        let ebpf = EbpfLoader::new()
            .map_max_entries("ALLOCS", sizes.allocs.max(1))
            .map_max_entries("SITES", sizes.sites.max(1))
            .map_max_entries("STACKS", sizes.stacks.max(1))
            .map_max_entries("PENDING", sizes.threads.max(1))
            .map_max_entries("INFLIGHT", sizes.threads.max(1))
            .map_max_entries("SPAWN_PENDING", sizes.threads.max(1))
            .map_max_entries("TASKS", sizes.tasks.max(1))
            .map_max_entries("GOROUTINES", if go { sizes.goroutines.max(1) } else { 1 })
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        let mut probes = Self {
            ebpf,
            entry_links: Vec::new(),
            return_links: Vec::new(),
            tracepoint_links: Vec::new(),
            mode,
            go: go && mode == ProbeMode::Full,
        };
        let mut names: Vec<&'static str> = match mode {
            ProbeMode::Full => vec![
                "alloc_entry_size0",
                "alloc_entry_size1",
                "alloc_entry_calloc",
                "alloc_entry_realloc",
                "alloc_entry_reallocarray",
                "alloc_entry_posix_memalign",
                "alloc_return",
                "free_entry",
                "spawn_entry",
            ],
            ProbeMode::Empty => vec!["empty_entry", "empty_return"],
        };
        if probes.go {
            names.extend(["go_newproc1_return", "go_goroutine_exit"]);
        }
        for name in names {
            probes
                .program(name)?
                .load()
                .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        }
        if mode == ProbeMode::Full {
            for (name, _) in TASK_TRACEPOINTS {
                probes
                    .tracepoint(name)?
                    .load()
                    .map_err(|e| ProbeError::Load(error_chain(&e)))?;
            }
        }
        Ok(probes)
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

    fn tracepoint(&mut self, name: &'static str) -> Result<&mut RawTracePoint, ProbeError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
            .ok_or(ProbeError::Missing(name))
    }

    /// Starts tracking the threads and child processes `pid` creates: the
    /// spawn functions of its C library and the kernel's fork and exit
    /// tracepoints (which see every task; the programs filter by process).
    pub fn attach_tasks(&mut self, alloc: &Allocator, pid: u32) -> Result<(), ProbeError> {
        if self.mode != ProbeMode::Full {
            return Ok(());
        }
        let (pid_offset, tgid_offset) = btf::task_pid_offsets()?;
        let cfg = TaskConfig {
            target_tgid: pid,
            pid_offset,
            tgid_offset,
        };
        self.set_config("TASK_CONFIG", cfg)?;
        let scope = one_process(pid)?;
        // Exit first: a task created once fork is watched always has its
        // exit seen.
        for (name, tracepoint) in TASK_TRACEPOINTS.iter().rev() {
            let id =
                self.tracepoint(name)?
                    .attach(tracepoint)
                    .map_err(|e| ProbeError::Tracepoint {
                        tracepoint,
                        reason: error_chain(&e),
                    })?;
            self.tracepoint_links.push((name, id));
        }
        if let Some(object) = alloc.objects.first() {
            for &(function, offset) in &object.spawns {
                self.attach_entry(
                    "spawn_entry",
                    function,
                    &object.display,
                    &object.path,
                    offset,
                    0,
                    scope,
                )?;
            }
        }
        Ok(())
    }

    fn program(&mut self, name: &'static str) -> Result<&mut UProbe, ProbeError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut UProbe>::try_from(p).ok())
            .ok_or(ProbeError::Missing(name))
    }

    /// Attaches to every probe site of `alloc`, only for process `pid`.
    ///
    /// Return probes go in first: once an entry probe can fire, the return
    /// probe of the same call is guaranteed to fire as well, so no entry
    /// state is ever left behind by the attach itself.
    pub fn attach(&mut self, alloc: &Allocator, pid: u32) -> Result<(), ProbeError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(ProbeError::Attach {
            function: "malloc",
            library: alloc.display().to_string(),
            reason: "PID 0".into(),
        })?);
        let (entry_of, return_prog) = match self.mode {
            ProbeMode::Full => (entry_program as fn(ProbeFn) -> &'static str, "alloc_return"),
            ProbeMode::Empty => (
                (|_| "empty_entry") as fn(ProbeFn) -> &'static str,
                "empty_return",
            ),
        };
        for object in &alloc.objects {
            let native = NotGo::check(object)?;
            for site in &object.sites {
                if let ProbeFn::Alloc(kind) = site.func {
                    let id = self.attach_return(
                        return_prog,
                        kind.name(),
                        &native,
                        site.offset,
                        cookie(kind, 0),
                        scope,
                    )?;
                    self.return_links.push(Link {
                        program: return_prog,
                        id,
                    });
                }
            }
        }
        for object in &alloc.objects {
            for site in &object.sites {
                let (name, c) = match site.func {
                    ProbeFn::Alloc(kind) => (kind.name(), cookie(kind, 0)),
                    ProbeFn::Free => ("free", 0),
                };
                let prog = entry_of(site.func);
                self.attach_entry(
                    prog,
                    name,
                    &object.display,
                    &object.path,
                    site.offset,
                    c,
                    scope,
                )?;
            }
        }
        Ok(())
    }

    /// Starts tracking a Go target's goroutines: exit probe first, so that
    /// every goroutine recorded has its exit seen, then one probe on each
    /// RET instruction of `runtime.newproc1` (plain uprobes, never return
    /// probes).
    pub fn attach_go(&mut self, go: &GoTarget, pid: u32) -> Result<(), ProbeError> {
        if !self.go {
            return Ok(());
        }
        let layout = go.binary.g;
        let cfg = GoConfig {
            goid_offset: layout.goid,
            gopc_offset: layout.gopc,
            startpc_offset: layout.startpc,
            parent_goid_offset: layout.parent_goid,
        };
        self.set_config("GO_CONFIG", cfg)?;
        let scope = one_process(pid)?;
        let (exit_fn, exit_offset) = go.binary.exit_probe;
        self.attach_entry(
            "go_goroutine_exit",
            exit_fn,
            &go.display,
            &go.path,
            exit_offset,
            0,
            scope,
        )?;
        for &offset in &go.binary.newproc1_returns {
            self.attach_entry(
                "go_newproc1_return",
                "runtime.newproc1 (RET)",
                &go.display,
                &go.path,
                offset,
                0,
                scope,
            )?;
        }
        Ok(())
    }

    /// Attaches an entry-kind program (a plain uprobe at `offset`) and
    /// keeps its link for detach.
    #[allow(clippy::too_many_arguments)]
    fn attach_entry(
        &mut self,
        program: &'static str,
        function: &'static str,
        display: &str,
        path: &Path,
        offset: u64,
        cookie: u64,
        scope: UProbeScope,
    ) -> Result<(), ProbeError> {
        let prog = self.program(program)?;
        if !matches!(prog.kind(), ProbeKind::Entry) {
            return Err(ProbeError::Missing("an entry program"));
        }
        let id = attach_uprobe(prog, function, display, path, offset, cookie, scope)?;
        self.entry_links.push(Link { program, id });
        Ok(())
    }

    /// Attaches a return probe: only ever on an object proven not to be Go.
    fn attach_return(
        &mut self,
        program: &'static str,
        function: &'static str,
        object: &NotGo<'_>,
        offset: u64,
        cookie: u64,
        scope: UProbeScope,
    ) -> Result<UProbeLinkId, ProbeError> {
        let prog = self.program(program)?;
        attach_uprobe(
            prog,
            function,
            &object.0.display,
            &object.0.path,
            offset,
            cookie,
            scope,
        )
    }

    /// Moves the maps userspace reads out of the loaded object.
    pub fn take_maps(&mut self) -> Result<Maps, ProbeError> {
        macro_rules! take {
            ($name:literal) => {
                self.ebpf
                    .take_map($name)
                    .ok_or(ProbeError::Missing($name))?
                    .try_into()
                    .map_err(|_| ProbeError::Missing($name))?
            };
        }
        Ok(Maps {
            heap: HeapMaps {
                sites: take!("SITES"),
                config: take!("CONFIG"),
                counters: take!("COUNTERS"),
                pending: take!("PENDING"),
                inflight: take!("INFLIGHT"),
            },
            tasks: TaskMaps {
                tasks: take!("TASKS"),
                spawn_pending: take!("SPAWN_PENDING"),
            },
            stacks: take!("STACKS"),
            goroutines: if self.go {
                Some(take!("GOROUTINES"))
            } else {
                None
            },
        })
    }

    /// Removes every probe: entries first, so that no new call starts being
    /// traced while its return probe is already gone.
    pub fn detach(mut self) {
        let entries = std::mem::take(&mut self.entry_links);
        let returns = std::mem::take(&mut self.return_links);
        for link in entries.into_iter().chain(returns) {
            if let Ok(p) = self.program(link.program) {
                // Errors here mean the link is already gone (target exited).
                let _ = p.detach(link.id);
            }
        }
        for (name, id) in std::mem::take(&mut self.tracepoint_links) {
            if let Ok(p) = self.tracepoint(name) {
                let _ = p.detach(id);
            }
        }
        // Dropping `self.ebpf` unloads the programs and closes the maps.
    }

    pub fn probe_count(&self) -> usize {
        self.entry_links.len() + self.return_links.len() + self.tracepoint_links.len()
    }
}

/// Probes fire only in the target process.
fn one_process(pid: u32) -> Result<UProbeScope, ProbeError> {
    NonZeroU32::new(pid)
        .map(UProbeScope::OneProcess)
        .ok_or(ProbeError::Missing("target pid"))
}

fn attach_uprobe(
    prog: &mut UProbe,
    function: &'static str,
    display: &str,
    path: &Path,
    offset: u64,
    cookie: u64,
    scope: UProbeScope,
) -> Result<UProbeLinkId, ProbeError> {
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(offset),
        cookie: Some(cookie),
    };
    prog.attach(point, path, scope)
        .map_err(|e| ProbeError::Attach {
            function,
            library: display.to_string(),
            reason: error_chain(&e),
        })
}

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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
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

    /// A minimal ELF object holding `section`.
    fn elf_with_section(section: &[u8]) -> Vec<u8> {
        use object::{write, Architecture, BinaryFormat, Endianness, SectionKind};
        let mut obj =
            write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let id = obj.add_section(Vec::new(), section.to_vec(), SectionKind::ReadOnlyData);
        obj.append_section_data(id, b"\xff Go buildinf:", 16);
        obj.write().expect("writes an ELF object")
    }

    #[test]
    fn return_probes_are_refused_on_go_code() {
        let dir = std::env::temp_dir().join(format!("leaktrace-notgo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let object = |name: &str, section: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, elf_with_section(section)).expect("write object");
            ProbedObject {
                display: name.to_string(),
                path,
                sites: Vec::new(),
                spawns: Vec::new(),
            }
        };
        let go = object("service", b".go.buildinfo");
        let err = NotGo::check(&go).err().expect("Go code refused");
        assert!(matches!(err, ProbeError::ReturnProbeOnGo(ref d) if d == "service"));
        let stripped_go = object("stripped", b".gopclntab");
        assert!(NotGo::check(&stripped_go).is_err());
        let c = object("libfoo.so", b".rodata");
        assert!(NotGo::check(&c).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_alloc_kind_has_an_entry_program() {
        for kind in AllocKind::ALL {
            assert!(entry_program(ProbeFn::Alloc(kind)).starts_with("alloc_entry_"));
        }
        assert_eq!(entry_program(ProbeFn::Free), "free_entry");
    }
}
