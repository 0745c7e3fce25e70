//! Helpers for leaktrace's end-to-end tests: build the fixtures (once per
//! run, shared by every test binary), start them, run the real `leaktrace`
//! binary against them and read its JSON reports.
//!
//! These tests load real eBPF programs into the running kernel: they need
//! root, which `cargo xtask test` and CI provide.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Mutex, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// The leaktrace binary under test (built by `cargo xtask test`).
pub fn leaktrace_bin() -> PathBuf {
    let bin = std::env::var_os("LEAKTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/leaktrace"));
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// Compiled fixture programs.
pub struct Fixtures {
    pub dir: PathBuf,
}

impl Fixtures {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct FixtureSpec {
    name: &'static str,
    source: &'static str,
    compile: fn(&Path, &Path) -> Command,
}

fn c(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("cc");
    cmd.args([
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-Wall",
        "-Wno-deprecated-declarations",
        "-o",
    ])
    .arg(out)
    .arg(src);
    cmd
}

fn c_threads(src: &Path, out: &Path) -> Command {
    let mut cmd = c(src, out);
    cmd.arg("-pthread");
    cmd
}

fn cpp(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("g++");
    cmd.args(["-O1", "-g", "-fno-omit-frame-pointer", "-Wall", "-o"])
        .arg(out)
        .arg(src);
    cmd
}

fn rust(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("rustc");
    cmd.args([
        "--edition",
        "2021",
        "-C",
        "opt-level=1",
        "-C",
        "force-frame-pointers=yes",
        "-g",
        "-o",
    ])
    .arg(out)
    .arg(src);
    cmd
}

fn nolibc(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("cc");
    cmd.args(["-nostdlib", "-static", "-O2", "-o"])
        .arg(out)
        .arg(src);
    cmd
}

const FIXTURES: &[FixtureSpec] = &[
    FixtureSpec {
        name: "heap_c",
        source: "heap_c.c",
        compile: c,
    },
    FixtureSpec {
        name: "heap_cpp",
        source: "heap_cpp.cpp",
        compile: cpp,
    },
    FixtureSpec {
        name: "threads_leak",
        source: "threads_leak.c",
        compile: c_threads,
    },
    FixtureSpec {
        name: "threads_c",
        source: "threads_c.c",
        compile: c_threads,
    },
    FixtureSpec {
        name: "heap_rust",
        source: "heap_rust.rs",
        compile: rust,
    },
    FixtureSpec {
        name: "nolibc",
        source: "nolibc.c",
        compile: nolibc,
    },
];

/// Builds every fixture into target/fixtures once per run: a file lock
/// serialises test binaries, and up-to-date outputs are reused.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let root = workspace_root();
        let dir = root.join("target/fixtures");
        fs::create_dir_all(&dir).expect("create target/fixtures");
        let lock = fs::File::create(dir.join(".lock")).expect("lock file");
        // SAFETY: flock on a file descriptor we own; released when `lock` closes.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        for spec in FIXTURES {
            let src = root.join("tests/fixtures").join(spec.source);
            let out = dir.join(spec.name);
            let fresh = match (fs::metadata(&src), fs::metadata(&out)) {
                (Ok(s), Ok(o)) => o.modified().ok() >= s.modified().ok(),
                _ => false,
            };
            if fresh {
                continue;
            }
            let status = (spec.compile)(&src, &out)
                .status()
                .expect("run the compiler");
            assert!(status.success(), "building fixture {} failed", spec.name);
        }
        drop(lock);
        Fixtures { dir }
    })
}

fn line_reader(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A fixture process speaking the "ready / leak / leaked" stdin protocol.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    pub pid: u32,
}

