//! Whether the target runs in a container: its PID inside its own PID
//! namespace and the container id its cgroup is named after.

use std::fs;

/// What /proc says about the target's container, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The target's PID in its own PID namespace, when that differs from ours.
    pub pid_inside: Option<u32>,
    /// Full container id (64 hex digits) from a Docker, containerd/CRI or
    /// Podman cgroup name.
    pub id: Option<String>,
    /// The engine's names for it (set by `--container`, `--pod` and
    /// `--all-containers`, which ask the engine).
    pub labels: Option<super::engine::ContainerLabels>,
}

pub fn inspect(pid: u32) -> ContainerInfo {
    ContainerInfo {
        pid_inside: fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| parse_nspid(&s)),
        id: fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| parse_container_id(&s)),
        labels: None,
    }
}

/// The innermost PID of the `NSpid:` line, if the process is in a nested
/// PID namespace.
fn parse_nspid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let pids: Vec<&str> = line["NSpid:".len()..].split_whitespace().collect();
    if pids.len() < 2 {
        return None;
    }
    pids.last()?.parse().ok()
}

/// Container id from cgroup paths such as
/// `/system.slice/docker-<id>.scope` (systemd driver), `/docker/<id>`
/// (cgroupfs driver), `.../cri-containerd-<id>.scope`, `.../crio-<id>.scope`,
/// `.../libpod-<id>.scope` or `/kubepods/.../<id>`.
pub fn parse_container_id(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(container_id_of_component)
}

pub fn container_id_of_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let name = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| name.strip_prefix(p))
    .unwrap_or(name);
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| name.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("`{0}` is not a container id (hex digits expected, as `docker ps` shows them)")]
    BadId(String),
    #[error("no running process belongs to a container whose id starts with `{0}`")]
    NotFound(String),
    #[error("`{prefix}` matches {count} containers ({ids}); give more of the id")]
    Ambiguous {
        prefix: String,
        count: usize,
        ids: String,
    },
}

/// Every process with a container id in its cgroup: (pid, id).
fn containerized_processes() -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            Some((pid, parse_container_id(&cgroup)?))
        })
        .collect()
}

/// The full id of the one running container whose id starts with `prefix`.
pub fn resolve(prefix: &str) -> Result<String, ContainerError> {
    let wanted = prefix.to_ascii_lowercase();
    if wanted.is_empty() || wanted.len() > 64 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ContainerError::BadId(prefix.to_string()));
    }
    let ids: Vec<String> = containerized_processes()
        .into_iter()
        .map(|(_, id)| id)
        .filter(|id| id.starts_with(&wanted))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    match ids.len() {
        0 => Err(ContainerError::NotFound(prefix.to_string())),
        1 => Ok(ids.into_iter().next().unwrap_or_default()),
        count => Err(ContainerError::Ambiguous {
            prefix: prefix.to_string(),
            count,
            ids: ids.iter().map(|i| &i[..12]).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// The processes of container `id` (full id), lowest PID first.
pub fn processes(id: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = containerized_processes()
        .into_iter()
        .filter(|(_, i)| i == id)
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c0e0a7b9d2c3e5f60718293a4b5c6d7e8f90112233445566778899aabbccd";

    #[test]
    fn nspid() {
        assert_eq!(parse_nspid("Name:\tx\nNSpid:\t815\t1\n"), Some(1));
        assert_eq!(parse_nspid("NSpid:\t815\n"), None);
        assert_eq!(parse_nspid("NSpid:\t900\t40\t7\n"), Some(7));
    }

    #[test]
    fn container_ids_of_every_runtime() {
        for cgroup in [
            format!("0::/system.slice/docker-{ID}.scope\n"),
            format!("12:pids:/docker/{ID}\n"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-{ID}.scope\n"),
            format!("0::/kubepods/burstable/pod1234/{ID}\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            format!("0::/kubepods.slice/crio-{ID}.scope\n"),
        ] {
            assert_eq!(parse_container_id(&cgroup).as_deref(), Some(ID), "{cgroup}");
        }
        assert_eq!(parse_container_id("0::/user.slice/session-2.scope\n"), None);
        assert_eq!(parse_container_id("9:name=systemd:/\n"), None);
    }

    #[test]
    fn container_ids_must_be_hex() {
        assert!(matches!(
            resolve("not-an-id"),
            Err(ContainerError::BadId(_))
        ));
        assert!(matches!(resolve(""), Err(ContainerError::BadId(_))));
        // No process here runs in a container with this id.
        assert!(matches!(
            resolve("0123456789abcdef0123"),
            Err(ContainerError::NotFound(_))
        ));
    }
}
