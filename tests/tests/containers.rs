//! Containerized targets: own mount and PID namespaces, own copy of libc at
//! a path the host does not have, traced by host PID and by container id.

use leaktrace_tests::*;

#[test]
fn heap_leaks_in_a_container_by_host_pid() {
    let mut fixture = Fixture::in_container("heap_c", &["wait"]);
    // The same exact answer as on the host.
    let (_lt, report) = trace_c_leaks(&mut fixture);
    // Both PIDs, and the container the cgroup names.
    assert_eq!(report["pid"], fixture.pid);
    assert_eq!(report["pid_in_container"], 1);
    if fixture.container_cgroup() {
        assert_eq!(
            report["container_id"].as_str(),
            fixture.container().map(|c| c.id.as_str())
        );
    }
    // Symbols came from the container's own files.
    let s = stacks_at(&report, "leak_malloc")[0];
    assert_eq!(s["frames"][0]["module"], "heap_c");
}

#[test]
fn thread_leaks_in_a_container_by_host_pid() {
    let fixture = Fixture::in_container("threads_leak", &[]);
    let lt = Leaktrace::attach(fixture.pid, &["-i", "1", "--older-than", "300ms"]);
    assert_thread_leaks(fixture, lt);
}

#[test]
fn thread_leaks_in_a_container_by_container_id() {
    let fixture = Fixture::in_container("threads_leak", &[]);
    let id = fixture
        .container()
        .map(|c| c.id.clone())
        .expect("container");
    assert!(fixture.container_cgroup(), "cgroup v2 expected here");
    let lt = Leaktrace::start(&["--container", &id, "-i", "1", "--older-than", "300ms"]);
    assert_thread_leaks(fixture, lt);
}

fn assert_thread_leaks(mut fixture: Fixture, mut lt: Leaktrace) {
    fixture.command("request 5", "handled");
    let report = lt.report_where(|r| {
        r["threads"]
            .as_array()
            .is_some_and(|t| t.iter().any(|g| g["count"].as_u64() >= Some(5)))
    });
    let threads = report["threads"].as_array().expect("threads");
    assert_eq!(threads.len(), 1, "{report}");
    assert_eq!(threads[0]["frames"][0]["symbol"], "spawn_leaky_worker");
    assert_eq!(threads[0]["count"], 5);
    assert_eq!(threads[0]["spawned_by"], "pthread_create");
}

#[test]
fn heap_leaks_in_a_container_by_container_id() {
    let mut first = Fixture::in_container("heap_c", &["wait"]);
    assert!(
        first.container_cgroup(),
        "this machine has cgroup v2, where the test container gets its docker-style cgroup"
    );
    let id = first.container().map(|c| c.id.clone()).expect("container");
    // A unique prefix, as `docker ps` prints it.
    let mut args = vec!["--container", &id[..12]];
    args.extend_from_slice(C_LEAK_FLAGS);
    let mut lt = Leaktrace::start(&args);

    // A process started in the container after attach is traced too.
    let mut second = first.exec_in_container("heap_c", &["wait"]);
    lt.wait_stderr(&format!("leaktrace: tracing pid {}", second.pid));

    // The second process is traced from its exec on (the kernel sees it
    // enter the container's PID namespace): what it did at startup too.
    for (fixture, startup) in [(&mut first, (0, 0)), (&mut second, EXEC_STARTUP)] {
        let report = c_leaks_with(fixture, &mut lt, AllocatorNames::Glibc, startup);
        if startup.1 > 0 {
            assert_site(&report, "leak_at_startup", 123, 1, "malloc");
            // One stack or two: until leaktrace has read the new image's
            // mappings its stacks are walked by frame pointers (and cut
            // short in the C library, which has none).
            let at = stacks_at(&report, "__GI__IO_file_doallocate");
            let total = at.iter().fold((0, 0), |(b, n), s| {
                (
                    b + s["bytes"].as_u64().unwrap_or(0),
                    n + s["blocks"].as_u64().unwrap_or(0),
                )
            });
            assert_eq!(total, (2 * 4096, 2), "{report}");
        }
        // The same exact answer as by host PID (and on the host).
        assert_eq!(report["container_id"].as_str(), Some(id.as_str()));
        assert_eq!(report["comm"], "heap_c");
    }
    assert_eq!(
        first_pid_inside(&mut lt, second.pid),
        Some(2),
        "the exec'd process is PID 2 inside"
    );
}

