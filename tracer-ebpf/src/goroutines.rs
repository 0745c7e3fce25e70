//! Goroutine tracking for Go targets: which goroutines exist, where each
//! was created, and when.
//!
//! Creation is seen right after `runtime.newproc1` made the new `g`, never
//! with a uretprobe (Go moves goroutine stacks, and a hijacked return
//! address would crash the program): where `newproc.func1` hands it to
//! `runqput` in RBX, or where another caller gets it back in RAX (the attach
//! cookie says which; userspace finds the points by disassembly). The `g`
//! has goid, gopc, startpc and parentGoid set and is not yet runnable, so
//! its exit cannot race ahead of the record. Exit is seen at the entry of
//! `runtime.gdestroy` (`goexit0` on Go 1.21), `gp` in RAX. Go's register ABI
//! is not the C one: registers are read directly, not through `ctx.arg()`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_probe_read_user,
        generated::{
            bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_user as raw_read_user,
        },
    },
    macros::{map, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
    EbpfContext,
};
use tracer_common::{
    go_cookie_offsets, Counter, GoConfig, GoroutineKey, GoroutineRecord, DEFAULT_MAX_GOROUTINES,
    DEFAULT_MAX_GO_SITES, GO_NEW_G_IN_RBX, STACK_UNKNOWN,
};

use crate::{
    counters::count,
    traced,
    walker::{walk_for, WalkFor, FOR_GOROUTINE},
};

#[map]
static GOROUTINES: HashMap<GoroutineKey, GoroutineRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_GOROUTINES, BPF_F_NO_PREALLOC);

/// Creating stack by (gopc, startpc, tgid): reports show one stack per creation
/// site (`go` statement and function), so a site's first stack serves for
/// every goroutine it creates after it, and the walk (the bulk of this
/// probe's cost: Go stacks run deep) is done once per site. A full cache
/// only means walking again.
#[map]
static SITE_STACKS: HashMap<[u64; 3], u32> =
    HashMap::with_max_entries(DEFAULT_MAX_GO_SITES, BPF_F_NO_PREALLOC);

#[inline(always)]
fn read_u64(base: u64, offset: u32) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copes with any address; failure is an Err.
    unsafe { bpf_probe_read_user((base + offset as u64) as *const u64) }.ok()
}

/// Bytes of a `g` read at once: its four fields lie within about 200
/// bytes on every supported Go version.
const G_SPAN: usize = 256;

/// Per-CPU copy of the part of a new `g` holding its fields.
#[map]
static G_COPY: PerCpuArray<[u8; G_SPAN]> = PerCpuArray::with_max_entries(1, 0);

/// The new goroutine's (goid, gopc, startpc, parentGoid), with one user
/// copy where the fields lie within [`G_SPAN`] bytes (a user copy costs
/// mostly its fixed part, so one of 200 bytes costs about what one of 8
/// does), else four reads.
#[inline(always)]
fn g_fields(g: u64, cfg: &GoConfig) -> Option<[u64; 4]> {
    let offsets = [
        cfg.goid_offset,
        cfg.gopc_offset,
        cfg.startpc_offset,
        cfg.parent_goid_offset,
    ];
    let lo = offsets.iter().copied().min().unwrap_or(0);
    let hi = offsets.iter().copied().max().unwrap_or(0) + 8;
    let len = hi - lo;
    let copy = G_COPY.get_ptr_mut(0)?;
    if len as usize > G_SPAN {
        return Some([
            read_u64(g, offsets[0])?,
            read_u64(g, offsets[1])?,
            read_u64(g, offsets[2])?,
            read_u64(g, offsets[3])?,
        ]);
    }
    // SAFETY: this CPU's buffer, ours while the program runs; `len` is
    // bounded by its size and the helper copes with any source address.
    let bytes = unsafe {
        if raw_read_user(
            copy as *mut c_void,
            len,
            (g + u64::from(lo)) as *const c_void,
        ) != 0
        {
            return None;
        }
        &*copy
    };
    let field = |off: u32| -> Option<u64> {
        let at = (off - lo) as usize & (G_SPAN - 1);
        if at + 8 > G_SPAN {
            return None;
        }
        // SAFETY: `at + 8` is within the buffer.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().add(at) as *const u64) })
    };
    Some([
        field(offsets[0])?,
        field(offsets[1])?,
        field(offsets[2])?,
        field(offsets[3])?,
    ])
}

