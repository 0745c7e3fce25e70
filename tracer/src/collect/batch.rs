//! Reading a whole BPF hash map in a few system calls
//! (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): iterating it as aya does costs two
//! calls an entry (next key, lookup), 0.6 s for a quarter million blocks,
//! all of it with a reachability scan's target stopped.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_MAP_LOOKUP_BATCH`, from `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call (more when a bucket holds more).
const FIRST_COUNT: u32 = 8192;

/// `union bpf_attr`'s `batch` member. 56 bytes, no implicit padding.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `fd` whose keys are `K` and values `V`
/// (plain C structs, valid for any bytes; `V` of the map's value size).
/// An error when the kernel has no batch lookup (the caller iterates).
pub fn lookup_all<K: Copy, V: Copy>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut count = FIRST_COUNT;
    // The hash map's batch token is a bucket index (u32): room for it.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let mut keys = vec![0u8; count as usize * size_of::<K>()];
        let mut values = vec![0u8; count as usize * size_of::<V>()];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with a batch attribute whose buffers hold
        // `count` keys and values and outlive the call; the kernel writes
        // at most that many, and the batch token into `token_out`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket with more entries than asked for: ask for more.
            Some(libc::ENOSPC) if attr.count == 0 => {
                count = count.saturating_mul(2);
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        for i in 0..attr.count.min(count) as usize {
            // SAFETY: entry i of buffers the kernel filled; K and V are
            // plain C structs valid for any bytes, read unaligned.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * size_of::<V>()).cast::<V>()),
                )
            };
            out.push((k, v));
        }
        if err.is_some() {
            // ENOENT: that was the last of them.
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}
