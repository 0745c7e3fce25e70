//! Unwind tables for the probes' stack walk (`--unwind`): built in
//! userspace from each executable object a traced process maps, once per
//! object, and kept in kernel maps the probes search per frame.
//!
//! - [`eh_frame`]: an object's rows from its `.eh_frame`.
//! - [`UnwindTables`]: the kernel maps (rows, rules, per-process mappings)
//!   and what is in them.

pub mod eh_frame;
mod kernel;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

pub use kernel::{UnwindSummary, UnwindTables};

/// Why an object's table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("malformed unwind information: {0}")]
    Parse(String),
    #[error("cannot map the kernel's unwind-row table: {0}")]
    Mmap(std::io::Error),
    #[error("kernel unwind table: {0}")]
    Map(String),
}

/// An object file, identified as /proc names it (device and inode), plus
/// its path and size so a file replaced in place is not mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub dev: String,
    pub inode: u64,
    pub size: u64,
}

/// How an object's frames are walked.
#[derive(Debug, Clone)]
pub enum ObjectUnwind {
    /// By these rows.
    Table(Arc<eh_frame::Rows>),
    /// By frame pointers (Go code).
    FramePointers,
    /// Not at all: no unwind information (or unreadable).
    Nothing,
}

/// Parsed objects, shared by every traced process of this leaktrace (each
/// `--container` process has kernel tables of its own, but an object is
/// parsed once).
fn parsed() -> &'static Mutex<HashMap<ObjectKey, ObjectUnwind>> {
    static PARSED: OnceLock<Mutex<HashMap<ObjectKey, ObjectUnwind>>> = OnceLock::new();
    PARSED.get_or_init(Default::default)
}

/// What an object's frames are walked by, parsing it on first sight.
pub fn object_unwind(key: &ObjectKey, data: &[u8]) -> ObjectUnwind {
    if let Some(known) = parsed().lock().ok().and_then(|m| m.get(key).cloned()) {
        return known;
    }
    let unwind = match object::File::parse(data) {
        Ok(file) if crate::golang::is_go_object(&file) => ObjectUnwind::FramePointers,
        Ok(file) => match eh_frame::rows_of(&file) {
            Ok(Some(rows)) => ObjectUnwind::Table(Arc::new(rows)),
            Ok(None) | Err(_) => ObjectUnwind::Nothing,
        },
        Err(_) => ObjectUnwind::Nothing,
    };
    if let Ok(mut m) = parsed().lock() {
        m.insert(key.clone(), unwind.clone());
    }
    unwind
}
