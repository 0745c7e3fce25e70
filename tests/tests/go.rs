//! Go targets: goroutine leaks by creation site, the census of goroutines
//! from before attach, the live heap trend, cgo malloc leaks — real Go
//! programs built by every supported Go version, traced in the real kernel.

use std::{thread, time::Duration};

use leaktrace_tests::*;
use serde_json::Value;

const LEAKS: u64 = 7;
const TICKERS: u64 = 2;
const OK_REQUESTS: u64 = 40;
const PRELUDE: u64 = 5;

/// The per-request leak, the ticker leak and the leak from before attach,
/// next to goroutines that finish, for one Go version and build.
fn goroutine_leaks_are_exact(version: &str, build: GoBuild) {
    let bin = go_fixture(version, build);
    let started = std::time::Instant::now();
    let service = GoService::start(&bin, &["-prelude", &PRELUDE.to_string()]);
    // A GC notes in each blocked goroutine since when it is blocked.
    assert_eq!(http_get(service.port, "/gc").trim(), "gc");
    thread::sleep(Duration::from_millis(500));
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--older-than", "1s"]);

    let first = lt.next_report();
    let go = &first["go"];
    assert_eq!(go["version"], format!("go{version}"), "{first}");
    // The leak that happened before attach is in the first report (a
    // stripped binary's runtime variables are found through its code).
    let census = census_at(&first, "main.leakBeforeAttach")
        .unwrap_or_else(|| panic!("no census entry for main.leakBeforeAttach: {first}"));
    assert_eq!(census["count"], PRELUDE, "{census}");
    assert_eq!(census["start_function"], "main.blockForever", "{census}");
    assert_eq!(census["states"][0]["state"], "chan receive", "{census}");
    assert_eq!(census["states"][0]["count"], PRELUDE, "{census}");
    // Blocked since before the GC, as a goroutine dump counts it.
    let blocked = census["longest_blocked_ms"]
        .as_u64()
        .expect("longest_blocked_ms");
    assert!(
        (500..=started.elapsed().as_millis() as u64).contains(&blocked),
        "blocked {blocked} ms: {census}"
    );
    // Heap figures and the runtime's heap profile (the fixture links
    // net/http/pprof, which turns profiling on) are read too.
    assert!(go["heap"]["live_after_gc_bytes"].is_u64(), "{first}");
    assert!(go["heap"]["gc_count"].is_u64(), "{first}");
    assert!(go["heap_profile"].is_array(), "{first}");
    assert_eq!(go["notes"], serde_json::json!([]), "{first}");

    for _ in 0..LEAKS {
        assert_eq!(http_get(service.port, "/leak").trim(), "leaked");
    }
    for _ in 0..TICKERS {
        assert_eq!(http_get(service.port, "/tick").trim(), "ticking");
    }
    for _ in 0..OK_REQUESTS {
        assert_eq!(http_get(service.port, "/ok").trim(), "ok");
    }
    let report = lt.report_where(|r| {
        goroutines_at(r, "main.handleLeak") >= LEAKS
            && goroutines_at(r, "main.handleTick") >= TICKERS
    });
    let leak = goroutine_sites(&report, "main.handleLeak");
    assert_eq!(leak.len(), 1, "{report}");
    assert_eq!(
        leak[0]["count"], LEAKS,
        "exactly one goroutine per request: {report}"
    );
    assert_eq!(leak[0]["start_function"], "main.blockForever");
    assert!(
        leak[0]["created_by"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("goroutines.go")),
        "{report}"
    );
    assert!(leak[0]["created_by"]["line"].as_u64().is_some(), "{report}");
    assert!(leak[0]["oldest_age_ms"].as_u64() >= Some(1000), "{report}");
    assert!(
        leak[0]["frames"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["symbol"] == "main.handleLeak")),
        "the creating stack runs through the handler: {report}"
    );
    assert_eq!(
        goroutines_at(&report, "main.handleTick"),
        TICKERS,
        "{report}"
    );
    // Finished goroutines (handleOK's, net/http's per-connection ones)
    // never appear, and neither do the runtime's own.
    assert_eq!(
        creation_sites(&report),
        vec!["main.handleLeak".to_string(), "main.handleTick".to_string()],
        "{report}"
    );
    assert_eq!(report["dropped"]["goroutine_map_full"], 0);
    assert_eq!(report["dropped"]["goroutine_unreadable"], 0);

    // Detach; the service keeps serving.
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success(), "{status:?}");
    assert_eq!(http_get(service.port, "/ok").trim(), "ok");
}

