//! Processes the kernel told of: children a traced process forked,
//! processes that exec'd into a followed container, and traced processes
//! that exec'd a new image.
//!
//! The probes on a container's own files serve a newcomer from its first
//! instruction. A newcomer whose files are not probed yet (a new image:
//! a container started after leaktrace, an exec of another program) is
//! held still instead: the exec tracepoint stops it before its first
//! instruction, and, for a dynamically linked program, the loader's
//! breakpoint once more when its libraries are mapped and before their
//! initialisers run ([`crate::process::loader`]); its probes go in while
//! it waits, so that it is traced from its first allocation. Every event
//! that stopped a process continues it when handled, whatever came of it.

use std::{collections::HashSet, time::Instant};

use tracer_common::{
    ProcessEvent, EVENT_ENTERED, EVENT_EXECED, EVENT_FORKED, EVENT_LOADED, TRACE_CHILDREN,
};

use super::{alive, own_container, scope_for, Supervisor, Watch, Watched};
use crate::{
    probes::Scope,
    process::{container, loader},
    session::tracer::{Plan, Tracer},
};

/// A process whose image is not ready to read yet.
pub(super) struct Waiting {
    pub(super) pid: u32,
    /// A traced process's new image (else a newcomer).
    pub(super) execed: bool,
    pub(super) until: Instant,
}

