//! Outstanding bytes by stack as folded stacks (flamegraph.pl, speedscope,
//! inferno) and as an SVG flame graph in the memory palette.

use inferno::flamegraph::{self, color::BasicPalette, Options, Palette};

use super::{ExportError, HeapSource, Profiles};
use crate::symbolize::Frame;

/// The root frame Go heap samples hang under, so a mixed (cgo) target's
/// graph keeps the runtime's sampled heap apart from traced malloc.
const GO_HEAP_ROOT: &str = "[go heap, sampled]";
/// Kernel memory (`--kernel`) under a root of its own.
const KERNEL_ROOT: &str = "[kernel]";

/// One line per stack with outstanding bytes, `root;…;leaf BYTES`, sorted
/// (inferno needs sorted input).
pub fn folded(profiles: &Profiles) -> Vec<String> {
    let mut lines: Vec<String> = profiles
        .heap
        .iter()
        .filter(|s| s.inuse_bytes > 0)
        .map(|s| {
            let mut names: Vec<String> = s.frames.iter().rev().map(frame_name).collect();
            match s.source {
                HeapSource::Go => names.insert(0, GO_HEAP_ROOT.to_string()),
                HeapSource::Kernel => names.insert(0, KERNEL_ROOT.to_string()),
                HeapSource::Malloc => {}
            }
            if names.is_empty() {
                names.push("[unknown]".to_string());
            }
            format!("{} {}", names.join(";"), s.inuse_bytes)
        })
        .collect();
    lines.sort();
    lines
}

/// A frame as folded stacks name it: the function, else module and
/// address; never a `;` (the separator) or whitespace run that could be
/// read as the count.
fn frame_name(f: &Frame) -> String {
    let name = match (&f.symbol, &f.location) {
        (Some(s), _) => s.clone(),
        (None, Some((path, offset))) => format!("[{}+{offset:#x}]", short(path)),
        (None, None) => format!("[{:#x}]", f.address),
    };
    name.replace(';', ":").replace(char::is_whitespace, " ")
}

fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The SVG of `folded` (from [`folded`]).
pub fn svg(folded: &[String], profiles: &Profiles) -> Result<Vec<u8>, ExportError> {
    let mut options = Options::default();
    options.colors = Palette::Basic(BasicPalette::Mem);
    options.count_name = "bytes".to_string();
    options.title = format!(
        "leaktrace: {}, outstanding longer than {} s",
        profiles.subject(),
        profiles.older_than.as_secs_f64()
    );
    options.deterministic = true;
    if folded.is_empty() {
        // inferno draws nothing from no stacks; the file still says so.
        return Ok(format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"24\" text-anchor=\"middle\">{}</text><text x=\"600\" y=\"48\" text-anchor=\"middle\">nothing outstanding</text></svg>\n",
            options.title
        )
        .into_bytes());
    }
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, folded.iter().map(String::as_str), &mut out)
        .map_err(|e| ExportError::Flamegraph(e.to_string()))?;
    Ok(out)
}
