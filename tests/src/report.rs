//! Reading and checking leaktrace's JSON reports.

use serde_json::Value;

/// Name of a frame's function without C++ parameter lists or Rust paths'
/// leading crate, for comparisons: `leak_new_array()` → `leak_new_array`.
pub fn bare(symbol: &str) -> &str {
    symbol.split('(').next().unwrap_or(symbol)
}

/// The stacks whose first frame (the allocator's caller) is `function`.
pub fn stacks_at<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .expect("stacks array")
        .iter()
        .filter(|s| s["frames"][0]["symbol"].as_str().map(bare) == Some(function))
        .collect()
}

/// The stacks with `function` anywhere in their frames.
pub fn stacks_through<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .expect("stacks array")
        .iter()
        .filter(|s| {
            s["frames"].as_array().is_some_and(|fs| {
                fs.iter()
                    .any(|f| f["symbol"].as_str().map(bare) == Some(function))
            })
        })
        .collect()
}

/// Asserts exactly one stack starts at `function`, with these totals.
pub fn assert_site(report: &Value, function: &str, bytes: u64, blocks: u64, allocator: &str) {
    let stacks = stacks_at(report, function);
    assert_eq!(
        stacks.len(),
        1,
        "expected one stack at {function}, got {}: {report}",
        stacks.len()
    );
    let s = stacks[0];
    assert_eq!(s["bytes"], bytes, "bytes at {function}: {s}");
    assert_eq!(s["blocks"], blocks, "blocks at {function}: {s}");
    assert_eq!(s["allocator"], allocator, "allocator at {function}: {s}");
}

/// Sum of bytes and blocks over stacks passing through `function`.
pub fn totals_through(report: &Value, function: &str) -> (u64, u64) {
    stacks_through(report, function)
        .iter()
        .fold((0, 0), |(b, n), s| {
            (
                b + s["bytes"].as_u64().unwrap_or(0),
                n + s["blocks"].as_u64().unwrap_or(0),
            )
        })
}

pub fn assert_nothing_dropped(report: &Value) {
    for (k, v) in report["dropped"].as_object().expect("dropped object") {
        assert_eq!(v, 0, "dropped.{k} should be 0: {report}");
    }
}

/// The value of the `/metrics` series `name` whose labels include every
/// one of `labels` (the first such line).
pub fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let has =
            |(k, v): &(&str, &str)| rest.contains(&format!("{k}=\"{}\"", v.replace('"', "\\\"")));
        labels.iter().all(has).then(|| value.parse().ok())?
    })
}

/// Goroutine groups created at `function` (the "created by" function).
pub fn goroutine_sites<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["go"]["goroutines"]
        .as_array()
        .expect("go.goroutines array")
        .iter()
        .filter(|g| g["created_by"]["symbol"].as_str() == Some(function))
        .collect()
}

pub fn goroutines_at(report: &Value, function: &str) -> u64 {
    goroutine_sites(report, function)
        .iter()
        .map(|g| g["count"].as_u64().unwrap_or(0))
        .sum()
}

pub fn census_at<'a>(report: &'a Value, function: &str) -> Option<&'a Value> {
    report["go"]["goroutines_before_attach"]
        .as_array()?
        .iter()
        .find(|g| g["created_by"]["symbol"].as_str() == Some(function))
}

/// Every creation site in a report, for "nothing else appears" checks.
pub fn creation_sites(report: &Value) -> Vec<String> {
    let mut sites: Vec<String> = report["go"]["goroutines"]
        .as_array()
        .expect("go.goroutines array")
        .iter()
        .map(|g| {
            g["created_by"]["symbol"]
                .as_str()
                .unwrap_or("??")
                .to_string()
        })
        .collect();
    sites.sort();
    sites
}

pub fn go_heap_sites(report: &Value) -> Vec<&Value> {
    report["go"]["heap_profile"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

pub fn first_function(site: &Value) -> &str {
    site["frames"][0]["symbol"].as_str().unwrap_or("?")
}

/// The frames' symbols of a site, innermost first.
pub fn frame_symbols(site: &Value) -> Vec<&str> {
    site["frames"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["symbol"].as_str()).collect())
        .unwrap_or_default()
}

/// Thread groups whose spawn stack starts at `function`.
pub fn thread_sites<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["threads"]
        .as_array()
        .expect("threads array")
        .iter()
        .filter(|t| t["frames"][0]["symbol"].as_str() == Some(function))
        .collect()
}

pub fn threads_at(report: &Value, function: &str) -> u64 {
    thread_sites(report, function)
        .iter()
        .map(|t| t["count"].as_u64().unwrap_or(0))
        .sum()
}

/// A stack's frames, one per physical frame (a function inlined into
/// another is listed first, flagged `inlined`, at its caller's address),
/// as (address, function).
pub fn physical_frames(stack: &Value) -> Vec<(u64, String)> {
    stack["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f["inlined"] != true)
        .map(|f| {
            let addr = f["address"]
                .as_str()
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .expect("frame address");
            (addr, bare(f["symbol"].as_str().unwrap_or("?")).to_string())
        })
        .collect()
}

pub fn frame_names(stack: &Value) -> Vec<String> {
    physical_frames(stack).into_iter().map(|(_, f)| f).collect()
}

/// promtool (Debian's prometheus package) accepts `metrics` as an exposition.
pub fn assert_promtool_accepts(metrics: &str) {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, installed by cargo xtask setup)");
    std::io::Write::write_all(
        &mut promtool.stdin.take().expect("stdin"),
        metrics.as_bytes(),
    )
    .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
