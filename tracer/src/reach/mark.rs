//! The mark, as valgrind's memcheck does it (`mc_leakcheck.c`), so that
//! its four verdicts mean what valgrind's mean:
//!
//! 1. From the roots (memory that is not a traced block, and registers),
//!    every aligned word that lands in a block marks it: a pointer to its
//!    start (or one a heuristic accepts) makes it *reachable*, any other
//!    pointer into it only *possibly* reachable. A block is scanned in turn
//!    when its state rises; what a possibly reachable block points to is
//!    possibly reachable at most.
//! 2. The blocks nothing reached are then taken in address order: each one
//!    still unreached leads a clique, and every unreached block it reaches
//!    (through any pointer, start or interior) is *indirectly lost* and
//!    counts towards its leader; a leader reached later joins the new
//!    clique with its own. The leaders are *definitely lost*.
//!
//! Heuristics (valgrind's defaults, all four): an interior pointer counts
//! as a start pointer at `data + 3 words` of a `std::string` rep (length,
//! capacity, refcount, chars, NUL), at `data + 8` of a block whose first
//! u64 is its size less 8 (`length64`), at `data + 8` of a `new[]` array
//! whose first word divides the rest (`newarray`), and anywhere a word
//! pointing to a vtable sits inside a block that starts with one
//! (`multipleinheritance`).
//!
//! One departure, for glibc's heap only (valgrind's own allocator has no
//! such thing): glibc keeps the header of the chunk after a block (its
//! `prev_size` word is the block's last, when the block fills its chunk)
//! inside the block's last 8 bytes, and its arena points at chunk headers
//! (the top chunk, the bins; a free chunk at its neighbours). Such a
//! pointer is the allocator's, not the program's, and is not taken for an
//! interior pointer: else the block allocated last, which the top chunk
//! follows, would always pass for possibly reachable.

use std::time::Instant;

use super::memory::{Memory, IOV_MAX};

/// A traced block: where it starts and the size asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub addr: u64,
    pub size: u64,
}

impl Block {
    /// Where pointers into it end: a zero-sized block still has one
    /// address (valgrind's rule).
    fn end(&self) -> u64 {
        self.addr + self.size.max(1)
    }
}

/// Valgrind's verdict on one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    StillReachable,
    PossiblyLost,
    IndirectlyLost,
    DefinitelyLost,
}

/// The words of `bytes` that could point into a block (in `low..high`):
/// most words are zeros, small numbers or text, and are passed over here
/// before any search.
fn candidates(bytes: &[u8], low: u64, high: u64) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
        .filter(move |v| (low..high).contains(v))
}

/// The aligned words of block `b`: where they start, and how many bytes.
fn words_of(b: Block) -> (u64, usize) {
    let start = b.addr.next_multiple_of(8);
    let end = (b.addr + b.size) & !7;
    (start, end.saturating_sub(start) as usize)
}

/// Where glibc puts the header of the chunk after block `b` (made by
/// malloc from the heap): its chunk is 16 bytes before it and
/// `request2size(size)` long (size plus the 8-byte size word, rounded up
/// to 16, at least 32).
fn next_glibc_chunk(b: Block) -> u64 {
    let chunk = ((b.size + 8 + 15) & !15).max(32);
    b.addr.wrapping_sub(16).wrapping_add(chunk)
}

/// Why an interior pointer was taken for a start pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heuristic {
    StdString,
    Length64,
    NewArray,
    MultipleInheritance,
}

/// The mark's outcome, by block (in the order given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub verdicts: Vec<Verdict>,
    /// For a definitely lost block: the bytes of its clique (indirectly
    /// lost through it).
    pub indirect_bytes: Vec<u64>,
    /// For a reachable block: the heuristic it is reachable by only.
    pub heuristics: Vec<Option<Heuristic>>,
    /// Root and block bytes scanned, and root bytes that could not be read.
    pub scanned_bytes: u64,
    pub unreadable_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reachable,
    Possible,
    IndirectLeak,
    Unreached,
}

/// A region of root memory: scanned whole, its words taken as pointers
/// from a definite source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// Bytes read at once from a root region.
const CHUNK: usize = 1 << 20;
const PAGE: u64 = 4096;

