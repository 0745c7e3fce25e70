//! Symbolizing Go code from the executable's own function table, which,
//! unlike ELF symbols and DWARF, survives stripping.

use std::sync::Arc;

use super::{binary::GoBinary, GoTarget};
use crate::symbolize::Frame;

/// A Go executable as the symbolizer sees it, identified by inode.
#[derive(Clone)]
pub struct GoSymbols {
    pub inode: u64,
    pub binary: Arc<GoBinary>,
}

impl GoTarget {
    pub fn symbols(&self) -> GoSymbols {
        GoSymbols {
            inode: self.inode,
            binary: self.binary.clone(),
        }
    }
}

impl GoSymbols {
    /// Frames for `addr`, which lies at file `offset` in the executable,
    /// inlined functions first; `None` when the function table has nothing
    /// there (C code linked into a cgo binary).
    pub fn frames(
        &self,
        addr: u64,
        offset: u64,
        module: &Option<String>,
        location: &Option<(String, u64)>,
    ) -> Option<Vec<Frame>> {
        let found = self
            .binary
            .file_offset_to_vaddr(offset)
            .map(|vaddr| self.binary.symbolize(vaddr))
            .unwrap_or_default();
        if found.is_empty() {
            return None;
        }
        let last = found.len() - 1;
        Some(
            found
                .into_iter()
                .enumerate()
                .map(|(i, f)| Frame {
                    address: addr,
                    symbol: Some(f.function),
                    module: module.clone(),
                    file: f.file,
                    line: f.line,
                    inlined: i < last,
                    location: location.clone(),
                })
                .collect(),
        )
    }
}
