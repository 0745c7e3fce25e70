//! Where a program ends: the `_exit` of its C library, which `exit` calls
//! once the atexit handlers and stdio are done (valgrind checks for leaks
//! at the same moment). A program that makes the `exit_group` system call
//! itself (Go's runtime) never calls it.

use std::path::PathBuf;

use super::{allocator::function_offsets, ProbedObject};

/// `_exit` in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPoint {
    /// The object, as leaktrace opens it.
    pub path: PathBuf,
    /// File offset of `_exit`.
    pub offset: u64,
}

/// The first of `objects` (the allocator's: the C library first) that
/// defines `_exit`.
pub fn exit_point(objects: &[ProbedObject]) -> Option<ExitPoint> {
    objects.iter().find_map(|o| {
        let data = std::fs::read(&o.path).ok()?;
        let offset = function_offsets(&data)?.get("_exit").copied()?;
        Some(ExitPoint {
            path: o.path.clone(),
            offset,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binarys_c_library_defines_exit() {
        let objects = crate::process::mapped_objects(std::process::id()).expect("own maps");
        let libc = objects
            .iter()
            .find(|c| c.display.contains("libc.so"))
            .expect("linked with the C library");
        let probed = ProbedObject {
            display: libc.display.clone(),
            path: libc.path.clone(),
            sites: Vec::new(),
            spawns: Vec::new(),
        };
        let found = exit_point(std::slice::from_ref(&probed)).expect("_exit in libc");
        assert_eq!(found.path, libc.path);
        assert!(found.offset > 0);
        assert_eq!(exit_point(&[]), None);
    }
}