pub struct Mark<'a, M: Memory> {
    blocks: &'a [Block],
    memory: &'a mut M,
    state: Vec<State>,
    pending: Vec<bool>,
    heuristic: Vec<Option<Heuristic>>,
    indirect: Vec<u64>,
    stack: Vec<usize>,
    scanned: u64,
    unreadable: u64,
    deadline: Option<Instant>,
    late: bool,
    /// The blocks are glibc malloc's (see the module's doc).
    glibc_chunks: bool,
    /// Where the first block starts and the last one's pointers end.
    low: u64,
    high: u64,
    /// Blocks' words read ahead of their scan.
    prefetched: Prefetched,
}

/// Fewer blocks than this to read in a batch: read their neighbours too.
const PREFETCH_WHEN_FEWER: usize = 16;
/// How far around such a block (by address order) to look.
const PREFETCH_AROUND: usize = 256;
/// The most read ahead and not yet scanned.
const PREFETCH_BYTES: usize = 64 << 20;

/// Words of blocks read ahead, by block index, until their scan.
#[derive(Default)]
struct Prefetched {
    words: std::collections::HashMap<usize, Vec<u8>>,
    bytes: usize,
}

impl Prefetched {
    fn has(&self, i: usize) -> bool {
        self.words.contains_key(&i)
    }

    fn room(&self) -> bool {
        self.bytes < PREFETCH_BYTES
    }

    fn put(&mut self, i: usize, words: Vec<u8>) {
        self.bytes += words.len();
        self.words.insert(i, words);
    }

    fn take(&mut self, i: usize) -> Option<Vec<u8>> {
        let w = self.words.remove(&i)?;
        self.bytes -= w.len();
        Some(w)
    }
}

/// The deadline passed before the mark was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the scan was abandoned at its deadline, after {scanned_bytes} bytes")]
pub struct Abandoned {
    pub scanned_bytes: u64,
}

impl<'a, M: Memory> Mark<'a, M> {
    /// `blocks` sorted by address, not overlapping.
    pub fn new(blocks: &'a [Block], memory: &'a mut M) -> Self {
        let n = blocks.len();
        Mark {
            blocks,
            memory,
            state: vec![State::Unreached; n],
            pending: vec![false; n],
            heuristic: vec![None; n],
            indirect: vec![0; n],
            stack: Vec::new(),
            scanned: 0,
            unreadable: 0,
            deadline: None,
            late: false,
            glibc_chunks: false,
            low: blocks.first().map_or(0, |b| b.addr),
            high: blocks.last().map_or(0, Block::end),
            prefetched: Prefetched::default(),
        }
    }

    /// The blocks are glibc malloc's: pointers at the header of the chunk
    /// that follows a block are no pointers into it.
    pub fn glibc_chunks(mut self) -> Self {
        self.glibc_chunks = true;
        self
    }

    /// Gives up at `deadline` ([`Mark::run`] says so).
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    fn over(&mut self) -> bool {
        if !self.late {
            self.late = self.deadline.is_some_and(|d| Instant::now() >= d);
        }
        self.late
    }

    /// Marks from `roots` and `registers`, then gathers the cliques.
    pub fn run(mut self, roots: &[Region], registers: &[u64]) -> Result<Marked, Abandoned> {
        for r in roots {
            self.scan_region(*r);
        }
        for &value in registers {
            self.push_without_clique(value, true);
        }
        self.process(None);
        for i in 0..self.blocks.len() {
            if self.state[i] == State::Unreached {
                self.push(i);
                self.process(Some(i));
            }
        }
        if self.late {
            return Err(Abandoned {
                scanned_bytes: self.scanned,
            });
        }
        let verdicts = self
            .state
            .iter()
            .map(|s| match s {
                State::Reachable => Verdict::StillReachable,
                State::Possible => Verdict::PossiblyLost,
                State::IndirectLeak => Verdict::IndirectlyLost,
                State::Unreached => Verdict::DefinitelyLost,
            })
            .collect::<Vec<_>>();
        let indirect_bytes = verdicts
            .iter()
            .zip(&self.indirect)
            .map(|(v, &b)| if *v == Verdict::DefinitelyLost { b } else { 0 })
            .collect();
        let heuristics = verdicts
            .iter()
            .zip(&self.heuristic)
            .map(|(v, &h)| {
                if *v == Verdict::StillReachable {
                    h
                } else {
                    None
                }
            })
            .collect();
        Ok(Marked {
            verdicts,
            indirect_bytes,
            heuristics,
            scanned_bytes: self.scanned,
            unreadable_bytes: self.unreadable,
        })
    }

