//! Goroutine tracking for Go targets: which goroutines exist, where each
//! was created, and when.
//!
//! Creation is seen at the RET instruction(s) of `runtime.newproc1`, never
//! with a uretprobe: Go moves goroutine stacks, and a hijacked return
//! address would crash the program. At that RET the new `g` is in RAX with
//! goid, gopc, startpc and parentGoid set, and it is not yet runnable, so
//! its exit cannot race ahead of the record. Exit is seen at the entry of
//! `runtime.gdestroy` (`goexit0` on Go 1.21), `gp` in RAX. Go's register ABI
//! is not the C one: registers are read directly, not through `ctx.arg()`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_probe_read_user, generated::bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::{Array, HashMap},
    programs::ProbeContext,
    EbpfContext,
};
use tracer_common::{Counter, GoConfig, GoroutineRecord, DEFAULT_MAX_GOROUTINES};

use crate::{heap::count, stacks::user_stack_id};

#[map]
static GOROUTINES: HashMap<u64, GoroutineRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_GOROUTINES, BPF_F_NO_PREALLOC);

#[map]
static GO_CONFIG: Array<GoConfig> = Array::with_max_entries(1, 0);

#[inline(always)]
fn read_u64(base: u64, offset: u32) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copes with any address; failure is an Err.
    unsafe { bpf_probe_read_user((base + offset as u64) as *const u64) }.ok()
}

/// At a RET of `runtime.newproc1`: the new goroutine is in RAX.
#[uprobe]
pub fn go_newproc1_return(ctx: ProbeContext) -> u32 {
    let Some(cfg) = GO_CONFIG.get(0).copied() else {
        return 0;
    };
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    let newg = unsafe { (*ctx.regs).rax };
    let (Some(goid), Some(gopc), Some(startpc), Some(parent_goid)) = (
        read_u64(newg, cfg.goid_offset),
        read_u64(newg, cfg.gopc_offset),
        read_u64(newg, cfg.startpc_offset),
        read_u64(newg, cfg.parent_goid_offset),
    ) else {
        count(Counter::GoroutineUnreadable);
        return 0;
    };
    let stack_id = user_stack_id(&ctx);
    let rec = GoroutineRecord {
        gopc,
        startpc,
        parent_goid,
        // SAFETY: helper without arguments.
        created_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        _pad: 0,
    };
    if GOROUTINES.insert(&goid, &rec, 0).is_err() {
        count(Counter::GoroutineMapFull);
    }
    0
}

/// Entry of `runtime.gdestroy(gp)` / `runtime.goexit0(gp)`: `gp` in RAX.
#[uprobe]
pub fn go_goroutine_exit(ctx: ProbeContext) -> u32 {
    let Some(cfg) = GO_CONFIG.get(0).copied() else {
        return 0;
    };
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    let gp = unsafe { (*ctx.regs).rax };
    if let Some(goid) = read_u64(gp, cfg.goid_offset) {
        // Goroutines from before attach are not in the map: nothing to do.
        let _ = GOROUTINES.remove(&goid);
    }
    0
}
