//! Real Go services as their owners meet them: a Gin service (Debian's Gin
//! 1.8.1) leaking goroutines from a handler that gives up waiting, and heap
//! into an unbounded map next to a bounded cache, in a binary that never
//! imported runtime/pprof (`--go-memprofile`).

use std::time::Duration;

use leaktrace_tests::*;
use serde_json::Value;

/// Versions the Gin tests run on: the oldest and newest supported, and two
/// between.
const GIN_VERSIONS: &[&str] = &[GO_1_21, GO_1_23, GO_1_25, GO_1_27];

/// A handler that `select`s on its worker's result with a timeout: each
/// request leaves its worker blocked forever on the send. Exactly those
/// are reported, at the `go` statement, with their start function; the
/// healthy `/ping` requests (served on goroutines of their own) are not.
fn select_timeout_leak_is_exact(version: &str) {
    let bin = gin_fixture(version);
    let service = GoService::start(&bin, &[]);
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--older-than", "1s"]);
    for _ in 0..30 {
        assert_eq!(http_get(service.port, "/ping"), "pong");
    }
    assert_eq!(http_get(service.port, "/search?n=12"), "ok");
    // The workers block a few milliseconds after their handler gave up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http_get(service.port, "/searched") != "12" {
        assert!(
            std::time::Instant::now() < deadline,
            "go{version}: workers not all blocked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // All twelve past --older-than: the workers start over a few
    // milliseconds, so a report can fall between the first and the last
    // turning a second old.
    let report = lt.report_where(|r| {
        r["go"]["goroutines"].as_array().is_some_and(|g| {
            g.iter().any(|s| {
                s["start_function"] == "main.searchWorker" && s["count"].as_u64() >= Some(12)
            })
        })
    });
    let sites: Vec<&Value> = report["go"]["goroutines"]
        .as_array()
        .expect("goroutines")
        .iter()
        .collect();
    let leak: Vec<&&Value> = sites
        .iter()
        .filter(|s| s["start_function"] == "main.searchWorker")
        .collect();
    assert_eq!(leak.len(), 1, "go{version}: {report}");
    assert_eq!(leak[0]["count"], 12, "go{version}: {report}");
    assert_eq!(
        leak[0]["created_by"]["symbol"], "main.search",
        "go{version}: {report}"
    );
    // The handler's frames through Gin's router are in the creating stack.
    let frames: Vec<&str> = leak[0]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(|f| f["symbol"].as_str())
        .collect();
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with("github.com/gin-gonic/gin.")),
        "go{version}: Gin's frames in {frames:?}"
    );
    // Nothing else was left behind by the requests.
    for s in &sites {
        assert!(
            s["start_function"] == "main.searchWorker"
                || s["created_by"]["symbol"]
                    .as_str()
                    .is_some_and(|c| !c.starts_with("main.")),
            "go{version}: unexpected site {s}"
        );
    }
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

#[test]
fn gin_handler_select_timeout_leak_go1_21() {
    select_timeout_leak_is_exact(GO_1_21);
}

#[test]
fn gin_handler_select_timeout_leak_go1_27() {
    select_timeout_leak_is_exact(GO_1_27);
}

