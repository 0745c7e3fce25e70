//! Docker's engine API on its unix socket: a container by name, id or id
//! prefix (the engine resolves all three, as `docker` does), the running
//! ones, and the stream of their starts and deaths.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{http, ContainerRecord, EngineError};

/// Where the engine listens: `DOCKER_HOST` when it names a unix socket,
/// else Docker's default.
pub fn default_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    name: String,
    #[serde(default)]
    config: InspectConfig,
    #[serde(default)]
    state: InspectState,
    #[serde(default)]
    restart_count: u64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    restarting: bool,
    #[serde(default)]
    pid: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    id: String,
}

#[derive(Deserialize)]
struct ApiMessage {
    message: String,
}

/// The Docker engine at one socket.
#[derive(Debug, Clone)]
pub struct Docker {
    pub socket: PathBuf,
}

impl Docker {
    pub fn new(socket: &Path) -> Docker {
        Docker {
            socket: socket.to_path_buf(),
        }
    }

    fn get(&self, path: &str) -> Result<http::Response, EngineError> {
        http::get(&self.socket, path).map_err(|e| EngineError::Unreachable {
            socket: self.socket.clone(),
            cause: e.to_string(),
        })
    }

    /// The container Docker knows as `name` (a name, an id or a unique id
    /// prefix); `None` when there is none.
    pub fn inspect(&self, name: &str) -> Result<Option<ContainerRecord>, EngineError> {
        let r = self.get(&format!("/containers/{}/json", http::query_escape(name)))?;
        match r.status {
            200 => {
                let i: Inspect = serde_json::from_slice(&r.body)
                    .map_err(|e| EngineError::Answer(format!("container {name}: {e}")))?;
                Ok(Some(ContainerRecord {
                    id: i.id,
                    name: i.name.trim_start_matches('/').to_string(),
                    image: i.config.image,
                    labels: i.config.labels.unwrap_or_default(),
                    pid: (i.state.pid > 0).then_some(i.state.pid),
                    running: i.state.running,
                    restarting: i.state.restarting,
                    restarts: i.restart_count,
                }))
            }
            404 => Ok(None),
            status => Err(EngineError::Answer(format!(
                "container {name}: {status}: {}",
                message_of(&r.body)
            ))),
        }
    }

    /// Every running container, inspected.
    pub fn running(&self) -> Result<Vec<ContainerRecord>, EngineError> {
        let r = self.get("/containers/json")?;
        if r.status != 200 {
            return Err(EngineError::Answer(format!(
                "listing containers: {}: {}",
                r.status,
                message_of(&r.body)
            )));
        }
        let listed: Vec<Listed> = serde_json::from_slice(&r.body)
            .map_err(|e| EngineError::Answer(format!("listing containers: {e}")))?;
        let mut out = Vec::new();
        for l in listed {
            // One may have gone between the list and its inspection.
            if let Some(c) = self.inspect(&l.id)? {
                out.push(c);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Follows the engine's container events (start, die, destroy) until
    /// `each` returns false or the stream ends; `only`: one container's;
    /// `since`: replaying those since this Unix time first.
    pub fn events(
        &self,
        only: Option<&str>,
        since: Option<u64>,
        mut each: impl FnMut(ContainerEvent) -> bool,
    ) -> Result<(), EngineError> {
        let mut filters = serde_json::json!({
            "type": ["container"],
            "event": ["start", "die", "destroy"],
        });
        if let Some(id) = only {
            filters["container"] = serde_json::json!([id]);
        }
        let mut path = format!(
            "/events?filters={}",
            http::query_escape(&filters.to_string())
        );
        if let Some(t) = since {
            path += &format!("&since={t}");
        }
        http::stream_lines(&self.socket, &path, |line| match parse_event(line) {
            Some(e) => each(e),
            None => true,
        })
        .map_err(|e| EngineError::Unreachable {
            socket: self.socket.clone(),
            cause: e.to_string(),
        })
    }
}

/// A container started, died or was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub action: EventAction,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Start,
    Die,
    Destroy,
}

fn parse_event(line: &str) -> Option<ContainerEvent> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let action = match v["Action"].as_str().or(v["status"].as_str())? {
        "start" => EventAction::Start,
        "die" => EventAction::Die,
        "destroy" => EventAction::Destroy,
        _ => return None,
    };
    let id = v["Actor"]["ID"].as_str().or(v["id"].as_str())?.to_string();
    Some(ContainerEvent { action, id })
}

fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<ApiMessage>(body)
        .map(|m| m.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_as_docker_20_10_writes_them() {
        let line = r#"{"status":"start","id":"58a5b6eb","from":"lt:test","Type":"container","Action":"start","Actor":{"ID":"58a5b6eb","Attributes":{"image":"lt:test","name":"shop"}},"scope":"local","time":1,"timeNano":1}"#;
        assert_eq!(
            parse_event(line),
            Some(ContainerEvent {
                action: EventAction::Start,
                id: "58a5b6eb".into()
            })
        );
        assert_eq!(
            parse_event(r#"{"Type":"container","Action":"exec_start: sh","Actor":{"ID":"x"}}"#),
            None
        );
    }
}
