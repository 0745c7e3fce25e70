//! One scan: the target stopped, its blocks and roots read, the mark run,
//! the target let go, within a deadline.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    freeze::{FreezeError, Frozen},
    mark::{Block, Mark, Verdict},
    memory::ProcessMemory,
    roots::{roots, Blocks},
};
use crate::{
    collect::{LiveBlock, SiteId},
    process::procfs,
};

/// What one scan found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Every outstanding block with its verdict.
    pub blocks: Vec<(LiveBlock, Verdict)>,
    /// For a definitely lost block, the bytes indirectly lost through it
    /// (by index into `blocks`).
    pub indirect_bytes: Vec<u64>,
    /// How long the target was stopped.
    pub stopped: Duration,
    /// Of which reading the outstanding blocks from the kernel.
    pub blocks_read: Duration,
    pub threads: usize,
    pub scanned_bytes: u64,
    pub unreadable_bytes: u64,
    /// Why the scan gave no verdicts (the deadline passed, the target
    /// exited): the target ran on, nothing is classified.
    pub incomplete: Option<String>,
    /// Made as the program called `_exit` (a command leaktrace started).
    pub at_exit: bool,
}

impl Scan {
    /// Bytes and blocks unreachable (definitely or indirectly lost) by
    /// site, over the blocks older than the threshold; None when the scan
    /// gave no verdicts.
    pub fn unreachable_by_site(&self) -> Option<HashMap<SiteId, (u64, u64)>> {
        if self.incomplete.is_some() {
            return None;
        }
        let mut out: HashMap<SiteId, (u64, u64)> = HashMap::new();
        for (b, v) in &self.blocks {
            if b.old && matches!(v, Verdict::DefinitelyLost | Verdict::IndirectlyLost) {
                let e = out.entry(b.site).or_default();
                e.0 += b.size;
                e.1 += 1;
            }
        }
        Some(out)
    }

    /// A scan that could not be made, and why.
    pub fn incomplete(why: String) -> Scan {
        Scan {
            blocks: Vec::new(),
            indirect_bytes: Vec::new(),
            stopped: Duration::ZERO,
            blocks_read: Duration::ZERO,
            threads: 0,
            scanned_bytes: 0,
            unreadable_bytes: 0,
            incomplete: Some(why),
            at_exit: false,
        }
    }
}

/// How to scan one process.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Abandoned this long after the start.
    pub deadline: Duration,
    /// Whether the blocks are all the process has.
    pub known: Blocks,
    /// The blocks are glibc malloc's (see [`Mark::glibc_chunks`]).
    pub glibc_heap: bool,
}

/// Stops process `pid`, marks from its roots the blocks `blocks` reads
/// (called while it is stopped, so that none comes or goes meanwhile),
/// and lets it go.
pub fn scan(
    pid: u32,
    options: ScanOptions,
    blocks: impl FnOnce() -> Vec<LiveBlock>,
) -> Result<Scan, FreezeError> {
    let ScanOptions {
        deadline,
        known,
        glibc_heap,
    } = options;
    let start = Instant::now();
    let until = start + deadline;
    let incomplete = |why: String, threads: usize, scanned_bytes: u64| Scan {
        blocks: Vec::new(),
        indirect_bytes: Vec::new(),
        stopped: start.elapsed(),
        blocks_read: Duration::ZERO,
        threads,
        scanned_bytes,
        unreadable_bytes: 0,
        incomplete: Some(why),
        at_exit: false,
    };
    let frozen = match Frozen::freeze(pid, until) {
        Ok(f) => f,
        Err(FreezeError::Deadline(_)) => {
            return Ok(incomplete(
                format!("the threads did not all stop within {}", ms(deadline)),
                0,
                0,
            ))
        }
        Err(e) => return Err(e),
    };
    let threads = frozen.threads.len();
    let Ok(maps) = procfs::read_maps(pid) else {
        return Ok(incomplete("the target exited".into(), threads, 0));
    };
    let reading = Instant::now();
    let mut live = blocks();
    let blocks_read = reading.elapsed();
    live.sort_by_key(|b| b.addr);
    let marked_blocks: Vec<Block> = live
        .iter()
        .map(|b| Block {
            addr: b.addr,
            size: b.size,
        })
        .collect();
    let regions = roots(&maps, &frozen.stack_pointers(), &marked_blocks, known);
    let registers = frozen.registers();
    let mut memory = ProcessMemory::new(pid, maps);
    let mut mark = Mark::new(&marked_blocks, &mut memory).until(until);
    if glibc_heap {
        mark = mark.glibc_chunks();
    }
    let marked = mark.run(&regions, &registers);
    drop(frozen);
    let stopped = start.elapsed();
    let marked = match marked {
        Ok(m) => m,
        Err(a) => {
            let mut s = incomplete(
                format!("the deadline of {} passed", ms(deadline)),
                threads,
                a.scanned_bytes,
            );
            s.stopped = stopped;
            s.blocks_read = blocks_read;
            return Ok(s);
        }
    };
    Ok(Scan {
        blocks: live.into_iter().zip(marked.verdicts).collect(),
        indirect_bytes: marked.indirect_bytes,
        stopped,
        blocks_read,
        threads,
        scanned_bytes: marked.scanned_bytes,
        unreadable_bytes: marked.unreadable_bytes,
        incomplete: None,
        at_exit: false,
    })
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
