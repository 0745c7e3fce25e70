//! The kernel-memory programs (`--kernel`): loaded and attached only when
//! asked for, to the kmem and percpu tracepoints.

use std::os::fd::AsFd;

use aya::{
    maps::{HashMap, MapData},
    programs::{ProgramFd, ProgramInfo},
};
use tracer_common::{KmemBlock, KmemCacheName, KmemConfig, KmemKey, KmemStack};

use super::{btf::Btf, error_chain, ProbeError, Probes};

/// Free programs and their tracepoints, each free watched by two programs
/// (see tracer-ebpf/src/kmem.rs: the kernel skips a program's run when it
/// is already running on that CPU, and then the twin takes it).
const KMEM_FREES: [(&str, &str, &str); 4] = [
    ("kmem_kfree", "kmem_kfree_2", "kfree"),
    ("kmem_cache_free", "kmem_cache_free2", "kmem_cache_free"),
    ("kmem_page_free", "kmem_page_free_2", "mm_page_free"),
    (
        "kmem_percpu_free",
        "kmem_percpu_free2",
        "percpu_free_percpu",
    ),
];

/// Allocation programs and their tracepoints (attached after the frees:
/// once an allocation is recorded, its free is already watched).
const KMEM_ALLOCS: [(&str, &str); 4] = [
    ("kmem_percpu_alloc", "percpu_alloc_percpu"),
    ("kmem_kmalloc", "kmalloc"),
    ("kmem_cache_alloc", "kmem_cache_alloc"),
    ("kmem_page_alloc", "mm_page_alloc"),
];

/// The tables the kernel-memory programs fill.
pub struct KmemMaps {
    pub blocks: HashMap<MapData, KmemKey, KmemBlock>,
    pub stacks: HashMap<MapData, u64, KmemStack>,
    pub caches: HashMap<MapData, u64, KmemCacheName>,
    /// The allocation programs, and the free programs in twins, for the
    /// kernel's counts of runs it skipped.
    allocs: Vec<ProgramFd>,
    frees: Vec<(ProgramFd, ProgramFd)>,
}

impl KmemMaps {
    /// Events the programs missed, by the kernel's counts of runs it
    /// skipped (one of them already running on that CPU): allocations not
    /// recorded, and at most this many frees missed by both twins (a free
    /// missed leaves a block outstanding that is gone).
    pub fn missed_events(&self) -> u64 {
        let misses = |fd: &ProgramFd| {
            ProgramInfo::new_from_fd(fd.as_fd())
                .map(|i| i.recursion_misses())
                .unwrap_or(0)
        };
        let allocs: u64 = self.allocs.iter().map(misses).sum();
        let frees: u64 = self
            .frees
            .iter()
            .map(|(a, b)| misses(a).min(misses(b)))
            .sum();
        allocs + frees
    }
}

impl Probes {
    /// Loads and attaches the kernel-memory programs, recording from now
    /// on what `filter` (`KMEM_ALL` or `KMEM_TRACED`) says; returns their
    /// tables.
    pub fn attach_kernel_memory(&mut self, filter: u32) -> Result<KmemMaps, ProbeError> {
        let btf = Btf::from_kernel().map_err(|e| ProbeError::Load(e.to_string()))?;
        let offset = |field| {
            btf.member_offset("kmem_cache", field)
                .map_err(|e| ProbeError::Load(e.to_string()))
        };
        let config = KmemConfig {
            filter,
            self_tgid: std::process::id(),
            cache_size_offset: offset("size")?,
            cache_name_offset: offset("name")?,
        };
        let mut frees = Vec::new();
        for (first, second, tracepoint) in KMEM_FREES {
            frees.push((
                self.load_and_attach(first, tracepoint)?,
                self.load_and_attach(second, tracepoint)?,
            ));
        }
        let mut allocs = Vec::new();
        for (name, tracepoint) in KMEM_ALLOCS {
            allocs.push(self.load_and_attach(name, tracepoint)?);
        }
        // Recording starts once every free is watched.
        self.set_config("KMEM_CONFIG", config)?;
        let mut take =
            |name: &'static str| self.ebpf.take_map(name).ok_or(ProbeError::Missing(name));
        let (blocks, stacks, caches) = (
            take("KMEM_BLOCKS")?,
            take("KMEM_STACKS")?,
            take("KMEM_CACHES")?,
        );
        let bad = |name| move |_| ProbeError::Missing(name);
        Ok(KmemMaps {
            blocks: blocks.try_into().map_err(bad("KMEM_BLOCKS"))?,
            stacks: stacks.try_into().map_err(bad("KMEM_STACKS"))?,
            caches: caches.try_into().map_err(bad("KMEM_CACHES"))?,
            allocs,
            frees,
        })
    }

    /// Loads and attaches one program to `tracepoint`; its fd, for its
    /// counts.
    fn load_and_attach(
        &mut self,
        name: &'static str,
        tracepoint: &'static str,
    ) -> Result<ProgramFd, ProbeError> {
        self.load_tracepoint(name)?;
        self.attach_tracepoint(name, tracepoint)?;
        self.tracepoint(name)?
            .fd()
            .map_err(|e| ProbeError::Load(error_chain(&e)))?
            .try_clone()
            .map_err(|e| ProbeError::Load(e.to_string()))
    }
}