macro_rules! per_version {
    ($($name:ident => $version:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            goroutine_leaks_are_exact($version, GoBuild::Static);
        }
    )*};
}

per_version! {
    goroutine_leaks_go1_21 => GO_1_21,
    goroutine_leaks_go1_22 => GO_1_22,
    goroutine_leaks_go1_23 => GO_1_23,
    goroutine_leaks_go1_24 => GO_1_24,
    goroutine_leaks_go1_25 => GO_1_25,
    goroutine_leaks_go1_26 => GO_1_26,
    goroutine_leaks_go1_27 => GO_1_27,
}

#[test]
fn every_supported_version_has_a_test() {
    // Keeps the list above in step with the toolchains setup installs.
    let tested = [
        GO_1_21, GO_1_22, GO_1_23, GO_1_24, GO_1_25, GO_1_26, GO_1_27,
    ];
    assert_eq!(GO_VERSIONS, &tested[..]);
}

#[test]
fn stripped_go_binary() {
    goroutine_leaks_are_exact(newest_go(), GoBuild::Stripped);
}

/// What a stripped binary allows, checked on every version: each runtime
/// variable leaktrace reads, found through the code that uses it, is the one
/// the symbol table names.
#[test]
fn runtime_variables_are_found_without_symbols() {
    for version in GO_VERSIONS {
        let bin = go_fixture(version, GoBuild::Static);
        let data = std::fs::read(&bin).expect("fixture");
        let with_symbols = leaktrace::golang::binary::inspect(&data)
            .expect("analysable")
            .expect("a Go binary")
            .vars;
        let from_code = leaktrace::golang::binary::inspect_as_stripped(&data)
            .expect("analysable")
            .expect("a Go binary")
            .vars;
        assert!(with_symbols.allgptr.is_some() && with_symbols.mbuckets.is_some());
        // The variables only the two flags that write into a target use
        // come from the symbol table alone: those flags refuse a stripped
        // binary rather than write at an address derived from code.
        assert!(
            with_symbols.disable_memory_profiling.is_some(),
            "go{version}"
        );
        assert!(with_symbols.work.is_some(), "go{version}");
        assert_eq!(from_code.disable_memory_profiling, None, "go{version}");
        assert_eq!(from_code.work, None, "go{version}");
        let mut with_symbols = with_symbols;
        with_symbols.disable_memory_profiling = None;
        with_symbols.work = None;
        // MemStats' goroutine count and GOMAXPROCS are left out (null) in a
        // stripped binary.
        with_symbols.gomaxprocs = None;
        with_symbols.sched = None;
        assert_eq!(from_code, with_symbols, "go{version}");
    }
}

#[test]
fn pie_go_binary() {
    goroutine_leaks_are_exact(newest_go(), GoBuild::Pie);
}

/// Live heap after GC, GC over GC: an unbounded map grows, a bounded one
/// does not. GOGC=10 makes the fixtures collect often, but nothing says
/// every interval has a GC: the figures compared are those of six
/// distinct GCs, however many reports that takes.
#[test]
fn go_heap_trend_tells_growth_from_steady_state() {
    let bin = go_fixture(newest_go(), GoBuild::Static);
    for (mode, expect) in [("grow", "growing"), ("steady", "steady")] {
        let service = GoService::start_with_env(&bin, &["-heap", mode], &[("GOGC", "10")]);
        let mut lt = Leaktrace::attach(service.pid(), &["-i", "1"]);
        // One reading per GC the reports saw.
        let mut heaps: Vec<Value> = Vec::new();
        let mut reports = 0;
        while heaps.len() < 6 {
            assert!(reports < 60, "{mode}: six GCs in 60 reports: {heaps:?}");
            let heap = lt.next_report()["go"]["heap"].clone();
            reports += 1;
            let gc = heap["gc_count"].as_u64();
            if heaps.last().map(|h| h["gc_count"].as_u64()) != Some(gc) {
                heaps.push(heap);
            }
        }
        let live: Vec<u64> = heaps
            .iter()
            .map(|h| h["live_after_gc_bytes"].as_u64().expect("live heap figure"))
            .collect();
        let last = &heaps[heaps.len() - 1];
        assert_eq!(last["trend"], expect, "{mode}: {heaps:?}");
        match mode {
            "grow" => {
                assert!(
                    live.windows(2).skip(2).all(|w| w[1] > w[0]),
                    "an unbounded map grows GC over GC: {live:?}"
                );
                // Memory profiling is on (the fixture links net/http/pprof):
                // the runtime's profile names the allocating function.
                let report = lt.next_report();
                let top = &report["go"]["heap_profile"][0];
                assert_eq!(top["frames"][0]["symbol"], "main.heapGrow", "{report}");
                assert!(top["bytes"].as_u64() > Some(1 << 20), "{report}");
            }
            _ => assert!(
                live[5] < live[2] + (live[2] / 20),
                "a bounded map stays put: {live:?}"
            ),
        }
        drop(lt);
    }
}

