//! valgrind as an oracle for the final report: one command run under
//! valgrind (memcheck) and under leaktrace in launch mode, with everything
//! that would make the two runs allocate differently taken away, must hold
//! the same heap at exit, to the byte and to the block; and leaktrace's
//! reachability scan at exit must find what valgrind's leak check finds
//! definitely lost, within 1 %, at no site valgrind does not call lost.
//!
//! What differs between the runs unless equalized:
//! - The environment. Debian's `/usr/bin/valgrind` is a shell script that
//!   exports `LD_LIBRARY_PATH`, `GLIBCPP_FORCE_NEW` and `GLIBCXX_FORCE_NEW`
//!   (and its shell adds `PWD`), and valgrind adds `LD_PRELOAD`. Programs
//!   copy their environment (gdb and perl copy every string, `setenv` grows
//!   `environ` by 8 bytes a variable), so leaktrace's run gets exactly the
//!   environment valgrind's client sees, read by running `env` under
//!   valgrind, with `LD_PRELOAD` renamed to `LT_PRELOAD`: same strings, same
//!   sizes, nothing preloaded.
//! - Whatever depends on the run rather than the program: see
//!   [`BASE_ENV`].
//! - What valgrind itself changes in its client, which no environment
//!   equalizes (the gdb test shows both): valgrind 3.19 leaves
//!   `AT_MINSIGSTKSZ` out of the client's auxiliary vector, so
//!   `sysconf(_SC_SIGSTKSZ)` is smaller under it, and GLib lays out its hash
//!   tables wider when it detects valgrind.
//!
//! Both runs have stdin /dev/null, stdout and stderr pipes, and the same
//! working directory.

use std::{
    ffi::OsString,
    fs,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

use crate::*;

/// memcheck with its leak check at exit (every kind, default heuristics),
/// without freeing the C and C++ runtimes' internal buffers at exit
/// (glibc's `__libc_freeres`, libstdc++'s emergency pool): a native
/// process never frees them, and leaktrace's final report is what the
/// process holds when it exits.
pub const VALGRIND_FLAGS: &[&str] = &[
    "--leak-check=full",
    "--show-leak-kinds=all",
    "--run-libc-freeres=no",
    "--run-cxx-freeres=no",
];

/// The whole environment of both runs (plus `HOME`, a directory of the
/// test's own), fixed so that a run does not depend on who starts it:
/// - `TERM` names no terminfo entry: at the end of a lookup that finds one,
///   ncurses (readline's, in gdb) frees its cached list of terminfo
///   directories if the clock's second changed since it built the list
///   (`_nc_last_db`), which in the slower valgrind run happened about one
///   time in ten; a lookup that finds nothing keeps the list.
/// - `G_SLICE=always-malloc`: GLib's slice allocator hands out blocks from
///   pages of its own, except under valgrind, where it goes to malloc by
///   itself.
/// - `PYTHONDONTWRITEBYTECODE`: a first run that writes `.pyc` files
///   allocates differently from the runs that read them.
/// - `PYTHONHASHSEED`, `PERL_HASH_SEED`, `PERL_PERTURB_KEYS`: hashing
///   seeded per process would place keys, and so grow tables, differently
///   in each run.
pub const BASE_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/bin:/bin"),
    ("LC_ALL", "C"),
    ("TERM", "leaktrace-no-terminfo"),
    ("G_SLICE", "always-malloc"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("PYTHONHASHSEED", "0"),
    ("PERL_HASH_SEED", "0"),
    ("PERL_PERTURB_KEYS", "0"),
];

/// What a process still holds when it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InUse {
    pub bytes: u64,
    pub blocks: u64,
}

impl InUse {
    /// `self - other`, bytes and blocks, signed.
    pub fn minus(self, other: InUse) -> (i64, i64) {
        (
            self.bytes as i64 - other.bytes as i64,
            self.blocks as i64 - other.blocks as i64,
        )
    }
}

/// One command, to run under valgrind and under leaktrace alike.
pub struct OracleCommand {
    program: PathBuf,
    args: Vec<String>,
    home: PathBuf,
    cwd: PathBuf,
}

impl OracleCommand {
    /// `program` (a full path: the same file in both runs, whatever `PATH`
    /// finds) with `args`; `name` names its fresh, empty `HOME`
    /// (target/oracle/NAME, the same path in both runs), which is also its
    /// working directory unless [`OracleCommand::current_dir`] says
    /// otherwise.
    pub fn new(name: &str, program: &str, args: &[&str]) -> OracleCommand {
        assert!(
            Path::new(program).is_absolute(),
            "{program}: give the full path"
        );
        let home = oracle_dir(name);
        OracleCommand {
            program: PathBuf::from(program),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: home.clone(),
            home,
        }
    }

