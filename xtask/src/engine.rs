//! The Docker engine the container tests run against: Debian's docker.io,
//! started for the suite when no daemon runs, and stopped again after.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const SOCKET: &str = "/var/run/docker.sock";

/// A daemon this run started (stopped on drop), or none.
pub struct Engine(Option<Child>);

fn answers() -> bool {
    Command::new("/usr/bin/docker")
        .args(["-H", &format!("unix://{SOCKET}"), "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure an engine answers on Docker's socket.
pub fn ensure(root: &Path) -> Result<Engine> {
    if answers() {
        return Ok(Engine(None));
    }
    let log = root.join("target/dockerd.log");
    let out = std::fs::File::create(&log).context("dockerd's log")?;
    eprintln!("xtask: starting dockerd (log: {})", log.display());
    let child = Command::new("/usr/sbin/dockerd")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("cannot start /usr/sbin/dockerd (cargo xtask setup installs docker.io)")?;
    let engine = Engine(Some(child));
    // Waits for the daemon's own answer, not for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers() {
        if Instant::now() > deadline {
            bail!("dockerd did not answer within 60 s (see {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(engine)
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SIGTERM: dockerd stops its containers and containerd.
            // SAFETY: plain kill(2) on our own child's PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
