//! Container engines: a container named the way its users name it (a
//! Docker name, id or id prefix; a Kubernetes pod) resolved to its id and
//! processes, the labels its reports carry, and the engine's news of
//! containers that start and die.
//!
//! Docker is asked through its API ([`docker`]); containers that
//! containerd runs for Kubernetes are found through the OCI bundles it
//! keeps on disk, whose annotations carry the pod's names ([`containerd`]).

pub mod containerd;
pub mod docker;
mod http;

use std::{collections::BTreeMap, path::PathBuf};

use serde::Serialize;

pub use docker::{ContainerEvent, Docker, EventAction};

/// One container as its engine describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Full id (64 hex digits).
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Its first process, while it runs.
    pub pid: Option<u32>,
    pub running: bool,
    /// Between runs under a restart policy.
    pub restarting: bool,
    /// Restarts the engine counted (its restart policy's).
    pub restarts: u64,
}

/// Kubernetes' labels on the containers it runs (CRI, through containerd
/// or cri-dockerd).
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_CONTAINER: &str = "io.kubernetes.container.name";

impl ContainerRecord {
    /// What reports, metrics and profiles say of the container.
    pub fn labels_for_reports(&self) -> ContainerLabels {
        let get = |k: &str| self.labels.get(k).cloned();
        ContainerLabels {
            name: self.name.clone(),
            image: self.image.clone(),
            pod: get(POD_NAME),
            namespace: get(POD_NAMESPACE),
            pod_container: get(POD_CONTAINER),
        }
    }

    /// Whether the container carries every `KEY=VALUE` of `wanted`.
    pub fn has_labels(&self, wanted: &[(String, String)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|have| have == v))
    }

    /// Sandbox (pause) containers hold a pod's namespaces and run no
    /// workload.
    pub fn is_pod_sandbox(&self) -> bool {
        self.labels
            .get("io.kubernetes.docker.type")
            .map(String::as_str)
            == Some("podsandbox")
            || self.labels.get(POD_CONTAINER).map(String::as_str) == Some("POD")
    }

    fn short(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// A container's names, as every report of its processes carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerLabels {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_container: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot reach the container engine at {} ({cause}); is it running? (another socket: --docker-socket PATH)",
        socket.display()
    )]
    Unreachable { socket: PathBuf, cause: String },
    #[error("the container engine's answer: {0}")]
    Answer(String),
    #[error("no container named `{wanted}`; running: {running}")]
    NoSuchContainer { wanted: String, running: String },
    #[error("container `{0}` is not running")]
    NotRunning(String),
    #[error("no running pod `{namespace}/{name}`; pods running: {running}")]
    NoSuchPod {
        namespace: String,
        name: String,
        running: String,
    },
    #[error("pod `{pod}` has no running container `{wanted}`; its containers: {have}")]
    NoSuchPodContainer {
        pod: String,
        wanted: String,
        have: String,
    },
    #[error("pod `{pod}` runs containers {have}: name one with -c/--pod-container")]
    PodAmbiguous { pod: String, have: String },
    #[error("`{0}` is not a pod (NAMESPACE/NAME expected, as kubectl -n NAMESPACE get pod NAME)")]
    BadPod(String),
    #[error("`{0}` is not a label (KEY=VALUE expected)")]
    BadLabel(String),
}

/// "name (id, image), …" for an error line; "none" when empty.
fn listing(containers: &[ContainerRecord]) -> String {
    if containers.is_empty() {
        return "none".into();
    }
    containers
        .iter()
        .map(|c| format!("{} ({}, {})", c.name, c.short(), c.image))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The running container Docker knows as `wanted` (name, id or prefix).
pub fn find_container(docker: &Docker, wanted: &str) -> Result<ContainerRecord, EngineError> {
    match docker.inspect(wanted)? {
        Some(c) if c.running && c.pid.is_some() => Ok(c),
        Some(c) => Err(EngineError::NotRunning(c.name)),
        None => Err(EngineError::NoSuchContainer {
            wanted: wanted.to_string(),
            running: listing(&docker.running()?),
        }),
    }
}

/// Splits `NAMESPACE/NAME`.
pub fn parse_pod(spec: &str) -> Result<(String, String), EngineError> {
    match spec.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(EngineError::BadPod(spec.to_string())),
    }
}

/// Splits `KEY=VALUE`.
pub fn parse_label(spec: &str) -> Result<(String, String), EngineError> {
    match spec.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(EngineError::BadLabel(spec.to_string())),
    }
}

