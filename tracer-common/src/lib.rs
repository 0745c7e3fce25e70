//! Types and constants shared by leaktrace's eBPF programs (`tracer-ebpf`) and
//! its userspace daemon (`tracer`).
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]` and laid
//! out with explicit padding fields, so that both sides agree byte for byte
//! and no uninitialised padding is ever hashed as part of a map key.
#![no_std]

mod unwind;
pub use unwind::*;

/// Allocation functions leaktrace probes. The discriminant travels to the
/// eBPF programs in the low byte of the attach cookie, so one program can
/// serve every function with the same argument layout.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllocKind {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Reallocarray = 3,
    PosixMemalign = 4,
    AlignedAlloc = 5,
    Memalign = 6,
    Valloc = 7,
    Pvalloc = 8,
    /// C++ `operator new` / `new[]` and their nothrow and aligned variants
    /// (libstdc++/libc++). Probed because they call malloc from code built
    /// without frame pointers, which would hide the caller of `new`.
    OperatorNew = 9,
    /// jemalloc's `mallocx(size, flags)`.
    Mallocx = 10,
    /// jemalloc's `rallocx(ptr, size, flags)`: realloc without the
    /// free-on-zero case.
    Rallocx = 11,
    /// mimalloc's `mi_malloc_aligned(size, align)` and
    /// `mi_zalloc_aligned(size, align)`.
    MallocAligned = 12,
    /// mimalloc's `mi_realloc_aligned(ptr, size, align)`.
    ReallocAligned = 13,
}

impl AllocKind {
    pub const ALL: [AllocKind; 14] = [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::Realloc,
        AllocKind::Reallocarray,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
        AllocKind::Memalign,
        AllocKind::Valloc,
        AllocKind::Pvalloc,
        AllocKind::OperatorNew,
        AllocKind::Mallocx,
        AllocKind::Rallocx,
        AllocKind::MallocAligned,
        AllocKind::ReallocAligned,
    ];

    pub const fn from_u32(v: u32) -> Option<AllocKind> {
        match v {
            0 => Some(AllocKind::Malloc),
            1 => Some(AllocKind::Calloc),
            2 => Some(AllocKind::Realloc),
            3 => Some(AllocKind::Reallocarray),
            4 => Some(AllocKind::PosixMemalign),
            5 => Some(AllocKind::AlignedAlloc),
            6 => Some(AllocKind::Memalign),
            7 => Some(AllocKind::Valloc),
            8 => Some(AllocKind::Pvalloc),
            9 => Some(AllocKind::OperatorNew),
            10 => Some(AllocKind::Mallocx),
            11 => Some(AllocKind::Rallocx),
            12 => Some(AllocKind::MallocAligned),
            13 => Some(AllocKind::ReallocAligned),
            _ => None,
        }
    }

    /// The name users know this function by.
    pub const fn name(self) -> &'static str {
        match self {
            AllocKind::Malloc => "malloc",
            AllocKind::Calloc => "calloc",
            AllocKind::Realloc => "realloc",
            AllocKind::Reallocarray => "reallocarray",
            AllocKind::PosixMemalign => "posix_memalign",
            AllocKind::AlignedAlloc => "aligned_alloc",
            AllocKind::Memalign => "memalign",
            AllocKind::Valloc => "valloc",
            AllocKind::Pvalloc => "pvalloc",
            AllocKind::OperatorNew => "operator new",
            AllocKind::Mallocx => "mallocx",
            AllocKind::Rallocx => "rallocx",
            AllocKind::MallocAligned => "malloc_aligned",
            AllocKind::ReallocAligned => "realloc_aligned",
        }
    }

    /// The ELF symbols this kind is probed at.
    pub const fn symbols(self) -> &'static [&'static str] {
        match self {
            AllocKind::Malloc => &["malloc"],
            AllocKind::Calloc => &["calloc"],
            AllocKind::Realloc => &["realloc"],
            AllocKind::Reallocarray => &["reallocarray"],
            AllocKind::PosixMemalign => &["posix_memalign"],
            AllocKind::AlignedAlloc => &["aligned_alloc"],
            AllocKind::Memalign => &["memalign"],
            AllocKind::Valloc => &["valloc"],
            AllocKind::Pvalloc => &["pvalloc"],
            // Size is the first argument in every variant.
            AllocKind::OperatorNew => &[
                "_Znwm",
                "_Znam",
                "_ZnwmRKSt9nothrow_t",
                "_ZnamRKSt9nothrow_t",
                "_ZnwmSt11align_val_t",
                "_ZnamSt11align_val_t",
                "_ZnwmSt11align_val_tRKSt9nothrow_t",
                "_ZnamSt11align_val_tRKSt9nothrow_t",
            ],
            AllocKind::Mallocx => &["mallocx"],
            AllocKind::Rallocx => &["rallocx"],
            // Under mimalloc's `mi_` prefix.
            AllocKind::MallocAligned => &["malloc_aligned", "zalloc_aligned"],
            AllocKind::ReallocAligned => &["realloc_aligned"],
        }
    }
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

/// Capacity of the Go probes' cache of creating stacks by creation site.
pub const DEFAULT_MAX_GO_SITES: u32 = 16384;

/// Attach cookie bit of a goroutine-creation probe where the new `g` is in
/// RBX (handed to `runqput`); clear means RAX (`newproc1`'s result).
pub const GO_NEW_G_IN_RBX: u64 = 1;

/// A Go probe's attach cookie: where the probed binary's `runtime.g` keeps
/// the fields the probes read, each offset in 8-byte units in a byte of its
/// own (bits 8..40; every supported version keeps them below 2 KiB), so that
/// one loaded program serves Go binaries of different versions.
pub const fn go_cookie(new_g_in_rbx: bool, g: GoConfig) -> u64 {
    (new_g_in_rbx as u64)
        | (go_offset_unit(g.goid_offset) << 8)
        | (go_offset_unit(g.gopc_offset) << 16)
        | (go_offset_unit(g.startpc_offset) << 24)
        | (go_offset_unit(g.parent_goid_offset) << 32)
}

const fn go_offset_unit(off: u32) -> u64 {
    ((off / 8) & 0xff) as u64
}

const fn go_offset_at(cookie: u64, shift: u32) -> u32 {
    (((cookie >> shift) & 0xff) as u32) * 8
}

/// The `runtime.g` offsets a Go probe's cookie carries.
pub const fn go_cookie_offsets(cookie: u64) -> GoConfig {
    GoConfig {
        goid_offset: go_offset_at(cookie, 8),
        gopc_offset: go_offset_at(cookie, 16),
        startpc_offset: go_offset_at(cookie, 24),
        parent_goid_offset: go_offset_at(cookie, 32),
    }
}

const fn go_offset_fits(off: u32) -> bool {
    off.is_multiple_of(8) && off / 8 <= 0xff
}

/// Whether the offsets fit a Go cookie (multiples of 8 below 2 KiB).
pub const fn go_offsets_fit(g: GoConfig) -> bool {
    go_offset_fits(g.goid_offset)
        && go_offset_fits(g.gopc_offset)
        && go_offset_fits(g.startpc_offset)
        && go_offset_fits(g.parent_goid_offset)
}

/// Stack id used when no stack could be recorded (stack table full,
/// unreadable user stack). The bytes are still accounted, under
/// the immediate caller only, and the failure is counted.
pub const STACK_UNKNOWN: u32 = u32::MAX;

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

/// What a counter counts: something not recorded, or a stack recorded with
/// its outer frames missing (not a drop: the frames it has are right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Dropped,
    CutShort,
}

/// The one table of counters: each one's variant, index into the per-CPU
/// `COUNTERS` array, kind, and the name reports use for it (JSON key and
/// Prometheus `reason` label alike).
macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $index:literal, $kind:ident, $name:literal;)*) => {
        /// Indexes into the per-CPU `COUNTERS` array: everything the
        /// probes could not record. Userspace sums the CPUs and prints
        /// these in every report.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $variant = $index,)*
        }

        /// Every counter, in index order, with its kind and name.
        pub const COUNTERS: [(Counter, CounterKind, &str); COUNTER_COUNT as usize] = [
            $((Counter::$variant, CounterKind::$kind, $name),)*
        ];
    };
}

counters! {
    /// An allocation not recorded because the allocation map was full.
    AllocMapFull = 0, Dropped, "alloc_map_full";
    /// An allocation not recorded because the per-site totals map was full.
    SiteMapFull = 1, Dropped, "site_map_full";
    /// A stack the kernel could not store (stack map full or hash collision).
    StackLost = 2, Dropped, "stacks_lost";
    /// An entry probe could not stash its state (pending map full).
    PendingMapFull = 3, Dropped, "pending_map_full";
    /// The caller's return address could not be read from the user stack.
    CallerUnreadable = 4, Dropped, "caller_unreadable";
    /// posix_memalign succeeded but `*memptr` could not be read.
    ResultUnreadable = 5, Dropped, "result_unreadable";
    /// A thread or child process not recorded because the task map was full.
    TaskMapFull = 6, Dropped, "task_map_full";
    /// A goroutine not recorded because the goroutine map was full.
    GoroutineMapFull = 7, Dropped, "goroutine_map_full";
    /// A new goroutine whose `g` could not be read at newproc1's return.
    GoroutineUnreadable = 8, Dropped, "goroutine_unreadable";
    /// Distinct stacks cut short, by why (see [`StackEnd`]).
    StackDepthLimit = 9, CutShort, "depth_limit";
    StackNoTable = 10, CutShort, "no_unwind_table";
    StackNoMapping = 11, CutShort, "unknown_mapping";
    StackUnreadable = 12, CutShort, "unreadable_stack";
    StackUnsupported = 13, CutShort, "unsupported_rule";
    /// A process that joined the traced set (forked by a traced process,
    /// or exec'd in a followed container) not recorded: the table of
    /// traced processes was full.
    ProcessMapFull = 14, Dropped, "process_map_full";
    /// A process event userspace never got (its ring buffer was full).
    EventLost = 15, Dropped, "events_lost";
}

pub const COUNTER_COUNT: u32 = 16;

// The table is in index order (userspace indexes it by `Counter as usize`).
const _: () = {
    let mut i = 0;
    while i < COUNTERS.len() {
        assert!(COUNTERS[i].0 as usize == i);
        i += 1;
    }
};

/// Spawn functions probed at entry to learn where a thread or child process
/// comes from (the frame chain is intact at their public entry, unlike at
/// the clone syscall deep inside libc).
pub const SPAWN_SYMBOLS: [&str; 6] = [
    "pthread_create",
    "fork",
    "vfork",
    "posix_spawn",
    "posix_spawnp",
    "system",
];

/// State stashed at a spawn function's entry, consumed by the fork
/// tracepoint in the same thread. 32 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpawnPending {
    pub caller: u64,
    pub entry_sp: u64,
    pub since_ns: u64,
    pub stack_id: u32,
    pub _pad: u32,
}

/// A spawn stash older than this belongs to a call that created nothing.
pub const SPAWN_STALE_NS: u64 = 1_000_000_000;

/// Task kinds in [`TaskRecord::kind`].
pub const TASK_THREAD: u32 = 0;
pub const TASK_PROCESS: u32 = 1;

/// A thread or child process created by the target after attach, keyed by
/// its TID. 32 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskRecord {
    /// Return address into the caller of the spawn function (0: unknown).
    pub caller: u64,
    /// bpf_ktime_get_ns() at creation (CLOCK_MONOTONIC).
    pub start_ns: u64,
    pub stack_id: u32,
    pub kind: u32,
    pub parent_tid: u32,
    /// The traced process that created it (its tgid).
    pub owner: u32,
}

/// Written by userspace before attach: where `pid`/`tgid` live in this
/// kernel's `struct task_struct` (from its BTF), and the PID namespace of
/// a traced container (a process that execs in it is traced from then
/// on). 32 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskConfig {
    pub pid_offset: u32,
    pub tgid_offset: u32,
    /// The namespace's nsfs device and inode (`stat /proc/PID/ns/pid`).
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// Which exec's join the traced set: none (0), those in the
    /// namespace `pidns_*` names ([`FOLLOW_IN_PIDNS`]: one container), or
    /// those in any other ([`FOLLOW_OUTSIDE_PIDNS`], `pidns_*` naming the
    /// host's: every container).
    pub follow_pidns: u32,
    /// Nonzero: a process that joins the traced set by exec, or a traced
    /// one that execs, is stopped (SIGSTOP) before its first instruction,
    /// and again when its loader has mapped its libraries, so that its
    /// probes are in before it runs (see `EVENT_LOADED`).
    pub stop_at_exec: u32,
}

/// `TaskConfig::follow_pidns`: exec's in the namespace named.
pub const FOLLOW_IN_PIDNS: u32 = 1;
/// `TaskConfig::follow_pidns`: exec's in any namespace but the one named.
pub const FOLLOW_OUTSIDE_PIDNS: u32 = 2;

/// `TRACED` value flags: children this process forks are traced too, from
/// the fork on (a container's processes).
pub const TRACE_CHILDREN: u32 = 1;

/// What the kernel tells userspace about traced processes (`EVENTS` ring
/// buffer). 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEvent {
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    pub tgid: u32,
    /// EVENT_FORKED: the traced parent's tgid.
    pub parent: u32,
    /// Nonzero: the process was stopped (SIGSTOP) for userspace to
    /// attach, and waits for its SIGCONT.
    pub stopped: u32,
}

/// A traced process forked a child, traced from its first instruction.
pub const EVENT_FORKED: u32 = 1;
/// A traced process replaced its image (exec): new objects to probe.
pub const EVENT_EXECED: u32 = 2;
/// A process exec'd in the followed PID namespace (`docker exec`) and is
/// traced from then on.
pub const EVENT_ENTERED: u32 = 3;
/// A process stopped at exec reached its loader's `_dl_debug_state` (its
/// libraries mapped, or about to be), where it stopped again.
pub const EVENT_LOADED: u32 = 4;

/// Written by userspace before attach: where the fields the probes read
/// live in this Go binary's `runtime.g` (from its DWARF, else a per-version
/// table). 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoConfig {
    pub goid_offset: u32,
    pub gopc_offset: u32,
    pub startpc_offset: u32,
    pub parent_goid_offset: u32,
}

/// Key of a goroutine: its process and its goid (`g` structs are reused,
/// goids never). 16 bytes, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoroutineKey {
    pub goid: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// A goroutine created after attach, keyed by [`GoroutineKey`]. 40 bytes,
/// no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoroutineRecord {
    /// PC of the `go` statement (the "created by" site; a return address).
    pub gopc: u64,
    /// Entry of the goroutine's function.
    pub startpc: u64,
    pub parent_goid: u64,
    /// bpf_ktime_get_ns() at creation (CLOCK_MONOTONIC).
    pub created_ns: u64,
    /// Creating stack (frame-pointer walk from the creation probe); the
    /// same for every goroutine of one creation site (gopc, startpc).
    pub stack_id: u32,
    pub _pad: u32,
}

/// One user stack in the probes' stack table, keyed by a 32-bit stack id
/// derived from `hash`. The kernel's own stack map loses a stack whenever two
/// stacks share a bucket (-EEXIST); this table resolves such collisions by
/// comparing the full 64-bit hash and moving on to the next id.
/// 8 + 4 + 4 + 127×8 = 1032 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackRecord {
    /// 64-bit hash of the frames.
    pub hash: u64,
    /// Why the walk ended: a [`StackEnd`].
    pub end: u32,
    pub _pad: u32,
    /// Return addresses, innermost (the probed instruction) first, ended by
    /// a zero slot unless all are used; slots after that are unspecified.
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// How many consecutive ids a stack may try before it is counted as lost
/// (each step means another stack already holds the id: rare at 2^32 ids).
pub const STACK_ID_PROBES: u32 = 4;

/// Default map sizes (overridable by flags).
pub const DEFAULT_MAX_ALLOCS: u32 = 1 << 20;
pub const DEFAULT_MAX_SITES: u32 = 1 << 16;
pub const DEFAULT_MAX_STACKS: u32 = 1 << 14;
pub const DEFAULT_MAX_THREADS: u32 = 1 << 14;
pub const DEFAULT_MAX_TASKS: u32 = 1 << 16;
pub const DEFAULT_MAX_GOROUTINES: u32 = 1 << 18;

/// Frames stored per stack (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, made only of integers, and
    // have no implicit padding (explicit `_pad` fields where needed), so
    // every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoroutineKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpawnPending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SiteTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoroutineRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessMappings {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Pending>(), 48);
        assert_eq!(size_of::<AllocRecord>(), 24);
        assert_eq!(size_of::<SiteKey>(), 24);
        assert_eq!(size_of::<AllocKey>(), 16);
        assert_eq!(size_of::<GoroutineKey>(), 16);
        assert_eq!(size_of::<ProcessEvent>(), 16);
        assert_eq!(size_of::<SiteTotals>(), 32);
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(size_of::<SpawnPending>(), 32);
        assert_eq!(size_of::<TaskRecord>(), 32);
        assert_eq!(size_of::<TaskConfig>(), 32);
        assert_eq!(size_of::<GoConfig>(), 16);
        assert_eq!(size_of::<GoroutineRecord>(), 40);
        assert_eq!(size_of::<StackRecord>(), 1032);
        assert_eq!(size_of::<UnwindRow>(), 8);
        assert_eq!(size_of::<UnwindRule>(), 16);
        assert_eq!(size_of::<UnwindMapping>(), 40);
        assert_eq!(size_of::<CachedStep>(), 16);
        assert_eq!(size_of::<ProcessMappings>(), 40 + 40 * MAX_UNWIND_MAPPINGS);
    }

    #[test]
    fn go_cookie_round_trips() {
        let g = GoConfig {
            goid_offset: 160,
            gopc_offset: 288,
            startpc_offset: 304,
            parent_goid_offset: 280,
        };
        assert!(go_offsets_fit(g));
        let c = go_cookie(true, g);
        assert_eq!(c & GO_NEW_G_IN_RBX, GO_NEW_G_IN_RBX);
        assert_eq!(c & COOKIE_CHECK_TRACED, 0);
        let back = go_cookie_offsets(c | COOKIE_CHECK_TRACED);
        assert_eq!(
            (
                back.goid_offset,
                back.gopc_offset,
                back.startpc_offset,
                back.parent_goid_offset
            ),
            (160, 288, 304, 280)
        );
        assert!(!go_offsets_fit(GoConfig {
            goid_offset: 4,
            ..g
        }));
    }

    #[test]
    fn cookie_round_trips() {
        for kind in AllocKind::ALL {
            let c = cookie(kind, 24);
            assert_eq!(AllocKind::from_u32(cookie_kind(c)), Some(kind));
            assert_eq!(cookie_stack_delta(c), 24);
        }
    }
}
