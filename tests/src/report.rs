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
