//! Kernel-wide state: leaktrace's eBPF programs still loaded.

use std::{
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Names of leaktrace's eBPF programs currently loaded in the kernel
/// (programs and maps are listed by `bpftool`, names truncated to 15 chars).
pub fn loaded_leaktrace_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    const OURS: &[&str] = &[
        "alloc_entry",
        "alloc_return",
        "stack_walk",
        "stack_store",
        "seccomp_check_r",
        "free_entry",
        "empty_entry",
        "spawn_entry",
        "task_fork",
        "task_exit",
        "task_exec",
        "oom_victim",
        "go_goroutine_",
        "empty_return",
        "kmem_",
    ];
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str())
                .filter(|n| OURS.iter().any(|o| n.starts_with(o)))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to 5 s: the kernel frees programs after an RCU grace period)
/// until no leaktrace program is loaded; returns what is still loaded.
pub fn wait_until_no_leaktrace_programs() -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = loaded_leaktrace_programs();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Tests that count kernel-wide state (loaded programs) must not overlap
/// with other leaktrace runs of the same test binary.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until every RCU callback queued so far has run (the kernel's
/// `rcu_barrier()`, through rcutree's `do_rcu_barrier` parameter): what
/// the kernel frees after a grace period (inodes, their security blobs,
/// page-cache tree nodes) is freed once this returns, however long grace
/// periods take on a loaded machine. A kernel without the parameter is
/// left to finish them in its own time.
pub fn rcu_barrier() {
    let _ = std::fs::write("/sys/module/rcutree/parameters/do_rcu_barrier", "1");
}
