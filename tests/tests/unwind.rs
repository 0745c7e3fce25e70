//! Whole stacks in code built without frame pointers (`gcc -O2`, `g++ -O2`,
//! `cargo build --release`): the probes walk them by the unwind tables
//! leaktrace builds from `.eh_frame`. The truth each stack is compared with
//! is the fixture's own backtrace at the leak site (glibc's `backtrace()`,
//! Rust's `std::backtrace`), printed as an "oracle" line.

use leaktrace_tests::*;
use serde_json::Value;

const FLAGS: &[&str] = &["-i", "1", "--older-than", "0", "--top", "50"];

/// The addresses of an oracle line `oracle NAME 0x.. 0x..`.
fn oracle_addresses(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .skip(2)
        .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).expect("hex address"))
        .collect()
}

/// Asserts the stack's frames above `function` are exactly the oracle's
/// return addresses, in order, and the stack is whole.
fn assert_above_matches(stack: &Value, function: &str, oracle: &[u64]) {
    let frames = physical_frames(stack);
    let at = frames
        .iter()
        .position(|(_, f)| f == function)
        .unwrap_or_else(|| panic!("no frame {function}: {stack}"));
    let above: Vec<u64> = frames[at + 1..].iter().map(|(a, _)| *a).collect();
    assert_eq!(
        above,
        oracle,
        "frames above {function} differ from the fixture's own backtrace:\n leaktrace {frames:x?}\n oracle {oracle:x?}"
    );
    assert_eq!(stack["cut_short"], Value::Null, "{stack}");
}

