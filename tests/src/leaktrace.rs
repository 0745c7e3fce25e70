//! Running the real `leaktrace` binary and reading its JSON reports.

use std::{
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::*;

/// A running `leaktrace` with its stdout parsed as JSON lines.
pub struct Leaktrace {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Leaktrace {
    /// Starts leaktrace with `args` (JSON output is added) and, unless it
    /// fails early, waits until its probes are attached.
    pub fn start(args: &[&str]) -> Leaktrace {
        Leaktrace::start_with_env(args, &[])
    }

    /// [`Leaktrace::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Leaktrace {
        let mut child = Command::new(leaktrace_bin())
            .envs(env.iter().copied())
            .args(["--format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start leaktrace");
        let stdout = line_reader(child.stdout.take().expect("piped"));
        let stderr = line_reader(child.stderr.take().expect("piped"));
        let mut lt = Leaktrace {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        };
        lt.wait_stderr_any(&[
            "leaktrace: tracing pid",
            "leaktrace: tracing the whole kernel",
        ]);
        lt
    }

    /// The "tracing pid …" line printed on attach (what is probed).
    pub fn banner(&self) -> &str {
        self.stderr_seen
            .iter()
            .find(|l| l.starts_with("leaktrace: tracing pid"))
            .map_or("", String::as_str)
    }

    /// Attaches to `pid`.
    pub fn attach(pid: u32, extra: &[&str]) -> Leaktrace {
        Leaktrace::attach_with_env(pid, extra, &[])
    }

    /// [`Leaktrace::attach`] with extra environment variables.
    pub fn attach_with_env(pid: u32, extra: &[&str], env: &[(&str, &str)]) -> Leaktrace {
        let pid = pid.to_string();
        let mut args = vec!["--pid", pid.as_str()];
        args.extend_from_slice(extra);
        Leaktrace::start_with_env(&args, env)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line starting with `prefix`, printed already or
    /// waited for.
    pub fn stderr_line(&mut self, prefix: &str) -> String {
        match self.stderr_seen.iter().find(|l| l.starts_with(prefix)) {
            Some(l) => l.clone(),
            None => self.wait_stderr(prefix),
        }
    }

    pub fn wait_stderr(&mut self, prefix: &str) -> String {
        self.wait_stderr_any(&[prefix])
    }

    /// The next stderr line starting with one of `prefixes`.
    pub fn wait_stderr_any(&mut self, prefixes: &[&str]) -> String {
        let prefix = prefixes;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if prefix.iter().any(|p| line.starts_with(p)) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "leaktrace never printed {prefix:?}; stderr so far: {:?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// The next JSON report.
    pub fn next_report(&mut self) -> Value {
        match self.stdout.recv_timeout(REPORT_TIMEOUT) {
            Ok(line) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            }
            Err(RecvTimeoutError::Timeout) => panic!("no report within {REPORT_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "leaktrace stopped reporting; stderr: {:?}",
                    self.drain_stderr()
                )
            }
        }
    }

    /// Reports until one satisfies `pred` (or the timeout passes).
    pub fn report_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + REPORT_TIMEOUT;
        loop {
            let r = self.next_report();
            if pred(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "no matching report; last: {r}");
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn drain_stderr(&mut self) -> Vec<String> {
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(l);
        }
        self.stderr_seen.clone()
    }

    /// Waits for exit; returns the status, the remaining reports and stderr.
    pub fn finish(mut self) -> (ExitStatus, Vec<Value>, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait leaktrace") {
                break s;
            }
            assert!(Instant::now() < deadline, "leaktrace did not exit");
            thread::sleep(Duration::from_millis(50));
        };
        let mut reports = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(2)) {
            reports.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            );
        }
        let stderr = self.drain_stderr();
        (status, reports, stderr)
    }
}

impl Drop for Leaktrace {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs leaktrace to completion with `args`, no JSON flag added.
pub fn run_leaktrace(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(leaktrace_bin())
        .args(args)
        .output()
        .expect("run leaktrace");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
