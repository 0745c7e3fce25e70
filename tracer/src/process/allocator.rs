//! Finding the target's allocator: which loaded object defines the malloc
//! family, and the file offset of each function in it.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use tracer_common::AllocKind;

use crate::placement::{self, Placement, Reads};

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

impl ProbeFn {
    /// What its entry program reads, for [`placement::place`].
    pub fn reads(self) -> Reads {
        match self {
            ProbeFn::Free => Reads::FREE,
            ProbeFn::Alloc(kind) => Reads::alloc(kind),
        }
    }
}

/// One object file to probe and the probe sites in it.
#[derive(Debug, Clone)]
pub struct ProbedObject {
    pub display: String,
    pub path: PathBuf,
    /// Probe sites. Aliases (two names at one address, e.g. glibc's
    /// aligned_alloc and memalign) appear once, so a call is never seen twice.
    pub sites: Vec<Site>,
    /// Thread and process spawn functions (pthread_create, fork, ...),
    /// probed without a return probe.
    pub spawns: Vec<SpawnSite>,
}

/// One probed function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub func: ProbeFn,
    /// File offset of the function's entry.
    pub offset: u64,
    /// Every function name at this address, e.g. "aligned_alloc/memalign".
    pub names: String,
    /// Where its probe sits (see [`placement`]); the entry until placed.
    pub probe: Placement,
}

/// One probed spawn function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnSite {
    pub name: &'static str,
    /// File offset of the function's entry.
    pub offset: u64,
    pub probe: Placement,
}

/// The target's allocator: the C library (or whatever object defines
/// malloc and free), plus the C++ runtime's `operator new` when loaded.
#[derive(Debug, Clone)]
pub struct Allocator {
    pub objects: Vec<ProbedObject>,
}

impl Allocator {
    /// No C allocator (a pure Go program): nothing to probe for the heap.
    pub fn none() -> Self {
        Allocator {
            objects: Vec::new(),
        }
    }

    /// Whether malloc is glibc's alone (no allocator interposed on it).
    pub fn is_glibc(&self) -> bool {
        let mut names = self.malloc_objects().map(|o| {
            o.display
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("libc.so"))
        });
        names.next() == Some(true) && names.all(|libc| libc)
    }

    /// The objects defining malloc, for messages: the C library, then any
    /// allocator interposed on it.
    pub fn display(&self) -> String {
        let names: Vec<&str> = self.malloc_objects().map(|o| o.display.as_str()).collect();
        if names.is_empty() {
            "?".to_string()
        } else {
            names.join(" + ")
        }
    }

    fn malloc_objects(&self) -> impl Iterator<Item = &ProbedObject> {
        self.objects.iter().filter(|o| {
            o.sites
                .iter()
                .any(|s| s.func == ProbeFn::Alloc(AllocKind::Malloc))
        })
    }

    /// The spawn function probed at file offset `probe` in `path` (as the
    /// target sees it).
    pub fn spawn_at(&self, path: &str, probe: u64) -> Option<&'static str> {
        self.objects
            .iter()
            .filter(|o| o.display == path)
            .flat_map(|o| o.spawns.iter())
            .find(|s| s.probe.offset == probe)
            .map(|s| s.name)
    }

    /// The allocation function(s) probed at file offset `probe` in `path`
    /// (as the target sees it).
    pub fn names_at(&self, path: &str, probe: u64) -> Option<&str> {
        self.objects
            .iter()
            .filter(|o| o.display == path)
            .flat_map(|o| o.sites.iter())
            .find(|s| s.probe.offset == probe && s.func != ProbeFn::Free)
            .map(|s| s.names.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error(
        "no allocator found in the target: none of its loaded objects defines malloc and free \
         (statically linked without symbols, or a custom allocator)"
    )]
    NotFound,
}

