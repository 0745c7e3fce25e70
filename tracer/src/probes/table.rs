//! `--list-probes`: where each probe goes in a target, and what each hit
//! costs by the kind of instruction under it.

use std::io::{self, Write};

use crate::placement::{self, Placement};
use crate::{
    golang::GoTarget,
    process::allocator::{Allocator, ProbeFn},
};

/// One probe point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRow {
    pub function: String,
    pub object: String,
    /// File offset of the function's entry, when known.
    pub entry: Option<u64>,
    pub probe: Placement,
    /// A return probe shares the point.
    pub with_return: bool,
}

/// Every probe point leaktrace attaches for this allocator and Go target.
pub fn rows(alloc: &Allocator, go: Option<&GoTarget>) -> Vec<ProbeRow> {
    let mut out = Vec::new();
    for object in &alloc.objects {
        for site in &object.sites {
            out.push(ProbeRow {
                function: site.names.clone(),
                object: object.display.clone(),
                entry: Some(site.offset),
                probe: site.probe.clone(),
                with_return: site.func != ProbeFn::Free,
            });
        }
        for spawn in &object.spawns {
            out.push(ProbeRow {
                function: spawn.name.to_string(),
                object: object.display.clone(),
                entry: Some(spawn.offset),
                probe: spawn.probe.clone(),
                with_return: false,
            });
        }
    }
    if let Some(go) = go {
        let data = std::fs::read(&go.path).unwrap_or_default();
        for point in go.probe_plan().points {
            out.push(ProbeRow {
                function: point.function.to_string(),
                object: go.display.clone(),
                entry: point.entry,
                probe: placement::at(&data, point.offset),
                with_return: false,
            });
        }
    }
    out
}

/// Writes the rows as a table.
pub fn write(out: &mut impl Write, rows: &[ProbeRow]) -> io::Result<()> {
    writeln!(
        out,
        "{:<48} {:<11} {:<28} {:<15} object",
        "function", "offset", "instruction", "kernel"
    )?;
    for r in rows {
        let offset = match r.entry {
            Some(e) => format!("+{:#x}", r.probe.offset.wrapping_sub(e)),
            None => format!("{:#x}", r.probe.offset),
        };
        let kernel = if r.probe.emulated {
            "emulated"
        } else {
            "single-stepped"
        };
        let function = if r.with_return {
            format!("{} (+return)", r.function)
        } else {
            r.function.clone()
        };
        writeln!(
            out,
            "{function:<48} {offset:<11} {:<28} {kernel:<15} {}",
            r.probe.instruction, r.object
        )?;
    }
    Ok(())
}
