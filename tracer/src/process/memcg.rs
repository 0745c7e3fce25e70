//! The target's memory cgroup: the limit a container runs under, how close
//! the target's cgroup is to it, and how often the OOM killer fired there.
//! cgroup v1 (`memory` controller) and v2 (unified) alike.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// v1 reports "no limit" as the largest page-aligned i64.
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where to read one process's memory cgroup.
#[derive(Debug, Clone)]
pub struct MemoryCgroup {
    /// The cgroup's path as /proc/PID/cgroup names it.
    pub path: String,
    dir: PathBuf,
    /// The hierarchy's mount point (v2 limits are looked up to it).
    mount: PathBuf,
    version: Version,
}

/// One reading of a memory cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCgroupReading {
    pub path: String,
    /// Memory charged to the cgroup (all its processes; page cache included).
    pub usage: u64,
    /// The effective limit (the tightest of the cgroup's and its
    /// ancestors'); `None` when unlimited.
    pub limit: Option<u64>,
    /// The most it was ever charged (`None`: the kernel does not say).
    pub peak: Option<u64>,
    /// OOM kills in this cgroup so far.
    pub oom_kills: u64,
}

impl MemoryCgroup {
    /// The memory cgroup of `pid`, when the memory controller is mounted.
    pub fn of(pid: u32) -> Option<MemoryCgroup> {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        locate(&cgroups, &mountinfo, |mount| {
            fs::read_to_string(mount.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        })
    }

    /// Reads usage, limit and OOM kills now (`None` once the cgroup is gone).
    pub fn read(&self) -> Option<MemoryCgroupReading> {
        let number = |file: &str| -> Option<u64> {
            fs::read_to_string(self.dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let keyed = |file: &str, key: &str| -> Option<u64> {
            let text = fs::read_to_string(self.dir.join(file)).ok()?;
            keyed_value(&text, key)
        };
        let (usage, limit, peak, oom_kills) = match self.version {
            Version::V1 => (
                number("memory.usage_in_bytes")?,
                keyed("memory.stat", "hierarchical_memory_limit")
                    .or_else(|| number("memory.limit_in_bytes"))
                    .filter(|&l| l < V1_UNLIMITED),
                number("memory.max_usage_in_bytes"),
                keyed("memory.oom_control", "oom_kill").unwrap_or(0),
            ),
            Version::V2 => (
                number("memory.current")?,
                self.v2_limit(),
                number("memory.peak"),
                keyed("memory.events", "oom_kill").unwrap_or(0),
            ),
        };
        Some(MemoryCgroupReading {
            path: self.path.clone(),
            usage,
            limit,
            peak,
            oom_kills,
        })
    }

    /// The tightest `memory.max` from the cgroup up to the hierarchy's root.
    fn v2_limit(&self) -> Option<u64> {
        let mut tightest: Option<u64> = None;
        let mut dir: &Path = &self.dir;
        while dir.starts_with(&self.mount) && dir != self.mount {
            if let Some(max) = fs::read_to_string(dir.join("memory.max"))
                .ok()
                .and_then(|m| m.trim().parse::<u64>().ok())
            {
                tightest = Some(tightest.map_or(max, |t| t.min(max)));
            }
            dir = dir.parent()?;
        }
        tightest
    }
}

/// `key N` lines (memory.stat, memory.events, memory.oom_control).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Finds the memory cgroup in /proc/PID/cgroup's lines and the mount that
/// holds it in /proc/self/mountinfo; `v2_has_memory` says whether a cgroup2
/// mount has the memory controller.
fn locate(
    cgroups: &str,
    mountinfo: &str,
    v2_has_memory: impl Fn(&Path) -> bool,
) -> Option<MemoryCgroup> {
    // (mount root, mount point) of v1's memory hierarchy and of v2's.
    let mut v1_memory = None;
    let mut v2 = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        match (fields.get(dash + 1), fields.get(dash + 3)) {
            (Some(&"cgroup"), Some(options)) if options.split(',').any(|o| o == "memory") => {
                v1_memory = Some((root.to_string(), PathBuf::from(point)));
            }
            (Some(&"cgroup2"), _) if v2.is_none() => {
                v2 = Some((root.to_string(), PathBuf::from(point)));
            }
            _ => {}
        }
    }
    let (version, (root, mount), path) = if let Some(mount) = v1_memory {
        let path = cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })?;
        (Version::V1, mount, path)
    } else {
        let mount = v2.filter(|(_, point)| v2_has_memory(point))?;
        let path = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_string))?;
        (Version::V2, mount, path)
    };
    // The mount may show a subtree only (its root is not "/").
    let relative = path
        .strip_prefix(root.trim_end_matches('/'))
        .unwrap_or(&path)
        .trim_start_matches('/');
    Some(MemoryCgroup {
        dir: if relative.is_empty() {
            mount.clone()
        } else {
            mount.join(relative)
        },
        mount,
        path,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_a_v1_memory_cgroup() {
        let cg = locate("4:memory:/docker/abc\n1:cpu:/\n0::/\n", V1_MOUNTS, |_| {
            false
        })
        .expect("memory cgroup");
        assert_eq!(cg.version, Version::V1);
        assert_eq!(cg.path, "/docker/abc");
        assert_eq!(cg.dir, Path::new("/sys/fs/cgroup/memory/docker/abc"));
    }

    #[test]
    fn finds_a_v2_cgroup_only_with_the_memory_controller() {
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let cgroups = "0::/system.slice/docker-abc.scope\n";
        assert!(locate(cgroups, mounts, |_| false).is_none());
        let cg = locate(cgroups, mounts, |_| true).expect("memory cgroup");
        assert_eq!(cg.version, Version::V2);
        assert_eq!(
            cg.dir,
            Path::new("/sys/fs/cgroup/system.slice/docker-abc.scope")
        );
    }

    #[test]
    fn a_mount_of_a_subtree_is_joined_below_its_root() {
        let mounts = "35 31 0:32 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let cg = locate("4:memory:/kubepods/pod1/c2\n", mounts, |_| false).expect("cgroup");
        assert_eq!(cg.dir, Path::new("/sys/fs/cgroup/memory/pod1/c2"));
    }

    #[test]
    fn reads_keyed_files() {
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(control, "oom_kill"), Some(3));
        assert_eq!(keyed_value(control, "oom"), None);
    }

    #[test]
    fn reads_this_process_cgroup() {
        // Every test machine mounts the memory controller one way or the other.
        let cg = MemoryCgroup::of(std::process::id()).expect("memory cgroup");
        let reading = cg.read().expect("reading");
        assert!(reading.usage > 0, "{reading:?}");
        // The root cgroup of v2 keeps no peak; where there is one, it is
        // at least what was charged just before it was read.
        if let Some(peak) = reading.peak {
            assert!(peak >= reading.usage, "{reading:?}");
        }
    }
}
