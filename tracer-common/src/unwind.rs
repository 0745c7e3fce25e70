//! Unwind tables shared by userspace (which builds them from each mapped
//! object's `.eh_frame`) and the probes (which walk user stacks with them).
//!
//! Three tables: rows (one per address range of an object, sorted by
//! address, each naming a rule), rules (how to find the caller's frame,
//! deduplicated across objects: real code needs a few hundred), and per
//! traced process its executable mappings (which rows cover which address
//! range).

use crate::shared;

/// How to find the canonical frame address (CFA) and the caller's return
/// address (at CFA − 8) from a frame's registers.
pub mod cfa {
    /// No unwind information covers the address (a gap between FDEs, or a
    /// rule leaktrace cannot follow): the walk stops, flagged.
    pub const NONE: u8 = 0;
    /// CFA = rsp + offset.
    pub const RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const RBP: u8 = 2;
    /// A PLT entry: CFA = rsp + offset, plus 8 once `pc & 15 >= extra`
    /// (GCC's `.plt` expression).
    pub const PLT: u8 = 3;
    /// CFA = *(rsp + offset) + extra (stack realignment).
    pub const DEREF_RSP: u8 = 4;
    /// CFA = *(rbp + offset) + extra.
    pub const DEREF_RBP: u8 = 5;
    /// A signal trampoline: the interrupted registers are in the
    /// `ucontext_t` the kernel pushed at rsp.
    pub const SIGNAL: u8 = 6;
    /// The outermost frame (return address undefined: `_start`,
    /// `clone`'s child, `start_thread`): the walk ends here, complete.
    pub const ROOT: u8 = 7;
    /// A rule leaktrace does not follow (CFA in another register, an
    /// unknown expression, the return address not at CFA − 8).
    pub const UNSUPPORTED: u8 = 8;
}

/// Where the caller's rbp is, after a frame's rule.
pub mod rbp {
    /// Not saved by this frame: the caller's rbp is the current one.
    pub const SAME: u8 = 0;
    /// Saved at CFA + `rbp_offset`.
    pub const AT_CFA: u8 = 1;
    /// Saved somewhere leaktrace does not follow: rbp is unknown from here
    /// on (a later rbp-based rule stops the walk).
    pub const LOST: u8 = 2;
}

/// One row: from `pc` (an ELF virtual address of the object) up to the next
/// row's, frames unwind by `rules[rule]`. 8 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    pub rule: u16,
    pub _reserved: u16,
}
shared!(UnwindRow, 8);

/// A deduplicated unwind rule. 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRule {
    /// One of [`cfa`].
    pub cfa: u8,
    /// One of [`rbp`].
    pub rbp: u8,
    pub _pad: u16,
    pub cfa_offset: i32,
    pub rbp_offset: i32,
    /// PLT threshold or the post-dereference addend (see [`cfa`]).
    pub extra: i32,
}
shared!(UnwindRule, 16);

/// How the frames of one mapping are walked.
pub mod walk {
    /// No unwind information and no frame pointers to trust: stop, flagged.
    pub const NONE: u32 = 0;
    /// By the mapping's rows.
    pub const TABLE: u32 = 1;
    /// By frame pointers (Go code, which always keeps them).
    pub const FRAME_POINTER: u32 = 2;
}

/// One executable mapping of a traced process. 40 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    /// Runtime address minus ELF virtual address.
    pub bias: u64,
    /// The object's rows: `rows[row_base .. row_base + row_count]`.
    pub row_base: u32,
    pub row_count: u32,
    /// One of [`walk`].
    pub walk: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<UnwindMapping>() == 40);

/// Executable mappings per traced process, sorted by start.
pub const MAX_UNWIND_MAPPINGS: usize = 256;

/// Offsets in the running kernel's structs (from its BTF) that lead from
/// the current task to its return-probe trampoline (the address that
/// stands in for a real return address on the user stack while a return
/// probe is pending) and to the real addresses. 32 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReturnProbeOffsets {
    /// `task_struct.mm`.
    pub mm: u32,
    /// `mm_struct.uprobes_state.xol_area`.
    pub xol_area: u32,
    /// `xol_area.vaddr`: the trampoline.
    pub xol_vaddr: u32,
    pub _pad: u32,
    /// `task_struct.utask`.
    pub utask: u32,
    /// `uprobe_task.return_instances`.
    pub instances: u32,
    /// `return_instance.orig_ret_vaddr`.
    pub orig_ret: u32,
    /// `return_instance.next`.
    pub next: u32,
}

