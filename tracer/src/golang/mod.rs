//! Everything specific to Go targets, in the order the data flows:
//!
//! - [`executable`] and [`binary`]: whether the target is a Go program, and
//!   what its executable says (version, `g` layout, where the goroutine
//!   probes go, the runtime's variables, a pclntab symbolizer);
//! - [`probes`]: the probe points and configuration handed to the generic
//!   probe layer;
//! - [`symbols`]: Go frames for the symbolizer;
//! - [`runtime`]: one process's runtime, read (and, when asked, written)
//!   out of process: goroutine list, heap figures, heap profile, MemStats,
//!   the heap profiling switch and the leak detector's trigger;
//! - [`section`]: the Go section of every report, by feature (goroutines,
//!   Go heap, leak check) and [`GoTracker`] which puts them together.

pub mod binary;
pub mod executable;
pub mod probes;
pub mod runtime;
pub mod section;
pub mod symbols;

pub use executable::{of_process, of_program, ExecutableError, GoTarget};
pub use probes::{is_go_code, is_go_object, PROBE_PROGRAMS};
pub use section::tracker::GoTracker;
pub use section::{
    CensusSiteReport, GoHeapReport, GoHeapSiteReport, GoReport, GoroutineSiteReport, ProvenLeakSite,
};
pub use symbols::GoSymbols;
