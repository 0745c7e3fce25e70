//! Reading leaktrace's pprof files with the real `go tool pprof`.

use crate::*;

/// The Go toolchain whose `go tool pprof` reads leaktrace's profiles.
pub const PPROF_GO: &str = GO_1_27;

/// `go tool pprof -top` of `source` with `args`: (flat, name) per line,
/// every node kept.
pub fn pprof_top(source: &str, args: &[&str]) -> Vec<(String, String)> {
    let out = go_command(PPROF_GO)
        .args([
            "tool",
            "pprof",
            "-top",
            "-nodefraction=0",
            "-nodecount=10000",
        ])
        .args(args)
        .arg(source)
        .output()
        .expect("go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {source}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, String)> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 6).then(|| (cols[0].to_string(), cols[5..].join(" ")))
        })
        .collect();
    assert!(
        !rows.is_empty() || text.contains("Total samples = 0"),
        "{text}"
    );
    rows
}

/// The flat value of `function` in [`pprof_top`]'s rows.
pub fn flat_of(rows: &[(String, String)], function: &str) -> Option<String> {
    rows.iter()
        .find(|(_, name)| name == function)
        .map(|(flat, _)| flat.clone())
}
