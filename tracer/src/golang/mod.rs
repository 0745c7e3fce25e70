//! Everything specific to Go targets, in the order the data flows:
//!
//! - [`executable`] and [`binary`]: whether the target is a Go program, and
//!   what its executable says (version, `g` layout, where the goroutine
//!   probes go, the runtime's variables, a pclntab symbolizer);
//! - [`probes`]: the probe points and configuration handed to the generic
//!   probe layer;
//! - [`goroutines`]: the goroutines the probes recorded since attach;
//! - [`runtime`]: the runtime's memory read out of process (goroutine
//!   census, heap figures, heap profile), and [`heap`] its trend;
//! - [`symbols`]: Go frames for the symbolizer;
//! - [`tracker`] and [`section`]: the Go section of every report.

pub mod binary;
pub mod executable;
pub mod goroutines;
pub mod heap;
pub mod leakcheck;
pub mod memprofile;
pub mod memstats;
pub mod probes;
pub mod runtime;
pub mod section;
pub mod symbols;
pub mod tracker;

pub use executable::{of_process, of_program, ExecutableError, GoTarget};
pub use probes::{is_go_code, is_go_object, PROBE_PROGRAMS};
pub use section::{
    CensusSiteReport, GoHeapReport, GoHeapSiteReport, GoReport, GoroutineSiteReport, ProvenLeakSite,
};
pub use symbols::GoSymbols;
pub use tracker::GoTracker;
