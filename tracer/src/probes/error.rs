//! What can go wrong while loading and attaching probes.

use super::{btf, UPROBE_PMU};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this kernel has no uprobe support (no {UPROBE_PMU}; needs CONFIG_UPROBE_EVENTS)")]
    NoUprobes,
    #[error("cannot load eBPF programs into this kernel: {0} (needs CONFIG_BPF_SYSCALL, kernel 5.15 or newer)")]
    Load(String),
    #[error("cannot attach a probe to {function} in {library}: {reason}")]
    Attach {
        function: String,
        library: String,
        reason: String,
    },
    #[error("eBPF object lacks {0} (build mismatch)")]
    Missing(&'static str),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(
        "refusing to attach: PID {0} runs under a seccomp filter and on this kernel return probes \
         would kill it (uretprobe syscall not let through by seccomp; fixed in newer kernels)"
    )]
    ReturnProbesUnsafe(u32),
    #[error(
        "refusing a return probe on {0}: it is Go code, and Go moves goroutine stacks, so a \
         hijacked return address would crash the program"
    )]
    ReturnProbeOnGo(String),
    #[error("cannot read {0} to check it before attaching return probes: {1}")]
    Unreadable(String, std::io::Error),
    #[error("cannot attach to the {tracepoint} tracepoint: {reason}")]
    Tracepoint {
        tracepoint: &'static str,
        reason: String,
    },
}

/// An error with its causes, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}
