//! Helpers for leaktrace's end-to-end tests: build the fixtures (once per
//! run, shared by every test binary), start them, run the real `leaktrace`
//! binary against them and read its JSON reports.
//!
//! These tests load real eBPF programs into the running kernel: they need
//! root, which `cargo xtask test` and CI provide.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver},
    thread,
    time::Duration,
};

mod c_heap;
mod container;
mod docker;
mod fixtures;
mod go;
mod go_versions;
mod kernel;
mod leaktrace;
mod pprof;
mod process;
mod reachability;
mod report;
mod valgrind;

pub use c_heap::*;
pub use container::*;
pub use docker::*;
pub use fixtures::*;
pub use go::*;
pub use go_versions::*;
pub use kernel::*;
pub use leaktrace::*;
pub use pprof::*;
pub use process::*;
pub use reachability::*;
pub use report::*;
pub use valgrind::*;

pub const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// target/tmp/NAME-PID, empty.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target/tmp")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The leaktrace binary under test (built by `cargo xtask test`).
pub fn leaktrace_bin() -> PathBuf {
    let bin = std::env::var_os("LEAKTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/leaktrace"));
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// Lines of `stream`, read on a thread of their own.
pub(crate) fn line_reader(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_oldest_first() {
        let key = |v: &str| -> Vec<u32> {
            v.split('.')
                .map(|n| n.parse().expect("numeric version"))
                .collect()
        };
        assert!(GO_VERSIONS.windows(2).all(|w| key(w[0]) < key(w[1])));
    }
}
