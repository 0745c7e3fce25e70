//! The dynamic loader of a process that has just exec'd: where to stop it
//! once its libraries are mapped. At exec the kernel has mapped only the
//! program and its interpreter (the loader, `PT_INTERP`); the loader calls
//! `_dl_debug_state` (glibc's and musl's `r_brk`, where debuggers learn
//! of libraries) when it starts adding objects and when they are all
//! mapped, before any initialiser of theirs runs.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{
    elf,
    read::elf::{ElfFile64, ProgramHeader},
    Endianness,
};

use super::{allocator::function_offsets, procfs};

/// The loader's breakpoint in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderBreakpoint {
    /// The loader, as leaktrace opens it.
    pub path: PathBuf,
    /// File offset of `_dl_debug_state`.
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot read the program of pid {pid}: {source}")]
    Unreadable { pid: u32, source: std::io::Error },
    #[error("pid {0} has an interpreter, but none is mapped")]
    NotMapped(u32),
    #[error("the loader of pid {pid} has no _dl_debug_state")]
    NoBreakpoint { pid: u32 },
}

/// Where process `pid`, stopped at exec, should stop again once its
/// libraries are mapped; None for a statically linked program (all of it
/// is mapped already).
pub fn breakpoint(pid: u32) -> Result<Option<LoaderBreakpoint>, LoaderError> {
    let unreadable = |source| LoaderError::Unreadable { pid, source };
    let exe = format!("/proc/{pid}/exe");
    let program = std::fs::read(&exe).map_err(unreadable)?;
    if !has_interpreter(&program) {
        return Ok(None);
    }
    let exe_inode = std::fs::metadata(&exe).map_err(unreadable)?.ino();
    let maps = procfs::read_maps(pid).map_err(unreadable)?;
    // At exec only the program and its loader are file-backed; the
    // loader is the one with the breakpoint.
    let mut seen = Vec::new();
    for m in &maps {
        if !m.path.as_deref().is_some_and(|p| p.starts_with('/')) {
            continue;
        }
        if m.inode == exe_inode || seen.contains(&m.inode) {
            continue;
        }
        seen.push(m.inode);
        let path = m.open_path(pid);
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        if let Some(offset) =
            function_offsets(&data).and_then(|f| f.get("_dl_debug_state").copied())
        {
            return Ok(Some(LoaderBreakpoint { path, offset }));
        }
    }
    if seen.is_empty() {
        return Err(LoaderError::NotMapped(pid));
    }
    Err(LoaderError::NoBreakpoint { pid })
}

/// Where a command leaktrace starts, `program` (held before its exec),
/// will call its loader's breakpoint: found from the file, since nothing
/// of it is mapped yet. None for a statically linked program, or one whose
/// loader has no `_dl_debug_state`.
pub fn breakpoint_of_program(program: &Path) -> Option<LoaderBreakpoint> {
    let data = std::fs::read(program).ok()?;
    let path = PathBuf::from(interpreter(&data)?);
    let loader = std::fs::read(&path).ok()?;
    let offset = function_offsets(&loader)?.get("_dl_debug_state").copied()?;
    Some(LoaderBreakpoint { path, offset })
}

/// Whether the ELF program `data` names an interpreter (is dynamically
/// linked); a file that does not parse has none.
fn has_interpreter(data: &[u8]) -> bool {
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else {
        return false;
    };
    let endian = file.endian();
    file.elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == elf::PT_INTERP)
}

/// The interpreter the ELF program `data` names (`PT_INTERP`).
fn interpreter(data: &[u8]) -> Option<String> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let endian = file.endian();
    let ph = file
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == elf::PT_INTERP)?;
    let bytes = ph.data(endian, data).ok()?;
    let name = bytes.split(|&b| b == 0).next()?;
    String::from_utf8(name.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_stops_at_its_loaders_breakpoint() {
        // A dynamically linked test binary: its loader is mapped, and
        // glibc's ld.so exports the breakpoint.
        let pid = std::process::id();
        let found = breakpoint(pid).expect("reads itself");
        let found = found.expect("dynamically linked");
        let data = std::fs::read(&found.path).expect("the loader");
        let names = function_offsets(&data).expect("an ELF object");
        assert_eq!(names.get("_dl_debug_state"), Some(&found.offset));
        assert!(found.offset > 0);
    }

    #[test]
    fn this_test_binary_names_the_loader_it_runs_under() {
        let exe = std::fs::read_link("/proc/self/exe").expect("own program");
        let from_file = breakpoint_of_program(&exe).expect("dynamically linked");
        let running = breakpoint(std::process::id())
            .expect("reads itself")
            .expect("dynamically linked");
        assert_eq!(from_file.offset, running.offset);
        assert_eq!(
            std::fs::canonicalize(&from_file.path).expect("the loader"),
            std::fs::canonicalize(&running.path).expect("the loader")
        );
    }

    #[test]
    fn a_static_program_has_no_interpreter() {
        use object::write::{Object, StandardSection};
        let mut obj = Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            Endianness::Little,
        );
        let text = obj.section_id(StandardSection::Text);
        obj.append_section_data(text, &[0xc3], 1);
        let data = obj.write().expect("an object");
        assert!(!has_interpreter(&data));
        let me = std::fs::read("/proc/self/exe").expect("this test binary");
        assert!(has_interpreter(&me));
    }
}
