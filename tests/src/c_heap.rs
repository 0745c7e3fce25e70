//! What the C fixture (tests/fixtures/heap_c.c) leaks, and the checks every
//! test that runs it shares.

use serde_json::Value;

use crate::*;

/// Sites every C run must report exactly: (caller, bytes, blocks, allocator).
/// (function, bytes, blocks, allocator function it calls)
pub const C_LEAKS: &[(&str, u64, u64, &str)] = &[
    ("leak_malloc", 3000, 3, "malloc"),
    ("leak_calloc", 2000, 2, "calloc"),
    ("leak_realloc", 5000, 1, "realloc"),
    ("leak_realloc_null", 700, 1, "realloc"),
    ("leak_reallocarray", 600, 1, "reallocarray"),
    ("leak_posix_memalign", 4096, 2, "posix_memalign"),
    ("leak_aligned_alloc", 1024, 1, "aligned_alloc"),
    ("leak_memalign", 1536, 1, "memalign"),
    ("leak_valloc", 3000, 1, "valloc"),
    ("leak_pvalloc", 100, 1, "pvalloc"),
    ("leak_after_failed_realloc", 400, 1, "malloc"),
];
pub const C_TOTAL_BYTES: u64 = 21456;
pub const C_TOTAL_BLOCKS: u64 = 15;

/// Functions that free what they allocate (or whose allocations fail).
pub const C_NOT_LEAKS: &[&str] = &[
    "freed_malloc",
    "freed_calloc",
    "freed_realloc",
    "freed_realloc_zero",
    "freed_reallocarray",
    "freed_posix_memalign",
    "freed_aligned_alloc",
    "failed_allocations",
    "short_lived",
];

/// How a site's allocator names are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorNames {
    /// Exactly as glibc's aliases make them (it exports aligned_alloc and
    /// memalign at one address, so a call to either shows both names).
    Glibc,
    /// The function called is among the names (other allocators alias
    /// other functions).
    Including,
}

fn glibc_names(called: &str) -> &str {
    match called {
        "aligned_alloc" | "memalign" => "aligned_alloc/memalign",
        other => other,
    }
}

pub fn assert_c_leaks(report: &Value, names: AllocatorNames) {
    for &(function, bytes, blocks, called) in C_LEAKS {
        match names {
            AllocatorNames::Glibc => {
                assert_site(report, function, bytes, blocks, glibc_names(called));
            }
            AllocatorNames::Including => {
                let stacks = stacks_at(report, function);
                assert_eq!(stacks.len(), 1, "one stack at {function}: {report}");
                let s = stacks[0];
                assert_eq!(
                    (&s["bytes"], &s["blocks"]),
                    (&bytes.into(), &blocks.into()),
                    "{s}"
                );
                let allocator = s["allocator"].as_str().unwrap_or("");
                assert!(
                    allocator.split('/').any(|n| n == called),
                    "{function} calls {called}: {s}"
                );
            }
        }
    }
    for &function in C_NOT_LEAKS {
        assert!(
            stacks_through(report, function).is_empty(),
            "{function} must not appear: {report}"
        );
    }
    // leak_realloc's malloc(50) was released by its realloc: one stack only.
    assert_eq!(stacks_at(report, "leak_realloc").len(), 1);
}

/// The C scenario shared by host and container tests: attach to a running
/// `heap_c wait`, make it leak, and return the first report holding every
/// leaked block, after checking it against the fixture's exact leaks.
pub fn trace_c_leaks(fixture: &mut Fixture) -> (Leaktrace, Value) {
    let mut lt = Leaktrace::attach(fixture.pid, C_LEAK_FLAGS);
    let report = c_leaks_of(fixture, &mut lt, AllocatorNames::Glibc);
    (lt, report)
}

/// Flags for tracing the C fixture's leaks.
pub const C_LEAK_FLAGS: &[&str] = &["-i", "1", "--older-than", "300ms", "--top", "100"];

/// Makes the C fixture leak and checks the first report on it (by PID:
/// leaktrace may trace other processes too) that shows every leak.
pub fn c_leaks_of(fixture: &mut Fixture, lt: &mut Leaktrace, names: AllocatorNames) -> Value {
    c_leaks_with(fixture, lt, names, (0, 0))
}

/// [`c_leaks_of`] for a fixture traced from its exec on: besides its leaks
/// it holds what it allocated at startup (`startup`: bytes and blocks;
/// [`EXEC_STARTUP`]), which a fixture attached to later did before attach.
pub fn c_leaks_with(
    fixture: &mut Fixture,
    lt: &mut Leaktrace,
    names: AllocatorNames,
    startup: (u64, u64),
) -> Value {
    fixture.command("leak", "leaked");
    let pid = fixture.pid;
    let (bytes, blocks) = (C_TOTAL_BYTES + startup.0, C_TOTAL_BLOCKS + startup.1);
    let report = lt.report_where(|r| r["pid"] == pid && r["old_blocks"].as_u64() >= Some(blocks));
    assert_c_leaks(&report, names);
    // Nothing else survives: no leak missed, nothing extra.
    assert_eq!(report["old_bytes"], bytes, "{report}");
    assert_eq!(report["old_blocks"], blocks, "{report}");
    assert_eq!(report["live_bytes"], bytes);
    assert_nothing_dropped(&report);
    report
}

/// What a `heap_c` traced from its exec on holds besides its leaks:
/// leak_at_startup's block (123 B, before main) and the C library's
/// buffers for its stdin and stdout (pipes: a page each, at its first
/// read and write).
pub const EXEC_STARTUP: (u64, u64) = (123 + 2 * 4096, 3);
