//! Heap leak tracing end to end: real fixtures, real kernel, real binary.

use leaktrace_tests::*;

#[test]
fn c_program_attached_by_pid_reports_every_leak_site_exactly() {
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let (_lt, report) = trace_c_leaks(&mut fixture);
    // Every leak site's stack continues through do_leaks into main.
    for &(function, ..) in C_LEAKS {
        let s = stacks_at(&report, function)[0];
        let names: Vec<&str> = s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["symbol"].as_str())
            .collect();
        assert_eq!(&names[1..3], &["do_leaks", "main"], "{function}: {names:?}");
        assert_eq!(s["frames"][0]["module"], "heap_c");
        assert!(
            s["frames"][0]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("heap_c.c")),
            "{s}"
        );
    }
    assert!(fixture.is_alive());
}

#[test]
fn json_reports_follow_the_documented_schema() {
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let mut lt = Leaktrace::attach(fixture.pid, &["-i", "1", "--older-than", "0", "-n", "2"]);
    fixture.command("leak", "leaked");
    let first = lt.next_report();
    let (status, rest, _) = lt.finish();
    assert!(status.success());
    assert_eq!(rest.len(), 1, "-n 2 gives exactly two reports");
    for (i, r) in [first, rest[0].clone()].iter().enumerate() {
        assert_eq!(r["type"], "heap_report");
        assert_eq!(r["seq"], i as u64 + 1);
        assert_eq!(r["final"], i == 1);
        assert_eq!(r["pid"], fixture.pid);
        assert_eq!(r["comm"], "heap_c");
        assert_eq!(r["older_than_ms"], 0);
        for key in [
            "timestamp_ms",
            "elapsed_ms",
            "live_bytes",
            "live_blocks",
            "old_bytes",
            "old_blocks",
            "sites_total",
        ] {
            assert!(r[key].is_u64(), "{key} is a number: {r}");
        }
        assert!(r["target_exited"].is_boolean());
        for s in r["stacks"].as_array().expect("stacks") {
            assert!(s["bytes"].is_u64() && s["blocks"].is_u64() && s["oldest_age_ms"].is_u64());
            assert!(s["growth_bytes"].is_i64() || s["growth_bytes"].is_null());
            assert!(s["allocator"].is_string() || s["allocator"].is_null());
            assert!(s["stack_lost"].is_boolean());
            for f in s["frames"].as_array().expect("frames") {
                assert!(
                    f["address"].as_str().is_some_and(|a| a.starts_with("0x")),
                    "{f}"
                );
                assert!(f["symbol"].is_string() || f["symbol"].is_null());
                assert!(f["module"].is_string() || f["module"].is_null());
                assert!(f["file"].is_string() || f["file"].is_null());
                assert!(f["line"].is_u64() || f["line"].is_null());
                assert!(f["inlined"].is_boolean());
            }
        }
    }
    // Growth: the second report saw the same sites again.
    assert_eq!(stacks_at(&rest[0], "leak_malloc")[0]["growth_bytes"], 0);
}

#[test]
fn launch_mode_traces_from_the_first_allocation_and_exits_with_the_command() {
    let bin = fixtures().path("heap_c");
    let bin = bin.to_str().expect("utf8 path");
    let lt = Leaktrace::start(&[
        "-i",
        "60",
        "--older-than",
        "0",
        "--top",
        "100",
        "--",
        bin,
        "run",
        "1.5",
        "7",
    ]);
    let (status, reports, _) = lt.finish();
    assert_eq!(
        status.code(),
        Some(7),
        "leaktrace exits with the command's status"
    );
    assert_eq!(reports.len(), 1, "one final report: {reports:?}");
    let report = &reports[0];
    assert_eq!(report["final"], true);
    assert_eq!(report["target_exited"], true);
    // Symbolized from the mappings snapshot, after the target is gone.
    assert_c_leaks(report, AllocatorNames::Glibc);
    // Probes were in place before the program's first allocation.
    assert_site(report, "leak_at_startup", 123, 1, "malloc");
    // And the unwind tables of its libraries: every stack whole, from
    // the first one (a constructor's) on, through libc to _start.
    for s in report["stacks"].as_array().expect("stacks") {
        assert!(s["cut_short"].is_null(), "stack cut short: {s}");
        let frames = s["frames"].as_array().expect("frames");
        let last = frames.last().and_then(|f| f["symbol"].as_str());
        assert_eq!(last, Some("_start"), "stack not whole: {s}");
    }
    assert_eq!(
        frame_symbols(stacks_at(report, "leak_at_startup")[0]),
        [
            "leak_at_startup",
            "call_init",
            "__libc_start_main_impl",
            "_start"
        ]
    );
}