/// A traced process's executable mappings. 8 + 32 + 256×40 bytes, no
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessMappings {
    pub count: u32,
    /// Unique per table userspace publishes: the probes' per-CPU cache of
    /// looked-up return addresses ([`CachedStep`]) is valid for one
    /// generation only, so a rewritten table (dlopen) is never answered
    /// from the old one.
    pub generation: u32,
    pub offsets: ReturnProbeOffsets,
    pub mappings: [UnwindMapping; MAX_UNWIND_MAPPINGS],
}
shared!(ProcessMappings, 40 + 40 * MAX_UNWIND_MAPPINGS);

impl Default for ProcessMappings {
    fn default() -> Self {
        ProcessMappings {
            count: 0,
            generation: 0,
            offsets: ReturnProbeOffsets::default(),
            mappings: [UnwindMapping::default(); MAX_UNWIND_MAPPINGS],
        }
    }
}

/// What the probes found for one return address of one mapping table: a
/// per-CPU direct-mapped cache entry, so the common frames (the same few
/// hundred call sites, over and over) skip both binary searches. 16 bytes,
/// no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedStep {
    /// The looked-up address (the call instruction's, or an exact pc).
    pub pc: u64,
    /// [`ProcessMappings::generation`] of the table it was found in.
    pub generation: u32,
    /// One of [`walk`].
    pub walk: u16,
    /// The rule, when `walk` is [`walk::TABLE`].
    pub rule: u16,
}
const _: () = assert!(core::mem::size_of::<CachedStep>() == 16);

/// Entries of the per-CPU step cache (a power of two): 64 KiB per CPU.
pub const UNWIND_CACHE_ENTRIES: u32 = 1 << 12;

/// Distinct rules the kernel table holds.
pub const MAX_UNWIND_RULES: u32 = 1 << 14;
/// Default capacity of the row table (8 MiB).
pub const DEFAULT_MAX_UNWIND_ROWS: u32 = 1 << 20;
/// Slots of per-process mappings the kernel table holds (two per traced
/// process: one live, one being rewritten). 10 KiB each.
pub const MAX_UNWIND_PROCESSES: u32 = 256;

/// Why a recorded stack ends ([`crate::StackRecord::end`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackEnd {
    /// At the outermost frame: the stack is whole.
    Complete = 0,
    /// Frame pointers walked to a null frame pointer (`--unwind fp`, and
    /// Go code): whole as far as frame pointers tell.
    FramePointers = 1,
    /// `MAX_STACK_DEPTH` frames recorded and more remained.
    DepthLimit = 2,
    /// An address in an object without unwind information for it.
    NoTable = 3,
    /// An address in no mapping leaktrace knows of (JIT code, or an object
    /// mapped since the last rescan).
    NoMapping = 4,
    /// The stack memory could not be read.
    Unreadable = 5,
    /// A rule leaktrace cannot follow (a register-based CFA, a lost rbp).
    Unsupported = 6,
}

impl StackEnd {
    pub const ALL: [StackEnd; 7] = [
        StackEnd::Complete,
        StackEnd::FramePointers,
        StackEnd::DepthLimit,
        StackEnd::NoTable,
        StackEnd::NoMapping,
        StackEnd::Unreadable,
        StackEnd::Unsupported,
    ];

    pub fn from_u32(v: u32) -> Option<StackEnd> {
        StackEnd::ALL.get(v as usize).copied()
    }

    /// Whether a stack ending so is missing frames for a known reason.
    pub fn is_cut_short(self) -> bool {
        !matches!(self, StackEnd::Complete | StackEnd::FramePointers)
    }

    /// Short name, as the JSON schema spells it.
    pub fn name(self) -> &'static str {
        match self {
            StackEnd::Complete => "complete",
            StackEnd::FramePointers => "frame-pointers",
            StackEnd::DepthLimit => "depth-limit",
            StackEnd::NoTable => "no-unwind-table",
            StackEnd::NoMapping => "unknown-mapping",
            StackEnd::Unreadable => "unreadable-stack",
            StackEnd::Unsupported => "unsupported-rule",
        }
    }
}