fn first_pid_inside(lt: &mut Leaktrace, pid: u32) -> Option<u64> {
    lt.report_where(|r| r["pid"] == pid)["pid_in_container"].as_u64()
}

#[test]
fn symbols_from_debug_files_inside_the_container() {
    // The binary in the container has no symbols at all; its debug file is
    // only inside the container's root, where the host cannot see it by path.
    let mut fixture = Fixture::in_container_split_debug("heap_c", &["wait"]);
    let (_lt, report) = trace_c_leaks(&mut fixture);
    let s = stacks_at(&report, "leak_malloc")[0];
    assert_eq!(s["frames"][0]["module"], "heap_c");
    assert!(
        s["frames"][0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("heap_c.c")),
        "file and line from the container's debug file: {s}"
    );
    assert!(s["frames"][0]["line"].as_u64().is_some(), "{s}");
}

/// A prefork-style service in a container, traced by container id through
/// one loaded tracer: a worker every 100 ms, each leaking a known amount in
/// its first millisecond, then exiting or staying. The kernel traces each
/// worker from its fork on, so every worker's leak is exact and none is
/// missed, whether it lives on or is gone before leaktrace has read it.
#[test]
fn prefork_workers_are_traced_from_their_first_allocation() {
    prefork_workers(false, "worker_leak");
}

/// The same with workers that exec a second binary (its allocations go
/// through the container's C library, already probed).
#[test]
fn prefork_workers_that_exec_a_second_binary() {
    prefork_workers(true, "child_leak");
}

fn prefork_workers(exec: bool, site: &str) {
    const WORKERS: usize = 10;
    let args: &[&str] = if exec { &["exec"] } else { &[] };
    let mut service = Fixture::in_container_with("prefork", args, &["prefork_child"]);
    let id = service
        .container()
        .map(|c| c.id.clone())
        .expect("container");
    let mut lt = Leaktrace::start(&["--container", &id, "-i", "0.5", "--older-than", "0"]);
    service.send(&format!("start {WORKERS}"));
    // Each worker's PID in the container → (bytes it leaked, whether it stays).
    let mut expected: std::collections::HashMap<u64, (u64, bool)> = Default::default();
    while expected.len() < WORKERS {
        let line = service.expect_line("worker ");
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().expect("a number"))
            .collect();
        expected.insert(f[0], (f[2], f[1].is_multiple_of(2)));
    }
    service.expect_line("started");
    let mut seen: std::collections::HashSet<u64> = Default::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.len() < WORKERS {
        if std::time::Instant::now() >= deadline {
            let missing: Vec<&u64> = expected.keys().filter(|p| !seen.contains(p)).collect();
            panic!(
                "workers never reported: {missing:?}; leaktrace said: {:?}",
                lt.drain_stderr()
            );
        }
        let report = lt.next_report();
        let Some(inside) = report["pid_in_container"].as_u64() else {
            continue;
        };
        let Some(&(bytes, stays)) = expected.get(&inside) else {
            continue;
        };
        // Every report says how many processes joined and left.
        assert!(
            report["container_processes"]["traced"].as_u64() >= Some(1),
            "{report}"
        );
        let stacks = report["stacks"].as_array().expect("stacks");
        // Its leak, exactly: one block of its size at one stack.
        let at_leak: Vec<&serde_json::Value> =
            stacks.iter().filter(|s| s["bytes"] == bytes).collect();
        if at_leak.is_empty() {
            assert!(
                !report["final"].as_bool().unwrap_or(false),
                "worker {inside} lost its leak: {report}"
            );
            continue;
        }
        assert_eq!(at_leak.len(), 1, "{report}");
        assert_eq!(at_leak[0]["blocks"], 1, "{report}");
        if stays {
            // Read while alive: its own symbols.
            assert_site(&report, site, bytes, 1, "malloc");
        }
        seen.insert(inside);
    }
    let banners = lt.drain_stderr();
    lt.signal(libc::SIGINT);
    let (status, _, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(
        banners
            .iter()
            .any(|l| l.starts_with("leaktrace: container ") && l.contains(" joined and ")),
        "reports say how many processes joined and left: {banners:?}"
    );
}
