//! Runtime struct layouts from the binary's own DWARF: the Go linker emits
//! every runtime type as a DW_TAG_structure_type named "runtime.g" etc.
//! whose DW_TAG_member children carry DW_AT_data_member_location.

use std::{borrow::Cow, collections::HashMap};

use gimli::{AttributeValue, EndianSlice, LittleEndian, SectionId};
use object::{Object, ObjectSection};

use super::layout::{GLayout, RuntimeFields};

const G: &str = "runtime.g";
const GC_CONTROLLER: &str = "runtime.gcControllerState";
const MSTATS: &str = "runtime.mstats";

/// The members of each wanted struct that we need.
const WANTED: &[(&str, &[&str])] = &[
    (
        G,
        &[
            "goid",
            "gopc",
            "startpc",
            "parentGoid",
            "atomicstatus",
            "waitreason",
            "waitsince",
        ],
    ),
    (GC_CONTROLLER, &["heapMarked"]),
    (MSTATS, &["numgc"]),
];

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("cannot decompress {section}: {reason}")]
    Section {
        section: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Parse(#[from] gimli::Error),
}

/// What the DWARF told us; a `None` means a struct or one of its members
/// was not found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DwarfLayouts {
    pub g: Option<GLayout>,
    pub fields: Option<RuntimeFields>,
}

/// Whether the file has DWARF type information at all.
pub(crate) fn present(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info").is_some()
}

/// Reads the layouts. Only the sections a type lookup touches are
/// decompressed (Go compresses its .debug_* sections).
pub(crate) fn layouts(file: &object::File<'_>) -> Result<DwarfLayouts, DwarfError> {
    let load = |id: SectionId| -> Result<Cow<'_, [u8]>, DwarfError> {
        let needed = matches!(
            id,
            SectionId::DebugInfo
                | SectionId::DebugAbbrev
                | SectionId::DebugStr
                | SectionId::DebugStrOffsets
                | SectionId::DebugLineStr
        );
        if !needed {
            return Ok(Cow::Borrowed(&[]));
        }
        match file.section_by_name(id.name()) {
            Some(s) => s.uncompressed_data().map_err(|e| DwarfError::Section {
                section: id.name(),
                reason: e.to_string(),
            }),
            None => Ok(Cow::Borrowed(&[])),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let members = struct_members(&dwarf)?;
    Ok(assemble(&members))
}

type Members = HashMap<&'static str, HashMap<&'static str, u64>>;

/// Offsets of the wanted members of the wanted structs, by struct name.
fn struct_members(
    dwarf: &gimli::Dwarf<EndianSlice<'_, LittleEndian>>,
) -> Result<Members, DwarfError> {
    let mut found: Members = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let abbrevs = dwarf.abbreviations(&header)?;
        let mut cursor = header.entries(&abbrevs);
        // The wanted struct we are inside of, and its depth.
        let mut inside: Option<(&'static str, &'static [&'static str], isize)> = None;
        while let Some(entry) = cursor.next_dfs()? {
            let depth = entry.depth();
            if let Some((_, _, d)) = inside {
                if depth <= d {
                    inside = None;
                }
            }
            let tag = entry.tag();
            if let Some((sname, wanted, d)) = inside {
                if depth == d + 1 && tag == gimli::DW_TAG_member {
                    let Some(name) = name(dwarf, entry) else {
                        continue;
                    };
                    if let Some(&m) = wanted.iter().find(|&&m| m.as_bytes() == name) {
                        let off = entry
                            .attr_value(gimli::DW_AT_data_member_location)
                            .and_then(|v| v.udata_value());
                        if let Some(off) = off {
                            found.entry(sname).or_default().insert(m, off);
                        }
                    }
                }
                continue;
            }
            if tag != gimli::DW_TAG_structure_type || !entry.has_children() {
                continue;
            }
            let Some(name) = name(dwarf, entry) else {
                continue;
            };
            if let Some(&(sname, wanted)) = WANTED
                .iter()
                .find(|(s, _)| s.as_bytes() == name && !found.contains_key(s))
            {
                inside = Some((sname, wanted, depth));
            }
        }
        if WANTED.iter().all(|(s, _)| found.contains_key(s)) {
            // Each struct is described once; no need to read further units.
            break;
        }
    }
    Ok(found)
}

/// DW_AT_name as bytes, whether inline or in .debug_str.
fn name<'d>(
    dwarf: &gimli::Dwarf<EndianSlice<'d, LittleEndian>>,
    entry: &gimli::DebuggingInformationEntry<EndianSlice<'d, LittleEndian>>,
) -> Option<&'d [u8]> {
    match entry.attr_value(gimli::DW_AT_name)? {
        AttributeValue::String(s) => Some(s.slice()),
        AttributeValue::DebugStrRef(off) => dwarf.debug_str.get_str(off).ok().map(|s| s.slice()),
        AttributeValue::DebugLineStrRef(off) => {
            dwarf.debug_line_str.get_str(off).ok().map(|s| s.slice())
        }
        _ => None,
    }
}

/// Turns member offsets into layouts; all members of a struct must be there.
fn assemble(members: &Members) -> DwarfLayouts {
    let off = |s: &str, m: &str| -> Option<u32> {
        members
            .get(s)
            .and_then(|ms| ms.get(m))
            .and_then(|&o| u32::try_from(o).ok())
    };
    let g = (|| {
        Some(GLayout {
            goid: off(G, "goid")?,
            gopc: off(G, "gopc")?,
            startpc: off(G, "startpc")?,
            parent_goid: off(G, "parentGoid")?,
            atomicstatus: off(G, "atomicstatus")?,
            waitreason: off(G, "waitreason")?,
            waitsince: off(G, "waitsince")?,
        })
    })();
    let fields = (|| {
        Some(RuntimeFields {
            heap_marked: off(GC_CONTROLLER, "heapMarked")?,
            numgc: off(MSTATS, "numgc")?,
        })
    })();
    DwarfLayouts { g, fields }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assemble_needs_every_member() {
        let mut m: Members = HashMap::new();
        let g: HashMap<&'static str, u64> = [
            ("goid", 152),
            ("gopc", 280),
            ("startpc", 296),
            ("parentGoid", 272),
            ("atomicstatus", 144),
        ]
        .into_iter()
        .collect();
        m.insert(G, g);
        m.insert(GC_CONTROLLER, [("heapMarked", 40)].into_iter().collect());
        m.insert(MSTATS, [("numgc", 256)].into_iter().collect());
        let l = assemble(&m);
        assert_eq!(l.g, None, "waitreason is missing");
        assert_eq!(
            l.fields,
            Some(RuntimeFields {
                heap_marked: 40,
                numgc: 256
            })
        );
        m.get_mut(G).map(|g| g.insert("waitreason", 176));
        assert_eq!(assemble(&m).g, None, "waitsince is missing");
        m.get_mut(G).map(|g| g.insert("waitsince", 168));
        let l = assemble(&m);
        assert_eq!(
            l.g.map(|g| (g.goid, g.waitreason, g.waitsince)),
            Some((152, 176, 168))
        );
    }
}
