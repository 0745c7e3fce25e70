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

/// How the probes walk user stacks (`--unwind`): by the unwind tables
/// built from each object and by frame pointers in Go code (auto), by
/// tables only (dwarf), or by frame pointers only (fp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindMode {
    Auto,
    Dwarf,
    Fp,
}

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

/// What the walk needs of one object file.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub unwind: ObjectUnwind,
    /// Executable PT_LOAD segments: (file offset, file size, ELF address).
    pub exec_segments: Vec<(u64, u64, u64)>,
}

impl ObjectInfo {
    /// Runtime address minus ELF address, for a mapping of this object
    /// that starts at `start` and maps `file_offset..file_offset + len`.
    pub fn bias(&self, start: u64, file_offset: u64, len: u64) -> Option<u64> {
        self.exec_segments
            .iter()
            .find(|(off, size, _)| *off < file_offset + len && file_offset < off + size)
            .map(|(off, _, vaddr)| {
                start
                    .wrapping_sub(file_offset)
                    .wrapping_add(*off)
                    .wrapping_sub(*vaddr)
            })
    }
}

/// Parsed objects, shared by every traced process of this leaktrace (each
/// `--container` process has kernel tables of its own, but an object is
/// read and parsed once).
fn parsed() -> &'static Mutex<HashMap<ObjectKey, Arc<ObjectInfo>>> {
    static PARSED: OnceLock<Mutex<HashMap<ObjectKey, Arc<ObjectInfo>>>> = OnceLock::new();
    PARSED.get_or_init(Default::default)
}

/// What an object's frames are walked by, reading and parsing the file at
/// `path` on first sight; `None` when it cannot be read or parsed.
pub fn object_info(key: &ObjectKey, path: &std::path::Path) -> Option<Arc<ObjectInfo>> {
    if let Some(known) = parsed().lock().ok().and_then(|m| m.get(key).cloned()) {
        return Some(known);
    }
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let unwind = if crate::golang::is_go_object(&file) {
        ObjectUnwind::FramePointers
    } else {
        match eh_frame::rows_of(&file) {
            Ok(Some(rows)) => ObjectUnwind::Table(Arc::new(rows)),
            Ok(None) | Err(_) => ObjectUnwind::Nothing,
        }
    };
    use object::{Object, ObjectSegment, SegmentFlags};
    let exec_segments = file
        .segments()
        .filter(|s| match s.flags() {
            SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
            _ => true,
        })
        .map(|s| {
            let (off, size) = s.file_range();
            (off, size, s.address())
        })
        .collect();
    let info = Arc::new(ObjectInfo {
        unwind,
        exec_segments,
    });
    if let Ok(mut m) = parsed().lock() {
        m.insert(key.clone(), info.clone());
    }
    Some(info)
}

/// The key of the file at `path`, as /proc/PID/maps would name it.
pub fn key_of(path: &std::path::Path) -> Option<ObjectKey> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    let dev = md.dev();
    Some(ObjectKey {
        dev: format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev)),
        inode: md.ino(),
        size: md.len(),
    })
}
