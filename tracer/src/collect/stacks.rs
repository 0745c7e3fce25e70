//! Call stacks recorded by the probes: the immediate caller (read by the
//! probe from the user stack) followed by the probes' walk (by unwind
//! tables or frame pointers), and why that walk ended.

use std::{collections::HashMap, rc::Rc};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tracer_common::{StackEnd, StackRecord, STACK_UNKNOWN};

/// The probes' stack table: stack id → frames.
pub type StackTable = BpfHashMap<MapData, u32, StackRecord>;

/// Reads stacks out of the probes' stack table, once per stack id (a
/// recorded stack never changes).
pub struct Stacks {
    /// Shared by every traced process's reports: stacks are addresses,
    /// each process symbolizes them in its own mappings.
    map: Rc<StackTable>,
    cache: HashMap<u32, (Vec<u64>, StackEnd)>,
}

impl Stacks {
    pub fn new(map: Rc<StackTable>) -> Self {
        Stacks {
            map,
            cache: HashMap::new(),
        }
    }

    fn record(&mut self, stack_id: u32) -> &(Vec<u64>, StackEnd) {
        let map = &self.map;
        self.cache.entry(stack_id).or_insert_with(|| {
            map.get(&stack_id, 0)
                .map(|r| {
                    let end = StackEnd::from_u32(r.end).unwrap_or(StackEnd::Unsupported);
                    (frames_of(&r).to_vec(), end)
                })
                .unwrap_or((Vec::new(), StackEnd::Complete))
        })
    }

    fn walk(&mut self, stack_id: u32) -> &[u64] {
        &self.record(stack_id).0
    }

    /// Why a stack's walk ended; `None` for a stack not recorded.
    pub fn end(&mut self, stack_id: u32) -> Option<StackEnd> {
        if stack_id == STACK_UNKNOWN {
            return None;
        }
        Some(self.record(stack_id).1)
    }

    /// Return addresses, innermost first: `caller`, then the walk (whose
    /// frame 0, the probed instruction, is dropped).
    pub fn frames(&mut self, caller: u64, stack_id: u32) -> Vec<u64> {
        let mut frames = Vec::new();
        if caller != 0 {
            frames.push(caller);
        }
        if stack_id == STACK_UNKNOWN {
            return frames;
        }
        let walk = self.walk(stack_id).get(1..).unwrap_or(&[]);
        // Kernels that recover the caller themselves (probe on `push %rbp`)
        // already list it first.
        let walk = match walk.first() {
            Some(&first) if first == caller => &walk[1..],
            _ => walk,
        };
        frames.extend(walk.iter().copied().filter(|&ip| ip != 0));
        frames
    }

    /// The probed instruction a stack starts at (which function was called).
    pub fn probe_ip(&mut self, stack_id: u32) -> Option<u64> {
        if stack_id == STACK_UNKNOWN {
            return None;
        }
        self.walk(stack_id).first().copied()
    }
}

/// The recorded frames of a stack: up to the first empty slot.
fn frames_of(record: &StackRecord) -> &[u64] {
    let len = record
        .ips
        .iter()
        .position(|&ip| ip == 0)
        .unwrap_or(record.ips.len());
    &record.ips[..len]
}
