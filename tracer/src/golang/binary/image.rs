//! The ELF side of a Go executable: PT_LOAD segments (address <-> file
//! offset), section bytes by name, and `.symtab` lookups.

use std::collections::HashMap;

use object::{
    Object, ObjectKind, ObjectSection, ObjectSegment, ObjectSymbol, RelocationFlags, SegmentFlags,
};

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
    pub writable: bool,
}

/// The loadable segments of the file, which is all that link-time
/// addresses and file offsets need to be translated into each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Segments(Vec<Segment>);

const PF_X: u32 = 1;
const PF_W: u32 = 2;

impl Segments {
    #[cfg(test)]
    pub fn new(segments: Vec<Segment>) -> Self {
        Segments(segments)
    }

    pub fn of(file: &object::File<'_>) -> Self {
        let segments = file
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                let flags = match s.flags() {
                    SegmentFlags::Elf { p_flags } => p_flags,
                    _ => 0,
                };
                Segment {
                    vaddr: s.address(),
                    memsz: s.size(),
                    offset,
                    filesz,
                    executable: flags & PF_X != 0,
                    writable: flags & PF_W != 0,
                }
            })
            .collect();
        Segments(segments)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.0.iter()
    }

    /// The file-backed segment holding `vaddr`.
    fn containing(&self, vaddr: u64) -> Option<&Segment> {
        self.0
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
    }

    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.containing(vaddr).map(|s| s.offset + (vaddr - s.vaddr))
    }

    pub fn file_offset_to_vaddr(&self, off: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|s| off >= s.offset && off - s.offset < s.filesz)
            .map(|s| s.vaddr + (off - s.offset))
    }

    /// Whether `vaddr` lies in an executable segment.
    pub fn is_code(&self, vaddr: u64) -> bool {
        self.0
            .iter()
            .any(|s| s.executable && vaddr >= s.vaddr && vaddr - s.vaddr < s.memsz)
    }

    /// The file bytes from `vaddr` to the end of its segment's file image.
    pub fn rest<'d>(&self, data: &'d [u8], vaddr: u64) -> Option<&'d [u8]> {
        let s = self.containing(vaddr)?;
        let start = usize::try_from(s.offset + (vaddr - s.vaddr)).ok()?;
        let end = usize::try_from(s.offset + s.filesz).ok()?;
        data.get(start..end)
    }

    /// `len` file bytes at `vaddr`, all within one segment.
    pub fn bytes<'d>(&self, data: &'d [u8], vaddr: u64, len: u64) -> Option<&'d [u8]> {
        let rest = self.rest(data, vaddr)?;
        rest.get(..usize::try_from(len).ok()?)
    }

    /// A little-endian pointer-sized word at `vaddr`.
    pub fn word(&self, data: &[u8], vaddr: u64, ptr_size: u8) -> Option<u64> {
        let b = self.bytes(data, vaddr, u64::from(ptr_size))?;
        Some(le_word(b))
    }
}

const R_X86_64_RELATIVE: u32 = 8;

/// Pointers as the loader would see them. In a PIE, a pointer in data is
/// a relative relocation; the Go linker also writes its value into the
/// file, but an external linker (cgo PIE builds) leaves zeros there and
/// only the relocation's addend holds it.
pub(crate) struct Image<'a, 'd> {
    pub data: &'d [u8],
    pub segments: &'a Segments,
    /// r_offset -> addend of R_X86_64_RELATIVE relocations.
    relative: HashMap<u64, u64>,
}

impl<'a, 'd> Image<'a, 'd> {
    pub fn new(file: &object::File<'d>, data: &'d [u8], segments: &'a Segments) -> Self {
        let mut relative = HashMap::new();
        if file.kind() == ObjectKind::Dynamic {
            for (offset, r) in file.dynamic_relocations().into_iter().flatten() {
                let is_relative = matches!(
                    r.flags(),
                    RelocationFlags::Elf { r_type } if r_type == R_X86_64_RELATIVE
                );
                // REL-style relocations keep the addend in the file already.
                if is_relative && !r.has_implicit_addend() {
                    relative.insert(offset, r.addend() as u64);
                }
            }
        }
        Image {
            data,
            segments,
            relative,
        }
    }

