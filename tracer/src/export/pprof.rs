//! pprof profiles (`profile.proto`, gzip'd) of what a report holds: the heap
//! with Go's own four sample types (and, after a reachability scan, what
//! it found unreachable), and goroutines by creation stack.
//!
//! Built to be read anywhere: every location carries its function, file,
//! line and inlined frames, and every mapping says it is already
//! symbolized, so `go tool pprof` never looks for the target's binaries.

use std::{collections::HashMap, io::Write, time::UNIX_EPOCH};

use flate2::{write::GzEncoder, Compression};
use prost::Message;

use super::{
    modules::ModuleMap,
    profile_proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType},
    GoroutineSample, Profiles,
};
use crate::symbolize::Frame;

/// Go's heap profile types, in Go's order: `-base` and `-diff_base` need
/// the same list in both files, so leaktrace's and Go's own profiles
/// compare with each other.
const HEAP_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// After a complete reachability scan, two more: what of `inuse_*` it
/// found definitely or indirectly lost (LeakSanitizer's "unreachable").
const UNREACHABLE_TYPES: [(&str, &str); 2] = [
    ("unreachable_objects", "count"),
    ("unreachable_space", "bytes"),
];

/// The heap profile: outstanding blocks older than the threshold
/// (`inuse_*`), and everything allocated since attach (`alloc_*`).
pub fn heap(profiles: &Profiles, modules: &ModuleMap) -> Profile {
    heap_of(&[(profiles, modules)])
}

/// One heap profile of several processes (a container's): every sample
/// labelled with its process's `pid`. Locations are by function and line,
/// so a site several processes share is one location.
pub fn heap_of(parts: &[(&Profiles, &ModuleMap)]) -> Profile {
    let Some(&(first, first_modules)) = parts.first() else {
        return Profile::default();
    };
    let mut b = Builder::new(first_modules);
    let scanned = parts.iter().any(|(p, _)| p.scanned);
    let extra: &[(&str, &str)] = if scanned { &UNREACHABLE_TYPES } else { &[] };
    for &(t, u) in HEAP_TYPES.iter().chain(extra) {
        let vt = b.value_type(t, u);
        b.profile.sample_type.push(vt);
    }
    b.profile.period_type = Some(b.value_type("space", "bytes"));
    // Every allocation is traced: the values are exact, not sampled.
    b.profile.period = 1;
    let whose: Vec<String> = parts.iter().map(|(p, _)| p.subject()).collect();
    let comment = b.string(&format!(
        "leaktrace: {}; inuse = outstanding longer than {} s; alloc = since attach",
        whose.join(", "),
        first.older_than.as_secs_f64()
    ));
    b.profile.comment.push(comment);
    let key = b.string("heap");
    let pid_key = b.string("pid");
    let container_key = b.string("container");
    for &(profiles, modules) in parts {
        b.modules = modules;
        for s in &profiles.heap {
            let mut label = vec![Label {
                key,
                str: b.string(s.source.name()),
                ..Label::default()
            }];
            if parts.len() > 1 {
                label.push(Label {
                    key: pid_key,
                    num: i64::from(profiles.pid),
                    ..Label::default()
                });
            }
            if let Some(name) = &profiles.container {
                label.push(Label {
                    key: container_key,
                    str: b.string(name),
                    ..Label::default()
                });
            }
            let mut value = vec![
                s.alloc_objects as i64,
                s.alloc_bytes as i64,
                s.inuse_objects as i64,
                s.inuse_bytes as i64,
            ];
            if scanned {
                value.extend([s.unreachable_objects as i64, s.unreachable_bytes as i64]);
            }
            let sample = Sample {
                location_id: b.stack(&s.frames),
                value,
                label,
            };
            b.profile.sample.push(sample);
        }
    }
    b.finish(first)
}

