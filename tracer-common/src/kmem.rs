//! Kernel memory (`--kernel`): what the kernel's allocators hand out,
//! recorded from the kmem and percpu tracepoints by the address each block
//! has, with the kernel stack that allocated it.

use crate::shared;

/// Slab objects: `kmalloc` and `kmem_cache_alloc` (either may be freed by
/// `kfree` or `kmem_cache_free`, so they share one key space).
pub const KMEM_SLAB: u32 = 0;
/// Page allocations (`mm_page_alloc`), keyed by their `struct page *`.
pub const KMEM_PAGE: u32 = 1;
/// Per-CPU allocations (`percpu_alloc_percpu`), keyed by the `__percpu`
/// pointer.
pub const KMEM_PERCPU: u32 = 2;

/// Kernel frames kept per stack: deep enough for a syscall through the
/// network stack to the allocator (about 40 frames seen here).
pub const KMEM_STACK_DEPTH: usize = 64;

/// Default capacity of the table of outstanding kernel blocks.
pub const DEFAULT_MAX_KMEM_BLOCKS: u32 = 1 << 18;
/// Default capacity of the kernel stack table.
pub const DEFAULT_MAX_KMEM_STACKS: u32 = 1 << 14;

/// A kernel block's key: its address and which allocator it came from.
/// 8 + 4 + 4 = 16 bytes; `_pad` is always zero (it is hashed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KmemKey {
    pub ptr: u64,
    pub kind: u32,
    pub _pad: u32,
}
shared!(KmemKey, 16);

/// One outstanding kernel block. 6×8 + 4×4 = 64 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KmemBlock {
    /// When it was allocated (CLOCK_MONOTONIC, ns).
    pub ts_ns: u64,
    /// Bytes it takes: the slab object's size, `PAGE_SIZE << order`, or
    /// the per-CPU allocation's bytes on all CPUs.
    pub bytes: u64,
    /// Bytes asked for (`kmalloc`'s and per-CPU's request; else `bytes`).
    pub requested: u64,
    /// The `struct kmem_cache *` of `kmem_cache_alloc` (0 for `kmalloc`,
    /// pages and per-CPU): [`KmemCacheName`] names it.
    pub cache: u64,
    /// Kernel stack: its id in the stack table (its frames' hash; 0: not
    /// recorded, counted).
    pub kernel_stack: u64,
    /// User stack of the allocating task when it is a traced process
    /// (walked by frame pointers, as the kernel does); 0 when not taken.
    pub user_stack: u64,
    /// The allocating task's process.
    pub tgid: u32,
    /// GFP flags of the allocation.
    pub gfp: u32,
    /// Pages: the allocation's order (else 0).
    pub order: u32,
    /// [`KMEM_SLAB`], [`KMEM_PAGE`] or [`KMEM_PERCPU`].
    pub kind: u32,
}
shared!(KmemBlock, 64);

/// One kernel stack, innermost frame first, ended by a zero slot unless
/// every slot is used. 64×8 = 512 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KmemStack {
    pub ips: [u64; KMEM_STACK_DEPTH],
}
shared!(KmemStack, 512);

/// A slab cache's name, read from its `struct kmem_cache` the first time
/// an object of it is seen; NUL-terminated. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KmemCacheName {
    pub name: [u8; 32],
}
shared!(KmemCacheName, 32);

/// The kernel programs record nothing (until userspace configures them).
pub const KMEM_OFF: u32 = 0;
/// Every allocation in the kernel.
pub const KMEM_ALL: u32 = 1;
/// Only allocations made in the context of processes in `TRACED`.
pub const KMEM_TRACED: u32 = 2;

/// What the kernel programs need from userspace: the filter, our own
/// process (never recorded: its map updates allocate too), and the offsets
/// in `struct kmem_cache` this kernel's BTF gives. 4×4 = 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KmemConfig {
    /// [`KMEM_OFF`], [`KMEM_ALL`] or [`KMEM_TRACED`].
    pub filter: u32,
    pub self_tgid: u32,
    /// `offsetof(struct kmem_cache, size)` and `name`.
    pub cache_size_offset: u32,
    pub cache_name_offset: u32,
}
shared!(KmemConfig, 16);