/// `--go-memprofile` on a Gin service built without runtime/pprof: the
/// unbounded map is the top heap site and `growing`, the bounded cache
/// beside it `steady`, and the service keeps serving while it allocates.
fn memprofile_tells_a_leak_from_a_cache(version: &str) {
    let bin = gin_fixture(version);
    // Frequent GCs: the profile is published by each GC.
    let mut service = GoService::start_with_env(&bin, &[], &[("GOGC", "25")]);
    let mut lt = Leaktrace::attach(
        service.pid(),
        &[
            "--go-memprofile",
            "-i",
            "1",
            "--older-than",
            "0",
            "--top",
            "20",
        ],
    );
    let wrote = lt.stderr_line("leaktrace: --go-memprofile:");
    assert!(
        wrote.contains("wrote runtime.MemProfileRate = 524288"),
        "go{version}: {wrote}"
    );
    // Traffic on a thread of its own while reports are read.
    let port = service.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for path in ["/remember?n=256", "/cache?n=256", "/churn?n=256"] {
                    assert_eq!(http_get(port, path), "ok");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // Trends need four readings after GCs: allow a minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let report = loop {
        let r = lt.next_report();
        let sites = go_heap_sites(&r);
        let cache = sites
            .iter()
            .find(|s| first_function(s) == "main.cacheProfile");
        if sites.first().is_some_and(|top| top["trend"] == "growing")
            && cache.is_some_and(|c| c["trend"] == "steady")
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "go{version}: never saw the map growing and the cache steady; last: {r}"
        );
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().expect("traffic thread");
    let top = go_heap_sites(&report)[0];
    assert_eq!(
        first_function(top),
        "main.rememberSession",
        "go{version}: {report}"
    );
    assert!(service.is_alive(), "go{version}: the service died");
    assert_eq!(http_get(service.port, "/ping"), "pong");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

#[test]
fn go_memprofile_on_gin_go1_21() {
    memprofile_tells_a_leak_from_a_cache(GO_1_21);
}

#[test]
fn go_memprofile_on_gin_go1_23() {
    memprofile_tells_a_leak_from_a_cache(GO_1_23);
}

#[test]
fn go_memprofile_on_gin_go1_25() {
    memprofile_tells_a_leak_from_a_cache(GO_1_25);
}

#[test]
fn go_memprofile_on_gin_go1_27() {
    memprofile_tells_a_leak_from_a_cache(GO_1_27);
}

/// `--go-memprofile` switched on while the service allocates hard on every
/// core (two clients dropping 8 MiB per request, GOGC=25: GCs back to
/// back; one growing the session map): the runtime starts sampling in the
/// middle of it without harm, the profile that builds up names the growing
/// site, and no request fails before, during or after.
#[test]
fn go_memprofile_turned_on_under_allocation_load() {
    use std::sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    };
    let version = GIN_VERSIONS[3];
    let bin = gin_fixture(version);
    let mut service = GoService::start_with_env(&bin, &[], &[("GOGC", "25")]);
    let port = service.port;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = ["/churn?n=512", "/churn?n=512", "/remember?n=64"]
        .into_iter()
        .map(|path| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(http_get(port, path), "ok", "{path}");
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = served.load(Ordering::Relaxed);
    let mut lt = Leaktrace::attach(
        service.pid(),
        &[
            "--go-memprofile",
            "-i",
            "1",
            "--older-than",
            "0",
            "--top",
            "20",
        ],
    );
    let wrote = lt.stderr_line("leaktrace: --go-memprofile:");
    assert!(
        wrote.contains("wrote runtime.MemProfileRate = 524288"),
        "go{version}: {wrote}"
    );
    let report = lt.report_where(|r| {
        go_heap_sites(r)
            .iter()
            .any(|s| first_function(s) == "main.rememberSession")
    });
    let during = served.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("every request under load succeeded");
    }
    let after = served.load(Ordering::Relaxed);
    assert!(
        during > before && after > during,
        "served throughout: {before} {during} {after}"
    );
    assert!(
        go_heap_sites(&report)
            .iter()
            .all(|s| s["bytes"].as_u64().is_some()),
        "{report}"
    );
    assert!(service.is_alive(), "go{version}: the service died");
    assert_eq!(http_get(port, "/ping"), "pong");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
    assert_eq!(http_get(port, "/ping"), "pong");
}

