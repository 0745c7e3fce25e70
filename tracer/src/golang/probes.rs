//! Where the goroutine probes go in a Go executable, and what the kernel
//! side needs to know to read a `g` there.

use tracer_common::GoConfig;

use super::GoTarget;

/// The eBPF programs for a Go target's runtime.
pub const PROBE_PROGRAMS: [&str; 2] = [CREATION_PROGRAM, EXIT_PROGRAM];
const CREATION_PROGRAM: &str = "go_newproc1_return";
const EXIT_PROGRAM: &str = "go_goroutine_exit";

/// One plain uprobe to attach in the Go executable.
pub struct GoProbePoint {
    pub program: &'static str,
    /// For messages.
    pub function: &'static str,
    /// File offset in the executable.
    pub offset: u64,
}

/// What the goroutine probes need: the `g` field offsets, and the points to
/// attach in order.
pub struct GoProbePlan {
    pub config: GoConfig,
    /// The exit probe first, so that every goroutine recorded has its exit
    /// seen, then one probe on each RET instruction of `runtime.newproc1`.
    pub points: Vec<GoProbePoint>,
}

impl GoTarget {
    pub fn probe_plan(&self) -> GoProbePlan {
        let layout = self.binary.g;
        let config = GoConfig {
            goid_offset: layout.goid,
            gopc_offset: layout.gopc,
            startpc_offset: layout.startpc,
            parent_goid_offset: layout.parent_goid,
        };
        let (exit_fn, exit_offset) = self.binary.exit_probe;
        let mut points = vec![GoProbePoint {
            program: EXIT_PROGRAM,
            function: exit_fn,
            offset: exit_offset,
        }];
        points.extend(
            self.binary
                .newproc1_returns
                .iter()
                .map(|&offset| GoProbePoint {
                    program: CREATION_PROGRAM,
                    function: "runtime.newproc1 (RET)",
                    offset,
                }),
        );
        GoProbePlan { config, points }
    }
}

/// Whether an object file holds Go code: the Go linker always emits its
/// build info and function table, and stripping keeps both.
pub fn is_go_code(data: &[u8]) -> bool {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(data) else {
        return false;
    };
    let found = file.sections().any(|s| {
        matches!(
            s.name(),
            Ok(".go.buildinfo" | ".gopclntab" | ".data.rel.ro.gopclntab")
        )
    });
    found
}
