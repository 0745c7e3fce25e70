//! Addresses of the runtime's data symbols that leaktrace reads out of a
//! live process: from `.symtab`, or, in a stripped binary, from the code
//! that uses them ([`CodeRefs`]).

use std::collections::HashMap;

use super::{code_refs::CodeRefs, image::Sym};

pub(crate) const ALLGPTR: &str = "runtime.allgptr";
pub(crate) const ALLGLEN: &str = "runtime.allglen";
pub(crate) const GC_CONTROLLER: &str = "runtime.gcController";
pub(crate) const MEMSTATS: &str = "runtime.memstats";
pub(crate) const MBUCKETS: &str = "runtime.mbuckets";
pub(crate) const MEM_PROFILE_RATE: &str = "runtime.MemProfileRate";
pub(crate) const WAIT_REASON_STRINGS: &str = "runtime.waitReasonStrings";
pub(crate) const DISABLE_MEMORY_PROFILING: &str = "runtime.disableMemoryProfiling";
pub(crate) const WORK: &str = "runtime.work";
pub(crate) const GOMAXPROCS: &str = "runtime.gomaxprocs";
pub(crate) const SCHED: &str = "runtime.sched";

pub(crate) const NAMES: &[&str] = &[
    ALLGPTR,
    ALLGLEN,
    GC_CONTROLLER,
    MEMSTATS,
    MBUCKETS,
    MEM_PROFILE_RATE,
    WAIT_REASON_STRINGS,
    DISABLE_MEMORY_PROFILING,
    WORK,
    GOMAXPROCS,
    SCHED,
];

/// Link-time addresses of runtime variables (`None`: not found).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeVars {
    /// `**g`: `&allgs[0]`, the array of every goroutine ever created.
    pub allgptr: Option<u64>,
    /// `uintptr`: length of that array.
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
    /// `bool`: 1 when the linker found no use of the memory profile and had
    /// the runtime set `MemProfileRate` to 0 at start.
    pub disable_memory_profiling: Option<u64>,
    /// `runtime.work` (`workType`): the GC's state, where Go 1.26+ keep the
    /// goroutine leak detector's trigger.
    pub work: Option<u64>,
    /// `int32`: GOMAXPROCS.
    pub gomaxprocs: Option<u64>,
    /// `schedt`: the scheduler (its count of system goroutines).
    pub sched: Option<u64>,
}

impl RuntimeVars {
    pub(crate) fn from_symbols(syms: &HashMap<&str, Sym>, ptr_size: u8) -> Self {
        let addr = |name: &str| syms.get(name).map(|s| s.addr);
        // A Go string header is two words.
        let string_size = 2 * u64::from(ptr_size);
        RuntimeVars {
            allgptr: addr(ALLGPTR),
            allglen: addr(ALLGLEN),
            gc_controller: addr(GC_CONTROLLER),
            memstats: addr(MEMSTATS),
            mbuckets: addr(MBUCKETS),
            mem_profile_rate: addr(MEM_PROFILE_RATE),
            wait_reason_strings: addr(WAIT_REASON_STRINGS),
            disable_memory_profiling: addr(DISABLE_MEMORY_PROFILING),
            work: addr(WORK),
            gomaxprocs: addr(GOMAXPROCS),
            sched: addr(SCHED),
            wait_reason_count: syms
                .get(WAIT_REASON_STRINGS)
                .map(|s| s.size / string_size)
                .filter(|&n| n > 0),
        }
    }

    /// Fills what the symbols did not give from the code that uses it.
    pub(crate) fn complete_from(&mut self, code: &CodeRefs<'_>) {
        if self.allgptr.is_none() || self.allglen.is_none() {
            if let Some((allglen, allgptr)) = code.allg() {
                self.allglen = Some(allglen);
                self.allgptr = Some(allgptr);
            }
        }
        if self.wait_reason_strings.is_none() {
            if let Some((table, len)) = code.wait_reason_strings() {
                self.wait_reason_strings = Some(table);
                self.wait_reason_count = Some(len);
            }
        }
        self.gc_controller = self.gc_controller.or_else(|| code.gc_controller());
        self.memstats = self.memstats.or_else(|| code.memstats());
        self.mbuckets = self.mbuckets.or_else(|| code.mbuckets());
        self.mem_profile_rate = self.mem_profile_rate.or_else(|| code.mem_profile_rate());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_symbols() {
        let mut syms = HashMap::new();
        syms.insert(
            ALLGPTR,
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
        assert_eq!(v.allgptr, Some(0x872f90));
        assert_eq!(v.wait_reason_strings, Some(0x86e6c0));
        assert_eq!(v.wait_reason_count, Some(40));
        assert_eq!(v.memstats, None);
        assert_eq!(
            RuntimeVars::from_symbols(&HashMap::new(), 8),
            RuntimeVars::default()
        );
    }
}
