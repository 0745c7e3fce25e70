//! `--go-memprofile`: heap by allocation stack for a Go program whose
//! memory profiling the linker switched off.
//!
//! When nothing in a program can read the memory profile (no
//! `runtime/pprof`), the Go linker sets `runtime.disableMemoryProfiling`,
//! and the runtime zeroes `runtime.MemProfileRate` once at start; all the
//! sampling machinery stays linked and is consulted on every allocation.
//! Writing Go's default rate back into `MemProfileRate` through
//! /proc/PID/mem turns it on mid-run (checked live on Go 1.21–1.27:
//! docs/go.md, "Heap profiling switched off"). This is the one place leaktrace writes
//! into a target, so it is opt-in, checked first, and said at start.

use std::{fs::OpenOptions, io, os::unix::fs::FileExt};

use crate::golang::GoTarget;

/// Go's default `MemProfileRate` (one sample per 512 KiB allocated).
pub const GO_DEFAULT_RATE: u64 = 512 * 1024;

/// Go minor versions whose runtime this write was checked on.
const CHECKED: std::ops::RangeInclusive<u32> = 21..=27;

#[derive(Debug, thiserror::Error)]
pub enum MemProfileError {
    #[error(
        "--go-memprofile: {0} is not a Go version leaktrace checked this on (go1.21 to go1.27); \
         refusing to write into the target"
    )]
    Version(String),
    #[error(
        "--go-memprofile: runtime.{0} is not in the target's symbol table (stripped binary); \
         refusing to write into the target"
    )]
    NoSymbol(&'static str),
}

/// What `--go-memprofile` found, and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// MemProfileRate was 0 because of the linker: now Go's default.
    TurnedOn,
    /// Profiling was already on at this rate: nothing written.
    AlreadyOn(u64),
    /// The program itself set MemProfileRate to 0 (it links the profile
    /// but chose to switch it off): left alone.
    OffByChoice,
    /// The runtime has not initialised yet (a command just started): its
    /// start-up would zero the rate again; try later.
    NotStarted,
}

/// Where the two variables are, once the version and symbols are checked.
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    /// The rate to write (`--go-memprofile-rate`).
    pub write_rate: u64,
    rate: u64,
    disabled: u64,
    /// `runtime.allglen`: non-zero once the runtime has started its first
    /// goroutine, which is after it zeroed the rate.
    allglen: u64,
}

impl Switch {
    /// Checks the target is one this write was verified on.
    pub fn check(target: &GoTarget, write_rate: u64) -> Result<Switch, MemProfileError> {
        let b = &target.binary;
        let minor = b
            .version
            .strip_prefix("go1.")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse::<u32>().ok());
        if !minor.is_some_and(|m| CHECKED.contains(&m)) {
            return Err(MemProfileError::Version(b.version.clone()));
        }
        Ok(Switch {
            write_rate,
            rate: b
                .vars
                .mem_profile_rate
                .ok_or(MemProfileError::NoSymbol("MemProfileRate"))?,
            disabled: b
                .vars
                .disable_memory_profiling
                .ok_or(MemProfileError::NoSymbol("disableMemoryProfiling"))?,
            allglen: b.vars.allglen.ok_or(MemProfileError::NoSymbol("allglen"))?,
        })
    }

    /// Turns profiling on in `pid` (executable loaded at `bias`) if the
    /// linker had it turned off.
    pub fn turn_on(&self, pid: u32, bias: u64) -> io::Result<Outcome> {
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        let (rate_at, disabled_at) = (
            self.rate.wrapping_add(bias),
            self.disabled.wrapping_add(bias),
        );
        let mut allglen = [0u8; 8];
        mem.read_exact_at(&mut allglen, self.allglen.wrapping_add(bias))?;
        if u64::from_le_bytes(allglen) == 0 {
            return Ok(Outcome::NotStarted);
        }
        let mut rate = [0u8; 8];
        mem.read_exact_at(&mut rate, rate_at)?;
        let rate = u64::from_le_bytes(rate);
        let mut disabled = [0u8; 1];
        mem.read_exact_at(&mut disabled, disabled_at)?;
        match (disabled[0], rate) {
            (_, r) if r != 0 => Ok(Outcome::AlreadyOn(r)),
            (0, _) => Ok(Outcome::OffByChoice),
            _ => {
                write_rate(&mem, rate_at, self.write_rate)?;
                let mut now = [0u8; 8];
                mem.read_exact_at(&mut now, rate_at)?;
                if u64::from_le_bytes(now) != self.write_rate {
                    return Err(io::Error::other(
                        "runtime.MemProfileRate did not take the value",
                    ));
                }
                Ok(Outcome::TurnedOn)
            }
        }
    }
}

/// Writes `rate` over a zero `runtime.MemProfileRate` at `at`. A rate with
/// one non-zero byte (Go's default, 1) is one byte written: no reader in the
/// target can see a torn value, whatever its access width. Any other rate is
/// one aligned 8-byte write; a reader that saw it half done would see some
/// other positive rate, which only samples more or less often until the
/// next sample is drawn.
fn write_rate(mem: &std::fs::File, at: u64, rate: u64) -> io::Result<()> {
    let bytes = rate.to_le_bytes();
    if bytes.iter().filter(|&&b| b != 0).count() == 1 {
        let i = bytes.iter().position(|&b| b != 0).unwrap_or(0);
        return mem.write_all_at(&bytes[i..=i], at + i as u64);
    }
    mem.write_all_at(&bytes, at)
}