    pub fn current_dir(mut self, dir: &Path) -> OracleCommand {
        self.cwd = dir.to_path_buf();
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    fn base_env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = BASE_ENV
            .iter()
            .map(|&(k, v)| (k.into(), v.into()))
            .collect();
        env.push(("HOME".into(), self.home.clone().into_os_string()));
        env
    }

    fn valgrind_command(&self) -> Command {
        let mut cmd = Command::new("valgrind");
        cmd.env_clear()
            .envs(self.base_env())
            .current_dir(&self.cwd)
            .stdin(Stdio::null());
        cmd
    }

    /// The environment valgrind gives its client here, in its order, with
    /// `LD_PRELOAD` renamed to `LT_PRELOAD` (same length: same sizes).
    pub fn client_env(&self) -> Vec<OsString> {
        let out = self
            .valgrind_command()
            .args(["-q", "/usr/bin/env", "-0"])
            .output()
            .expect("run valgrind env");
        assert!(out.status.success(), "valgrind env: {}", stderr_of(&out));
        let env: Vec<OsString> = out
            .stdout
            .split(|&b| b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.strip_prefix(b"LD_PRELOAD=") {
                Some(v) => OsString::from_vec([b"LT_PRELOAD=", v].concat()),
                None => OsString::from_vec(kv.to_vec()),
            })
            .collect();
        assert!(
            env.iter()
                .any(|kv| kv.as_bytes().starts_with(b"LT_PRELOAD=")),
            "valgrind's client has no LD_PRELOAD: {env:?}"
        );
        env
    }

    /// valgrind's "in use at exit" for one run.
    pub fn valgrind(&self) -> InUse {
        self.valgrind_run().in_use
    }

    /// What valgrind says of one run at its exit.
    pub fn valgrind_run(&self) -> ValgrindRun {
        let out = self
            .valgrind_command()
            .args(VALGRIND_FLAGS)
            .arg(&self.program)
            .args(&self.args)
            .output()
            .expect("run valgrind");
        let stderr = stderr_of(&out);
        assert!(
            out.status.success(),
            "{} under valgrind: {}\n{stderr}",
            self.program.display(),
            out.status
        );
        let in_use = parse_in_use_at_exit(&stderr)
            .unwrap_or_else(|| panic!("no \"in use at exit\" in valgrind's output:\n{stderr}"));
        // With nothing in use it says so instead of a leak summary.
        let (leaks, definitely_lost_at) = match in_use.blocks {
            0 => (LeakKinds::default(), Vec::new()),
            _ => parse_leak_check(&stderr),
        };
        ValgrindRun {
            in_use,
            leaks,
            definitely_lost_at,
        }
    }

