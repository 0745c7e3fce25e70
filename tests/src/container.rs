//! Test containers built the way engines build them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

/// A container built the way engines build them: its own mount and PID
/// namespaces, a root filesystem of its own (the fixture, a copy of the C
/// library at a path the host does not use, the loader), and a cgroup
/// named like Docker's.
pub struct TestContainer {
    pub id: String,
    pub(crate) root: PathBuf,
    pub(crate) cgroup: Option<PathBuf>,
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
pub(crate) fn split_debug_info(binary: &Path, root: &Path) {
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
pub(crate) fn first_child(outer: u32) -> u32 {
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
pub(crate) fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

pub(crate) fn container_id() -> String {
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

/// A memory cgroup with a limit, as `docker run --memory` makes one: under
/// cgroup v1's memory controller where it is mounted, else under v2's.
/// Removed on drop (once its processes have gone).
pub struct MemoryLimit {
    /// The cgroup's path as /proc/PID/cgroup names it.
    pub path: String,
    dir: PathBuf,
}

impl MemoryLimit {
    pub fn new(limit: u64) -> MemoryLimit {
        let name = format!("leaktrace-test-{}", &container_id()[..12]);
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, files): (PathBuf, &[(&str, String)]) =
            if v1.join("memory.limit_in_bytes").exists() {
                // No swap for it, so that the limit is where the OOM killer fires.
                (
                    v1.join(&name),
                    &[
                        ("memory.limit_in_bytes", limit.to_string()),
                        ("memory.swappiness", "0".to_string()),
                    ],
                )
            } else {
                let root = cgroup2_root().expect("a cgroup v1 memory controller or cgroup v2");
                let _ = fs::write(root.join("cgroup.subtree_control"), "+memory");
                (
                    root.join(&name),
                    &[
                        ("memory.max", limit.to_string()),
                        ("memory.swap.max", "0".to_string()),
                    ],
                )
            };
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for (file, value) in files {
            // swap files are absent when the kernel has no swap accounting.
            if let Err(e) = fs::write(dir.join(file), value) {
                assert!(file.contains("swap"), "write {}/{file}: {e}", dir.display());
            }
        }
        MemoryLimit {
            path: format!("/{name}"),
            dir,
        }
    }

    /// The file a process writes its PID to, to join the cgroup.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}