/// The goroutine profile: goroutines alive longer than the threshold, by
/// the stack that created them (not their current stack, as Go's own
/// profile has), and those from before attach by their `go` statement.
pub fn goroutines(
    profiles: &Profiles,
    samples: &[GoroutineSample],
    modules: &ModuleMap,
) -> Profile {
    let mut b = Builder::new(modules);
    let vt = b.value_type("goroutine", "count");
    b.profile.sample_type.push(vt.clone());
    b.profile.period_type = Some(vt);
    b.profile.period = 1;
    let comment = b.string(&format!(
        "leaktrace: pid {}; stacks are creation stacks; goroutines alive longer than {} s, and those from before attach",
        profiles.pid,
        profiles.older_than.as_secs_f64()
    ));
    b.profile.comment.push(comment);
    let key = b.string("created");
    let mut sorted: Vec<&GoroutineSample> = samples.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.count));
    for s in sorted {
        let sample = Sample {
            location_id: b.stack(&s.frames),
            value: vec![s.count as i64],
            label: vec![Label {
                key,
                str: b.string(s.created.name()),
                ..Label::default()
            }],
        };
        b.profile.sample.push(sample);
    }
    b.finish(profiles)
}

/// gzip'd protobuf bytes, as pprof files and endpoints carry them.
pub fn encode(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

/// Function, file and line of one frame.
type SourceLine = (String, Option<String>, Option<u32>);

/// Interns strings, functions, locations and mappings; ids start at 1.
struct Builder<'a> {
    profile: Profile,
    modules: &'a ModuleMap,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, Option<String>), u64>,
    /// By the frames of one address (with its inlined callees).
    locations: HashMap<Vec<SourceLine>, u64>,
    unknown_locations: HashMap<u64, u64>,
    mappings: HashMap<String, u64>,
}

impl<'a> Builder<'a> {
    fn new(modules: &'a ModuleMap) -> Self {
        Builder {
            profile: Profile {
                string_table: vec![String::new()],
                ..Profile::default()
            },
            modules,
            strings: HashMap::from([(String::new(), 0)]),
            functions: HashMap::new(),
            locations: HashMap::new(),
            unknown_locations: HashMap::new(),
            mappings: HashMap::new(),
        }
    }

