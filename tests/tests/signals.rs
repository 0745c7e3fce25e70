//! Ctrl-C and SIGTERM at every moment of a run, the target under load:
//! while the kernel verifies the programs, while unwind tables are built,
//! while probes are attached, and between reports. Each time leaktrace
//! exits promptly (before tracing: one line saying so, exit code 128 +
//! the signal; while tracing: a final report, exit 0), nothing of ours is
//! left in the kernel and the target's code is what is on disk.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::FileExt,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use leaktrace_tests::*;

/// Whether the target's libc text in memory equals the file.
fn libc_untouched(pid: u32) -> bool {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let line = maps
        .lines()
        .find(|l| l.contains(" r-xp ") && l.contains("/libc.so"))
        .expect("libc text mapping");
    let f: Vec<&str> = line.split_whitespace().collect();
    let (start, end) = f[0].split_once('-').expect("range");
    let start = u64::from_str_radix(start, 16).expect("hex");
    let len = (u64::from_str_radix(end, 16).expect("hex") - start) as usize;
    let offset = u64::from_str_radix(f[2], 16).expect("hex");
    let mut mem = vec![0u8; len];
    fs::File::open(format!("/proc/{pid}/mem"))
        .expect("mem")
        .read_exact_at(&mut mem, start)
        .expect("read mem");
    let mut file = vec![0u8; len];
    let n = fs::File::open(f[5])
        .expect("libc")
        .read_at(&mut file, offset)
        .expect("read libc");
    mem[..n] == file[..n]
}

/// Runs leaktrace on a busy target, sends `sig` once stderr shows the line
/// starting with `when`; returns the exit code, stdout and stderr lines.
fn signal_when(
    when: &str,
    hold_at: Option<&str>,
    sig: i32,
) -> (Option<i32>, Vec<String>, Vec<String>) {
    let mut fixture = Fixture::start("heap_c", &["busy"]);
    let mut cmd = Command::new(leaktrace_bin());
    if let Some(moment) = hold_at {
        cmd.env("LEAKTRACE_TEST_HOLD_AT", moment);
    }
    let mut child = cmd
        .args([
            "--format",
            "json",
            "-i",
            "0.3",
            "--pid",
            &fixture.pid.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leaktrace");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stdout = child.stdout.take().expect("piped");
    let out = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut err = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("never saw {when:?}: {err:?}"));
        let hit = line.starts_with(when);
        err.push(line);
        if hit {
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    // A hang is the failure looked for here (a lost signal used to leave
    // leaktrace tracing); how fast it exits is measured by the bench.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "leaktrace ignored the signal: {err:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    err.extend(rx.try_iter());
    let out = out.join().expect("stdout reader");
    assert!(
        wait_until_no_leaktrace_programs().is_empty(),
        "programs left in the kernel: {err:?}"
    );
    assert!(libc_untouched(fixture.pid), "every breakpoint removed");
    assert!(fixture.is_alive(), "the target keeps running");
    (status.code(), out, err)
}

#[test]
fn sigint_while_the_programs_are_verified() {
    let _guard = exclusive();
    let (code, out, err) = signal_when("leaktrace: test: at load", Some("load"), libc::SIGINT);
    assert_eq!(code, Some(130), "{err:?}");
    assert!(out.is_empty());
    assert_eq!(
        err.last().map(String::as_str),
        Some("leaktrace: interrupted by SIGINT before tracing began; nothing was attached"),
        "{err:?}"
    );
}

#[test]
fn sigterm_while_unwind_tables_are_built() {
    let _guard = exclusive();
    let (code, out, err) = signal_when("leaktrace: test: at unwind", Some("unwind"), libc::SIGTERM);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{err:?}");
    assert!(out.is_empty());
    assert_eq!(
        err.last().map(String::as_str),
        Some("leaktrace: interrupted by SIGTERM before tracing began; nothing was attached"),
        "{err:?}"
    );
}

#[test]
fn sigint_while_probes_are_attached() {
    let _guard = exclusive();
    let (code, out, err) = signal_when("leaktrace: test: at attach", Some("attach"), libc::SIGINT);
    assert_eq!(code, Some(130), "{err:?}");
    assert!(out.is_empty(), "no report before tracing: {out:?}");
    assert_eq!(
        err.last().map(String::as_str),
        Some("leaktrace: interrupted by SIGINT while attaching; every probe attached so far was removed"),
        "{err:?}"
    );
}

#[test]
fn sigint_while_tracing_gives_a_final_report() {
    let _guard = exclusive();
    // Once tracing: the signal falls between reports.
    let (code, out, err) = signal_when("leaktrace: tracing pid", None, libc::SIGINT);
    assert_eq!(code, Some(0), "{err:?}");
    let last: serde_json::Value =
        serde_json::from_str(out.last().expect("a final report")).expect("JSON");
    assert_eq!(last["final"], true, "{last}");
    assert!(
        err.iter().any(|l| l == "leaktrace: all probes removed"),
        "{err:?}"
    );
}

/// A shell starts background jobs with SIGINT ignored (`leaktrace … &` in
/// a script); leaktrace must still hear it, also before it traces.
#[test]
fn sigint_is_heard_when_the_shell_ignored_it() {
    let _guard = exclusive();
    let fixture = Fixture::start("heap_c", &["busy"]);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' INT; exec {} --pid {} -i 60 --format json",
            leaktrace_bin().display(),
            fixture.pid
        ))
        .env("LEAKTRACE_TEST_HOLD_AT", "unwind")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    assert!(
        lines.by_ref().any(|l| l == "leaktrace: test: at unwind"),
        "leaktrace reached the unwind tables"
    );
    // SAFETY: signalling our own child (sh exec'd leaktrace).
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGINT ignored");
        thread::sleep(Duration::from_millis(20));
    };
    let rest: Vec<String> = lines.collect();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert_eq!(
        rest.last().map(String::as_str),
        Some("leaktrace: interrupted by SIGINT before tracing began; nothing was attached")
    );
    assert!(wait_until_no_leaktrace_programs().is_empty());
    assert!(libc_untouched(fixture.pid));
}
