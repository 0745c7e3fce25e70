//! Byte offsets of the runtime struct fields leaktrace reads, and the
//! built-in per-version table used when a binary has no DWARF.
//!
//! The table was read from the DWARF of linux/amd64 builds of each Go
//! release; the offsets move between releases (1.23 and 1.24 have `goid`
//! 8 bytes later, 1.25 moved it back, 1.26 moved `parentGoid`, `gopc` and
//! `startpc` by 8 bytes, 1.25 moved `mstats.numgc`).

use std::fmt;

/// Offsets in `runtime.g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GLayout {
    pub goid: u32,
    pub gopc: u32,
    pub startpc: u32,
    pub parent_goid: u32,
    pub atomicstatus: u32,
    pub waitreason: u32,
    /// `waitsince`: when the goroutine started waiting (runtime nanotime,
    /// CLOCK_MONOTONIC), as a goroutine dump's "N minutes".
    pub waitsince: u32,
}

/// Offsets of `heapMarked` in `runtime.gcControllerState` and of `numgc`
/// in `runtime.mstats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeFields {
    pub heap_marked: u32,
    pub numgc: u32,
}

/// Where a layout came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutSource {
    Dwarf,
    /// The built-in table for go1.`minor`.
    VersionTable {
        minor: u32,
    },
}

impl fmt::Display for LayoutSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutSource::Dwarf => f.write_str("DWARF"),
            LayoutSource::VersionTable { minor } => write!(f, "built-in table for go1.{minor}"),
        }
    }
}

/// One row of the table.
struct Row {
    minor: u32,
    g: GLayout,
    fields: RuntimeFields,
}

const fn row(minor: u32, g: [u32; 7], fields: [u32; 2]) -> Row {
    Row {
        minor,
        g: GLayout {
            goid: g[0],
            gopc: g[1],
            startpc: g[2],
            parent_goid: g[3],
            atomicstatus: g[4],
            waitreason: g[5],
            waitsince: g[6],
        },
        fields: RuntimeFields {
            heap_marked: fields[0],
            numgc: fields[1],
        },
    }
}

/// linux/amd64. g: goid, gopc, startpc, parentGoid, atomicstatus,
/// waitreason, waitsince; then gcControllerState.heapMarked, mstats.numgc.
const TABLE: &[Row] = &[
    row(21, [152, 280, 296, 272, 144, 176, 168], [152, 7704]),
    row(22, [152, 280, 296, 272, 144, 176, 168], [152, 7704]),
    row(23, [160, 288, 304, 280, 152, 184, 176], [152, 7704]),
    row(24, [160, 288, 304, 280, 152, 184, 176], [152, 7704]),
    row(25, [152, 280, 296, 272, 144, 176, 168], [152, 7680]),
    row(26, [152, 288, 304, 280, 144, 176, 168], [152, 7680]),
    row(27, [152, 288, 304, 280, 144, 176, 168], [152, 7680]),
];

/// The minor release number of a Go version string: 25 for "go1.25.5",
/// "go1.25rc1" or "devel go1.25-abcdef ...".
pub fn go_minor(version: &str) -> Option<u32> {
    let at = version.find("go1.")?;
    let digits: String = version[at + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The built-in layouts for go1.`minor`.
pub fn table(minor: u32) -> Option<(GLayout, RuntimeFields)> {
    TABLE
        .iter()
        .find(|r| r.minor == minor)
        .map(|r| (r.g, r.fields))
}

/// The Go releases the table covers, for messages.
pub fn table_range() -> (u32, u32) {
    let min = TABLE.iter().map(|r| r.minor).min().unwrap_or(0);
    let max = TABLE.iter().map(|r| r.minor).max().unwrap_or(0);
    (min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions() {
        assert_eq!(go_minor("go1.25.5"), Some(25));
        assert_eq!(go_minor("go1.21.13"), Some(21));
        assert_eq!(go_minor("go1.26rc1"), Some(26));
        assert_eq!(go_minor("go1.24.11 X:boringcrypto"), Some(24));
        assert_eq!(go_minor("devel go1.27-abcdef Tue Jan 1"), Some(27));
        assert_eq!(go_minor("go2"), None);
        assert_eq!(go_minor(""), None);
    }

    #[test]
    fn table_lookup() {
        let (g, _) = table(21).expect("1.21 is in the table");
        assert_eq!(g.goid, 152);
        let (g, _) = table(23).expect("1.23 is in the table");
        assert_eq!(g.goid, 160);
        assert!(table(20).is_none());
        assert!(table(99).is_none());
        assert_eq!(table_range(), (21, 27));
    }

    #[test]
    fn every_row_is_consistent() {
        for r in TABLE {
            // goid follows atomicstatus and stackLock (two u32s).
            assert_eq!(r.g.goid, r.g.atomicstatus + 8, "go1.{}", r.minor);
            assert!(r.g.parent_goid < r.g.gopc && r.g.gopc < r.g.startpc);
        }
    }

    #[test]
    fn display() {
        assert_eq!(LayoutSource::Dwarf.to_string(), "DWARF");
        assert_eq!(
            LayoutSource::VersionTable { minor: 25 }.to_string(),
            "built-in table for go1.25"
        );
    }
}