/// Picks the allocators among `candidates`: the C library (else, in a
/// statically linked program, the object defining malloc and free), then
/// every other object exporting malloc and free — an allocator interposed
/// on the C library's (jemalloc, tcmalloc, mimalloc; preloaded or linked
/// in), which is where the calls really go; the C library stays probed for
/// the functions the interposer lacks. And every object defining C++
/// `operator new` (the C++ runtime).
pub fn find_allocator(candidates: &[Candidate]) -> Result<Allocator, AllocatorError> {
    let mut ordered: Vec<&Candidate> = candidates.iter().collect();
    ordered.sort_by_key(|c| !is_c_library(&c.display));
    let mut malloc_objects: Vec<ProbedObject> = Vec::new();
    let mut new_objects = Vec::new();
    for cand in ordered {
        let Ok(data) = fs::read(&cand.path) else {
            continue;
        };
        let Ok(file) = object::File::parse(&*data) else {
            continue;
        };
        let symbols = offsets_of(&file);
        let object = |sites, spawns| ProbedObject {
            display: cand.display.clone(),
            path: cand.path.clone(),
            sites,
            spawns,
        };
        let first = malloc_objects.is_empty();
        // Plain names count in the first allocator (the C library) and in
        // objects interposing on it; prefixed ones anywhere.
        let mut prefixes = Vec::with_capacity(ALLOCATOR_PREFIXES.len() + 1);
        if first || exports_malloc_and_free(&file) {
            prefixes.push("");
        }
        prefixes.extend_from_slice(ALLOCATOR_PREFIXES);
        if let Some(mut sites) = allocator_sites(&symbols, &prefixes) {
            place_probes(&data, &mut sites);
            // Threads are created through the C library only.
            let spawns = if first {
                spawn_sites(&symbols, &data)
            } else {
                Vec::new()
            };
            malloc_objects.push(object(sites, spawns));
            continue;
        }
        let mut new_sites = operator_new_sites(&symbols);
        if !new_sites.is_empty() {
            place_probes(&data, &mut new_sites);
            new_objects.push(object(new_sites, Vec::new()));
        }
    }
    if malloc_objects.is_empty() {
        return Err(AllocatorError::NotFound);
    }
    let mut objects = malloc_objects;
    objects.extend(new_objects);
    Ok(Allocator { objects })
}

/// Whether `data` exports both malloc and free to other objects (what
/// interposing the C library's takes).
fn exports_malloc_and_free(file: &object::File<'_>) -> bool {
    let exported = |wanted: &str| {
        file.dynamic_symbols()
            .any(|s| s.is_definition() && s.name() == Ok(wanted))
    };
    exported("malloc") && exported("free")
}

fn is_c_library(path: &str) -> bool {
    let base = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    base.starts_with("libc.so") || base.starts_with("libc-") || base.starts_with("ld-musl")
}

