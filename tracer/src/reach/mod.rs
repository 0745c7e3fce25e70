//! Leaked or still referenced: a conservative mark of the target's memory
//! from its roots, classifying each outstanding block as valgrind's
//! memcheck does (definitely, indirectly or possibly lost, or still
//! reachable). The target is stopped ([`freeze`]) while its roots
//! ([`roots`]) and blocks are read and marked ([`mark`]).

pub mod freeze;
pub mod mark;
pub mod memory;
pub mod roots;
pub mod scan;

pub use mark::Verdict;
pub use roots::Blocks;
pub use scan::{scan, Scan, ScanOptions};
