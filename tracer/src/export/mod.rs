//! Reports in the formats of the tools users already read: pprof files
//! ([`pprof`]), folded stacks and flame graphs ([`flamegraph`]), and a live
//! HTTP endpoint serving pprof and Prometheus metrics ([`server`],
//! [`metrics`]).
//!
//! Every report the session builds with exports enabled carries
//! [`Profiles`]: the whole heap by stack (not only the top sites a text
//! report shows) and the goroutines by creation stack; the [`Exporter`]
//! writes them where the command line asked.

pub mod flamegraph;
mod modules;
pub mod pprof;
mod profile_proto;

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

pub use modules::ModuleMap;
pub use profile_proto::Profile;

use crate::symbolize::Frame;

/// Where a heap sample's blocks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapSource {
    /// The C allocator, every call traced.
    Malloc,
    /// The Go runtime's own heap profile (sampled, unsampled like pprof).
    Go,
}

impl HeapSource {
    pub fn name(self) -> &'static str {
        match self {
            HeapSource::Malloc => "malloc",
            HeapSource::Go => "go",
        }
    }
}

/// One allocation stack's values.
#[derive(Debug, Clone)]
pub struct HeapSample {
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Outstanding longer than the threshold.
    pub inuse_bytes: u64,
    pub inuse_objects: u64,
    /// Allocated since attach, freed or not.
    pub alloc_bytes: u64,
    pub alloc_objects: u64,
    pub source: HeapSource,
}

/// When a goroutine group was created, relative to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    AfterAttach,
    BeforeAttach,
}

impl Created {
    pub fn name(self) -> &'static str {
        match self {
            Created::AfterAttach => "after-attach",
            Created::BeforeAttach => "before-attach",
        }
    }
}

/// Goroutines of one creation stack.
#[derive(Debug, Clone)]
pub struct GoroutineSample {
    /// The creating stack, innermost first (for goroutines from before
    /// attach, only their `go` statement is known).
    pub frames: Vec<Frame>,
    pub count: u64,
    pub created: Created,
}

/// What one report holds, whole, for the exports.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub pid: u32,
    pub older_than: Duration,
    pub taken: SystemTime,
    pub since_attach: Duration,
    /// Every allocation stack with outstanding or allocated bytes.
    pub heap: Vec<HeapSample>,
    /// Present for Go targets.
    pub goroutines: Option<Vec<GoroutineSample>>,
}

impl Profiles {
    /// Outstanding bytes of the traced C allocator's sites (what a report
    /// calls outstanding).
    pub fn malloc_inuse_bytes(&self) -> u64 {
        self.heap
            .iter()
            .filter(|s| s.source == HeapSource::Malloc)
            .map(|s| s.inuse_bytes)
            .sum()
    }
}

/// Errors writing an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drawing the flame graph: {0}")]
    Flamegraph(String),
}

/// Where the exports go (from the command line).
#[derive(Debug, Clone, Default)]
pub struct ExportPaths {
    pub pprof_dir: Option<PathBuf>,
    pub folded: Option<PathBuf>,
    pub flamegraph: Option<PathBuf>,
}

impl ExportPaths {
    pub fn any(&self) -> bool {
        self.pprof_dir.is_some() || self.folded.is_some() || self.flamegraph.is_some()
    }
}

/// Writes each report's profiles to files, and hands them to the live
/// endpoint.
pub struct Exporter {
    paths: ExportPaths,
    pid: u32,
    modules: ModuleMap,
}

impl Exporter {
    pub fn new(paths: ExportPaths, pid: u32) -> Self {
        Exporter {
            paths,
            pid,
            modules: ModuleMap::default(),
        }
    }

    /// Writes `profiles` as report `seq`.
    pub fn write(&mut self, seq: u64, profiles: &Profiles) -> Result<(), ExportError> {
        self.modules.refresh(self.pid);
        if let Some(dir) = &self.paths.pprof_dir {
            let heap = pprof::heap(profiles, &self.modules);
            write_atomically(&dir.join(format!("heap-{seq}.pb.gz")), &encoded(&heap, dir)?)?;
            if let Some(g) = &profiles.goroutines {
                let prof = pprof::goroutines(profiles, g, &self.modules);
                write_atomically(
                    &dir.join(format!("goroutine-{seq}.pb.gz")),
                    &encoded(&prof, dir)?,
                )?;
            }
        }
        let folded = flamegraph::folded(profiles);
        if let Some(path) = &self.paths.folded {
            write_atomically(path, folded.join("\n").as_bytes())?;
        }
        if let Some(path) = &self.paths.flamegraph {
            let svg = flamegraph::svg(&folded, profiles)?;
            write_atomically(path, &svg)?;
        }
        Ok(())
    }
}

fn encoded(profile: &Profile, dir: &Path) -> Result<Vec<u8>, ExportError> {
    pprof::encode(profile).map_err(|source| ExportError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Readers (a `go tool pprof` started while a report is written, a browser
/// reloading the SVG) never see half a file.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), ExportError> {
    let err = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
