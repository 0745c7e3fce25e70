//! What the probes count instead of recording: one table of counters.

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
    /// A kernel block (`--kernel`) not recorded: its table was full.
    KmemMapFull = 16, Dropped, "kernel_block_map_full";
    /// A kernel block recorded without its kernel stack (the kernel's
    /// walk failed, or the kernel stack table was full).
    KmemStackLost = 17, Dropped, "kernel_stacks_lost";
    /// A kernel free whose block could not be removed from the table (an
    /// error other than "not there"): the block stays outstanding.
    KmemFreeFailed = 18, Dropped, "kernel_free_failed";
    /// A kernel allocation not recorded: it came (in an interrupt) while
    /// one of the kernel-memory programs was recording on that CPU.
    KmemAllocNested = 19, Dropped, "kernel_alloc_nested";
}

pub const COUNTER_COUNT: u32 = 20;

// The table is in index order (userspace indexes it by `Counter as usize`).
const _: () = {
    let mut i = 0;
    while i < COUNTERS.len() {
        assert!(COUNTERS[i].0 as usize == i);
        i += 1;
    }
};
