//! --kernel: what the kernel holds for a traced process, found at its
//! kernel stack with the right bytes, against /proc/slabinfo, and gone
//! once the process lets it go; in a Docker container; for the whole
//! kernel; in pprof, `/metrics` (checked by promtool) and folded stacks,
//! with suppressions.

use std::collections::HashMap;

use leaktrace_tests::*;
use serde_json::Value;

/// Rounds of kmem_hold: N pipes (100 bytes unread each), N AF_UNIX stream
/// pairs (1000 bytes unread), N memfds (two pages written).
const N: u64 = 2000;

/// eBPF array maps kmem_hold makes (one 4096-byte value each).
const MAPS: u64 = 200;

/// Reports every half second on everything outstanding, 500 sites.
const KERNEL_FLAGS: &[&str] = &["--kernel", "-i", "0.5", "--older-than", "0", "-T", "500"];

/// `KERNEL_FLAGS` and `more`.
fn kernel_flags<'a>(more: &[&'a str]) -> Vec<&'a str> {
    KERNEL_FLAGS
        .iter()
        .copied()
        .chain(more.iter().copied())
        .collect()
}

/// One test at a time: the whole kernel's report sees the other's objects.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Kernel sites of a report whose kernel stack has `function` in it (a
/// new slab's own bookkeeping, allocated under `allocate_slab` on the way,
/// is not the object).
fn sites_with<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["kernel"]["sites"]
        .as_array()
        .map(|sites| {
            sites
                .iter()
                .filter(|s| {
                    let on = |name: &str| {
                        s["stack"]
                            .as_array()
                            .is_some_and(|f| f.iter().any(|f| f["function"] == name))
                    };
                    on(function) && !on("allocate_slab")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes and blocks of the sites with `function` on their stack, of one
/// kind and cache (None: any).
fn held(report: &Value, function: &str, kind: &str, cache: Option<&str>) -> (u64, u64) {
    sites_with(report, function)
        .into_iter()
        .filter(|s| s["kind"] == kind && cache.is_none_or(|c| s["cache"] == c))
        .fold((0, 0), |(b, n), s| {
            (
                b + s["bytes"].as_u64().unwrap_or(0),
                n + s["blocks"].as_u64().unwrap_or(0),
            )
        })
}

/// The kernel sites of a report, briefly: what, bytes, blocks, allocator.
fn brief(report: &Value) -> String {
    let sites = report["kernel"]["sites"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    sites
        .iter()
        .map(|s| {
            let frames: Vec<&str> = s["stack"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .take(4)
                        .filter_map(|f| f["function"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{} {} {} B {} blocks: {}",
                s["kind"],
                s["cache"],
                s["bytes"],
                s["blocks"],
                frames.join(" < ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Active objects per slab cache, from /proc/slabinfo.
fn slabinfo() -> HashMap<String, (i64, i64)> {
    let text = std::fs::read_to_string("/proc/slabinfo").expect("/proc/slabinfo");
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            Some((
                c.first()?.to_string(),
                (c.get(1)?.parse().ok()?, c.get(3)?.parse().ok()?),
            ))
        })
        .collect()
}

/// A cache's objects of a report: the sum over its sites.
fn cache_blocks(report: &Value, cache: &str) -> u64 {
    report["kernel"]["caches"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == cache))
        .and_then(|c| c["blocks"].as_u64())
        .unwrap_or(0)
}

#[test]
fn kernel_memory_held_for_a_process_is_found_at_its_stacks_and_goes_when_freed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fixture = Fixture::start("kmem_hold", &[&N.to_string(), &MAPS.to_string()]);
    let mut lt = Leaktrace::attach(fixture.pid, KERNEL_FLAGS);
    let before = slabinfo();
    fixture.command("hold", "held");
    let after = slabinfo();
    // Everything held is in one report once the last of it (the maps,
    // after the memfds' pages) is.
    let report = lt.report_where(|r| {
        held(r, "shmem_alloc_folio", "page", None).1 >= 2 * N
            && held(r, "array_map_alloc", "slab", None).1 >= MAPS
    });

    // Pipes: the pipe_buffer array (16 slots of 40 bytes: kmalloc-cg-1k)
    // and one page of data each.
    let (bytes, blocks) = held(&report, "alloc_pipe_info", "slab", Some("kmalloc-cg-1k"));
    assert_eq!((bytes, blocks), (N * 1024, N), "{}", brief(&report));
    let (bytes, blocks) = held(&report, "anon_pipe_write", "page", None);
    assert_eq!((bytes, blocks), (N * 4096, N), "{}", brief(&report));
    // Sockets: two struct unix_sock a pair, the queued skb's head and its
    // 1000 bytes of data (kmalloc rounds 1000 + the shared info up to 2 KiB).
    let (_, blocks) = held(&report, "unix_create1", "slab", None);
    assert_eq!(blocks, 2 * N, "{}", brief(&report));
    let (_, blocks) = held(
        &report,
        "sock_alloc_inode",
        "slab",
        Some("sock_inode_cache"),
    );
    assert_eq!(blocks, 2 * N, "{}", brief(&report));
    let (bytes, blocks) = held(&report, "kmalloc_reserve", "slab", Some("kmalloc-cg-2k"));
    assert_eq!((bytes, blocks), (N * 2048, N), "{}", brief(&report));
    // memfds: two page-cache pages each.
    let (bytes, blocks) = held(&report, "shmem_alloc_folio", "page", None);
    assert_eq!((bytes, blocks), (2 * N * 4096, 2 * N), "{}", brief(&report));
    // The sockets' own objects come from the UNIX-STREAM cache, which SLUB
    // may have merged into another: the site names the cache it became
    // and every name linked to it in /sys/kernel/slab.
    let socks = sites_with(&report, "sk_prot_alloc");
    assert!(!socks.is_empty(), "{}", brief(&report));
    for site in socks {
        let cache = site["cache"].as_str().expect("a cache");
        let mut names: Vec<&str> = vec![cache];
        names.extend(
            site["cache_merged_with"]
                .as_array()
                .expect("cache_merged_with")
                .iter()
                .filter_map(Value::as_str),
        );
        assert!(names.contains(&"UNIX-STREAM"), "{site}");
        let target = |n: &str| std::fs::read_link(format!("/sys/kernel/slab/{n}")).ok();
        let mut linked: Vec<String> = std::fs::read_dir("/sys/kernel/slab")
            .expect("/sys/kernel/slab")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with(':') && target(n).is_some() && target(n) == target(cache))
            .collect();
        linked.sort();
        let mut named: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        named.sort();
        if target(cache).is_some() {
            assert_eq!(named, linked, "{site}");
        }
    }
    // eBPF maps: struct bpf_array and its value in one kmalloc (4096 B
    // and the struct's header, rounded up to the 8 KiB class).
    let maps = sites_with(&report, "array_map_alloc");
    let (bytes, blocks) = held(&report, "array_map_alloc", "slab", None);
    assert_eq!((bytes, blocks), (MAPS * 8192, MAPS), "{}", brief(&report));
    assert!(
        maps.iter()
            .all(|s| s["cache"].as_str().is_some_and(|c| c.ends_with("-8k"))),
        "{maps:?}"
    );
    let requested: u64 = maps
        .iter()
        .map(|s| s["requested_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(requested % MAPS, 0, "every map asks the same: {requested}");
    assert!(
        (4096 + 64..4096 + 1024).contains(&(requested / MAPS)),
        "a map's request: its 4096 B value and the struct: {}",
        requested / MAPS
    );
    // Each site's user stack names the call that made it.
    let pipe = sites_with(&report, "alloc_pipe_info");
    assert!(
        pipe.iter().all(|s| s["user_stack"][0]["function"]
            .as_str()
            .is_some_and(|f| f.contains("pipe"))),
        "{pipe:?}"
    );

    // /proc/slabinfo agrees on the caches only these objects use. SLUB
    // counts the free objects a CPU keeps in its slabs as active, so its
    // delta can fall short by what the CPUs had cached: within 10 %.
    for cache in ["sock_inode_cache", "shmem_inode_cache"] {
        let ours = cache_blocks(&report, cache) as i64;
        let delta = after[cache].0 - before[cache].0;
        let per_slab = after[cache].1;
        assert!(
            (ours - delta).abs() <= ours / 10 + per_slab,
            "{cache}: leaktrace {ours} objects, /proc/slabinfo +{delta}"
        );
    }

    // Let it all go: every one of those sites leaves the report. Files
    // are released at the task's return to user space, inodes and their
    // blobs after an RCU grace period (under load here, seen to take more
    // than 20 s): the test waits for the kernel's RCU callbacks, then for
    // the report that shows them gone, each site and the whole.
    fixture.command("free", "freed");
    rcu_barrier();
    let gone = lt.report_where(|r| {
        held(r, "unix_create1", "slab", None).1 == 0
            && held(r, "sock_alloc_inode", "slab", None).1 == 0
            && held(r, "alloc_pipe_info", "slab", None).1 == 0
            && held(r, "shmem_alloc_folio", "page", None).1 == 0
            && held(r, "anon_pipe_write", "page", None).1 == 0
            && held(r, "array_map_alloc", "slab", None).1 == 0
            && r["kernel"]["old"]["blocks"].as_u64().unwrap_or(u64::MAX) < N / 10
    });
    assert_eq!(gone["kernel"]["dropped"]["blocks"], 0, "{}", brief(&gone));
    assert_eq!(
        gone["kernel"]["dropped"]["frees_failed"],
        0,
        "{}",
        brief(&gone)
    );
}

/// Bytes of the kernel sites named by `function` (their first frame below
/// the allocator's), every cache.
fn site_bytes(report: &Value, function: &str) -> u64 {
    report["kernel"]["sites"]
        .as_array()
        .map(|sites| {
            sites
                .iter()
                .filter(|s| s["site"] == function)
                .map(|s| s["bytes"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// `go tool pprof` of `source`, the allocators' frames hidden: each kernel
/// site's bytes as the flat value of its function.
fn pprof_kernel_sites(source: &str) -> Vec<(String, String)> {
    pprof_top(
        source,
        &[
            "-sample_index=inuse_space",
            "-unit=B",
            "-tagfocus=heap=kernel",
            "-hide=_noprof$|^kmalloc|^__kmalloc|^alloc_pages|^__alloc_pages",
        ],
    )
}

/// The kernel sites in pprof, `/metrics` and folded stacks say what the
/// report says; a suppressed site is in none of them, counted.
#[test]
fn kernel_sites_are_exported_and_suppressed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("kernel-exports");
    let rules = dir.join("suppressions");
    std::fs::write(&rules, "# the sockets are known\nleak:unix_create1\n").expect("rules");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let folded = dir.join("kernel.folded");
    let mut fixture = Fixture::start("kmem_hold", &[&N.to_string()]);
    let mut lt = Leaktrace::attach(
        fixture.pid,
        &kernel_flags(&[
            "--listen",
            &listen,
            "--folded",
            folded.to_str().expect("path"),
            "--suppressions",
            rules.to_str().expect("path"),
        ]),
    );
    fixture.command("hold", "held");
    let report = lt.report_where(|r| held(r, "shmem_alloc_folio", "page", None).1 >= 2 * N);
    // Suppressed: the sockets' own objects, every site with unix_create1
    // on its stack, counted (two struct unix_sock a pair at least).
    assert!(
        sites_with(&report, "unix_create1").is_empty(),
        "{}",
        brief(&report)
    );
    let sup = &report["kernel"]["suppressed"];
    assert_eq!(sup["rules"][0]["pattern"], "unix_create1", "{sup}");
    assert!(sup["blocks"].as_u64() >= Some(2 * N), "{sup}");
    // Held objects stay: whichever report the endpoint and the file hold
    // now, it says what this one says.
    let pipes = site_bytes(&report, "alloc_pipe_info");
    assert!(pipes >= N * 1024, "{}", brief(&report));
    let url = format!("http://{listen}/debug/pprof/heap");
    let rows = pprof_kernel_sites(&url);
    assert_eq!(
        flat_of(&rows, "alloc_pipe_info"),
        Some(format!("{pipes}B")),
        "{rows:?}"
    );
    assert_eq!(flat_of(&rows, "unix_create1"), None, "{rows:?}");

    let metrics = http_get(port, "/metrics");
    assert_promtool_accepts(&metrics);
    let pid = fixture.pid.to_string();
    let series = |labels: &[(&str, &str)]| {
        let mut all = vec![("pid", pid.as_str())];
        all.extend_from_slice(labels);
        metric(&metrics, "leaktrace_kernel_outstanding_bytes", &all)
            .unwrap_or_else(|| panic!("no {all:?} in\n{metrics}")) as u64
    };
    assert_eq!(
        series(&[
            ("site", "alloc_pipe_info"),
            ("cache", "kmalloc-cg-1k"),
            ("kind", "slab")
        ]),
        N * 1024
    );
    assert_eq!(
        series(&[
            ("site", "shmem_alloc_folio"),
            ("cache", "order-0"),
            ("kind", "page")
        ]),
        2 * N * 4096
    );
    assert!(!metrics.contains("site=\"unix_create1\""), "{metrics}");
    assert!(
        metric(
            &metrics,
            "leaktrace_kernel_suppressed_bytes",
            &[("pid", &pid)]
        )
        .is_some_and(|b| b > 0.0),
        "{metrics}"
    );

    // Folded stacks: under [kernel], outermost first, the user stack's
    // system call wrapper above the kernel's entry.
    let text = std::fs::read_to_string(&folded).expect("folded file");
    let pipe_line = text
        .lines()
        .find(|l| l.contains(";alloc_pipe_info;"))
        .unwrap_or_else(|| panic!("no alloc_pipe_info in\n{text}"));
    assert!(pipe_line.starts_with("[kernel];"), "{pipe_line}");
    assert!(!text.contains("unix_create1"), "{text}");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success(), "{status:?}");
}

/// A block table too small for what the process holds: every block it
/// could not record is counted, none silently lost.
#[test]
fn blocks_beyond_the_table_are_counted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const ROOM: u64 = 1000;
    let mut fixture = Fixture::start("kmem_hold", &[&N.to_string()]);
    let room = ROOM.to_string();
    let mut lt = Leaktrace::attach(fixture.pid, &kernel_flags(&["--max-kernel-blocks", &room]));
    fixture.command("hold", "held");
    // At least 5 blocks a round (pipe: its buffers and a page; socket
    // pair: two socks; memfd: two pages) and only ROOM recorded: the rest
    // is counted once the table filled.
    let report =
        lt.report_where(|r| r["kernel"]["dropped"]["blocks"].as_u64() >= Some(5 * N - ROOM));
    let live = report["kernel"]["live"]["blocks"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(live <= ROOM, "{live} blocks in a table of {ROOM}");
    let (status, _, stderr) = run_leaktrace(&["--kernel", "--max-kernel-blocks", "0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-kernel-blocks"), "{stderr}");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success(), "{status:?}");
}

/// `--container NAME --kernel`: what the kernel holds for a process in a
/// Docker container, exactly, named by its container.
#[test]
fn kernel_memory_of_a_docker_container() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_engine();
    const IN_CONTAINER: u64 = 500;
    let image = docker_image(&["kmem_hold"]);
    let (container, mut fixture) = DockerContainer::start(
        &image,
        &unique_name("kmem"),
        &[],
        &["/app/kmem_hold", &IN_CONTAINER.to_string()],
    );
    let mut lt = Leaktrace::start(&kernel_flags(&["--container", &container.name]));
    lt.stderr_line(&format!("leaktrace: tracing pid {}", fixture.pid));
    fixture.command("hold", "held");
    let pid = fixture.pid;
    let report = lt.report_where(|r| {
        r["pid"] == pid && held(r, "shmem_alloc_folio", "page", None).1 >= 2 * IN_CONTAINER
    });
    assert_eq!(report["container"]["name"], container.name.as_str());
    assert_eq!(report["kernel"]["whole_kernel"], false);
    let (bytes, blocks) = held(&report, "alloc_pipe_info", "slab", Some("kmalloc-cg-1k"));
    assert_eq!(
        (bytes, blocks),
        (IN_CONTAINER * 1024, IN_CONTAINER),
        "{}",
        brief(&report)
    );
    let (bytes, blocks) = held(&report, "kmalloc_reserve", "slab", Some("kmalloc-cg-2k"));
    assert_eq!(
        (bytes, blocks),
        (IN_CONTAINER * 2048, IN_CONTAINER),
        "{}",
        brief(&report)
    );
    let (bytes, blocks) = held(&report, "shmem_alloc_folio", "page", None);
    assert_eq!(
        (bytes, blocks),
        (2 * IN_CONTAINER * 4096, 2 * IN_CONTAINER),
        "{}",
        brief(&report)
    );
    fixture.command("free", "freed");
    lt.report_where(|r| {
        r["pid"] == pid
            && held(r, "alloc_pipe_info", "slab", None).1 == 0
            && held(r, "shmem_alloc_folio", "page", None).1 == 0
    });
    lt.signal(libc::SIGINT);
    let (status, _, stderr) = lt.finish();
    assert_eq!(status.code(), Some(0), "{stderr:?}");
}

/// `--kernel` alone: the whole kernel's memory, the same objects among it,
/// exported (pprof files, `/metrics` without process labels).
#[test]
fn the_whole_kernel_is_traced_without_a_target() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir("kernel-whole");
    let pprof_dir = dir.join("pprof");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut fixture = Fixture::start("kmem_hold", &[&N.to_string()]);
    let mut lt = Leaktrace::start(&[
        "--kernel",
        "-v",
        "-i",
        "0.5",
        "--older-than",
        "0",
        "-T",
        "5000",
        "--pprof-dir",
        pprof_dir.to_str().expect("path"),
        "--listen",
        &listen,
    ]);
    assert!(
        lt.stderr_line("leaktrace: tracing")
            .contains("the whole kernel"),
        "banner"
    );
    fixture.command("hold", "held");
    let report =
        lt.report_where(|r| held(r, "alloc_pipe_info", "slab", Some("kmalloc-cg-1k")).1 >= N);
    assert_eq!(report["type"], "kernel_report", "{report}");
    assert_eq!(report["kernel"]["whole_kernel"], true);
    // Other processes may make pipes meanwhile; this one made N.
    let (bytes, blocks) = held(&report, "alloc_pipe_info", "slab", Some("kmalloc-cg-1k"));
    assert!((N..N + 50).contains(&blocks), "{}", brief(&report));
    assert_eq!(bytes, blocks * 1024);
    // This report's profile, read by pprof: its site's bytes.
    let file = pprof_dir.join(format!("heap-{}.pb.gz", report["seq"]));
    let rows = pprof_kernel_sites(file.to_str().expect("path"));
    assert_eq!(
        flat_of(&rows, "alloc_pipe_info"),
        Some(format!("{}B", site_bytes(&report, "alloc_pipe_info"))),
        "{rows:?}"
    );
    let metrics = http_get(port, "/metrics");
    assert_promtool_accepts(&metrics);
    let pipes = metric(
        &metrics,
        "leaktrace_kernel_outstanding_bytes",
        &[("site", "alloc_pipe_info"), ("cache", "kmalloc-cg-1k")],
    )
    .unwrap_or_else(|| panic!("{metrics}"));
    assert!(pipes >= (N * 1024) as f64, "{metrics}");
    assert!(!metrics.contains("pid=\""), "no process labels: {metrics}");
    fixture.command("free", "freed");
    lt.report_where(|r| held(r, "alloc_pipe_info", "slab", Some("kmalloc-cg-1k")).1 < N / 10);
    lt.signal(libc::SIGINT);
    let (status, _, stderr) = lt.finish();
    assert!(status.success(), "{status:?}");
    // Only the kernel-memory programs were loaded, and none is left.
    let loaded = stderr
        .iter()
        .find(|l| l.starts_with("leaktrace: eBPF programs loaded in "))
        .unwrap_or_else(|| panic!("no -v line in {stderr:?}"));
    assert!(!loaded.contains("stack_walk"), "{loaded}");
    assert!(loaded.contains("kmem_cache_alloc"), "{loaded}");
    assert_eq!(wait_until_no_leaktrace_programs(), Vec::<String>::new());
}
