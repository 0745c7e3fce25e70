//! Building the fixture programs (C, C++, Rust, a program without libc) once
//! per run, shared by every test binary.

use std::{
    fs,
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::*;

/// Compiled fixture programs.
pub struct Fixtures {
    pub dir: PathBuf,
}

impl Fixtures {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct FixtureSpec {
    name: &'static str,
    source: &'static str,
    compile: fn(&Path, &Path) -> Command,
}

/// `compiler` at `opt`, with debug info and frame pointers, and `extra`.
fn build(compiler: &str, opt: &str, extra: &[&str], src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(compiler);
    cmd.args([opt, "-g", "-fno-omit-frame-pointer", "-Wall"])
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(src);
    cmd
}

fn c(src: &Path, out: &Path) -> Command {
    build("cc", "-O1", &["-Wno-deprecated-declarations"], src, out)
}

fn c_threads(src: &Path, out: &Path) -> Command {
    let mut cmd = c(src, out);
    cmd.arg("-pthread");
    cmd
}

/// The reachability fixtures: -O0, since an optimizer drops allocations
/// and stores nobody reads, which is what those fixtures are made of.
fn c_unoptimized_threads(src: &Path, out: &Path) -> Command {
    build("cc", "-O0", &["-pthread"], src, out)
}

fn cpp_unoptimized(src: &Path, out: &Path) -> Command {
    build("g++", "-O0", &[], src, out)
}

fn cpp(src: &Path, out: &Path) -> Command {
    build("g++", "-O1", &[], src, out)
}

/// The flags distributions build C with: -O2, no frame pointers, unwind
/// tables (the default), so stacks unwind only through DWARF CFI.
fn c_o2(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("cc");
    cmd.args(["-O2", "-g", "-pthread", "-Wall", "-o"])
        .arg(out)
        .arg(src);
    cmd
}

/// As [`c_o2`] without unwind tables: no .eh_frame for the program's own
/// code, only the .debug_frame that -g emits.
fn c_o2_notables(src: &Path, out: &Path) -> Command {
    let mut cmd = c_o2(src, out);
    cmd.args(["-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]);
    cmd
}

fn cpp_o2(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("g++");
    cmd.args(["-O2", "-g", "-Wall", "-o"]).arg(out).arg(src);
    cmd
}

/// Cargo project `name` under tests/fixtures (`src` is its src/main.rs),
/// with its own locked dependencies and features: built in release into a
/// target directory of its own, then copied to `out`. Rust flags come from
/// `rustflags` only, never from the environment.
fn cargo_fixture(
    src: &Path,
    out: &Path,
    name: &str,
    features: &str,
    rustflags: Option<&str>,
) -> Command {
    let project = src
        .parent()
        .and_then(Path::parent)
        .expect("fixture at PROJECT/src/main.rs");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            r#""${CARGO:-cargo}" build --quiet --release --locked --manifest-path "$1/Cargo.toml" --target-dir "$2" --features "$3" && cp "$2/release/$4" "$5""#,
        )
        .arg("sh")
        .arg(project)
        .arg(out.with_file_name(format!("{name}.build")))
        .arg(features)
        .arg(name)
        .arg(out);
    // RUSTFLAGS, CARGO_ENCODED_RUSTFLAGS, CARGO_BUILD_RUSTFLAGS,
    // CARGO_TARGET_<triple>_RUSTFLAGS: any would change the code built.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.ends_with("RUSTFLAGS")) {
            cmd.env_remove(key);
        }
    }
    if let Some(flags) = rustflags {
        cmd.env("RUSTFLAGS", flags);
    }
    cmd
}

/// tests/fixtures/rust_heap on the allocator `feature` selects (none: the
/// system's), built with frame pointers.
fn rust_heap(src: &Path, out: &Path, feature: &str) -> Command {
    cargo_fixture(
        src,
        out,
        "rust_heap",
        feature,
        Some("-C force-frame-pointers=yes"),
    )
}

/// tests/fixtures/unwind_rust, built as Rust programs ship: release,
/// default profile, no frame pointers.
fn rust_unwind(src: &Path, out: &Path) -> Command {
    cargo_fixture(src, out, "unwind_rust", "", None)
}

/// tests/fixtures/reach_rust, built as Rust programs ship.
fn rust_reach(src: &Path, out: &Path) -> Command {
    cargo_fixture(src, out, "reach_rust", "", None)
}

fn rust_system(src: &Path, out: &Path) -> Command {
    rust_heap(src, out, "")
}

fn rust_jemalloc(src: &Path, out: &Path) -> Command {
    rust_heap(src, out, "jemalloc")
}

fn rust_mimalloc(src: &Path, out: &Path) -> Command {
    rust_heap(src, out, "mimalloc")
}

fn nolibc(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("cc");
    cmd.args(["-nostdlib", "-static", "-O2", "-o"])
        .arg(out)
        .arg(src);
    cmd
}

const FIXTURES: &[FixtureSpec] = &[
    FixtureSpec {
        name: "heap_c",
        source: "heap_c.c",
        compile: c,
    },
    FixtureSpec {
        name: "kmem_hold",
        source: "kmem_hold.c",
        compile: c,
    },
    FixtureSpec {
        name: "reach_c",
        source: "reach_c.c",
        compile: c_unoptimized_threads,
    },
    FixtureSpec {
        name: "reach_cpp",
        source: "reach_cpp.cpp",
        compile: cpp_unoptimized,
    },
    FixtureSpec {
        name: "prefork",
        source: "prefork.c",
        compile: c,
    },
    FixtureSpec {
        name: "prefork_child",
        source: "prefork_child.c",
        compile: c,
    },
    FixtureSpec {
        name: "probe_paths",
        source: "probe_paths.c",
        compile: c,
    },
    FixtureSpec {
        name: "rust_jemalloc",
        source: "rust_heap/src/main.rs",
        compile: rust_jemalloc,
    },
    FixtureSpec {
        name: "rust_mimalloc",
        source: "rust_heap/src/main.rs",
        compile: rust_mimalloc,
    },
    FixtureSpec {
        name: "jemalloc_api",
        source: "jemalloc_api.c",
        compile: c,
    },
    FixtureSpec {
        name: "heap_cpp",
        source: "heap_cpp.cpp",
        compile: cpp,
    },
    FixtureSpec {
        name: "threads_leak",
        source: "threads_leak.c",
        compile: c_threads,
    },
    FixtureSpec {
        name: "seccomp_c",
        source: "seccomp_c.c",
        compile: c,
    },
    FixtureSpec {
        name: "threads_c",
        source: "threads_c.c",
        compile: c_threads,
    },
    FixtureSpec {
        name: "reach_rust",
        source: "reach_rust/src/main.rs",
        compile: rust_reach,
    },
    FixtureSpec {
        name: "heap_rust",
        source: "rust_heap/src/main.rs",
        compile: rust_system,
    },
    FixtureSpec {
        name: "nolibc",
        source: "nolibc.c",
        compile: nolibc,
    },
    FixtureSpec {
        name: "sigstksz",
        source: "sigstksz.c",
        compile: c,
    },
    FixtureSpec {
        name: "unwind_c",
        source: "unwind_c.c",
        compile: c_o2,
    },
    // The same program as a file of its own: a return probe another tracer
    // puts on it (tests/tests/unwind.rs) then cannot reach the other tests'
    // processes, as uprobes go by file.
    FixtureSpec {
        name: "unwind_c_retprobed",
        source: "unwind_c.c",
        compile: c_o2,
    },
    FixtureSpec {
        name: "unwind_c_notables",
        source: "unwind_c.c",
        compile: c_o2_notables,
    },
    FixtureSpec {
        name: "unwind_cpp",
        source: "unwind_cpp.cpp",
        compile: cpp_o2,
    },
    FixtureSpec {
        name: "unwind_rust",
        source: "unwind_rust/src/main.rs",
        compile: rust_unwind,
    },
];

/// Builds every fixture into target/fixtures once per run: a file lock
/// serialises test binaries, and up-to-date outputs are reused.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let root = workspace_root();
        let dir = root.join("target/fixtures");
        fs::create_dir_all(&dir).expect("create target/fixtures");
        let lock = fs::File::create(dir.join(".lock")).expect("lock file");
        // SAFETY: flock on a file descriptor we own; released when `lock` closes.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        for spec in FIXTURES {
            let src = root.join("tests/fixtures").join(spec.source);
            let out = dir.join(spec.name);
            let fresh = match (fs::metadata(&src), fs::metadata(&out)) {
                (Ok(s), Ok(o)) => o.modified().ok() >= s.modified().ok(),
                _ => false,
            };
            if fresh {
                continue;
            }
            let status = (spec.compile)(&src, &out)
                .status()
                .expect("run the compiler");
            assert!(status.success(), "building fixture {} failed", spec.name);
        }
        drop(lock);
        Fixtures { dir }
    })
}
