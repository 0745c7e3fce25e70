//! The stack walk as a program of its own, tail-called by every probe that
//! records a stack, so that the kernel verifies it once per load.
//!
//! Inlined, the walk was verified again in every program and again for
//! every state the code before it left behind (the in-flight table's
//! outcomes): six allocator entry programs took 1.5–2.4 s each to load.
//! Here a probe records what it knows with an unknown stack, names in
//! [`WALK_FOR`] the record the stack belongs to, and tail-calls
//! [`stack_walk`], which walks (with the probe's registers: a tail call
//! keeps the context) and fills the stack in. If the tail call fails, the
//! record keeps the unknown stack and the loss is counted.

use aya_ebpf::{
    macros::{map, uprobe},
    maps::{PerCpuArray, ProgramArray},
    programs::ProbeContext,
};
use tracer_common::{Counter, STACK_UNKNOWN};

use crate::{
    counters::count,
    goroutines, inflight,
    stacks::{store_walked, walk_user_stack, Walk},
    tasks,
    window::caller_after_walk,
};

/// Index 0: [`stack_walk`], 1: [`stack_store`]; set by userspace after
/// loading.
#[map]
static WALKERS: ProgramArray = ProgramArray::with_max_entries(2, 0);

const WALK: u32 = 0;
const STORE: u32 = 1;

/// Whose stack the walk is for.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct WalkFor {
    /// One of the `FOR_*` constants.
    pub(crate) what: u32,
    pub(crate) tid: u32,
    /// FOR_ALLOC: the call's entry stack pointer; FOR_GOROUTINE: the goid.
    pub(crate) a: u64,
    /// FOR_GOROUTINE: the creation site (gopc, startpc).
    pub(crate) b: u64,
    pub(crate) c: u64,
    /// FOR_GOROUTINE: the traced process.
    pub(crate) tgid: u32,
    pub(crate) _pad: u32,
}

/// An allocator call in flight (see [`inflight::set_stack`]).
pub(crate) const FOR_ALLOC: u32 = 1;
/// A spawn call's stash (see [`tasks::set_spawn_stack`]).
pub(crate) const FOR_SPAWN: u32 = 2;
/// A new goroutine's record (see [`goroutines::set_stack`]).
pub(crate) const FOR_GOROUTINE: u32 = 3;

#[map]
static WALK_FOR: PerCpuArray<WalkFor> = PerCpuArray::with_max_entries(1, 0);

/// Walks the stack of the probe `ctx` is for, for `what`; does not return
/// when the walk runs. A failed tail call is counted as a lost stack.
#[inline(always)]
pub(crate) fn walk_for(ctx: &ProbeContext, what: WalkFor) {
    if let Some(slot) = WALK_FOR.get_ptr_mut(0) {
        // SAFETY: this CPU's entry; the walk runs on this CPU right after.
        unsafe { slot.write(what) };
        // SAFETY: the context is the probe's own, passed on unchanged.
        unsafe { WALKERS.tail_call(ctx, WALK) };
    }
    count(Counter::StackLost);
}

/// Tail-called by the probes: walks the stack (or finds the walk
/// remembered, the common case, and delivers its id), then has
/// [`stack_store`] store it. Two programs, each verified on its own: in one, every way the
/// walk can end was verified again through the store.
#[uprobe]
pub fn stack_walk(ctx: ProbeContext) -> u32 {
    match walk_user_stack(&ctx) {
        // Remembered: no store needed, nor the tail call to it.
        Walk::Remembered(id) => {
            deliver(id);
            return 0;
        }
        Walk::Walked => {
            // SAFETY: the context is the probe's own, passed on unchanged.
            unsafe { WALKERS.tail_call(&ctx, STORE) };
        }
        Walk::Failed => {}
    }
    count(Counter::StackLost);
    give_up();
    0
}

/// Stores the walked stack and puts its id where [`WALK_FOR`] says.
#[uprobe]
pub fn stack_store(_ctx: ProbeContext) -> u32 {
    deliver(store_walked().unwrap_or(STACK_UNKNOWN));
    0
}

/// No stack: the allocation still gets its caller.
#[inline(always)]
fn give_up() {
    deliver(STACK_UNKNOWN);
}

#[inline(always)]
fn deliver(id: u32) {
    let Some(what) = WALK_FOR.get(0).copied() else {
        return;
    };
    match what.what {
        FOR_ALLOC => inflight::set_stack(what.tid, what.a, id, caller_after_walk(what.a)),
        FOR_SPAWN if id != STACK_UNKNOWN => tasks::set_spawn_stack(what.tid, id),
        FOR_GOROUTINE if id != STACK_UNKNOWN => {
            goroutines::set_stack(what.tgid, what.a, [what.b, what.c], id)
        }
        _ => {}
    }
}
