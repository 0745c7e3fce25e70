//! Containerized targets: own mount and PID namespaces, own copy of libc at
//! a path the host does not have, traced by host PID.

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
    let mut fixture = Fixture::in_container("threads_leak", &[]);
    let mut lt = Leaktrace::attach(fixture.pid, &["-i", "1", "--older-than", "300ms"]);
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
