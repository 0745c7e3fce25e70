//! A fixture process speaking the "ready / leak / leaked" stdin protocol,
//! on the host or in a test container.

use std::{
    fs,
    io::Write,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use crate::*;

/// A fixture process speaking the "ready / leak / leaked" stdin protocol.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    /// The fixture's PID as seen from here (the host, for a container).
    pub pid: u32,
    container: Option<TestContainer>,
}

impl Fixture {
    /// A process started elsewhere (a Go service), read line by line from
    /// `stdout`, with no stdin protocol.
    pub(crate) fn from_child(child: Child, stdout: Receiver<String>) -> Fixture {
        let pid = child.id();
        Fixture {
            child,
            stdin: None,
            stdout,
            pid,
            container: None,
        }
    }

    /// Starts `name` with `args` and waits for its "ready" line.
    pub fn start(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_with_env(name, args, &[])
    }

    /// As [`Fixture::start`], with extra environment variables.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Fixture {
        let child = Command::new(fixtures().path(name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start fixture {name}: {e}"));
        let pid = child.id();
        Fixture::ready(child, pid, None)
    }

    /// Wraps a started fixture process (`pid`: the fixture itself, which
    /// may be a child of `child`) once it has printed "ready".
    pub(crate) fn ready(child: Child, pid: u32, container: Option<TestContainer>) -> Fixture {
        let mut f = Fixture::speaking(child, pid, container);
        f.expect_line("ready");
        f
    }

    /// A fixture process past its "ready" line (re-attached to), spoken
    /// to through `child`'s pipes.
    pub(crate) fn speaking(
        mut child: Child,
        pid: u32,
        container: Option<TestContainer>,
    ) -> Fixture {
        let stdout = line_reader(child.stdout.take().expect("piped stdout"));
        Fixture {
            stdin: child.stdin.take(),
            child,
            stdout,
            pid,
            container,
        }
    }

    /// Starts `name` inside a new [`TestContainer`]; `pid` is its host PID.
    pub fn in_container(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_in_container(name, args, false, &[])
    }

    /// As [`Fixture::in_container`], with the fixtures `extra` in the
    /// container's /app too (programs it execs).
    pub fn in_container_with(name: &str, args: &[&str], extra: &[&str]) -> Fixture {
        Fixture::start_in_container(name, args, false, extra)
    }

    /// As [`Fixture::in_container`], with the fixture's debug info split
    /// off the way distributions ship it: the binary stripped of symbols
    /// and DWARF, the debug file only inside the container, under
    /// /usr/lib/debug/.build-id/.
    pub fn in_container_split_debug(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_in_container(name, args, true, &[])
    }

    fn start_in_container(name: &str, args: &[&str], split_debug: bool, extra: &[&str]) -> Fixture {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = workspace_root().join(format!(
            "target/containers/{name}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&root);
        for dir in ["lib64", "lib", "app"] {
            fs::create_dir_all(root.join(dir)).expect("container dirs");
        }
        // Copies: other inodes than the host's, and libc at a path the host
        // does not have.
        fs::copy(
            "/lib64/ld-linux-x86-64.so.2",
            root.join("lib64/ld-linux-x86-64.so.2"),
        )
        .expect("copy loader");
        fs::copy(
            "/lib/x86_64-linux-gnu/libc.so.6",
            root.join("lib/libc.so.6"),
        )
        .expect("copy libc");
        let app = root.join("app").join(name);
        fs::copy(fixtures().path(name), &app).expect("copy fixture");
        for other in extra {
            fs::copy(fixtures().path(other), root.join("app").join(other)).expect("copy fixture");
        }
        if split_debug {
            split_debug_info(&app, &root);
        }

        let id = container_id();
        let child = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child"])
            .arg(format!("--root={}", root.display()))
            .arg(format!("/app/{name}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start unshare");
        let pid = first_child(child.id());
        let cgroup = cgroup2_root().and_then(|cg2| {
            let dir = cg2
                .join("leaktrace-tests")
                .join(format!("docker-{id}.scope"));
            fs::create_dir_all(&dir).ok()?;
            fs::write(dir.join("cgroup.procs"), pid.to_string()).ok()?;
            Some(dir)
        });
        Fixture::ready(child, pid, Some(TestContainer { id, root, cgroup }))
    }

    /// Starts another `name` process (its binary must be in the container:
    /// the fixture it was created with) inside this fixture's container, the
    /// way `docker exec` does: entering its mount and PID namespaces and
    /// root, and joining its cgroup.
    pub fn exec_in_container(&self, name: &str, args: &[&str]) -> Fixture {
        let container = self.container.as_ref().expect("a container fixture");
        // Into the container's cgroup before the exec, as runc does: a
        // shell joins it, then becomes nsenter, whose child inherits it.
        let join = match &container.cgroup {
            Some(cg) => format!("echo $$ > {}/cgroup.procs && ", cg.display()),
            None => String::new(),
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{join}exec nsenter \"$@\""))
            .arg("sh")
            .args(["--target", &self.pid.to_string()])
            .args(["--mount", "--pid", "--root", "--wd"])
            .arg(format!("/app/{name}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start nsenter");
        // nsenter forks to enter the PID namespace: the fixture is its child.
        let pid = first_child(child.id());
        Fixture::ready(child, pid, None)
    }

    /// The container this fixture runs in, if any.
    pub fn container(&self) -> Option<&TestContainer> {
        self.container.as_ref()
    }

    /// Whether the container got a runtime-style cgroup.
    pub fn container_cgroup(&self) -> bool {
        self.container.as_ref().is_some_and(|c| c.cgroup.is_some())
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to fixture");
        stdin.flush().expect("flush fixture stdin");
    }

    /// The next line the fixture prints, if one comes within `wait`.
    pub fn next_line(&mut self, wait: Duration) -> Option<String> {
        self.stdout.recv_timeout(wait).ok()
    }

    pub fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("fixture {} never printed {prefix:?}: {e}", self.pid),
            }
        }
    }

    /// Sends `cmd` and waits for the acknowledgement line `ack`.
    pub fn command(&mut self, cmd: &str, ack: &str) {
        self.send(cmd);
        self.expect_line(ack);
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait fixture")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The state letter of process `pid` (/proc/PID/stat), if it exists.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}
