//! One loaded set of programs and tables for the whole run, serving every
//! traced process: loading and verifying happens once ([`Tracer::load`]);
//! adding a process ([`Tracer::attach`]) costs attach calls, a `TRACED`
//! entry and its unwind slots; letting one go ([`Tracer::release`]) removes
//! what was its own.

use std::{path::Path, time::Instant};

use anyhow::Context;

use super::stop;
use crate::{
    cli::{Cli, ProbeMode, UnwindMode},
    collect::Collector,
    golang::{self, GoTarget},
    kernel::KernelMemory,
    probes::{self, maps::GoroutineTable, MapSizes, Probes, Scope},
    process::{
        allocator::{find_allocator, Allocator, AllocatorError, Candidate},
        launch,
    },
    unwind::{UnwindSummary, UnwindTables},
};

/// What every traced process's reports read.
pub struct Shared {
    pub tasks: std::rc::Rc<probes::TaskMaps>,
    pub stacks: std::rc::Rc<crate::collect::stacks::StackTable>,
    pub goroutines: Option<std::rc::Rc<GoroutineTable>>,
}

/// The run's programs, tables and heap collector.
pub struct Tracer {
    pub probes: Probes,
    pub shared: Shared,
    pub collector: Collector,
    pub unwind: Option<UnwindTables>,
    pub events: aya::maps::RingBuf<aya::maps::MapData>,
    /// `--kernel`: the kernel-memory tables, read by every report.
    pub kernel: Option<std::rc::Rc<std::cell::RefCell<KernelMemory>>>,
}

/// A process checked and ready to attach to.
pub struct Plan {
    pub pid: u32,
    pub comm: String,
    /// A command leaktrace started and holds before its exec.
    pub paused: Option<launch::Paused>,
    pub candidates: Vec<Candidate>,
    pub allocator: Allocator,
    pub go: Option<GoTarget>,
    pub memprofile: Option<golang::runtime::memprofile::Switch>,
}

impl Plan {
    /// Checks what attaching to `pid` needs, before anything is loaded.
    pub fn new(
        cli: &Cli,
        pid: u32,
        comm: String,
        paused: Option<launch::Paused>,
        candidates: Vec<Candidate>,
        go: Option<GoTarget>,
    ) -> anyhow::Result<Plan> {
        let allocator = allocator_of(&candidates, go.is_some())?;
        let memprofile = match (&go, cli.go_memprofile) {
            (Some(go), true) => Some(golang::runtime::memprofile::Switch::check(
                go,
                cli.go_memprofile_rate,
            )?),
            (None, true) => {
                anyhow::bail!("--go-memprofile: pid {pid} ({comm}) is not a Go program")
            }
            (_, false) => None,
        };
        Ok(Plan {
            pid,
            comm,
            paused,
            candidates,
            allocator,
            go,
            memprofile,
        })
    }

    /// The running process `pid`, inspected.
    pub fn of_process(cli: &Cli, pid: u32) -> anyhow::Result<Plan> {
        let proc_ = crate::process::inspect(pid)?;
        // Said before anything is attached: a scan could never stop it.
        // (In a container it is traced still, its scans incomplete.)
        let in_containers = cli.container.is_some() || cli.pod.is_some() || cli.all_containers;
        if cli.reachability && !in_containers && crate::reach::freeze::traced_by_another(pid) {
            return Err(crate::reach::freeze::FreezeError::AlreadyTraced(pid).into());
        }
        let candidates = crate::process::mapped_objects(pid)?;
        let go = golang::of_process(pid)?;
        Plan::new(cli, pid, proc_.comm, None, candidates, go)
    }
}

/// The allocator to probe among `candidates`: a pure Go program has none,
/// a cgo one has the C library's.
pub(super) fn allocator_of(candidates: &[Candidate], is_go: bool) -> anyhow::Result<Allocator> {
    match find_allocator(candidates) {
        Ok(a) => Ok(a),
        Err(AllocatorError::NotFound) if is_go => Ok(Allocator::none()),
        Err(e) => Err(e.into()),
    }
}

impl Tracer {
    /// Loads (and so has the kernel verify) every program, once for the
    /// run; `go`: also the Go runtime's.
    pub fn load(cli: &Cli, go: bool) -> anyhow::Result<Tracer> {
        let sizes = MapSizes {
            allocs: cli.max_allocs,
            sites: cli.max_sites,
            stacks: cli.max_stacks,
            threads: cli.max_threads,
            tasks: cli.max_tasks,
            goroutines: cli.max_goroutines,
            unwind_rows: cli.max_unwind_rows,
            processes: cli.max_processes,
            kmem_blocks: if cli.kernel { cli.max_kernel_blocks } else { 1 },
            kmem_stacks: if cli.kernel { cli.max_kernel_stacks } else { 1 },
        };
        let loading = Instant::now();
        stop::test_hold("load");
        // `--kernel` alone traces no process: only its programs load.
        let processes = !whole_kernel(cli);
        let mut probes = Probes::load(sizes, cli.probe_mode, go, processes)?;
        let unwind =
            if !processes || cli.unwind == UnwindMode::Fp || cli.probe_mode != ProbeMode::Full {
                None
            } else {
                let maps = probes.take_unwind_maps()?;
                Some(
                    UnwindTables::new(cli.unwind, maps, cli.max_unwind_rows)
                        .context("cannot set up the unwind tables")?,
                )
            };
        let kernel = match cli.kernel {
            true => Some(std::rc::Rc::new(std::cell::RefCell::new(kernel_memory(
                cli,
                &mut probes,
            )?))),
            false => None,
        };
        if cli.verbose {
            let each: Vec<String> = probes
                .load_times()
                .iter()
                .map(|p| {
                    let insns = p
                        .verified_insns
                        .map(|n| format!(", {n} insns verified"))
                        .unwrap_or_default();
                    format!("{} {:.1} ms{insns}", p.name, p.took.as_secs_f64() * 1e3)
                })
                .collect();
            eprintln!(
                "leaktrace: eBPF programs loaded in {:.1} ms: {}",
                loading.elapsed().as_secs_f64() * 1e3,
                each.join(", ")
            );
        }
        let maps = probes.take_maps()?;
        let collector = Collector::new(maps.heap, cli.older_than, Instant::now())
            .context("cannot initialise the eBPF maps")?;
        Ok(Tracer {
            probes,
            shared: Shared {
                tasks: maps.tasks,
                stacks: maps.stacks,
                goroutines: maps.goroutines,
            },
            collector,
            unwind,
            events: maps.events,
            kernel,
        })
    }