/// A service starting far more than 10k goroutines per second survives
/// attach and detach, and its few leaked goroutines are still found
/// exactly among the churn.
#[test]
fn goroutine_churn_survives_tracing() {
    let bin = go_fixture(newest_go(), GoBuild::Static);
    let service = GoService::start(&bin, &["-churn"]);
    let churned = || -> u64 {
        http_get(service.port, "/churned")
            .trim()
            .parse()
            .expect("a count")
    };
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--older-than", "1s"]);
    let before = churned();
    for _ in 0..3 {
        assert_eq!(http_get(service.port, "/leak").trim(), "leaked");
    }
    let report = lt.report_where(|r| goroutines_at(r, "main.handleLeak") >= 3);
    lt.next_report();
    let report2 = lt.next_report();
    let during = churned() - before;
    for r in [&report, &report2] {
        assert_eq!(goroutines_at(r, "main.handleLeak"), 3, "{r}");
        assert_eq!(
            goroutines_at(r, "main.churn"),
            0,
            "short-lived goroutines never appear: {r}"
        );
        assert_eq!(r["dropped"]["goroutine_map_full"], 0, "{r}");
    }
    // The scenario really ran: seconds of tracing at >= 10k goroutines/s.
    assert!(
        during >= 20_000,
        "only {during} goroutines started while traced"
    );
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
    let after = churned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while churned() <= after {
        assert!(
            std::time::Instant::now() < deadline,
            "the service keeps running after detach"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(http_get(service.port, "/ok").trim(), "ok");
}

/// A cgo service: C malloc leaks through libc and goroutine leaks, in one
/// run.
#[test]
fn cgo_service_heap_and_goroutine_leaks() {
    let bin = go_fixture(newest_go(), GoBuild::Cgo);
    let service = GoService::start(&bin, &[]);
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--older-than", "500ms"]);
    for _ in 0..3 {
        http_get(service.port, "/cleak");
    }
    for _ in 0..10 {
        http_get(service.port, "/cok");
    }
    for _ in 0..2 {
        assert_eq!(http_get(service.port, "/leak").trim(), "leaked");
    }
    let report = lt.report_where(|r| {
        stacks_at(r, CGO_LEAK_SITE).len() == 1 && goroutines_at(r, "main.handleLeak") >= 2
    });
    assert_site(&report, CGO_LEAK_SITE, 3 * CGO_LEAK_BYTES, 3, "malloc");
    assert!(stacks_at(&report, CGO_FREED_SITE).is_empty(), "{report}");
    assert_eq!(goroutines_at(&report, "main.handleLeak"), 2, "{report}");
    assert_eq!(report["go"]["version"], format!("go{}", newest_go()));
    // This one never links runtime/pprof: the runtime keeps no profile.
    assert!(report["go"]["heap_profile"].is_null(), "{report}");
    assert!(
        report["go"]["notes"]
            .to_string()
            .contains("memory profiling is off"),
        "{report}"
    );
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
    assert_eq!(http_get(service.port, "/ok").trim(), "ok");
}

/// Where the goroutine probes sit, on every version: creation where
/// `newproc.func1` hands the new g to `runqput` in RBX, exit past
/// gdestroy's (goexit0's) stack check, both on instructions the kernel
/// emulates; and no caller of `newproc1` is left without a probe (every
/// direct call to it in the binary is followed by one).
#[test]
fn goroutine_probes_sit_on_emulated_instructions() {
    use leaktrace::{golang::binary::NewG, placement};
    for version in GO_VERSIONS {
        let path = go_fixture(version, GoBuild::Static);
        let data = std::fs::read(&path).expect("fixture");
        let bin = leaktrace::golang::binary::inspect(&data)
            .expect("analysable")
            .expect("a Go binary");
        let at = |vaddr: u64| {
            let off = bin.vaddr_to_file_offset(vaddr).expect("in the file");
            placement::at(&data, off)
        };
        let hot: Vec<_> = bin
            .creation_probes
            .iter()
            .filter(|p| p.function.starts_with("runtime.newproc.func1 "))
            .collect();
        assert_eq!(hot.len(), 1, "go{version}: {:?}", bin.creation_probes);
        assert_eq!(hot[0].new_g, NewG::Rbx, "go{version}");
        let p = at(hot[0].at);
        assert!(p.emulated, "go{version}: {p:?}");
        let exit = placement::at(&data, bin.exit_probe);
        assert!(exit.emulated, "go{version}: exit on {exit:?}");
        assert!(
            bin.exit_probe
                > bin
                    .vaddr_to_file_offset(bin.exit_function.1)
                    .expect("entry"),
            "go{version}: the exit probe moved past the stack check"
        );
        // Every `call runtime.newproc1` in the whole text is probed right
        // after it (RAX) or, in newproc.func1, at the hand-off.
        let (entry, _) = bin.function("runtime.newproc1").expect("newproc1");
        let callers = objdump_calls_to(&path, entry);
        assert!(!callers.is_empty(), "go{version}");
        for caller in &callers {
            assert!(
                bin.creation_probes
                    .iter()
                    .any(|p| p.function.starts_with(&format!("{caller} "))),
                "go{version}: {caller} calls newproc1 but has no probe: {:?}",
                bin.creation_probes
            );
        }
        assert_eq!(bin.creation_probes.len(), callers.len(), "go{version}");
    }
}

/// Functions containing a direct call to `target`, by binutils' objdump
/// (an independent disassembler).
fn objdump_calls_to(path: &std::path::Path, target: u64) -> Vec<String> {
    let out = std::process::Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(path)
        .output()
        .expect("objdump (binutils) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut current = String::new();
    let mut callers = Vec::new();
    let call = format!("call   {target:x} ");
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            current = name.1.to_string();
        } else if line.contains(&call) && !callers.contains(&current) {
            callers.push(current.clone());
        }
    }
    callers
}

/// Goroutines created at any moment around attach are each counted exactly
/// once, in the census of goroutines from before attach or among those
/// created since: the fixture leaks goroutines at a steady rate from before
/// leaktrace attaches (during its attach, its census, its first report)
/// until a while after, then stops and says how many it leaked. The two
/// counts add up to exactly that. Twice, on two services: how many
/// goroutines fall in the short windows of attach varies from run to run.
fn goroutines_around_attach_are_counted_once(version: &str) {
    for _ in 0..2 {
        counted_once_around_one_attach(version);
    }
}

fn counted_once_around_one_attach(version: &str) {
    /// One goroutine every 500 µs: a few land in every window of attach.
    const RATE: u64 = 2000;
    const SITE: &str = "main.leakSteadily";
    let bin = go_fixture(version, GoBuild::Static);
    let service = GoService::start(&bin, &["-steady", &RATE.to_string()]);
    let count = |path: &str| -> u64 {
        http_get(service.port, path)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{path}: not a count: {e}"))
    };
    while count("/steadied") < 200 {
        thread::sleep(Duration::from_millis(10));
    }
    let older_than = Duration::from_millis(500);
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--older-than", "500ms"]);
    let at_attach = count("/steadied");
    thread::sleep(Duration::from_millis(1500));
    let leaked = count("/stopleak");
    let stopped_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    assert!(
        leaked >= at_attach + RATE / 2,
        "the leak went on after attach: {at_attach} at attach, {leaked} in all"
    );
    // A report read well after the stop: every leaked goroutine is older
    // than --older-than there.
    let report = lt.report_where(|r| {
        r["timestamp_ms"]
            .as_u64()
            .is_some_and(|t| t >= stopped_ms + older_than.as_millis() as u64 + 500)
    });
    let census = census_at(&report, SITE).map_or(0, |c| c["count"].as_u64().unwrap_or(0));
    let since = goroutines_at(&report, SITE);
    assert!(
        census >= 200 && since >= RATE / 2,
        "goroutines on both sides of attach: {census} before, {since} since: {report}"
    );
    assert_eq!(
        census + since,
        leaked,
        "{census} from before attach + {since} created since != {leaked} leaked: {report}"
    );
    assert_eq!(report["go"]["notes"], serde_json::json!([]), "{report}");
    assert_eq!(report["dropped"]["goroutine_map_full"], 0, "{report}");
    assert_eq!(report["dropped"]["goroutine_unreadable"], 0, "{report}");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success(), "{status:?}");
}

