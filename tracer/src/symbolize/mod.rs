//! Turning addresses in the target into function, file:line and module,
//! on one dedicated thread (blazesym's `Symbolizer` is not `Send`).
//!
//! The thread keeps its own snapshot of the target's mappings and an open
//! file descriptor for every mapped object it has seen, and symbolizes by
//! file offset through `/proc/self/fd/N`. That way the final report still
//! symbolizes after the target has exited, and objects in another mount
//! namespace or deleted from disk are still readable.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
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
    Refresh,
    Symbolize {
        addrs: Vec<u64>,
        /// Addresses are return addresses (look up `addr - 1`).
        return_addresses: bool,
        reply: tokio::sync::oneshot::Sender<Vec<Vec<Frame>>>,
    },
}

/// Handle to the symbolization thread for one target process.
pub struct Symbolizer {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the symbolization thread has stopped")]
pub struct SymbolizerGone;

impl Symbolizer {
    pub fn start(pid: u32, go: Option<GoSymbols>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("symbolize".into())
            .spawn(move || Worker::new(pid, go).run(rx))?;
        Ok(Symbolizer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Re-reads the target's mappings (new libraries, before it exits).
    pub fn refresh(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Refresh);
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
            .as_ref()
            .ok_or(SymbolizerGone)?
            .send(Request::Symbolize {
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
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Module {
    mapping: Mapping,
    /// `/proc/self/fd/N` of `_file`.
    open_path: PathBuf,
    name: String,
    _file: File,
    /// `/proc/self/fd/N` of a separate debug file found in the target's
    /// root, held open like the object itself.
    debug: Option<(debuginfo::DebugFile, PathBuf, File)>,
}

struct Worker {
    pid: u32,
    blazesym: Blazesym,
    /// Newest snapshot first; older ones stay for addresses of objects
    /// that were unmapped since.
    modules: Vec<Module>,
    go: Option<GoSymbols>,
    cache: HashMap<(u64, bool), Vec<Frame>>,
}

impl Worker {
    fn new(pid: u32, go: Option<GoSymbols>) -> Self {
        let blazesym = Blazesym::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        let mut w = Worker {
            pid,
            blazesym,
            modules: Vec::new(),
            go,
            cache: HashMap::new(),
        };
        w.refresh();
        w
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(req) = rx.recv() {
            match req {
                Request::Refresh => self.refresh(),
                Request::Symbolize {
                    addrs,
                    return_addresses,
                    reply,
                } => {
                    let out = addrs
                        .iter()
                        .map(|&a| self.frames(a, return_addresses))
                        .collect();
                    let _ = reply.send(out);
                }
            }
        }
    }

    fn refresh(&mut self) {
        let Ok(maps) = procfs::read_maps(self.pid) else {
            return;
        }; // exited: keep the last snapshot
        let mut fresh = Vec::new();
        for m in maps
            .into_iter()
            .filter(|m| m.executable && m.path.is_some())
        {
            if let Some(pos) = self.modules.iter().position(|old| old.mapping == m) {
                fresh.push(self.modules.swap_remove(pos));
                continue;
            }
            let Ok(file) = File::open(m.open_path(self.pid)) else {
                continue;
            };
            let open_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            let name = m
                .path
                .as_deref()
                .and_then(|p| Path::new(p).file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let root = PathBuf::from(format!("/proc/{}/root", self.pid));
            let debug = m
                .path
                .as_deref()
                .and_then(|p| debuginfo::find(&root, p, &open_path))
                .and_then(|d| {
                    let f = File::open(&d.path).ok()?;
                    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                    Some((d, fd_path, f))
                });
            fresh.push(Module {
                mapping: m,
                open_path,
                name,
                _file: file,
                debug,
            });
        }
        fresh.append(&mut self.modules);
        self.modules = fresh;
    }

    fn frames(&mut self, addr: u64, return_address: bool) -> Vec<Frame> {
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
                // With a separate debug file: by virtual address in it.
                let (src, input) = match &m.debug {
                    Some((debug, path, _)) => match debug.vaddr_of(offset) {
                        Some(vaddr) => (Source::Elf(Elf::new(path)), Input::VirtOffset(vaddr)),
                        None => (
                            Source::Elf(Elf::new(&m.open_path)),
                            Input::FileOffset(offset),
                        ),
                    },
                    None => (
                        Source::Elf(Elf::new(&m.open_path)),
                        Input::FileOffset(offset),
                    ),
                };
                match self.blazesym.symbolize_single(&src, input) {
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
