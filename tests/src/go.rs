//! Go fixtures: tests/fixtures/goroutines.go (and go_cgo.go for cgo) built
//! with each toolchain `cargo xtask setup` installs under target/go.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::*;

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
    build_go_once(
        &format!("go-{version}-{}", build.name()),
        build.source(),
        version,
        |cmd, out| {
            cmd.env("CGO_ENABLED", build.cgo_enabled())
                .args(["build", "-o"])
                .arg(out)
                .args(build.flags());
        },
    )
}

/// Builds tests/fixtures/`source` with Go `version` into
/// target/fixtures/`name`, unless an up-to-date one is there; `configure`
/// adds the environment and the arguments before the source path, given
/// the path to build to. Safe to call
/// from concurrent test threads and binaries.
fn build_go_once(
    name: &str,
    source: &str,
    version: &str,
    configure: impl FnOnce(&mut Command, &Path),
) -> PathBuf {
    let root = workspace_root();
    let dir = root.join("target/fixtures");
    let src = root.join("tests/fixtures").join(source);
    let out = dir.join(name);
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
        let mut cmd = go_command(version);
        configure(&mut cmd, &tmp);
        let built = cmd.arg(&src).output().expect("run go build");
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
        let mut cmd = Command::new(path);
        cmd.args(args);
        GoService::spawn(cmd, path, env)
    }

    /// Starts the service inside the cgroup whose `cgroup.procs` file is
    /// `procs`, joined before exec so that every page it touches is
    /// charged there.
    pub fn start_in_cgroup(path: &Path, args: &[&str], procs: &Path) -> GoService {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(procs)
            .arg(path)
            .args(args);
        GoService::spawn(cmd, path, &[])
    }

    fn spawn(mut cmd: Command, path: &Path, env: &[(&str, &str)]) -> GoService {
        let mut child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let stdout = line_reader(child.stdout.take().expect("piped stdout"));
        let mut fixture = Fixture::from_child(child, stdout);
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
    try_http_get(port, path).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_get`] that says what went wrong instead of panicking.
pub fn try_http_get(port: u16, path: &str) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(20);
    let fail = |e: std::io::Error| format!("GET {path} from {addr}: {e}");
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    conn.set_read_timeout(Some(timeout)).map_err(fail)?;
    conn.set_write_timeout(Some(timeout)).map_err(fail)?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(fail)?;
    let mut response = String::new();
    conn.read_to_string(&mut response).map_err(fail)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} from {addr}: no HTTP response: {response:?}"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1));
    if status != Some("200") {
        return Err(format!("GET {path} from {addr}: {head}"));
    }
    Ok(body.to_string())
}

/// The Gin service (tests/fixtures/gin_service.go) built by Go `version` in
/// GOPATH mode against Debian's Gin sources (/usr/share/gocode, installed by
/// `cargo xtask setup`), into target/fixtures/gin-<version>.
pub fn gin_fixture(version: &str) -> PathBuf {
    gopath_fixture("gin", "gin_service.go", version)
}

/// The gRPC service and client (tests/fixtures/grpc_service.go), built like
/// [`gin_fixture`] against Debian's gRPC 1.33.3.
pub fn grpc_fixture(version: &str) -> PathBuf {
    gopath_fixture("grpc", "grpc_service.go", version)
}

fn gopath_fixture(kind: &str, source: &str, version: &str) -> PathBuf {
    // Sources of Gin, gRPC and their dependencies: Debian's
    // golang-github-gin-gonic-gin-dev and golang-google-grpc-dev.
    build_go_once(&format!("{kind}-{version}"), source, version, |cmd, out| {
        cmd.env("GOPATH", "/usr/share/gocode")
            .env("CGO_ENABLED", "0")
            .args(["build", "-o"])
            .arg(out);
    })
}
