//! valgrind's leak check as the oracle for a reachability scan: a fixture
//! run under valgrind asks for the check at its checkpoint
//! (`VALGRIND_DO_LEAK_CHECK`), and the same fixture run natively waits
//! there while leaktrace scans it.

use std::process::Command;

use serde_json::Value;

/// Bytes and blocks of each of valgrind's kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeakKinds {
    pub definitely: (u64, u64),
    pub indirectly: (u64, u64),
    pub possibly: (u64, u64),
    pub reachable: (u64, u64),
}

/// What valgrind's first leak check (the checkpoint's) said of `program
/// args`: the summary, and the allocating function of each definitely
/// lost record, sorted.
pub fn valgrind_leak_check(program: &str, args: &[&str]) -> (LeakKinds, Vec<String>) {
    parse_leak_check(&valgrind_stderr(program, args, &[]))
}

/// valgrind's stderr for `program args` with its leak check (every kind)
/// and `extra` options.
pub fn valgrind_stderr(program: &str, args: &[&str], extra: &[&str]) -> String {
    let out = Command::new("valgrind")
        .args(["--leak-check=full", "--show-leak-kinds=all"])
        .args(extra)
        .arg(program)
        .args(args)
        .output()
        .expect("run valgrind");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The functions of each definitely lost record's stack in valgrind's
/// stderr `text` (its `by` lines, inlined ones included), innermost first.
pub fn valgrind_lost_stacks(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("are definitely lost in loss record"))
        .map(|(i, _)| {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.contains(" at 0x") || l.contains(" by 0x"))
                .filter_map(|l| {
                    let f = l.split(": ").nth(1)?;
                    let f = f.split(" (").next().unwrap_or(f);
                    Some(f.to_string())
                })
                .collect()
        })
        .collect()
}

/// valgrind's first leak check in its stderr `text`: the summary, and the
/// allocating function of each definitely lost record, sorted.
pub fn parse_leak_check(text: &str) -> (LeakKinds, Vec<String>) {
    // Up to the end of the first summary.
    let first = text.split("suppressed:").next().expect("a leak summary");
    let amount = |kind: &str| -> (u64, u64) {
        let line = first
            .lines()
            .rev()
            .find(|l| l.contains(&format!("{kind}:")))
            .unwrap_or_else(|| panic!("no {kind:?} in valgrind's summary: {text}"));
        let nums: Vec<u64> = line
            .split(':')
            .nth(1)
            .expect("a count")
            .split_whitespace()
            .filter_map(|w| w.replace(',', "").parse().ok())
            .collect();
        (nums[0], nums[1])
    };
    let kinds = LeakKinds {
        definitely: amount("definitely lost"),
        indirectly: amount("indirectly lost"),
        possibly: amount("possibly lost"),
        reachable: amount("still reachable"),
    };
    // "N bytes in M blocks are definitely lost in loss record ..." then
    // "at 0x..: malloc (...)" and "by 0x..: FUNCTION (file:line)".
    let lines: Vec<&str> = first.lines().collect();
    let mut sites: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("are definitely lost in loss record"))
        .filter_map(|(i, _)| {
            let by = lines.get(i + 2)?;
            let f = by.split(": ").nth(1)?.split_whitespace().next()?;
            // C++ names come with their parameters: `lose_string()`.
            Some(f.split('(').next().unwrap_or(f).to_string())
        })
        .collect();
    sites.sort();
    (kinds, sites)
}

/// The kinds a report's scan found, in valgrind's terms.
pub fn scan_kinds(report: &Value) -> LeakKinds {
    let t = &report["reachability"]["totals"];
    let get = |k: &str| {
        (
            t[k]["bytes"].as_u64().expect("bytes"),
            t[k]["blocks"].as_u64().expect("blocks"),
        )
    };
    LeakKinds {
        definitely: get("definitely_lost"),
        indirectly: get("indirectly_lost"),
        possibly: get("possibly_lost"),
        reachable: get("still_reachable"),
    }
}

/// The allocating function of each record of `kind`, sorted (a record
/// for each block, as valgrind's are for blocks of distinct stacks).
pub fn scan_sites(report: &Value, kind: &str) -> Vec<String> {
    let mut out: Vec<String> = report["reachability"]["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["kind"] == kind)
        .filter_map(|r| r["frames"][0]["symbol"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// Whether a report's scan saw the fixture's checkpoint marker (made last,
/// so such a scan saw every scenario): `bytes` still reachable at
/// `function`.
pub fn scan_saw(report: &Value, function: &str, bytes: u64) -> bool {
    report["reachability"]["records"]
        .as_array()
        .is_some_and(|rs| {
            rs.iter().any(|r| {
                r["kind"] == "still_reachable"
                    && r["bytes"] == bytes
                    && r["frames"][0]["symbol"].as_str() == Some(function)
            })
        })
}