/// The workload container `container` (or the only one) of pod
/// `namespace/name`, among `candidates` (every running container the
/// engines know, with their CRI labels).
pub fn find_in_pod(
    candidates: &[ContainerRecord],
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> Result<ContainerRecord, EngineError> {
    let in_pod: Vec<&ContainerRecord> = candidates
        .iter()
        .filter(|c| !c.is_pod_sandbox())
        .filter(|c| {
            c.labels.get(POD_NAMESPACE).map(String::as_str) == Some(namespace)
                && c.labels.get(POD_NAME).map(String::as_str) == Some(name)
        })
        .collect();
    let pod = format!("{namespace}/{name}");
    let names = |cs: &[&ContainerRecord]| {
        cs.iter()
            .map(|c| {
                c.labels
                    .get(POD_CONTAINER)
                    .cloned()
                    .unwrap_or_else(|| c.name.clone())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if in_pod.is_empty() {
        let mut pods: Vec<String> = candidates
            .iter()
            .filter_map(|c| {
                Some(format!(
                    "{}/{}",
                    c.labels.get(POD_NAMESPACE)?,
                    c.labels.get(POD_NAME)?
                ))
            })
            .collect();
        pods.sort();
        pods.dedup();
        return Err(EngineError::NoSuchPod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            running: if pods.is_empty() {
                "none".into()
            } else {
                pods.join(", ")
            },
        });
    }
    match container {
        Some(want) => in_pod
            .iter()
            .find(|c| c.labels.get(POD_CONTAINER).map(String::as_str) == Some(want))
            .map(|c| (*c).clone())
            .ok_or_else(|| EngineError::NoSuchPodContainer {
                pod,
                wanted: want.to_string(),
                have: names(&in_pod),
            }),
        None if in_pod.len() == 1 => Ok(in_pod[0].clone()),
        None => Err(EngineError::PodAmbiguous {
            pod,
            have: names(&in_pod),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, labels: &[(&str, &str)]) -> ContainerRecord {
        ContainerRecord {
            id: format!("{name:0<64}"),
            name: name.into(),
            image: "img".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pid: Some(1),
            running: true,
            ..Default::default()
        }
    }

    #[test]
    fn pods_by_their_cri_labels() {
        let pod = |c: &'static str| {
            vec![
                (POD_NAMESPACE, "shop"),
                (POD_NAME, "cart-7d9f"),
                (POD_CONTAINER, c),
            ]
        };
        let all = vec![
            record("k8s_POD_cart", &pod("POD")),
            record("k8s_app_cart", &pod("app")),
            record("k8s_sidecar_cart", &pod("sidecar")),
            record("other", &[]),
        ];
        let found = find_in_pod(&all, "shop", "cart-7d9f", Some("app")).expect("app");
        assert_eq!(found.name, "k8s_app_cart");
        assert!(matches!(
            find_in_pod(&all, "shop", "cart-7d9f", None),
            Err(EngineError::PodAmbiguous { have, .. }) if have == "app, sidecar"
        ));
        assert!(matches!(
            find_in_pod(&all, "shop", "cart-7d9f", Some("db")),
            Err(EngineError::NoSuchPodContainer { .. })
        ));
        assert!(matches!(
            find_in_pod(&all, "shop", "nope", None),
            Err(EngineError::NoSuchPod { running, .. }) if running == "shop/cart-7d9f"
        ));
        let labels = found.labels_for_reports();
        assert_eq!(labels.pod.as_deref(), Some("cart-7d9f"));
        assert_eq!(labels.namespace.as_deref(), Some("shop"));
        assert_eq!(labels.pod_container.as_deref(), Some("app"));
    }

    #[test]
    fn pod_and_label_syntax() {
        assert_eq!(
            parse_pod("default/web").ok(),
            Some(("default".into(), "web".into()))
        );
        for bad in ["web", "/web", "default/", "a/b/c"] {
            assert!(parse_pod(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_label("app=shop").ok(),
            Some(("app".into(), "shop".into()))
        );
        assert!(parse_label("=x").is_err());
        assert!(parse_label("app").is_err());
        assert!(record("a", &[("app", "shop"), ("tier", "web")])
            .has_labels(&[("app".into(), "shop".into())]));
        assert!(!record("a", &[("app", "shop")]).has_labels(&[("app".into(), "cart".into())]));
    }
}
