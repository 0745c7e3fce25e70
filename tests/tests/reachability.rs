//! --reachability against valgrind's leak check, at the same checkpoint.

use leaktrace_tests::*;

/// The scenarios of tests/fixtures/reach_c.c.
const C_SCENARIOS: &[&str] = &[
    "one",
    "tree",
    "cycle",
    "list",
    "kept_tree",
    "interior",
    "mmap",
    "older_block",
    "realloc",
    "empty",
    "length64",
    "thread_stack",
    "tls",
    "register",
    "everything",
];

/// The scenarios of tests/fixtures/reach_cpp.cpp.
const CPP_SCENARIOS: &[&str] = &[
    "new_array",
    "lost_new_array",
    "second_base",
    "string",
    "lost_string",
    "vector",
    "everything",
];

/// Every scenario's scan against valgrind's verdicts on the same program
/// at the same point: bytes and blocks of each kind, and the sites of what
/// is definitely lost.
#[test]
fn every_c_scenario_is_classified_as_valgrind_does() {
    compare_with_valgrind("reach_c", C_SCENARIOS);
}

#[test]
fn every_cpp_scenario_is_classified_as_valgrind_does() {
    compare_with_valgrind("reach_cpp", CPP_SCENARIOS);
}

/// Each of `scenarios` of `fixture`, both ways. What the fixture holds
/// before leaktrace attaches (its scenario `none`, less the checkpoint's
/// marker: a block of its own, and for C++ libstdc++'s emergency pool)
/// valgrind sees and leaktrace cannot: it is taken out of valgrind's
/// still reachable, and leaktrace's `none` must be the marker alone.
fn compare_with_valgrind(fixture: &str, scenarios: &[&str]) {
    let program = fixtures().path(fixture);
    let program = program.to_str().expect("utf8 path");
    let (none, _) = valgrind_leak_check(program, &["valgrind", "none"]);
    let before_attach = (none.reachable.0 - MARKER.0, none.reachable.1 - MARKER.1);
    let mut failures = Vec::new();
    for scenario in std::iter::once(&"none").chain(scenarios) {
        let (mut oracle, oracle_lost) = valgrind_leak_check(program, &["valgrind", scenario]);
        oracle.reachable.0 -= before_attach.0;
        oracle.reachable.1 -= before_attach.1;
        let report = scan_at_checkpoint(fixture, scenario);
        let got = scan_kinds(&report);
        let lost = scan_sites(&report, "definitely_lost");
        if got != oracle || lost != oracle_lost {
            failures.push(format!(
                "{fixture} {scenario}: valgrind {oracle:?} {oracle_lost:?}, leaktrace {got:?} {lost:?}: {}",
                report["reachability"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The block each fixture makes at its checkpoint, last (still reachable).
const MARKER: (u64, u64) = (7777, 1);

/// `name` in `scenario` with leaktrace attached (`--reachability` and
/// `args`), waiting at its checkpoint.
fn at_checkpoint(name: &str, scenario: &str, args: &[&str]) -> (Fixture, Leaktrace) {
    let mut fixture = Fixture::start(name, &["wait", scenario]);
    let mut all = vec!["--reachability"];
    all.extend_from_slice(args);
    let lt = Leaktrace::attach(fixture.pid, &all);
    fixture.command("go", "checkpoint");
    (fixture, lt)
}

/// `name` in `scenario`, attached to, scanned at its checkpoint.
fn scan_at_checkpoint(name: &str, scenario: &str) -> serde_json::Value {
    let (fixture, mut lt) = at_checkpoint(
        name,
        scenario,
        &["-i", "0.2", "--older-than", "0", "--top", "200"],
    );
    let report = lt.report_where(|r| scan_saw(r, "checkpoint", 7777));
    assert_eq!(report["reachability"]["complete"], true, "{report}");
    end_both(fixture, lt);
    report
}

/// Lets the fixture go on from its checkpoint to its end, and leaktrace
/// end with it: both succeed.
fn end_both(mut fixture: Fixture, lt: Leaktrace) {
    fixture.send("done");
    assert!(fixture.wait().success(), "the fixture failed");
    let (status, _, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
}

#[test]
fn a_scan_stops_every_thread_and_says_how_long() {
    let report = scan_at_checkpoint("reach_c", "tls");
    let r = &report["reachability"];
    assert_eq!(r["threads"], 2, "{r}");
    assert!(r["stopped_us"].as_u64().is_some_and(|us| us > 0), "{r}");
    assert!(r["scanned_bytes"].as_u64().is_some_and(|b| b > 0), "{r}");
    assert_eq!(r["unreadable_bytes"], 0, "{r}");
}

#[test]
fn a_target_another_tracer_holds_is_refused() {
    let mut fixture = Fixture::start("reach_c", &["wait", "one"]);
    // This test process takes the fixture, as a debugger would.
    // SAFETY: ptrace on our own child, no data pointer.
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, fixture.pid, 0, 0) };
    assert_eq!(seized, 0, "seize: {}", std::io::Error::last_os_error());
    let pid = fixture.pid.to_string();
    let (status, _, stderr) = run_leaktrace(&["--pid", &pid, "--reachability"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "leaktrace: error: pid {pid} is already traced (by a debugger or another tracer): it cannot be stopped for a scan"
        )
    );
    // Let go: a seized process is detached from a stop.
    // SAFETY: ptrace and waitpid on our own child; status is a local.
    unsafe {
        libc::ptrace(libc::PTRACE_INTERRUPT, fixture.pid, 0, 0);
        let mut status = 0;
        libc::waitpid(fixture.pid as i32, &mut status, libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, fixture.pid, 0, 0);
    }
    fixture.command("go", "checkpoint");
    fixture.send("done");
    assert!(fixture.wait().success());
}

#[test]
fn sigusr2_scans_and_reports_at_once() {
    // No report of its own for a minute.
    let (fixture, mut lt) = at_checkpoint("reach_c", "one", &["-i", "60", "--older-than", "0"]);
    lt.signal(libc::SIGUSR2);
    let report = lt.next_report();
    assert_eq!(report["seq"], 1);
    assert_eq!(report["reachability"]["complete"], true, "{report}");
    assert!(scan_saw(&report, "checkpoint", 7777), "{report}");
    assert_eq!(
        report["reachability"]["totals"]["definitely_lost"],
        serde_json::json!({"bytes": 100, "blocks": 1})
    );
    end_both(fixture, lt);
}

#[test]
fn metrics_give_unreachable_bytes_by_site_and_promtool_accepts_them() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (fixture, mut lt) = at_checkpoint(
        "reach_c",
        "tree",
        &["-i", "0.2", "--older-than", "0", "--listen", &listen],
    );
    lt.report_where(|r| scan_saw(r, "checkpoint", 7777));
    let metrics = http_get(port, "/metrics");
    assert_promtool_accepts(&metrics);
    // The tree's root is lost directly, its two children through it.
    for line in lines_in_function("reach_c.c", "lose_tree", "calloc(") {
        let site = format!("lose_tree (reach_c.c:{line})");
        assert_eq!(
            metric(&metrics, "leaktrace_unreachable_bytes", &[("site", &site)]),
            Some(32.0),
            "{site}\n{metrics}"
        );
    }
    for (kind, bytes) in [
        ("definitely_lost", 32.0),
        ("indirectly_lost", 64.0),
        ("possibly_lost", 0.0),
    ] {
        assert_eq!(
            metric(&metrics, "leaktrace_reachability_bytes", &[("kind", kind)]),
            Some(bytes),
            "{kind}\n{metrics}"
        );
    }
    assert_eq!(
        metric(&metrics, "leaktrace_reachability_scan_complete", &[]),
        Some(1.0)
    );
    end_both(fixture, lt);
}

/// The lines of `function` in fixture `file` that contain `needle`.
/// The heap profile of a report with a scan: `unreachable_space` and
/// `unreachable_objects` by allocating function, as the report's records
/// say (definitely and indirectly lost), read by `go tool pprof`.
#[test]
fn pprof_gives_unreachable_space_and_objects_by_site() {
    let dir = scratch_dir("reach-pprof");
    let d = dir.display().to_string();
    let (fixture, mut lt) = at_checkpoint(
        "reach_c",
        "everything",
        &[
            "-i",
            "0.2",
            "--older-than",
            "0",
            "--top",
            "200",
            "--pprof-dir",
            &d,
        ],
    );
    let report = lt.report_where(|r| scan_saw(r, "checkpoint", 7777));
    end_both(fixture, lt);
    let file = dir.join(format!("heap-{}.pb.gz", report["seq"]));
    let file = file.display().to_string();
    let space = pprof_top(&file, &["-sample_index=unreachable_space", "-unit=B"]);
    let objects = pprof_top(&file, &["-sample_index=unreachable_objects"]);
    // From the report: bytes and blocks unreachable by allocating function.
    let mut expected: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for r in report["reachability"]["records"]
        .as_array()
        .expect("records")
    {
        if r["kind"] == "definitely_lost" || r["kind"] == "indirectly_lost" {
            let f = r["frames"][0]["symbol"].as_str().expect("symbol");
            let e = expected.entry(f.to_string()).or_default();
            e.0 += r["bytes"].as_u64().expect("bytes");
            e.1 += r["blocks"].as_u64().expect("blocks");
        }
    }
    assert_eq!(expected.get("lose_tree"), Some(&(96, 3)), "{expected:?}");
    assert_eq!(expected.get("lose_one"), Some(&(100, 1)), "{expected:?}");
    for (function, (bytes, blocks)) in &expected {
        assert_eq!(
            flat_of(&space, function),
            Some(format!("{bytes}B")),
            "{space:?}"
        );
        assert_eq!(
            flat_of(&objects, function),
            Some(blocks.to_string()),
            "{objects:?}"
        );
    }
    let nonzero = space.iter().filter(|(flat, _)| flat != "0").count();
    assert_eq!(
        nonzero,
        expected.len(),
        "nothing else unreachable: {space:?}"
    );
}

fn lines_in_function(file: &str, function: &str, needle: &str) -> Vec<usize> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("the fixture's source");
    let start = text
        .lines()
        .position(|l| l.contains(&format!(" {function}(")))
        .expect("the function");
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .skip(start)
        .take_while(|(i, l)| *i == start || !l.starts_with('}'))
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert!(!lines.is_empty(), "{needle} in {function}");
    lines
}

/// Whether any thread of `pid` is stopped (job control or ptrace).
fn any_thread_stopped(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok).any(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with(['t', 'T'])))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// SIGUSR1 to `pid` every 200 µs until the returned flag is set.
fn signal_storm(
    pid: u32,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let storm = std::thread::spawn(move || {
        let mut sent = 0;
        while !flag.load(Ordering::Relaxed) {
            // SAFETY: kill with plain integers.
            unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
            sent += 1;
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        sent
    });
    (stop, storm)
}

#[test]
fn two_hundred_scans_of_a_churning_signalled_target_leave_it_running() {
    let (mut fixture, mut lt) =
        at_checkpoint("reach_c", "churn", &["-i", "0.02", "--older-than", "0"]);
    let (stop, storm) = signal_storm(fixture.pid);
    let (mut scans, mut complete) = (0, 0);
    while scans < 200 {
        let r = lt.next_report();
        if r["reachability"].is_object() {
            scans += 1;
            if r["reachability"]["complete"] == true {
                complete += 1;
                // The lost tree, whatever the churn does meanwhile.
                assert_eq!(
                    r["reachability"]["totals"]["definitely_lost"]["bytes"], 32,
                    "{}",
                    r["reachability"]
                );
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = storm.join().expect("storm");
    assert!(sent > 0);
    assert!(complete > 0, "no scan completed in {scans}");
    lt.signal(libc::SIGINT);
    let (status, _, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(
        !any_thread_stopped(fixture.pid),
        "the target was left stopped"
    );
    fixture.send("done");
    assert!(fixture.wait().success(), "the target did not survive");
}

#[test]
fn leaktrace_killed_during_scans_leaves_the_target_running() {
    let mut fixture = Fixture::start("reach_c", &["wait", "churn"]);
    fixture.command("go", "checkpoint");
    let (stop, storm) = signal_storm(fixture.pid);
    for round in 0..10u64 {
        // Scans back to back; killed after a first, at a moment that
        // moves from round to round, within or between scans.
        let mut lt = Leaktrace::attach(
            fixture.pid,
            &["--reachability", "-i", "0.01", "--older-than", "0"],
        );
        lt.report_where(|r| r["reachability"].is_object());
        std::thread::sleep(std::time::Duration::from_micros(700 * round));
        lt.signal(libc::SIGKILL);
        let (status, _, _) = lt.finish();
        assert_eq!(status.code(), None, "round {round}: killed");
        // The kernel lets a dead tracer's tracees go as it reaps it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while any_thread_stopped(fixture.pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the target stayed stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    storm.join().expect("storm");
    fixture.send("done");
    assert!(fixture.wait().success(), "the target did not survive");
}

/// A command leaktrace starts (`--reachability -- CMD`) is scanned as it
/// calls `_exit`, with a thread of its still making and joining threads:
/// the scan at exit is in the final report, the lost tree exactly, and
/// leaktrace ends with the command's status.
#[test]
fn a_command_is_scanned_as_it_exits_with_its_threads_still_running() {
    let program = fixtures().path("reach_c");
    let program = program.to_str().expect("utf8 path");
    let lt = Leaktrace::start(&[
        "--reachability",
        "--older-than",
        "0",
        "-i",
        "3600",
        "--",
        program,
        "exit",
        "churn",
    ]);
    let (status, reports, stderr) = lt.finish();
    assert_eq!(status.code(), Some(3), "the command's status: {stderr:?}");
    let last = reports.last().expect("a final report");
    assert_eq!(last["final"], true, "{last}");
    let scan = &last["reachability"];
    assert_eq!(scan["at_exit"], true, "{scan}");
    assert_eq!(scan["complete"], true, "{scan}");
    assert!(scan["threads"].as_u64().expect("threads") >= 2, "{scan}");
    let kinds = scan_kinds(last);
    assert_eq!(kinds.definitely, (32, 1), "{scan}");
    assert_eq!(kinds.indirectly, (64, 2), "{scan}");
    assert_eq!(scan_sites(last, "definitely_lost"), ["lose_tree"]);
    assert!(
        stderr.iter().any(|l| l == "leaktrace: all probes removed"),
        "{stderr:?}"
    );
}

/// Every scenario run to its exit under valgrind and under leaktrace as
/// the command it starts: the same four kinds at exit, bytes and blocks,
/// and the same definitely lost sites. Nothing to take out here: leaktrace
/// saw every allocation, from the first (the brk heap outside the blocks
/// is freed memory then, and no root). Scenarios whose thread is still
/// waiting at exit are left out: valgrind has ended the other threads by
/// its check, their stacks are no roots to it.
#[test]
fn every_scenario_at_exit_is_classified_as_valgrind_does() {
    let program = fixtures().path("reach_c");
    let program = program.to_str().expect("utf8 path");
    let mut failures = Vec::new();
    for scenario in C_SCENARIOS
        .iter()
        .filter(|s| !["thread_stack", "tls", "register", "everything"].contains(s))
    {
        let (oracle, oracle_lost) = valgrind_leak_check(program, &["exit", scenario]);
        let last = &scanned_at_exit(&[program, "exit", scenario], 3);
        let got = scan_kinds(last);
        let lost = scan_sites(last, "definitely_lost");
        if got != oracle || lost != oracle_lost {
            failures.push(format!(
                "{scenario}: valgrind {oracle:?} {oracle_lost:?}, leaktrace {got:?} {lost:?}: {}",
                last["reachability"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `--container` with `--reachability`: each process of the container is
/// scanned (by its host PID, from outside its namespaces), with the same
/// verdicts as by `--pid`.
#[test]
fn a_containers_processes_are_scanned() {
    let mut fixture = Fixture::in_container("reach_c", &["wait", "tree"]);
    let id = fixture
        .container()
        .map(|c| c.id.clone())
        .expect("container");
    let mut lt = Leaktrace::start(&[
        "--container",
        &id[..12],
        "--reachability",
        "-i",
        "0.2",
        "--older-than",
        "0",
    ]);
    fixture.command("go", "checkpoint");
    let pid = fixture.pid;
    let report = lt.report_where(|r| r["pid"] == pid && scan_saw(r, "checkpoint", 7777));
    assert_eq!(report["reachability"]["complete"], true, "{report}");
    let kinds = scan_kinds(&report);
    assert_eq!(kinds.definitely, (32, 1), "{}", report["reachability"]);
    assert_eq!(kinds.indirectly, (64, 2), "{}", report["reachability"]);
    assert_eq!(scan_sites(&report, "definitely_lost"), ["lose_tree"]);
    fixture.send("done");
    assert!(fixture.wait().success(), "the fixture failed");
    lt.signal(libc::SIGINT);
    let (status, _, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
}

/// The scenarios of tests/fixtures/reach_rust (a release build, no frame
/// pointers), each run to its exit under valgrind and under leaktrace.
const RUST_SCENARIOS: &[&str] = &[
    "none",
    "forgotten_tree",
    "rc_cycle",
    "leaked_buffer",
    "kept_strings",
    "interior",
    "forgotten_vec",
    "everything",
];

/// The Rust fixture's scenarios at exit: the four kinds equal valgrind's,
/// bytes and blocks, and what is definitely lost is so in the same
/// scenario functions (Rust's allocation frames are inlined into them:
/// the sites are told by the scenario function on each stack).
#[test]
fn every_rust_scenario_at_exit_is_classified_as_valgrind_does() {
    let program = fixtures().path("reach_rust");
    let program = program.to_str().expect("utf8 path");
    let scenario_of = |functions: Vec<&str>| -> Option<String> {
        functions.into_iter().find_map(|f| {
            RUST_SCENARIOS
                .iter()
                .find(|s| f == **s || f.ends_with(&format!("::{s}")))
                .map(|s| s.to_string())
        })
    };
    let mut failures = Vec::new();
    for scenario in RUST_SCENARIOS {
        let stderr = valgrind_stderr(program, &[scenario], &["--num-callers=60"]);
        let (oracle, _) = parse_leak_check(&stderr);
        let mut oracle_lost: Vec<Option<String>> = valgrind_lost_stacks(&stderr)
            .iter()
            .map(|stack| scenario_of(stack.iter().map(String::as_str).collect()))
            .collect();
        let last = &scanned_at_exit(&[program, scenario], 0);
        let got = scan_kinds(last);
        let mut lost: Vec<Option<String>> = last["reachability"]["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["kind"] == "definitely_lost")
            .map(|r| {
                let frames = r["frames"].as_array().expect("frames");
                scenario_of(frames.iter().filter_map(|f| f["symbol"].as_str()).collect())
            })
            .collect();
        for l in [&mut oracle_lost, &mut lost] {
            l.sort();
            l.dedup();
        }
        if *scenario == "everything" {
            let named: Vec<&str> = lost.iter().flatten().map(String::as_str).collect();
            assert_eq!(
                named,
                [
                    "forgotten_tree",
                    "forgotten_vec",
                    "leaked_buffer",
                    "rc_cycle"
                ],
                "every lost block named by its scenario: {lost:?}"
            );
        }
        if got != oracle || lost != oracle_lost {
            failures.push(format!(
                "{scenario}: valgrind {oracle:?} {oracle_lost:?}, leaktrace {got:?} {lost:?}: {}",
                last["reachability"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bytes and blocks of the `kind` records allocated in `function`.
fn records_at(report: &serde_json::Value, kind: &str, function: &str) -> (u64, u64) {
    report["reachability"]["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == kind && r["frames"][0]["symbol"] == function)
        .fold((0, 0), |(b, n), r| {
            (
                b + r["bytes"].as_u64().expect("bytes"),
                n + r["blocks"].as_u64().expect("blocks"),
            )
        })
}

/// A cgo service: its C heap is scanned, with the Go heap's memory among
/// the roots, so a C block Go keeps (in a slice) is still reachable and
/// one nothing points at is definitely lost; the report says the Go heap's
/// own objects are not classified.
#[test]
fn a_cgo_services_c_heap_is_scanned_with_go_memory_as_roots() {
    let bin = go_fixture(newest_go(), GoBuild::Cgo);
    let service = GoService::start(&bin, &[]);
    let mut lt = Leaktrace::attach(
        service.pid(),
        &[
            "--reachability",
            "-i",
            "0.3",
            "--older-than",
            "0",
            "--top",
            "100",
        ],
    );
    for _ in 0..2 {
        assert_eq!(http_get(service.port, "/clost").trim(), "clost");
    }
    for _ in 0..3 {
        assert_eq!(http_get(service.port, "/ckeep").trim(), "ckept");
    }
    for _ in 0..4 {
        assert_eq!(http_get(service.port, "/cleak").trim(), "cleaked");
    }
    let report = lt.report_where(|r| {
        r["reachability"]["complete"] == true
            && records_at(r, "still_reachable", CGO_LEAK_SITE).1 == 4
    });
    let scan = &report["reachability"];
    assert_eq!(scan["go_heap_not_scanned"], true, "{scan}");
    assert_eq!(
        records_at(&report, "definitely_lost", "cgo_lose_block"),
        (6000, 2),
        "{scan}"
    );
    assert_eq!(
        records_at(&report, "still_reachable", "cgo_keep_block"),
        (6000, 3),
        "{scan}"
    );
    assert_eq!(
        records_at(&report, "still_reachable", CGO_LEAK_SITE),
        (4 * CGO_LEAK_BYTES, 4),
        "{scan}"
    );
    lt.signal(libc::SIGINT);
    let (status, _, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
    assert_eq!(http_get(service.port, "/ok").trim(), "ok");
}

/// The final report of `command` run by leaktrace with `--reachability`
/// to its exit (status `status`), which carries the scan at exit.
fn scanned_at_exit(command: &[&str], status: i32) -> serde_json::Value {
    let mut args = vec![
        "--reachability",
        "--older-than",
        "0",
        "-i",
        "3600",
        "--top",
        "200",
        "--",
    ];
    args.extend_from_slice(command);
    let (got, reports, stderr) = Leaktrace::start(&args).finish();
    assert_eq!(got.code(), Some(status), "{command:?}: {stderr:?}");
    let last = reports.last().expect("a final report").clone();
    assert_eq!(last["reachability"]["at_exit"], true, "{command:?}: {last}");
    last
}