#[test]
fn without_the_flag_the_note_says_how_to_get_heap_by_stack() {
    let bin = gin_fixture(GIN_VERSIONS[3]);
    let service = GoService::start(&bin, &[]);
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1"]);
    let report = lt.next_report();
    assert_eq!(report["go"]["heap_profile"], Value::Null, "{report}");
    let notes = report["go"]["notes"].to_string();
    assert!(notes.contains("--go-memprofile turns it on"), "{notes}");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

/// `http.Get` without `resp.Body.Close()`: each unclosed response keeps its
/// connection's two transport goroutines, created in net/http's
/// `(*Transport).dialConn` (Go 1.27's net/http: the stack is its dialing
/// goroutine's).
#[test]
fn unclosed_response_bodies_leak_two_goroutines_each() {
    let version = GIN_VERSIONS[3];
    let bin = gin_fixture(version);
    let service = GoService::start(&bin, &[]);
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--older-than", "1s"]);
    assert_eq!(http_get(service.port, "/fetch?n=9"), "ok");
    let report = lt.report_where(|r| {
        r["go"]["goroutines"].as_array().is_some_and(|g| {
            // All nine past --older-than (the requests take a moment).
            g.iter().any(|s| {
                s["start_function"] == "net/http.(*persistConn).writeLoop" && s["count"] == 9
            })
        })
    });
    let sites = report["go"]["goroutines"].as_array().expect("goroutines");
    for start in [
        "net/http.(*persistConn).readLoop",
        "net/http.(*persistConn).writeLoop",
    ] {
        let site: Vec<&Value> = sites
            .iter()
            .filter(|s| s["start_function"] == start)
            .collect();
        assert_eq!(site.len(), 1, "{start}: {report}");
        assert_eq!(site[0]["count"], 9, "{start}: {report}");
        assert_eq!(
            site[0]["created_by"]["symbol"], "net/http.(*Transport).dialConn",
            "{start}: {report}"
        );
        // net/http dials on a goroutine of its own: that is the creating
        // stack, whole and in order.
        let frames: Vec<&str> = site[0]["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .filter_map(|f| f["symbol"].as_str())
            .collect();
        assert_eq!(
            frames,
            [
                "net/http.(*Transport).dialConn",
                "net/http.(*Transport).dialConnFor",
                "net/http.(*Transport).startDialConnForLocked.func1",
                "runtime.goexit"
            ],
            "{start}"
        );
    }
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

/// A gRPC client that opens server streams (gRPC's own Health/Watch) and
/// never cancels them: one goroutine leaks in the client, at
/// `grpc.newClientStream` with the caller's frames above it, and one in
/// the server, at `(*Server).serveStreams`, per stream, exactly; the
/// healthy unary calls leave nothing.
fn unclosed_grpc_streams_leak_on_both_sides(version: &str) {
    let bin = grpc_fixture(version);
    let service = GoService::start(&bin, &[]);
    let mut lt = Leaktrace::attach(service.pid(), &["-i", "1", "--older-than", "1s"]);
    assert_eq!(http_get(service.port, "/check?n=20").trim(), "ok");
    assert_eq!(http_get(service.port, "/watch?n=7").trim(), "ok");
    let report = lt.report_where(|r| {
        r["go"]["goroutines"].as_array().is_some_and(|g| {
            g.iter()
                .map(|s| s["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
                >= 14
        })
    });
    let sites = report["go"]["goroutines"].as_array().expect("goroutines");
    let at = |created_by: &str| -> Vec<&Value> {
        sites
            .iter()
            .filter(|s| s["created_by"]["symbol"] == created_by)
            .collect()
    };
    let client = at("google.golang.org/grpc.newClientStream");
    assert_eq!(client.len(), 1, "go{version}: {report}");
    assert_eq!(client[0]["count"], 7, "go{version}: {report}");
    let frames: Vec<&str> = client[0]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(|f| f["symbol"].as_str())
        .collect();
    assert_eq!(
        &frames[..4],
        [
            "google.golang.org/grpc.newClientStream",
            "google.golang.org/grpc.(*ClientConn).NewStream",
            "google.golang.org/grpc/health/grpc_health_v1.(*healthClient).Watch",
            "main.openWatch"
        ],
        "go{version}"
    );
    let server = at("google.golang.org/grpc.(*Server).serveStreams.func1");
    assert_eq!(server.len(), 1, "go{version}: {report}");
    assert_eq!(server[0]["count"], 7, "go{version}: {report}");
    assert_eq!(sites.len(), 2, "go{version}: nothing else: {report}");
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

#[test]
fn unclosed_grpc_streams_go1_25() {
    unclosed_grpc_streams_leak_on_both_sides(GO_1_25);
}

#[test]
fn unclosed_grpc_streams_go1_27() {
    unclosed_grpc_streams_leak_on_both_sides(GO_1_27);
}

/// A Gin service in a container whose memory limit its unbounded session
/// map outgrows: the OOM killer ends it. leaktrace says so, and its final
/// report, written after the death, shows what the service held when it
/// died: exactly the 9 goroutines its timed-out searches left blocked, at
/// their `go` statement; the cgroup at its limit with the kill counted; the
/// map's site on top of the Go heap.
#[test]
fn gin_service_killed_by_the_oom_killer() {
    let version = GO_1_25;
    let bin = gin_fixture(version);
    let limit = MemoryLimit::new(96 << 20);
    let mut service = GoService::start_in_cgroup(&bin, &[], &limit.procs());
    let mut lt = Leaktrace::attach(
        service.pid(),
        &["--go-memprofile", "-i", "1", "--older-than", "1s"],
    );
    for _ in 0..30 {
        assert_eq!(http_get(service.port, "/ping"), "pong");
    }
    assert_eq!(http_get(service.port, "/search?n=9"), "ok");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http_get(service.port, "/searched") != "9" {
        assert!(
            std::time::Instant::now() < deadline,
            "workers not all blocked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = lt.next_report();
    assert_eq!(before["oom_killed"], false, "{before}");
    assert_eq!(
        before["memory_cgroup"]["path"],
        limit.path.as_str(),
        "{before}"
    );
    assert_eq!(before["memory_cgroup"]["limit_bytes"], 96 << 20, "{before}");
    assert_eq!(before["memory_cgroup"]["oom_kills"], 0, "{before}");
    // 1 MiB more sessions per request until the service dies.
    let mut served = 0;
    let died = loop {
        match try_http_get(service.port, "/remember?n=64") {
            Ok(_) => served += 1,
            Err(e) => break e,
        }
        assert!(served < 500, "the service never reached its limit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (status, reports, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
    assert!(!service.is_alive(), "still alive after {died}");
    let last = reports.last().expect("a final report");
    assert_eq!(last["final"], true, "{last}");
    assert_eq!(last["target_exited"], true, "{last}");
    assert_eq!(last["oom_killed"], true, "{last}");
    let cgroup = &last["memory_cgroup"];
    assert_eq!(cgroup["path"], limit.path.as_str(), "{last}");
    assert_eq!(cgroup["limit_bytes"], 96 << 20, "{last}");
    assert_eq!(cgroup["oom_kills"], 1, "{last}");
    // It died at its limit: the kernel reclaims a little before it kills,
    // and charges it may not fail (the dying victim's own) can take a few
    // pages past the limit (one page over, seen under CPU load).
    let peak = cgroup["peak_bytes"].as_u64().expect("peak");
    assert!(peak > 90 << 20 && peak <= (96 << 20) + (64 << 12), "{last}");
    let said = format!(
        "leaktrace: pid {} was killed by the OOM killer (memory cgroup {}, limit 100663296 B (96.0 MiB)); \
         the final report shows what it held when it died",
        service.pid(),
        limit.path
    );
    assert!(stderr.contains(&said), "{stderr:?}");
    // The goroutines it held when it died: the 9 blocked workers, nothing
    // else of its own.
    let goroutines = last["go"]["goroutines"].as_array().expect("goroutines");
    let ours: Vec<&Value> = goroutines
        .iter()
        .filter(|s| {
            s["created_by"]["symbol"]
                .as_str()
                .is_some_and(|c| c.starts_with("main."))
        })
        .collect();
    assert_eq!(ours.len(), 1, "{last}");
    assert_eq!(ours[0]["start_function"], "main.searchWorker", "{last}");
    assert_eq!(ours[0]["created_by"]["symbol"], "main.search", "{last}");
    assert_eq!(ours[0]["count"], 9, "{last}");
    // Its heap: the session map's site on top of the runtime's profile.
    let top = go_heap_sites(last)
        .first()
        .copied()
        .expect("a Go heap profile");
    assert_eq!(first_function(top), "main.rememberSession", "{last}");
}

/// The slice leak: a handler appends to a global audit log that is never
/// trimmed. With every allocation profiled (`--go-memprofile-rate 1`), the
/// heap profile holds exactly the payloads the requests appended, at the
/// `make` in main.recordAudit, `growing` from GC to GC; the healthy
/// `/ping` handler holds nothing.
fn global_slice_leak_is_exact(version: &str) {
    const PER_ROUND: u64 = 40;
    const PAYLOAD: u64 = 4096;
    let bin = gin_fixture(version);
    let service = GoService::start(&bin, &[]);
    let mut lt = Leaktrace::attach(
        service.pid(),
        &[
            "--go-memprofile",
            "--go-memprofile-rate",
            "1",
            "-i",
            "1",
            "--top",
            "50",
        ],
    );
    let wrote = lt.stderr_line("leaktrace: --go-memprofile:");
    assert!(
        wrote.contains("wrote runtime.MemProfileRate = 1 (every allocation)"),
        "go{version}: {wrote}"
    );
    let source = workspace_root().join("tests/fixtures/gin_service.go");
    let source = std::fs::read_to_string(source).expect("fixture source");
    let make_line = source
        .lines()
        .position(|l| l.contains("make([]byte, auditPayload)"))
        .expect("the payload's make")
        + 1;
    let payloads = |r: &Value| -> Option<Value> {
        go_heap_sites(r)
            .into_iter()
            .find(|s| {
                first_function(s) == "main.recordAudit"
                    && s["frames"][0]["line"] == make_line as u64
            })
            .cloned()
    };
    let mut appended = 0;
    let mut last = Value::Null;
    for _round in 0..5 {
        for _ in 0..10 {
            assert_eq!(http_get(service.port, "/ping"), "pong");
        }
        assert_eq!(
            http_get(service.port, &format!("/audit?n={PER_ROUND}")),
            "ok"
        );
        appended += PER_ROUND;
        // GCs publish the profile of what was allocated before them; one
        // more pair at each report until this round shows (a report may
        // be read between the two).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert_eq!(http_get(service.port, "/gc"), "ok");
            last = lt.next_report();
            if payloads(&last).is_some_and(|s| s["objects"] == appended) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "go{version}: never {appended} payloads; last: {}",
                payloads(&last).unwrap_or_default()
            );
        }
    }
    let site = payloads(&last).expect("payload site");
    assert_eq!(site["objects"], appended, "go{version}: {site}");
    assert_eq!(site["bytes"], appended * PAYLOAD, "go{version}: {site}");
    assert_eq!(site["trend"], "growing", "go{version}: {site}");
    assert!(
        frame_symbols(&site)[1].starts_with("main.main.func"),
        "go{version}: the handler calls it: {site}"
    );
    assert!(
        frame_symbols(&site)
            .iter()
            .any(|f| f.starts_with("github.com/gin-gonic/gin.")),
        "go{version}: Gin's frames in {site}"
    );
    // /ping is the first handler registered: main.main.func1. Gin pools
    // its per-request state, so the last request's response can stay in
    // use; 50 requests must not leave one each.
    let ping: Vec<&Value> = go_heap_sites(&last)
        .into_iter()
        .filter(|s| frame_symbols(s).contains(&"main.main.func1"))
        .collect();
    let objects: u64 = ping.iter().filter_map(|s| s["objects"].as_u64()).sum();
    assert!(
        objects <= 4,
        "go{version}: the healthy handler holds {objects} objects: {ping:?}"
    );
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

#[test]
fn global_slice_leak_go1_21() {
    global_slice_leak_is_exact(GO_1_21);
}

#[test]
fn global_slice_leak_go1_27() {
    global_slice_leak_is_exact(GO_1_27);
}