    /// The block `ptr` points into.
    fn find(&self, ptr: u64) -> Option<usize> {
        // Most words point at no block (zeros, small numbers, text).
        if ptr < self.low || ptr >= self.high {
            return None;
        }
        let i = self.blocks.partition_point(|b| b.addr <= ptr);
        let i = i.checked_sub(1)?;
        let b = self.blocks[i];
        let next_chunk = self.glibc_chunks && ptr != b.addr && ptr == next_glibc_chunk(b);
        (ptr < b.end() && !next_chunk).then_some(i)
    }

    fn push(&mut self, i: usize) {
        if !self.pending[i] {
            self.pending[i] = true;
            self.stack.push(i);
        }
    }

    /// Scans the blocks on the mark stack until it is empty, taking them
    /// off in batches read with one call (up to [`IOV_MAX`] blocks or
    /// [`CHUNK`] bytes). A block's state is read as it is scanned, as
    /// valgrind's is when it pops it; one raised by a block before it in
    /// its batch is pushed again, and scanned again, as there.
    fn process(&mut self, clique: Option<usize>) {
        let mut batch: Vec<(usize, u64, usize)> = Vec::new();
        let mut ranges: Vec<(u64, usize)> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        while !self.stack.is_empty() {
            if self.over() {
                self.stack.clear();
                return;
            }
            batch.clear();
            let mut bytes = 0;
            while let Some(&top) = self.stack.last() {
                let (start, len) = words_of(self.blocks[top]);
                if !batch.is_empty() && (batch.len() == IOV_MAX || bytes + len > CHUNK) {
                    break;
                }
                self.stack.pop();
                self.pending[top] = false;
                batch.push((top, start, len));
                bytes += len;
            }
            self.read_batch(&batch, &mut ranges, &mut buf);
            self.scanned += bytes as u64;
            let mut at = 0;
            for &(i, _, len) in &batch {
                let definite = self.state[i] != State::Possible;
                let owned = self.prefetched.take(i);
                let words: &[u8] = match &owned {
                    Some(words) => words,
                    None => {
                        at += len;
                        &buf[at - len..at]
                    }
                };
                // A clique's leader is scanned again if a later clique
                // takes it in: its words are kept for then.
                if clique == Some(i) && self.prefetched.room() {
                    self.prefetched.put(i, words.to_vec());
                }
                let (low, high) = (self.low, self.high);
                for value in candidates(words, low, high) {
                    match clique {
                        None => self.push_without_clique(value, definite),
                        Some(leader) => self.push_with_clique(value, leader, i),
                    }
                }
            }
        }
    }

