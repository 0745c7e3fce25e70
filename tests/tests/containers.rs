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

    for fixture in [&mut first, &mut second] {
        let report = c_leaks_of(fixture, &mut lt, AllocatorNames::Glibc);
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
