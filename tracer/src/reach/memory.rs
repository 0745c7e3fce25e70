//! What the mark reads: the target's memory, and what its mappings say
//! about an address (for the multiple-inheritance heuristic's vtables).

/// Memory of a stopped process (or a test's picture of one).
pub trait Memory {
    /// Fills `buf` from `addr`; false if any of it cannot be read.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;

    /// How `addr` is mapped: `None` when it is not.
    fn mapping(&self, addr: u64) -> Option<MappingKind>;

    /// One aligned word at `addr`.
    fn word(&mut self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// What valgrind's vtable test asks of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingKind {
    /// Backed by a file (a vtable lives in an object's read-only data).
    pub file: bool,
    pub readable: bool,
    pub executable: bool,
    /// Where the mapping ends (exclusive).
    pub end: u64,
}
