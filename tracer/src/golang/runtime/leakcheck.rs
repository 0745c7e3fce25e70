//! `--go-leak-check`: goroutines the Go runtime itself proves leaked.
//!
//! Go 1.26 (as an experiment) and 1.27 compile a GC-based leak detector
//! into every binary: a GC started with `work.goroutineLeak.pending` set
//! marks only from goroutines that may still run, and moves every blocked
//! goroutine whose channel or lock nothing runnable can reach to status
//! `_Gleaked`. Only its trigger lives in `runtime/pprof`; leaktrace sets
//! the flag itself, through /proc/PID/mem, and the target's next GC runs
//! the detection (checked live on 1.26.6 and 1.27.3:
//! docs/go.md, "The runtime's goroutine leak detector").

use std::{fs::OpenOptions, io, os::unix::fs::FileExt};

use crate::golang::{binary::go_minor, GoTarget};

/// `workType.goroutineLeak` (its `pending` bool first), in `runtime.work`;
/// the same in 1.26 and 1.27 (DWARF of both).
const GOROUTINE_LEAK_OFFSET: u64 = 448;

/// The first Go release whose runtime has the detector.
const FIRST_MINOR: u32 = 26;
/// The last one its layout was checked on.
const LAST_CHECKED_MINOR: u32 = 27;

/// Where the trigger is, in a target that has the detector.
#[derive(Debug, Clone, Copy)]
pub struct LeakCheck {
    pending: u64,
}

impl LeakCheck {
    /// The trigger of `target`'s detector, or why it has none.
    pub fn of(target: &GoTarget) -> Result<LeakCheck, String> {
        let version = &target.binary.version;
        match go_minor(version) {
            Some(m) if m < FIRST_MINOR => {
                return Err(format!(
                    "--go-leak-check: the runtime's goroutine leak detector exists from Go 1.26; \
                     {version} has none (goroutines alive longer than --older-than are still reported)"
                ))
            }
            Some(m) if m <= LAST_CHECKED_MINOR => {}
            _ => {
                return Err(format!(
                    "--go-leak-check: not checked on {version} (Go 1.26 and 1.27 are): not triggered"
                ))
            }
        }
        match target.binary.vars.work {
            Some(work) => Ok(LeakCheck {
                pending: work + GOROUTINE_LEAK_OFFSET,
            }),
            None => Err(
                "--go-leak-check: runtime.work is not in the symbol table (stripped binary): not triggered"
                    .into(),
            ),
        }
    }

    /// Sets the trigger in `pid` (executable loaded at `bias`) unless it is
    /// still set from before; the next GC consumes it.
    pub fn arm(&self, pid: u32, bias: u64) -> io::Result<()> {
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        let at = self.pending.wrapping_add(bias);
        let mut b = [0u8; 1];
        mem.read_exact_at(&mut b, at)?;
        if b[0] == 0 {
            // An atomic.Bool: one byte, so no torn write.
            mem.write_all_at(&[1], at)?;
        }
        Ok(())
    }
}