#[test]
fn c_leak_through_a_wrapper_five_frames_below_main_has_its_whole_stack() {
    let mut fixture = Fixture::start("unwind_c", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    fixture.send("wrapper 40");
    let oracle = oracle_addresses(&fixture.expect_line("oracle wrapper"));
    fixture.expect_line("done wrapper");
    let report = lt.report_where(|r| !stacks_at(r, "xmalloc").is_empty());
    assert_site(&report, "xmalloc", 4000, 40, "malloc");
    let stack = stacks_at(&report, "xmalloc")[0];
    assert_eq!(
        frame_names(stack),
        [
            "xmalloc",
            "store_value",
            "decode_field",
            "parse_message",
            "handle_request",
            "main",
            "__libc_start_call_main",
            "__libc_start_main_impl",
            "_start"
        ],
        "{stack}"
    );
    assert_above_matches(stack, "xmalloc", &oracle);
    assert_nothing_dropped(&report);
}

#[test]
fn frame_pointer_walk_loses_the_same_stack() {
    // What `--unwind fp` (and every frame-pointer tracer) sees in the same
    // binary: the wrapper and garbage or nothing above it.
    let mut fixture = Fixture::start("unwind_c", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, &[FLAGS, &["--unwind", "fp"]].concat());
    fixture.command("wrapper 10", "done wrapper");
    let report = lt.report_where(|r| !stacks_at(r, "xmalloc").is_empty());
    let (bytes, blocks) = totals_through(&report, "xmalloc");
    assert_eq!((bytes, blocks), (1000, 10), "{report}");
    for stack in stacks_at(&report, "xmalloc") {
        assert!(
            !frame_names(stack).iter().any(|f| f == "decode_field"),
            "frame pointers do not reach decode_field in -O2 code: {stack}"
        );
    }
}

#[test]
fn leak_in_a_qsort_callback_has_frames_on_both_sides_of_libc() {
    let mut fixture = Fixture::start("unwind_c", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    fixture.send("qsort 30");
    let oracle = oracle_addresses(&fixture.expect_line("oracle qsort"));
    fixture.expect_line("done qsort");
    let report = lt.report_where(|r| !stacks_at(r, "remember_comparison").is_empty());
    // Comparisons at different depths of glibc's merge sort: several
    // stacks, 30 blocks in all.
    assert_eq!(
        totals_through(&report, "remember_comparison"),
        (30 * 48, 30),
        "{report}"
    );
    let stacks = stacks_at(&report, "remember_comparison");
    for s in &stacks {
        let n = frame_names(s);
        let pos = |f: &str| n.iter().position(|x| x == f);
        let (cmp, sort, main) = (pos("compare_records"), pos("sort_records"), pos("main"));
        assert!(
            cmp.is_some() && sort > cmp && main > sort,
            "user frames on both sides of libc, in order: {n:?}"
        );
        let libc_between = n[cmp.unwrap_or(0) + 1..sort.unwrap_or(0)]
            .iter()
            .any(|f| f.contains("msort") || f.contains("qsort"));
        assert!(libc_between, "glibc's sort frames between: {n:?}");
        assert_eq!(s["cut_short"], Value::Null, "{s}");
    }
    // The first comparison's stack is the fixture's own backtrace.
    assert!(
        stacks.iter().any(|s| {
            let f = physical_frames(s);
            f.iter().skip(1).map(|(a, _)| *a).collect::<Vec<_>>() == oracle
        }),
        "no stack equals the fixture's backtrace {oracle:x?}: {report}"
    );
}

#[test]
fn deep_recursion_is_bounded_and_flagged() {
    let mut fixture = Fixture::start("unwind_c", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    fixture.command("deep", "done deep");
    let report = lt.report_where(|r| !stacks_at(r, "recurse").is_empty());
    assert_site(&report, "recurse", 777, 1, "malloc");
    let stack = stacks_at(&report, "recurse")[0];
    assert_eq!(stack["cut_short"], "depth-limit", "{stack}");
    let n = frame_names(stack);
    // 127 frames kept: the probed one is replaced by its caller.
    assert_eq!(n.len(), 126, "{n:?}");
    assert!(n.iter().all(|f| f == "recurse"), "{n:?}");
    assert!(
        report["stacks_cut_short"]["depth_limit"].as_u64() >= Some(1),
        "{report}"
    );
}

#[test]
fn thread_spawn_sites_in_o2_code_have_their_whole_stack() {
    let mut fixture = Fixture::start("unwind_c", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    fixture.send("threads 3");
    let oracle = oracle_addresses(&fixture.expect_line("oracle threads"));
    fixture.expect_line("done threads");
    let report = lt.report_where(|r| {
        r["threads"]
            .as_array()
            .is_some_and(|t| t.iter().any(|s| s["count"] == 3))
    });
    let site = report["threads"]
        .as_array()
        .and_then(|t| t.iter().find(|s| s["count"] == 3))
        .expect("a spawn site with 3 threads");
    assert_eq!(site["spawned_by"], "pthread_create", "{site}");
    assert_eq!(frame_names(site)[0], "spawn_blocked_worker", "{site}");
    assert_above_matches(site, "spawn_blocked_worker", &oracle);
}

#[test]
fn object_without_unwind_tables_is_flagged_not_invented() {
    let mut fixture = Fixture::start("unwind_c_notables", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    fixture.command("wrapper 5", "done wrapper");
    let report = lt.report_where(|r| !stacks_at(r, "xmalloc").is_empty());
    assert_site(&report, "xmalloc", 500, 5, "malloc");
    let stack = stacks_at(&report, "xmalloc")[0];
    // libc's table gives the return address into xmalloc; xmalloc has no
    // table, so that is where the stack ends.
    assert_eq!(frame_names(stack), ["xmalloc"], "{stack}");
    assert_eq!(stack["cut_short"], "no-unwind-table", "{stack}");
    assert!(report["stacks_cut_short"]["no_unwind_table"].as_u64() >= Some(1));
}

#[test]
fn cpp_containers_growing_through_libstdcxx_have_the_user_frames_above_std() {
    let mut fixture = Fixture::start("unwind_cpp", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    let mut oracles = Vec::new();
    for (cmd, kind) in [
        ("vector 1000", "vector"),
        ("map 300", "map"),
        ("string 50", "string"),
    ] {
        fixture.send(cmd);
        oracles.push(oracle_addresses(
            &fixture.expect_line(&format!("oracle {kind}")),
        ));
        fixture.expect_line(&format!("done {kind}"));
    }
    let report = lt.report_where(|r| !stacks_through(r, "build_message").is_empty());
    for (user, oracle) in ["append_sample", "insert_user", "build_message"]
        .iter()
        .zip(&oracles)
    {
        let stacks = stacks_through(&report, user);
        assert!(!stacks.is_empty(), "no stack through {user}: {report}");
        for s in stacks {
            let n = frame_names(s);
            let at = n.iter().position(|f| f == user).expect("user frame");
            assert!(
                n[..at].iter().all(|f| {
                    // Demangled names may lead with a return type.
                    f.contains("std::")
                        || f.contains("__gnu_cxx::")
                        || f.starts_with("operator new")
                }),
                "only std:: frames below {user}: {n:?}"
            );
            assert_above_matches(s, user, oracle);
        }
    }
    // A vector keeps one buffer: 1000 longs in a capacity of 1024.
    assert_eq!(
        totals_through(&report, "append_sample"),
        (8192, 1),
        "{report}"
    );
    // 50 strings of 40 chars (41-byte buffers) in 50 list nodes of 48 bytes.
    assert_eq!(
        totals_through(&report, "build_message"),
        (50 * (41 + 48), 100),
        "{report}"
    );
}

#[test]
fn rust_release_leaks_four_frames_deep_have_their_whole_stack() {
    let mut fixture = Fixture::start("unwind_rust", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    let mut oracles = Vec::new();
    for (cmd, kind) in [("vec 20", "vec"), ("map 100", "map"), ("boxed 30", "boxed")] {
        fixture.send(cmd);
        let line = fixture.expect_line(&format!("oracle {kind}"));
        oracles.push(
            line.split_whitespace()
                .skip(2)
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
        fixture.expect_line(&format!("done {kind}"));
    }
    let report = lt.report_where(|r| !stacks_through(r, "unwind_rust::make_box").is_empty());
    for (leaf, oracle) in [
        "unwind_rust::remember",
        "unwind_rust::insert_entry",
        "unwind_rust::make_box",
    ]
    .iter()
    .zip(&oracles)
    {
        let stacks = stacks_through(&report, leaf);
        assert!(!stacks.is_empty(), "no stack through {leaf}: {report}");
        for s in stacks {
            let user: Vec<String> = frame_names(s)
                .into_iter()
                .filter(|f| f.starts_with("unwind_rust::"))
                .collect();
            assert_eq!(&user, oracle, "{s}");
            assert_eq!(s["cut_short"], Value::Null, "{s}");
        }
    }
    assert_eq!(
        totals_through(&report, "unwind_rust::make_box"),
        (30 * 256, 30),
        "{report}"
    );
    assert_eq!(
        totals_through(&report, "unwind_rust::remember"),
        (20 * 8000, 20),
        "{report}"
    );
}

#[test]
fn another_tracers_pending_return_probe_is_seen_through() {
    // bpftrace's uretprobe on parse_message replaces its return address
    // (into handle_request) with the kernel's trampoline while it runs;
    // the stack must show the real one.
    // A copy of unwind_c: uprobes go by file, and bpftrace's would reach
    // the other tests' processes.
    let mut fixture = Fixture::start("unwind_c_retprobed", &[]);
    fixture.send("wrapper 1");
    let oracle = oracle_addresses(&fixture.expect_line("oracle wrapper"));
    fixture.expect_line("done wrapper");
    let binary = fixtures().path("unwind_c_retprobed");
    let script = format!(
        "uretprobe:{}:parse_message {{ @returns = count(); }}",
        binary.display()
    );
    let mut bpftrace = std::process::Command::new("bpftrace")
        .args(["-p", &fixture.pid.to_string(), "-e", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("bpftrace (installed by xtask setup)");
    let out = bpftrace.stdout.take().expect("piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.starts_with("Attaching"))),
        "bpftrace did not attach"
    );
    let mut lt = Leaktrace::attach(fixture.pid, FLAGS);
    fixture.command("wrapper 5", "done wrapper");
    let report = lt.report_where(|r| !stacks_at(r, "xmalloc").is_empty());
    let _ = bpftrace.kill();
    let _ = bpftrace.wait();
    assert_site(&report, "xmalloc", 500, 5, "malloc");
    assert_above_matches(stacks_at(&report, "xmalloc")[0], "xmalloc", &oracle);
}
