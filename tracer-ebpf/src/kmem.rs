//! Kernel memory (`--kernel`): the kmem and percpu tracepoints. Each
//! allocation becomes a [`KmemBlock`] keyed by its address, with its
//! kernel stack; each free removes it. Userspace reads the table whole at
//! a report (blocks are few next to a heap's, and this keeps the free path
//! one delete). Frees are taken from every context: a block freed by an
//! RCU callback or another task is still freed.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, generated::bpf_get_stack,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::RawTracePointContext,
    EbpfContext,
};
use tracer_common::{
    Counter, KmemBlock, KmemCacheName, KmemConfig, KmemKey, KmemStack, DEFAULT_MAX_KMEM_BLOCKS,
    DEFAULT_MAX_KMEM_STACKS, KMEM_ALL, KMEM_PAGE, KMEM_PERCPU, KMEM_SLAB, KMEM_STACK_DEPTH,
    KMEM_TRACED,
};

use crate::{
    counters::count,
    stack_record::{mix, HASH_SEED},
    traced, EEXIST, ENOENT,
};

// Sizes are defaults; userspace sizes both from its flags (to 1 without
// --kernel). Both are preallocated: an insert into a map allocated on
// demand allocates kernel memory, which these programs would record.
#[map]
static KMEM_BLOCKS: HashMap<KmemKey, KmemBlock> =
    HashMap::with_max_entries(DEFAULT_MAX_KMEM_BLOCKS, 0);

/// Stacks by the hash of their frames (kernel and user stacks alike);
/// never changed once written.
#[map]
static KMEM_STACKS: HashMap<u64, KmemStack> = HashMap::with_max_entries(DEFAULT_MAX_KMEM_STACKS, 0);

/// Slab cache names by `struct kmem_cache *`.
#[map]
static KMEM_CACHES: HashMap<u64, KmemCacheName> = HashMap::with_max_entries(4096, 0);

#[map]
static KMEM_CONFIG: Array<KmemConfig> = Array::with_max_entries(1, 0);

/// Room to take a stack in (512 bytes do not fit the BPF stack).
#[map]
static KMEM_SCRATCH: PerCpuArray<KmemStack> = PerCpuArray::with_max_entries(1, 0);

/// Whether one of these programs is recording on this CPU now. An
/// allocation made while it is (by an interrupt that came meanwhile) is
/// not recorded, only counted: its stack would overwrite the scratch in
/// use. (The tables are preallocated, so their updates allocate nothing.)
/// Tracepoints run with preemption off, so only interrupts nest.
#[map]
static KMEM_BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Frames of a stack: the kernel's walk of the current task.
const STACK_BYTES: u32 = (KMEM_STACK_DEPTH * 8) as u32;

#[inline(always)]
fn config() -> Option<KmemConfig> {
    // SAFETY: plain data copied out of the one array slot.
    let c = unsafe { core::ptr::read_volatile(KMEM_CONFIG.get(0)?) };
    (c.filter != 0).then_some(c)
}

/// Whether an allocation now, in this task's context, is recorded; with
/// the allocating process and whether it is traced.
#[inline(always)]
fn recorded(c: &KmemConfig) -> Option<(u32, bool)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == c.self_tgid {
        return None;
    }
    let is_traced = traced::flags_of(tgid).is_some();
    match c.filter {
        KMEM_ALL => Some((tgid, is_traced)),
        KMEM_TRACED if is_traced => Some((tgid, true)),
        _ => None,
    }
}

/// Takes the current stack (kernel, or with `BPF_F_USER_STACK` the
/// task's user stack) and stores it; its id (hash), or 0.
#[inline(always)]
fn stack_of(ctx: &RawTracePointContext, flags: u64) -> u64 {
    let Some(scratch) = KMEM_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the helper writes at most STACK_BYTES into this CPU's
    // scratch slot, ours while KMEM_BUSY is set.
    let got = unsafe { bpf_get_stack(ctx.as_ptr(), scratch as *mut _, STACK_BYTES, flags) };
    if got <= 0 {
        return 0;
    }
    let frames = (got as usize / 8).min(KMEM_STACK_DEPTH);
    let mut hash = HASH_SEED;
    for i in 0..KMEM_STACK_DEPTH {
        if i >= frames {
            // Readers stop at the first zero.
            // SAFETY: i < KMEM_STACK_DEPTH.
            unsafe { (*scratch).ips[i] = 0 };
            break;
        }
        // SAFETY: i < KMEM_STACK_DEPTH.
        hash = mix(hash, unsafe { (*scratch).ips[i] });
    }
    let id = hash | 1; // never 0, which means "none"
                       // SAFETY: the scratch slot holds a whole KmemStack.
    match KMEM_STACKS.insert(&id, unsafe { &*scratch }, BPF_NOEXIST as u64) {
        Ok(()) => id,
        Err(e) if e == -EEXIST => id,
        Err(_) => 0,
    }
}

