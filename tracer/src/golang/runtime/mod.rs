//! Reading a Go target's runtime state out of process, through
//! /proc/PID/mem at the addresses of the runtime's own variables: the
//! goroutine list (`runtime.allgptr`) for a census, and the live heap after
//! the last GC (`runtime.gcController.heapMarked`, `runtime.memstats.numgc`).
//!
//! Nothing here stops or signals the target; a read racing with the
//! runtime may see a goroutine mid-update, which only ever costs one entry
//! of one census.

//!
//! The writes leaktrace makes when asked ([`memprofile`], [`leakcheck`])
//! and the process handle the report side holds ([`process`]) are here too.

pub mod leakcheck;
pub mod memprofile;
pub mod memstats;
pub mod process;

use std::{collections::HashMap, fs::File, io, os::unix::fs::FileExt, sync::Arc};

use self::memstats::{Addresses, MemStats, MemStatsLayout, Words};
use super::binary::GoBinary;

impl Words for GoRuntime {
    fn word(&self, addr: u64) -> Option<u64> {
        self.u64_at(addr).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GoRuntimeError {
    #[error("runtime.{0} is neither in the symbol table nor found through the runtime's code")]
    NoSymbol(&'static str),
    #[error("cannot read the target's memory: {0}")]
    Read(#[from] io::Error),
    #[error("runtime.{0} holds an implausible value; the runtime layout does not match")]
    Implausible(&'static str),
}

/// Goroutine status values (runtime2.go), stable across the Go versions
/// leaktrace supports.
const G_IDLE: u32 = 0;
const G_RUNNABLE: u32 = 1;
const G_RUNNING: u32 = 2;
const G_SYSCALL: u32 = 3;
const G_WAITING: u32 = 4;
const G_DEAD: u32 = 6;
const G_COPYSTACK: u32 = 8;
const G_PREEMPTED: u32 = 9;
/// Go 1.26+: found leaked by the GC's goroutine leak detector.
const G_LEAKED: u32 = 10;
/// Go 1.26+: a dead goroutine kept for cgo callbacks on extra Ms.
const G_DEAD_EXTRA: u32 = 11;
/// Set while the GC scans a goroutine's stack, on top of its status.
const G_SCAN: u32 = 0x1000;

/// More goroutines than this in `allgs` means we read garbage.
const MAX_GOROUTINES: u64 = 1 << 24;

/// `bucketType` of memory-profile buckets (mprof.go).
const MEM_PROFILE: u64 = 1;
/// `runtime.bucket` header: next, allnext, typ, hash, size, nstk (the
/// same from Go 1.21 to 1.27); the stack and then a `memRecord` follow.
const BUCKET_HEADER: usize = 48;
/// Deeper stacks than this mean we read garbage (the runtime's maximum is
/// 128 + a few).
const MAX_PROFILE_DEPTH: u64 = 1024;
/// Stop walking the bucket list after this many (a cycle or garbage).
const MAX_BUCKETS: usize = 1 << 20;

/// One goroutine as the runtime lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoroutineInfo {
    pub goid: u64,
    pub gopc: u64,
    pub startpc: u64,
    /// "chan receive", "select", "running", ... as a goroutine dump says it.
    pub state: String,
    /// CLOCK_MONOTONIC time it started waiting, once the runtime noted it.
    pub waiting_since_ns: Option<u64>,
    /// Found leaked by the runtime's leak detector (Go 1.26+).
    pub leaked: bool,
}

/// One stack of the runtime's own heap profile: what is in use (as of the
/// last completed GC), scaled up from the runtime's sampling like pprof does.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileBucket {
    /// Return addresses, innermost first (runtime allocation frames included).
    pub stack: Vec<u64>,
    pub inuse_objects: u64,
    pub inuse_bytes: u64,
}

/// pprof's unsampling of a heap profile record (runtime/pprof's
/// scaleHeapSample, to the same truncation): objects of `size` bytes are
/// sampled with probability 1 - exp(-size/rate).
fn unsample(count: u64, size: u64, rate: u64) -> (u64, u64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, count * size);
    }
    let scale = 1.0 / (1.0 - (-(size as f64) / rate as f64).exp());
    let objects = (count as f64 * scale) as u64;
    let bytes = ((count * size) as f64 * scale) as u64;
    (objects, bytes)
}

/// The live heap after the last completed GC, and how many GCs ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapReading {
    pub live_after_gc: u64,
    pub gc_count: u32,
}