impl Fixture {
    /// Starts `name` with `args` and waits for its "ready" line.
    pub fn start(name: &str, args: &[&str]) -> Fixture {
        let mut child = Command::new(fixtures().path(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start fixture {name}: {e}"));
        let stdout = line_reader(child.stdout.take().expect("piped stdout"));
        let pid = child.id();
        let mut f = Fixture {
            stdin: child.stdin.take(),
            child,
            stdout,
            pid,
        };
        f.expect_line("ready");
        f
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to fixture");
        stdin.flush().expect("flush fixture stdin");
    }

    pub fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("fixture {} never printed {prefix:?}: {e}", self.pid),
            }
        }
    }

    /// Sends `cmd` and waits for the acknowledgement line `ack`.
    pub fn command(&mut self, cmd: &str, ack: &str) {
        self.send(cmd);
        self.expect_line(ack);
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait fixture")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `leaktrace` with its stdout parsed as JSON lines.
pub struct Leaktrace {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Leaktrace {
    /// Starts leaktrace with `args` (JSON output is added) and, unless it
    /// fails early, waits until its probes are attached.
    pub fn start(args: &[&str]) -> Leaktrace {
        let mut child = Command::new(leaktrace_bin())
            .args(["--format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start leaktrace");
        let stdout = line_reader(child.stdout.take().expect("piped"));
        let stderr = line_reader(child.stderr.take().expect("piped"));
        let mut lt = Leaktrace {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        };
        lt.wait_stderr("leaktrace: tracing pid");
        lt
    }

    /// Attaches to `pid`.
    pub fn attach(pid: u32, extra: &[&str]) -> Leaktrace {
        let pid = pid.to_string();
        let mut args = vec!["--pid", pid.as_str()];
        args.extend_from_slice(extra);
        Leaktrace::start(&args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_stderr(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "leaktrace never printed {prefix:?}; stderr so far: {:?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// The next JSON report.
    pub fn next_report(&mut self) -> Value {
        match self.stdout.recv_timeout(REPORT_TIMEOUT) {
            Ok(line) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            }
            Err(RecvTimeoutError::Timeout) => panic!("no report within {REPORT_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "leaktrace stopped reporting; stderr: {:?}",
                    self.drain_stderr()
                )
            }
        }
    }

    /// Reports until one satisfies `pred` (or the timeout passes).
    pub fn report_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + REPORT_TIMEOUT;
        loop {
            let r = self.next_report();
            if pred(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "no matching report; last: {r}");
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn drain_stderr(&mut self) -> Vec<String> {
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(l);
        }
        self.stderr_seen.clone()
    }

    /// Waits for exit; returns the status, the remaining reports and stderr.
    pub fn finish(mut self) -> (ExitStatus, Vec<Value>, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait leaktrace") {
                break s;
            }
            assert!(Instant::now() < deadline, "leaktrace did not exit");
            thread::sleep(Duration::from_millis(50));
        };
        let mut reports = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(2)) {
            reports.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            );
        }
        let stderr = self.drain_stderr();
        (status, reports, stderr)
    }
}

impl Drop for Leaktrace {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs leaktrace to completion with `args`, no JSON flag added.
pub fn run_leaktrace(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(leaktrace_bin())
        .args(args)
        .output()
        .expect("run leaktrace");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Name of a frame's function without C++ parameter lists or Rust paths'
/// leading crate, for comparisons: `leak_new_array()` → `leak_new_array`.
pub fn bare(symbol: &str) -> &str {
    symbol.split('(').next().unwrap_or(symbol)
}

/// The stacks whose first frame (the allocator's caller) is `function`.
pub fn stacks_at<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .expect("stacks array")
        .iter()
        .filter(|s| s["frames"][0]["symbol"].as_str().map(bare) == Some(function))
        .collect()
}

/// The stacks with `function` anywhere in their frames.
pub fn stacks_through<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .expect("stacks array")
        .iter()
        .filter(|s| {
            s["frames"].as_array().is_some_and(|fs| {
                fs.iter()
                    .any(|f| f["symbol"].as_str().map(bare) == Some(function))
            })
        })
        .collect()
}

/// Asserts exactly one stack starts at `function`, with these totals.
pub fn assert_site(report: &Value, function: &str, bytes: u64, blocks: u64, allocator: &str) {
    let stacks = stacks_at(report, function);
    assert_eq!(
        stacks.len(),
        1,
        "expected one stack at {function}, got {}: {report}",
        stacks.len()
    );
    let s = stacks[0];
    assert_eq!(s["bytes"], bytes, "bytes at {function}: {s}");
    assert_eq!(s["blocks"], blocks, "blocks at {function}: {s}");
    assert_eq!(s["allocator"], allocator, "allocator at {function}: {s}");
}

/// Sum of bytes and blocks over stacks passing through `function`.
pub fn totals_through(report: &Value, function: &str) -> (u64, u64) {
    stacks_through(report, function)
        .iter()
        .fold((0, 0), |(b, n), s| {
            (
                b + s["bytes"].as_u64().unwrap_or(0),
                n + s["blocks"].as_u64().unwrap_or(0),
            )
        })
}

/// Names of leaktrace's eBPF programs currently loaded in the kernel
/// (programs and maps are listed by `bpftool`, names truncated to 15 chars).
pub fn loaded_leaktrace_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    const OURS: &[&str] = &[
        "alloc_entry_siz",
        "alloc_entry_cal",
        "alloc_entry_rea",
        "alloc_entry_pos",
        "alloc_return",
        "free_entry",
        "empty_entry",
        "spawn_entry",
        "task_fork",
        "task_exit",
        "empty_return",
    ];
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str())
                .filter(|n| OURS.iter().any(|o| n.starts_with(o)))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Tests that count kernel-wide state (loaded programs) must not overlap
/// with other leaktrace runs of the same test binary.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}
