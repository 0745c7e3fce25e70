//! Helpers for leaktrace's end-to-end tests: build the fixtures (once per
//! run, shared by every test binary), start them, run the real `leaktrace`
//! binary against them and read its JSON reports.
//!
//! These tests load real eBPF programs into the running kernel: they need
//! root, which `cargo xtask test` and CI provide.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
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

mod go_versions;
pub use go_versions::GO_VERSIONS;

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

/// tests/fixtures/rust_heap, a Cargo project with its own locked
/// dependencies, on the allocator `feature` selects (none: the system's):
/// built with frame pointers into a target directory of its own, then
/// copied to `out`.
fn rust_heap(src: &Path, out: &Path, feature: &str) -> Command {
    let project = src
        .parent()
        .and_then(Path::parent)
        .expect("fixture at rust_heap/src/main.rs");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            r#""${CARGO:-cargo}" build --quiet --release --locked --manifest-path "$1/Cargo.toml" --target-dir "$2" --features "$3" && cp "$2/release/rust_heap" "$4""#,
        )
        .arg("sh")
        .arg(project)
        .arg(out.with_file_name("rust_heap.build"))
        .arg(feature)
        .arg(out)
        .env("RUSTFLAGS", "-C force-frame-pointers=yes");
    cmd
}

fn rust_system(src: &Path, out: &Path) -> Command {
    rust_heap(src, out, "")
}

fn rust_jemalloc(src: &Path, out: &Path) -> Command {
    rust_heap(src, out, "jemalloc")
}

fn rust_mimalloc(src: &Path, out: &Path) -> Command {
    rust_heap(src, out, "mimalloc")
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
        name: "rust_jemalloc",
        source: "rust_heap/src/main.rs",
        compile: rust_jemalloc,
    },
    FixtureSpec {
        name: "rust_mimalloc",
        source: "rust_heap/src/main.rs",
        compile: rust_mimalloc,
    },
    FixtureSpec {
        name: "jemalloc_api",
        source: "jemalloc_api.c",
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
        name: "seccomp_c",
        source: "seccomp_c.c",
        compile: c,
    },
    FixtureSpec {
        name: "threads_c",
        source: "threads_c.c",
        compile: c_threads,
    },
    FixtureSpec {
        name: "heap_rust",
        source: "rust_heap/src/main.rs",
        compile: rust_system,
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
    /// The fixture's PID as seen from here (the host, for a container).
    pub pid: u32,
    container: Option<TestContainer>,
}

/// A container built the way engines build them: its own mount and PID
/// namespaces, a root filesystem of its own (the fixture, a copy of the C
/// library at a path the host does not use, the loader), and a cgroup
/// named like Docker's.
pub struct TestContainer {
    pub id: String,
    root: PathBuf,
    cgroup: Option<PathBuf>,
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroup {
            // The cgroup can go once its processes have exited.
            for _ in 0..50 {
                if fs::remove_dir(cg).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Moves `binary`'s symbols and DWARF into a debug file at
/// `root`/usr/lib/debug/.build-id/xx/yyyy.debug (binutils, as dh_strip does).
fn split_debug_info(binary: &Path, root: &Path) {
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run binutils");
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let notes = run(Command::new("readelf").arg("-n").arg(binary));
    let id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("fixture has a build id")
        .trim()
        .to_string();
    let dir = root.join("usr/lib/debug/.build-id").join(&id[..2]);
    fs::create_dir_all(&dir).expect("debug dir");
    let debug = dir.join(format!("{}.debug", &id[2..]));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(binary)
        .arg(&debug));
    run(Command::new("strip").arg("--strip-all").arg(binary));
    run(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(binary));
}

/// The first child of process `outer` (unshare and nsenter fork the
/// process that enters the new PID namespace).
fn first_child(outer: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap_or_default();
        if let Some(p) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return p;
        }
        assert!(Instant::now() < deadline, "process {outer} never forked");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Where cgroup v2 is mounted, if anywhere.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

fn container_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos
        ^ ((std::process::id() as u64) << 32)
        ^ SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // splitmix64: random-looking ids like an engine's, so that their
    // 12-digit prefixes differ as `docker ps` ones do.
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..4).map(|_| format!("{:016x}", next())).collect()
}

