//! uprobe-multi links (`BPF_TRACE_UPROBE_MULTI`, Linux 6.6+): one program
//! attached at many offsets of one file by one link, which aya 0.14 does
//! not create.
//!
//! Why not one perf-event uprobe per function, as aya attaches them:
//! removing such a probe waits for the kernel's RCU grace periods under a
//! global mutex, about 85 ms per probe here, one after the other (2.2 s for
//! a C target's 26 probes); a multi link removes all of its probes behind
//! one wait. The programs are loaded for it
//! (`UProbe::load_for_uprobe_multi`, our patch of aya: vendor/README.md).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `BPF_LINK_CREATE`'s command number and attach type, and the flag of a
/// return probe (include/uapi/linux/bpf.h).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// The `link_create` member of `union bpf_attr` as a uprobe-multi link
/// reads it. 64 bytes; the kernel takes a shorter attr as long as what it
/// does not see would be zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreateUprobeMulti {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

/// Where one link attaches its program.
pub struct MultiPoints<'a> {
    /// The probed file.
    pub path: &'a Path,
    /// File offsets of the probed instructions.
    pub offsets: Vec<u64>,
    /// The attach cookie at each offset.
    pub cookies: Vec<u64>,
    /// Return probes (at function entries) rather than plain ones.
    pub returns: bool,
    /// Only this process (tgid), or every process mapping the file.
    pub pid: Option<u32>,
}

/// Attaches `prog` at every point; the link lives as long as the fd.
pub fn attach(prog: BorrowedFd<'_>, points: &MultiPoints<'_>) -> io::Result<OwnedFd> {
    if points.offsets.is_empty() || points.offsets.len() != points.cookies.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no offsets, or not one cookie per offset",
        ));
    }
    let path = CString::new(points.path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = LinkCreateUprobeMulti {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        path: path.as_ptr() as u64,
        offsets: points.offsets.as_ptr() as u64,
        cookies: points.cookies.as_ptr() as u64,
        cnt: points.offsets.len() as u32,
        multi_flags: if points.returns {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        },
        pid: points.pid.unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `attr` (size given) and the path, offsets and
    // cookies it points to, all alive until it returns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateUprobeMulti,
            std::mem::size_of::<LinkCreateUprobeMulti>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout_matches_the_kernels() {
        // link_create: four u32, then the uprobe_multi member at 16.
        assert_eq!(std::mem::size_of::<LinkCreateUprobeMulti>(), 64);
        assert_eq!(std::mem::offset_of!(LinkCreateUprobeMulti, path), 16);
        assert_eq!(std::mem::offset_of!(LinkCreateUprobeMulti, cnt), 48);
        assert_eq!(std::mem::offset_of!(LinkCreateUprobeMulti, pid), 56);
    }
}
