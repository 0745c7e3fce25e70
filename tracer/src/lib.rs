//! leaktrace: find what a running process allocates and never gives back.
//!
//! Data flow: [`target`] (what to attach to and where its allocator is) →
//! [`probes`] (eBPF programs in the kernel) → [`collect`] (per-site totals
//! read from the kernel, aged by generation) → [`symbolize`] (addresses to
//! functions, on a thread of its own) → [`report`] (text or JSON lines).
//! [`threads`] and, for Go targets, [`goroutines`], [`go_runtime`] and
//! [`go_heap`] collect what else the target keeps alive. [`session`] runs
//! the whole thing.

pub mod aggregate;
pub mod cli;
pub mod collect;
pub mod container_session;
pub mod debuginfo;
pub mod go_heap;
pub mod go_report;
pub mod go_runtime;
pub mod goroutines;
pub mod privileges;
pub mod probes;
pub mod report;
pub mod session;
pub mod stacks;
pub mod symbolize;
pub mod target;
pub mod threads;
