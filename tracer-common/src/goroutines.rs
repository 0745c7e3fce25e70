//! The Go probes' records: their attach cookies (where `runtime.g` keeps
//! what they read) and the goroutines created after attach.

use crate::shared;

/// Capacity of the Go probes' cache of creating stacks by creation site.
pub const DEFAULT_MAX_GO_SITES: u32 = 16384;

/// Attach cookie bit of a goroutine-creation probe where the new `g` is in
/// RBX (handed to `runqput`); clear means RAX (`newproc1`'s result).
pub const GO_NEW_G_IN_RBX: u64 = 1;

/// A Go probe's attach cookie: where the probed binary's `runtime.g` keeps
/// the fields the probes read, each offset in 8-byte units in a byte of its
/// own (bits 8..40; every supported version keeps them below 2 KiB), so that
/// one loaded program serves Go binaries of different versions.
pub const fn go_cookie(new_g_in_rbx: bool, g: GoConfig) -> u64 {
    (new_g_in_rbx as u64)
        | (go_offset_unit(g.goid_offset) << 8)
        | (go_offset_unit(g.gopc_offset) << 16)
        | (go_offset_unit(g.startpc_offset) << 24)
        | (go_offset_unit(g.parent_goid_offset) << 32)
}

const fn go_offset_unit(off: u32) -> u64 {
    ((off / 8) & 0xff) as u64
}

const fn go_offset_at(cookie: u64, shift: u32) -> u32 {
    (((cookie >> shift) & 0xff) as u32) * 8
}

/// The `runtime.g` offsets a Go probe's cookie carries.
pub const fn go_cookie_offsets(cookie: u64) -> GoConfig {
    GoConfig {
        goid_offset: go_offset_at(cookie, 8),
        gopc_offset: go_offset_at(cookie, 16),
        startpc_offset: go_offset_at(cookie, 24),
        parent_goid_offset: go_offset_at(cookie, 32),
    }
}

const fn go_offset_fits(off: u32) -> bool {
    off.is_multiple_of(8) && off / 8 <= 0xff
}

/// Whether the offsets fit a Go cookie (multiples of 8 below 2 KiB).
pub const fn go_offsets_fit(g: GoConfig) -> bool {
    go_offset_fits(g.goid_offset)
        && go_offset_fits(g.gopc_offset)
        && go_offset_fits(g.startpc_offset)
        && go_offset_fits(g.parent_goid_offset)
}

/// Written by userspace before attach: where the fields the probes read
/// live in this Go binary's `runtime.g` (from its DWARF, else a per-version
/// table). 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoConfig {
    pub goid_offset: u32,
    pub gopc_offset: u32,
    pub startpc_offset: u32,
    pub parent_goid_offset: u32,
}
shared!(GoConfig, 16);

/// Key of a goroutine: its process and its goid (`g` structs are reused,
/// goids never). 16 bytes, explicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoroutineKey {
    pub goid: u64,
    pub tgid: u32,
    pub _pad: u32,
}
shared!(GoroutineKey, 16);

/// A goroutine created after attach, keyed by [`GoroutineKey`]. 40 bytes,
/// no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoroutineRecord {
    /// PC of the `go` statement (the "created by" site; a return address).
    pub gopc: u64,
    /// Entry of the goroutine's function.
    pub startpc: u64,
    pub parent_goid: u64,
    /// bpf_ktime_get_ns() at creation (CLOCK_MONOTONIC).
    pub created_ns: u64,
    /// Creating stack (frame-pointer walk from the creation probe); the
    /// same for every goroutine of one creation site (gopc, startpc).
    pub stack_id: u32,
    pub _pad: u32,
}
shared!(GoroutineRecord, 40);
