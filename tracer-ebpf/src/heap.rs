//! Allocator probes (malloc family and free).

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_jiffies64},
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tracer_common::{
    cookie_kind, cookie_stack_delta, AllocKey, AllocKind, AllocRecord, Config, Counter, Pending,
    SiteKey, SiteTotals, DEFAULT_MAX_ALLOCS, DEFAULT_MAX_SITES, STACK_UNKNOWN,
};

use crate::{
    counters::{atomic_add, count},
    inflight::{self, tid},
    traced::{self, tgid},
    walker::{walk_for, WalkFor, FOR_ALLOC},
    EEXIST,
};

// Sizes here are defaults; userspace resizes every map from its flags
// before loading.
#[map]
static ALLOCS: HashMap<AllocKey, AllocRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_ALLOCS, BPF_F_NO_PREALLOC);

#[map]
static SITES: HashMap<SiteKey, SiteTotals> =
    HashMap::with_max_entries(DEFAULT_MAX_SITES, BPF_F_NO_PREALLOC);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[inline(always)]
fn config() -> Config {
    match CONFIG.get(0) {
        // SAFETY: the array slot always exists; a torn read of the two u32s
        // only ever pairs a generation with a neighbouring horizon, which
        // both sides tolerate.
        Some(c) => unsafe { core::ptr::read_volatile(c) },
        None => Config::default(),
    }
}

#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: helper call with the program's own context pointer.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    // SAFETY: the context of a uprobe program is the probed task's pt_regs.
    unsafe { &*ctx.regs }
}

