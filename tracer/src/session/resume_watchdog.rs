//! The resume watchdog: a small process of leaktrace's own that continues
//! every process the kernel stopped for leaktrace (the `STOPPED` map, see
//! `probes::stops`) if leaktrace dies before it does, even by SIGKILL, so
//! that no container process is ever left stopped.
//!
//! It is leaktrace's own binary run again (`/proc/self/exe`, so no
//! fork of a threaded process), holding the map by its kernel id and
//! reading a pipe from leaktrace: the pipe's end, however leaktrace ends,
//! is its cue. In a process group of its own, so that the terminal's
//! Ctrl-C does not reach it before leaktrace has finished.

use std::{
    io::{self, Read},
    os::unix::process::CommandExt,
    process::{Child, ChildStdin, Command, Stdio},
};

use aya::maps::{HashMap, Map, MapData};

use crate::probes::resume_all_in;

/// The first argument that makes leaktrace a watchdog.
pub const ARG: &str = "--resume-watchdog-of-map";

/// The running watchdog; dropping it ends it (it continues what is left).
pub struct Watchdog {
    pipe: Option<ChildStdin>,
    child: Child,
}

/// Starts the watchdog of the map with kernel id `map_id`, and waits until
/// it holds the map.
pub fn spawn(map_id: u32) -> io::Result<Watchdog> {
    let mut child = Command::new("/proc/self/exe")
        .arg(ARG)
        .arg(map_id.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()?;
    let pipe = child.stdin.take();
    let mut ready = [0u8; 1];
    let held = match child.stdout.take() {
        Some(mut out) => out.read(&mut ready)? == 1,
        None => false,
    };
    let watchdog = Watchdog { pipe, child };
    if !held {
        return Err(io::Error::other(
            "the resume watchdog could not open the map",
        ));
    }
    Ok(watchdog)
}

impl Drop for Watchdog {
    /// A clean end: said on the pipe, so that the watchdog does not wait
    /// for leaktrace to be gone (leaktrace waits for it).
    fn drop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = io::Write::write_all(&mut pipe, CLEAN_END);
        }
        let _ = self.child.wait();
    }
}

/// What leaktrace writes on the pipe as it ends cleanly.
const CLEAN_END: &[u8] = b"end";

/// The watchdog's whole life (`leaktrace --resume-watchdog-of-map ID`):
/// the exit code.
pub fn run(map_id: &str) -> u8 {
    let map = map_id
        .parse::<u32>()
        .ok()
        .and_then(|id| MapData::from_id(id).ok())
        .and_then(|data| Map::from_map_data(data).ok())
        .and_then(|map| HashMap::<MapData, u32, u32>::try_from(map).ok());
    let Some(map) = map else {
        eprintln!("leaktrace: error: the resume watchdog cannot open map {map_id}");
        return 2;
    };
    let mut out = io::stdout();
    if io::Write::write_all(&mut out, b"1").is_err() || io::Write::flush(&mut out).is_err() {
        return 2;
    }
    let leaktrace = std::os::unix::process::parent_id();
    // Until leaktrace closes the pipe, or dies.
    let mut said = Vec::new();
    let _ = io::stdin().read_to_end(&mut said);
    // A dying leaktrace may close the pipe before its exec tracepoint's
    // link: once it is a zombie (or gone), all of its files are closed
    // and nothing stops any more. (A clean end has removed them first.)
    while said != CLEAN_END
        && std::fs::read_to_string(format!("/proc/{leaktrace}/stat")).is_ok_and(|s| !is_zombie(&s))
        && std::os::unix::process::parent_id() == leaktrace
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let resumed = resume_all_in(map);
    if resumed > 0 {
        eprintln!(
            "leaktrace: resume watchdog: continued {resumed} processes leaktrace had stopped"
        );
    }
    0
}

/// Whether a /proc/PID/stat line says the process is a zombie (or dead).
fn is_zombie(stat: &str) -> bool {
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombies_are_told_by_their_state() {
        assert!(is_zombie("42 (leak trace) Z 1 42 42"));
        assert!(!is_zombie("42 (a) b) S 1 42 42"));
    }
}
