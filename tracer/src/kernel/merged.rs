//! Slab caches the kernel merged: SLUB gives a new cache an existing one
//! of the same object size and flags, so `struct kmem_cache` names only
//! the first (AF_UNIX sockets come from `signal_cache` here). Every name
//! is a link in `/sys/kernel/slab` to the cache it became; a report names
//! the cache the allocator used and the others merged into it.

use std::{collections::HashMap, path::Path};

/// Where SLUB lists its caches.
pub const SLAB_DIR: &str = "/sys/kernel/slab";

/// For each cache name, the other names merged into the same cache
/// (sorted); names alone in their cache are left out. Empty when `dir`
/// cannot be read (SLUB without sysfs).
pub fn read(dir: &Path) -> HashMap<String, Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    let mut by_cache: HashMap<String, Vec<String>> = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Unique ids (`:A-0001152`) are the caches themselves.
        if name.starts_with(':') {
            continue;
        }
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        by_cache
            .entry(target.to_string_lossy().into_owned())
            .or_default()
            .push(name);
    }
    let mut merged = HashMap::new();
    for mut names in by_cache.into_values().filter(|n| n.len() > 1) {
        names.sort();
        for name in &names {
            let others: Vec<String> = names.iter().filter(|n| *n != name).cloned().collect();
            merged.insert(name.clone(), others);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_linked_to_one_cache_are_merged() {
        let dir = std::env::temp_dir().join(format!("leaktrace-slab-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(":A-0001152")).expect("dir");
        std::fs::create_dir_all(dir.join(":0000064")).expect("dir");
        for (name, to) in [
            ("signal_cache", ":A-0001152"),
            ("UNIX", ":A-0001152"),
            ("UNIX-STREAM", ":A-0001152"),
            ("kmalloc-64", ":0000064"),
        ] {
            std::os::unix::fs::symlink(to, dir.join(name)).expect("link");
        }
        let merged = read(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(merged["signal_cache"], ["UNIX", "UNIX-STREAM"]);
        assert_eq!(merged["UNIX"], ["UNIX-STREAM", "signal_cache"]);
        assert!(!merged.contains_key("kmalloc-64"));
        assert!(read(Path::new("/nonexistent")).is_empty());
    }
}
