//! Bad input: one clear line on stderr, exit code 2, no panic, nothing attached.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, process::Command};

use leaktrace_tests::*;

fn assert_one_line_error(args: &[&str], expect: &str) {
    let (status, stdout, stderr) = run_leaktrace(args);
    assert_eq!(
        status.code(),
        Some(2),
        "exit 2 for {args:?}; stderr: {stderr}"
    );
    assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    assert!(lines[0].starts_with("leaktrace: error: "), "{stderr}");
    assert!(
        lines[0].contains(expect),
        "{stderr} should mention {expect:?}"
    );
}

#[test]
fn unknown_pid() {
    assert!(
        !Path::new("/proc/999999").exists(),
        "test assumes PID 999999 is unused"
    );
    assert_one_line_error(&["--pid", "999999"], "no process with PID 999999");
}

#[test]
fn unknown_container() {
    // Without an engine to ask, an id is looked for in the cgroups only
    // (with one: tests/tests/docker.rs).
    let no_engine = ["--docker-socket", "/nonexistent/docker.sock"];
    assert_one_line_error(
        &[
            "--container",
            "0123456789abcdef0123",
            no_engine[0],
            no_engine[1],
        ],
        "no running process belongs to a container whose id starts with `0123456789abcdef0123`",
    );
    assert_one_line_error(
        &["--container", "web-1", no_engine[0], no_engine[1]],
        "cannot reach the container engine at /nonexistent/docker.sock",
    );
}

#[test]
fn kernel_thread() {
    // PID 2 is kthreadd on every Linux system.
    assert_one_line_error(&["--pid", "2"], "kernel thread");
}

#[test]
fn target_without_an_allocator() {
    let mut fixture = Command::new(fixtures().path("nolibc"))
        .spawn()
        .expect("start nolibc");
    let pid = fixture.id().to_string();
    assert_one_line_error(&["--pid", &pid], "no allocator found");
    let _ = fixture.kill();
    let _ = fixture.wait();
}

#[test]
fn command_that_does_not_exist() {
    assert_one_line_error(&["--", "/nonexistent/leaktrace-test-cmd"], "cannot start");
}

#[test]
fn not_root() {
    // A copy nobody can execute, whatever the permissions of the checkout.
    let dir = std::env::temp_dir().join(format!("leaktrace-nonroot-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("tmp dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("leaktrace");
    fs::copy(leaktrace_bin(), &bin).expect("copy binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod bin");
    let own_pid = std::process::id().to_string();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["--pid", &own_pid])
        .output()
        .expect("run setpriv");
    let _ = fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("leaktrace: error: leaktrace needs root"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let (status, _, stderr) = run_leaktrace(&["--pid", "1", "--older-than", "soon"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a duration"), "{stderr}");
    let (status, _, _) = run_leaktrace(&[]);
    assert_eq!(status.code(), Some(2));
    // A rate of 0 would turn profiling off; a rate alone writes nothing.
    let (status, _, stderr) =
        run_leaktrace(&["--pid", "1", "--go-memprofile", "--go-memprofile-rate", "0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("0 is not in 1.."), "{stderr}");
    let (status, _, stderr) = run_leaktrace(&["--pid", "1", "--go-memprofile-rate", "1"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--go-memprofile"), "{stderr}");
}

#[test]
fn help_explains_every_flag() {
    let (status, stdout, _) = run_leaktrace(&["--help"]);
    assert!(status.success());
    for flag in [
        "--pid",
        "--interval",
        "--count",
        "--older-than",
        "--top",
        "--format",
        "--color",
        "--max-allocs",
        "--max-sites",
        "--max-stacks",
        "--max-threads",
        "--max-tasks",
        "--max-goroutines",
        "--container",
    ] {
        assert!(stdout.contains(flag), "--help mentions {flag}");
    }
    assert!(
        !stdout.contains("--probe-mode"),
        "benchmark-only flag stays hidden"
    );
}