/// How long a process that exec'd may take to map its C library.
pub(super) const LOADER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Supervisor {
    /// Newcomers and exec's the kernel told of.
    pub(super) fn take_events(&mut self, tracer: &mut Tracer) {
        let mut events = Vec::new();
        while let Some(item) = tracer.events.next() {
            if item.len() >= std::mem::size_of::<ProcessEvent>() {
                // SAFETY: the kernel wrote a whole ProcessEvent (checked
                // length); read unaligned from the ring buffer's bytes.
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<ProcessEvent>())
                });
            }
        }
        for e in events {
            let stopped = e.stopped != 0;
            if !stopped && tracer.probes.stops_at_exec() && e.kind != EVENT_FORKED {
                eprintln!(
                    "leaktrace: warning: pid {}: could not be held still at its exec: what it allocates before its probes are in is not seen",
                    e.tgid
                );
            }
            if stopped {
                tracer.probes.wait_stopped(e.tgid);
            }
            match e.kind {
                EVENT_FORKED => self.forked(tracer, e.tgid, e.parent),
                EVENT_ENTERED => self.entered(tracer, e.tgid, stopped),
                EVENT_EXECED => self.execed(tracer, e.tgid, stopped),
                EVENT_LOADED => self.loaded(tracer, e.tgid),
                _ => {}
            }
            if stopped && !never_resume() {
                tracer.probes.resume_stopped(e.tgid);
            }
        }
    }

    fn forked(&mut self, tracer: &mut Tracer, pid: u32, parent: u32) {
        if self.targets.iter().any(|(t, _)| t.pid == pid) {
            return;
        }
        let Some(id) = self
            .targets
            .iter()
            .find(|(t, _)| t.pid == parent)
            .map(|(_, id)| id.clone())
        else {
            tracer.release(pid);
            return;
        };
        let plan = match Plan::of_process(&self.cli, pid) {
            Ok(plan) => plan,
            // Gone already: it had its parent's mappings.
            Err(_) => match self.targets.iter().find(|(t, _)| t.pid == parent) {
                Some((p, _)) => Plan {
                    pid,
                    comm: p.comm.clone(),
                    paused: None,
                    candidates: p.candidates.clone(),
                    allocator: p.allocator.clone(),
                    go: None,
                    memprofile: None,
                },
                None => return,
            },
        };
        // The kernel traces it already, through its parent's probes.
        if let Err(e) = self.add(tracer, plan, Scope::Shared, Some(parent), &id) {
            eprintln!("leaktrace: pid {pid}: not traced: {e:#}");
        }
    }

    /// A process exec'd into a followed PID namespace.
    fn entered(&mut self, tracer: &mut Tracer, pid: u32, stopped: bool) {
        if self.targets.iter().any(|(t, _)| t.pid == pid) {
            return;
        }
        // Not a container followed: let go at once (it is stopped).
        if self.container_of(pid).is_none() {
            tracer.release(pid);
            return;
        }
        self.wait_for_loader(tracer, pid, false, stopped);
    }

    /// A traced process exec'd: its new objects get probes (once its
    /// loader has mapped them), its tables and symbols are read anew.
    fn execed(&mut self, tracer: &mut Tracer, pid: u32, stopped: bool) {
        let Some(at) = self.targets.iter().position(|(t, _)| t.pid == pid) else {
            return;
        };
        if let Err(e) = self.targets[at].0.execed(tracer) {
            eprintln!("leaktrace: pid {pid}: {e:#}");
        }
        self.wait_for_loader(tracer, pid, true, stopped);
    }

    /// Process `pid`, at its exec, waits for its probes: held at its
    /// loader's breakpoint when it was stopped and has a loader, tried at
    /// once when it has none (all of it is mapped), else tried at every
    /// tick.
    fn wait_for_loader(&mut self, tracer: &mut Tracer, pid: u32, execed: bool, stopped: bool) {
        self.waiting.retain(|w| w.pid != pid);
        self.loaders.remove(&pid);
        self.waiting.push(Waiting {
            pid,
            execed,
            until: Instant::now() + LOADER_GRACE,
        });
        if stopped {
            match loader::breakpoint(pid) {
                Ok(Some(at)) => match tracer.probes.watch_loader(pid, &at.path, at.offset) {
                    Ok(watch) => {
                        self.loaders.insert(pid, watch);
                        return;
                    }
                    Err(e) => eprintln!(
                        "leaktrace: warning: pid {pid}: its loader cannot hold it ({e}): what it allocates before its probes are in is not seen"
                    ),
                },
                // Statically linked: ready now.
                Ok(None) => {}
                Err(e) => eprintln!("leaktrace: warning: pid {pid}: {e}"),
            }
        }
        self.retry_waiting(tracer);
    }

    /// A process held at its loader's breakpoint: traced now if its
    /// libraries are mapped (the second call), else at the next.
    fn loaded(&mut self, tracer: &mut Tracer, pid: u32) {
        if !self.loaders.contains_key(&pid) {
            return;
        }
        self.retry(tracer, pid);
        if !self.waiting.iter().any(|w| w.pid == pid) {
            self.loaders.remove(&pid);
        }
    }

    /// The followed container process `pid` runs in, if any: for the node
    /// agent, a container the engine names and whose labels match (now
    /// followed), for one container, that one.
    fn container_of(&mut self, pid: u32) -> Option<String> {
        let id = container::inspect(pid).id?;
        // The agent in its own container leaves itself alone.
        if own_container().as_deref() == Some(id.as_str()) {
            return None;
        }
        if self.containers.contains_key(&id) {
            return Some(id);
        }
        let Watch::All { labels } = &self.watch else {
            return None;
        };
        let record = self.docker.as_ref()?.inspect(&id).ok().flatten()?;
        if !record.has_labels(labels) {
            return None;
        }
        eprintln!(
            "leaktrace: container {} ({}) started: tracing it",
            record.name, record.image
        );
        self.containers
            .insert(id.clone(), Watched::new(&id, Some(&record)));
        Some(id)
    }

    /// Tries again to read the processes whose loader was not done (not
    /// those its breakpoint holds, until their grace is over).
    pub(super) fn retry_waiting(&mut self, tracer: &mut Tracer) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .waiting
            .iter()
            .filter(|w| !self.loaders.contains_key(&w.pid) || now >= w.until)
            .map(|w| w.pid)
            .collect();
        for pid in due {
            self.retry(tracer, pid);
            if !self.waiting.iter().any(|w| w.pid == pid) {
                self.loaders.remove(&pid);
            }
        }
    }

    /// Tries to read waiting process `pid` and attach to it: it stays
    /// waiting if its loader is not done and its grace not over.
    fn retry(&mut self, tracer: &mut Tracer, pid: u32) {
        let Some(at) = self.waiting.iter().position(|w| w.pid == pid) else {
            return;
        };
        let w = self.waiting.remove(at);
        if !alive(w.pid) {
            if !w.execed {
                tracer.release(w.pid);
            }
            return;
        }
        let traced = self.targets.iter().find(|(t, _)| t.pid == w.pid);
        // A newcomer the engine's start event brought in meanwhile.
        if traced.is_some() && !w.execed {
            return;
        }
        let id = match traced {
            Some((_, id)) => Some(id.clone()),
            None => self.container_of(w.pid),
        };
        let Some(id) = id else {
            // Not a container followed (another PID namespace, a
            // container whose labels do not match): let go.
            tracer.release(w.pid);
            return;
        };
        match Plan::of_process(&self.cli, w.pid) {
            Ok(plan) => {
                let inside: HashSet<u32> = container::processes(&id).into_iter().collect();
                let scope = scope_for(&plan, &inside);
                let outcome = if w.execed {
                    let attached = tracer.attach(&self.cli, &plan, scope, TRACE_CHILDREN);
                    if let Some((t, _)) = self.targets.iter_mut().find(|(t, _)| t.pid == w.pid) {
                        let _ = t.refresh(tracer);
                    }
                    attached
                } else {
                    self.add(tracer, plan, scope, None, &id)
                };
                if let Err(e) = outcome {
                    eprintln!("leaktrace: pid {}: not traced: {e:#}", w.pid);
                }
            }
            Err(_) if Instant::now() < w.until => self.waiting.push(w),
            Err(e) if w.execed => eprintln!(
                "leaktrace: pid {}: its new image was not read (its stacks may stay unsymbolized): {e:#}",
                w.pid
            ),
            Err(e) => {
                tracer.release(w.pid);
                eprintln!("leaktrace: pid {}: not traced: {e:#}", w.pid);
            }
        }
    }
}

/// Tests only: held processes are never continued by leaktrace (what its
/// resume watchdog does when leaktrace is killed is then seen).
fn never_resume() -> bool {
    static NEVER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NEVER.get_or_init(|| std::env::var_os("LEAKTRACE_TEST_NEVER_RESUME").is_some())
}
