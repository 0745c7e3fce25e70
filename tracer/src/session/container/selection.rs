//! Which containers a run traces: `--container NAME|ID`, `--pod` or
//! `--all-containers`, resolved (before anything is loaded) through the
//! container's cgroup and the engines.

use crate::{
    cli::Cli,
    process::{
        container::{self, ContainerError},
        engine::{self, containerd, ContainerRecord, Docker, EngineError},
    },
};

/// What the run follows.
pub enum Selection {
    /// One container; `record`: the engine's, when one knows it (then its
    /// restarts and exit are followed through `docker`).
    One {
        id: String,
        record: Option<ContainerRecord>,
        docker: Option<Docker>,
    },
    /// Every container the engine runs now or starts later that carries
    /// every one of `labels`.
    All {
        docker: Docker,
        labels: Vec<(String, String)>,
        running: Vec<ContainerRecord>,
    },
}

impl Selection {
    pub fn docker(&self) -> Option<&Docker> {
        match self {
            Selection::One { docker, .. } => docker.as_ref(),
            Selection::All { docker, .. } => Some(docker),
        }
    }
}

fn docker_of(cli: &Cli) -> Docker {
    Docker::new(
        &cli.docker_socket
            .clone()
            .unwrap_or_else(engine::docker::default_socket),
    )
}

/// Resolves the CLI's container options; `None` when it names none.
pub fn resolve(cli: &Cli) -> anyhow::Result<Option<Selection>> {
    let docker = docker_of(cli);
    if let Some(spec) = &cli.container {
        return one_container(docker, spec).map(Some);
    }
    if let Some(spec) = &cli.pod {
        let (namespace, name) = engine::parse_pod(spec)?;
        let mut candidates = containerd::running();
        let from_docker = match docker.running() {
            Ok(running) => running,
            // Without Docker the pod may still be containerd's.
            Err(e @ EngineError::Unreachable { .. }) if candidates.is_empty() => {
                return Err(e.into())
            }
            Err(_) => Vec::new(),
        };
        let docker_ids: Vec<String> = from_docker.iter().map(|c| c.id.clone()).collect();
        // Docker's own containerd knows the same containers, without names.
        candidates.retain(|c| !docker_ids.contains(&c.id));
        candidates.extend(from_docker);
        let record =
            engine::find_in_pod(&candidates, &namespace, &name, cli.pod_container.as_deref())?;
        let by_docker = docker_ids.contains(&record.id);
        return Ok(Some(Selection::One {
            id: record.id.clone(),
            record: Some(record),
            docker: by_docker.then_some(docker),
        }));
    }
    if cli.all_containers {
        let labels = cli
            .label
            .iter()
            .map(|l| engine::parse_label(l))
            .collect::<Result<Vec<_>, _>>()?;
        let all = docker.running()?;
        // The agent in its own container leaves itself alone.
        let own = container::inspect(std::process::id()).id;
        let running: Vec<ContainerRecord> = all
            .iter()
            .filter(|c| c.has_labels(&labels) && Some(&c.id) != own.as_ref())
            .cloned()
            .collect();
        if running.is_empty() && !labels.is_empty() {
            anyhow::bail!(
                "no running container has the label{} {}; running: {}",
                if labels.len() > 1 { "s" } else { "" },
                cli.label.join(", "),
                if all.is_empty() {
                    "none".to_string()
                } else {
                    all.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        return Ok(Some(Selection::All {
            docker,
            labels,
            running,
        }));
    }
    Ok(None)
}

/// `--container SPEC`: an id (prefix) that a running process's cgroup
/// names, else whatever Docker knows by that name, id or prefix.
fn one_container(docker: Docker, spec: &str) -> anyhow::Result<Selection> {
    let by_cgroup = container::resolve(spec);
    match by_cgroup {
        Ok(id) => {
            let record = docker.inspect(&id).ok().flatten();
            let docker = record.is_some().then_some(docker);
            Ok(Selection::One { id, record, docker })
        }
        Err(e @ ContainerError::Ambiguous { .. }) => Err(e.into()),
        Err(cgroup_error) => match engine::find_container(&docker, spec) {
            Ok(record) => Ok(Selection::One {
                id: record.id.clone(),
                record: Some(record),
                docker: Some(docker),
            }),
            // An id nobody runs, and no engine to ask: what the cgroups said.
            Err(EngineError::Unreachable { .. })
                if !matches!(cgroup_error, ContainerError::BadId(_)) =>
            {
                Err(cgroup_error.into())
            }
            Err(e) => Err(e.into()),
        },
    }
}
