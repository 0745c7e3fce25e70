//! Containers in the real Docker engine (Debian's docker.io, which `cargo
//! xtask test` starts when none runs): images made locally with `docker
//! import` from the fixtures and the libraries `ldd` names, run with
//! `--pull never`, so nothing is ever looked up outside the machine.

use std::{
    collections::HashMap,
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::*;

/// Debian's client (the engine's own version), not another on the PATH.
pub const DOCKER: &str = "/usr/bin/docker";

/// Runs `docker ARGS` and returns its stdout; panics on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new(DOCKER)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The image holding `fixtures` under /app with their libraries and
/// loader, imported once per test process; its name.
pub fn docker_image(fixtures_in: &[&str]) -> String {
    docker_image_copy(fixtures_in, "")
}

/// Like [`docker_image`], a copy of its own per `copy` (its files are
/// other files than any other image's: other inodes to probe).
pub fn docker_image_copy(fixtures_in: &[&str], copy: &str) -> String {
    static MADE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let mut key = fixtures_in.join("+");
    if !copy.is_empty() {
        key = format!("{key}+{copy}");
    }
    let made = MADE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tag) = made.get(&key) {
        return tag.clone();
    }
    let tag = format!(
        "leaktrace-test/{}:{}",
        key.replace('+', "-"),
        std::process::id()
    );
    let root = workspace_root().join(format!("target/images/{}-{}", key, std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("app")).expect("image dirs");
    for name in fixtures_in {
        let bin = fixtures().path(name);
        fs::copy(&bin, root.join("app").join(name)).expect("copy fixture");
        copy_libraries(&bin, &root);
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let status = Command::new(DOCKER)
        .args(["import", "-", &tag])
        .stdin(tar.stdout.take().expect("tar's stdout"))
        .stdout(Stdio::null())
        .status()
        .expect("docker import");
    assert!(
        tar.wait().is_ok_and(|s| s.success()),
        "tar of {}",
        root.display()
    );
    assert!(status.success(), "docker import {tag}");
    let _ = fs::remove_dir_all(&root);
    made.insert(key, tag.clone());
    tag
}

/// Copies what `ldd` says `binary` loads into `root` at the same paths.
fn copy_libraries(binary: &Path, root: &Path) {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    for path in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(path.trim_start_matches('/'));
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).expect("lib dir");
        }
        fs::copy(path, &to).unwrap_or_else(|e| panic!("copy {path}: {e}"));
    }
}

/// A container in the engine, removed (forcibly) on drop.
pub struct DockerContainer {
    pub name: String,
}

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER)
            .args(["rm", "-f", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A name no other test (or run) uses.
pub fn unique_name(what: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("lt-{what}-{}-{n}", std::process::id())
}

impl DockerContainer {
    /// Creates container `name` from `image` running `cmd` with its stdin
    /// open (`extra`: more `docker create` flags), starts it attached and
    /// waits for the fixture's "ready".
    pub fn start(
        image: &str,
        name: &str,
        extra: &[&str],
        cmd: &[&str],
    ) -> (DockerContainer, Fixture) {
        let container = DockerContainer::create(image, name, extra, cmd);
        let mut f = container.start_attached();
        f.expect_line("ready");
        (container, f)
    }

    /// `docker create -i --pull never` (nothing is looked up outside).
    pub fn create(image: &str, name: &str, extra: &[&str], cmd: &[&str]) -> DockerContainer {
        let mut args = vec!["create", "-i", "--pull", "never", "--name", name];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(cmd);
        docker(&args);
        DockerContainer {
            name: name.to_string(),
        }
    }

    /// Starts it, attached to its stdin and stdout; the fixture's PID is
    /// known once its first process runs.
    pub fn start_attached(&self) -> Fixture {
        let child = Command::new(DOCKER)
            .args(["start", "-a", "-i", &self.name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker start");
        let mut f = Fixture::speaking(child, 0, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &self.name]);
            match pid.parse::<u32>() {
                Ok(p) if p > 0 => {
                    f.pid = p;
                    return f;
                }
                _ => assert!(Instant::now() < deadline, "{} never started", self.name),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host PID of its first process.
    pub fn pid(&self) -> u32 {
        docker(&["inspect", "-f", "{{.State.Pid}}", &self.name])
            .parse()
            .expect("a pid")
    }

    pub fn id(&self) -> String {
        docker(&["inspect", "-f", "{{.Id}}", &self.name])
    }

    /// Speaks to its first process again (after a restart).
    pub fn attach(&self) -> Fixture {
        let child = Command::new(DOCKER)
            .args(["attach", "--sig-proxy=false", &self.name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker attach");
        Fixture::speaking(child, self.pid(), None)
    }

    /// `docker exec -i` of `cmd` in it, once it said "ready"; `pid`: its
    /// host PID (the container's newest process).
    pub fn exec(&self, cmd: &[&str]) -> Fixture {
        let before = self.processes();
        let mut args = vec!["exec", "-i", self.name.as_str()];
        args.extend_from_slice(cmd);
        let child = Command::new(DOCKER)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker exec");
        let mut f = Fixture::ready(child, 0, None);
        f.pid = self
            .processes()
            .into_iter()
            .find(|p| !before.contains(p))
            .expect("the exec'd process in the container's cgroup");
        f
    }

    /// Host PIDs of its processes (its cgroup's, cgroup v1 or v2).
    pub fn processes(&self) -> Vec<u32> {
        let id = self.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<u32> = fs::read_dir("/proc")
                .expect("/proc")
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|pid: &u32| {
                    fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&id))
                })
                .collect();
            if !pids.is_empty() || Instant::now() > deadline {
                return pids;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether the engine answers (the suite starts one; a test run by hand
/// without it fails here with the reason).
pub fn require_engine() {
    let ok = Command::new(DOCKER)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Docker engine answers: run the suite with `cargo xtask test` (it starts dockerd)"
    );
}

#[path = "../../xtask/src/image.rs"]
mod image_recipe;

/// leaktrace's own image, made from the binary under test the way `cargo
/// xtask image` makes it; its tag.
pub fn leaktrace_image() -> String {
    static MADE: OnceLock<String> = OnceLock::new();
    MADE.get_or_init(|| {
        let tag = format!("leaktrace-test/leaktrace:{}", std::process::id());
        let rootfs =
            workspace_root().join(format!("target/images/leaktrace-{}", std::process::id()));
        image_recipe::build_as(&rootfs, &leaktrace_bin(), &tag)
            .unwrap_or_else(|e| panic!("leaktrace's image: {e:#}"));
        let _ = fs::remove_dir_all(&rootfs);
        tag
    })
    .clone()
}
