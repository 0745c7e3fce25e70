//! Addresses of the runtime's data symbols that leaktrace reads out of a
//! live process. They come from `.symtab` only: a stripped binary has
//! none of them (functions survive in the pclntab, data does not).

use std::collections::HashMap;

use super::image::Sym;

pub(crate) const ALLGS: &str = "runtime.allgs";
pub(crate) const ALLGLEN: &str = "runtime.allglen";
pub(crate) const GC_CONTROLLER: &str = "runtime.gcController";
pub(crate) const MEMSTATS: &str = "runtime.memstats";
pub(crate) const MBUCKETS: &str = "runtime.mbuckets";
pub(crate) const MEM_PROFILE_RATE: &str = "runtime.MemProfileRate";
pub(crate) const WAIT_REASON_STRINGS: &str = "runtime.waitReasonStrings";

pub(crate) const NAMES: &[&str] = &[
    ALLGS,
    ALLGLEN,
    GC_CONTROLLER,
    MEMSTATS,
    MBUCKETS,
    MEM_PROFILE_RATE,
    WAIT_REASON_STRINGS,
];

/// Link-time addresses of runtime variables (`None` when stripped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeVars {
    /// `[]*g`: every goroutine ever created (slice header).
    pub allgs: Option<u64>,
    /// `uintptr`: length of allgs.
    pub allglen: Option<u64>,
    /// `gcControllerState`.
    pub gc_controller: Option<u64>,
    /// `mstats`.
    pub memstats: Option<u64>,
    /// `*bucket`: head of the memory profile's bucket list.
    pub mbuckets: Option<u64>,
    /// `int`: 0 when memory profiling is off.
    pub mem_profile_rate: Option<u64>,
    /// `[...]string`, indexed by waitReason.
    pub wait_reason_strings: Option<u64>,
    /// Number of entries of waitReasonStrings (its symbol size / 16).
    pub wait_reason_count: Option<u64>,
}

impl RuntimeVars {
    pub(crate) fn from_symbols(syms: &HashMap<&str, Sym>, ptr_size: u8) -> Self {
        let addr = |name: &str| syms.get(name).map(|s| s.addr);
        // A Go string header is two words.
        let string_size = 2 * u64::from(ptr_size);
        RuntimeVars {
            allgs: addr(ALLGS),
            allglen: addr(ALLGLEN),
            gc_controller: addr(GC_CONTROLLER),
            memstats: addr(MEMSTATS),
            mbuckets: addr(MBUCKETS),
            mem_profile_rate: addr(MEM_PROFILE_RATE),
            wait_reason_strings: addr(WAIT_REASON_STRINGS),
            wait_reason_count: syms
                .get(WAIT_REASON_STRINGS)
                .map(|s| s.size / string_size)
                .filter(|&n| n > 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_symbols() {
        let mut syms = HashMap::new();
        syms.insert(
            ALLGS,
            Sym {
                addr: 0x872f90,
                size: 24,
            },
        );
        syms.insert(
            WAIT_REASON_STRINGS,
            Sym {
                addr: 0x86e6c0,
                size: 16 * 40,
            },
        );
        let v = RuntimeVars::from_symbols(&syms, 8);
        assert_eq!(v.allgs, Some(0x872f90));
        assert_eq!(v.wait_reason_strings, Some(0x86e6c0));
        assert_eq!(v.wait_reason_count, Some(40));
        assert_eq!(v.memstats, None);
        assert_eq!(
            RuntimeVars::from_symbols(&HashMap::new(), 8),
            RuntimeVars::default()
        );
    }
}