#[test]
fn goroutines_around_attach_are_counted_once_go1_21() {
    goroutines_around_attach_are_counted_once(GO_VERSIONS[0]);
}

#[test]
fn goroutines_around_attach_are_counted_once_newest_go() {
    goroutines_around_attach_are_counted_once(newest_go());
}

/// `--go-leak-check`: on Go 1.26 and 1.27 the runtime's own detector,
/// triggered by leaktrace, marks exactly the goroutines blocked on
/// channels nothing reachable holds, not those blocked on a channel a
/// global holds, on a socket read or on a timer.
fn leak_check_marks_exactly_the_unreachable(version: &str) {
    let bin = go_fixture(version, GoBuild::Static);
    let service = GoService::start(&bin, &["-blocked"]);
    let mut lt = Leaktrace::attach(service.pid(), &["--go-leak-check", "-i", "1"]);
    let armed = lt.stderr_line("leaktrace: --go-leak-check:");
    assert!(
        armed.contains("set runtime.work.goroutineLeak.pending"),
        "go{version}: {armed}"
    );
    // The next GC runs the detection.
    assert_eq!(http_get(service.port, "/gc").trim(), "gc");
    let report = lt.report_where(|r| r["go"]["goroutines_proven_leaked"].is_array());
    let leaked = report["go"]["goroutines_proven_leaked"]
        .as_array()
        .expect("array");
    assert_eq!(
        leaked.len(),
        1,
        "go{version}: one site, nothing else: {report}"
    );
    assert_eq!(leaked[0]["count"], 4, "go{version}: {report}");
    assert_eq!(
        leaked[0]["created_by"]["symbol"], "main.leakUnreachable",
        "go{version}"
    );
    assert_eq!(leaked[0]["start_function"], "main.waitOn", "go{version}");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
    assert_eq!(http_get(service.port, "/ok").trim(), "ok");
}

