//! The kernel-side tables: their capacities, and the handles userspace
//! keeps to read them while tracing.

use std::rc::Rc;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use tracer_common::{
    AllocKey, AllocRecord, Config, GoroutineKey, GoroutineRecord, Pending, SiteKey, SiteTotals,
    SpawnPending, TaskRecord,
};

use super::{ProbeError, Probes};
use crate::collect::stacks::StackTable;

/// Capacities of the kernel-side tables.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub allocs: u32,
    pub sites: u32,
    pub stacks: u32,
    pub threads: u32,
    pub tasks: u32,
    pub goroutines: u32,
    pub unwind_rows: u32,
    /// Traced processes at once.
    pub processes: u32,
    /// `--kernel`: outstanding kernel blocks and kernel stacks (1 each
    /// without it).
    pub kmem_blocks: u32,
    pub kmem_stacks: u32,
}

/// The probes' goroutine table.
pub type GoroutineTable = HashMap<MapData, GoroutineKey, GoroutineRecord>;

/// The maps userspace reads while tracing. The heap tables have one
/// owner (the collector, which also removes entries); the others are only
/// read, by every traced process's reports.
pub struct Maps {
    pub heap: HeapMaps,
    pub tasks: Rc<TaskMaps>,
    pub stacks: Rc<StackTable>,
    /// Present when Go programs are traced.
    pub goroutines: Option<Rc<GoroutineTable>>,
    /// Processes that joined the traced set or exec'd.
    pub events: RingBuf<MapData>,
}

/// Heap tables.
pub struct HeapMaps {
    pub sites: HashMap<MapData, SiteKey, SiteTotals>,
    /// The live allocations, read only to forget those of a process gone.
    pub allocs: HashMap<MapData, AllocKey, AllocRecord>,
    pub config: Array<MapData, Config>,
    pub counters: PerCpuArray<MapData, u64>,
    pub pending: HashMap<MapData, u32, Pending>,
}

/// Thread and child-process tables.
pub struct TaskMaps {
    pub tasks: HashMap<MapData, u32, TaskRecord>,
    pub spawn_pending: HashMap<MapData, u32, SpawnPending>,
    /// tgid → when the OOM killer chose that traced process.
    pub oom_killed: HashMap<MapData, u32, u64>,
}

impl Probes {
    /// Moves the unwind maps (rows, rules, processes, slots, publish count)
    /// out of the loaded object, for [`crate::unwind::UnwindTables`].
    pub fn take_unwind_maps(&mut self) -> Result<[aya::maps::Map; 5], ProbeError> {
        let mut take =
            |name: &'static str| self.ebpf.take_map(name).ok_or(ProbeError::Missing(name));
        Ok([
            take("UNWIND_ROWS")?,
            take("UNWIND_RULES")?,
            take("UNWIND_PROCESSES")?,
            take("UNWIND_SLOTS")?,
            take("UNWIND_PUBLISHED")?,
        ])
    }

    /// Moves the maps userspace reads out of the loaded object.
    pub fn take_maps(&mut self) -> Result<Maps, ProbeError> {
        macro_rules! take {
            ($name:literal) => {
                self.ebpf
                    .take_map($name)
                    .ok_or(ProbeError::Missing($name))?
                    .try_into()
                    .map_err(|_| ProbeError::Missing($name))?
            };
        }
        Ok(Maps {
            heap: HeapMaps {
                sites: take!("SITES"),
                allocs: take!("ALLOCS"),
                config: take!("CONFIG"),
                counters: take!("COUNTERS"),
                pending: take!("PENDING"),
            },
            tasks: Rc::new(TaskMaps {
                tasks: take!("TASKS"),
                spawn_pending: take!("SPAWN_PENDING"),
                oom_killed: take!("OOM_KILLED"),
            }),
            stacks: Rc::new(take!("STACKS")),
            goroutines: if self.go && self.mode == super::ProbeMode::Full {
                Some(Rc::new(take!("GOROUTINES")))
            } else {
                None
            },
            events: take!("EVENTS"),
        })
    }
}
