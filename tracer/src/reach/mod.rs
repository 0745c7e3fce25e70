//! Leaked or still referenced: a conservative mark of the target's memory
//! from its roots, classifying each outstanding block as valgrind's
//! memcheck does (definitely, indirectly or possibly lost, or still
//! reachable).

pub mod mark;
pub mod memory;
