//! --kernel: what the kernel holds for a traced process, found at its
//! kernel stack with the right bytes, against /proc/slabinfo, and gone
//! once the process lets it go.

use std::collections::HashMap;

use leaktrace_tests::*;
use serde_json::Value;

/// Rounds of kmem_hold: N pipes (100 bytes unread each), N AF_UNIX stream
/// pairs (1000 bytes unread), N memfds (two pages written).
const N: u64 = 2000;

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
    let mut fixture = Fixture::start("kmem_hold", &[&N.to_string()]);
    let mut lt = Leaktrace::attach(
        fixture.pid,
        &["--kernel", "-i", "0.5", "--older-than", "0", "-T", "500"],
    );
    let before = slabinfo();
    fixture.command("hold", "held");
    let after = slabinfo();
    // Everything held is in one report once the last of it (the memfds'
    // pages) is.
    let report = lt.report_where(|r| held(r, "shmem_alloc_folio", "page", None).1 >= 2 * N);

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

    // Let it all go: every one of those sites leaves the report. Sockets,
    // inodes and files are freed after an RCU grace period or at the
    // task's return to user space, not by close itself: the report that
    // shows them gone is waited for, each site and the whole.
    fixture.command("free", "freed");
    let gone = lt.report_where(|r| {
        held(r, "unix_create1", "slab", None).1 == 0
            && held(r, "sock_alloc_inode", "slab", None).1 == 0
            && held(r, "alloc_pipe_info", "slab", None).1 == 0
            && held(r, "shmem_alloc_folio", "page", None).1 == 0
            && held(r, "anon_pipe_write", "page", None).1 == 0
            && r["kernel"]["old"]["blocks"].as_u64().unwrap_or(u64::MAX) < N / 10
    });
    assert_eq!(gone["kernel"]["dropped"]["blocks"], 0, "{}", brief(&gone));
}

/// `--kernel` alone: the whole kernel's memory, the same objects among it.
#[test]
fn the_whole_kernel_is_traced_without_a_target() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fixture = Fixture::start("kmem_hold", &[&N.to_string()]);
    let mut lt = Leaktrace::start(&["--kernel", "-i", "0.5", "--older-than", "0", "-T", "5000"]);
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
    fixture.command("free", "freed");
    lt.report_where(|r| held(r, "alloc_pipe_info", "slab", Some("kmalloc-cg-1k")).1 < N / 10);
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success(), "{status:?}");
}
