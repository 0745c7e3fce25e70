//! Leaving nothing behind: after leaktrace exits, no program of ours is in
//! the kernel and the target's code is byte for byte what is on disk.

use std::{fs, os::unix::fs::FileExt};

use leaktrace_tests::*;

/// The target's executable mapping of its C library: (start, bytes as
/// mapped now, bytes of the file at that offset).
fn libc_text(pid: u32) -> (u64, Vec<u8>, Vec<u8>) {
    mapped_text(pid, "/libc.so")
}

/// The same for the executable mapping whose path contains `name`.
fn mapped_text(pid: u32, name: &str) -> (u64, Vec<u8>, Vec<u8>) {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let line = maps
        .lines()
        .find(|l| l.contains(" r-xp ") && l.contains(name))
        .unwrap_or_else(|| panic!("text mapping of {name}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let (start, end) = f[0].split_once('-').expect("range");
    let start = u64::from_str_radix(start, 16).expect("hex");
    let end = u64::from_str_radix(end, 16).expect("hex");
    let offset = u64::from_str_radix(f[2], 16).expect("hex");
    let len = (end - start) as usize;
    let mut mem = vec![0u8; len];
    fs::File::open(format!("/proc/{pid}/mem"))
        .expect("mem")
        .read_exact_at(&mut mem, start)
        .expect("read mem");
    let mut file = vec![0u8; len];
    let n = fs::File::open(f[5])
        .expect("libc file")
        .read_at(&mut file, offset)
        .expect("read libc");
    file.truncate(n);
    mem.truncate(n);
    (start, mem, file)
}

#[test]
fn sigint_prints_a_final_report_and_removes_every_probe() {
    let _guard = exclusive();
    assert!(
        wait_until_no_leaktrace_programs().is_empty(),
        "programs left over from before this test"
    );
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let (_, before_mem, before_file) = libc_text(fixture.pid);
    assert!(
        before_mem == before_file,
        "libc text matches the file before tracing"
    );

    let lt = Leaktrace::attach(fixture.pid, &["-i", "60", "--older-than", "0"]);
    // While attached, breakpoints sit in the target's libc text and our
    // programs are loaded: the checks below can fail.
    let (_, during_mem, during_file) = libc_text(fixture.pid);
    assert!(
        during_mem != during_file,
        "uprobes are visible in the target's text while attached"
    );
    assert!(!loaded_leaktrace_programs().is_empty());

    // Recorded by the time the fixture says so: the probes run in its
    // calls.
    fixture.command("leak", "leaked");
    lt.signal(libc::SIGINT);
    let (status, reports, stderr) = lt.finish();
    assert!(status.success(), "exit 0 on SIGINT: {status:?} {stderr:?}");
    assert_eq!(reports.len(), 1, "exactly the final report");
    assert_eq!(reports[0]["final"], true);
    assert_eq!(reports[0]["target_exited"], false);
    assert_site(&reports[0], "leak_calloc", 2000, 2, "calloc");

    assert!(
        wait_until_no_leaktrace_programs().is_empty(),
        "no leaktrace program remains loaded"
    );
    let (_, after_mem, after_file) = libc_text(fixture.pid);
    assert!(
        after_mem == after_file,
        "every breakpoint removed from the target"
    );
    assert!(fixture.is_alive(), "the target keeps running");
    // And it still works: it can allocate and free after we left.
    fixture.command("leak", "leaked");
}

#[test]
fn sigterm_and_count_also_detach() {
    let _guard = exclusive();
    let mut fixture = Fixture::start("heap_c", &["wait"]);
    let lt = Leaktrace::attach(fixture.pid, &["-i", "60"]);
    lt.signal(libc::SIGTERM);
    let (status, reports, _) = lt.finish();
    assert!(status.success());
    assert_eq!(reports.len(), 1);
    assert!(wait_until_no_leaktrace_programs().is_empty());

    let lt = Leaktrace::attach(fixture.pid, &["-i", "0.2", "-n", "2"]);
    let (status, reports, _) = lt.finish();
    assert!(status.success());
    assert_eq!(reports.len(), 2);
    assert!(wait_until_no_leaktrace_programs().is_empty());
    let (_, mem, file) = libc_text(fixture.pid);
    assert!(mem == file);
    assert!(fixture.is_alive());
}

#[test]
fn a_target_under_seccomp_is_never_killed() {
    let _guard = exclusive();
    let mut fixture = Fixture::start("seccomp_c", &[]);
    let (status, _, stderr) = run_leaktrace(&[
        "--pid",
        &fixture.pid.to_string(),
        "-i",
        "0.5",
        "-n",
        "1",
        "--format",
        "json",
    ]);
    if status.code() == Some(2) {
        // A kernel where return probes would kill it: refused, untouched.
        assert!(stderr.contains("return probes would kill"), "{stderr}");
        assert!(fixture.is_alive());
        return;
    }
    assert!(status.success(), "{stderr}");
    // This kernel lets the uretprobe syscall through seccomp: trace for real.
    let mut lt = Leaktrace::attach(fixture.pid, &["-i", "0.5", "--older-than", "0"]);
    fixture.command("leak", "leaked");
    let report = lt.report_where(|r| !stacks_at(r, "leak_under_seccomp").is_empty());
    assert_site(&report, "leak_under_seccomp", 4242, 1, "malloc");
    assert!(fixture.is_alive(), "the target survived its probed returns");
}

#[test]
fn go_target_is_left_untouched() {
    let _guard = exclusive();
    let bin = go_fixture(newest_go(), GoBuild::Static);
    let name = bin
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let service = GoService::start(&bin, &[]);
    let (_, before_mem, before_file) = mapped_text(service.pid(), &name);
    assert!(
        before_mem == before_file,
        "Go text matches the file before tracing"
    );

    let lt = Leaktrace::attach(service.pid(), &["-i", "60"]);
    let (_, during_mem, during_file) = mapped_text(service.pid(), &name);
    assert!(
        during_mem != during_file,
        "goroutine probes are visible in the Go text while attached"
    );
    assert_eq!(http_get(service.port, "/leak").trim(), "leaked");
    lt.signal(libc::SIGINT);
    let (status, reports, _) = lt.finish();
    assert!(status.success());
    assert_eq!(reports.len(), 1, "exactly the final report");
    assert!(
        wait_until_no_leaktrace_programs().is_empty(),
        "no leaktrace program remains loaded"
    );
    let (_, after_mem, after_file) = mapped_text(service.pid(), &name);
    assert!(
        after_mem == after_file,
        "every breakpoint removed from the Go text"
    );
    assert_eq!(http_get(service.port, "/ok").trim(), "ok");
}
