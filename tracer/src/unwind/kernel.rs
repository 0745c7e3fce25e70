//! The probes' unwind maps, shared by every traced process: each object's
//! rows (written once per object, however many processes map it, through
//! a memory mapping of the row array), the rules they name, and per
//! process its executable mappings (two slots each: one live, one
//! rewritten and then published).

use std::{collections::HashMap, fs, os::fd::AsRawFd, ptr::NonNull};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use tracer_common::{
    walk, ProcessMappings, ReturnProbeOffsets, UnwindMapping, UnwindRow, UnwindRule,
    MAX_UNWIND_MAPPINGS, MAX_UNWIND_PROCESSES, MAX_UNWIND_RULES,
};

use super::UnwindMode;
use super::{key_of, object_info, ObjectKey, ObjectUnwind, UnwindError};
use crate::process::procfs;

/// `UNWIND_ROWS`, mapped into our memory (the kernel's own pages: a write
/// here is what the probes read).
struct RowTable {
    ptr: NonNull<UnwindRow>,
    capacity: u32,
    len: usize,
    _map: MapData,
}

impl RowTable {
    fn new(map: MapData, capacity: u32) -> Result<Self, UnwindError> {
        let len = capacity as usize * size_of::<UnwindRow>();
        // SAFETY: mapping a BPF_F_MMAPABLE array map's fd, whose size is
        // `capacity` rows (set at load); the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd_raw(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(UnwindError::Mmap(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast())
            .ok_or_else(|| UnwindError::Mmap(std::io::Error::other("mmap returned null")))?;
        Ok(RowTable {
            ptr,
            capacity,
            len,
            _map: map,
        })
    }

    fn rows_mut(&mut self) -> &mut [UnwindRow] {
        // SAFETY: `ptr` maps `capacity` rows for as long as `self` lives,
        // and only this (single-threaded) owner writes through it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity as usize) }
    }
}

impl Drop for RowTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

trait AsFdRaw {
    fn as_fd_raw(&self) -> i32;
}

impl AsFdRaw for aya::maps::MapFd {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd;
        self.as_fd().as_raw_fd()
    }
}

/// What the tables hold, for the start banner and the reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnwindSummary {
    /// Objects walked by their tables.
    pub objects: usize,
    pub rows: u64,
    pub rules: usize,
    /// Kernel memory the tables take.
    pub bytes: u64,
    /// Objects walked by frame pointers (Go).
    pub frame_pointer_objects: Vec<String>,
    /// Objects with no unwind information (their frames end a stack).
    pub without_tables: Vec<String>,
    /// Objects that did not fit `--max-unwind-rows`.
    pub no_room: Vec<String>,
    /// Executable mappings beyond what the kernel table holds per process.
    pub mappings_dropped: usize,
}

/// The unwind maps of every traced process.
pub struct UnwindTables {
    mode: UnwindMode,
    rows: RowTable,
    used_rows: u32,
    rules: Array<MapData, UnwindRule>,
    rule_ids: HashMap<UnwindRule, u16>,
    processes: Array<MapData, ProcessMappings>,
    slots: BpfHashMap<MapData, u32, u32>,
    /// Bumped after every change to `slots` (index 0 is ours; the task
    /// tracepoints bump index 1): the probes' per-CPU copy of a process's
    /// slot is good while neither has moved.
    published: Array<MapData, u64>,
    publish_count: u64,
    /// Where each object's rows are: (base, count); `None` when it has none.
    placed: HashMap<ObjectKey, Option<(u32, u32)>>,
    /// Where the kernel keeps pending return probes' real return addresses.
    offsets: ReturnProbeOffsets,
    /// Pairs of process slots not in use, by their first slot.
    free_pairs: Vec<u32>,
    traced: HashMap<u32, ProcessTables>,
}

/// One traced process's part of the tables.
struct ProcessTables {
    /// Its two slots are `pair` and `pair + 1`.
    pair: u32,
    /// Which of the two is live (the other is rewritten and then
    /// published, so a walk never sees a half-written table).
    live: u32,
    /// The executable mappings last written, to notice dlopen and munmap.
    last_maps: Vec<(u64, u64, u64, u64)>,
    summary: UnwindSummary,
}

fn array_of(map: Map, name: &'static str) -> Result<MapData, UnwindError> {
    match map {
        Map::Array(m) => Ok(m),
        _ => Err(UnwindError::Map(format!("{name} is not an array"))),
    }
}

