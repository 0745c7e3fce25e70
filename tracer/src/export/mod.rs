//! Reports in the formats of the tools users already read: pprof files
//! ([`pprof`]), folded stacks and flame graphs ([`flamegraph`]), and a live
//! HTTP endpoint serving pprof and Prometheus metrics ([`server`],
//! [`metrics`]).
//!
//! Every report the session builds with exports enabled carries
//! [`Profiles`] (built in `report`): the whole heap by stack (not only the top sites a text
//! report shows) and the goroutines by creation stack; the [`Exporter`]
//! writes them where the command line asked.

pub mod flamegraph;
pub mod metrics;
mod modules;
pub mod pprof;
mod profile_proto;
pub mod server;

use std::path::{Path, PathBuf};

pub use modules::ModuleMap;
pub use profile_proto::Profile;

use crate::report::{
    profiles::{GoroutineSample, HeapSource, Profiles},
    Report,
};

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
    #[error("encoding a pprof profile: {0}")]
    Encode(std::io::Error),
    #[error("{flag} {path}: cannot write there: {source}")]
    Unwritable {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
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

    /// Checks before attach that every file can be written: the pprof
    /// directory is created if missing.
    pub fn check(&self) -> Result<(), ExportError> {
        if let Some(dir) = &self.pprof_dir {
            let err = |source| ExportError::Unwritable {
                flag: "--pprof-dir",
                path: dir.clone(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(err)?;
            probe_write(&dir.join(".leaktrace-check")).map_err(err)?;
        }
        for (flag, path) in [
            ("--folded", &self.folded),
            ("--flamegraph", &self.flamegraph),
        ] {
            if let Some(path) = path {
                probe_write(path).map_err(|source| ExportError::Unwritable {
                    flag,
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// Writes and removes a temporary next to `path`.
fn probe_write(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, b"")?;
    std::fs::remove_file(&tmp)
}

/// Writes each report's profiles to files, and hands them to the live
/// endpoint.
pub struct Exporter {
    paths: ExportPaths,
    pid: u32,
    modules: ModuleMap,
    live: Option<server::Shared>,
    /// One of several processes (`--container`): files are named by pid,
    /// the endpoint serves it under `?pid=N`.
    one_of_many: bool,
    /// The last report's profiles and metrics, for a container's merged
    /// view.
    last: Option<(Profiles, String)>,
}

impl Exporter {
    pub fn new(paths: ExportPaths, pid: u32, live: Option<server::Shared>) -> Self {
        Exporter {
            paths,
            pid,
            modules: ModuleMap::default(),
            live,
            one_of_many: false,
            last: None,
        }
    }

    /// An exporter for one of a container's processes.
    pub fn one_of_many(mut self) -> Self {
        self.one_of_many = true;
        self
    }

    /// The pprof file of report `seq`: `heap-7.pb.gz`, or `heap-PID-7.pb.gz`
    /// for one of many.
    fn pprof_name(&self, kind: &str, seq: u64) -> String {
        if self.one_of_many {
            format!("{kind}-{}-{seq}.pb.gz", self.pid)
        } else {
            format!("{kind}-{seq}.pb.gz")
        }
    }

    /// `path` as this exporter writes it: `flame.svg` becomes
    /// `flame-PID.svg` for one of many.
    fn named(&self, path: &Path) -> PathBuf {
        if !self.one_of_many {
            return path.to_path_buf();
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stem, ext) = match name.split_once('.') {
            Some((stem, ext)) => (stem.to_string(), format!(".{ext}")),
            None => (name.clone(), String::new()),
        };
        path.with_file_name(format!("{stem}-{}{ext}", self.pid))
    }

    /// The last report's profiles, the module map they were built with and
    /// its metrics.
    pub fn last(&self) -> Option<(&Profiles, &ModuleMap, &str)> {
        self.last
            .as_ref()
            .map(|(p, m)| (p, &self.modules, m.as_str()))
    }

    /// Writes what `report` holds (it carries [`Profiles`] when the
    /// builder was asked for them).
    pub fn write(&mut self, report: &Report) -> Result<(), ExportError> {
        let Some(profiles) = &report.profiles else {
            return Ok(());
        };
        self.modules.refresh(self.pid);
        let metrics = metrics::render(report, metrics::OwnUsage::now());
        self.write_profiles(report.seq, profiles, metrics)
    }

    /// Writes report `seq`'s `profiles`, and serves them with `metrics`.
    pub fn write_profiles(
        &mut self,
        seq: u64,
        profiles: &Profiles,
        metrics: String,
    ) -> Result<(), ExportError> {
        let heap = encoded(&pprof::heap(profiles, &self.modules))?;
        let goroutine = match &profiles.goroutines {
            Some(g) => Some(encoded(&pprof::goroutines(profiles, g, &self.modules))?),
            None => None,
        };
        if let Some(dir) = &self.paths.pprof_dir {
            write_atomically(&dir.join(self.pprof_name("heap", seq)), &heap)?;
            if let Some(g) = &goroutine {
                write_atomically(&dir.join(self.pprof_name("goroutine", seq)), g)?;
            }
        }
        let folded = flamegraph::folded(profiles);
        if let Some(path) = &self.paths.folded {
            let mut text = folded.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            write_atomically(&self.named(path), text.as_bytes())?;
        }
        if let Some(path) = &self.paths.flamegraph {
            let svg = flamegraph::svg(&folded, profiles)?;
            write_atomically(&self.named(path), &svg)?;
        }
        if let Some(live) = &self.live {
            if self.one_of_many {
                live.publish_process(self.pid, heap, goroutine, metrics.clone());
            } else {
                live.publish(heap, goroutine, metrics.clone());
            }
        }
        self.last = Some((profiles.clone(), metrics));
        Ok(())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let (true, Some(live)) = (self.one_of_many, &self.live) {
            live.forget_process(self.pid);
        }
    }
}

/// The merged view of several processes' last reports (`--container`):
/// one heap profile (samples labelled by `pid`) and one `/metrics`.
pub fn publish_merged(
    live: &server::Shared,
    parts: &[(&Profiles, &ModuleMap, &str)],
) -> Result<(), ExportError> {
    let profiles: Vec<(&Profiles, &ModuleMap)> = parts.iter().map(|(p, m, _)| (*p, *m)).collect();
    let heap = encoded(&pprof::heap_of(&profiles))?;
    let texts: Vec<String> = parts.iter().map(|(_, _, t)| t.to_string()).collect();
    live.publish(heap, None, metrics::merge(&texts));
    Ok(())
}

/// As [`publish_merged`], for one container's processes (served with
/// `?container=NAME`).
pub fn publish_container(
    live: &server::Shared,
    name: &str,
    parts: &[(&Profiles, &ModuleMap, &str)],
) -> Result<(), ExportError> {
    let profiles: Vec<(&Profiles, &ModuleMap)> = parts.iter().map(|(p, m, _)| (*p, *m)).collect();
    let heap = encoded(&pprof::heap_of(&profiles))?;
    let texts: Vec<String> = parts.iter().map(|(_, _, t)| t.to_string()).collect();
    live.publish_container(name, heap, metrics::merge(&texts));
    Ok(())
}

fn encoded(profile: &Profile) -> Result<Vec<u8>, ExportError> {
    pprof::encode(profile).map_err(ExportError::Encode)
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
