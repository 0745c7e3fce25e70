//! leaktrace: find what a running process allocates and never gives back.
//!
//! The modules follow the data, in order:
//!
//! 1. [`process`]: what to attach to (a PID, a command leaktrace starts, a
//!    container's processes) and where the target's allocator lives.
//! 2. [`placement`]: where in each function a probe sits (x86 decoding of
//!    the target's code); [`probes`]: leaktrace's eBPF programs, loaded
//!    into the kernel and attached there.
//! 3. [`collect`]: reading what the probes recorded (per-site heap totals
//!    aged by generation, threads and child processes, stacks).
//! 4. [`symbolize`]: addresses to functions, file:line and module, on a
//!    thread of its own.
//! 5. [`report`]: one report per interval (merged sites, top N, growth and
//!    trend), rendered as text or JSON lines.
//! 6. [`export`]: the same reports as pprof profiles, flame graphs and a
//!    live pprof / Prometheus endpoint.
//!
//! [`golang`] holds everything specific to Go targets: reading Go
//! executables, the runtime's memory read out of process, the goroutine
//! collector and the Go section of each report; the layers above ask it for
//! probe points and for that section. [`kernel`] is the kernel's own memory
//! (`--kernel`): its blocks by kernel stack, symbolized by kallsyms. [`session`] runs the whole thing for
//! one target or a container's processes.

pub mod cli;
pub mod collect;
pub mod export;
pub mod golang;
pub mod kernel;
pub mod placement;
pub mod privileges;
pub mod probes;
pub mod process;
pub mod reach;
pub mod report;
pub mod session;
pub mod symbolize;
pub mod unwind;
