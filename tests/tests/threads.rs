//! Thread and child-process leaks: real fixture, real kernel tracepoints.

use leaktrace_tests::*;

/// Bytes of one default thread stack: RLIMIT_STACK, as glibc sizes them.
fn default_thread_stack() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) };
    if lim.rlim_cur == libc::RLIM_INFINITY {
        8 << 20
    } else {
        lim.rlim_cur
    }
}

#[test]
fn leaked_threads_are_reported_at_their_spawn_site() {
    let mut fixture = Fixture::start("threads_leak", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, &["-i", "1", "--older-than", "300ms"]);
    fixture.command("request 7", "handled");
    let report = lt.report_where(|r| threads_at(r, "spawn_leaky_worker") >= 7);
    let sites = thread_sites(&report, "spawn_leaky_worker");
    assert_eq!(sites.len(), 1, "{report}");
    let t = sites[0];
    assert_eq!(t["kind"], "thread");
    assert_eq!(t["count"], 7, "exactly one leaked thread per request: {t}");
    assert_eq!(t["spawned_by"], "pthread_create");
    assert_eq!(t["frames"][1]["symbol"], "main");
    assert_eq!(
        t["stack_bytes"].as_u64(),
        Some(7 * default_thread_stack()),
        "{t}"
    );
    assert!(t["oldest_age_ms"].as_u64() >= Some(300));
    // 35 joined and 7 detached threads finished: never reported.
    assert_eq!(threads_at(&report, "spawn_short_worker"), 0, "{report}");
    assert_eq!(threads_at(&report, "spawn_detached_worker"), 0, "{report}");
    assert_eq!(
        report["threads"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    // Threads from before attach: listed by name, spawn site unknown.
    let before = report["threads_before_attach"].as_array().expect("array");
    let names: Vec<&str> = before.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "early-worker").count(),
        2,
        "{names:?}"
    );
    assert!(before
        .iter()
        .any(|t| t["tid"] == fixture.pid && t["name"] == "threads_leak"));

    // More requests: the count grows by exactly that much.
    fixture.command("request 3", "handled");
    let later = lt.report_where(|r| threads_at(r, "spawn_leaky_worker") >= 10);
    assert_eq!(threads_at(&later, "spawn_leaky_worker"), 10);
}

#[test]
fn child_process_left_running_is_reported() {
    let mut fixture = Fixture::start("threads_leak", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, &["-i", "1", "--older-than", "300ms"]);
    fixture.send("fork");
    let line = fixture.expect_line("forked");
    let child: i32 = line
        .trim_start_matches("forked ")
        .trim()
        .parse()
        .expect("child pid");
    let report = lt.report_where(|r| !thread_sites(r, "spawn_child").is_empty());
    // SAFETY: killing the fixture's own child, by the pid it printed.
    unsafe { libc::kill(child, libc::SIGKILL) };
    let sites = thread_sites(&report, "spawn_child");
    assert_eq!(sites.len(), 1, "{report}");
    assert_eq!(sites[0]["kind"], "process");
    assert_eq!(sites[0]["count"], 1);
    assert_eq!(sites[0]["spawned_by"], "fork");
    // Once it is gone it is no longer reported.
    let after = lt.report_where(|r| thread_sites(r, "spawn_child").is_empty());
    assert_eq!(
        after["threads"].as_array().map(Vec::len),
        Some(0),
        "{after}"
    );
}