    /// Reads the words of the `batch` blocks not prefetched into `buf`,
    /// one after another, with one call; when they are few (a chain, one
    /// block at a time), the same call prefetches the unreached blocks
    /// around them by address, which will be scanned too (reached later,
    /// or in the clique pass: every block is), so that a chain costs a
    /// call per hundreds of blocks, not per block.
    fn read_batch(
        &mut self,
        batch: &[(usize, u64, usize)],
        ranges: &mut Vec<(u64, usize)>,
        buf: &mut Vec<u8>,
    ) {
        ranges.clear();
        let mut needed = 0;
        for &(i, start, len) in batch {
            if len > 0 && !self.prefetched.has(i) {
                ranges.push((start, len));
                needed += len;
            }
        }
        let direct = ranges.len();
        let mut extra: Vec<usize> = Vec::new();
        if direct > 0 && direct < PREFETCH_WHEN_FEWER && self.prefetched.room() {
            let mut total = needed;
            'around: for &(i, _, _) in batch {
                let (lo, hi) = (i.saturating_sub(PREFETCH_AROUND), i + PREFETCH_AROUND);
                for j in lo..hi.min(self.blocks.len()) {
                    if ranges.len() == IOV_MAX || total >= CHUNK {
                        break 'around;
                    }
                    let (start, len) = words_of(self.blocks[j]);
                    let wanted = self.state[j] == State::Unreached
                        && !self.pending[j]
                        && len > 0
                        && len <= CHUNK
                        && !self.prefetched.has(j)
                        && !batch.iter().any(|b| b.0 == j)
                        && !extra.contains(&j);
                    if wanted {
                        ranges.push((start, len));
                        extra.push(j);
                        total += len;
                    }
                }
            }
        }
        let total: usize = ranges.iter().map(|r| r.1).sum();
        buf.clear();
        buf.resize(total, 0);
        if !ranges.is_empty() && !self.memory.read_many(ranges, buf) {
            self.read_each(ranges, buf);
        }
        // The prefetched ones, after the batch's own words.
        let mut at = needed;
        for (k, &j) in extra.iter().enumerate() {
            let len = ranges[direct + k].1;
            self.prefetched.put(j, buf[at..at + len].to_vec());
            at += len;
        }
        buf.truncate(needed);
    }

    /// What a batch's one read could not: each block alone, and a block
    /// that cannot be read whole word by word (a traced block is mapped:
    /// only a process gone mid-scan fails here), zero where unreadable.
    fn read_each(&mut self, ranges: &[(u64, usize)], buf: &mut [u8]) {
        let mut at = 0;
        for &(start, len) in ranges {
            let part = &mut buf[at..at + len];
            if !self.memory.read(start, part) {
                for (k, w) in part.chunks_exact_mut(8).enumerate() {
                    if !self.memory.read(start + 8 * k as u64, w) {
                        w.fill(0);
                    }
                }
            }
            at += len;
        }
    }

    /// A root region, a chunk at a time; a chunk that cannot be read whole
    /// is read page by page, and unreadable pages are counted.
    fn scan_region(&mut self, r: Region) {
        let mut at = r.start.next_multiple_of(8);
        let end = r.end & !7;
        let mut buf = vec![0u8; CHUNK];
        while at < end {
            if self.over() {
                return;
            }
            let len = (end - at).min(CHUNK as u64) as usize;
            if self.memory.read(at, &mut buf[..len]) {
                self.scan_words(&buf[..len]);
                self.scanned += len as u64;
                at += len as u64;
                continue;
            }
            // Page by page through this chunk.
            let chunk_end = at + len as u64;
            while at < chunk_end {
                let page_end = ((at / PAGE) + 1) * PAGE;
                let n = (page_end.min(chunk_end) - at) as usize;
                if self.memory.read(at, &mut buf[..n]) {
                    self.scan_words(&buf[..n]);
                    self.scanned += n as u64;
                } else {
                    self.unreadable += n as u64;
                }
                at += n as u64;
            }
        }
    }

    fn scan_words(&mut self, bytes: &[u8]) {
        let (low, high) = (self.low, self.high);
        for value in candidates(bytes, low, high) {
            self.push_without_clique(value, true);
        }
    }

    /// Valgrind's `lc_push_without_clique_if_a_chunk_ptr`.
    fn push_without_clique(&mut self, ptr: u64, definite: bool) {
        let Some(i) = self.find(ptr) else {
            return;
        };
        let start = self.blocks[i].addr;
        if self.state[i] == State::Reachable {
            if self.heuristic[i].is_some() && ptr == start {
                self.heuristic[i] = None;
            }
            return;
        }
        let via_start = if ptr == start {
            true
        } else {
            self.heuristic[i] = self.heuristic_of(ptr, i);
            self.heuristic[i].is_some()
        };
        if via_start && definite {
            self.state[i] = State::Reachable;
            self.push(i);
        } else if self.state[i] == State::Unreached {
            self.state[i] = State::Possible;
            self.push(i);
        }
    }

    /// Valgrind's `lc_push_with_clique_if_a_chunk_ptr`.
    fn push_with_clique(&mut self, ptr: u64, leader: usize, cur: usize) {
        let Some(i) = self.find(ptr) else {
            return;
        };
        if self.state[i] == State::Unreached && i != leader {
            self.push(i);
            self.indirect[leader] += self.blocks[i].size + self.indirect[i];
            self.state[i] = State::IndirectLeak;
            let _ = cur; // valgrind keeps it for its block lists only
        }
    }

    /// The heuristic by which interior pointer `ptr` counts as a start
    /// pointer to block `i` (valgrind's `heuristic_reachedness`).
    fn heuristic_of(&mut self, ptr: u64, i: usize) -> Option<Heuristic> {
        let b = self.blocks[i];
        if ptr == b.addr + 24 {
            if let Some(capacity) = self.memory.word(b.addr + 8) {
                if 24u64.checked_add(capacity).and_then(|c| c.checked_add(1)) == Some(b.size) {
                    if let Some(length) = self.memory.word(b.addr) {
                        if length <= capacity {
                            return Some(Heuristic::StdString);
                        }
                    }
                }
            }
        }
        if ptr == b.addr + 8 {
            if let Some(size) = self.memory.word(b.addr) {
                if size > 0 && b.size.checked_sub(8) == Some(size) {
                    return Some(Heuristic::Length64);
                }
                // The same word, as new[]'s element count.
                if size > 0 && b.size >= 8 && (b.size - 8).is_multiple_of(size) {
                    return Some(Heuristic::NewArray);
                }
            }
        }
        if ptr.is_multiple_of(8) {
            let inner = self.memory.word(ptr)?;
            if inner.is_multiple_of(8) && inner >= PAGE {
                let first = self.memory.word(b.addr)?;
                if first.is_multiple_of(8)
                    && first >= PAGE
                    && self.is_vtable(inner)
                    && self.is_vtable(first)
                {
                    return Some(Heuristic::MultipleInheritance);
                }
            }
        }
        None
    }

    /// Valgrind's test: in a readable file mapping, and among its first
    /// 20 words two non-null ones point into executable file mappings
    /// (null ones skipped), before any that does not.
    fn is_vtable(&mut self, ptr: u64) -> bool {
        let Some(m) = self.memory.mapping(ptr) else {
            return false;
        };
        if !m.file || !m.readable {
            return false;
        }
        // As valgrind bounds it (its segment ends are inclusive).
        let last = (ptr + 20 * 8).min(m.end.saturating_sub(9));
        let mut found = 0;
        let mut at = ptr;
        while at <= last {
            let Some(f) = self.memory.word(at) else {
                return false;
            };
            at += 8;
            if f == 0 {
                continue;
            }
            match self.memory.mapping(f) {
                Some(k) if k.file && k.executable => found += 1,
                _ => return false,
            }
            if found == 2 {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::reach::memory::MappingKind;

    /// Memory as a set of word-addressed regions.
    #[derive(Default)]
    struct Picture {
        words: BTreeMap<u64, u64>,
        code: Vec<(u64, u64)>,
        rodata: Vec<(u64, u64)>,
        /// Calls to read_many (one system call each, for a process).
        batches: usize,
    }

    impl Picture {
        fn set(&mut self, addr: u64, value: u64) {
            self.words.insert(addr, value);
        }
    }

    impl Memory for Picture {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            for (k, b) in buf.chunks_mut(8).enumerate() {
                let w = self.words.get(&(addr + 8 * k as u64)).copied().unwrap_or(0);
                b.copy_from_slice(&w.to_le_bytes()[..b.len()]);
            }
            true
        }
        fn read_many(&mut self, ranges: &[(u64, usize)], buf: &mut [u8]) -> bool {
            self.batches += 1;
            let mut at = 0;
            for &(addr, len) in ranges {
                self.read(addr, &mut buf[at..at + len]);
                at += len;
            }
            true
        }
        fn mapping(&self, addr: u64) -> Option<MappingKind> {
            let find =
                |set: &[(u64, u64)]| set.iter().find(|(s, e)| *s <= addr && addr < *e).copied();
            if let Some((_, end)) = find(&self.code) {
                return Some(MappingKind {
                    file: true,
                    readable: true,
                    executable: true,
                    end,
                });
            }
            find(&self.rodata).map(|(_, end)| MappingKind {
                file: true,
                readable: true,
                executable: false,
                end,
            })
        }
    }

    const ROOT: Region = Region {
        start: 0x1000,
        end: 0x2000,
    };

    fn block(addr: u64, size: u64) -> Block {
        Block { addr, size }
    }

    fn mark(blocks: &[Block], pic: &mut Picture, registers: &[u64]) -> Marked {
        Mark::new(blocks, pic)
            .run(&[ROOT], registers)
            .expect("no deadline")
    }

    use Verdict::*;

    #[test]
    fn a_start_pointer_from_a_root_reaches_and_an_interior_one_only_possibly() {
        let blocks = [block(0x10000, 32), block(0x20000, 32), block(0x30000, 32)];
        let mut pic = Picture::default();
        pic.set(0x1000, 0x10000);
        pic.set(0x1008, 0x20010);
        let m = mark(&blocks, &mut pic, &[]);
        assert_eq!(m.verdicts, [StillReachable, PossiblyLost, DefinitelyLost]);
        // Every block is scanned once: the lost one as its clique's leader.
        assert_eq!(m.scanned_bytes, 0x1000 + 3 * 32);
    }

    #[test]
    fn chains_are_read_hundreds_of_blocks_a_call_with_the_same_verdicts() {
        // Two chains of 2000 blocks, each block pointing at the one below
        // it: one hangs from a root, the other from nothing.
        const N: u64 = 2000;
        let blocks: Vec<Block> = (0..2 * N)
            .map(|i| block(0x100000 + i * 0x40, 0x40))
            .collect();
        let mut pic = Picture::default();
        for i in 1..2 * N {
            if i != N {
                pic.set(blocks[i as usize].addr, blocks[i as usize - 1].addr);
            }
        }
        pic.set(0x1000, blocks[N as usize - 1].addr);
        let m = mark(&blocks, &mut pic, &[]);
        let n = N as usize;
        assert!(m.verdicts[..n].iter().all(|v| *v == StillReachable));
        assert_eq!(m.verdicts[2 * n - 1], DefinitelyLost);
        assert!(m.verdicts[n..2 * n - 1]
            .iter()
            .all(|v| *v == IndirectlyLost));
        assert_eq!(m.indirect_bytes[2 * n - 1], (N - 1) * 0x40);
        assert!(
            pic.batches < 40,
            "{} reads for {} blocks",
            pic.batches,
            2 * N
        );
    }

    #[test]
    fn a_pointer_at_the_next_glibc_chunk_header_is_the_allocators() {
        // malloc(100): a 112-byte chunk, the next one's header at +96,
        // inside the 100 bytes; malloc(96) the same chunk, +96 its end.
        let blocks = [block(0x10000, 100), block(0x20000, 100), block(0x30000, 96)];
        let mut pic = Picture::default();
        pic.set(0x1000, 0x10000 + 96); // the arena's top chunk, say
        pic.set(0x1008, 0x20000 + 88);
        pic.set(0x1010, 0x30000 + 88);
        let glibc = Mark::new(&blocks, &mut pic)
            .glibc_chunks()
            .run(&[ROOT], &[])
            .expect("no deadline");
        assert_eq!(glibc.verdicts, [DefinitelyLost, PossiblyLost, PossiblyLost]);
        // Another allocator's blocks: an interior pointer like any other.
        let other = mark(&blocks, &mut pic, &[]);
        assert_eq!(other.verdicts, [PossiblyLost, PossiblyLost, PossiblyLost]);
    }

    #[test]
    fn what_a_possibly_reached_block_points_to_is_possibly_reached() {
        let blocks = [block(0x10000, 32), block(0x20000, 32)];
        let mut pic = Picture::default();
        pic.set(0x1000, 0x10008);
        pic.set(0x10000, 0x20000);
        let m = mark(&blocks, &mut pic, &[]);
        assert_eq!(m.verdicts, [PossiblyLost, PossiblyLost]);
        // Reached from the start later: both rise.
        pic.set(0x1010, 0x10000);
        let m = mark(&blocks, &mut pic, &[]);
        assert_eq!(m.verdicts, [StillReachable, StillReachable]);
    }

    #[test]
    fn a_lost_tree_has_one_definite_root_and_counts_the_rest_indirect() {
        // root block A -> B, C; B -> D; nothing points at A.
        let (a, b, c, d) = (0x40000, 0x10000, 0x20000, 0x30000);
        let blocks = [block(b, 16), block(c, 16), block(d, 16), block(a, 32)];
        let mut pic = Picture::default();
        pic.set(a, b);
        pic.set(a + 8, c);
        pic.set(b, d);
        let m = mark(&blocks, &mut pic, &[]);
        // B, the lowest, leads a clique of B and D first; A then takes it.
        assert_eq!(
            m.verdicts,
            [
                IndirectlyLost,
                IndirectlyLost,
                IndirectlyLost,
                DefinitelyLost
            ]
        );
        assert_eq!(m.indirect_bytes, [0, 0, 0, 48]);
    }

    #[test]
    fn a_lost_cycle_is_led_by_its_lowest_block() {
        let blocks = [block(0x10000, 16), block(0x20000, 24), block(0x30000, 8)];
        let mut pic = Picture::default();
        pic.set(0x10000, 0x20000);
        pic.set(0x20000, 0x30000);
        pic.set(0x30000, 0x10000);
        let m = mark(&blocks, &mut pic, &[]);
        assert_eq!(m.verdicts, [DefinitelyLost, IndirectlyLost, IndirectlyLost]);
        assert_eq!(m.indirect_bytes, [32, 0, 0]);
    }

    #[test]
    fn interior_pointers_make_indirect_among_the_lost_too() {
        let blocks = [block(0x10000, 32), block(0x20000, 32)];
        let mut pic = Picture::default();
        pic.set(0x10000, 0x20018);
        let m = mark(&blocks, &mut pic, &[]);
        assert_eq!(m.verdicts, [DefinitelyLost, IndirectlyLost]);
    }

    #[test]
    fn registers_are_definite_roots_and_a_zero_sized_block_has_an_address() {
        let blocks = [block(0x10000, 0), block(0x20000, 16)];
        let mut pic = Picture::default();
        let m = mark(&blocks, &mut pic, &[0x10000, 0x20008]);
        assert_eq!(m.verdicts, [StillReachable, PossiblyLost]);
    }

    #[test]
    fn the_heuristics_take_interior_pointers_for_start_pointers() {
        let mut pic = Picture::default();
        // new[] of 3 elements of 16 bytes: count first.
        let array = block(0x10000, 8 + 3 * 16);
        pic.set(array.addr, 3);
        pic.set(0x1000, array.addr + 8);
        // length64: the size of what follows, first.
        let sized = block(0x20000, 8 + 40);
        pic.set(sized.addr, 40);
        pic.set(0x1008, sized.addr + 8);
        // std::string's old rep: length, capacity, refcount, chars, NUL.
        let string = block(0x30000, 24 + 15 + 1);
        pic.set(string.addr, 10);
        pic.set(string.addr + 8, 15);
        pic.set(0x1010, string.addr + 24);
        // Multiple inheritance: the second base's vtable pointer inside.
        pic.code.push((0x900000, 0x901000));
        pic.rodata.push((0x800000, 0x801000));
        let (vt1, vt2) = (0x800100, 0x800200);
        for vt in [vt1, vt2] {
            pic.set(vt, 0x900010);
            pic.set(vt + 8, 0x900020);
        }
        let object = block(0x40000, 32);
        pic.set(object.addr, vt1);
        pic.set(object.addr + 16, vt2);
        pic.set(0x1018, object.addr + 16);
        // And one that is none of those.
        let plain = block(0x50000, 32);
        pic.set(plain.addr, 7);
        pic.set(0x1020, plain.addr + 8);
        let blocks = [array, sized, string, object, plain];
        let m = mark(&blocks, &mut pic, &[]);
        assert_eq!(
            m.verdicts,
            [
                StillReachable,
                StillReachable,
                StillReachable,
                StillReachable,
                PossiblyLost
            ]
        );
        assert_eq!(
            m.heuristics,
            [
                Some(Heuristic::NewArray),
                Some(Heuristic::Length64),
                Some(Heuristic::StdString),
                Some(Heuristic::MultipleInheritance),
                None
            ]
        );
    }

    #[test]
    fn a_mark_past_its_deadline_is_abandoned() {
        let blocks = [block(0x10000, 16)];
        let mut pic = Picture::default();
        let past = Instant::now();
        let r = Mark::new(&blocks, &mut pic).until(past).run(&[ROOT], &[]);
        assert_eq!(r, Err(Abandoned { scanned_bytes: 0 }));
    }

    #[test]
    fn unreadable_root_pages_are_counted_and_skipped() {
        struct Holes(Picture);
        impl Memory for Holes {
            fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
                // The root's second page cannot be read.
                let end = addr + buf.len() as u64;
                if addr < 0x3000 && end > 0x2000 {
                    return false;
                }
                self.0.read(addr, buf)
            }
            fn mapping(&self, addr: u64) -> Option<MappingKind> {
                self.0.mapping(addr)
            }
        }
        let mut pic = Picture::default();
        pic.set(0x1000, 0x10000);
        let mut holes = Holes(pic);
        let blocks = [block(0x10000, 16)];
        let roots = [Region {
            start: 0x1000,
            end: 0x3000,
        }];
        let m = Mark::new(&blocks, &mut holes)
            .run(&roots, &[])
            .expect("no deadline");
        assert_eq!(m.verdicts, [StillReachable]);
        assert_eq!(m.unreadable_bytes, 4096);
        assert_eq!(m.scanned_bytes, 4096 + 16);
    }
}