#[inline(always)]
fn record(ctx: &RawTracePointContext, who: (u32, bool), key: KmemKey, block: KmemBlock) {
    let Some(busy) = KMEM_BUSY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's flag; what interrupts us finishes before we go on.
    unsafe {
        if *busy != 0 {
            count(Counter::KmemAllocNested);
            return;
        }
        *busy = 1;
    }
    record_now(ctx, who, key, block);
    // SAFETY: as above.
    unsafe { *busy = 0 };
}

#[inline(always)]
fn record_now(ctx: &RawTracePointContext, who: (u32, bool), key: KmemKey, mut block: KmemBlock) {
    let (tgid, is_traced) = who;
    block.tgid = tgid;
    // SAFETY: helper without arguments.
    block.ts_ns = unsafe { bpf_ktime_get_ns() };
    block.kernel_stack = stack_of(ctx, 0);
    if block.kernel_stack == 0 {
        count(Counter::KmemStackLost);
    }
    if is_traced {
        // (Not counted when missing: the kernel stack says where.)
        block.user_stack = stack_of(ctx, BPF_F_USER_STACK as u64);
    }
    if KMEM_BLOCKS.insert(&key, &block, 0).is_err() {
        count(Counter::KmemMapFull);
    }
}

#[inline(always)]
fn forget(ptr: u64, kind: u32) {
    // Most frees are of blocks never recorded ("not there"); any other
    // error leaves a freed block in the table, so it is counted.
    if let Err(e) = KMEM_BLOCKS.remove(&KmemKey { ptr, kind, _pad: 0 }) {
        if e != -ENOENT {
            count(Counter::KmemFreeFailed);
        }
    }
}

/// `ZERO_SIZE_PTR` and below: not a block.
const ZERO_SIZE_PTR: u64 = 16;

/// `kmalloc(call_site, ptr, bytes_req, bytes_alloc, gfp_flags, node)`.
#[raw_tracepoint(tracepoint = "kmalloc")]
pub fn kmem_kmalloc(ctx: RawTracePointContext) -> i32 {
    let Some(c) = config() else { return 0 };
    let ptr: u64 = ctx.arg(1);
    if ptr <= ZERO_SIZE_PTR {
        return 0;
    }
    let Some(who) = recorded(&c) else { return 0 };
    let requested: u64 = ctx.arg(2);
    let bytes: u64 = ctx.arg(3);
    let gfp: u64 = ctx.arg(4);
    let block = KmemBlock {
        bytes,
        requested,
        gfp: gfp as u32,
        kind: KMEM_SLAB,
        ..KmemBlock::default()
    };
    record(&ctx, who, slab_key(ptr), block);
    0
}

/// `kmem_cache_alloc(call_site, ptr, struct kmem_cache *s, gfp_flags, node)`.
#[raw_tracepoint(tracepoint = "kmem_cache_alloc")]
pub fn kmem_cache_alloc(ctx: RawTracePointContext) -> i32 {
    let Some(c) = config() else { return 0 };
    let ptr: u64 = ctx.arg(1);
    if ptr <= ZERO_SIZE_PTR {
        return 0;
    }
    let Some(who) = recorded(&c) else { return 0 };
    let cache: u64 = ctx.arg(2);
    let gfp: u64 = ctx.arg(3);
    // SAFETY: reading an int of a live kmem_cache at its BTF offset.
    let size = unsafe { bpf_probe_read_kernel((cache + c.cache_size_offset as u64) as *const u32) }
        .unwrap_or(0) as u64;
    name_cache(&c, cache);
    let block = KmemBlock {
        bytes: size,
        requested: size,
        cache,
        gfp: gfp as u32,
        kind: KMEM_SLAB,
        ..KmemBlock::default()
    };
    record(&ctx, who, slab_key(ptr), block);
    0
}

/// Files the cache's name the first time one of its objects is seen.
#[inline(always)]
fn name_cache(c: &KmemConfig, cache: u64) {
    // SAFETY: presence check only.
    if unsafe { KMEM_CACHES.get(&cache) }.is_some() {
        return;
    }
    let mut name = KmemCacheName { name: [0; 32] };
    // SAFETY: reading a pointer of a live kmem_cache at its BTF offset,
    // then the string it points to, into our own buffer.
    unsafe {
        let Ok(p) = bpf_probe_read_kernel((cache + c.cache_name_offset as u64) as *const u64)
        else {
            return;
        };
        if bpf_probe_read_kernel_str_bytes(p as *const u8, &mut name.name).is_err() {
            return;
        }
    }
    let _ = KMEM_CACHES.insert(&cache, &name, BPF_NOEXIST as u64);
}