/// A new goroutine, in RAX or RBX as the cookie says.
#[uprobe]
pub fn go_goroutine_created(ctx: ProbeContext) -> u32 {
    // SAFETY: helper call with the program's own context pointer.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let tgid = traced::tgid();
    if !traced::wanted(cookie, || tgid) {
        return 0;
    }
    let cfg = go_cookie_offsets(cookie);
    // Both loads at fixed context offsets: the verifier rejects a context
    // access at an offset computed from the cookie.
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    let (rax, rbx) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.regs).rax),
            core::ptr::read_volatile(&(*ctx.regs).rbx),
        )
    };
    let newg = if cookie & GO_NEW_G_IN_RBX != 0 {
        rbx
    } else {
        rax
    };
    let Some([goid, gopc, startpc, parent_goid]) = g_fields(newg, &cfg) else {
        count(Counter::GoroutineUnreadable);
        return 0;
    };
    let site = [gopc, startpc, u64::from(tgid)];
    // SAFETY: plain data copied out of the map.
    let known = unsafe { SITE_STACKS.get(&site) }.copied();
    let stack_id = known.unwrap_or(STACK_UNKNOWN);
    let rec = GoroutineRecord {
        gopc,
        startpc,
        parent_goid,
        // SAFETY: helper without arguments.
        created_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        _pad: 0,
    };
    let key = GoroutineKey {
        goid,
        tgid,
        _pad: 0,
    };
    if GOROUTINES.insert(&key, &rec, 0).is_err() {
        count(Counter::GoroutineMapFull);
        return 0;
    }
    if known.is_none() {
        walk_for(
            &ctx,
            WalkFor {
                what: FOR_GOROUTINE,
                tid: 0,
                a: goid,
                b: gopc,
                c: startpc,
                tgid,
                _pad: 0,
            },
        );
    }
    0
}

/// The walk's result for goroutine `goid` of process `tgid`, just
/// recorded, created at `site` (gopc, startpc): its record's stack, and the
/// site's for those created after it.
#[inline(always)]
pub(crate) fn set_stack(tgid: u32, goid: u64, site: [u64; 2], stack_id: u32) {
    let key = GoroutineKey {
        goid,
        tgid,
        _pad: 0,
    };
    if let Some(rec) = GOROUTINES.get_ptr_mut(&key) {
        // SAFETY: the record was inserted by this program's probe just
        // before; the goroutine is not runnable yet, so nobody removes it.
        unsafe { (*rec).stack_id = stack_id };
    }
    let _ = SITE_STACKS.insert(&[site[0], site[1], u64::from(tgid)], &stack_id, 0);
}

/// Entry of `runtime.gdestroy(gp)` / `runtime.goexit0(gp)`: `gp` in RAX.
#[uprobe]
pub fn go_goroutine_exit(ctx: ProbeContext) -> u32 {
    // SAFETY: helper call with the program's own context pointer.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let cfg = go_cookie_offsets(cookie);
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    let gp = unsafe { (*ctx.regs).rax };
    if let Some(goid) = read_u64(gp, cfg.goid_offset) {
        let key = GoroutineKey {
            goid,
            tgid: traced::tgid(),
            _pad: 0,
        };
        // Goroutines from before attach (and in processes not traced) are
        // not in the map: nothing to do.
        let _ = GOROUTINES.remove(&key);
    }
    0
}
