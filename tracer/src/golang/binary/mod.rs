//! What a Go executable's bytes tell leaktrace: the Go version, where to
//! put the goroutine probes (every RET of `runtime.newproc1`, the entry of
//! `runtime.gdestroy`/`goexit0`), the runtime struct layouts the probes and
//! the out-of-process reader need, the runtime's data symbols, and a
//! pc -> function/file/line symbolizer from the pclntab that works on
//! stripped binaries.
//!
//! Addresses are link-time virtual addresses unless a name says "file
//! offset". Only linux/amd64 binaries from Go 1.20+ (pclntab magic
//! 0xfffffff1) are accepted; the layout table covers go1.21 to go1.27.

mod buildinfo;
mod code_refs;
mod creation;
mod disasm;
mod dwarf;
mod image;
mod layout;
mod moduledata;
mod pclntab;
mod pcvalue;
mod vars;

use object::{Architecture, BinaryFormat, Object, ObjectSection};

pub use buildinfo::BuildInfoError;
pub use creation::{CreationProbe, NewG};
pub use layout::{go_minor, GLayout, LayoutSource, RuntimeFields};
pub use pclntab::PclntabError;
pub use vars::RuntimeVars;

use image::{Image, SectionData, Segments};

use crate::placement::{self, Reads};

/// The exit probe reads `gp` from RAX, nothing on the stack.
const EXIT_READS: Reads = Reads {
    args: &[iced_x86::Register::RAX],
    skip_null_check: false,
    stack: false,
};
use pclntab::{GoFunc, Pclntab};

const GDESTROY: &str = "runtime.gdestroy";
const GOEXIT0: &str = "runtime.goexit0";
/// `gdestroy` (which also sees coroutine exits) exists from go1.22.
const GDESTROY_SINCE_MINOR: u32 = 22;

const SYM_TEXT: &str = "runtime.text";
const SYM_MODULEDATA: &str = "runtime.firstmoduledata";
const SYM_GOFUNC: &str = "go:func.*";
const SYM_PCLNTAB: &str = "runtime.pclntab";
const SYM_EPCLNTAB: &str = "runtime.epclntab";

const PCLNTAB_SECTIONS: &[&str] = &[".gopclntab", ".data.rel.ro.gopclntab"];
const BUILDINFO_SECTION: &str = ".go.buildinfo";