pub struct GoRuntime {
    mem: File,
    /// Added to link-time addresses (non-zero for PIE).
    bias: u64,
    bin: Arc<GoBinary>,
    wait_reasons: HashMap<u8, String>,
}

impl GoRuntime {
    pub fn open(pid: u32, bin: Arc<GoBinary>, bias: u64) -> io::Result<Self> {
        Ok(GoRuntime {
            mem: File::open(format!("/proc/{pid}/mem"))?,
            bias,
            bin,
            wait_reasons: HashMap::new(),
        })
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read_exact_at(buf, addr)
    }

    fn u64_at(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn u32_at(&self, addr: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn var(&self, addr: Option<u64>, name: &'static str) -> Result<u64, GoRuntimeError> {
        addr.map(|a| a.wrapping_add(self.bias))
            .ok_or(GoRuntimeError::NoSymbol(name))
    }

    /// Every goroutine that is not dead, from the runtime's list of all
    /// goroutines (read like `forEachGRace` does: length, then array).
    pub fn goroutines(&mut self) -> Result<Vec<GoroutineInfo>, GoRuntimeError> {
        let allglen = self.var(self.bin.vars.allglen, "allglen")?;
        let allgptr = self.var(self.bin.vars.allgptr, "allgptr")?;
        let (len, array) = (self.u64_at(allglen)?, self.u64_at(allgptr)?);
        if len > MAX_GOROUTINES {
            return Err(GoRuntimeError::Implausible("allgs"));
        }
        let mut ptrs = vec![0u8; len as usize * 8];
        self.read(array, &mut ptrs)?;
        let layout = self.bin.g;
        let span = [
            layout.goid,
            layout.gopc,
            layout.startpc,
            layout.atomicstatus,
            layout.waitreason,
            layout.waitsince,
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as usize
            + 8;
        let mut g = vec![0u8; span];
        let field = |g: &[u8], off: u32| -> u64 {
            let o = off as usize;
            g.get(o..o + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        let mut out = Vec::new();
        for chunk in ptrs.chunks_exact(8) {
            let mut p = [0u8; 8];
            p.copy_from_slice(chunk);
            let gp = u64::from_le_bytes(p);
            if gp == 0 || self.read(gp, &mut g).is_err() {
                continue;
            }
            let status = field(&g, layout.atomicstatus) as u32 & !G_SCAN;
            if matches!(status, G_DEAD | G_IDLE | G_DEAD_EXTRA) {
                continue;
            }
            let reason = field(&g, layout.waitreason) as u8;
            let state = match status {
                G_RUNNABLE => "runnable".to_string(),
                G_RUNNING => "running".to_string(),
                G_SYSCALL => "syscall".to_string(),
                G_WAITING | G_PREEMPTED | G_COPYSTACK => self.wait_reason(reason),
                G_LEAKED => format!(
                    "leaked (runtime's leak detector): {}",
                    self.wait_reason(reason)
                ),
                other => format!("status {other}"),
            };
            let waiting = matches!(status, G_WAITING | G_LEAKED);
            out.push(GoroutineInfo {
                goid: field(&g, layout.goid),
                gopc: field(&g, layout.gopc),
                startpc: field(&g, layout.startpc),
                state,
                // Set when a GC scans the blocked goroutine (0 before).
                waiting_since_ns: Some(field(&g, layout.waitsince))
                    .filter(|&t| waiting && t > 0 && t < i64::MAX as u64),
                leaked: status == G_LEAKED,
            });
        }
        Ok(out)
    }

    /// The runtime's own name for a wait reason, from
    /// `runtime.waitReasonStrings` (its numbering changes between versions).
    fn wait_reason(&mut self, reason: u8) -> String {
        if let Some(s) = self.wait_reasons.get(&reason) {
            return s.clone();
        }
        let name = self
            .var(self.bin.vars.wait_reason_strings, "waitReasonStrings")
            .ok()
            .and_then(|table| {
                // [...]string: (pointer, length) pairs.
                let entry = table + reason as u64 * 16;
                let (ptr, len) = (self.u64_at(entry).ok()?, self.u64_at(entry + 8).ok()?);
                if len == 0 || len > 64 {
                    return None;
                }
                let mut s = vec![0u8; len as usize];
                self.read(ptr, &mut s).ok()?;
                String::from_utf8(s).ok()
            })
            .unwrap_or_else(|| "waiting".to_string());
        self.wait_reasons.insert(reason, name.clone());
        name
    }

    /// Live heap after the last GC and the number of completed GCs.
    pub fn heap(&self) -> Result<HeapReading, GoRuntimeError> {
        let gc = self.var(self.bin.vars.gc_controller, "gcController")?;
        let stats = self.var(self.bin.vars.memstats, "memstats")?;
        Ok(HeapReading {
            live_after_gc: self.u64_at(gc + self.bin.fields.heap_marked as u64)?,
            gc_count: self.u32_at(stats + self.bin.fields.numgc as u64)?,
        })
    }

    /// The runtime's in-use heap profile (`runtime.mbuckets`), when its
    /// memory profiling is on (`rate` = MemProfileRate > 0).
    pub fn heap_profile(&self, rate: u64) -> Result<Vec<ProfileBucket>, GoRuntimeError> {
        let head = self.var(self.bin.vars.mbuckets, "mbuckets")?;
        let mut next = self.u64_at(head)?;
        let mut out = Vec::new();
        let mut seen = 0;
        while next != 0 {
            seen += 1;
            if seen > MAX_BUCKETS {
                return Err(GoRuntimeError::Implausible("mbuckets"));
            }
            let mut h = [0u8; BUCKET_HEADER];
            self.read(next, &mut h)?;
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&h[i * 8..i * 8 + 8]);
                u64::from_le_bytes(w)
            };
            let (allnext, typ, size, nstk) = (word(1), word(2), word(4), word(5));
            if typ != MEM_PROFILE || nstk > MAX_PROFILE_DEPTH {
                return Err(GoRuntimeError::Implausible("mbuckets"));
            }
            // The stack, then memRecord.active = {allocs, frees}.
            let mut rest = vec![0u8; nstk as usize * 8 + 16];
            self.read(next + BUCKET_HEADER as u64, &mut rest)?;
            let words: Vec<u64> = rest
                .chunks_exact(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(c);
                    u64::from_le_bytes(w)
                })
                .collect();
            let (stack, active) = words.split_at(nstk as usize);
            let inuse = active[0].saturating_sub(active[1]);
            if inuse > 0 {
                let (inuse_objects, inuse_bytes) = unsample(inuse, size, rate);
                out.push(ProfileBucket {
                    stack: stack.to_vec(),
                    inuse_objects,
                    inuse_bytes,
                });
            }
            next = allnext;
        }
        Ok(out)
    }

    /// `ReadMemStats`' figures, read out of process (see [`memstats`]).
    ///
    /// [`memstats`]: self::memstats
    pub fn mem_stats(&mut self) -> Result<MemStats, GoRuntimeError> {
        let layout = MemStatsLayout::of_version(&self.bin.version).ok_or(
            GoRuntimeError::Implausible("memstats (Go version not checked)"),
        )?;
        let at = Addresses {
            gc_controller: self.var(self.bin.vars.gc_controller, "gcController")?,
            memstats: self.var(self.bin.vars.memstats, "memstats")?,
            // Symbol-table only: absent in a stripped binary.
            gomaxprocs: self.var(self.bin.vars.gomaxprocs, "gomaxprocs").ok(),
            sched: self.var(self.bin.vars.sched, "sched").ok(),
            numgc_offset: self.bin.fields.numgc as u64,
        };
        let alive = self.goroutines()?.len() as u64;
        memstats::read(&*self, &at, layout, alive).ok_or(GoRuntimeError::Implausible("memstats"))
    }

    /// `runtime.MemProfileRate`: 0 when memory profiling is off.
    pub fn mem_profile_rate(&self) -> Result<u64, GoRuntimeError> {
        let rate = self.var(self.bin.vars.mem_profile_rate, "MemProfileRate")?;
        Ok(self.u64_at(rate)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsampling_matches_pprof() {
        // Large objects are always sampled: no scaling.
        assert_eq!(unsample(3, 1 << 30, 512 * 1024), (3, 3 << 30));
        // A 4 KiB object is sampled with probability 1-exp(-4096/524288):
        // scale 128.50, truncated like pprof.
        let (objects, bytes) = unsample(10, 4096, 512 * 1024);
        assert_eq!(objects, 1285);
        assert_eq!(bytes, 5_263_386);
        // Rate 1 records every allocation.
        assert_eq!(unsample(10, 64, 1), (10, 640));
        assert_eq!(unsample(0, 64, 512), (0, 0));
    }
}
