//! Turning addresses in traced processes into function, file:line and
//! module, on one thread for the whole run (blazesym's `Symbolizer` is not
//! `Send`), shared by every traced process.
//!
//! The thread keeps a snapshot of each process's mappings and one open
//! file descriptor for every object any of them maps (by device and inode),
//! and symbolizes by file offset through `/proc/self/fd/N`. That way the
//! final report still symbolizes after a process has exited, objects in
//! another mount namespace or deleted from disk are still readable, and an
//! object many processes map (a container's C library) is parsed once:
//! blazesym caches by path, and the path is the same for all of them.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    rc::Rc,
    sync::mpsc,
    thread,
};

use blazesym::symbolize::{
    source::{Elf, Source},
    CodeInfo, Input, Symbolized, Symbolizer as Blazesym,
};

use crate::{
    golang::GoSymbols,
    process::procfs::{self, Mapping},
};

mod debuginfo;

/// One symbolized frame. Inlined functions expand into several frames for
/// the same address, innermost first, with `inlined` set on all but the
/// last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub address: u64,
    pub symbol: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
    /// Where the address lies in its module (path as the target sees it,
    /// file offset); used to tell which allocator function a probe is on.
    pub location: Option<(String, u64)>,
}

impl Frame {
    /// An address nothing is known about.
    pub fn unknown(address: u64) -> Self {
        Frame {
            address,
            symbol: None,
            module: None,
            file: None,
            line: None,
            inlined: false,
            location: None,
        }
    }
}

enum Request {
    Start {
        pid: u32,
        /// Whose mappings to read (a forked child gone before it could be
        /// read: its parent's).
        maps_of: u32,
        go: Option<GoSymbols>,
    },
    Refresh {
        pid: u32,
        /// Told once the mappings are read.
        done: Option<mpsc::Sender<()>>,
    },
    Symbolize {
        pid: u32,
        addrs: Vec<u64>,
        /// Addresses are return addresses (look up `addr - 1`).
        return_addresses: bool,
        reply: tokio::sync::oneshot::Sender<Vec<Vec<Frame>>>,
    },
    Forget {
        pid: u32,
    },
}

/// Handle to the symbolization thread for one traced process.
pub struct Symbolizer {
    pid: u32,
    tx: mpsc::Sender<Request>,
}

#[derive(Debug, thiserror::Error)]
#[error("the symbolization thread has stopped")]
pub struct SymbolizerGone;

/// The run's symbolization thread, started with the first process.
fn service() -> std::io::Result<mpsc::Sender<Request>> {
    static SERVICE: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    if let Some(tx) = SERVICE.get() {
        return tx
            .lock()
            .map(|t| t.clone())
            .map_err(|_| std::io::Error::other("symbolization thread poisoned"));
    }
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("symbolize".into())
        .spawn(move || Service::new().run(rx))?;
    let tx = SERVICE.get_or_init(|| std::sync::Mutex::new(tx));
    tx.lock()
        .map(|t| t.clone())
        .map_err(|_| std::io::Error::other("symbolization thread poisoned"))
}

impl Symbolizer {
    pub fn start(pid: u32, go: Option<GoSymbols>) -> std::io::Result<Self> {
        Symbolizer::start_reading(pid, pid, go)
    }

    /// For process `pid`, reading the mappings of process `maps_of`.
    pub fn start_reading(pid: u32, maps_of: u32, go: Option<GoSymbols>) -> std::io::Result<Self> {
        let tx = service()?;
        tx.send(Request::Start { pid, maps_of, go })
            .map_err(|_| std::io::Error::other("the symbolization thread has stopped"))?;
        Ok(Symbolizer { pid, tx })
    }

    /// Re-reads the target's mappings (new libraries, before it exits).
    pub fn refresh(&self) {
        let _ = self.tx.send(Request::Refresh {
            pid: self.pid,
            done: None,
        });
    }

    /// [`Symbolizer::refresh`], returning once the mappings are read: for
    /// a target held still that may exit as soon as it goes on (a short
    /// command at its loader's breakpoint or its `_exit`).
    pub fn refresh_now(&self) {
        let (done, wait) = mpsc::channel();
        let sent = self.tx.send(Request::Refresh {
            pid: self.pid,
            done: Some(done),
        });
        if sent.is_ok() {
            let _ = wait.recv();
        }
    }

