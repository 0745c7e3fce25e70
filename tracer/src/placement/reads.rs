//! What each of leaktrace's entry programs reads at its probe point (see
//! `tracer-ebpf/src/heap.rs` and `tasks.rs`): what decides how far its
//! probe may move past the function's entry.

use iced_x86::Register;
use tracer_common::AllocKind;

use super::Reads;

impl Reads {
    /// free-like functions: the pointer only; a NULL check may be skipped.
    pub const FREE: Reads = Reads {
        args: &[Register::RDI],
        skip_null_check: true,
        stack: false,
    };

    /// Spawn probes read no argument, only the stack.
    pub const SPAWN: Reads = Reads {
        args: &[],
        skip_null_check: false,
        stack: true,
    };

    /// An allocating function of `kind`: its arguments, and the stack.
    pub fn alloc(kind: AllocKind) -> Reads {
        Reads {
            args: arg_registers(kind),
            skip_null_check: false,
            stack: true,
        }
    }
}

/// The registers of the arguments `kind`'s entry program reads.
fn arg_registers(kind: AllocKind) -> &'static [Register] {
    // Every subset a kind reads (System V: RDI, RSI, RDX), by position.
    const BY_ARGS: [(&[u8], &[Register]); 5] = [
        (&[0], &[Register::RDI]),
        (&[1], &[Register::RSI]),
        (&[0, 1], &[Register::RDI, Register::RSI]),
        (&[0, 2], &[Register::RDI, Register::RDX]),
        (&[0, 1, 2], &[Register::RDI, Register::RSI, Register::RDX]),
    ];
    BY_ARGS
        .iter()
        .find(|(args, _)| *args == kind.args())
        .map_or(
            &[Register::RDI, Register::RSI, Register::RDX],
            |(_, regs)| regs,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alloc_kinds_arguments_have_registers() {
        for kind in AllocKind::ALL {
            let regs = arg_registers(kind);
            assert_eq!(regs.len(), kind.args().len(), "{kind:?}");
        }
        assert_eq!(
            arg_registers(AllocKind::PosixMemalign),
            &[Register::RDI, Register::RDX]
        );
        assert_eq!(arg_registers(AllocKind::Memalign), &[Register::RSI]);
    }
}
