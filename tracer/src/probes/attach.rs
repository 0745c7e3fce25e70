//! Attaching programs to traced processes: uprobes on their allocator and
//! spawn functions, the task tracepoints, and a Go program's goroutine
//! probes. Each program is attached to each probed object by one
//! uprobe-multi link ([`multi_link`]) per [`Scope`]: for one process, or
//! once for every traced process mapping the object. Every link is kept,
//! with whom it serves, so that it can be removed when its process goes
//! and all of them when leaktrace does.

use std::{
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::Path,
};

use aya::programs::ProbeKind;
use tracer_common::{cookie, go_offsets_fit, TaskConfig, COOKIE_CHECK_TRACED};

use super::{
    btf, drop_all_at_once, entry_program, error_chain, multi_link, ProbeError, ProbeMode, Probes,
    Scope, TASK_TRACEPOINTS,
};
use crate::{
    golang::{is_go_code, GoTarget},
    process::allocator::{Allocator, ProbeFn, ProbedObject},
};

/// An attached link: at how many points, for whom, in which file, and the
/// fd that holds it in the kernel.
pub(super) struct Link {
    pub(super) probes: usize,
    pub(super) scope: Scope,
    pub(super) file: FileId,
    pub(super) purpose: Purpose,
    /// Held for as long as the probes stay: closing it removes them.
    pub(super) _fd: OwnedFd,
}

/// What a link's probes are for: one file may carry several kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Heap,
    Spawns,
    Goroutines,
}

/// A probed file, by device and inode (the same file under two paths, as
/// two container processes see it, is one).
pub(super) type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
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
    purpose: Purpose,
    /// Function names, for messages.
    functions: Vec<String>,
    display: &'a str,
    path: &'a Path,
    offsets: Vec<u64>,
    cookies: Vec<u64>,
}

impl<'a> Points<'a> {
    fn new(program: &'static str, purpose: Purpose, display: &'a str, path: &'a Path) -> Self {
        Points {
            program,
            purpose,
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

/// Points grouped by program, in the order programs first appear.
fn by_program<'a>(
    points: impl IntoIterator<Item = (&'static str, &'a str, u64, u64)>,
    purpose: Purpose,
    display: &'a str,
    path: &'a Path,
) -> Vec<Points<'a>> {
    let mut out: Vec<Points<'a>> = Vec::new();
    for (program, function, offset, cookie) in points {
        let at = match out.iter().position(|p| p.program == program) {
            Some(i) => i,
            None => {
                out.push(Points::new(program, purpose, display, path));
                out.len() - 1
            }
        };
        out[at].add(function, offset, cookie);
    }
    out
}

impl Probes {
    /// The task tracepoints, once per run (they see every task, and the
    /// programs look up `TRACED`): also before any process is traced, for
    /// a node agent waiting for containers.
    pub fn attach_task_tracepoints(&mut self) -> Result<(), ProbeError> {
        if self.mode != ProbeMode::Full || self.task_config.is_some() {
            return Ok(());
        }
        let (pid_offset, tgid_offset) = btf::task_pid_offsets()?;
        let cfg = TaskConfig {
            pid_offset,
            tgid_offset,
            ..TaskConfig::default()
        };
        self.set_config("TASK_CONFIG", cfg)?;
        self.task_config = Some(cfg);
        // Exit first: a task created once fork is watched always has
        // its exit seen.
        for (name, tracepoint) in TASK_TRACEPOINTS.iter().rev() {
            self.attach_tracepoint(name, tracepoint)?;
        }
        Ok(())
    }

    /// Attaches the task tracepoints (once per run: they see every task,
    /// and the programs look up `TRACED`) and the spawn probes of
    /// `alloc`'s C library for `scope`.
    pub fn attach_tasks(&mut self, alloc: &Allocator, scope: Scope) -> Result<(), ProbeError> {
        if self.mode != ProbeMode::Full {
            return Ok(());
        }
        self.attach_task_tracepoints()?;
        if let Some(object) = alloc.objects.first() {
            if self.attached(&object.path, scope, Purpose::Spawns) {
                return Ok(());
            }
            let spawns = object
                .spawns
                .iter()
                .map(|s| ("spawn_entry", s.name, s.probe.offset, 0));
            for points in by_program(spawns, Purpose::Spawns, &object.display, &object.path) {
                let link = self.link(points, false, scope)?;
                self.entry_links.extend(link);
            }
        }
        Ok(())
    }

    /// A process exec'ing in the PID namespace `(dev, ino)` is traced from
    /// then on (`docker exec`): the exec tracepoint checks.
    pub fn follow_pid_namespace(&mut self, dev: u64, ino: u64) -> Result<(), ProbeError> {
        self.follow_exec(dev, ino, tracer_common::FOLLOW_IN_PIDNS)
    }

    /// A process exec'ing in any PID namespace but `(dev, ino)` (the
    /// host's: in any container) is traced from then on.
    pub fn follow_other_pid_namespaces(&mut self, dev: u64, ino: u64) -> Result<(), ProbeError> {
        self.follow_exec(dev, ino, tracer_common::FOLLOW_OUTSIDE_PIDNS)
    }

