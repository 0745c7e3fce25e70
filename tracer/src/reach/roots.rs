//! Where the mark starts: every readable, writable mapping of the
//! process except what is not memory (`[vvar]`, `[vsyscall]`, devices but
//! `/dev/zero`), less the traced blocks themselves and, on each thread's
//! stack, what lies below its stack pointer and red zone (dead frames).
//! Heap memory outside traced blocks stays a root: blocks allocated before
//! attach are unknown, and whatever they point to must not be called lost.
//! Only when every block was seen (a command leaktrace started, probed
//! before its first allocation) is the brk heap (`[heap]`) outside them
//! left out: it is then freed memory and the allocator's own, which
//! valgrind does not scan either (a freed block still holds the pointers
//! it had; taken as a root, what only it pointed to would pass for kept).

use super::mark::{Block, Region};
use crate::process::procfs::Mapping;

/// The x86-64 System V red zone below the stack pointer, live data a leaf
/// function may keep without moving it.
const RED_ZONE: u64 = 128;

/// Which blocks a scan knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// Those allocated since attach: the heap outside them is a root.
    SinceAttach,
    /// Every one the process allocated: the brk heap outside them is not.
    All,
}

/// Root regions in address order, from `maps` (sorted by address), the
/// threads' `stack_pointers` and the traced `blocks` (sorted, disjoint).
pub fn roots(
    maps: &[Mapping],
    stack_pointers: &[u64],
    blocks: &[Block],
    known: Blocks,
) -> Vec<Region> {
    let mut regions: Vec<Region> = Vec::new();
    let brk_heap = |m: &&Mapping| m.pseudo.as_deref() == Some("[heap]");
    for m in maps
        .iter()
        .filter(|m| is_root(m) && !(known == Blocks::All && brk_heap(m)))
    {
        let mut start = m.start;
        // A thread's stack: from below its stack pointer's red zone on.
        for &sp in stack_pointers {
            if m.contains(sp) {
                start = start.max(sp.saturating_sub(RED_ZONE).max(m.start));
            }
        }
        regions.push(Region { start, end: m.end });
    }
    subtract(&regions, blocks)
}

fn is_root(m: &Mapping) -> bool {
    if !m.readable || !m.writable {
        return false;
    }
    if let Some(p) = &m.pseudo {
        if p == "[vvar]" || p == "[vsyscall]" || p.starts_with("[vvar") {
            return false;
        }
    }
    match &m.path {
        Some(p) if p.starts_with("/dev/") => p == "/dev/zero",
        _ => true,
    }
}

/// `regions` less the ranges of `blocks` (both sorted).
fn subtract(regions: &[Region], blocks: &[Block]) -> Vec<Region> {
    let mut out = Vec::with_capacity(regions.len() + blocks.len());
    let mut b = 0;
    for r in regions {
        let mut at = r.start;
        while b < blocks.len() && blocks[b].addr + blocks[b].size <= r.start {
            b += 1;
        }
        let mut k = b;
        while k < blocks.len() && blocks[k].addr < r.end {
            let (bs, be) = (blocks[k].addr, blocks[k].addr + blocks[k].size);
            if bs > at {
                out.push(Region { start: at, end: bs });
            }
            at = at.max(be);
            k += 1;
        }
        if at < r.end {
            out.push(Region {
                start: at,
                end: r.end,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::procfs::parse_maps;

    #[test]
    fn roots_are_writable_memory_less_blocks_and_dead_stack() {
        let maps = parse_maps(
            "\
555500000000-555500001000 r--p 00000000 fe:01 12 /usr/bin/demo
555500001000-555500002000 rw-p 00001000 fe:01 12 /usr/bin/demo
555500100000-555500200000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 rw-p 00000000 00:00 0
7f0000010000-7f0000011000 rw-s 00000000 00:05 7 /dev/dri/card0
7f0000020000-7f0000021000 rw-s 00000000 00:05 8 /dev/zero
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
7ffc00030000-7ffc00032000 r--p 00000000 00:00 0 [vvar]
",
        );
        let blocks = [
            Block {
                addr: 0x555500100010,
                size: 0x20,
            },
            Block {
                addr: 0x555500100040,
                size: 0x10,
            },
        ];
        // A thread whose stack is the anonymous mapping, and main's.
        let sps = [0x7f0000008000, 0x7ffc00020000];
        let r = roots(&maps, &sps, &blocks, Blocks::SinceAttach);
        let r: Vec<(u64, u64)> = r.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(
            r,
            [
                (0x555500001000, 0x555500002000),
                (0x555500100000, 0x555500100010),
                (0x555500100030, 0x555500100040),
                (0x555500100050, 0x555500200000),
                (0x7f0000008000 - 128, 0x7f0000010000),
                (0x7f0000020000, 0x7f0000021000),
                (0x7ffc00020000 - 128, 0x7ffc00021000),
            ]
        );
        // Every block known: the brk heap around them is no root.
        let all = roots(&maps, &sps, &blocks, Blocks::All);
        let all: Vec<(u64, u64)> = all.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(
            all,
            [r[0], r[4], r[5], r[6]],
            "without the three pieces of [heap]"
        );
    }
}
