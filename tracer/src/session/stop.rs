//! Ctrl-C and SIGTERM, heard at every moment of a run.
//!
//! Installed first thing, before anything is loaded into the kernel. While
//! leaktrace is only preparing (reading the target, loading and verifying
//! programs, building unwind tables), nothing it made outlives the process
//! (the kernel frees programs and maps with their fds), so the handler
//! itself says so and exits at once, even in the middle of a verification.
//! From the first attach on, the handler only records the signal; the
//! attach steps check it between links and remove what they attached, and
//! the tracing loop ends with a final report.
//!
//! A handler, rather than the default action, also overrides a SIGINT
//! that a shell ignores for background jobs (`leaktrace … &` in a script),
//! which used to make Ctrl-C and `kill -INT` no-ops until tracing began.

use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

/// Nothing attached yet: a signal ends the process from the handler.
const PREPARING: u8 = 0;
/// Probes may be in the kernel: a signal is recorded for the code to act on.
const ATTACHED: u8 = 1;

static PHASE: AtomicU8 = AtomicU8::new(PREPARING);
/// The first stop signal received since the attach began (0: none).
static STOP: AtomicI32 = AtomicI32::new(0);
/// leaktrace's own pid: a command it forked and holds before its exec
/// inherits the handler, and must not act on it.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// A stop signal ended the run before tracing began.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name} while attaching; every probe attached so far was removed", name = signal_name(*.0))]
pub struct Interrupted(pub i32);

impl Interrupted {
    /// The shell's convention: 128 + the signal.
    pub fn exit_code(&self) -> i32 {
        128 + self.0
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    // SAFETY: getpid has no preconditions.
    OWNER.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the
        // handler only calls async-signal-safe functions (see below).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// From here on probes may be attached: signals are recorded, not acted on.
pub fn attaching() {
    PHASE.store(ATTACHED, Ordering::SeqCst);
}

/// The stop signal received since [`attaching`], if any.
pub fn requested() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// `Err` once a stop signal has arrived.
pub fn check() -> Result<(), Interrupted> {
    requested().map_or(Ok(()), |sig| Err(Interrupted(sig)))
}

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: getpid, write and _exit are async-signal-safe; the message is
    // a static buffer.
    unsafe {
        if libc::getpid() != OWNER.load(Ordering::SeqCst) {
            return;
        }
        if PHASE.load(Ordering::SeqCst) == PREPARING {
            let msg: &[u8] = if sig == libc::SIGTERM {
                b"leaktrace: interrupted by SIGTERM before tracing began; nothing was attached\n"
            } else {
                b"leaktrace: interrupted by SIGINT before tracing began; nothing was attached\n"
            };
            libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + sig);
        }
    }
    let _ = STOP.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Tests only: when `LEAKTRACE_TEST_HOLD_AT` names `moment`, says so on
/// stderr ("leaktrace: test: at MOMENT") and, except at "load" (right
/// before the programs are loaded and verified), waits (up to 30 s) for a
/// stop signal, so that a test can signal leaktrace at that very moment. While
/// nothing is attached the handler ends the process; after that, the
/// caller's next [`check`] sees the signal.
pub fn test_hold(moment: &str) {
    if std::env::var("LEAKTRACE_TEST_HOLD_AT").ok().as_deref() != Some(moment) {
        return;
    }
    eprintln!("leaktrace: test: at {moment}");
    if moment == "load" {
        // Not held: the test's signal is to land in the verifier's work.
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while requested().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