impl Fixture {
    /// Starts `name` with `args` and waits for its "ready" line.
    pub fn start(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_with_env(name, args, &[])
    }

    /// As [`Fixture::start`], with extra environment variables.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Fixture {
        let child = Command::new(fixtures().path(name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start fixture {name}: {e}"));
        let pid = child.id();
        Fixture::ready(child, pid, None)
    }

    /// Wraps a started fixture process (`pid`: the fixture itself, which
    /// may be a child of `child`) once it has printed "ready".
    fn ready(mut child: Child, pid: u32, container: Option<TestContainer>) -> Fixture {
        let stdout = line_reader(child.stdout.take().expect("piped stdout"));
        let mut f = Fixture {
            stdin: child.stdin.take(),
            child,
            stdout,
            pid,
            container,
        };
        f.expect_line("ready");
        f
    }

    /// Starts `name` inside a new [`TestContainer`]; `pid` is its host PID.
    pub fn in_container(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_in_container(name, args, false)
    }

    /// As [`Fixture::in_container`], with the fixture's debug info split
    /// off the way distributions ship it: the binary stripped of symbols
    /// and DWARF, the debug file only inside the container, under
    /// /usr/lib/debug/.build-id/.
    pub fn in_container_split_debug(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_in_container(name, args, true)
    }

    fn start_in_container(name: &str, args: &[&str], split_debug: bool) -> Fixture {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = workspace_root().join(format!(
            "target/containers/{name}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&root);
        for dir in ["lib64", "lib", "app"] {
            fs::create_dir_all(root.join(dir)).expect("container dirs");
        }
        // Copies: other inodes than the host's, and libc at a path the host
        // does not have.
        fs::copy(
            "/lib64/ld-linux-x86-64.so.2",
            root.join("lib64/ld-linux-x86-64.so.2"),
        )
        .expect("copy loader");
        fs::copy(
            "/lib/x86_64-linux-gnu/libc.so.6",
            root.join("lib/libc.so.6"),
        )
        .expect("copy libc");
        let app = root.join("app").join(name);
        fs::copy(fixtures().path(name), &app).expect("copy fixture");
        if split_debug {
            split_debug_info(&app, &root);
        }

        let id = container_id();
        let child = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child"])
            .arg(format!("--root={}", root.display()))
            .arg(format!("/app/{name}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start unshare");
        let pid = first_child(child.id());
        let cgroup = cgroup2_root().and_then(|cg2| {
            let dir = cg2
                .join("leaktrace-tests")
                .join(format!("docker-{id}.scope"));
            fs::create_dir_all(&dir).ok()?;
            fs::write(dir.join("cgroup.procs"), pid.to_string()).ok()?;
            Some(dir)
        });
        Fixture::ready(child, pid, Some(TestContainer { id, root, cgroup }))
    }

    /// Starts another `name` process (its binary must be in the container:
    /// the fixture it was created with) inside this fixture's container, the
    /// way `docker exec` does: entering its mount and PID namespaces and
    /// root, and joining its cgroup.
    pub fn exec_in_container(&self, name: &str, args: &[&str]) -> Fixture {
        let container = self.container.as_ref().expect("a container fixture");
        let child = Command::new("nsenter")
            .args(["--target", &self.pid.to_string()])
            .args(["--mount", "--pid", "--root", "--wd"])
            .arg(format!("/app/{name}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start nsenter");
        // nsenter forks to enter the PID namespace: the fixture is its child.
        let pid = first_child(child.id());
        if let Some(cg) = &container.cgroup {
            fs::write(cg.join("cgroup.procs"), pid.to_string()).expect("join the container cgroup");
        }
        Fixture::ready(child, pid, None)
    }

    /// The container this fixture runs in, if any.
    pub fn container(&self) -> Option<&TestContainer> {
        self.container.as_ref()
    }

    /// Whether the container got a runtime-style cgroup.
    pub fn container_cgroup(&self) -> bool {
        self.container.as_ref().is_some_and(|c| c.cgroup.is_some())
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

    /// The "tracing pid …" line printed on attach (what is probed).
    pub fn banner(&self) -> &str {
        self.stderr_seen
            .iter()
            .find(|l| l.starts_with("leaktrace: tracing pid"))
            .map_or("", String::as_str)
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

/// Waits (up to 5 s: the kernel frees programs after an RCU grace period)
/// until no leaktrace program is loaded; returns what is still loaded.
pub fn wait_until_no_leaktrace_programs() -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = loaded_leaktrace_programs();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Tests that count kernel-wide state (loaded programs) must not overlap
/// with other leaktrace runs of the same test binary.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

// What the C fixture (tests/fixtures/heap_c.c) leaks, for every test that runs it.

/// Sites every C run must report exactly: (caller, bytes, blocks, allocator).
/// (function, bytes, blocks, allocator function it calls)
pub const C_LEAKS: &[(&str, u64, u64, &str)] = &[
    ("leak_malloc", 3000, 3, "malloc"),
    ("leak_calloc", 2000, 2, "calloc"),
    ("leak_realloc", 5000, 1, "realloc"),
    ("leak_realloc_null", 700, 1, "realloc"),
    ("leak_reallocarray", 600, 1, "reallocarray"),
    ("leak_posix_memalign", 4096, 2, "posix_memalign"),
    ("leak_aligned_alloc", 1024, 1, "aligned_alloc"),
    ("leak_memalign", 1536, 1, "memalign"),
    ("leak_valloc", 3000, 1, "valloc"),
    ("leak_pvalloc", 100, 1, "pvalloc"),
    ("leak_after_failed_realloc", 400, 1, "malloc"),
];
pub const C_TOTAL_BYTES: u64 = 21456;
pub const C_TOTAL_BLOCKS: u64 = 15;

/// Functions that free what they allocate (or whose allocations fail).
pub const C_NOT_LEAKS: &[&str] = &[
    "freed_malloc",
    "freed_calloc",
    "freed_realloc",
    "freed_realloc_zero",
    "freed_reallocarray",
    "freed_posix_memalign",
    "freed_aligned_alloc",
    "failed_allocations",
    "short_lived",
];

/// How a site's allocator names are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocatorNames {
    /// Exactly as glibc's aliases make them (it exports aligned_alloc and
    /// memalign at one address, so a call to either shows both names).
    Glibc,
    /// The function called is among the names (other allocators alias
    /// other functions).
    Including,
}

fn glibc_names(called: &str) -> &str {
    match called {
        "aligned_alloc" | "memalign" => "aligned_alloc/memalign",
        other => other,
    }
}

pub fn assert_c_leaks(report: &Value, names: AllocatorNames) {
    for &(function, bytes, blocks, called) in C_LEAKS {
        match names {
            AllocatorNames::Glibc => {
                assert_site(report, function, bytes, blocks, glibc_names(called));
            }
            AllocatorNames::Including => {
                let stacks = stacks_at(report, function);
                assert_eq!(stacks.len(), 1, "one stack at {function}: {report}");
                let s = stacks[0];
                assert_eq!(
                    (&s["bytes"], &s["blocks"]),
                    (&bytes.into(), &blocks.into()),
                    "{s}"
                );
                let allocator = s["allocator"].as_str().unwrap_or("");
                assert!(
                    allocator.split('/').any(|n| n == called),
                    "{function} calls {called}: {s}"
                );
            }
        }
    }
    for &function in C_NOT_LEAKS {
        assert!(
            stacks_through(report, function).is_empty(),
            "{function} must not appear: {report}"
        );
    }
    // leak_realloc's malloc(50) was released by its realloc: one stack only.
    assert_eq!(stacks_at(report, "leak_realloc").len(), 1);
}

pub fn assert_nothing_dropped(report: &Value) {
    for (k, v) in report["dropped"].as_object().expect("dropped object") {
        assert_eq!(v, 0, "dropped.{k} should be 0: {report}");
    }
}

/// The C scenario shared by host and container tests: attach to a running
/// `heap_c wait`, make it leak, and return the first report holding every
/// leaked block, after checking it against the fixture's exact leaks.
pub fn trace_c_leaks(fixture: &mut Fixture) -> (Leaktrace, Value) {
    let mut lt = Leaktrace::attach(fixture.pid, C_LEAK_FLAGS);
    let report = c_leaks_of(fixture, &mut lt, AllocatorNames::Glibc);
    (lt, report)
}

/// Flags for tracing the C fixture's leaks.
pub const C_LEAK_FLAGS: &[&str] = &["-i", "1", "--older-than", "300ms", "--top", "100"];

/// Makes the C fixture leak and checks the first report on it (by PID:
/// leaktrace may trace other processes too) that shows every leak.
pub fn c_leaks_of(fixture: &mut Fixture, lt: &mut Leaktrace, names: AllocatorNames) -> Value {
    fixture.command("leak", "leaked");
    let pid = fixture.pid;
    let report =
        lt.report_where(|r| r["pid"] == pid && r["old_blocks"].as_u64() >= Some(C_TOTAL_BLOCKS));
    assert_c_leaks(&report, names);
    // Nothing else survives: no leak missed, nothing extra.
    assert_eq!(report["old_bytes"], C_TOTAL_BYTES, "{report}");
    assert_eq!(report["old_blocks"], C_TOTAL_BLOCKS, "{report}");
    assert_eq!(report["live_bytes"], C_TOTAL_BYTES);
    assert_nothing_dropped(&report);
    report
}

// Go fixtures: tests/fixtures/goroutines.go (and go_cgo.go for cgo) built
// with each toolchain `cargo xtask setup` installs under target/go.

/// The newest Go in `GO_VERSIONS` (the list is oldest first).
pub fn newest_go() -> &'static str {
    GO_VERSIONS
        .last()
        .copied()
        .expect("GO_VERSIONS is not empty")
}

/// How a Go fixture is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GoBuild {
    /// `CGO_ENABLED=0`: static, with symbols and DWARF.
    Static,
    /// `CGO_ENABLED=0 -ldflags="-s -w"`: no symbol table, no DWARF.
    Stripped,
    /// `CGO_ENABLED=0 -buildmode=pie`: position-independent executable.
    Pie,
    /// `CGO_ENABLED=1`, tests/fixtures/go_cgo.go: Go and C in one process,
    /// dynamically linked, C allocations through libc's malloc.
    Cgo,
}

impl GoBuild {
    pub const ALL: [GoBuild; 4] = [
        GoBuild::Static,
        GoBuild::Stripped,
        GoBuild::Pie,
        GoBuild::Cgo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GoBuild::Static => "static",
            GoBuild::Stripped => "stripped",
            GoBuild::Pie => "pie",
            GoBuild::Cgo => "cgo",
        }
    }

    fn source(self) -> &'static str {
        match self {
            GoBuild::Cgo => "go_cgo.go",
            _ => "goroutines.go",
        }
    }

    fn cgo_enabled(self) -> &'static str {
        match self {
            GoBuild::Cgo => "1",
            _ => "0",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            GoBuild::Stripped => &["-ldflags=-s -w"],
            GoBuild::Pie => &["-buildmode=pie"],
            GoBuild::Static | GoBuild::Cgo => &[],
        }
    }
}

/// What go_cgo.go's `/cleak` leaks per request: one block of this size,
/// allocated by `malloc` called from this C function.
pub const CGO_LEAK_SITE: &str = "cgo_leak_block";
pub const CGO_LEAK_BYTES: u64 = 4096;
/// The C function behind `/cok`: it frees the 4096 bytes it allocates.
pub const CGO_FREED_SITE: &str = "cgo_freed_block";

/// GOROOT of Go `version` as installed by `cargo xtask setup`.
pub fn go_root(version: &str) -> PathBuf {
    workspace_root().join("target/go").join(version).join("go")
}

/// The `go` command of `version`, set up to need nothing outside target/go:
/// no HOME (CI may have none), no network, no other toolchain.
pub fn go_command(version: &str) -> Command {
    let goroot = go_root(version);
    let go = goroot.join("bin/go");
    assert!(
        go.exists(),
        "Go {version} missing ({}): run `cargo xtask setup`",
        go.display()
    );
    let base = workspace_root().join("target/go");
    let mut cmd = Command::new(go);
    cmd.env("GOROOT", &goroot)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        // Fixtures are single standard-library files: no module needed.
        .env("GO111MODULE", "off")
        // Ignore any `go env -w` settings of the user.
        .env("GOENV", "off")
        .env("GOCACHE", base.join("cache").join(version))
        .env("GOPATH", base.join("gopath"))
        .env_remove("GOFLAGS");
    cmd
}

/// Builds the Go fixture for `version` and `build` into
/// target/fixtures/go-<version>-<build>, unless an up-to-date one is there.
/// Safe to call from concurrent test threads and binaries.
pub fn go_fixture(version: &str, build: GoBuild) -> PathBuf {
    let root = workspace_root();
    let dir = root.join("target/fixtures");
    let name = format!("go-{version}-{}", build.name());
    let src = root.join("tests/fixtures").join(build.source());
    let out = dir.join(&name);
    let mut cmd = go_command(version);
    fs::create_dir_all(&dir).expect("create target/fixtures");
    // One lock per output, so a test does not wait for other versions'
    // builds; flock locks belong to the open file, so this also excludes
    // other threads of this process.
    let lock = fs::File::create(dir.join(format!(".{name}.lock"))).expect("lock file");
    // SAFETY: flock on a file descriptor we own; released when `lock` closes.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    // Stale if older than its source or than the toolchain (reinstalled).
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let go = go_root(version).join("bin/go");
    let fresh = mtime(&out).is_some_and(|o| {
        [&src, &go]
            .iter()
            .all(|input| mtime(input).is_some_and(|i| o >= i))
    });
    if !fresh {
        // Built beside and renamed: an interrupted build never leaves a
        // truncated fixture that looks up to date.
        let tmp = dir.join(format!("{name}.tmp"));
        let built = cmd
            .env("CGO_ENABLED", build.cgo_enabled())
            .args(["build", "-o"])
            .arg(&tmp)
            .args(build.flags())
            .arg(&src)
            .output()
            .expect("run go build");
        assert!(
            built.status.success(),
            "building fixture {name} failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        fs::rename(&tmp, &out).expect("move the built fixture into place");
    }
    drop(lock);
    out
}

/// A running Go fixture service (goroutines.go, go_cgo.go): started, its
/// port read from its "ready PORT" line; killed on drop.
pub struct GoService {
    // A Fixture without stdin: it reads stdout lines and kills on drop.
    fixture: Fixture,
    pub port: u16,
}

impl GoService {
    pub fn start(path: &Path, args: &[&str]) -> GoService {
        GoService::start_with_env(path, args, &[])
    }

    /// Starts the service with extra environment variables (e.g. GOGC).
    pub fn start_with_env(path: &Path, args: &[&str], env: &[(&str, &str)]) -> GoService {
        let mut child = Command::new(path)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let pid = child.id();
        let stdout = line_reader(child.stdout.take().expect("piped stdout"));
        let mut fixture = Fixture {
            child,
            stdin: None,
            stdout,
            pid,
            container: None,
        };
        // The ready line carries the port: read it here, not in `ready`.
        let ready = fixture.expect_line("ready ");
        let port = ready["ready ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad ready line {ready:?}: {e}", path.display()));
        GoService { fixture, port }
    }

    pub fn pid(&self) -> u32 {
        self.fixture.pid
    }

    /// Whether the service still runs (tracing must never crash it).
    pub fn is_alive(&mut self) -> bool {
        self.fixture.is_alive()
    }
}

/// `GET path` from 127.0.0.1:`port` over HTTP/1.0 (the server closes the
/// connection after the body, so no framing to parse); returns the body.
/// Panics unless the status is 200.
pub fn http_get(port: u16, path: &str) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(20);
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    conn.set_read_timeout(Some(timeout))
        .expect("set read timeout");
    conn.set_write_timeout(Some(timeout))
        .expect("set write timeout");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path} from {addr}: no HTTP response: {response:?}"));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(status, Some("200"), "GET {path} from {addr}: {head}");
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_oldest_first() {
        let key = |v: &str| -> Vec<u32> {
            v.split('.')
                .map(|n| n.parse().expect("numeric version"))
                .collect()
        };
        assert!(GO_VERSIONS.windows(2).all(|w| key(w[0]) < key(w[1])));
    }
}
