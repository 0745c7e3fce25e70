//! Attaching programs to the target: uprobes on its allocator and spawn
//! functions, the task tracepoints, and a Go target's goroutine probes.
//! Each program is attached to each probed object by one uprobe-multi link
//! ([`multi_link`]), kept so that [`Probes::detach`] can remove it.

use std::{os::fd::OwnedFd, path::Path};

use aya::programs::ProbeKind;
use tracer_common::{cookie, TaskConfig};

use super::{btf, entry_program, error_chain, multi_link, ProbeError, Probes, TASK_TRACEPOINTS};
use crate::{
    cli::ProbeMode,
    golang::{is_go_code, GoTarget},
    process::allocator::{Allocator, ProbeFn, ProbedObject},
};

/// An attached link: which program, at how many points, and the fd that
/// holds it in the kernel.
pub(super) struct Link {
    pub(super) probes: usize,
    /// Held for as long as the probes stay: closing it removes them.
    pub(super) _fd: OwnedFd,
}

/// An object proven not to be Go code: the only kind of object a return
/// probe can be attached to (see [`Probes::attach_returns`]).
struct NotGo<'a>(&'a ProbedObject);

impl<'a> NotGo<'a> {
    fn check(object: &'a ProbedObject) -> Result<Self, ProbeError> {
        let data = std::fs::read(&object.path)
            .map_err(|e| ProbeError::Unreadable(object.display.clone(), e))?;
        if is_go_code(&data) {
            return Err(ProbeError::ReturnProbeOnGo(object.display.clone()));
        }
        Ok(NotGo(object))
    }
}

/// Probe points of one program in one object, gathered for one link.
struct Points<'a> {
    program: &'static str,
    /// Function names, for messages.
    functions: Vec<String>,
    display: &'a str,
    path: &'a Path,
    offsets: Vec<u64>,
    cookies: Vec<u64>,
}

impl<'a> Points<'a> {
    fn new(program: &'static str, display: &'a str, path: &'a Path) -> Self {
        Points {
            program,
            functions: Vec::new(),
            display,
            path,
            offsets: Vec::new(),
            cookies: Vec::new(),
        }
    }

    fn add(&mut self, function: &str, offset: u64, cookie: u64) {
        if !self.functions.iter().any(|f| f == function) {
            self.functions.push(function.to_string());
        }
        self.offsets.push(offset);
        self.cookies.push(cookie);
    }
}

impl Probes {
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
            let mut points = Points::new("spawn_entry", &object.display, &object.path);
            for spawn in &object.spawns {
                points.add(spawn.name, spawn.probe.offset, 0);
            }
            let link = self.link(points, false, pid)?;
            self.entry_links.extend(link);
        }
        Ok(())
    }

    /// Attaches to every probe site of `alloc`, only for process `pid`.
    ///
    /// Return probes go in first: once an entry probe can fire, the return
    /// probe of the same call is guaranteed to fire as well, so no entry
    /// state is ever left behind by the attach itself.
    pub fn attach(&mut self, alloc: &Allocator, pid: u32) -> Result<(), ProbeError> {
        let (entry_of, return_prog) = match self.mode {
            ProbeMode::Full => (entry_program as fn(ProbeFn) -> &'static str, "alloc_return"),
            ProbeMode::Empty => (
                (|_| "empty_entry") as fn(ProbeFn) -> &'static str,
                "empty_return",
            ),
        };
        for object in &alloc.objects {
            let native = NotGo::check(object)?;
            self.attach_returns(return_prog, &native, pid)?;
        }
        for object in &alloc.objects {
            let mut by_program: Vec<Points<'_>> = Vec::new();
            for site in &object.sites {
                let (name, c) = match site.func {
                    ProbeFn::Alloc(kind) => (kind.name(), cookie(kind, 0)),
                    ProbeFn::Free => ("free", 0),
                };
                let program = entry_of(site.func);
                let at = match by_program.iter().position(|p| p.program == program) {
                    Some(i) => i,
                    None => {
                        by_program.push(Points::new(program, &object.display, &object.path));
                        by_program.len() - 1
                    }
                };
                by_program[at].add(name, site.probe.offset, c);
            }
            for points in by_program {
                let link = self.link(points, false, pid)?;
                self.entry_links.extend(link);
            }
        }
        Ok(())
    }

    /// Starts tracking a Go target's goroutines at the probe points
    /// [`GoTarget::probe_plan`] gives (plain uprobes only, never return
    /// probes).
    pub fn attach_go(&mut self, go: &GoTarget, pid: u32) -> Result<(), ProbeError> {
        if !self.go {
            return Ok(());
        }
        let plan = go.probe_plan();
        self.set_config("GO_CONFIG", plan.config)?;
        let mut by_program: Vec<Points<'_>> = Vec::new();
        for point in &plan.points {
            let program = match self.mode {
                ProbeMode::Full => point.program,
                ProbeMode::Empty => "empty_entry",
            };
            let at = match by_program.iter().position(|p| p.program == program) {
                Some(i) => i,
                None => {
                    by_program.push(Points::new(program, &go.display, &go.path));
                    by_program.len() - 1
                }
            };
            by_program[at].add(&point.function, point.offset, point.cookie);
        }
        // The exit probes first (the plan's order): a goroutine whose
        // creation is seen always has its exit seen.
        by_program.reverse();
        for points in by_program {
            let link = self.link(points, false, pid)?;
            self.entry_links.extend(link);
        }
        Ok(())
    }

    /// Attaches the return program to every allocation function of an
    /// object proven not to be Go code.
    fn attach_returns(
        &mut self,
        program: &'static str,
        object: &NotGo<'_>,
        pid: u32,
    ) -> Result<(), ProbeError> {
        let object = object.0;
        let mut points = Points::new(program, &object.display, &object.path);
        for site in &object.sites {
            if let ProbeFn::Alloc(kind) = site.func {
                points.add(kind.name(), site.probe.offset, cookie(kind, 0));
            }
        }
        let link = self.link(points, true, pid)?;
        self.return_links.extend(link);
        Ok(())
    }

    /// One link attaching `points.program` at all its points (none: no
    /// link), for process `pid` only.
    fn link(
        &mut self,
        points: Points<'_>,
        returns: bool,
        pid: u32,
    ) -> Result<Option<Link>, ProbeError> {
        if points.offsets.is_empty() {
            return Ok(None);
        }
        let prog = self.program(points.program)?;
        let is_return = matches!(prog.kind(), ProbeKind::Return);
        if is_return != returns {
            return Err(ProbeError::Missing("a program of the right probe kind"));
        }
        let prog_fd = prog.fd().map_err(|e| ProbeError::Load(error_chain(&e)))?;
        let multi = multi_link::MultiPoints {
            path: points.path,
            offsets: points.offsets,
            cookies: points.cookies,
            returns,
            pid: Some(pid),
        };
        let fd = multi_link::attach(std::os::fd::AsFd::as_fd(prog_fd), &multi).map_err(|e| {
            ProbeError::Attach {
                function: points.functions.join(", "),
                library: points.display.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Some(Link {
            probes: multi.offsets.len(),
            _fd: fd,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
