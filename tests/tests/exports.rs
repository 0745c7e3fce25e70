//! Reports in the tools users already read, checked with those tools:
//! pprof files and the live endpoint read by the real `go tool pprof`,
//! `/metrics` checked by Debian's `promtool`, the flame graph parsed as
//! XML, folded stacks summed; and suppressions.

use std::{net::TcpListener, path::Path, process::Command};

use leaktrace_tests::*;
use serde_json::Value;

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn pprof_files_hold_every_leak_site_exactly_and_base_shows_the_growth() {
    let dir = scratch_dir("pprof-files");
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let d = path_arg(&dir);
    let mut args = C_LEAK_FLAGS.to_vec();
    args.extend(["--pprof-dir", &d]);
    let mut lt = Leaktrace::attach(fixture.pid, &args);
    let before = c_leaks_of(&mut fixture, &mut lt, AllocatorNames::Glibc);
    fixture.command("late", "leaked-late");
    let after = lt.report_where(|r| !stacks_at(r, "leak_late").is_empty());
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
    let heap = |r: &Value| path_arg(&dir.join(format!("heap-{}.pb.gz", r["seq"])));

    let inuse = pprof_top(&heap(&before), &["-sample_index=inuse_space", "-unit=B"]);
    for &(function, bytes, ..) in C_LEAKS {
        assert_eq!(
            flat_of(&inuse, function),
            Some(format!("{bytes}B")),
            "{function}: {inuse:?}"
        );
    }
    let total: u64 = inuse
        .iter()
        .map(|(flat, _)| flat.trim_end_matches('B').parse::<u64>().unwrap_or(0))
        .sum();
    assert_eq!(total, C_TOTAL_BYTES, "nothing else is in use: {inuse:?}");
    let objects = pprof_top(&heap(&before), &["-sample_index=inuse_objects"]);
    for &(function, _, blocks, _) in C_LEAKS {
        assert_eq!(
            flat_of(&objects, function),
            Some(blocks.to_string()),
            "{function}"
        );
    }
    // Allocated since attach, freed or not: freed_malloc's one malloc(111).
    let allocated = pprof_top(&heap(&before), &["-sample_index=alloc_space", "-unit=B"]);
    assert_eq!(
        flat_of(&allocated, "freed_malloc"),
        Some("111B".into()),
        "{allocated:?}"
    );
    assert_eq!(flat_of(&allocated, "leak_malloc"), Some("3000B".into()));
    assert_eq!(flat_of(&inuse, "freed_malloc"), None, "{inuse:?}");

    // Between the two reports exactly leak_late's block appeared.
    let base = heap(&before);
    let grown = pprof_top(
        &heap(&after),
        &["-sample_index=inuse_space", "-unit=B", "-base", &base],
    );
    let nonzero: Vec<_> = grown.iter().filter(|(flat, _)| flat != "0").collect();
    assert_eq!(
        nonzero,
        [&("2222B".to_string(), "leak_late".to_string())],
        "{grown:?}"
    );
}

#[test]
fn live_endpoint_serves_pprof_and_metrics_that_promtool_accepts() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let mut args = C_LEAK_FLAGS.to_vec();
    args.extend(["--listen", &listen]);
    let mut lt = Leaktrace::attach(fixture.pid, &args);
    let report = c_leaks_of(&mut fixture, &mut lt, AllocatorNames::Glibc);

    // The command pprof users already type, against a C program.
    let url = format!("http://{listen}/debug/pprof/heap");
    let inuse = pprof_top(&url, &["-sample_index=inuse_space", "-unit=B"]);
    for &(function, bytes, ..) in C_LEAKS {
        assert_eq!(
            flat_of(&inuse, function),
            Some(format!("{bytes}B")),
            "{function}"
        );
    }

    let metrics = http_get(port, "/metrics");
    assert_promtool_accepts(&metrics);
    let pid = fixture.pid.to_string();
    // Every series names the process.
    let value = |name: &str, labels: &[(&str, &str)]| -> u64 {
        let mut all = vec![("pid", pid.as_str()), ("comm", "heap_c")];
        all.extend_from_slice(labels);
        metric(&metrics, name, &all).unwrap_or_else(|| panic!("no {name} {all:?} in\n{metrics}"))
            as u64
    };
    // The leaks are settled: whichever report the endpoint holds says
    // what the checked report says.
    assert_eq!(
        value("leaktrace_live_bytes", &[]),
        report["live_bytes"].as_u64().unwrap()
    );
    for &(function, bytes, blocks, _) in C_LEAKS {
        let site = &stacks_at(&report, function)[0]["frames"][0];
        let label = format!(
            "{function} (heap_c.c:{})",
            site["line"].as_u64().expect("line")
        );
        let site = [("site", label.as_str())];
        assert_eq!(value("leaktrace_outstanding_bytes", &site), bytes);
        assert_eq!(value("leaktrace_outstanding_allocations", &site), blocks);
    }
    assert_eq!(
        value("leaktrace_outstanding_bytes", &[("site", "other")]),
        0
    );
    assert_eq!(
        value(
            "leaktrace_dropped_events_total",
            &[("reason", "alloc_map_full")]
        ),
        0
    );
    assert!(
        metric(&metrics, "leaktrace_cpu_seconds_total", &[]).is_some(),
        "{metrics}"
    );
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

