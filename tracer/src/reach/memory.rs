//! What the mark reads: the target's memory, and what its mappings say
//! about an address (for the multiple-inheritance heuristic's vtables).

use crate::process::procfs::Mapping;

/// Memory of a stopped process (or a test's picture of one).
pub trait Memory {
    /// Fills `buf` from `addr`; false if any of it cannot be read.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;

    /// How `addr` is mapped: `None` when it is not.
    fn mapping(&self, addr: u64) -> Option<MappingKind>;

    /// Fills `buf` with the `ranges` (address, length) one after another;
    /// false if any of it cannot be read.
    fn read_many(&mut self, ranges: &[(u64, usize)], buf: &mut [u8]) -> bool {
        let mut at = 0;
        for &(addr, len) in ranges {
            let Some(part) = buf.get_mut(at..at + len) else {
                return false;
            };
            if !self.read(addr, part) {
                return false;
            }
            at += len;
        }
        true
    }

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

/// The most iovecs one `process_vm_readv` takes (Linux's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// A live process's memory, read with `process_vm_readv` (no copy through
/// the kernel's page cache, no file offset to seek), its mappings from
/// /proc/PID/maps as read once when the process was stopped.
pub struct ProcessMemory {
    pid: u32,
    maps: Vec<Mapping>,
}

impl ProcessMemory {
    pub fn new(pid: u32, maps: Vec<Mapping>) -> Self {
        ProcessMemory { pid, maps }
    }

    pub fn maps(&self) -> &[Mapping] {
        &self.maps
    }
}

impl Memory for ProcessMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: one local iovec over `buf`, which outlives the call; the
        // remote address is only read by the kernel, in the target.
        let n = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        n == buf.len() as isize
    }

    /// One system call for up to `IOV_MAX` blocks: the mark reads them in
    /// batches (a call per block would cost more than the copy).
    fn read_many(&mut self, ranges: &[(u64, usize)], buf: &mut [u8]) -> bool {
        let total: usize = ranges.iter().map(|r| r.1).sum();
        if ranges.len() > IOV_MAX || total != buf.len() {
            return false;
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote: Vec<libc::iovec> = ranges
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: one local iovec over `buf`, as long as all the remote
        // ones together, both outliving the call; the remote addresses are
        // only read by the kernel, in the target.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid as i32,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        n == total as isize
    }

    fn mapping(&self, addr: u64) -> Option<MappingKind> {
        let i = self
            .maps
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        let m = &self.maps[i];
        m.contains(addr).then(|| MappingKind {
            file: m.path.is_some(),
            readable: m.readable,
            executable: m.executable,
            end: m.end,
        })
    }
}