#[test]
fn final_report_when_the_target_exits() {
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let lt = Leaktrace::attach(fixture.pid, &["-i", "60", "--older-than", "0"]);
    fixture.command("leak", "leaked");
    fixture.send("exit 3");
    assert_eq!(fixture.wait().code(), Some(3));
    let (status, reports, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["final"], true);
    assert_eq!(reports[0]["target_exited"], true);
    assert_site(&reports[0], "leak_malloc", 3000, 3, "malloc");
    assert_site(&reports[0], "leak_realloc", 5000, 1, "realloc");
}

#[test]
fn older_than_hides_young_blocks_until_they_age() {
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let mut lt = Leaktrace::attach(fixture.pid, &["-i", "1", "--older-than", "2500ms"]);
    fixture.command("leak", "leaked");
    lt.report_where(|r| !stacks_at(r, "leak_malloc").is_empty());
    fixture.command("late", "leaked-late");
    // The next report comes at most one interval later: too young to show.
    let young = lt.next_report();
    assert!(stacks_at(&young, "leak_late").is_empty(), "{young}");
    assert_site(&young, "leak_malloc", 3000, 3, "malloc");
    let aged = lt.report_where(|r| !stacks_at(r, "leak_late").is_empty());
    assert_site(&aged, "leak_late", 2222, 1, "malloc");
    let age = stacks_at(&aged, "leak_late")[0]["oldest_age_ms"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        age >= 2500,
        "reported only once older than the threshold, got {age} ms"
    );
}

/// heap_cpp's leaks, exactly, with `env` set (e.g. an allocator preloaded).
fn cpp_leaks_are_exact(env: &[(&str, &str)]) -> serde_json::Value {
    let mut fixture = Fixture::start_with_env("heap_cpp", &["wait"], env);
    let mut lt = Leaktrace::attach(fixture.pid, &["-i", "1", "--older-than", "300ms"]);
    fixture.command("leak", "leaked");
    let report = lt.report_where(|r| r["old_blocks"].as_u64() >= Some(6));
    assert_site(&report, "leak_new_array", 4000, 2, "operator new");
    assert_site(&report, "leak_new_object", 192, 3, "operator new");
    assert_site(&report, "leak_malloc_cpp", 777, 1, "malloc");
    for f in ["freed_containers", "freed_new_delete"] {
        assert!(
            stacks_through(&report, f).is_empty(),
            "{env:?}: {f}: {report}"
        );
    }
    assert_eq!(report["old_bytes"], 4969, "{env:?}: {report}");
    assert_eq!(report["old_blocks"], 6, "{env:?}");
    report
}

#[test]
fn cpp_program_new_and_malloc_leaks() {
    let report = cpp_leaks_are_exact(&[]);
    assert_eq!(
        stacks_at(&report, "leak_new_array")[0]["frames"][0]["symbol"],
        "leak_new_array()"
    );
}

#[test]
fn freeing_old_blocks_removes_them_from_reports() {
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let mut lt = Leaktrace::attach(
        fixture.pid,
        &["-i", "1", "--older-than", "200ms", "--top", "100"],
    );
    fixture.command("leak", "leaked");
    let before = lt.report_where(|r| r["old_blocks"].as_u64() >= Some(C_TOTAL_BLOCKS));
    assert_site(&before, "leak_malloc", 3000, 3, "malloc");
    // Once the leak is 500 ms old its generation is folded into the
    // long-lived bucket: frees must still find and subtract it.
    lt.report_where(|r| {
        stacks_at(r, "leak_malloc")
            .first()
            .and_then(|s| s["oldest_age_ms"].as_u64())
            >= Some(500)
    });
    fixture.command("release", "released");
    let after = lt.report_where(|r| stacks_at(r, "leak_malloc").is_empty());
    assert_eq!(after["old_bytes"], C_TOTAL_BYTES - 3000, "{after}");
    assert_eq!(after["old_blocks"], C_TOTAL_BLOCKS - 3);
    assert_eq!(after["live_bytes"], C_TOTAL_BYTES - 3000);
    assert_site(&after, "leak_calloc", 2000, 2, "calloc");
}

#[test]
fn concurrent_threads_are_counted_exactly() {
    threads_are_counted_exactly(&[]);
}

