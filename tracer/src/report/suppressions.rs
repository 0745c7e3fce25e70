//! `--suppressions FILE`: LeakSanitizer's suppression format, which
//! heaptrack reads too. One rule per line, `leak:PATTERN`; `#` starts a
//! comment. A pattern is matched as a substring, `*` matches any run, a
//! leading `^` / trailing `$` anchor it; a site is suppressed when any of
//! its frames (inlined ones included) matches by function, source file or
//! module.

use std::path::Path;

use crate::symbolize::Frame;

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("--suppressions {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--suppressions {path}:{line}: `{text}` is not a rule (expected leak:PATTERN)")]
    Syntax {
        path: String,
        line: usize,
        text: String,
    },
}

/// The rules of one file.
#[derive(Debug, Clone, Default)]
pub struct Suppressions {
    pub patterns: Vec<String>,
}

impl Suppressions {
    pub fn load(path: &Path) -> Result<Self, SuppressionError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SuppressionError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, SuppressionError> {
        let mut patterns = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some(("leak", p)) if !p.trim().is_empty() => patterns.push(p.trim().to_string()),
                _ => {
                    return Err(SuppressionError::Syntax {
                        path: path.to_string(),
                        line: i + 1,
                        text: line.to_string(),
                    })
                }
            }
        }
        Ok(Suppressions { patterns })
    }

    /// The first rule matching any frame of `frames`.
    pub fn matching(&self, frames: &[Frame]) -> Option<&str> {
        self.patterns
            .iter()
            .find(|p| frames.iter().any(|f| frame_matches(p, f)))
            .map(String::as_str)
    }
}

fn frame_matches(pattern: &str, f: &Frame) -> bool {
    let fields = [
        f.symbol.as_deref(),
        f.file.as_deref(),
        f.module.as_deref(),
        f.location.as_ref().map(|(path, _)| path.as_str()),
    ];
    fields
        .into_iter()
        .flatten()
        .any(|s| template_matches(pattern, s))
}

/// LeakSanitizer's template rule: literal pieces between `*`s found in
/// order; `^` pins the first piece to the start, `$` the last to the end.
pub fn template_matches(pattern: &str, s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let (at_start, p) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (at_end, p) = match p.strip_suffix('$') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    let pieces: Vec<&str> = p.split('*').collect();
    let last = pieces.len() - 1;
    let mut pos = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let rest = &s[pos..];
        if i == last && at_end {
            // The last piece ends the string, after everything before it.
            return rest.ends_with(piece) && (i > 0 || !at_start || rest.len() == piece.len());
        }
        if piece.is_empty() {
            continue;
        }
        if i == 0 && at_start {
            if !rest.starts_with(piece) {
                return false;
            }
            pos += piece.len();
            continue;
        }
        match rest.find(piece) {
            Some(at) => pos += at + piece.len(),
            None => return false,
        }
    }
    true
}

/// What a report left out because of suppressions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suppressed {
    pub sites: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// Per rule that matched: (pattern, sites, bytes), in file order.
    pub by_rule: Vec<(String, u64, u64)>,
}

impl Suppressed {
    pub fn add(&mut self, rule: &str, blocks: u64, bytes: u64) {
        self.sites += 1;
        self.blocks += blocks;
        self.bytes += bytes;
        match self.by_rule.iter_mut().find(|(r, _, _)| r == rule) {
            Some(e) => {
                e.1 += 1;
                e.2 += bytes;
            }
            None => self.by_rule.push((rule.to_string(), 1, bytes)),
        }
    }
}

impl Suppressed {
    /// `2 site(s), 4.0 KiB in 8 block(s): leak:rule 2 site(s) 4096 B`.
    pub fn summary(&self) -> String {
        let rules: Vec<String> = self
            .by_rule
            .iter()
            .map(|(rule, sites, held)| format!("leak:{rule} {sites} site(s) {held} B"))
            .collect();
        format!(
            "{} site(s), {} in {} block(s){}{}",
            self.sites,
            super::bytes(self.bytes),
            self.blocks,
            if rules.is_empty() { "" } else { ": " },
            rules.join(", ")
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sites": self.sites,
            "blocks": self.blocks,
            "bytes": self.bytes,
            "rules": self.by_rule.iter().map(|(rule, sites, bytes)| serde_json::json!({
                "pattern": rule,
                "sites": sites,
                "bytes": bytes,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_like_leaksanitizer() {
        assert!(template_matches("make_node", "list_make_node"));
        assert!(template_matches("^make", "make_node"));
        assert!(!template_matches("^node", "make_node"));
        assert!(template_matches("node$", "make_node"));
        assert!(!template_matches("make$", "make_node"));
        assert!(template_matches("^make_node$", "make_node"));
        assert!(!template_matches("^make_node$", "make_node2"));
        assert!(template_matches("m*e_n*e", "make_node"));
        assert!(template_matches(
            "^/lib*/ld-linux-*.so.2$",
            "/lib64/ld-linux-x86-64.so.2"
        ));
        assert!(!template_matches(
            "^/lib*/ld-linux-*.so.2$",
            "/lib64/ld-linux-x86-64.so.3"
        ));
        assert!(template_matches("*", "x"));
        assert!(!template_matches("x", ""));
        assert!(template_matches("ab*$", "abc"));
    }

    #[test]
    fn files_parse_with_comments_and_reject_other_rules() {
        let s = Suppressions::parse("# known\nleak:cache_init\n\n  leak:^libfoo  \n", "f")
            .expect("parses");
        assert_eq!(s.patterns, ["cache_init", "^libfoo"]);
        let e = Suppressions::parse("leak:a\nrace:b\n", "f").expect_err("race: is not ours");
        assert!(e.to_string().contains("f:2"), "{e}");
    }
}
