//! The node agent as the DaemonSet runs it: leaktrace's own image in the
//! real engine (`--pid=host`, the manifest's capabilities and mounts) with
//! `--all-containers --listen`, three service containers beside it, a real
//! Prometheus scraping it, and `go tool pprof` on one container's profile.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace_tests::*;

/// Debian's Prometheus, scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = workspace_root().join(format!("target/tmp/prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: leaktrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package, installed by cargo xtask setup)");
        Prometheus { child, port }
    }

    /// The value of instant query `q`'s single result, if it has one.
    fn value(&self, q: &str) -> Option<String> {
        let path = format!("/api/v1/query?query={}", escape(q));
        let body = try_http_get(self.port, &path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        (result.len() == 1).then(|| result[0]["value"][1].as_str().map(String::from))?
    }

    /// Waits until query `q` answers `want` (the scrapes it needs come at
    /// their own pace), or fails with the last answer.
    fn wait_for(&self, q: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.value(q);
            if got.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {q} = {got:?}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn escape(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The capabilities deploy/kubernetes/daemonset.yaml adds: the agent here
/// runs with exactly those.
fn manifest_capabilities() -> Vec<String> {
    let manifest =
        std::fs::read_to_string(workspace_root().join("deploy/kubernetes/daemonset.yaml"))
            .expect("the manifest");
    let line = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("add:"))
        .expect("capabilities: add: [...] in the manifest");
    let caps: Vec<String> = line
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(caps, ["SYS_ADMIN", "SYS_PTRACE"], "{line}");
    caps
}

#[test]
fn agent_image_scraped_by_prometheus_gives_each_containers_leak() {
    require_engine();
    let label = format!("leaktrace.test={}", unique_name("agent"));
    let image = docker_image(&["heap_c"]);
    let services: Vec<(DockerContainer, Fixture)> = (0..3)
        .map(|i| {
            DockerContainer::start(
                &image,
                &unique_name(&format!("svc{i}")),
                &["--label", &label],
                &["/app/heap_c", "wait"],
            )
        })
        .collect();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // As deploy/kubernetes/daemonset.yaml runs it: host PID namespace,
    // CAP_SYS_ADMIN and CAP_SYS_PTRACE, the engine's default seccomp
    // profile, Docker's socket and containerd's state mounted.
    let mut flags: Vec<String> = manifest_capabilities()
        .iter()
        .map(|c| format!("--cap-add={c}"))
        .collect();
    flags.extend(["--pid=host", "--network=host"].map(String::from));
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend_from_slice(&[
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
    ]);
    let agent = DockerContainer::create(
        &leaktrace_image(),
        &unique_name("agent"),
        &flags,
        &[
            "--all-containers",
            "--label",
            &label,
            "--listen",
            &listen,
            "-i",
            "1",
            "--older-than",
            "300ms",
            "--top",
            "100",
        ],
    );
    let _agent_out = agent.start_attached();
    // Every service's process is traced once its series are served.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (c, _) in &services {
        let series = format!("container=\"{}\"", c.name);
        while !try_http_get(port, "/metrics").is_ok_and(|m| m.contains(&series)) {
            assert!(
                Instant::now() < deadline,
                "the agent never served {}",
                c.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut services = services;
    for (_, f) in &mut services {
        f.command("leak", "leaked");
    }
    let prometheus = Prometheus::start(&listen);
    for (c, _) in &services {
        // Exactly what each container leaked, under its container label.
        prometheus.wait_for(
            &format!(
                "sum(leaktrace_outstanding_bytes{{container=\"{}\"}})",
                c.name
            ),
            &C_TOTAL_BYTES.to_string(),
        );
        prometheus.wait_for(
            &format!(
                "sum(leaktrace_outstanding_bytes{{container=\"{}\",site=~\"leak_malloc .*\"}})",
                c.name
            ),
            "3000",
        );
        prometheus.wait_for(
            &format!(
                "count(leaktrace_target_info{{container=\"{}\",image=\"{image}\"}})",
                c.name
            ),
            "1",
        );
    }
    // One container's profile through go tool pprof: its leak exact.
    let name = &services[1].0.name;
    let url = format!("http://{listen}/debug/pprof/heap?container={name}");
    let rows = pprof_top(&url, &["-sample_index=inuse_space", "-unit=B"]);
    assert_eq!(
        flat_of(&rows, "leak_malloc"),
        Some("3000B".into()),
        "{rows:?}"
    );
    assert_eq!(
        flat_of(&rows, "leak_realloc"),
        Some("5000B".into()),
        "{rows:?}"
    );
    let total: u64 = rows
        .iter()
        .filter_map(|(flat, _)| flat.strip_suffix('B')?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        total, C_TOTAL_BYTES,
        "only this container's bytes: {rows:?}"
    );
}