#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("Go programs for {0} are not supported: leaktrace traces x86-64 (amd64) Go programs")]
    UnsupportedArch(String),
    #[error("the Go build info (.go.buildinfo) is missing, so the Go version is unknown")]
    NoBuildInfo,
    #[error(transparent)]
    BuildInfo(#[from] BuildInfoError),
    #[error("the Go function table (.gopclntab) is missing")]
    NoPclntab,
    #[error(transparent)]
    Pclntab(#[from] PclntabError),
    #[error("cannot find where Go code starts (no runtime.text, moduledata or .text)")]
    NoText,
    #[error("{0} is not in the Go function table")]
    MissingFunction(&'static str),
    #[error("{0} is not inside the file's loadable segments")]
    NotInFile(&'static str),
    #[error(
        "no RET instruction found in runtime.newproc1, so goroutine creation cannot be probed"
    )]
    NoReturn,
    #[error("{version} is not supported without DWARF ({why}); leaktrace knows the runtime layouts of go1.{min} to go1.{max}; for other releases build the program without -ldflags=-s/-w so that it keeps its DWARF")]
    UnsupportedVersion {
        version: String,
        why: String,
        min: u32,
        max: u32,
    },
}

/// One source frame of a pc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A Go executable, analysed. Owns everything it needs (no borrow of the
/// file's bytes), so it can be shared across threads.
#[derive(Debug)]
pub struct GoBinary {
    /// "go1.25.5", from .go.buildinfo.
    pub version: String,
    pub has_symtab: bool,
    pub has_dwarf: bool,
    pub g: GLayout,
    pub g_layout_from: LayoutSource,
    /// Where goroutine creation is seen (link-time addresses).
    pub creation_probes: Vec<CreationProbe>,
    /// The goroutine exit function, and the link-time address of its entry.
    pub exit_function: (&'static str, u64),
    /// File offset of the exit probe: the first instruction the kernel
    /// emulates on the function's entry path before `gp` (RAX) changes.
    pub exit_probe: u64,
    pub vars: RuntimeVars,
    pub fields: RuntimeFields,
    pub fields_from: LayoutSource,
    pclntab: Pclntab,
    segments: Segments,
}

impl GoBinary {
    /// Entry and end address of the function called `name`.
    pub fn function(&self, name: &str) -> Option<(u64, u64)> {
        self.pclntab.by_name(name).map(|f| (f.entry, f.end))
    }

    /// Source frames of `pc`, innermost (inlined) first; empty if `pc` is
    /// not in Go code. `pc` is used as given: pass a return address minus
    /// one to get the call's line.
    pub fn symbolize(&self, pc: u64) -> Vec<GoFrame> {
        self.pclntab.symbolize(pc)
    }

    pub fn file_offset_to_vaddr(&self, off: u64) -> Option<u64> {
        self.segments.file_offset_to_vaddr(off)
    }

    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments.vaddr_to_file_offset(vaddr)
    }

    /// Whether `name` is a wrapper the compiler generates for a `go f(args)`
    /// statement: `caller.gowrapN` from go1.22, `caller.funcN` on go1.21
    /// (where a small user closure looks the same; [`Self::wrapped_function`]
    /// only resolves those that make exactly one call outside the runtime).
    pub fn is_go_statement_wrapper(&self, name: &str) -> bool {
        let Some((_, last)) = name.rsplit_once('.') else {
            return false;
        };
        let numbered = |prefix: &str| {
            last.strip_prefix(prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        numbered("gowrap") || (layout::go_minor(&self.version) == Some(21) && numbered("func"))
    }

    /// The one non-runtime function the wrapper whose machine code is
    /// `code` (at address `entry`) runs: what the goroutine really runs.
    /// Either the wrapper calls it, or it was inlined into the wrapper and
    /// is the innermost frame at the wrapper's calls into the runtime.
    pub fn wrapped_function(&self, code: &[u8], entry: u64) -> Option<String> {
        let wrapper = self.symbolize(entry).pop()?.function;
        let user = |f: &str| f != wrapper && !f.starts_with("runtime.");
        let mut callees =
            disasm::x86_64_calls(code, entry)
                .into_iter()
                .filter_map(|(at, target)| {
                    let inlined = self
                        .symbolize(at)
                        .into_iter()
                        .map(|f| f.function)
                        .find(|f| user(f));
                    inlined.or_else(|| {
                        let callee = self.symbolize(target?).pop()?.function;
                        user(&callee).then_some(callee)
                    })
                });
        let first = callees.next()?;
        callees.all(|f| f == first).then_some(first)
    }

    /// Whether inlined frames can be expanded (the inlining trees were
    /// found).
    pub fn expands_inlining(&self) -> bool {
        self.pclntab.has_inline_trees()
    }
}

/// Analyses an executable. `Ok(None)` if it is not a Go program (no Go
/// build info and no Go function table, or not an ELF file at all).
pub fn inspect(data: &[u8]) -> Result<Option<GoBinary>, GoError> {
    analyse(data, VarsFrom::SymbolsThenCode)
}

/// As [`inspect`], but with the runtime's variables found only the way a
/// stripped binary allows (through the code that uses them): lets tests
/// check that way against the symbols of unstripped builds.
pub fn inspect_as_stripped(data: &[u8]) -> Result<Option<GoBinary>, GoError> {
    analyse(data, VarsFrom::CodeOnly)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum VarsFrom {
    SymbolsThenCode,
    CodeOnly,
}

fn analyse(data: &[u8], vars_from: VarsFrom) -> Result<Option<GoBinary>, GoError> {
    let Ok(file) = object::File::parse(data) else {
        return Ok(None);
    };
    if file.format() != BinaryFormat::Elf {
        return Ok(None);
    }
    let segments = Segments::of(&file);
    // Without section headers (sstrip), fall back to searching segments.
    let headerless = !file.sections().any(|s| s.size() > 0);
    let buildinfo = find_buildinfo(&file, &segments, data, headerless);
    let pcln_section = image::section(&file, PCLNTAB_SECTIONS);
    if buildinfo.is_none() && pcln_section.is_none() {
        return Ok(None);
    }
    if file.architecture() != Architecture::X86_64 {
        return Err(GoError::UnsupportedArch(format!(
            "{:?}",
            file.architecture()
        )));
    }
    let version = buildinfo::version(buildinfo.ok_or(GoError::NoBuildInfo)?)?;
    let minor = layout::go_minor(&version);

    let mut wanted = vars::NAMES.to_vec();
    wanted.extend_from_slice(&[
        SYM_TEXT,
        SYM_MODULEDATA,
        SYM_GOFUNC,
        SYM_PCLNTAB,
        SYM_EPCLNTAB,
    ]);
    let syms = image::symbols(&file, &wanted);
    let sym = |name: &str| syms.get(name).map(|s| s.addr);
    let image = Image::new(&file, data, &segments);

    // An external linker merges .data.rel.ro.gopclntab into .data.rel.ro
    // (cgo PIE builds): then the symbols, or a search, find it.
    let pcln = pcln_section
        .or_else(|| {
            let (start, end) = (sym(SYM_PCLNTAB)?, sym(SYM_EPCLNTAB)?);
            let bytes = segments.bytes(data, start, end.checked_sub(start)?)?;
            Some(SectionData {
                vaddr: start,
                bytes,
            })
        })
        .or_else(|| search_pclntab(&segments, data))
        .ok_or(GoError::NoPclntab)?;
    let header = pclntab::parse_header(pcln.bytes)?;

    let module = moduledata::Search {
        file: &file,
        image: &image,
        ptr_size: header.ptr_size,
        minor,
    }
    .find(sym(SYM_MODULEDATA), pcln.vaddr);
    // runtime.text is exact; moduledata.text equals it; the header field
    // is 0 from go1.26; .text is right for internally linked binaries.
    let header_text = image.word(
        pcln.vaddr + pclntab::text_start_offset(header.ptr_size),
        header.ptr_size,
    );
    let text_start = sym(SYM_TEXT)
        .or(module.map(|m| m.text))
        .or(header_text.filter(|&t| t != 0))
        .or_else(|| file.section_by_name(".text").map(|s| s.address()))
        .filter(|&t| segments.is_code(t))
        .ok_or(GoError::NoText)?;
    let gofunc = sym(SYM_GOFUNC)
        .or(module.and_then(|m| m.gofunc))
        .and_then(|g| gofunc_region(g, &pcln, &file, &segments, data));
    let mut table = Pclntab::new(pcln.bytes.to_vec(), header, text_start, gofunc);
    if !table.inline_trees_look_valid() {
        // A moduledata layout we do not know: one frame per pc, not garbage.
        table = table.without_inline_trees();
    }

    let creation_probes = creation::creation_probes(&table, &segments, data)?;
    let exit_function = exit_function(&table, minor)?;
    let exit_entry = segments
        .vaddr_to_file_offset(exit_function.1)
        .ok_or(GoError::NotInFile(exit_function.0))?;
    let exit_probe = placement::place(data, exit_entry, EXIT_READS).offset;

    let mut vars = match vars_from {
        VarsFrom::SymbolsThenCode => RuntimeVars::from_symbols(&syms, header.ptr_size),
        VarsFrom::CodeOnly => RuntimeVars::default(),
    };
    vars.complete_from(&code_refs::CodeRefs {
        table: &table,
        segments: &segments,
        data,
    });

    let has_dwarf = dwarf::present(&file);
    let (g, g_layout_from, fields, fields_from) = layouts(&file, has_dwarf, &version, minor)?;

    Ok(Some(GoBinary {
        version,
        has_symtab: file.symbol_table().is_some(),
        has_dwarf,
        g,
        g_layout_from,
        creation_probes,
        exit_function,
        exit_probe,
        vars,
        fields,
        fields_from,
        pclntab: table,
        segments,
    }))
}

fn find_buildinfo<'d>(
    file: &object::File<'d>,
    segments: &Segments,
    data: &'d [u8],
    headerless: bool,
) -> Option<&'d [u8]> {
    if let Some(s) = image::section(file, &[BUILDINFO_SECTION]) {
        return Some(s.bytes);
    }
    if !headerless {
        return None;
    }
    segments.iter().filter(|s| s.writable).find_map(|s| {
        let bytes = segments.bytes(data, s.vaddr, s.filesz)?;
        // The blob is 16-byte aligned in memory, not necessarily in the file.
        let skip = usize::try_from((16 - s.vaddr % 16) % 16).ok()?;
        let aligned = bytes.get(skip..)?;
        aligned.get(buildinfo::find_magic(aligned)?..)
    })
}

/// The pclntab found by its header in the non-executable segments.
fn search_pclntab<'d>(segments: &Segments, data: &'d [u8]) -> Option<SectionData<'d>> {
    // magic, two zero pads, x86 instruction quantum 1, 8-byte pointers.
    const PREFIX: [u8; 8] = [0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
    segments.iter().filter(|s| !s.executable).find_map(|s| {
        let bytes = segments.bytes(data, s.vaddr, s.filesz)?;
        let skip = usize::try_from((8 - s.vaddr % 8) % 8).ok()?;
        let at = bytes
            .get(skip..)?
            .chunks_exact(8)
            .enumerate()
            .filter(|(_, w)| *w == PREFIX)
            .map(|(i, _)| skip + i * 8)
            .find(|&at| pclntab::parse_header(&bytes[at..]).is_ok())?;
        Some(SectionData {
            vaddr: s.vaddr + at as u64,
            bytes: &bytes[at..],
        })
    })
}

/// Where the funcdata at `gofunc` is: inside the pclntab (go1.26+), or a
/// copy of the bytes from `gofunc` to the end of its section.
fn gofunc_region(
    gofunc: u64,
    pcln: &SectionData<'_>,
    file: &object::File<'_>,
    segments: &Segments,
    data: &[u8],
) -> Option<GoFunc> {
    if gofunc >= pcln.vaddr && gofunc - pcln.vaddr < pcln.bytes.len() as u64 {
        return Some(GoFunc::InTable(usize::try_from(gofunc - pcln.vaddr).ok()?));
    }
    let bytes = image::section_containing(file, gofunc)
        .and_then(|s| s.bytes.get(usize::try_from(gofunc - s.vaddr).ok()?..))
        .or_else(|| segments.rest(data, gofunc))?;
    Some(GoFunc::Copy(bytes.to_vec()))
}

/// runtime.gdestroy on go1.22+, runtime.goexit0 before; the other one if
/// the version is unknown and the preferred one is missing.
fn exit_function(table: &Pclntab, minor: Option<u32>) -> Result<(&'static str, u64), GoError> {
    let order = match minor {
        Some(m) if m < GDESTROY_SINCE_MINOR => [GOEXIT0, GDESTROY],
        _ => [GDESTROY, GOEXIT0],
    };
    let (name, f) = order
        .iter()
        .find_map(|&n| table.by_name(n).map(|f| (n, f)))
        .ok_or(GoError::MissingFunction(order[0]))?;
    Ok((name, f.entry))
}

/// Struct layouts from DWARF when it has them, else the built-in table.
fn layouts(
    file: &object::File<'_>,
    has_dwarf: bool,
    version: &str,
    minor: Option<u32>,
) -> Result<(GLayout, LayoutSource, RuntimeFields, LayoutSource), GoError> {
    let (from_dwarf, dwarf_problem) = if has_dwarf {
        match dwarf::layouts(file) {
            Ok(l) => (l, "its DWARF lacks the runtime struct layouts".to_string()),
            Err(e) => (Default::default(), format!("its DWARF is unreadable: {e}")),
        }
    } else {
        (Default::default(), "the binary has no DWARF".to_string())
    };
    let builtin = minor.and_then(|m| layout::table(m).map(|t| (m, t)));
    let unsupported = || {
        let (min, max) = layout::table_range();
        GoError::UnsupportedVersion {
            version: version.to_string(),
            why: dwarf_problem.clone(),
            min,
            max,
        }
    };
    let (g, g_from) = match (from_dwarf.g, builtin) {
        (Some(g), _) => (g, LayoutSource::Dwarf),
        (None, Some((minor, (g, _)))) => (g, LayoutSource::VersionTable { minor }),
        (None, None) => return Err(unsupported()),
    };
    let (fields, fields_from) = match (from_dwarf.fields, builtin) {
        (Some(f), _) => (f, LayoutSource::Dwarf),
        (None, Some((minor, (_, f)))) => (f, LayoutSource::VersionTable { minor }),
        (None, None) => return Err(unsupported()),
    };
    Ok((g, g_from, fields, fields_from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_go() {
        assert!(matches!(inspect(b"#!/bin/sh\necho hi\n"), Ok(None)));
        assert!(matches!(inspect(&[]), Ok(None)));
    }

    #[test]
    fn go_binary_is_send_and_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<GoBinary>();
    }

    #[test]
    fn error_messages_are_one_line() {
        let e = GoError::UnsupportedVersion {
            version: "go1.30.1".into(),
            why: "the binary has no DWARF".into(),
            min: 21,
            max: 27,
        };
        let s = e.to_string();
        assert!(!s.contains('\n'));
        assert!(s.starts_with("go1.30.1 is not supported without DWARF"));
    }
}
