//! `runtime.firstmoduledata`, the linker-built record that ties the
//! pclntab to the rest of the image. We need two of its fields: `text`
//! (the base of function entry offsets; go1.26+ no longer writes it into
//! the pclntab header) and `gofunc` (the base of funcdata offsets, where
//! the inlining trees are).
//!
//! Without `.symtab` it is found by its first field, a pointer to the
//! pclntab header, and checked against the text range fields around it.

use object::{Object, ObjectSection};

use super::image::Image;

/// Word indices in moduledata (runtime/symtab.go): pcHeader, then six
/// slices (three words each), findfunctab, minpc, maxpc, text, etext, ...
const MINPC: u64 = 20;
const MAXPC: u64 = 21;
const TEXT: u64 = 22;
const ETEXT: u64 = 23;

/// Index of `gofunc`: go1.27 added typedesclen, itaboffset and itabsize
/// before it.
fn gofunc_index(minor: Option<u32>) -> u64 {
    match minor {
        Some(m) if m >= 27 => 43,
        _ => 40,
    }
}

/// Sections the linker puts moduledata in (go1.26+: .go.module; before:
/// .noptrdata), most likely first.
const SECTIONS: &[&str] = &[".go.module", ".noptrdata", ".data.rel.ro", ".data"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModuleData {
    pub text: u64,
    pub gofunc: Option<u64>,
}

pub(crate) struct Search<'a, 'd> {
    pub file: &'a object::File<'d>,
    pub image: &'a Image<'a, 'd>,
    pub ptr_size: u8,
    pub minor: Option<u32>,
}

impl Search<'_, '_> {
    /// moduledata at `symbol` if the symbol table has it, else wherever a
    /// pointer to `pclntab` with plausible text fields after it is.
    pub fn find(&self, symbol: Option<u64>, pclntab: u64) -> Option<ModuleData> {
        if let Some(m) = symbol.and_then(|a| self.check(a, pclntab)) {
            return Some(m);
        }
        let relocated = self.image.relocated_pointers_to(pclntab);
        if let Some(m) = relocated.into_iter().find_map(|a| self.check(a, pclntab)) {
            return Some(m);
        }
        for name in SECTIONS {
            let Some(s) = self.file.section_by_name(name) else {
                continue;
            };
            let Ok(bytes) = s.data() else { continue };
            if let Some(m) = self.scan(s.address(), bytes, pclntab) {
                return Some(m);
            }
        }
        // No section headers at all: every writable segment.
        let segments = self.image.segments;
        segments.iter().filter(|s| s.writable).find_map(|s| {
            let bytes = segments.bytes(self.image.data, s.vaddr, s.filesz)?;
            self.scan(s.vaddr, bytes, pclntab)
        })
    }

    fn scan(&self, base: u64, bytes: &[u8], pclntab: u64) -> Option<ModuleData> {
        let ps = u64::from(self.ptr_size);
        let skip = (ps - base % ps) % ps;
        let needle = &pclntab.to_le_bytes()[..usize::from(self.ptr_size)];
        bytes
            .get(usize::try_from(skip).ok()?..)?
            .chunks_exact(usize::from(self.ptr_size))
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .find_map(|(i, _)| self.check(base + skip + i as u64 * ps, pclntab))
    }

    /// The fields of a moduledata candidate at `addr`, if they make sense.
    fn check(&self, addr: u64, pclntab: u64) -> Option<ModuleData> {
        let word = |i: u64| {
            self.image
                .word(addr + i * u64::from(self.ptr_size), self.ptr_size)
        };
        if word(0)? != pclntab {
            return None;
        }
        let (minpc, maxpc, text, etext) = (word(MINPC)?, word(MAXPC)?, word(TEXT)?, word(ETEXT)?);
        let segments = self.image.segments;
        let plausible = text != 0
            && text <= minpc
            && minpc <= maxpc
            && maxpc <= etext
            && segments.is_code(text)
            && segments.is_code(maxpc.saturating_sub(1).max(text));
        if !plausible {
            return None;
        }
        let gofunc =
            word(gofunc_index(self.minor)).filter(|&g| segments.vaddr_to_file_offset(g).is_some());
        Some(ModuleData { text, gofunc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gofunc_moved_in_go127() {
        assert_eq!(gofunc_index(Some(21)), 40);
        assert_eq!(gofunc_index(Some(26)), 40);
        assert_eq!(gofunc_index(Some(27)), 43);
        assert_eq!(gofunc_index(None), 40);
    }
}