    fn follow_exec(&mut self, dev: u64, ino: u64, how: u32) -> Result<(), ProbeError> {
        let Some(mut cfg) = self.task_config else {
            return Err(ProbeError::Missing("task tracepoints before the namespace"));
        };
        cfg.pidns_dev = dev;
        cfg.pidns_ino = ino;
        cfg.follow_pidns = how;
        self.set_config("TASK_CONFIG", cfg)?;
        self.task_config = Some(cfg);
        Ok(())
    }

    /// Attaches to every probe site of `alloc` for `scope` (an object
    /// already probed for every process is not probed again).
    ///
    /// Return probes go in first: once an entry probe can fire, the return
    /// probe of the same call is guaranteed to fire as well, so no entry
    /// state is ever left behind by the attach itself.
    pub fn attach(&mut self, alloc: &Allocator, scope: Scope) -> Result<(), ProbeError> {
        let (entry_of, return_prog) = match self.mode {
            ProbeMode::Full => (entry_program as fn(ProbeFn) -> &'static str, "alloc_return"),
            ProbeMode::Empty => (
                (|_| "empty_entry") as fn(ProbeFn) -> &'static str,
                "empty_return",
            ),
        };
        let objects: Vec<&ProbedObject> = alloc
            .objects
            .iter()
            .filter(|o| !self.attached(&o.path, scope, Purpose::Heap))
            .collect();
        for object in &objects {
            let native = NotGo::check(object)?;
            self.attach_returns(return_prog, &native, scope)?;
        }
        for object in &objects {
            let sites = object.sites.iter().map(|site| {
                let (name, c) = match site.func {
                    ProbeFn::Alloc(kind) => (kind.name(), cookie(kind, 0)),
                    ProbeFn::Free => ("free", 0),
                };
                (entry_of(site.func), name, site.probe.offset, c)
            });
            for points in by_program(sites, Purpose::Heap, &object.display, &object.path) {
                let link = self.link(points, false, scope)?;
                self.entry_links.extend(link);
            }
        }
        Ok(())
    }

    /// Starts tracking a Go program's goroutines at the probe points
    /// [`GoTarget::probe_plan`] gives (plain uprobes only, never return
    /// probes).
    pub fn attach_go(&mut self, go: &GoTarget, scope: Scope) -> Result<(), ProbeError> {
        if !self.go || self.attached(&go.path, scope, Purpose::Goroutines) {
            return Ok(());
        }
        let plan = go.probe_plan();
        if !go_offsets_fit(plan.config) {
            return Err(ProbeError::Missing(
                "runtime.g offsets the Go probes can carry",
            ));
        }
        let mode = self.mode;
        let points = plan.points.iter().map(|point| {
            let program = match mode {
                ProbeMode::Full => point.program,
                ProbeMode::Empty => "empty_entry",
            };
            (program, point.function.as_str(), point.offset, point.cookie)
        });
        // In the plan's order, the exit probe first: a goroutine whose
        // creation is seen always has its exit seen.
        for points in by_program(points, Purpose::Goroutines, &go.display, &go.path) {
            let link = self.link(points, false, scope)?;
            self.entry_links.extend(link);
        }
        Ok(())
    }

    /// Removes the probes attached for process `pid` alone (entries first).
    pub fn detach_process(&mut self, pid: u32) {
        let mine = |links: &mut Vec<Link>| {
            let (gone, kept): (Vec<Link>, Vec<Link>) = std::mem::take(links)
                .into_iter()
                .partition(|l| l.scope == Scope::Process(pid));
            *links = kept;
            gone
        };
        let entries = mine(&mut self.entry_links);
        let returns = mine(&mut self.return_links);
        drop_all_at_once(entries);
        drop_all_at_once(returns);
    }

    /// Whether the file at `path` is probed for `scope` already, or for
    /// every process (which covers any one).
    fn attached(&self, path: &Path, scope: Scope, purpose: Purpose) -> bool {
        let Some(file) = file_id(path) else {
            return false;
        };
        self.entry_links.iter().any(|l| {
            l.file == file && l.purpose == purpose && (l.scope == scope || l.scope == Scope::Shared)
        })
    }

    /// Attaches the return program to every allocation function of an
    /// object proven not to be Go code.
    fn attach_returns(
        &mut self,
        program: &'static str,
        object: &NotGo<'_>,
        scope: Scope,
    ) -> Result<(), ProbeError> {
        let object = object.0;
        let mut points = Points::new(program, Purpose::Heap, &object.display, &object.path);
        for site in &object.sites {
            if let ProbeFn::Alloc(kind) = site.func {
                points.add(kind.name(), site.probe.offset, cookie(kind, 0));
            }
        }
        let link = self.link(points, true, scope)?;
        self.return_links.extend(link);
        Ok(())
    }

    /// One link attaching `points.program` at all its points (none: no
    /// link), for `scope`.
    fn link(
        &mut self,
        mut points: Points<'_>,
        returns: bool,
        scope: Scope,
    ) -> Result<Option<Link>, ProbeError> {
        if points.offsets.is_empty() {
            return Ok(None);
        }
        let file = file_id(points.path).ok_or_else(|| {
            ProbeError::Unreadable(points.display.to_string(), std::io::Error::last_os_error())
        })?;
        let pid = match scope {
            Scope::Process(pid) => Some(pid),
            Scope::Shared => {
                for c in &mut points.cookies {
                    *c |= COOKIE_CHECK_TRACED;
                }
                None
            }
        };
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
            pid,
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
            scope,
            file,
            purpose: points.purpose,
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
