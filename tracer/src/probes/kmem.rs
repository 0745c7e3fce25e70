//! The kernel-memory programs (`--kernel`): loaded and attached only when
//! asked for, to the kmem and percpu tracepoints.

use std::os::fd::AsFd;

use aya::{
    maps::{HashMap, MapData},
    programs::{ProgramFd, ProgramInfo},
};
use tracer_common::{KmemBlock, KmemCacheName, KmemConfig, KmemKey, KmemStack};

use super::{btf::Btf, error_chain, ProbeError, Probes};

/// Program and tracepoint, frees first: once an allocation is recorded,
/// its free is already watched.
const KMEM_TRACEPOINTS: [(&str, &str); 8] = [
    ("kmem_kfree", "kfree"),
    ("kmem_cache_free", "kmem_cache_free"),
    ("kmem_page_free", "mm_page_free"),
    ("kmem_percpu_free", "percpu_free_percpu"),
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
    /// The programs, for the kernel's count of runs it skipped.
    programs: Vec<ProgramFd>,
}

impl KmemMaps {
    /// Kernel-memory program runs the kernel skipped because another ran
    /// on the same CPU (an interrupt's free while one was recording): each
    /// is an event lost (a missed free leaves a block that is gone).
    pub fn missed_events(&self) -> u64 {
        self.programs
            .iter()
            .filter_map(|fd| ProgramInfo::new_from_fd(fd.as_fd()).ok())
            .map(|i| i.recursion_misses())
            .sum()
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
        let mut programs = Vec::new();
        for (name, tracepoint) in KMEM_TRACEPOINTS {
            self.load_tracepoint(name)?;
            self.attach_tracepoint(name, tracepoint)?;
            let fd = self
                .tracepoint(name)?
                .fd()
                .map_err(|e| ProbeError::Load(error_chain(&e)))?
                .try_clone()
                .map_err(|e| ProbeError::Load(e.to_string()))?;
            programs.push(fd);
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
            programs,
        })
    }
}