    /// leaktrace's final report on one run, started with the environment
    /// valgrind's client sees, showing at most `top` sites; and its totals.
    pub fn leaktrace(&self, top: usize) -> (InUse, Value) {
        // env(1) sets the variables in the order given (Command would sort
        // them); leaktrace passes its environment on to the command as is.
        let out = Command::new("/usr/bin/env")
            .env_clear()
            .arg("-i")
            .args(self.client_env())
            .arg(leaktrace_bin())
            .args(["--older-than", "0", "--format", "json", "-i", "3600"])
            // The scan at exit, whatever it takes on a busy machine.
            .args(["--reachability", "--scan-deadline", "60s"])
            .args(["--top", &top.to_string(), "--"])
            .arg(&self.program)
            .args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .output()
            .expect("run leaktrace");
        let stderr = stderr_of(&out);
        assert!(
            out.status.success(),
            "{} under leaktrace: {}\n{stderr}",
            self.program.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = final_report(&stdout)
            .unwrap_or_else(|| panic!("no final report on stdout:\n{stdout}\nstderr:\n{stderr}"));
        assert_nothing_dropped(&report);
        let in_use = InUse {
            bytes: report["live_bytes"].as_u64().expect("live_bytes"),
            blocks: report["live_blocks"].as_u64().expect("live_blocks"),
        };
        (in_use, report)
    }

    /// Runs both and asserts they agree: the heap in use at exit exactly,
    /// what is definitely lost to 1 % ([`assert_lost_like`]); returns the
    /// heap in use.
    pub fn assert_same_heap(&self) -> InUse {
        let run = self.valgrind_run();
        let valgrind = run.in_use;
        let (leaktrace, report) = self.leaktrace(usize::MAX);
        println!(
            "{} {}: valgrind {valgrind:?}, leaktrace {leaktrace:?}",
            self.program.display(),
            self.args.join(" ")
        );
        assert_eq!(
            leaktrace,
            valgrind,
            "{} {}: leaktrace's final report against valgrind's in use at exit",
            self.program.display(),
            self.args.join(" ")
        );
        assert_lost_like(&report, &run, 1);
        leaktrace
    }
}

/// What valgrind said of a run at its exit.
#[derive(Debug, Clone)]
pub struct ValgrindRun {
    pub in_use: InUse,
    pub leaks: LeakKinds,
    /// The allocating function of each definitely lost record, sorted.
    pub definitely_lost_at: Vec<String>,
}

/// Asserts that leaktrace's scan at exit (in `report`, its final report)
/// found what valgrind's leak check of its own run found definitely
/// lost: never more than 1 % more bytes, never `fewer_percent` % fewer,
/// and nothing lost at a site where valgrind found none (blocks valgrind
/// calls reachable would be there).
pub fn assert_lost_like(report: &Value, valgrind: &ValgrindRun, fewer_percent: i64) {
    let scan = &report["reachability"];
    assert_eq!(scan["at_exit"], true, "a scan at exit: {scan}");
    assert_eq!(scan["complete"], true, "the scan at exit: {scan}");
    let kinds = scan_kinds(report);
    println!(
        "leaktrace at exit {kinds:?}\nvalgrind at exit {:?}",
        valgrind.leaks
    );
    let (lt, vg) = (
        kinds.definitely.0 as i64,
        valgrind.leaks.definitely.0 as i64,
    );
    assert!(
        (lt - vg) * 100 <= vg && (vg - lt) * 100 <= vg * fewer_percent,
        "definitely lost: leaktrace {lt} B, valgrind {vg} B \
         (allowed: 1 % more, {fewer_percent} % fewer)"
    );
    let mut ours = scan_sites(report, "definitely_lost");
    ours.dedup();
    let theirs = &valgrind.definitely_lost_at;
    let elsewhere: Vec<&String> = ours.iter().filter(|f| !theirs.contains(f)).collect();
    assert!(
        elsewhere.is_empty(),
        "leaktrace finds blocks definitely lost at {elsewhere:?}, where valgrind finds none \
         (valgrind's sites: {theirs:?})"
    );
}

/// target/oracle/NAME, empty.
pub fn oracle_dir(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/oracle").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the oracle directory");
    dir
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// "==123==     in use at exit: 1,234 bytes in 5 blocks" → 1234 bytes, 5
/// blocks.
pub fn parse_in_use_at_exit(valgrind_stderr: &str) -> Option<InUse> {
    let line = valgrind_stderr
        .lines()
        .find_map(|l| l.split_once("in use at exit: ").map(|(_, rest)| rest))?;
    let number = |s: &str| s.replace(',', "").parse::<u64>().ok();
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        [bytes, "bytes", "in", blocks, "blocks"] => Some(InUse {
            bytes: number(bytes)?,
            blocks: number(blocks)?,
        }),
        _ => None,
    }
}

/// The last final heap report on leaktrace's stdout, which the command
/// writes to as well: its output may even end a line without a newline,
/// with the report after it on the same line.
pub fn final_report(stdout: &str) -> Option<Value> {
    stdout.lines().rev().find_map(|line| {
        line.match_indices('{').find_map(|(i, _)| {
            serde_json::from_str::<Value>(&line[i..])
                .ok()
                .filter(|v| v["type"] == "heap_report" && v["final"] == true)
        })
    })
}

/// A fixture's first line of output as a number, run natively or under
/// valgrind.
pub fn fixture_number(name: &str, under_valgrind: bool) -> u64 {
    let mut cmd = if under_valgrind {
        let mut c = Command::new("valgrind");
        c.arg("-q").arg(fixtures().path(name));
        c
    } else {
        Command::new(fixtures().path(name))
    };
    let out = cmd.output().expect("run the fixture");
    assert!(out.status.success(), "{name}: {}", stderr_of(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} printed no number: {stdout:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_valgrinds_summary() {
        let stderr = "==42== HEAP SUMMARY:\n\
                      ==42==     in use at exit: 2,553,799 bytes in 5,444 blocks\n\
                      ==42==   total heap usage: 14,861 allocs, 9,417 frees\n";
        assert_eq!(
            parse_in_use_at_exit(stderr),
            Some(InUse {
                bytes: 2553799,
                blocks: 5444
            })
        );
        assert_eq!(
            parse_in_use_at_exit("==1==     in use at exit: 0 bytes in 0 blocks"),
            Some(InUse {
                bytes: 0,
                blocks: 0
            })
        );
        assert_eq!(parse_in_use_at_exit("no summary"), None);
    }

    #[test]
    fn finds_the_final_report_after_the_commands_output() {
        let stdout = "hello\n\
                      {\"type\":\"heap_report\",\"final\":false,\"live_bytes\":1}\n\
                      no newline{\"type\":\"heap_report\",\"final\":true,\"live_bytes\":2}\n\
                      {\"type\":\"other\",\"final\":true}\n";
        assert_eq!(final_report(stdout).expect("report")["live_bytes"], 2);
        assert!(final_report("{\"type\":\"heap_report\",\"final\":false}").is_none());
    }
}
