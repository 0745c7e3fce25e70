//! The target's mapped objects as pprof mappings: address range, file
//! offset and GNU build id per path.

use std::collections::HashMap;

use object::{Object, ObjectSection};

use crate::process::procfs;

/// One mapped object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappedObject {
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
    /// GNU build id, hex ("" when the object has none).
    pub build_id: String,
}

/// Mapped objects by path (as the target sees it).
#[derive(Debug, Clone, Default)]
pub struct ModuleMap {
    objects: HashMap<String, MappedObject>,
}

impl ModuleMap {
    pub fn get(&self, path: &str) -> Option<&MappedObject> {
        self.objects.get(path)
    }

    /// Rereads the target's mappings; keeps what it knew when the target
    /// is gone (the final report), and each object's build id once read.
    pub fn refresh(&mut self, pid: u32) {
        let Ok(maps) = procfs::read_maps(pid) else {
            return;
        };
        let mut next: HashMap<String, MappedObject> = HashMap::new();
        for m in &maps {
            let Some(path) = m.path.as_deref().filter(|p| p.starts_with('/')) else {
                continue;
            };
            let o = next
                .entry(path.to_string())
                .or_insert_with(|| MappedObject {
                    start: m.start,
                    limit: m.end,
                    file_offset: m.file_offset,
                    build_id: String::new(),
                });
            if m.start < o.start {
                o.start = m.start;
                o.file_offset = m.file_offset;
            }
            o.limit = o.limit.max(m.end);
        }
        for (path, o) in next.iter_mut() {
            o.build_id = match self.objects.get(path) {
                Some(old) => old.build_id.clone(),
                None => build_id(pid, path).unwrap_or_default(),
            };
        }
        self.objects = next;
    }
}

/// The GNU build id of `path` in the target's mount namespace, as hex.
fn build_id(pid: u32, path: &str) -> Option<String> {
    let data = std::fs::read(format!("/proc/{pid}/root{path}")).ok()?;
    let file = object::File::parse(&*data).ok()?;
    if let Ok(Some(id)) = file.build_id() {
        return Some(hex(id));
    }
    // Go's linker writes its own note when no GNU one was asked for.
    let section = file.section_by_name(".note.go.buildid")?;
    let note = section.data().ok()?;
    // namesz, descsz, type, "Go\0\0", desc.
    let desc = note.get(16..)?;
    Some(
        String::from_utf8_lossy(desc)
            .trim_end_matches('\0')
            .to_string(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