type ByOffset = BTreeMap<u64, (ProbeFn, Vec<&'static str>)>;

/// Deduplicated sites of `kinds` in one object: on an alias the first kind
/// decides the probe, and every name is kept for display.
fn sites_of(
    symbols: &HashMap<String, u64>,
    kinds: &[AllocKind],
    prefix: &str,
    by_offset: &mut ByOffset,
) {
    for &kind in kinds {
        // C++ names are never prefixed.
        let prefix = if kind == AllocKind::OperatorNew {
            ""
        } else {
            prefix
        };
        for name in kind.symbols() {
            if let Some(&off) = symbols.get(&format!("{prefix}{name}")) {
                let entry = by_offset
                    .entry(off)
                    .or_insert((ProbeFn::Alloc(kind), Vec::new()));
                if !entry.1.contains(&kind.name()) {
                    entry.1.push(kind.name());
                }
            }
        }
    }
}

fn sorted(by_offset: ByOffset) -> Vec<Site> {
    let mut sites: Vec<Site> = by_offset
        .into_iter()
        .map(|(offset, (func, names))| Site {
            func,
            offset,
            names: names.join("/"),
            probe: Placement::at_entry(offset),
        })
        .collect();
    sites.sort_by_key(|s| {
        let rank = match s.func {
            ProbeFn::Alloc(k) => k as u32,
            ProbeFn::Free => u32::MAX,
        };
        (rank, s.offset)
    });
    sites
}

/// Deallocation functions, all taking the pointer first: the C library's,
/// jemalloc's sized and flagged ones, tcmalloc's and mimalloc's own names,
/// and C++ `operator delete` in every variant (an interposed allocator
/// defines it without going through `free`).
const FREE_SYMBOLS: &[&str] = &[
    "free",
    "cfree",
    "sdallocx",
    "dallocx",
    "tc_free",
    "tc_free_sized",
    "mi_free",
    "mi_free_size",
    "mi_free_aligned",
    "mi_free_size_aligned",
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
];

/// Name prefixes under which an allocator is built into a program next to
/// the C library's malloc: jemalloc's `je_` (redis and others vendoring
/// it) and `_rjem_` (Rust's `tikv-jemallocator`), mimalloc's own API `mi_`
/// (Rust's `mimalloc` crate).
const ALLOCATOR_PREFIXES: &[&str] = &["je_", "_rjem_", "mi_"];

/// The malloc-family sites of one object under every naming in `prefixes`
/// it has a way to allocate and one to free with (a program keeps only
/// what it calls: Rust's jemalloc allocator, for one, frees with `sdallocx`
/// only); `None` if no naming qualifies.
fn allocator_sites(symbols: &HashMap<String, u64>, prefixes: &[&str]) -> Option<Vec<Site>> {
    let mut by_offset = ByOffset::new();
    let mut found = false;
    for prefix in prefixes {
        let has = |name: &str| symbols.contains_key(&format!("{prefix}{name}"));
        let allocates = has("malloc") || has("mallocx") || has("malloc_aligned");
        let frees = has("free") || has("sdallocx") || has("dallocx");
        if !allocates || !frees {
            continue;
        }
        found = true;
        for &name in FREE_SYMBOLS {
            if let Some(&off) = symbols.get(&format!("{prefix}{name}")) {
                let entry = by_offset.entry(off).or_insert((ProbeFn::Free, Vec::new()));
                if entry.0 == ProbeFn::Free && !entry.1.contains(&name) {
                    entry.1.push(name);
                }
            }
        }
        // AllocKind::ALL holds operator new: a statically linked C++
        // program carries it next to malloc.
        sites_of(symbols, &AllocKind::ALL, prefix, &mut by_offset);
    }
    found.then(|| sorted(by_offset))
}

/// Moves each site's probe to its cheapest equivalent point.
fn place_probes(data: &[u8], sites: &mut [Site]) {
    for site in sites {
        site.probe = placement::place(data, site.offset, site.func.reads());
    }
}

/// Spawn functions present in the C library, one per address.
fn spawn_sites(symbols: &HashMap<String, u64>, data: &[u8]) -> Vec<SpawnSite> {
    let mut out: Vec<SpawnSite> = Vec::new();
    for name in tracer_common::SPAWN_SYMBOLS {
        if let Some(&offset) = symbols.get(name) {
            if !out.iter().any(|s| s.offset == offset) {
                let probe = placement::place(data, offset, Reads::SPAWN);
                out.push(SpawnSite {
                    name,
                    offset,
                    probe,
                });
            }
        }
    }
    out
}

/// `operator new` sites in a C++ runtime (libstdc++, libc++).
fn operator_new_sites(symbols: &HashMap<String, u64>) -> Vec<Site> {
    let mut by_offset = ByOffset::new();
    sites_of(symbols, &[AllocKind::OperatorNew], "", &mut by_offset);
    sorted(by_offset)
}

/// File offsets of the defined functions of an ELF object, by name
/// (dynamic symbols first, then the full symbol table).
pub fn function_offsets(data: &[u8]) -> Option<HashMap<String, u64>> {
    object::File::parse(data).ok().map(|file| offsets_of(&file))
}

fn offsets_of(file: &object::File<'_>) -> HashMap<String, u64> {
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(func: ProbeFn, offset: u64, names: &str) -> Site {
        Site {
            func,
            offset,
            names: names.into(),
            probe: Placement::at_entry(offset),
        }
    }

    fn syms(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(n, o)| (n.to_string(), *o)).collect()
    }

    #[test]
    fn needs_malloc_and_free() {
        assert!(allocator_sites(&syms(&[("malloc", 1)]), &[""]).is_none());
        assert!(allocator_sites(&syms(&[("free", 1)]), &[""]).is_none());
        let s = allocator_sites(&syms(&[("malloc", 1), ("free", 2)]), &[""]).expect("has both");
        assert_eq!(
            s,
            vec![
                site(ProbeFn::Alloc(AllocKind::Malloc), 1, "malloc"),
                site(ProbeFn::Free, 2, "free")
            ]
        );
    }

    #[test]
    fn aliases_are_probed_once() {
        let s = allocator_sites(
            &syms(&[
                ("malloc", 10),
                ("free", 20),
                ("aligned_alloc", 30),
                ("memalign", 30),
                ("calloc", 40),
            ]),
            &[""],
        )
        .expect("allocator");
        assert_eq!(
            s,
            vec![
                site(ProbeFn::Alloc(AllocKind::Malloc), 10, "malloc"),
                site(ProbeFn::Alloc(AllocKind::Calloc), 40, "calloc"),
                site(
                    ProbeFn::Alloc(AllocKind::AlignedAlloc),
                    30,
                    "aligned_alloc/memalign"
                ),
                site(ProbeFn::Free, 20, "free"),
            ]
        );
    }

    #[test]
    fn prefixed_jemalloc_keeps_what_the_program_calls() {
        // Rust's tikv-jemallocator: no free, sized deallocation only.
        let symbols = syms(&[
            ("_rjem_malloc", 10),
            ("_rjem_mallocx", 11),
            ("_rjem_rallocx", 12),
            ("_rjem_sdallocx", 13),
            ("_Znwm", 14),
        ]);
        assert!(allocator_sites(&symbols, &["", "je_"]).is_none());
        let s = allocator_sites(&symbols, &["", "je_", "_rjem_"]).expect("jemalloc");
        assert_eq!(
            s,
            vec![
                site(ProbeFn::Alloc(AllocKind::Malloc), 10, "malloc"),
                site(ProbeFn::Alloc(AllocKind::OperatorNew), 14, "operator new"),
                site(ProbeFn::Alloc(AllocKind::Mallocx), 11, "mallocx"),
                site(ProbeFn::Alloc(AllocKind::Rallocx), 12, "rallocx"),
                site(ProbeFn::Free, 13, "sdallocx"),
            ]
        );
    }

    #[test]
    fn operator_new_variants_share_one_kind() {
        let s = operator_new_sites(&syms(&[("_Znwm", 5), ("_Znam", 6), ("malloc", 7)]));
        assert_eq!(
            s,
            vec![
                site(ProbeFn::Alloc(AllocKind::OperatorNew), 5, "operator new"),
                site(ProbeFn::Alloc(AllocKind::OperatorNew), 6, "operator new"),
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
            .map(|p| Candidate {
                path: PathBuf::from(&p),
                display: p,
            })
            .collect();
        let alloc = find_allocator(&candidates).expect("glibc found");
        assert!(alloc.display().contains("libc.so"), "{}", alloc.display());
        let sites = &alloc.objects[0].sites;
        assert!(sites.iter().any(|s| s.func == ProbeFn::Free));
        for kind in [
            AllocKind::Malloc,
            AllocKind::Calloc,
            AllocKind::Realloc,
            AllocKind::PosixMemalign,
        ] {
            assert!(
                sites.iter().any(|s| s.func == ProbeFn::Alloc(kind)),
                "{kind:?} missing"
            );
        }
    }
}