    /// Symbolizes return addresses (or, with `return_addresses == false`,
    /// exact instruction addresses).
    pub async fn symbolize(
        &self,
        addrs: Vec<u64>,
        return_addresses: bool,
    ) -> Result<Vec<Vec<Frame>>, SymbolizerGone> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request::Symbolize {
                pid: self.pid,
                addrs,
                return_addresses,
                reply,
            })
            .map_err(|_| SymbolizerGone)?;
        rx.await.map_err(|_| SymbolizerGone)
    }

    /// Symbolizes each distinct address once; frames by address.
    pub async fn symbolize_set(
        &self,
        addrs: impl Iterator<Item = u64>,
        return_addresses: bool,
    ) -> Result<HashMap<u64, Vec<Frame>>, SymbolizerGone> {
        let unique: Vec<u64> = addrs.collect::<HashSet<_>>().into_iter().collect();
        let frames = self.symbolize(unique.clone(), return_addresses).await?;
        Ok(unique.into_iter().zip(frames).collect())
    }
}

impl Drop for Symbolizer {
    fn drop(&mut self) {
        let _ = self.tx.send(Request::Forget { pid: self.pid });
    }
}

/// An object file held open, shared by every process that maps it.
struct Opened {
    /// `/proc/self/fd/N` of `_file`.
    open_path: PathBuf,
    _file: File,
    /// `/proc/self/fd/N` of a separate debug file found in the first
    /// mapping process's root, held open like the object itself.
    debug: Option<(debuginfo::DebugFile, PathBuf, File)>,
}

struct Module {
    mapping: Mapping,
    name: String,
    opened: Rc<Opened>,
}

/// What the thread knows of one process.
struct Process {
    maps_of: u32,
    /// Newest snapshot first; older ones stay for addresses of objects
    /// that were unmapped since.
    modules: Vec<Module>,
    go: Option<GoSymbols>,
    cache: HashMap<(u64, bool), Vec<Frame>>,
}

struct Service {
    blazesym: Blazesym,
    /// Every object seen, by (device, inode) as /proc/PID/maps names it.
    opened: HashMap<(String, u64), Rc<Opened>>,
    processes: HashMap<u32, Process>,
}

