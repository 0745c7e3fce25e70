//! The heap probes' records: allocation functions and their attach
//! cookies, the per-thread stash of a call in flight, live blocks and
//! per-site totals by generation.

use crate::shared;

/// The one table of allocation functions: each kind's variant and
/// discriminant, the name users know it by, the ELF symbols it is probed
/// at, and the arguments its entry program reads (System V positions:
/// 0 = RDI, 1 = RSI, 2 = RDX), which decide how far a probe may move past
/// the function's entry.
macro_rules! alloc_kinds {
    ($($(#[$doc:meta])* $variant:ident = $index:literal, $name:literal, $symbols:expr, args $args:expr;)*) => {
        /// Allocation functions leaktrace probes. The discriminant travels
        /// to the eBPF programs in the low byte of the attach cookie, so
        /// one program can serve every function with the same argument
        /// layout.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AllocKind {
            $($(#[$doc])* $variant = $index,)*
        }

        impl AllocKind {
            pub const ALL: [AllocKind; ALLOC_KIND_COUNT] = [$(AllocKind::$variant,)*];

            pub const fn from_u32(v: u32) -> Option<AllocKind> {
                match v {
                    $($index => Some(AllocKind::$variant),)*
                    _ => None,
                }
            }

            /// The name users know this function by.
            pub const fn name(self) -> &'static str {
                match self {
                    $(AllocKind::$variant => $name,)*
                }
            }

            /// The ELF symbols this kind is probed at.
            pub const fn symbols(self) -> &'static [&'static str] {
                match self {
                    $(AllocKind::$variant => $symbols,)*
                }
            }

            /// The arguments its entry program reads (System V positions).
            pub const fn args(self) -> &'static [u8] {
                match self {
                    $(AllocKind::$variant => $args,)*
                }
            }
        }
    };
}

pub const ALLOC_KIND_COUNT: usize = 14;

alloc_kinds! {
    Malloc = 0, "malloc", &["malloc"], args &[0];
    Calloc = 1, "calloc", &["calloc"], args &[0, 1];
    Realloc = 2, "realloc", &["realloc"], args &[0, 1];
    Reallocarray = 3, "reallocarray", &["reallocarray"], args &[0, 1, 2];
    PosixMemalign = 4, "posix_memalign", &["posix_memalign"], args &[0, 2];
    AlignedAlloc = 5, "aligned_alloc", &["aligned_alloc"], args &[1];
    Memalign = 6, "memalign", &["memalign"], args &[1];
    Valloc = 7, "valloc", &["valloc"], args &[0];
    Pvalloc = 8, "pvalloc", &["pvalloc"], args &[0];
    /// C++ `operator new` / `new[]` and their nothrow and aligned variants
    /// (libstdc++/libc++). Probed because they call malloc from code built
    /// without frame pointers, which would hide the caller of `new`. Size
    /// is the first argument in every variant.
    OperatorNew = 9, "operator new", &[
        "_Znwm",
        "_Znam",
        "_ZnwmRKSt9nothrow_t",
        "_ZnamRKSt9nothrow_t",
        "_ZnwmSt11align_val_t",
        "_ZnamSt11align_val_t",
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        "_ZnamSt11align_val_tRKSt9nothrow_t",
    ], args &[0];
    /// jemalloc's `mallocx(size, flags)`.
    Mallocx = 10, "mallocx", &["mallocx"], args &[0];
    /// jemalloc's `rallocx(ptr, size, flags)`: realloc without the
    /// free-on-zero case.
    Rallocx = 11, "rallocx", &["rallocx"], args &[0, 1];
    /// mimalloc's `mi_malloc_aligned(size, align)` and
    /// `mi_zalloc_aligned(size, align)` (under mimalloc's `mi_` prefix).
    MallocAligned = 12, "malloc_aligned", &["malloc_aligned", "zalloc_aligned"], args &[0];
    /// mimalloc's `mi_realloc_aligned(ptr, size, align)`.
    ReallocAligned = 13, "realloc_aligned", &["realloc_aligned"], args &[0, 1];
}