impl UnwindTables {
    /// Takes the unwind maps out of the loaded object; `row_capacity` is the
    /// size `UNWIND_ROWS` was loaded with.
    pub fn new(mode: UnwindMode, maps: [Map; 5], row_capacity: u32) -> Result<Self, UnwindError> {
        let [rows, rules, processes, slots, published] = maps;
        let map_err = |e: aya::maps::MapError| UnwindError::Map(e.to_string());
        Ok(UnwindTables {
            mode,
            rows: RowTable::new(array_of(rows, "UNWIND_ROWS")?, row_capacity)?,
            used_rows: 0,
            rules: Array::try_from(rules).map_err(map_err)?,
            rule_ids: HashMap::new(),
            processes: Array::try_from(processes).map_err(map_err)?,
            slots: BpfHashMap::try_from(slots).map_err(map_err)?,
            published: Array::try_from(published).map_err(map_err)?,
            publish_count: 0,
            placed: HashMap::new(),
            offsets: return_probe_offsets()?,
            free_pairs: (0..MAX_UNWIND_PROCESSES / 2).rev().map(|i| 2 * i).collect(),
            traced: HashMap::new(),
        })
    }

    /// What the tables hold for process `pid`.
    pub fn summary(&self, pid: u32) -> UnwindSummary {
        self.traced
            .get(&pid)
            .map(|p| p.summary.clone())
            .unwrap_or_default()
    }

    /// Rereads process `pid`'s mappings and, if they changed (at attach,
    /// after a dlopen or an exec), builds tables for new objects and
    /// publishes the mappings. A process beyond the slots the kernel table
    /// has keeps being walked by frame pointers, and its summary says so.
    pub fn refresh(&mut self, pid: u32) -> Result<(), UnwindError> {
        let Ok(maps) = procfs::read_maps(pid) else {
            return Ok(()); // the process is gone: nothing left to walk
        };
        let exec: Vec<&procfs::Mapping> = maps
            .iter()
            .filter(|m| m.executable && m.path.is_some() && m.inode != 0)
            .collect();
        let fingerprint: Vec<_> = exec
            .iter()
            .map(|m| (m.start, m.end, m.file_offset, m.inode))
            .collect();
        if !self.traced.contains_key(&pid) {
            let Some(pair) = self.free_pairs.pop() else {
                return Err(UnwindError::Map(format!(
                    "no room for the mappings of another process (the kernel table holds {})",
                    MAX_UNWIND_PROCESSES / 2
                )));
            };
            self.traced.insert(
                pid,
                ProcessTables {
                    pair,
                    live: 1,
                    last_maps: Vec::new(),
                    summary: UnwindSummary::default(),
                },
            );
        }
        if self
            .traced
            .get(&pid)
            .is_some_and(|p| p.last_maps == fingerprint)
        {
            return Ok(());
        }
        let mut summary = UnwindSummary::default();
        let mut table = Box::<ProcessMappings>::default();
        let mut entries = Vec::new();
        let mut objects: HashMap<ObjectKey, u32> = HashMap::new();
        for m in &exec {
            if let Some((entry, key)) = self.mapping_entry(pid, m, &mut summary) {
                if let Some(key) = key {
                    objects.insert(key, entry.row_count);
                }
                entries.push(entry);
            }
        }
        entries.sort_by_key(|e| e.start);
        summary.mappings_dropped = entries.len().saturating_sub(MAX_UNWIND_MAPPINGS);
        entries.truncate(MAX_UNWIND_MAPPINGS);
        table.count = entries.len() as u32;
        table.generation = next_generation();
        table.offsets = self.offsets;
        table.mappings[..entries.len()].copy_from_slice(&entries);

        let Some(p) = self.traced.get_mut(&pid) else {
            return Ok(());
        };
        let slot = p.pair + (1 - p.live);
        self.processes
            .set(slot, *table, 0)
            .map_err(|e| UnwindError::Map(e.to_string()))?;
        self.slots
            .insert(pid, slot, 0)
            .map_err(|e| UnwindError::Map(e.to_string()))?;
        p.live = 1 - p.live;
        p.last_maps = fingerprint;
        summary.objects = objects.len();
        summary.rows = objects.values().map(|&n| u64::from(n)).sum();
        summary.rules = self.rule_ids.len();
        summary.bytes = summary.rows * size_of::<UnwindRow>() as u64
            + (self.rule_ids.len() * size_of::<UnwindRule>()) as u64
            + 2 * size_of::<ProcessMappings>() as u64;
        p.summary = summary;
        self.publish()
    }

    /// Process `pid` is no longer traced: its slots go back.
    pub fn forget(&mut self, pid: u32) {
        if let Some(p) = self.traced.remove(&pid) {
            let _ = self.slots.remove(&pid);
            self.free_pairs.push(p.pair);
            let _ = self.publish();
        }
    }

    /// Rows of every object and rules: what all traced processes share.
    pub fn shared_bytes(&self) -> u64 {
        u64::from(self.used_rows) * size_of::<UnwindRow>() as u64
            + (self.rule_ids.len() * size_of::<UnwindRule>()) as u64
    }

    fn publish(&mut self) -> Result<(), UnwindError> {
        self.publish_count += 1;
        self.published
            .set(0, self.publish_count, 0)
            .map_err(|e| UnwindError::Map(e.to_string()))
    }