#[inline(always)]
fn slab_key(ptr: u64) -> KmemKey {
    KmemKey {
        ptr,
        kind: KMEM_SLAB,
        _pad: 0,
    }
}

/// Every free tracepoint has two programs running the same code. The
/// kernel skips a program's run when that program is already running on
/// the CPU: an interrupt's free (RCU callbacks free sockets and inodes in
/// batches) arriving while a task's free is being handled. The twin, not
/// running then, takes it; with one program such frees were lost, leaving
/// blocks outstanding that were gone (about 1 in 1,000 socket frees here).
macro_rules! twin_programs {
    ($tracepoint:literal, $first:ident, $second:ident, $body:ident) => {
        #[raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $first(ctx: RawTracePointContext) -> i32 {
            $body(&ctx);
            0
        }

        #[raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $second(ctx: RawTracePointContext) -> i32 {
            $body(&ctx);
            0
        }
    };
}

/// `kfree(call_site, ptr)` and `kmem_cache_free(call_site, ptr, s)`.
#[inline(always)]
fn slab_free(ctx: &RawTracePointContext) {
    let ptr: u64 = ctx.arg(1);
    if ptr > ZERO_SIZE_PTR {
        forget(ptr, KMEM_SLAB);
    }
}

twin_programs!("kfree", kmem_kfree, kmem_kfree_2, slab_free);
twin_programs!(
    "kmem_cache_free",
    kmem_cache_free,
    kmem_cache_free2,
    slab_free
);

/// `mm_page_alloc(struct page *page, order, gfp_flags, migratetype)`.
#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn kmem_page_alloc(ctx: RawTracePointContext) -> i32 {
    let Some(c) = config() else { return 0 };
    let page: u64 = ctx.arg(0);
    if page == 0 {
        return 0;
    }
    let Some(who) = recorded(&c) else { return 0 };
    let order: u64 = ctx.arg(1);
    let gfp: u64 = ctx.arg(2);
    let bytes = PAGE_SIZE << (order & 31);
    let block = KmemBlock {
        bytes,
        requested: bytes,
        gfp: gfp as u32,
        order: order as u32,
        kind: KMEM_PAGE,
        ..KmemBlock::default()
    };
    let key = KmemKey {
        ptr: page,
        kind: KMEM_PAGE,
        _pad: 0,
    };
    record(&ctx, who, key, block);
    0
}

/// x86-64's page size.
const PAGE_SIZE: u64 = 4096;

/// `mm_page_free(struct page *page, order)`: every page freed, batched
/// or not (`mm_page_free_batched` comes on top of it for some).
#[inline(always)]
fn page_free(ctx: &RawTracePointContext) {
    let page: u64 = ctx.arg(0);
    forget(page, KMEM_PAGE);
}

twin_programs!("mm_page_free", kmem_page_free, kmem_page_free_2, page_free);

/// `percpu_alloc_percpu(call_site, reserved, is_atomic, size, align,
/// base_addr, off, ptr, bytes_alloc, gfp_flags)`.
#[raw_tracepoint(tracepoint = "percpu_alloc_percpu")]
pub fn kmem_percpu_alloc(ctx: RawTracePointContext) -> i32 {
    let Some(c) = config() else { return 0 };
    let ptr: u64 = ctx.arg(7);
    if ptr == 0 {
        return 0;
    }
    let Some(who) = recorded(&c) else { return 0 };
    let requested: u64 = ctx.arg(3);
    let bytes: u64 = ctx.arg(8);
    let gfp: u64 = ctx.arg(9);
    let block = KmemBlock {
        bytes,
        requested,
        gfp: gfp as u32,
        kind: KMEM_PERCPU,
        ..KmemBlock::default()
    };
    let key = KmemKey {
        ptr,
        kind: KMEM_PERCPU,
        _pad: 0,
    };
    record(&ctx, who, key, block);
    0
}

/// `percpu_free_percpu(base_addr, off, ptr)`.
#[inline(always)]
fn percpu_free(ctx: &RawTracePointContext) {
    let ptr: u64 = ctx.arg(2);
    forget(ptr, KMEM_PERCPU);
}

twin_programs!(
    "percpu_free_percpu",
    kmem_percpu_free,
    kmem_percpu_free2,
    percpu_free
);
