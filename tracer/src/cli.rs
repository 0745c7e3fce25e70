//! Command-line interface. Flag names follow bcc's memleak where they mean
//! the same thing (`-p/--pid`, `-i/--interval`, `-T/--top`).

use std::{ffi::OsString, time::Duration};

use clap::{Parser, ValueEnum};

// The lower layers' own choices, taken from the command line.
pub use crate::{probes::ProbeMode, report::Format, unwind::UnwindMode};
use tracer_common::{
    DEFAULT_MAX_ALLOCS, DEFAULT_MAX_GOROUTINES, DEFAULT_MAX_KMEM_BLOCKS, DEFAULT_MAX_KMEM_STACKS,
    DEFAULT_MAX_SITES, DEFAULT_MAX_STACKS, DEFAULT_MAX_TASKS, DEFAULT_MAX_THREADS,
    DEFAULT_MAX_UNWIND_ROWS,
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Report what a running process allocates and never frees, without restarting it",
    long_about = "leaktrace attaches eBPF uprobes to the allocator of a running process (or of a \
command it starts) and, every interval, reports the call stacks holding the most heap memory \
that was allocated longer ago than --older-than and not freed since: bytes, blocks, age of the \
oldest block and growth since the previous report. It also reports threads and child processes \
that stay alive, by spawn site, and for Go programs goroutines that stay alive, by creation site \
(with a census of those that existed before attach), and the live Go heap after each GC. \
On Ctrl-C, SIGTERM, --count reports or target exit it prints a final report and removes every probe; the target keeps running untouched.\n\n\
Needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE).",
    after_help = "Examples:\n  sudo leaktrace --pid 4242\n  sudo leaktrace -p 4242 -i 10 --older-than 30s --top 5\n  \
sudo leaktrace --format json -n 3 -- ./server --port 8080\n  \
sudo leaktrace --container shop\n  sudo leaktrace --pod default/cart-7d9f -c app\n  sudo leaktrace --all-containers --listen 0.0.0.0:9090 --listen-public\n  \
sudo leaktrace --kernel -i 10\n  sudo leaktrace --kernel -p 4242"
)]
pub struct Cli {
    /// Trace the already running process with this PID.
    #[arg(
        short = 'p',
        long,
        value_name = "PID",
        required_unless_present_any = ["command", "container", "pod", "all_containers", "generate", "kernel"]
    )]
    pub pid: Option<u32>,

    /// Trace every process of this container through one loaded tracer:
    /// its Docker name, its id or a unique id prefix (any engine's id, as
    /// its cgroup shows it). Processes it starts later are traced from
    /// their first instruction (forked by a traced process, or exec'd in
    /// its PID namespace, as `docker exec` does); each gets its own
    /// reports, and a final one when it exits. A restart (`docker
    /// restart`) is followed; when the container exits, so does leaktrace
    /// (exit 0).
    #[arg(long, value_name = "NAME|ID", conflicts_with_all = ["pid", "command", "pod", "all_containers"])]
    pub container: Option<String>,

    /// Trace a Kubernetes pod's container, named NAMESPACE/NAME as kubectl
    /// names pods: found by the labels the kubelet gives it (containerd's
    /// CRI annotations, or Docker labels under cri-dockerd). A pod with
    /// several containers needs -c.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with_all = ["pid", "command", "all_containers"])]
    pub pod: Option<String>,

    /// With --pod: which of the pod's containers (its name in the pod spec).
    #[arg(short = 'c', long, value_name = "CONTAINER", requires = "pod")]
    pub pod_container: Option<String>,

    /// Node agent: trace every running container, and every container
    /// started later from its first exec, through one loaded tracer; every
    /// report, /metrics series and profile carries the container's name,
    /// image and (under Kubernetes) pod, namespace and container.
    #[arg(long, conflicts_with_all = ["pid", "command"])]
    pub all_containers: bool,

    /// With --all-containers: only containers carrying this label
    /// (KEY=VALUE; repeat to require several).
    #[arg(long, value_name = "KEY=VALUE", requires = "all_containers")]
    pub label: Vec<String>,

    /// The Docker engine's API socket, for container names, restarts and
    /// --all-containers [default: $DOCKER_HOST's unix socket, else
    /// /var/run/docker.sock].
    #[arg(long, value_name = "PATH")]
    pub docker_socket: Option<std::path::PathBuf>,

    /// Seconds between reports (fractions allowed, or a unit: 500ms, 1m).
    #[arg(short = 'i', long, value_name = "SECS", default_value = "5", value_parser = parse_interval)]
    pub interval: Duration,

    /// Stop after this many reports; the last one is the final report.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Report only blocks allocated longer ago than this (e.g. 500ms, 30s, 2m; a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub older_than: Duration,

    /// At each report, stop the target's threads for a moment (ptrace) and
    /// mark its memory from its roots, as valgrind's leak check does: each
    /// block older than --older-than is then definitely, indirectly or
    /// possibly lost, or still reachable. Go's own heap is not scanned.
    /// SIGUSR2 to leaktrace scans and reports at once. A command
    /// leaktrace starts is scanned once more as it exits. With containers,
    /// each process is scanned in turn.
    #[arg(long)]
    pub reachability: bool,

    /// With --reachability: scan at every Nth report only.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), requires = "reachability")]
    pub reachability_every: u64,

    /// With --reachability: the longest the target may stay stopped; a
    /// scan past it is abandoned (the report says so) and the target goes on.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration, requires = "reachability")]
    pub scan_deadline: Duration,

    /// Also report kernel memory: slab objects (kmalloc, kmem_cache_alloc),
    /// pages and per-CPU allocations outstanding longer than --older-than,
    /// by kernel stack (and the user stack of a traced process that made
    /// them), slab caches by name, pages by order and GFP flags. Alone
    /// (no --pid, command or container): the whole kernel's, as bcc's
    /// memleak without -p. With a target: only what the kernel allocated
    /// in the context of its processes.
    #[arg(long)]
    pub kernel: bool,

    /// With --kernel: capacity of the table of outstanding kernel blocks
    /// (about 130 B each, taken at start: an insert that allocated would
    /// itself be kernel memory); blocks beyond it are counted as dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_KMEM_BLOCKS, value_parser = clap::value_parser!(u32).range(1..), requires = "kernel")]
    pub max_kernel_blocks: u32,

    /// With --kernel: capacity of the kernel stack table (about 560 B
    /// each, taken at start); blocks whose stack finds no room are
    /// counted.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_KMEM_STACKS, value_parser = clap::value_parser!(u32).range(1..), requires = "kernel")]
    pub max_kernel_stacks: u32,

    /// Show at most this many allocation sites per report, largest first.
    #[arg(short = 'T', long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Output format: human-readable text, or one JSON object per report per line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// When to colour text output.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Capacity of the kernel's live-allocation table (memory taken as allocations are recorded, about 80 B each); allocations beyond it are counted as dropped.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ALLOCS)]
    pub max_allocs: u32,

    /// Capacity of the kernel's per-site totals table.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SITES)]
    pub max_sites: u32,

    /// Capacity of the stack table, in distinct stacks (about 1 KiB each, taken as they appear); stacks beyond it are counted as lost.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STACKS)]
    pub max_stacks: u32,

    /// Capacity of the per-thread tables (threads inside an allocation call at once).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_THREADS)]
    pub max_threads: u32,

    /// Capacity of the table of threads and child processes created after attach.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_TASKS)]
    pub max_tasks: u32,

    /// Capacity of the table of traced processes (`--container`: the
    /// container's processes at once, forked ones included); a process
    /// beyond it is counted, not traced.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_processes: u32,

    /// Go targets: capacity of the table of goroutines created after attach.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_GOROUTINES)]
    pub max_goroutines: u32,

    /// Go targets whose heap profiling the Go linker switched off (programs
    /// that never import runtime/pprof): turn it on by writing Go's default
    /// rate (512 KiB) into `runtime.MemProfileRate`, once, through
    /// /proc/PID/mem, so that reports show the Go heap by allocation stack.
    /// With --go-leak-check, the only writes leaktrace makes into a target;
    /// refused for Go versions it was not checked on (1.21–1.27) and for
    /// stripped binaries.
    #[arg(long)]
    pub go_memprofile: bool,

    /// With --go-memprofile: the rate written, in bytes allocated per
    /// sample (as Go's runtime.MemProfileRate and GODEBUG=memprofilerate).
    /// 1 records every allocation: exact bytes and objects by stack, at a
    /// cost on every allocation the target makes.
    #[arg(
        long,
        value_name = "BYTES",
        requires = "go_memprofile",
        default_value_t = crate::golang::runtime::memprofile::GO_DEFAULT_RATE,
        value_parser = clap::value_parser!(u64).range(1..=(i64::MAX as u64))
    )]
    pub go_memprofile_rate: u64,

    /// Go 1.26+ targets: have the runtime's GC-based goroutine leak detector
    /// run at the target's next GC (and after each report), and report the
    /// goroutines it proves leaked (blocked on something nothing runnable
    /// can reach) by creation site. Sets one flag in the target through
    /// /proc/PID/mem; on older Go versions a note says it is unavailable.
    #[arg(long)]
    pub go_leak_check: bool,

    /// How user stacks are walked: `auto` by the unwind tables leaktrace
    /// builds from each object's `.eh_frame` (or `.debug_frame`) and by
    /// frame pointers in Go code; `dwarf` by tables only; `fp` by frame
    /// pointers only (cheapest, but wrong in code built without them).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = UnwindMode::Auto)]
    pub unwind: UnwindMode,

    /// Capacity of the kernel's unwind-row table (8 bytes a row; Debian's
    /// libc needs about 28,000, a 50 MB binary about 600,000); objects that
    /// no longer fit end stacks, flagged, and are named at start.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_UNWIND_ROWS)]
    pub max_unwind_rows: u32,

    /// At every report, write `heap-SEQ.pb.gz` (pprof, Go's heap sample
    /// types: inuse_* = outstanding longer than --older-than, alloc_* =
    /// allocated since attach) and, for Go targets, `goroutine-SEQ.pb.gz`
    /// (goroutines by creation stack) into this directory, for `go tool
    /// pprof` (`-base heap-2.pb.gz heap-9.pb.gz` shows what grew between).
    /// With --container, per process: `heap-PID-SEQ.pb.gz`.
    #[arg(long, value_name = "DIR")]
    pub pprof_dir: Option<std::path::PathBuf>,

    /// Serve `/debug/pprof/heap`, `/debug/pprof/goroutine` (the latest
    /// report, pprof format) and `/metrics` (Prometheus text format) at
    /// this address, e.g. 127.0.0.1:6060; `go tool pprof
    /// http://127.0.0.1:6060/debug/pprof/heap` then works for any process.
    /// With --container: the container's processes merged (heap samples
    /// labelled pid=N, /metrics series labelled pid, comm, container), one
    /// process with `?pid=N`. Loopback only, unless --listen-public is given.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Allow --listen on an address other than loopback (heap stacks of the
    /// target are then served to anyone who can reach it).
    #[arg(long, requires = "listen")]
    pub listen_public: bool,

    /// Rewrite this SVG flame graph of outstanding bytes by stack at every
    /// report (with --container, one per process: FILE-PID.svg).
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<std::path::PathBuf>,

    /// Rewrite this file of folded stacks (`root;…;leaf BYTES` per line,
    /// for flamegraph.pl, inferno or speedscope) at every report (with
    /// --container, one per process, named like --flamegraph's).
    #[arg(long, value_name = "FILE")]
    pub folded: Option<std::path::PathBuf>,

    /// Hide sites matching these LeakSanitizer-style rules (`leak:PATTERN`
    /// per line, `*` wildcards, `^`/`$` anchors, `#` comments), matched
    /// against every frame's function, file and module; each report says
    /// how many sites and bytes were suppressed.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Option<std::path::PathBuf>,

    /// Print where each probe would go in the target (function, object,
    /// offset from its entry, the instruction there and whether the kernel
    /// emulates it or single-steps it, which sets the cost of each hit),
    /// then exit without attaching anything.
    #[arg(long)]
    pub list_probes: bool,

    /// Print the man page (`man`) or a shell completion script
    /// (`complete-bash`, `complete-zsh`, `complete-fish`) to stdout and exit;
    /// e.g. `leaktrace --generate man > /usr/local/share/man/man1/leaktrace.1`.
    #[arg(long, value_enum, value_name = "KIND", exclusive = true)]
    pub generate: Option<Generate>,

    /// Print to stderr how long each step of attaching took: each eBPF
    /// program's load (the kernel verifies it then), the unwind tables,
    /// the probes' attach calls.
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Benchmarking aid: `empty` attaches do-nothing probes at the same sites.
    #[arg(long, value_enum, default_value_t = ProbeMode::Full, hide = true)]
    pub probe_mode: ProbeMode,

    /// Command to start under tracing (after `--`); leaktrace exits with its exit status.
    #[arg(last = true, value_name = "CMD", conflicts_with = "pid")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

/// Writes what `--generate` asks for, from these very definitions.
pub fn generate(kind: Generate, out: &mut impl std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut cmd = Cli::command();
    let shell = match kind {
        Generate::Man => return clap_mangen::Man::new(cmd).render(out),
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "leaktrace", out);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 500ms, 30s, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("interval `{s}` is too short (minimum 10ms)"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_interval("1ms").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pid_or_command_required() {
        assert!(Cli::try_parse_from(["leaktrace"]).is_err());
        assert!(Cli::try_parse_from(["leaktrace", "-p", "1", "--", "true"]).is_err());
        let cli = Cli::try_parse_from(["leaktrace", "--", "ls", "-l"]).expect("launch mode parses");
        assert_eq!(
            cli.command,
            vec![OsString::from("ls"), OsString::from("-l")]
        );
        let cli = Cli::try_parse_from(["leaktrace", "-p", "42", "--older-than", "2s", "-n", "3"])
            .expect("pid mode parses");
        assert_eq!(cli.pid, Some(42));
        assert_eq!(cli.older_than, Duration::from_secs(2));
        assert_eq!(cli.count, Some(3));
    }
}