    /// Parses `paths` and writes their rows now, before the process maps
    /// them (a command about to exec: its mappings are then published in
    /// the moment it has them).
    pub fn preload(&mut self, paths: &[&std::path::Path]) {
        for path in paths {
            if let Some(key) = key_of(path) {
                if let Some(info) = object_info(&key, path) {
                    if let ObjectUnwind::Table(rows) = &info.unwind {
                        let _ = self.place(&key, rows);
                    }
                }
            }
        }
    }

    /// The kernel's view of one executable mapping of process `pid`, and
    /// its object's key when it is walked by rows.
    fn mapping_entry(
        &mut self,
        pid: u32,
        m: &procfs::Mapping,
        summary: &mut UnwindSummary,
    ) -> Option<(UnwindMapping, Option<ObjectKey>)> {
        let open = m.open_path(pid);
        let size = fs::metadata(&open).map(|md| md.len()).unwrap_or(0);
        let key = ObjectKey {
            dev: m.dev.clone(),
            inode: m.inode,
            size,
        };
        let name = m.path.clone().unwrap_or_default();
        let info = object_info(&key, &open)?;
        let bias = info.bias(m.start, m.file_offset, m.end - m.start)?;
        let (walk_kind, row_base, row_count, walked_by_rows) = match &info.unwind {
            ObjectUnwind::FramePointers if self.mode == UnwindMode::Auto => {
                push_once(&mut summary.frame_pointer_objects, &name);
                (walk::FRAME_POINTER, 0, 0, false)
            }
            ObjectUnwind::FramePointers | ObjectUnwind::Nothing => {
                push_once(&mut summary.without_tables, &name);
                (walk::NONE, 0, 0, false)
            }
            ObjectUnwind::Table(rows) => match self.place(&key, rows) {
                Some((base, count)) => (walk::TABLE, base, count, true),
                None => {
                    push_once(&mut summary.no_room, &name);
                    (walk::NONE, 0, 0, false)
                }
            },
        };
        let entry = UnwindMapping {
            start: m.start,
            end: m.end,
            bias,
            row_base,
            row_count,
            walk: walk_kind,
            _pad: 0,
        };
        Some((entry, walked_by_rows.then_some(key)))
    }

    /// Writes an object's rows into the kernel table once; where they are.
    fn place(&mut self, key: &ObjectKey, rows: &[(u32, UnwindRule)]) -> Option<(u32, u32)> {
        if let Some(p) = self.placed.get(key) {
            return *p;
        }
        let count = u32::try_from(rows.len()).ok()?;
        let base = self.used_rows;
        let fits = base
            .checked_add(count)
            .is_some_and(|end| end <= self.rows.capacity);
        let placed = if fits {
            let mut ids = Vec::with_capacity(rows.len());
            for (_, rule) in rows {
                ids.push(self.rule_id(rule)?);
            }
            let table = self.rows.rows_mut();
            for (i, ((pc, _), rule)) in rows.iter().zip(ids).enumerate() {
                table[base as usize + i] = UnwindRow {
                    pc: *pc,
                    rule,
                    _reserved: 0,
                };
            }
            self.used_rows += count;
            Some((base, count))
        } else {
            None
        };
        self.placed.insert(key.clone(), placed);
        placed
    }

    /// A rule's id in the kernel's rule table, adding it if new.
    fn rule_id(&mut self, rule: &UnwindRule) -> Option<u16> {
        if let Some(&id) = self.rule_ids.get(rule) {
            return Some(id);
        }
        let id = u16::try_from(self.rule_ids.len()).ok()?;
        if u32::from(id) >= MAX_UNWIND_RULES {
            return None;
        }
        self.rules.set(u32::from(id), *rule, 0).ok()?;
        self.rule_ids.insert(*rule, id);
        Some(id)
    }
}

/// A number no earlier published table of this leaktrace had (its maps,
/// and so the probes' step cache, are its own). Starts at 1: a cache entry
/// never written has generation 0.
fn next_generation() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Read from the kernel's BTF once per leaktrace.
fn return_probe_offsets() -> Result<ReturnProbeOffsets, UnwindError> {
    static OFFSETS: std::sync::OnceLock<Result<ReturnProbeOffsets, String>> =
        std::sync::OnceLock::new();
    OFFSETS
        .get_or_init(|| {
            let btf = crate::probes::Btf::from_kernel().map_err(|e| e.to_string())?;
            let at = |s: &str, f: &str| btf.member_offset(s, f).map_err(|e| e.to_string());
            Ok(ReturnProbeOffsets {
                mm: at("task_struct", "mm")?,
                xol_area: at("mm_struct", "uprobes_state")? + at("uprobes_state", "xol_area")?,
                xol_vaddr: at("xol_area", "vaddr")?,
                _pad: 0,
                utask: at("task_struct", "utask")?,
                instances: at("uprobe_task", "return_instances")?,
                orig_ret: at("return_instance", "orig_ret_vaddr")?,
                next: at("return_instance", "next")?,
            })
        })
        .clone()
        .map_err(UnwindError::Map)
}

fn push_once(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}
