//! Attaching programs to the target: uprobes on its allocator and spawn
//! functions, the task tracepoints, and a Go target's goroutine probes.
//! Every link is kept so that [`Probes::detach`] can remove it.

use std::{num::NonZeroU32, path::Path};

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{ProbeKind, UProbe};
use tracer_common::{cookie, TaskConfig};

use super::{btf, entry_program, error_chain, ProbeError, Probes, TASK_TRACEPOINTS};
use crate::{
    cli::ProbeMode,
    golang::{is_go_code, GoTarget},
    process::allocator::{Allocator, ProbeFn, ProbedObject},
};

/// An attached probe: which program, and the link to detach.
pub(super) struct Link {
    pub(super) program: &'static str,
    pub(super) id: UProbeLinkId,
}

/// An object proven not to be Go code: the only kind of object a return
/// probe can be attached to (see [`Probes::attach_return`]).
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
            for spawn in &object.spawns {
                self.attach_entry(
                    "spawn_entry",
                    spawn.name,
                    &object.display,
                    &object.path,
                    spawn.probe.offset,
                    0,
                    scope,
                )?;
            }
        }
        Ok(())
    }

    /// Attaches to every probe site of `alloc`, only for process `pid`.
    ///
    /// Return probes go in first: once an entry probe can fire, the return
    /// probe of the same call is guaranteed to fire as well, so no entry
    /// state is ever left behind by the attach itself.
    pub fn attach(&mut self, alloc: &Allocator, pid: u32) -> Result<(), ProbeError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(ProbeError::Attach {
            function: "malloc".into(),
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
                        site.probe.offset,
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
                    site.probe.offset,
                    c,
                    scope,
                )?;
            }
        }
        Ok(())
    }

    /// Starts tracking a Go target's goroutines at the probe points
    /// [`GoTarget::probe_plan`] gives, in its order (plain uprobes only,
    /// never return probes).
    pub fn attach_go(&mut self, go: &GoTarget, pid: u32) -> Result<(), ProbeError> {
        if !self.go {
            return Ok(());
        }
        let plan = go.probe_plan();
        self.set_config("GO_CONFIG", plan.config)?;
        let scope = one_process(pid)?;
        for point in plan.points {
            let program = match self.mode {
                ProbeMode::Full => point.program,
                ProbeMode::Empty => "empty_entry",
            };
            self.attach_entry(
                program,
                &point.function,
                &go.display,
                &go.path,
                point.offset,
                point.cookie,
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
        function: &str,
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
        function: &str,
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
}

/// Probes fire only in the target process.
fn one_process(pid: u32) -> Result<UProbeScope, ProbeError> {
    NonZeroU32::new(pid)
        .map(UProbeScope::OneProcess)
        .ok_or(ProbeError::Missing("target pid"))
}

fn attach_uprobe(
    prog: &mut UProbe,
    function: &str,
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
            function: function.to_string(),
            library: display.to_string(),
            reason: error_chain(&e),
        })
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