    /// Attaches to the process `plan` names, for `scope`, traced with
    /// `flags` (`TRACE_CHILDREN`: its children from their fork on).
    /// Unwind tables go in before the probes, so the first stacks recorded
    /// are walked whole. A signal during the attach removes what this
    /// attached and ends with [`stop::Interrupted`]; so does a failure
    /// (and the caller lets go of the process, or not).
    pub fn attach(
        &mut self,
        cli: &Cli,
        plan: &Plan,
        scope: Scope,
        flags: u32,
    ) -> anyhow::Result<()> {
        let pid = plan.pid;
        if let Some(tables) = self.unwind.as_mut() {
            if plan.paused.is_some() {
                // A command held before its exec still maps leaktrace's own
                // objects: its tables are built once it runs, from rows
                // parsed now, never from mappings about to be replaced.
                let paths: Vec<&Path> = plan.candidates.iter().map(|c| c.path.as_path()).collect();
                tables.preload(&paths);
            } else {
                stop::test_hold("unwind");
                tables
                    .refresh(pid)
                    .context("cannot build the unwind tables")?;
                if cli.verbose || scope != Scope::Shared {
                    eprintln!("leaktrace: {}", describe_unwind(&tables.summary(pid)));
                }
            }
        }
        // A target under seccomp may be killed by return probes on some
        // kernels: find out on a throwaway process first. (A launched
        // command has no filter yet; one it installs later is not checked.)
        if plan.paused.is_none()
            && probes::has_seccomp_filter(pid)
            && !self.probes.uretprobe_survives_seccomp()?
        {
            return Err(probes::ProbeError::ReturnProbesUnsafe(pid).into());
        }
        // From here on a signal is acted on by this code (what is attached
        // must be removed), between the steps.
        stop::attaching();
        let attached = (|| -> anyhow::Result<()> {
            stop::check()?;
            self.probes.trace(pid, flags)?;
            self.probes.attach(&plan.allocator, scope)?;
            stop::test_hold("attach");
            stop::check()?;
            self.probes.attach_tasks(&plan.allocator, scope)?;
            stop::check()?;
            if let Some(go) = &plan.go {
                self.probes.attach_go(go, scope)?;
                stop::check()?;
            }
            Ok(())
        })();
        if attached.is_err() {
            // What this attached for it alone goes; what the kernel
            // recorded of it stays for the caller to report or let go.
            self.probes.detach_process(pid);
        }
        attached
    }

    /// Lets go of process `pid` (gone, and reported on): its probes of its
    /// own, its `TRACED` entry, its unwind slots and its heap figures.
    pub fn release(&mut self, pid: u32) {
        self.probes.untrace(pid);
        if let Some(tables) = self.unwind.as_mut() {
            tables.forget(pid);
        }
        let _ = self.collector.forget_process(pid);
    }
}

/// `--kernel`'s programs attached: for the whole kernel when there is no
/// target, else for the traced processes.
fn kernel_memory(cli: &Cli, probes: &mut Probes) -> anyhow::Result<KernelMemory> {
    let whole = whole_kernel(cli);
    let filter = match whole {
        true => tracer_common::KMEM_ALL,
        false => tracer_common::KMEM_TRACED,
    };
    let maps = probes
        .attach_kernel_memory(filter)
        .context("cannot attach the kernel-memory tracepoints")?;
    Ok(KernelMemory::new(maps, whole)?)
}

/// `--kernel` with nothing else to trace: the whole kernel's memory.
pub fn whole_kernel(cli: &Cli) -> bool {
    cli.kernel
        && cli.pid.is_none()
        && cli.command.is_empty()
        && cli.container.is_none()
        && cli.pod.is_none()
        && !cli.all_containers
}

/// The start banner's line on unwind tables.
pub(super) fn describe_unwind(s: &UnwindSummary) -> String {
    let mut line = format!(
        "unwind tables: {} objects, {} rows, {} rules ({:.1} KiB in the kernel)",
        s.objects,
        s.rows,
        s.rules,
        s.bytes as f64 / 1024.0
    );
    if !s.frame_pointer_objects.is_empty() {
        line += &format!(
            "; by frame pointers (Go): {}",
            s.frame_pointer_objects.join(", ")
        );
    }
    if !s.without_tables.is_empty() {
        line += &format!(
            "; no unwind information (stacks end there): {}",
            s.without_tables.join(", ")
        );
    }
    if !s.no_room.is_empty() {
        line += &format!(
            "; not loaded, --max-unwind-rows too small: {}",
            s.no_room.join(", ")
        );
    }
    if s.mappings_dropped > 0 {
        line += &format!(
            "; {} executable mappings beyond the table's room",
            s.mappings_dropped
        );
    }
    line
}