/// The same four threads with one in-flight slot between them: whichever
/// holds it, the others' calls (realloc(NULL) nesting malloc included) go
/// through the shared-slot path and must be counted just the same.
#[test]
fn concurrent_threads_sharing_one_inflight_slot_are_counted_exactly() {
    threads_are_counted_exactly(&[("LEAKTRACE_TEST_INFLIGHT_SLOTS", "1")]);
}

fn threads_are_counted_exactly(env: &[(&str, &str)]) {
    let mut fixture = Fixture::start("threads_c", &[]);
    let mut lt = Leaktrace::attach_with_env(
        fixture.pid,
        &["-i", "1", "--older-than", "0", "--top", "100"],
        env,
    );
    fixture.command("go", "done");
    let done_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // Reports queue up while the threads run: take one from after they ended.
    let report = lt.report_where(|r| r["timestamp_ms"].as_u64() > Some(done_ms));
    assert_site(&report, "leak_per_thread", 4800, 100, "malloc");
    assert!(stacks_through(&report, "churn").is_empty(), "{report}");
    assert_nothing_dropped(&report);
    // The only other survivors: glibc keeps each finished thread's TLS
    // vector (allocate_dtv, in the dynamic loader) with its cached stack.
    let (dtv_bytes, dtv_blocks) = totals_through(&report, "allocate_dtv");
    assert_eq!(dtv_blocks, 4, "{report}");
    assert_eq!(
        report["old_bytes"].as_u64(),
        Some(4800 + dtv_bytes),
        "{report}"
    );
    assert_eq!(report["old_blocks"], 104);
}

#[test]
fn full_tables_are_counted_not_hidden() {
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let lt = Leaktrace::attach(
        fixture.pid,
        &[
            "-i",
            "60",
            "--older-than",
            "0",
            "--max-allocs",
            "4",
            "--max-stacks",
            "2",
            "--top",
            "100",
        ],
    );
    // Recorded by the time the fixture says so: the probes run in its
    // calls.
    fixture.command("leak", "leaked");
    lt.signal(libc::SIGINT);
    let (status, reports, _) = lt.finish();
    assert!(status.success());
    let r = &reports[0];
    assert_eq!(r["final"], true);
    // Only 4 blocks fit; every other allocation is counted as not recorded.
    assert!(r["old_blocks"].as_u64() <= Some(4), "{r}");
    assert!(r["dropped"]["alloc_map_full"].as_u64() > Some(0), "{r}");
    // Two stacks fit; the rest keep their bytes under the immediate caller.
    assert!(r["dropped"]["stacks_lost"].as_u64() > Some(0), "{r}");
    let lost: Vec<_> = r["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stack_lost"] == true)
        .collect();
    for s in lost {
        assert_eq!(
            s["frames"].as_array().map(Vec::len),
            Some(1),
            "only the caller is known: {s}"
        );
    }
}

#[test]
fn thousands_of_distinct_stacks_are_each_recorded() {
    // 2048 live stacks in the default 16384-entry table: a table that loses a
    // stack whenever two share a hash bucket (the kernel's stack map) loses
    // about a hundred of them here.
    const PATHS: usize = 2048;
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let mut lt = Leaktrace::attach(
        fixture.pid,
        &["-i", "1", "--older-than", "300ms", "--top", "5000"],
    );
    fixture.command("paths", "leaked-paths");
    let report = lt.report_where(|r| r["old_blocks"].as_u64() >= Some(PATHS as u64));
    assert_nothing_dropped(&report);
    assert_eq!(report["old_blocks"], PATHS as u64, "{report}");
    assert_eq!(report["old_bytes"], 8 * PATHS as u64);
    let stacks = stacks_at(&report, "leak_on_path");
    assert_eq!(stacks.len(), PATHS);
    let mut paths = std::collections::HashSet::new();
    for s in &stacks {
        assert_eq!(
            (s["bytes"].as_u64(), s["blocks"].as_u64()),
            (Some(8), Some(1)),
            "{s}"
        );
        // Frames below leak_on_path spell the path: 11 left/right turns.
        let turns: String = s["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .filter_map(|f| match f["symbol"].as_str().map(bare) {
                Some("path_left") => Some('L'),
                Some("path_right") => Some('R'),
                _ => None,
            })
            .collect();
        assert_eq!(turns.len(), 11, "{s}");
        paths.insert(turns);
    }
    assert_eq!(paths.len(), PATHS, "every path is its own stack");
}

