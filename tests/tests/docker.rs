//! Containers in a real Docker engine, named the way users name them:
//! `--container NAME`, `docker exec`, `docker restart`, the container's
//! exit, the node agent (`--all-containers --label`), and bad names.

use std::time::{Duration, Instant};

use leaktrace_tests::*;

fn c_service(what: &str) -> (DockerContainer, Fixture) {
    require_engine();
    let image = docker_image(&["heap_c"]);
    DockerContainer::start(&image, &unique_name(what), &[], &["/app/heap_c", "wait"])
}

#[test]
fn c_service_by_container_name() {
    let (container, mut fixture) = c_service("byname");
    let mut args = vec!["--container", container.name.as_str()];
    args.extend_from_slice(C_LEAK_FLAGS);
    // Under the engine's default seccomp profile (return probes checked
    // against it before attach: they work, the container lives).
    let status = std::fs::read_to_string(format!("/proc/{}/status", fixture.pid)).expect("status");
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    let mut lt = Leaktrace::start(&args);
    lt.stderr_line(&format!("leaktrace: tracing pid {}", fixture.pid));
    // The same exact answer as by host PID.
    let report = c_leaks_of(&mut fixture, &mut lt, AllocatorNames::Glibc);
    assert_eq!(report["container"]["name"], container.name.as_str());
    assert!(report["container"]["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("leaktrace-test/heap_c:")));
    assert_eq!(report["container_id"], container.id().as_str());
    assert_eq!(report["pid_in_container"], 1);
    assert_eq!(
        stacks_at(&report, "leak_malloc")[0]["frames"][0]["module"],
        "heap_c"
    );
}

#[test]
fn docker_exec_helper_is_traced_exactly() {
    let (container, _first) = c_service("exec");
    let mut args = vec!["--container", container.name.as_str()];
    args.extend_from_slice(C_LEAK_FLAGS);
    let mut lt = Leaktrace::start(&args);
    lt.stderr_line("leaktrace: tracing pid ");
    let mut helper = container.exec(&["/app/heap_c", "wait"]);
    lt.wait_stderr(&format!("leaktrace: tracing pid {}", helper.pid));
    // Traced from its exec: its startup's blocks too, exactly.
    let report = c_leaks_with(&mut helper, &mut lt, AllocatorNames::Glibc, EXEC_STARTUP);
    assert_site(&report, "leak_at_startup", 123, 1, "malloc");
    assert_eq!(report["container"]["name"], container.name.as_str());
}

#[test]
fn restart_is_followed_and_exit_ends_the_run() {
    let (container, first) = c_service("restart");
    let mut args = vec!["--container", container.name.as_str()];
    args.extend_from_slice(C_LEAK_FLAGS);
    let mut lt = Leaktrace::start(&args);
    lt.stderr_line(&format!("leaktrace: tracing pid {}", first.pid));
    drop(first);
    docker(&["restart", "-t", "1", &container.name]);
    lt.wait_stderr(&format!(
        "leaktrace: container {} restarted",
        container.name
    ));
    let mut again = container.attach();
    // (Printed before or after the restart line: the kernel's exec and
    // the engine's start event race.)
    lt.stderr_line(&format!("leaktrace: tracing pid {}", again.pid));
    again.command("leak", "leaked");
    let pid = again.pid;
    let report = lt.report_where(|r| {
        r["pid"] == pid
            && !stacks_at(r, "leak_after_failed_realloc").is_empty()
            && r["old_blocks"].as_u64() >= Some(C_TOTAL_BLOCKS)
    });
    // Every leak site after the restart exact (what the new process did
    // before leaktrace heard of the restart is not asserted).
    assert_c_leaks(&report, AllocatorNames::Glibc);
    assert_eq!(report["container_processes"]["restarts"], 1, "{report}");
    // The container stops for good: a final report, then exit 0.
    docker(&["stop", "-t", "1", &container.name]);
    let last = lt.report_where(|r| r["pid"] == pid && r["final"] == true);
    assert_c_leaks(&last, AllocatorNames::Glibc);
    lt.wait_stderr(&format!("leaktrace: container {} ended", container.name));
    let (status, _, stderr) = lt.finish();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
}

#[test]
fn node_agent_traces_containers_by_label_including_new_ones() {
    let label = unique_name("agent");
    let label_arg = format!("leaktrace.test={label}");
    require_engine();
    let image = docker_image(&["heap_c"]);
    let (a, mut fa) = DockerContainer::start(
        &image,
        &unique_name("agent-a"),
        &["--label", &label_arg],
        &["/app/heap_c", "wait"],
    );
    // Not labelled: left alone.
    let (_other, other) = c_service("agent-other");
    let mut args = vec!["--all-containers", "--label", label_arg.as_str()];
    args.extend_from_slice(C_LEAK_FLAGS);
    let mut lt = Leaktrace::start(&args);
    lt.stderr_line(&format!("leaktrace: tracing pid {}", fa.pid));
    // A container started after the agent, of an image no container
    // ran before (its C library not probed yet).
    let later = docker_image_copy(&["heap_c"], "later");
    let (b, mut fb) = DockerContainer::start(
        &later,
        &unique_name("agent-b"),
        &["--label", &label_arg],
        &["/app/heap_c", "wait"],
    );
    lt.wait_stderr(&format!("leaktrace: tracing pid {}", fb.pid));
    // The one traced since attach: exact, nothing else held.
    let report = c_leaks_of(&mut fa, &mut lt, AllocatorNames::Glibc);
    assert_eq!(report["container"]["name"], a.name.as_str());
    // The one started later: traced from its first allocation (its exec,
    // in the kernel): what it allocated before main too, exactly.
    let report = c_leaks_with(&mut fb, &mut lt, AllocatorNames::Glibc, EXEC_STARTUP);
    assert_site(&report, "leak_at_startup", 123, 1, "malloc");
    assert_eq!(report["container"]["name"], b.name.as_str());
    // SIGINT: final reports, then exit.
    lt.signal(2);
    let (status, reports, stderr) = lt.finish();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert!(
        reports.iter().all(|r| r["pid"] != other.pid),
        "the unlabelled container is not traced"
    );
    assert!(
        !lt_saw_pid(&stderr, other.pid),
        "the unlabelled container is not traced: {stderr:?}"
    );
}

#[test]
fn bad_container_names_are_one_line_and_exit_2() {
    require_engine();
    for (args, expected) in [
        (
            vec!["--container", "no-such-container-here"],
            "leaktrace: error: no container named `no-such-container-here`; running: ",
        ),
        (
            vec!["--pod", "default/no-such-pod"],
            "leaktrace: error: no running pod `default/no-such-pod`",
        ),
        (
            vec!["--pod", "not-a-pod"],
            "leaktrace: error: `not-a-pod` is not a pod",
        ),
        (
            vec!["--all-containers", "--label", "leaktrace.test=matches-nothing"],
            "leaktrace: error: no running container has the label leaktrace.test=matches-nothing; running: ",
        ),
        (
            vec!["--container", "shop", "--docker-socket", "/nonexistent/docker.sock"],
            "leaktrace: error: cannot reach the container engine at /nonexistent/docker.sock",
        ),
    ] {
        let (status, stdout, stderr) = run_leaktrace(&args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with(expected), "{args:?}: {stderr}");
    }
}

fn lt_saw_pid(stderr: &[String], pid: u32) -> bool {
    stderr
        .iter()
        .any(|l| l.starts_with(&format!("leaktrace: tracing pid {pid} ")))
}

/// The Gin service in a container of its own (a static Go binary alone in
/// its image; host network, so its port is the host's), traced by name:
/// its goroutine leak exact, at its `go` statement.
#[test]
fn gin_service_by_container_name() {
    require_engine();
    let version = GO_VERSIONS[GO_VERSIONS.len() - 1];
    let bin = gin_fixture(version);
    let file = bin
        .file_name()
        .and_then(|n| n.to_str())
        .expect("fixture name")
        .to_string();
    let image = docker_image(&[file.as_str()]);
    let container = DockerContainer::create(
        &image,
        &unique_name("gin"),
        &["--network", "host"],
        &[&format!("/app/{file}")],
    );
    let mut service = container.start_attached();
    let ready = service.expect_line("ready ");
    let port: u16 = ready["ready ".len()..].trim().parse().expect("port");
    let mut lt = Leaktrace::start(&[
        "--container",
        &container.name,
        "-i",
        "1",
        "--older-than",
        "1s",
    ]);
    lt.stderr_line(&format!("leaktrace: tracing pid {}", service.pid));
    for _ in 0..10 {
        assert_eq!(http_get(port, "/ping"), "pong");
    }
    assert_eq!(http_get(port, "/search?n=12"), "ok");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while http_get(port, "/searched") != "12" {
        assert!(
            std::time::Instant::now() < deadline,
            "workers not all blocked"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = service.pid;
    // All twelve past --older-than (they start over a few milliseconds).
    let report = lt.report_where(|r| {
        r["pid"] == pid
            && r["go"]["goroutines"].as_array().is_some_and(|g| {
                g.iter().any(|s| {
                    s["start_function"] == "main.searchWorker" && s["count"].as_u64() >= Some(12)
                })
            })
    });
    let leak: Vec<&serde_json::Value> = report["go"]["goroutines"]
        .as_array()
        .expect("goroutines")
        .iter()
        .filter(|s| s["start_function"] == "main.searchWorker")
        .collect();
    assert_eq!(leak.len(), 1, "{report}");
    assert_eq!(leak[0]["count"], 12, "{report}");
    assert_eq!(leak[0]["created_by"]["symbol"], "main.search", "{report}");
    assert_eq!(report["container"]["name"], container.name.as_str());
}

/// A newcomer is held still at its exec until its probes are in; should
/// leaktrace die meanwhile (SIGKILL), its watchdog lets it go on.
#[test]
fn a_held_newcomer_goes_on_when_leaktrace_is_killed() {
    let label = unique_name("held");
    let label_arg = format!("leaktrace.test={label}");
    require_engine();
    let image = docker_image(&["heap_c"]);
    let (_a, fa) = DockerContainer::start(
        &image,
        &unique_name("held-a"),
        &["--label", &label_arg],
        &["/app/heap_c", "wait"],
    );
    let args = ["--all-containers", "--label", label_arg.as_str()];
    let mut lt = Leaktrace::start_with_env(&args, &[("LEAKTRACE_TEST_NEVER_RESUME", "1")]);
    lt.stderr_line(&format!("leaktrace: tracing pid {}", fa.pid));
    let held_image = docker_image_copy(&["heap_c"], "held");
    let b = DockerContainer::create(
        &held_image,
        &unique_name("held-b"),
        &["--label", &label_arg],
        &["/app/heap_c", "wait"],
    );
    let mut fb = b.start_attached();
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_state(fb.pid) != Some('T') {
        assert!(Instant::now() < deadline, "pid {} never held", fb.pid);
        std::thread::sleep(Duration::from_millis(10));
    }
    lt.signal(9);
    fb.expect_line("ready");
    let (status, _, stderr) = lt.finish();
    assert_eq!(status.code(), None, "killed: {stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l == "leaktrace: resume watchdog: continued 1 processes leaktrace had stopped"),
        "{stderr:?}"
    );
}

/// A pod's container, as the kubelet's Docker shim (cri-dockerd) runs it:
/// CRI labels on Docker containers, beside the pod's sandbox.
#[test]
fn pod_container_by_cri_labels() {
    require_engine();
    let image = docker_image(&["heap_c"]);
    let pod = unique_name("cart");
    let pod_labels = |container: &str, kind: &str| -> Vec<String> {
        [
            format!("io.kubernetes.pod.name={pod}"),
            "io.kubernetes.pod.namespace=shop".to_string(),
            format!("io.kubernetes.container.name={container}"),
            format!("io.kubernetes.docker.type={kind}"),
        ]
        .into_iter()
        .flat_map(|l| ["--label".to_string(), l])
        .collect()
    };
    let start = |container: &str, kind: &str| {
        let labels = pod_labels(container, kind);
        let extra: Vec<&str> = labels.iter().map(String::as_str).collect();
        let name = unique_name(&format!("k8s-{container}"));
        DockerContainer::start(&image, &name, &extra, &["/app/heap_c", "wait"])
    };
    let (_sandbox, _s) = start("POD", "podsandbox");
    let (_api, mut api) = start("api", "container");
    let (_sidecar, sidecar) = start("sidecar", "container");
    let target = format!("shop/{pod}");
    // A container the pod does not have: one line naming those it has.
    let (status, _, stderr) = run_leaktrace(&["--pod", &target, "-c", "web"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("api, sidecar"), "{stderr}");
    let mut args = vec!["--pod", target.as_str(), "-c", "api"];
    args.extend_from_slice(C_LEAK_FLAGS);
    let mut lt = Leaktrace::start(&args);
    lt.stderr_line(&format!("leaktrace: tracing pid {}", api.pid));
    let report = c_leaks_of(&mut api, &mut lt, AllocatorNames::Glibc);
    assert_eq!(report["container"]["pod"], pod.as_str());
    assert_eq!(report["container"]["namespace"], "shop");
    assert_eq!(report["container"]["pod_container"], "api");
    lt.signal(2);
    let (status, reports, stderr) = lt.finish();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
    assert!(
        reports.iter().all(|r| r["pid"] != sidecar.pid),
        "only the container named is traced"
    );
}