/// Attach cookie layout: bits 0..8 hold the [`AllocKind`], bits 8..16 the
/// number of bytes the probed instruction sits below the function's entry
/// stack pointer (non-zero when the probe is placed after some pushes), so
/// the program can still find the caller's return address.
pub const fn cookie(kind: AllocKind, stack_delta: u8) -> u64 {
    (kind as u64) | ((stack_delta as u64) << 8)
}

/// Attach cookie bit of a probe attached for every process that maps the
/// object (one link shared by a container's processes): the program first
/// checks that the process is traced (in `TRACED`). Probes attached for one
/// process carry no such check, and cost nothing more.
pub const COOKIE_CHECK_TRACED: u64 = 1 << 63;

pub const fn cookie_kind(cookie: u64) -> u32 {
    (cookie & 0xff) as u32
}

pub const fn cookie_stack_delta(cookie: u64) -> u64 {
    (cookie >> 8) & 0xff
}

/// State stashed by an entry probe for the matching return probe, one per
/// thread: the outermost allocator call in flight. A call entered below it
/// (realloc → malloc), or tail-called from it in the same frame
/// (operator new[] → operator new), is internal to it and stashes nothing.
/// Layout: 5×u64 then 2×u32, 48 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    /// Requested size in bytes (n × size for calloc/reallocarray).
    pub size: u64,
    /// realloc/reallocarray: the old pointer; posix_memalign: `memptr`.
    pub aux: u64,
    /// Return address into the caller of the allocation function.
    pub caller: u64,
    /// Stack pointer at function entry (before any pushes the probe skipped);
    /// the matching return sees `entry_sp + 8`.
    pub entry_sp: u64,
    /// When the call started, in jiffies (bpf_jiffies64: a tenth of the
    /// cost of a clock read, precise enough for [`INFLIGHT_STALE_JIFFIES`]),
    /// so that a call whose return was never seen goes stale instead of
    /// muting the thread.
    pub since_jiffies: u64,
    pub stack_id: u32,
    /// The [`AllocKind`] called.
    pub kind: u32,
}
shared!(Pending, 48);

/// An in-flight entry older than this many jiffies (1 s at HZ=1000, 4 s at
/// Debian's 250, 10 s at 100) is treated as stale: no allocator call takes
/// a second before making its internal calls.
pub const INFLIGHT_STALE_JIFFIES: u64 = 1000;

/// Key of a live allocation: the process and the block's address (forked
/// processes hand out the same addresses). 16 bytes: tgid, explicit
/// padding, address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}
shared!(AllocKey, 16);

/// One live allocation, keyed by [`AllocKey`]. 24 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocRecord {
    pub size: u64,
    pub caller: u64,
    pub stack_id: u32,
    /// Generation (age bucket) current when the block was allocated.
    pub generation: u32,
}
shared!(AllocRecord, 24);

/// Key of the per-site totals: an allocation site (stack + immediate caller)
/// and an age generation. Generation 0 is the "folded" bucket of everything
/// older than the horizon (see [`Config`]), in one traced process. 24
/// bytes, explicit padding at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub caller: u64,
    pub stack_id: u32,
    pub generation: u32,
    pub tgid: u32,
    pub _pad: u32,
}
shared!(SiteKey, 24);

/// Outstanding bytes and blocks of one [`SiteKey`], and what it allocated
/// in all. 32 bytes, no padding. Signed because frees of folded
/// allocations are subtracted from generation 0 before userspace has moved
/// the folded positives out of the kernel (the allocated totals only ever
/// grow; signed so that one atomic add serves all four).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteTotals {
    pub bytes: i64,
    pub count: i64,
    /// Bytes and blocks allocated at this site in this generation, freed or
    /// not (pprof's `alloc_space` / `alloc_objects`).
    pub allocated_bytes: i64,
    pub allocated_count: i64,
}
shared!(SiteTotals, 32);

impl SiteTotals {
    /// No block of this key is outstanding.
    pub fn is_settled(&self) -> bool {
        self.bytes == 0 && self.count == 0
    }
}

/// Runtime configuration written by userspace into the one-element `CONFIG`
/// array. 8 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Generation stamped on new allocations; starts at 1 (0 is the folded bucket).
    pub generation: u32,
    /// Frees of blocks from generations below this go to generation 0.
    pub horizon: u32,
}
shared!(Config, 8);