#[test]
fn a_growing_site_is_told_from_a_steady_one() {
    // The one-time leaks stay put (what a cache or set-up looks like);
    // leak_late leaks once more before every report (what a leak looks like).
    const LATE: u64 = 5;
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let mut lt = Leaktrace::attach(fixture.pid, C_LEAK_FLAGS);
    fixture.command("leak", "leaked");
    lt.report_where(|r| r["old_blocks"].as_u64() >= Some(C_TOTAL_BLOCKS));
    let mut report = serde_json::Value::Null;
    for _ in 0..LATE {
        fixture.command("late", "leaked-late");
        report = lt.next_report();
    }
    assert_site(&report, "leak_late", LATE * 2222, LATE, "malloc");
    let late = stacks_at(&report, "leak_late")[0];
    assert_eq!(late["growth_bytes"], 2222, "{late}");
    assert_eq!(late["trend"], "growing", "{late}");
    for &(function, ..) in C_LEAKS {
        let s = stacks_at(&report, function)[0];
        assert_eq!(s["growth_bytes"], 0, "{s}");
        assert_eq!(s["trend"], "steady", "{function}: {s}");
    }
}

/// Allocators that replace the C library's, as `LD_PRELOAD` or a link
/// against them puts them in front of it: the calls go to them, so the
/// probes must too, with their own `free` and `operator delete`.
const REPLACEMENT_ALLOCATORS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
];

#[test]
fn c_leaks_are_exact_under_replacement_allocators() {
    for &lib in REPLACEMENT_ALLOCATORS {
        let mut fixture = Fixture::start_with_env("heap_c", &["wait"], &[("LD_PRELOAD", lib)]);
        let mut lt = Leaktrace::attach(fixture.pid, C_LEAK_FLAGS);
        let banner = lt.banner();
        // The maps name the file the symlink points to.
        let mapped = std::fs::canonicalize(lib).expect("allocator installed by xtask setup");
        assert!(
            banner.contains(&*mapped.to_string_lossy()),
            "{lib} is probed: {banner}"
        );
        c_leaks_of(&mut fixture, &mut lt, AllocatorNames::Including);
    }
}

#[test]
fn cpp_leaks_are_exact_under_replacement_allocators() {
    // Their operator delete frees without calling free.
    for &lib in REPLACEMENT_ALLOCATORS {
        cpp_leaks_are_exact(&[("LD_PRELOAD", lib)]);
    }
}

#[test]
fn jemalloc_api_leaks_are_exact() {
    let jemalloc = REPLACEMENT_ALLOCATORS[0];
    let mut fixture = Fixture::start_with_env("jemalloc_api", &[], &[("LD_PRELOAD", jemalloc)]);
    let mut lt = Leaktrace::attach(fixture.pid, C_LEAK_FLAGS);
    fixture.command("leak", "leaked");
    let report = lt.report_where(|r| r["old_blocks"].as_u64() >= Some(4));
    assert_site(&report, "leak_mallocx", 300, 3, "mallocx");
    // The block rallocx moved out of is released.
    assert_site(&report, "leak_rallocx", 700, 1, "rallocx");
    for f in ["freed_sized", "freed_flagged"] {
        assert!(stacks_through(&report, f).is_empty(), "{f}: {report}");
    }
    assert_eq!(report["old_bytes"], 1000, "{report}");
    assert_eq!(report["old_blocks"], 4, "{report}");
    assert_nothing_dropped(&report);
}

/// tests/fixtures/rust_heap built as `fixture`: its leaks, exactly, and the
/// allocator function each site's blocks came from (vec, aligned, grown).
fn rust_leaks_are_exact(fixture: &str, via: [&str; 3]) {
    let mut fixture = Fixture::start(fixture, &[]);
    let mut lt = Leaktrace::attach(fixture.pid, C_LEAK_FLAGS);
    fixture.command("leak", "leaked");
    let report = lt.report_where(|r| r["old_blocks"].as_u64() >= Some(5));
    let sites = [
        ("leak_vec", (6000, 2)),
        ("leak_aligned", (512, 2)),
        ("leak_grown", (4000, 1)),
    ];
    for ((function, totals), allocator) in sites.into_iter().zip(via) {
        assert_eq!(totals_through(&report, function), totals, "{report}");
        let stacks = stacks_through(&report, function);
        assert_eq!(stacks[0]["allocator"], allocator, "{function}: {report}");
    }
    assert_eq!(totals_through(&report, "freed_vec"), (0, 0), "{report}");
    assert_eq!(report["old_bytes"], 10512, "{report}");
    assert_eq!(report["old_blocks"], 5, "{report}");
    assert_nothing_dropped(&report);
}