impl Service {
    fn new() -> Self {
        let blazesym = Blazesym::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Service {
            blazesym,
            opened: HashMap::new(),
            processes: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(req) = rx.recv() {
            match req {
                Request::Start { pid, maps_of, go } => {
                    self.processes.insert(
                        pid,
                        Process {
                            maps_of,
                            modules: Vec::new(),
                            go,
                            cache: HashMap::new(),
                        },
                    );
                    self.refresh(pid);
                }
                Request::Refresh { pid, done } => {
                    self.refresh(pid);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Request::Symbolize {
                    pid,
                    addrs,
                    return_addresses,
                    reply,
                } => {
                    let out = match self.processes.get_mut(&pid) {
                        Some(p) => addrs
                            .iter()
                            .map(|&a| p.frames(&self.blazesym, a, return_addresses))
                            .collect(),
                        None => addrs.iter().map(|&a| vec![Frame::unknown(a)]).collect(),
                    };
                    let _ = reply.send(out);
                }
                Request::Forget { pid } => {
                    self.processes.remove(&pid);
                    // Objects no process maps any more are closed.
                    self.opened.retain(|_, o| Rc::strong_count(o) > 1);
                }
            }
        }
    }

    fn refresh(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let pid = process.maps_of;
        let Ok(maps) = procfs::read_maps(pid) else {
            return;
        }; // exited: keep the last snapshot
        let mut fresh = Vec::new();
        for m in maps
            .into_iter()
            .filter(|m| m.executable && m.path.is_some())
        {
            if let Some(pos) = process.modules.iter().position(|old| old.mapping == m) {
                fresh.push(process.modules.swap_remove(pos));
                continue;
            }
            let key = (m.dev.clone(), m.inode);
            let opened = match self.opened.get(&key) {
                Some(o) => o.clone(),
                None => {
                    let Some(o) = open(pid, &m) else {
                        continue;
                    };
                    let o = Rc::new(o);
                    self.opened.insert(key, o.clone());
                    o
                }
            };
            let name = m
                .path
                .as_deref()
                .and_then(|p| Path::new(p).file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            fresh.push(Module {
                mapping: m,
                name,
                opened,
            });
        }
        fresh.append(&mut process.modules);
        process.modules = fresh;
    }
}

/// Opens the object of process `pid`'s mapping `m`, and its debug file.
fn open(pid: u32, m: &Mapping) -> Option<Opened> {
    let file = File::open(m.open_path(pid)).ok()?;
    let open_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let debug = m
        .path
        .as_deref()
        .and_then(|p| debuginfo::find(&root, p, &open_path))
        .and_then(|d| {
            let f = File::open(&d.path).ok()?;
            let fd_path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
            Some((d, fd_path, f))
        });
    Some(Opened {
        open_path,
        _file: file,
        debug,
    })
}

impl Process {
    fn frames(&mut self, blazesym: &Blazesym, addr: u64, return_address: bool) -> Vec<Frame> {
        if let Some(hit) = self.cache.get(&(addr, return_address)) {
            return hit.clone();
        }
        let lookup = if return_address {
            addr.saturating_sub(1)
        } else {
            addr
        };
        let unknown = Frame::unknown(addr);
        let frames = match self.modules.iter().find(|m| m.mapping.contains(lookup)) {
            None => vec![unknown],
            Some(m) => {
                let offset = lookup - m.mapping.start + m.mapping.file_offset;
                let location = m.mapping.path.clone().map(|p| (p, offset));
                let module = Some(m.name.clone());
                // Go code from the Go function table; C code linked into a
                // cgo binary is not in it and goes to blazesym below.
                if let Some(go) = self.go.as_ref().filter(|g| g.inode == m.mapping.inode) {
                    if let Some(frames) = go.frames(addr, offset, &module, &location) {
                        self.cache.insert((addr, return_address), frames.clone());
                        return frames;
                    }
                }
                let o = &m.opened;
                // With a separate debug file: by virtual address in it.
                let (src, input) = match &o.debug {
                    Some((debug, path, _)) => match debug.vaddr_of(offset) {
                        Some(vaddr) => (Source::Elf(Elf::new(path)), Input::VirtOffset(vaddr)),
                        None => (
                            Source::Elf(Elf::new(&o.open_path)),
                            Input::FileOffset(offset),
                        ),
                    },
                    None => (
                        Source::Elf(Elf::new(&o.open_path)),
                        Input::FileOffset(offset),
                    ),
                };
                match blazesym.symbolize_single(&src, input) {
                    Ok(Symbolized::Sym(sym)) => {
                        let mut out = Vec::with_capacity(sym.inlined.len() + 1);
                        for f in sym.inlined.iter().rev() {
                            let (file, line) = code_location(f.code_info.as_ref());
                            out.push(Frame {
                                address: addr,
                                symbol: Some(f.name.to_string()),
                                module: module.clone(),
                                file,
                                line,
                                inlined: true,
                                location: location.clone(),
                            });
                        }
                        let (file, line) = code_location(sym.code_info.as_deref());
                        out.push(Frame {
                            address: addr,
                            symbol: Some(sym.name.to_string()),
                            module,
                            file,
                            line,
                            inlined: false,
                            location,
                        });
                        out
                    }
                    _ => vec![Frame {
                        module,
                        location,
                        ..unknown
                    }],
                }
            }
        };
        self.cache.insert((addr, return_address), frames.clone());
        frames
    }
}

fn code_location(ci: Option<&CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match ci {
        Some(ci) => {
            let file = match &ci.dir {
                Some(dir) if !dir.as_os_str().is_empty() => {
                    dir.join(&*ci.file).display().to_string()
                }
                _ => Path::new(&*ci.file).display().to_string(),
            };
            (Some(file), ci.line)
        }
        None => (None, None),
    }
}
