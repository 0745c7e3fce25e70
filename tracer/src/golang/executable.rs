//! The target's main executable, and whether it is a Go program.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::binary::{self, GoBinary, GoError};

/// A Go executable to probe and read the runtime of.
pub struct GoTarget {
    pub binary: Arc<GoBinary>,
    /// Path through which leaktrace opens and probes it.
    pub path: PathBuf,
    /// Path as the target sees it, for messages.
    pub display: String,
    /// Identifies its mappings in /proc/PID/maps.
    pub inode: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutableError {
    #[error("cannot read the target's executable {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{display} is a Go program leaktrace cannot trace: {source}")]
    Go { display: String, source: GoError },
}

/// The executable of a running process (through /proc/PID/exe, which works
/// across mount namespaces and for deleted files).
pub fn of_process(pid: u32) -> Result<Option<GoTarget>, ExecutableError> {
    let path = PathBuf::from(format!("/proc/{pid}/exe"));
    let display = fs::read_link(&path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.display().to_string());
    inspect(&path, display)
}

/// An executable file about to be run.
pub fn of_program(program: &Path) -> Result<Option<GoTarget>, ExecutableError> {
    inspect(program, program.display().to_string())
}

fn inspect(path: &Path, display: String) -> Result<Option<GoTarget>, ExecutableError> {
    let read_err = |source| ExecutableError::Read {
        path: display.clone(),
        source,
    };
    let data = fs::read(path).map_err(read_err)?;
    let inode = fs::metadata(path).map_err(read_err)?.ino();
    match binary::inspect(&data) {
        Ok(Some(binary)) => Ok(Some(GoTarget {
            binary: Arc::new(binary),
            path: path.to_path_buf(),
            display,
            inode,
        })),
        Ok(None) => Ok(None),
        Err(source) => Err(ExecutableError::Go { display, source }),
    }
}
