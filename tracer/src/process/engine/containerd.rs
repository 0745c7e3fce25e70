//! Containers containerd runs (for Kubernetes through its CRI plugin, or
//! for Docker), found through the OCI bundles its shims keep on disk:
//! `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/` with the
//! container's `config.json` (whose annotations the CRI plugin fills with
//! the pod's names) and `init.pid`. No API call: the files are what
//! containerd itself reads back after a restart.

use std::{collections::BTreeMap, fs, path::Path};

use serde::Deserialize;

use super::{ContainerRecord, POD_CONTAINER, POD_NAME, POD_NAMESPACE};

/// containerd's state folders: its own, and the one Docker's private
/// containerd uses.
pub const STATE_DIRS: &[&str] = &[
    "/run/containerd/io.containerd.runtime.v2.task",
    "/run/docker/containerd/daemon/io.containerd.runtime.v2.task",
];

#[derive(Deserialize)]
struct Bundle {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The CRI plugin's annotations, and the labels they stand for.
const CRI: &[(&str, &str)] = &[
    ("io.kubernetes.cri.sandbox-name", POD_NAME),
    ("io.kubernetes.cri.sandbox-namespace", POD_NAMESPACE),
    ("io.kubernetes.cri.container-name", POD_CONTAINER),
];

/// Every container with a bundle under `state` (one of [`STATE_DIRS`]),
/// running or not.
pub fn bundles(state: &Path) -> Vec<ContainerRecord> {
    let mut out = Vec::new();
    let Ok(namespaces) = fs::read_dir(state) else {
        return out;
    };
    for ns in namespaces.filter_map(Result::ok) {
        let Ok(ids) = fs::read_dir(ns.path()) else {
            continue;
        };
        for dir in ids.filter_map(Result::ok) {
            if let Some(c) = read_bundle(&dir.path()) {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn read_bundle(dir: &Path) -> Option<ContainerRecord> {
    let id = dir.file_name()?.to_str()?.to_string();
    let config: Bundle = serde_json::from_slice(&fs::read(dir.join("config.json")).ok()?).ok()?;
    let annotations = config.annotations.unwrap_or_default();
    let pid = fs::read_to_string(dir.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|p| *p > 0);
    let running = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
    let mut labels = BTreeMap::new();
    for (annotation, label) in CRI {
        if let Some(v) = annotations.get(*annotation) {
            labels.insert(label.to_string(), v.clone());
        }
    }
    if annotations
        .get("io.kubernetes.cri.container-type")
        .map(String::as_str)
        == Some("sandbox")
    {
        labels.insert(POD_CONTAINER.to_string(), "POD".to_string());
    }
    Some(ContainerRecord {
        name: labels
            .get(POD_CONTAINER)
            .cloned()
            .unwrap_or_else(|| id.clone()),
        image: annotations
            .get("io.kubernetes.cri.image-name")
            .cloned()
            .unwrap_or_default(),
        id,
        labels,
        pid,
        running,
        ..Default::default()
    })
}

/// Every running container under every state folder.
pub fn running() -> Vec<ContainerRecord> {
    STATE_DIRS
        .iter()
        .flat_map(|d| bundles(Path::new(d)))
        .filter(|c| c.running)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cri_bundle_names_its_pod() {
        let state = std::env::temp_dir().join(format!("lt-bundles-{}", std::process::id()));
        let id = "ab".repeat(32);
        let dir = state.join("k8s.io").join(&id);
        fs::create_dir_all(&dir).expect("bundle dir");
        fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{
                "io.kubernetes.cri.container-type":"container",
                "io.kubernetes.cri.container-name":"app",
                "io.kubernetes.cri.sandbox-name":"cart-7d9f",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.image-name":"registry.local/cart:1"}}"#,
        )
        .expect("config");
        // This test's own PID: a process that runs.
        fs::write(dir.join("init.pid"), std::process::id().to_string()).expect("pid");
        let found = bundles(&state);
        let _ = fs::remove_dir_all(&state);
        assert_eq!(found.len(), 1);
        let c = &found[0];
        assert_eq!(c.id, id);
        assert!(c.running);
        assert_eq!(c.image, "registry.local/cart:1");
        let l = c.labels_for_reports();
        assert_eq!(
            (
                l.pod.as_deref(),
                l.namespace.as_deref(),
                l.pod_container.as_deref()
            ),
            (Some("cart-7d9f"), Some("shop"), Some("app"))
        );
    }
}
