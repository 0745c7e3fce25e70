//! Finding the target's allocator: which loaded object defines the malloc
//! family, and the file offset of each function in it.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use tracer_common::AllocKind;

/// An object file the target has (or will have) mapped.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Path as the target sees it, for messages.
    pub display: String,
    /// Path through which leaktrace can open and probe it.
    pub path: PathBuf,
}

/// A function to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFn {
    Alloc(AllocKind),
    Free,
}

/// The allocator library chosen for the target.
#[derive(Debug, Clone)]
pub struct Allocator {
    pub display: String,
    pub path: PathBuf,
    /// Probe sites: function and file offset. Aliases (two names at one
    /// address, e.g. glibc's aligned_alloc and memalign) appear once, so a
    /// call is never seen twice.
    pub sites: Vec<(ProbeFn, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error(
        "no allocator found in the target: none of its loaded objects defines malloc and free \
         (statically linked without symbols, or a custom allocator)"
    )]
    NotFound,
}

/// Picks the allocator among `candidates`: a C library first (libc, musl),
/// then any other object exporting both `malloc` and `free` (a statically
/// linked executable, a preloaded allocator).
pub fn find_allocator(candidates: &[Candidate]) -> Result<Allocator, AllocatorError> {
    let mut ordered: Vec<&Candidate> = candidates.iter().collect();
    ordered.sort_by_key(|c| !is_c_library(&c.display));
    for cand in ordered {
        let Ok(data) = fs::read(&cand.path) else { continue };
        let Some(symbols) = function_offsets(&data) else { continue };
        if let Some(sites) = allocator_sites(&symbols) {
            return Ok(Allocator {
                display: cand.display.clone(),
                path: cand.path.clone(),
                sites,
            });
        }
    }
    Err(AllocatorError::NotFound)
}

fn is_c_library(path: &str) -> bool {
    let base = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    base.starts_with("libc.so") || base.starts_with("libc-") || base.starts_with("ld-musl")
}

/// The probe sites present in one object, if it has at least malloc and free.
fn allocator_sites(symbols: &HashMap<String, u64>) -> Option<Vec<(ProbeFn, u64)>> {
    symbols.get("malloc")?;
    let free = *symbols.get("free")?;
    let mut by_offset: BTreeMap<u64, ProbeFn> = BTreeMap::new();
    by_offset.insert(free, ProbeFn::Free);
    // AllocKind::ALL lists malloc first, so on an alias the most common name wins.
    for kind in AllocKind::ALL {
        if let Some(&off) = symbols.get(kind.symbol()) {
            by_offset.entry(off).or_insert(ProbeFn::Alloc(kind));
        }
    }
    let mut sites: Vec<(ProbeFn, u64)> = by_offset.into_iter().map(|(o, f)| (f, o)).collect();
    sites.sort_by_key(|(f, _)| match f {
        ProbeFn::Alloc(k) => *k as u32,
        ProbeFn::Free => u32::MAX,
    });
    Some(sites)
}

/// File offsets of the defined functions of an ELF object, by name
/// (dynamic symbols first, then the full symbol table).
pub fn function_offsets(data: &[u8]) -> Option<HashMap<String, u64>> {
    let file = object::File::parse(data).ok()?;
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range().0))
        .collect();
    let mut out = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if sym.kind() != SymbolKind::Text || !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if out.contains_key(name) {
            continue;
        }
        let addr = sym.address();
        if let Some(off) = segments
            .iter()
            .find(|(va, size, _)| *va <= addr && addr < va + size)
            .map(|(va, _, file_off)| addr - va + file_off)
        {
            out.insert(name.to_string(), off);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(n, o)| (n.to_string(), *o)).collect()
    }

    #[test]
    fn needs_malloc_and_free() {
        assert!(allocator_sites(&syms(&[("malloc", 1)])).is_none());
        assert!(allocator_sites(&syms(&[("free", 1)])).is_none());
        let s = allocator_sites(&syms(&[("malloc", 1), ("free", 2)])).expect("has both");
        assert_eq!(s, vec![(ProbeFn::Alloc(AllocKind::Malloc), 1), (ProbeFn::Free, 2)]);
    }

    #[test]
    fn aliases_are_probed_once() {
        let s = allocator_sites(&syms(&[
            ("malloc", 10),
            ("free", 20),
            ("aligned_alloc", 30),
            ("memalign", 30),
            ("calloc", 40),
        ]))
        .expect("allocator");
        assert_eq!(
            s,
            vec![
                (ProbeFn::Alloc(AllocKind::Malloc), 10),
                (ProbeFn::Alloc(AllocKind::Calloc), 40),
                (ProbeFn::Alloc(AllocKind::AlignedAlloc), 30),
                (ProbeFn::Free, 20),
            ]
        );
    }

    #[test]
    fn finds_this_test_binarys_libc() {
        // The test binary itself links glibc dynamically.
        let maps = super::super::procfs::read_maps(std::process::id()).expect("own maps");
        let candidates: Vec<Candidate> = maps
            .iter()
            .filter_map(|m| m.path.clone())
            .map(|p| Candidate { path: PathBuf::from(&p), display: p })
            .collect();
        let alloc = find_allocator(&candidates).expect("glibc found");
        assert!(alloc.display.contains("libc.so"), "{}", alloc.display);
        assert!(alloc.sites.iter().any(|(f, _)| *f == ProbeFn::Free));
        for kind in [AllocKind::Malloc, AllocKind::Calloc, AllocKind::Realloc, AllocKind::PosixMemalign] {
            assert!(alloc.sites.iter().any(|(f, _)| *f == ProbeFn::Alloc(kind)), "{kind:?} missing");
        }
    }
}