    /// The pointer-sized word at `vaddr`, relocated to link-time values.
    pub fn word(&self, vaddr: u64, ptr_size: u8) -> Option<u64> {
        match self.relative.get(&vaddr) {
            Some(&addend) => Some(addend),
            None => self.segments.word(self.data, vaddr, ptr_size),
        }
    }

    /// Addresses whose relocation makes them point at `target`.
    pub fn relocated_pointers_to(&self, target: u64) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .relative
            .iter()
            .filter(|&(_, &a)| a == target)
            .map(|(&off, _)| off)
            .collect();
        v.sort_unstable();
        v
    }
}

/// A little-endian unsigned integer of 1 to 8 bytes.
pub(crate) fn le_word(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .rev()
        .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
}

/// A section's address and file bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SectionData<'d> {
    pub vaddr: u64,
    pub bytes: &'d [u8],
}

/// The first of `names` that exists as a section with file contents.
pub(crate) fn section<'d>(file: &object::File<'d>, names: &[&str]) -> Option<SectionData<'d>> {
    names.iter().find_map(|name| {
        let s = file.section_by_name(name)?;
        let bytes = s.data().ok()?;
        Some(SectionData {
            vaddr: s.address(),
            bytes,
        })
    })
}

/// The section (by address range) that contains `vaddr`, if the file has
/// section headers; narrower than a segment.
pub(crate) fn section_containing<'d>(
    file: &object::File<'d>,
    vaddr: u64,
) -> Option<SectionData<'d>> {
    file.sections().find_map(|s| {
        let start = s.address();
        if start == 0 || vaddr < start || vaddr - start >= s.size() {
            return None;
        }
        let bytes = s.data().ok()?;
        Some(SectionData {
            vaddr: start,
            bytes,
        })
    })
}

/// Address and size of a defined `.symtab` symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sym {
    pub addr: u64,
    pub size: u64,
}

/// Looks up `wanted` names in `.symtab` in one pass (a Go binary has tens
/// of thousands of symbols; we need a handful).
pub(crate) fn symbols<'n>(file: &object::File<'_>, wanted: &[&'n str]) -> HashMap<&'n str, Sym> {
    let mut found = HashMap::new();
    if file.symbol_table().is_none() {
        return found;
    }
    for sym in file.symbols() {
        if sym.is_undefined() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if let Some(&w) = wanted.iter().find(|&&w| w == name) {
            found.entry(w).or_insert(Sym {
                addr: sym.address(),
                size: sym.size(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs() -> Segments {
        Segments::new(vec![
            Segment {
                vaddr: 0x400000,
                memsz: 0x2000,
                offset: 0,
                filesz: 0x2000,
                executable: true,
                writable: false,
            },
            Segment {
                vaddr: 0x603000,
                memsz: 0x3000,
                offset: 0x2000,
                filesz: 0x1000,
                executable: false,
                writable: true,
            },
        ])
    }

    #[test]
    fn translation() {
        let s = segs();
        assert_eq!(s.vaddr_to_file_offset(0x401234), Some(0x1234));
        assert_eq!(s.vaddr_to_file_offset(0x603010), Some(0x2010));
        // .bss: mapped but not in the file.
        assert_eq!(s.vaddr_to_file_offset(0x604010), None);
        assert_eq!(s.file_offset_to_vaddr(0x2010), Some(0x603010));
        assert_eq!(s.file_offset_to_vaddr(0x1234), Some(0x401234));
        assert_eq!(s.file_offset_to_vaddr(0x3000), None);
        assert!(s.is_code(0x401000));
        assert!(!s.is_code(0x603000));
    }

    #[test]
    fn words() {
        let s = segs();
        let mut data = vec![0u8; 0x3000];
        data[0x2008..0x2010].copy_from_slice(&0x1122334455667788u64.to_le_bytes());
        assert_eq!(s.word(&data, 0x603008, 8), Some(0x1122334455667788));
        assert_eq!(s.word(&data, 0x603008, 4), Some(0x55667788));
        assert_eq!(s.word(&data, 0x603ffc, 8), None);
        assert_eq!(le_word(&[1, 2]), 0x0201);
    }
}