/// `--container` with every export: per-process pprof files named by pid,
/// the endpoint's `?pid=N` and its merged view of the container, `/metrics`
/// with every series labelled by process, all read by `go tool pprof` and
/// `promtool`.
#[test]
fn container_exports_per_process_and_merged() {
    const WORKERS: usize = 4;
    let dir = scratch_dir("pprof-container");
    let d = path_arg(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut service = Fixture::in_container_with("prefork", &[], &["prefork_child"]);
    let id = service
        .container()
        .map(|c| c.id.clone())
        .expect("container");
    let mut lt = Leaktrace::start(&[
        "--container",
        &id,
        "-i",
        "0.5",
        "--older-than",
        "0",
        "--pprof-dir",
        &d,
        "--listen",
        &listen,
    ]);
    service.send(&format!("start {WORKERS}"));
    // Workers that stay: PID inside → bytes leaked at worker_leak.
    let mut staying: std::collections::HashMap<u64, u64> = Default::default();
    for _ in 0..WORKERS {
        let line = service.expect_line("worker ");
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().expect("a number"))
            .collect();
        if f[1].is_multiple_of(2) {
            staying.insert(f[0], f[2]);
        }
    }
    // Their host PIDs, from reports that hold their leaks.
    let mut host: std::collections::HashMap<u64, u32> = Default::default();
    while host.len() < staying.len() {
        let r = lt.next_report();
        let (Some(inside), Some(pid)) = (r["pid_in_container"].as_u64(), r["pid"].as_u64()) else {
            continue;
        };
        if let Some(&bytes) = staying.get(&inside) {
            if totals_through(&r, "worker_leak") == (bytes, 1) {
                host.insert(inside, pid as u32);
            }
        }
    }
    // A round that began after those reports: every export holds them
    // (each round ends with its summary line, after the exports).
    lt.drain_stderr();
    lt.wait_stderr("leaktrace: container ");
    let wanted: u64 = staying.values().sum();
    for (inside, pid) in &host {
        let bytes = staying[inside];
        let url = format!("http://{listen}/debug/pprof/heap?pid={pid}");
        let top = pprof_top(&url, &["-sample_index=inuse_space", "-unit=B"]);
        assert_eq!(
            flat_of(&top, "worker_leak"),
            Some(format!("{bytes}B")),
            "{url}"
        );
        let newest = std::fs::read_dir(&dir)
            .expect("pprof dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("heap-{pid}-")) && n.ends_with(".pb.gz"))
            .max_by_key(|n| {
                n.trim_start_matches(&format!("heap-{pid}-"))
                    .trim_end_matches(".pb.gz")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .unwrap_or_else(|| panic!("no heap-{pid}-N.pb.gz in {d}"));
        let top = pprof_top(
            &path_arg(&dir.join(&newest)),
            &["-sample_index=inuse_space", "-unit=B"],
        );
        assert_eq!(
            flat_of(&top, "worker_leak"),
            Some(format!("{bytes}B")),
            "{newest}"
        );
    }
    // The container merged: both staying workers' leaks at one site.
    let merged = format!("http://{listen}/debug/pprof/heap");
    let top = pprof_top(&merged, &["-sample_index=inuse_space", "-unit=B"]);
    assert_eq!(
        flat_of(&top, "worker_leak"),
        Some(format!("{wanted}B")),
        "{merged}"
    );
    let metrics = http_get(port, "/metrics");
    assert_promtool_accepts(&metrics);
    for (inside, pid) in &host {
        let pid = pid.to_string();
        let labels = [
            ("pid", pid.as_str()),
            ("comm", "prefork"),
            ("container", id.as_str()),
        ];
        assert_eq!(
            metric(&metrics, "leaktrace_live_bytes", &labels),
            Some(staying[inside] as f64),
            "{metrics}"
        );
    }
    lt.signal(libc::SIGINT);
    let (status, _, stderr) = lt.finish();
    assert!(status.success(), "{stderr:?}");
}

#[test]
fn goroutine_profile_holds_the_leaked_counts_at_their_creation_sites() {
    const LEAKS: u64 = 7;
    const TICKERS: u64 = 2;
    const PRELUDE: u64 = 5;
    let dir = scratch_dir("pprof-goroutines");
    let bin = go_fixture(PPROF_GO, GoBuild::Static);
    let service = GoService::start(&bin, &["-prelude", &PRELUDE.to_string()]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = path_arg(&dir);
    let mut lt = Leaktrace::attach(
        service.pid(),
        &[
            "-i",
            "1",
            "--older-than",
            "1s",
            "--pprof-dir",
            &d,
            "--listen",
            &listen,
        ],
    );
    for _ in 0..LEAKS {
        assert_eq!(http_get(service.port, "/leak").trim(), "leaked");
    }
    for _ in 0..TICKERS {
        assert_eq!(http_get(service.port, "/tick").trim(), "ticking");
    }
    for _ in 0..20 {
        assert_eq!(http_get(service.port, "/ok").trim(), "ok");
    }
    let count_at = |r: &Value, f: &str| -> u64 {
        r["go"]["goroutines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["created_by"]["symbol"] == f)
            .map(|g| g["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let report = lt.report_where(|r| {
        count_at(r, "main.handleLeak") >= LEAKS && count_at(r, "main.handleTick") >= TICKERS
    });
    let file = path_arg(&dir.join(format!("goroutine-{}.pb.gz", report["seq"])));
    let url = format!("http://{listen}/debug/pprof/goroutine");
    for source in [file.as_str(), url.as_str()] {
        // Creation stacks: the `go` statement's function is the leaf.
        let rows = pprof_top(source, &["-sample_index=goroutine"]);
        assert_eq!(
            flat_of(&rows, "main.handleLeak"),
            Some(LEAKS.to_string()),
            "{source}: {rows:?}"
        );
        assert_eq!(
            flat_of(&rows, "main.handleTick"),
            Some(TICKERS.to_string()),
            "{source}: {rows:?}"
        );
        assert_eq!(
            flat_of(&rows, "main.leakBeforeAttach"),
            Some(PRELUDE.to_string()),
            "{source}: {rows:?}"
        );
        // Finished goroutines (handleOK's) are not in it.
        assert_eq!(flat_of(&rows, "main.handleOK"), None, "{source}: {rows:?}");
    }
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());
}

#[test]
fn flame_graph_and_folded_stacks_show_the_outstanding_bytes() {
    let dir = scratch_dir("flamegraph");
    let (svg, folded) = (dir.join("heap.svg"), dir.join("heap.folded"));
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let (s, f) = (path_arg(&svg), path_arg(&folded));
    let mut args = C_LEAK_FLAGS.to_vec();
    args.extend(["--flamegraph", &s, "--folded", &f]);
    let mut lt = Leaktrace::attach(fixture.pid, &args);
    c_leaks_of(&mut fixture, &mut lt, AllocatorNames::Glibc);
    // The files are rewritten after each report: the next one has them.
    lt.next_report();
    lt.signal(libc::SIGINT);
    let (status, _, _) = lt.finish();
    assert!(status.success());

    let text = std::fs::read_to_string(&folded).expect("folded file");
    let mut sum = 0;
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("STACK COUNT");
        let frames: Vec<&str> = stack.split(';').collect();
        // Root first: the program's entry, then main, down to the site.
        assert_eq!(frames[0], "_start", "{line}");
        sum += count.parse::<u64>().expect("count");
    }
    assert_eq!(sum, C_TOTAL_BYTES, "{text}");
    for &(function, bytes, ..) in C_LEAKS {
        let suffix = format!(";do_leaks;{function} {bytes}");
        assert!(
            text.lines().any(|l| l.ends_with(&suffix)),
            "{suffix}: {text}"
        );
    }

    let xml = std::fs::read_to_string(&svg).expect("svg");
    // inferno's SVG carries the SVG 1.1 DOCTYPE.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(&xml, options).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let titles: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .collect();
    for &(function, bytes, ..) in C_LEAKS {
        let grouped = bytes
            .to_string()
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(",");
        let want = format!("{function} ({grouped} bytes,");
        assert!(
            titles.iter().any(|t| t.starts_with(&want)),
            "{want}: {titles:?}"
        );
    }
}

#[test]
fn suppressions_hide_exactly_the_sites_they_name() {
    let dir = scratch_dir("suppressions");
    let rules = dir.join("leaks.supp");
    std::fs::write(
        &rules,
        "# one-time allocations we know about\nleak:leak_calloc\nleak:^leak_val*c$\n",
    )
    .expect("rules");
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let r = path_arg(&rules);
    let mut lt = Leaktrace::attach(
        fixture.pid,
        &[
            "-i",
            "1",
            "--older-than",
            "300ms",
            "--top",
            "100",
            "--suppressions",
            &r,
        ],
    );
    fixture.command("leak", "leaked");
    let hidden = ["leak_calloc", "leak_valloc"];
    let report = lt.report_where(|r| r["suppressed"]["sites"] == 2);
    for &(function, bytes, blocks, called) in C_LEAKS {
        if hidden.contains(&function) {
            assert!(
                stacks_at(&report, function).is_empty(),
                "{function}: {report}"
            );
        } else {
            let called = if called == "aligned_alloc" || called == "memalign" {
                "aligned_alloc/memalign"
            } else {
                called
            };
            assert_site(&report, function, bytes, blocks, called);
        }
    }
    let s = &report["suppressed"];
    assert_eq!(
        (&s["sites"], &s["blocks"], &s["bytes"]),
        (&2.into(), &3.into(), &5000.into()),
        "{s}"
    );
    assert_eq!(s["rules"][0]["pattern"], "leak_calloc");
    assert_eq!(
        (&s["rules"][0]["sites"], &s["rules"][0]["bytes"]),
        (&1.into(), &2000.into())
    );
    assert_eq!(s["rules"][1]["pattern"], "^leak_val*c$");
    assert_eq!(
        (&s["rules"][1]["sites"], &s["rules"][1]["bytes"]),
        (&1.into(), &3000.into())
    );
    lt.signal(libc::SIGINT);
    let _ = lt.finish();
}

/// One line on stderr, exit code 2.
fn assert_refused(args: &[&str], says: &str) {
    let (status, stdout, stderr) = run_leaktrace(args);
    assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(stderr.contains(says), "{args:?}: {stderr}");
    assert!(stdout.is_empty());
}

#[test]
fn bad_export_options_are_refused_before_attach() {
    let me = std::process::id().to_string();
    assert_refused(
        &["-p", &me, "--listen", "0.0.0.0:6060"],
        "not a loopback address",
    );
    assert_refused(
        &["-p", &me, "--listen", "localhost:notaport"],
        "--listen localhost:notaport",
    );
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    assert_refused(&["-p", &me, "--listen", &addr], "in use");
    let dir = scratch_dir("bad-suppressions");
    let rules = dir.join("bad.supp");
    std::fs::write(&rules, "leak:ok\nrace:not_ours\n").expect("rules");
    let r = path_arg(&rules);
    assert_refused(&["-p", &me, "--suppressions", &r], "bad.supp:2");
    assert_refused(
        &["-p", &me, "--pprof-dir", "/proc/self/status/x"],
        "--pprof-dir",
    );
}

/// Every long flag `--help` lists.
fn long_flags() -> Vec<String> {
    let (status, help, _) = run_leaktrace(&["--help"]);
    assert!(status.success());
    // Option lines start with the flag ("  -p, --pid <PID>", "      --folded <FILE>").
    let mut flags: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("--") && w.len() > 2)
        })
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect();
    flags.sort();
    flags.dedup();
    assert!(flags.len() > 20, "{flags:?}");
    flags
}

#[test]
fn man_page_and_completions_cover_every_flag() {
    let flags = long_flags();
    let (status, man, _) = run_leaktrace(&["--generate", "man"]);
    assert!(status.success());
    assert!(man.contains(".TH leaktrace 1"), "{man}");
    // roff escapes dashes.
    let man = man.replace("\\-", "-");
    let dir = scratch_dir("generated");
    for (kind, check) in [
        ("complete-bash", Some(("bash", "-n"))),
        ("complete-zsh", None),
        ("complete-fish", None),
    ] {
        let (status, script, _) = run_leaktrace(&["--generate", kind]);
        assert!(status.success(), "{kind}");
        for flag in &flags {
            let bare = flag.trim_start_matches('-');
            assert!(script.contains(bare), "{kind} completes {flag}");
        }
        if let Some((shell, arg)) = check {
            let file = dir.join(kind);
            std::fs::write(&file, &script).expect("script");
            let ok = Command::new(shell)
                .arg(arg)
                .arg(&file)
                .status()
                .expect(shell);
            assert!(ok.success(), "{kind} parses in {shell}");
        }
    }
    for flag in &flags {
        assert!(man.contains(flag.as_str()), "man page documents {flag}");
    }
    // Without root, without a target.
    assert!(man.contains("--pprof-dir") && man.contains("--suppressions"));
}
