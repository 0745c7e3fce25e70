//! The engine's news of containers starting, dying and being removed, on a
//! thread of its own (its stream is a blocking read), handed to the
//! supervisor's loop through a channel.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::process::engine::{ContainerEvent, Docker};

/// What the watch thread hands over.
pub enum News {
    Event(ContainerEvent),
    /// The stream broke: restarts and new containers are no longer seen.
    Lost(String),
}

/// Starts following `docker`'s events (`only`: one container's), replaying
/// those of the last seconds so that nothing between the caller's look at
/// the engine and this subscription is missed.
pub fn watch(docker: &Docker, only: Option<String>) -> std::io::Result<UnboundedReceiver<News>> {
    let (tx, rx) = unbounded_channel();
    let docker = docker.clone();
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(2))
        .ok();
    std::thread::Builder::new()
        .name("engine-events".into())
        .spawn(move || {
            let outcome =
                docker.events(only.as_deref(), since, |e| tx.send(News::Event(e)).is_ok());
            let why = match outcome {
                Ok(()) => "the engine closed its event stream".to_string(),
                Err(e) => e.to_string(),
            };
            let _ = tx.send(News::Lost(why));
        })?;
    Ok(rx)
}
