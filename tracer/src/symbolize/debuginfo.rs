//! Separate debug files of the target's objects, looked up inside the
//! target's own root (`/proc/PID/root`), so that a container's debug files
//! are found even though the host has none: by build id
//! (`/usr/lib/debug/.build-id/ab/cdef….debug`) and by `.gnu_debuglink`
//! (next to the object, in its `.debug/` directory, and under
//! `/usr/lib/debug/<its directory>`), as GDB looks for them.

use std::{
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment};

/// A separate debug file and how to address it. Debug files keep the
/// object's virtual addresses but not its file layout, so addresses are
/// looked up by virtual address, translated with the object's segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugFile {
    pub path: PathBuf,
    /// The object's loadable segments: (file offset, virtual address, size).
    segments: Vec<(u64, u64, u64)>,
}

impl DebugFile {
    /// The virtual address of a file offset in the object.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(off, _, size)| offset >= off && offset - off < size)
            .map(|&(off, vaddr, _)| vaddr + (offset - off))
    }
}

/// Where the debug file of the object at `object_path` (opened through
/// `open_path`) lives under `root`, if it has no DWARF of its own.
pub fn find(root: &Path, object_path: &str, open_path: &Path) -> Option<DebugFile> {
    let data = fs::read(open_path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    if file.section_by_name(".debug_info").is_some() {
        return None;
    }
    let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
    let link = file
        .gnu_debuglink()
        .ok()
        .flatten()
        .and_then(|(name, _crc)| std::str::from_utf8(name).ok().map(str::to_string));
    let path = candidates(object_path, build_id.as_deref(), link.as_deref())
        .into_iter()
        .map(|rel| root.join(rel.strip_prefix("/").unwrap_or(&rel)))
        .find(|p| p.is_file() && same_build(p, build_id.as_deref()))?;
    let segments = file
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, s.address(), size)
        })
        .collect();
    Some(DebugFile { path, segments })
}

/// Candidate paths, as the target sees them, best first.
fn candidates(object_path: &str, build_id: Option<&[u8]>, link: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        out.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Some(link) = link {
        let dir = Path::new(object_path).parent().unwrap_or(Path::new("/"));
        out.push(dir.join(link));
        out.push(dir.join(".debug").join(link));
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        out.push(Path::new("/usr/lib/debug").join(rel).join(link));
    }
    // The object itself is no debug file of its own.
    out.retain(|p| p != Path::new(object_path));
    out
}

/// A debug file belongs to the object when their build ids agree (or the
/// object has none to compare).
fn same_build(debug: &Path, build_id: Option<&[u8]>) -> bool {
    let Some(want) = build_id else {
        return true;
    };
    let Ok(data) = fs::read(debug) else {
        return false;
    };
    object::File::parse(&*data)
        .ok()
        .and_then(|f| f.build_id().ok().flatten().map(|id| id == want))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_gdb_conventions() {
        let c = candidates(
            "/app/bin/server",
            Some(&[0xab, 0xcd, 0xef, 0x01]),
            Some("server.debug"),
        );
        let c: Vec<&str> = c.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(
            c,
            vec![
                "/usr/lib/debug/.build-id/ab/cdef01.debug",
                "/app/bin/server.debug",
                "/app/bin/.debug/server.debug",
                "/usr/lib/debug/app/bin/server.debug",
            ]
        );
        // A debuglink naming the object itself is skipped.
        assert!(candidates("/app/x", None, Some("x"))
            .iter()
            .all(|p| p != Path::new("/app/x")));
    }

    #[test]
    fn file_offsets_map_to_virtual_addresses() {
        let d = DebugFile {
            path: PathBuf::from("/x.debug"),
            segments: vec![
                (0, 0, 0x1000),
                (0x1000, 0x1000, 0xa11),
                (0x2dc8, 0x3dc8, 0x308),
            ],
        };
        assert_eq!(d.vaddr_of(0x1234), Some(0x1234));
        assert_eq!(d.vaddr_of(0x2dd0), Some(0x3dd0));
        assert_eq!(d.vaddr_of(0x1a11), None);
    }

    #[test]
    fn objects_with_their_own_dwarf_need_no_debug_file() {
        let me = std::env::current_exe().expect("test binary");
        assert_eq!(find(Path::new("/"), &me.display().to_string(), &me), None);
    }
}