#[test]
fn go_leak_check_go1_26() {
    leak_check_marks_exactly_the_unreachable(GO_1_26);
}

#[test]
fn go_leak_check_go1_27() {
    leak_check_marks_exactly_the_unreachable(GO_1_27);
}

#[test]
fn go_leak_check_is_unavailable_before_go1_26() {
    let bin = go_fixture(GO_1_25, GoBuild::Static);
    let service = GoService::start(&bin, &["-blocked"]);
    let mut lt = Leaktrace::attach(service.pid(), &["--go-leak-check", "-i", "1"]);
    let said = lt.stderr_line("leaktrace: --go-leak-check:");
    assert!(said.contains("exists from Go 1.26"), "{said}");
    let report = lt.next_report();
    assert_eq!(
        report["go"]["goroutines_proven_leaked"],
        Value::Null,
        "{report}"
    );
    assert!(
        report["go"]["notes"]
            .to_string()
            .contains("exists from Go 1.26"),
        "{report}"
    );
}

/// The target's own `/debug/pprof/heap` (the fixture links
/// net/http/pprof) read with the real `go tool pprof` of the same
/// version: in-use bytes of the site that keeps 64 KiB blocks, as leaktrace
/// reports it from the runtime's profile read out of process. Both come
/// from the profile published by the last GC, scaled the same way; the
/// heap is quiet between the two reads. Checked on every version, 1.27's
/// shorter profile records included.
#[test]
fn heap_profile_agrees_with_the_targets_own_pprof() {
    for version in GO_VERSIONS {
        let bin = go_fixture(version, GoBuild::Static);
        let service = GoService::start(&bin, &[]);
        assert_eq!(http_get(service.port, "/grow?n=300").trim(), "grown");
        assert_eq!(http_get(service.port, "/gc").trim(), "gc");
        let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--top", "50"]);
        let report = lt.next_report();
        let ours: u64 = report["go"]["heap_profile"]
            .as_array()
            .expect("heap_profile")
            .iter()
            .filter(|s| s["frames"][0]["symbol"] == "main.growOnce")
            .map(|s| s["bytes"].as_u64().unwrap_or(0))
            .sum();
        let out = go_command(version)
            .args([
                "tool",
                "pprof",
                "-top",
                "-sample_index=inuse_space",
                "-unit=B",
            ])
            .arg(format!(
                "http://127.0.0.1:{}/debug/pprof/heap",
                service.port
            ))
            .output()
            .expect("go tool pprof");
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs: u64 = text
            .lines()
            .find(|l| l.trim_end().ends_with(" main.growOnce"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|flat| flat.trim_end_matches('B').parse().ok())
            .unwrap_or_else(|| panic!("go{version}: no main.growOnce in pprof's top: {text}"));
        // 300 × 64 KiB kept, seen through the runtime's sampling (one
        // 64 KiB object in ~8.5 recorded: ±20 % typical).
        let kept = 300 * 65536;
        assert!(
            (kept / 3..=kept * 3).contains(&theirs),
            "go{version}: pprof says {theirs} of {kept}: {text}"
        );
        assert_eq!(
            ours, theirs,
            "go{version}: leaktrace {ours} B, pprof {theirs} B\n{text}"
        );
        lt.signal(libc::SIGINT);
        let _ = lt.finish();
    }
}

/// MemStats read out of process against the fixture's own
/// `runtime.ReadMemStats`, on both layouts (1.21–1.24, 1.25+) and the newest:
/// the figures a quiet process does not move equal, the heap's within what
/// unflushed per-P caches hold.
#[test]
fn memstats_match_the_targets_own_readmemstats() {
    for version in [GO_1_21, GO_1_25, GO_1_27] {
        let bin = go_fixture(version, GoBuild::Static);
        let service = GoService::start(&bin, &["-prelude", "3"]);
        assert_eq!(http_get(service.port, "/grow?n=50").trim(), "grown");
        assert_eq!(http_get(service.port, "/gc").trim(), "gc");
        let theirs: std::collections::HashMap<String, u64> = http_get(service.port, "/memstats")
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect();
        let asked = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut lt = Leaktrace::attach(service.pid(), &["-i", "1"]);
        let report = lt.report_where(|r| r["timestamp_ms"].as_u64() > Some(asked + 500));
        let ours = &report["go"]["memstats"];
        let get = |k: &str| {
            ours[k]
                .as_u64()
                .unwrap_or_else(|| panic!("go{version}: no {k}: {report}"))
        };
        let want = |k: &str| theirs[k];
        for exact in ["num_gc", "sys", "gomaxprocs"] {
            assert_eq!(
                get(exact),
                want(exact),
                "go{version}: {exact}: {ours} vs {theirs:?}"
            );
        }
        // Idle, the fixture runs main (serving) and the 3 goroutines it
        // leaked; while it answered /memstats, that request's goroutines too.
        assert_eq!(get("goroutines"), 4, "go{version}: {ours}");
        assert!(
            want("goroutines") - get("goroutines") <= 3,
            "go{version}: {ours} vs {theirs:?}"
        );
        assert!(
            get("stack_inuse").abs_diff(want("stack_inuse")) <= 64 << 10,
            "go{version}: {ours}"
        );
        // Per-P caches are flushed by ReadMemStats only: up to a span per
        // size class per P.
        let slack = 2 << 20;
        for near in ["heap_alloc", "heap_inuse", "next_gc"] {
            assert!(
                get(near).abs_diff(want(near)) <= slack,
                "go{version}: {near}: {ours} vs {theirs:?}"
            );
        }
        assert!(
            get("heap_objects").abs_diff(want("heap_objects")) <= want("heap_objects") / 10 + 200,
            "go{version}: heap_objects: {ours} vs {theirs:?}"
        );
        assert!(
            get("os_threads") >= 2 && get("rss_bytes") >= want("heap_inuse") / 2,
            "{ours}"
        );
        lt.signal(libc::SIGINT);
        let _ = lt.finish();
    }
}