#[test]
fn rust_program_on_the_system_allocator() {
    rust_leaks_are_exact("heap_rust", ["malloc", "posix_memalign", "realloc"]);
}

#[test]
fn rust_program_on_jemalloc() {
    // tikv-jemallocator: jemalloc built into the executable under the
    // `_rjem_` prefix, freeing with sdallocx only.
    rust_leaks_are_exact("rust_jemalloc", ["malloc", "mallocx", "realloc"]);
}

#[test]
fn rust_program_on_mimalloc() {
    // The mimalloc crate: mimalloc's own API built into the executable.
    rust_leaks_are_exact(
        "rust_mimalloc",
        ["malloc_aligned", "malloc_aligned", "realloc_aligned"],
    );
}

/// The probe table `leaktrace --list-probes` prints for `pid`: function →
/// (offset from the entry, emulated by the kernel), for `object`.
fn probe_points(pid: u32, object: &str) -> Vec<(String, u64, bool)> {
    let (status, out, err) = run_leaktrace(&["--list-probes", "--pid", &pid.to_string()]);
    assert!(status.success(), "--list-probes failed: {err}");
    out.lines()
        .skip(1)
        .filter(|l| l.trim_end().ends_with(object))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let function = cols[0].to_string();
            let offset = cols
                .iter()
                .find_map(|c| c.strip_prefix("+0x"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| panic!("no offset in {l:?}"));
            (function, offset, l.contains(" emulated "))
        })
        .collect()
}

/// Functions whose first instruction the kernel would single-step, and
/// where the probe therefore moved (Debian 12's builds), by object.
const MOVED: &[(&str, &[&str])] = &[
    (
        "libc.so.6",
        &[
            "free/cfree",
            "posix_memalign",
            "aligned_alloc/memalign",
            "valloc",
        ],
    ),
    ("libjemalloc.so.2", &["malloc", "free", "sdallocx"]),
    (
        "libtcmalloc_minimal.so.4.5.10",
        &["malloc", "free/cfree/tc_free/_ZdlPv/_ZdaPv"],
    ),
];

#[test]
fn moved_probes_sit_on_emulated_instructions() {
    for (i, env) in [
        None,
        Some(REPLACEMENT_ALLOCATORS[0]),
        Some(REPLACEMENT_ALLOCATORS[1]),
    ]
    .into_iter()
    .enumerate()
    {
        let env: Vec<(&str, &str)> = env.map(|l| ("LD_PRELOAD", l)).into_iter().collect();
        let fixture = Fixture::start_with_env("probe_paths", &[], &env);
        let (object, moved) = MOVED[i];
        let points = probe_points(fixture.pid, object);
        for &function in moved {
            let (_, offset, emulated) = points
                .iter()
                .find(|(f, ..)| f == function)
                .unwrap_or_else(|| panic!("{function} not probed in {object}: {points:?}"));
            assert!(*offset > 0 && *emulated, "{object} {function}: {points:?}");
        }
        // The C library's malloc starts with a push: it stays at the entry.
        if i == 0 {
            assert!(points.contains(&("malloc".into(), 0, true)), "{points:?}");
        }
    }
}

#[test]
fn moved_probes_see_every_call() {
    let allocators = std::iter::once(None).chain(REPLACEMENT_ALLOCATORS.iter().copied().map(Some));
    for lib in allocators {
        let env: Vec<(&str, &str)> = lib.map(|l| ("LD_PRELOAD", l)).into_iter().collect();
        let mut fixture = Fixture::start_with_env("probe_paths", &[], &env);
        let mut lt = Leaktrace::attach(fixture.pid, &["-i", "0.5", "--older-than", "0"]);
        fixture.send("run");
        let kept = fixture.expect_line("kept ");
        let mut fields = kept
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse::<u64>().expect("number"));
        let (bytes, blocks) = (
            fields.next().expect("bytes"),
            fields.next().expect("blocks"),
        );
        assert_eq!((bytes, blocks), (10722, 27), "the fixture's own count");
        // A report taken wholly after the run.
        let seq = lt.next_report()["seq"].as_u64().expect("seq");
        let report = lt.report_where(|r| r["seq"].as_u64() > Some(seq));
        let via = lib.unwrap_or("the C library");
        assert_eq!(report["live_bytes"], bytes, "{via}: {report}");
        assert_eq!(report["live_blocks"], blocks, "{via}: {report}");
        assert_nothing_dropped(&report);
    }
}