    fn finish(mut self, profiles: &Profiles) -> Profile {
        self.profile.time_nanos = profiles
            .taken
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        self.profile.duration_nanos = profiles.since_attach.as_nanos() as i64;
        self.profile
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, t: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(t),
            unit: self.string(unit),
        }
    }

    /// Location ids, leaf first: one location per address, its inlined
    /// frames as extra lines.
    fn stack(&mut self, frames: &[Frame]) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut start = 0;
        for (i, f) in frames.iter().enumerate() {
            // An address's frames end with the one not inlined.
            if !f.inlined || i + 1 == frames.len() {
                ids.push(self.location(&frames[start..=i]));
                start = i + 1;
            }
        }
        ids
    }

    fn location(&mut self, group: &[Frame]) -> u64 {
        let outer = &group[group.len() - 1];
        // The call instruction, not the return address after it.
        let address = outer.address.saturating_sub(1);
        // Symbolized locations are one per source position (several call
        // sites of one line merge, as in the report); others per address.
        let key: Option<Vec<SourceLine>> = outer.symbol.is_some().then(|| {
            group
                .iter()
                .map(|f| (f.symbol.clone().unwrap_or_default(), f.file.clone(), f.line))
                .collect()
        });
        let known = match &key {
            Some(k) => self.locations.get(k),
            None => self.unknown_locations.get(&address),
        };
        if let Some(&id) = known {
            return id;
        }
        let mapping_id = outer
            .location
            .as_ref()
            .map_or(0, |(path, _)| self.mapping(path));
        let line: Vec<Line> = group
            .iter()
            .filter(|f| f.symbol.is_some())
            .map(|f| Line {
                function_id: self.function(f),
                line: f.line.map_or(0, i64::from),
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
        });
        match key {
            Some(k) => self.locations.insert(k, id),
            None => self.unknown_locations.insert(address, id),
        };
        id
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let name = f.symbol.clone().unwrap_or_default();
        let key = (name, f.file.clone());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.string(&key.0);
        let filename = self.string(key.1.as_deref().unwrap_or(""));
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.functions.insert(key, id);
        id
    }

    fn mapping(&mut self, path: &str) -> u64 {
        if let Some(&id) = self.mappings.get(path) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let object = self.modules.get(path);
        let filename = self.string(path);
        let build_id = self.string(object.map_or("", |o| o.build_id.as_str()));
        self.profile.mapping.push(Mapping {
            id,
            memory_start: object.map_or(0, |o| o.start),
            memory_limit: object.map_or(0, |o| o.limit),
            file_offset: object.map_or(0, |o| o.file_offset),
            filename,
            build_id,
            // Symbolized already: pprof must not look for the binary.
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mappings.insert(path.to_string(), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::profiles::{Created, HeapSample, HeapSource};
    use std::time::{Duration, SystemTime};

    fn frame(address: u64, symbol: &str, inlined: bool) -> Frame {
        Frame {
            address,
            symbol: Some(symbol.to_string()),
            module: Some("prog".into()),
            file: Some("/src/prog.c".into()),
            line: Some(7),
            inlined,
            location: Some(("/usr/bin/prog".into(), address - 0x1000)),
        }
    }

    fn profiles(heap: Vec<HeapSample>) -> Profiles {
        Profiles {
            pid: 42,
            container: None,
            older_than: Duration::from_secs(1),
            taken: SystemTime::now(),
            since_attach: Duration::from_secs(3),
            heap,
            scanned: false,
            goroutines: None,
        }
    }

    #[test]
    fn heap_profile_follows_gos_layout_and_pprofs_rules() {
        let p = profiles(vec![HeapSample {
            // `inner` inlined into `outer` at one address, then main.
            frames: vec![
                frame(0x1234, "inner", true),
                frame(0x1234, "outer", false),
                frame(0x2000, "main", false),
            ],
            inuse_bytes: 400,
            inuse_objects: 4,
            alloc_bytes: 1000,
            alloc_objects: 10,
            unreachable_bytes: 300,
            unreachable_objects: 3,
            source: HeapSource::Malloc,
        }]);
        let prof = heap(&p, &ModuleMap::default());
        let s = |i: i64| prof.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<_> = prof
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, HEAP_TYPES);
        let pt = prof.period_type.as_ref().expect("period type");
        assert_eq!((s(pt.r#type), s(pt.unit)), ("space", "bytes"));
        assert_eq!(prof.sample[0].value, vec![10, 1000, 4, 400]);
        // After a scan, what it found unreachable, last.
        let scanned = heap(
            &Profiles {
                scanned: true,
                ..p.clone()
            },
            &ModuleMap::default(),
        );
        let name = |i: i64| scanned.string_table[i as usize].as_str();
        let types: Vec<_> = scanned
            .sample_type
            .iter()
            .map(|t| (name(t.r#type), name(t.unit)))
            .collect();
        assert_eq!(types[4..], UNREACHABLE_TYPES);
        assert_eq!(scanned.sample[0].value, vec![10, 1000, 4, 400, 3, 300]);
        // Two locations, leaf first; the leaf holds both functions, the
        // inlined one first; addresses are the call instructions'.
        assert_eq!(prof.sample[0].location_id, vec![1, 2]);
        assert_eq!(prof.location[0].address, 0x1233);
        let names: Vec<_> = prof.location[0]
            .line
            .iter()
            .map(|l| s(prof.function[l.function_id as usize - 1].name))
            .collect();
        assert_eq!(names, ["inner", "outer"]);
        assert!(prof
            .mapping
            .iter()
            .all(|m| m.has_functions && m.has_inline_frames));
        // Decodes back through the gzip layer.
        let gz = encode(&prof).expect("encode");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw)
            .expect("gunzip");
        assert_eq!(Profile::decode(&raw[..]).expect("decode"), prof);
    }

    #[test]
    fn goroutine_profile_is_sorted_by_count() {
        let p = profiles(Vec::new());
        let samples = vec![
            GoroutineSample {
                frames: vec![frame(0x3000, "main.a", false)],
                count: 2,
                created: Created::AfterAttach,
            },
            GoroutineSample {
                frames: vec![frame(0x4000, "main.b", false)],
                count: 9,
                created: Created::BeforeAttach,
            },
        ];
        let prof = goroutines(&p, &samples, &ModuleMap::default());
        let counts: Vec<_> = prof.sample.iter().map(|s| s.value[0]).collect();
        assert_eq!(counts, [9, 2]);
        assert_eq!(
            prof.string_table[prof.sample_type[0].r#type as usize],
            "goroutine"
        );
    }
}
