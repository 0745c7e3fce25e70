//! The reachability section of a report: what the last scan said of the
//! blocks older than the threshold, by verdict and allocation site (as
//! valgrind's loss records), with the trend of what is definitely lost.

use std::{collections::HashMap, time::Duration};

use crate::{
    collect::{stacks::Stacks, SiteId},
    reach::{Scan, Verdict},
    symbolize::{Frame, Symbolizer, SymbolizerGone},
};

/// Bytes and blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    pub bytes: u64,
    pub blocks: u64,
}

/// One verdict at one allocation site.
#[derive(Debug, Clone, PartialEq)]
pub struct LossRecord {
    pub verdict: Verdict,
    pub bytes: u64,
    pub blocks: u64,
    /// For definitely lost blocks: what is lost through them besides.
    pub indirect_bytes: u64,
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReachabilityReport {
    /// How long the target was stopped.
    pub stopped: Duration,
    /// Of which reading the outstanding blocks from the kernel.
    pub blocks_read: Duration,
    pub threads: usize,
    pub scanned_bytes: u64,
    pub unreadable_bytes: u64,
    /// Set when the scan gave no verdicts, and why.
    pub incomplete: Option<String>,
    /// Over the blocks older than the threshold, in [`VERDICTS`] order.
    pub totals: [Amount; 4],
    /// Most lost first: definitely, indirectly, possibly lost, then still
    /// reachable; within each, largest first; at most `top` of each.
    pub records: Vec<LossRecord>,
    /// Change in definitely lost bytes since the previous complete scan.
    pub definitely_lost_growth: Option<i64>,
    /// A Go program: its own heap is not scanned (only the C heap).
    pub go_heap_not_scanned: bool,
    /// Made as the program called `_exit`.
    pub at_exit: bool,
}

/// The verdicts in report order.
pub const VERDICTS: [Verdict; 4] = [
    Verdict::DefinitelyLost,
    Verdict::IndirectlyLost,
    Verdict::PossiblyLost,
    Verdict::StillReachable,
];

/// The name reports use (valgrind's, in JSON's style).
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::DefinitelyLost => "definitely_lost",
        Verdict::IndirectlyLost => "indirectly_lost",
        Verdict::PossiblyLost => "possibly_lost",
        Verdict::StillReachable => "still_reachable",
    }
}

fn rank(v: Verdict) -> usize {
    VERDICTS
        .iter()
        .position(|x| *x == v)
        .unwrap_or(VERDICTS.len())
}

/// The section for `scan`: old blocks only, symbolized by site.
pub async fn section(
    scan: Scan,
    stacks: &mut Stacks,
    symbolizer: &Symbolizer,
    top: usize,
    previous_definitely_lost: Option<u64>,
    go: bool,
) -> Result<ReachabilityReport, SymbolizerGone> {
    let mut totals = [Amount::default(); 4];
    let mut by_site: HashMap<(Verdict, SiteId), (Amount, u64)> = HashMap::new();
    for (i, (b, v)) in scan.blocks.iter().enumerate() {
        if !b.old {
            continue;
        }
        let t = &mut totals[rank(*v)];
        t.bytes += b.size;
        t.blocks += 1;
        let e = by_site.entry((*v, b.site)).or_default();
        e.0.bytes += b.size;
        e.0.blocks += 1;
        e.1 += scan.indirect_bytes.get(i).copied().unwrap_or(0);
    }
    let sites: Vec<((Verdict, SiteId), (Amount, u64))> = by_site.into_iter().collect();
    let raw: Vec<Vec<u64>> = sites
        .iter()
        .map(|((_, s), _)| stacks.frames(s.caller, s.stack_id))
        .collect();
    let by_addr = symbolizer
        .symbolize_set(raw.iter().flatten().copied(), true)
        .await?;
    // Sites whose stacks symbolize alike are one record.
    let mut merged: Vec<LossRecord> = Vec::new();
    for (((verdict, _), (amount, indirect)), stack) in sites.into_iter().zip(raw) {
        let frames: Vec<Frame> = stack
            .iter()
            .flat_map(|a| by_addr.get(a).cloned().unwrap_or_default())
            .collect();
        match merged
            .iter_mut()
            .find(|r| r.verdict == verdict && same_stack(&r.frames, &frames))
        {
            Some(r) => {
                r.bytes += amount.bytes;
                r.blocks += amount.blocks;
                r.indirect_bytes += indirect;
            }
            None => merged.push(LossRecord {
                verdict,
                bytes: amount.bytes,
                blocks: amount.blocks,
                indirect_bytes: indirect,
                frames,
            }),
        }
    }
    merged.sort_by(|a, b| {
        rank(a.verdict)
            .cmp(&rank(b.verdict))
            .then(b.bytes.cmp(&a.bytes))
            .then(b.blocks.cmp(&a.blocks))
    });
    let mut shown = [0usize; 4];
    merged.retain(|r| {
        let n = &mut shown[rank(r.verdict)];
        *n += 1;
        *n <= top
    });
    let definitely = totals[0].bytes;
    let complete = scan.incomplete.is_none();
    Ok(ReachabilityReport {
        stopped: scan.stopped,
        blocks_read: scan.blocks_read,
        threads: scan.threads,
        scanned_bytes: scan.scanned_bytes,
        unreadable_bytes: scan.unreadable_bytes,
        incomplete: scan.incomplete,
        totals,
        records: merged,
        definitely_lost_growth: match (complete, previous_definitely_lost) {
            (true, Some(p)) => Some(definitely as i64 - p as i64),
            _ => None,
        },
        go_heap_not_scanned: go,
        at_exit: scan.at_exit,
    })
}

/// Same functions and lines, innermost first.
fn same_stack(a: &[Frame], b: &[Frame]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.symbol == y.symbol && x.line == y.line && x.file == y.file)
}
