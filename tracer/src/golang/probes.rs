//! Where the goroutine probes go in a Go executable, and what the kernel
//! side needs to know to read a `g` there.

use tracer_common::{go_cookie, GoConfig};

use super::{binary::NewG, GoTarget};

/// The eBPF programs for a Go target's runtime.
pub const PROBE_PROGRAMS: [&str; 2] = [CREATION_PROGRAM, EXIT_PROGRAM];
const CREATION_PROGRAM: &str = "go_goroutine_created";
const EXIT_PROGRAM: &str = "go_goroutine_exit";

/// One plain uprobe to attach in the Go executable.
pub struct GoProbePoint {
    pub program: &'static str,
    /// For messages.
    pub function: String,
    /// File offset in the executable.
    pub offset: u64,
    /// File offset of the entry of the function it sits in, when known.
    pub entry: Option<u64>,
    /// Attach cookie: where the binary's `g` keeps the fields the probes
    /// read, and which register holds the new `g` at a creation probe.
    pub cookie: u64,
}

/// What the goroutine probes need: the `g` field offsets (which the
/// points' cookies carry), and the points to attach in order.
pub struct GoProbePlan {
    pub config: GoConfig,
    /// The exit probe first, so that every goroutine recorded has its exit
    /// seen, then the creation probes (see `binary::creation`).
    pub points: Vec<GoProbePoint>,
}

impl GoTarget {
    pub fn probe_plan(&self) -> GoProbePlan {
        let bin = &self.binary;
        let layout = bin.g;
        let config = GoConfig {
            goid_offset: layout.goid,
            gopc_offset: layout.gopc,
            startpc_offset: layout.startpc,
            parent_goid_offset: layout.parent_goid,
        };
        let (exit_fn, exit_entry) = bin.exit_function;
        let mut points = vec![GoProbePoint {
            program: EXIT_PROGRAM,
            function: exit_fn.to_string(),
            offset: bin.exit_probe,
            entry: bin.vaddr_to_file_offset(exit_entry),
            cookie: go_cookie(false, config),
        }];
        // Probe points were checked to lie in the file when found.
        points.extend(bin.creation_probes.iter().filter_map(|p| {
            Some(GoProbePoint {
                program: CREATION_PROGRAM,
                function: p.function.clone(),
                offset: bin.vaddr_to_file_offset(p.at)?,
                entry: bin.vaddr_to_file_offset(p.entry),
                cookie: go_cookie(matches!(p.new_g, NewG::Rbx), config),
            })
        }));
        GoProbePlan { config, points }
    }
}

/// Whether an object file holds Go code: the Go linker always emits its
/// build info and function table, and stripping keeps both.
pub fn is_go_code(data: &[u8]) -> bool {
    object::File::parse(data).is_ok_and(|file| is_go_object(&file))
}

/// [`is_go_code`] of a parsed object.
pub fn is_go_object(file: &object::File<'_>) -> bool {
    use object::{Object, ObjectSection};
    let found = file.sections().any(|s| {
        matches!(
            s.name(),
            Ok(".go.buildinfo" | ".gopclntab" | ".data.rel.ro.gopclntab")
        )
    });
    found
}
