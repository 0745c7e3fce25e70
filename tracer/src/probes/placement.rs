//! Where in `free` to put its probe. x86 uprobes emulate a few instructions
//! (pushes, nops, jumps) and single-step every other one out of line, which
//! costs several times more per hit (measured in ../shared/DESIGN.md). glibc's
//! `free` starts with `test %rdi,%rdi; je` (single-stepped) and pushes right
//! after; free is the hottest probe, so it goes on that push.
//!
//! Only `free` moves: the allocation functions also carry a return probe,
//! which must sit at the entry (it takes the return address from the top of
//! the stack) and shares its trap with an entry probe at the same address.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// How far past the entry to look.
const WINDOW: usize = 32;

/// The file offset for `free`'s probe, given the object's bytes and the
/// function's file offset: the first emulated instruction, reached from the
/// entry by skipping only what cannot change the pointer the probe reads
/// (`endbr64`, and a `test %rdi,%rdi; je` NULL check: a call that takes
/// the branch frees nothing). Anything else, and the probe stays at entry.
pub fn free_probe_offset(data: &[u8], entry: u64) -> u64 {
    let Some(rest) = usize::try_from(entry)
        .ok()
        .and_then(|start| data.get(start..))
    else {
        return entry;
    };
    let code = &rest[..WINDOW.min(rest.len())];
    let instructions: Vec<Instruction> = Decoder::with_ip(64, code, entry, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| i.code() != Code::INVALID)
        .collect();
    let mut i = 0;
    while let Some(ins) = instructions.get(i) {
        if is_emulated(ins) {
            return ins.ip();
        }
        if ins.code() == Code::Endbr64 {
            i += 1;
        } else if is_null_check(ins, instructions.get(i + 1)) {
            i += 2;
        } else {
            break;
        }
    }
    entry
}

/// `push reg` (with or without REX) or a one-byte `nop`: instructions the
/// kernel's x86 uprobe code emulates without single-stepping. Jumps are
/// emulated too, but a probe on one would be reached by fewer paths.
fn is_emulated(i: &Instruction) -> bool {
    (i.mnemonic() == Mnemonic::Push && i.op0_kind() == OpKind::Register && i.len() <= 2)
        || (i.mnemonic() == Mnemonic::Nop && i.len() == 1)
}

/// `test %rdi,%rdi` followed by `je`.
fn is_null_check(test: &Instruction, next: Option<&Instruction>) -> bool {
    test.mnemonic() == Mnemonic::Test
        && test.op0_kind() == OpKind::Register
        && test.op1_kind() == OpKind::Register
        && test.op0_register() == Register::RDI
        && test.op1_register() == Register::RDI
        && next.is_some_and(|j| j.mnemonic() == Mnemonic::Je)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc 2.36 `free`: test %rdi,%rdi; je +0xbf; push %rbp; lea ...
    const GLIBC_FREE: &[u8] = &[
        0x48, 0x85, 0xff, // test rdi, rdi
        0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, // je rel32
        0x55, // push rbp
        0x48, 0x8d, 0x77, 0xf0, // lea rsi, [rdi-0x10]
        0x53, // push rbx
    ];

    fn at(offset: u64, code: &[u8]) -> Vec<u8> {
        let mut data = vec![0xcc; offset as usize];
        data.extend_from_slice(code);
        data
    }

    #[test]
    fn glibc_free_is_probed_on_its_first_push() {
        assert_eq!(free_probe_offset(&at(0x1000, GLIBC_FREE), 0x1000), 0x1009);
    }

    #[test]
    fn endbr64_is_skipped() {
        let mut code = vec![0xf3, 0x0f, 0x1e, 0xfa]; // endbr64
        code.extend_from_slice(GLIBC_FREE);
        assert_eq!(free_probe_offset(&at(0x40, &code), 0x40), 0x40 + 4 + 9);
        // A push right at entry: nothing to skip.
        assert_eq!(free_probe_offset(&at(0x40, &[0x41, 0x54]), 0x40), 0x40);
    }

    #[test]
    fn anything_else_before_the_push_keeps_the_entry() {
        // mov rax, [rdi-8]; push rbp: the skipped instruction reads memory.
        let code = [0x48, 0x8b, 0x47, 0xf8, 0x55];
        assert_eq!(free_probe_offset(&at(0x10, &code), 0x10), 0x10);
        // test rsi, rsi; je: not free's argument.
        let code = [0x48, 0x85, 0xf6, 0x74, 0x05, 0x55];
        assert_eq!(free_probe_offset(&at(0x10, &code), 0x10), 0x10);
        // test rdi, rdi; jne: the fall-through path is the NULL one.
        let code = [0x48, 0x85, 0xff, 0x75, 0x05, 0x55];
        assert_eq!(free_probe_offset(&at(0x10, &code), 0x10), 0x10);
        // Out of range.
        assert_eq!(free_probe_offset(&[0x55], 7), 7);
    }
}