/// Adds `(bytes, count)` to a site's totals, creating the entry if needed.
/// An allocation (`allocated`) also adds to the site's allocated totals.
#[inline(always)]
fn site_add(key: &SiteKey, bytes: i64, count: i64, allocated: bool) -> bool {
    for _ in 0..2 {
        if let Some(v) = SITES.get_ptr_mut(key) {
            // SAFETY: the pointer is into a live map value; atomics because
            // other CPUs update the same site concurrently.
            unsafe {
                atomic_add(core::ptr::addr_of_mut!((*v).bytes), bytes);
                atomic_add(core::ptr::addr_of_mut!((*v).count), count);
                if allocated {
                    atomic_add(core::ptr::addr_of_mut!((*v).allocated_bytes), bytes);
                    atomic_add(core::ptr::addr_of_mut!((*v).allocated_count), count);
                }
            }
            return true;
        }
        let totals = SiteTotals {
            bytes,
            count,
            allocated_bytes: if allocated { bytes } else { 0 },
            allocated_count: if allocated { count } else { 0 },
        };
        match SITES.insert(key, totals, BPF_NOEXIST as u64) {
            Ok(()) => return true,
            // Another CPU created it between our lookup and insert: add to it.
            Err(e) if e == -EEXIST => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Forgets process `tgid`'s block at `addr` (if we recorded it) and
/// subtracts it from its site's totals.
#[inline(always)]
fn release(tgid: u32, addr: u64) {
    let at = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    // SAFETY: the record is copied out before the entry is removed.
    let rec = match unsafe { ALLOCS.get(&at) } {
        Some(r) => *r,
        None => return,
    };
    if ALLOCS.remove(&at).is_err() {
        // Another thread released it first (a double free in the target).
        return;
    }
    let cfg = config();
    let generation = if rec.generation < cfg.horizon {
        0
    } else {
        rec.generation
    };
    let key = SiteKey {
        caller: rec.caller,
        stack_id: rec.stack_id,
        generation,
        tgid,
        _pad: 0,
    };
    if !site_add(&key, -(rec.size as i64), -1, false) {
        count(Counter::SiteMapFull);
    }
}

/// Records process `tgid`'s successful allocation of `p.size` bytes at
/// `addr`.
#[inline(always)]
fn record(tgid: u32, addr: u64, p: &Pending) {
    let generation = config().generation;
    let key = SiteKey {
        caller: p.caller,
        stack_id: p.stack_id,
        generation,
        tgid,
        _pad: 0,
    };
    if !site_add(&key, p.size as i64, 1, true) {
        count(Counter::SiteMapFull);
        return;
    }
    let rec = AllocRecord {
        size: p.size,
        caller: p.caller,
        stack_id: p.stack_id,
        generation,
    };
    // Insert-if-absent first: in the common case that is the only map
    // operation on ALLOCS. An address already recorded means the block
    // there was freed by a path we do not see (or by an inner allocator
    // call that we already recorded): the newest, outermost call wins.
    let at = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    let inserted = match ALLOCS.insert(&at, &rec, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(e) if e == -EEXIST => {
            release(tgid, addr);
            ALLOCS.insert(&at, &rec, 0).is_ok()
        }
        Err(_) => false,
    };
    if !inserted {
        count(Counter::AllocMapFull);
        // Still allocated (pprof's alloc_space), only not tracked.
        site_add(&key, -(p.size as i64), -1, false);
    }
}

/// Entry of every allocation function; the cookie says which, and so
/// where its size (and old pointer or out-parameter) are. One program for
/// all of them: each program costs a verification at load.
#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    let c = cookie(&ctx);
    if !traced::wanted(c, tgid) {
        return 0;
    }
    let r = regs(&ctx);
    let (rdi, rsi, rdx) = (r.rdi, r.rsi, r.rdx);
    let kind = cookie_kind(c);
    let (size, aux) = match AllocKind::from_u32(kind) {
        Some(AllocKind::AlignedAlloc | AllocKind::Memalign) => (rsi, 0),
        Some(AllocKind::Calloc) => (rdi.wrapping_mul(rsi), 0),
        Some(AllocKind::Realloc | AllocKind::Rallocx | AllocKind::ReallocAligned) => (rsi, rdi),
        Some(AllocKind::Reallocarray) => (rsi.wrapping_mul(rdx), rdi),
        Some(AllocKind::PosixMemalign) => (rdx, rdi),
        // malloc, valloc, pvalloc, operator new, mallocx, mi_malloc_aligned.
        Some(_) => (rdi, 0),
        None => return 0,
    };
    // Stack pointer as it was at the function's first instruction.
    let entry_sp = r.rsp + cookie_stack_delta(c);
    let tid = tid();

    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() };
    let Some(place) = inflight::begin(tid, entry_sp, now) else {
        return 0; // inside another probed allocator call
    };
    // The stack and caller come from the walk, which runs next.
    let pending = Pending {
        size,
        aux,
        caller: 0,
        entry_sp,
        since_jiffies: now,
        stack_id: STACK_UNKNOWN,
        kind,
    };
    if !inflight::stash(place, tid, pending) {
        return 0;
    }
    walk_for(
        &ctx,
        WalkFor {
            what: FOR_ALLOC,
            tid,
            a: entry_sp,
            b: 0,
            c: 0,
            tgid: 0,
            _pad: 0,
        },
    );
    // Only if the walk could not run: the caller at least (read directly:
    // the stack window may hold another thread's stack).
    // SAFETY: bpf_probe_read_user copes with any address.
    match unsafe { bpf_probe_read_user(entry_sp as *const u64) } {
        Ok(caller) => inflight::set_stack(tid, entry_sp, STACK_UNKNOWN, caller),
        Err(_) => count(Counter::CallerUnreadable),
    }
    0
}

/// Return of every allocation function; the cookie says which.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let kind = cookie_kind(cookie(&ctx));
    // SAFETY: the context of a uretprobe program is the task's pt_regs.
    let r = unsafe { &*ctx.regs };
    let Some(p) = inflight::finish(tid(), kind, r.rsp) else {
        return 0;
    };

    let ret = r.rax;
    let tgid = tgid();
    match AllocKind::from_u32(kind) {
        Some(
            AllocKind::Realloc
            | AllocKind::Reallocarray
            | AllocKind::Rallocx
            | AllocKind::ReallocAligned,
        ) => {
            if ret != 0 {
                // Success: the old block is gone (even if moved in place).
                if p.aux != 0 {
                    release(tgid, p.aux);
                }
                record(tgid, ret, &p);
            } else if p.size == 0 && p.aux != 0 {
                // realloc(p, 0) freed p and returned NULL.
                release(tgid, p.aux);
            }
            // Otherwise the call failed and the old block is still live.
        }
        Some(AllocKind::PosixMemalign) => {
            if ret as u32 == 0 {
                // SAFETY: reading the user's out-parameter; failure handled.
                match unsafe { bpf_probe_read_user(p.aux as *const u64) } {
                    Ok(addr) if addr != 0 => record(tgid, addr, &p),
                    Ok(_) => {}
                    Err(_) => count(Counter::ResultUnreadable),
                }
            }
        }
        Some(_) => {
            if ret != 0 {
                record(tgid, ret, &p);
            }
        }
        None => {}
    }
    0
}

/// free(ptr), and every deallocation function with the pointer first:
/// cfree, sdallocx, dallocx, operator delete (all variants), ...
#[uprobe]
pub fn free_entry(ctx: ProbeContext) -> u32 {
    let ptr = regs(&ctx).rdi;
    if ptr != 0 {
        // In a process not traced nothing is found: no check needed.
        release(tgid(), ptr);
    }
    0
}

/// Does nothing: `--probe-mode empty` attaches it at the same sites to
/// measure the cost of the probes themselves (the benchmark's floor).
#[uprobe]
pub fn empty_entry(_ctx: ProbeContext) -> u32 {
    0
}

/// Does nothing; the return-probe twin of [`empty_entry`].
#[uretprobe]
pub fn empty_return(_ctx: RetProbeContext) -> u32 {
    0
}

/// Does nothing: the return probe of the seccomp check (see
/// `tracer/src/probes/seccomp_check.rs`), attached through a perf event,
/// so loaded on its own rather than for uprobe-multi links.
#[uretprobe]
pub fn seccomp_check_return(_ctx: RetProbeContext) -> u32 {
    0
}
