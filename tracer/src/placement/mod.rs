//! Where in a function to put its probe. x86 uprobes emulate a few
//! instructions (pushes, nops, jumps, conditional jumps, calls) and
//! single-step every other one out of line, which costs several times more
//! per hit (measured: ~1.0 M hits/s on a `push`, `nop`, `jcc`, `jmp` or
//! `call`; ~0.17 M on a `cmp`, `test`, `mov`, `sub`, `endbr64` or `ret`;
//! 6.18 kernel, this machine kind).
//!
//! So each probe goes on the first emulated instruction of the function's
//! straight-line entry path, skipping only instructions that cannot change
//! what the probe reads there: the argument registers its program reads,
//! and, for a probe that reads the stack, the stack and frame pointers (a
//! return probe sharing the point takes the return address from the top of
//! the stack, the entry program reads the caller there, the stack walk
//! starts from the frame pointer). Skipped instructions never branch, so
//! every call reaches the probe. For free-like
//! functions a leading `test %rdi,%rdi; je` NULL check is skipped too: a
//! call that takes the branch frees nothing. When nothing qualifies within
//! a short window, the probe stays at the entry.

mod reads;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, Mnemonic, OpAccess, OpKind, Register,
};

/// How far past the entry to look.
const WINDOW: usize = 64;

/// What a probe reads at its point.
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    /// Argument registers the program reads (full 64-bit registers).
    pub args: &'static [Register],
    /// A leading NULL check of the first argument may be skipped.
    pub skip_null_check: bool,
    /// The program reads the stack (the caller's return address, the
    /// frame-pointer walk) or a return probe shares the point: the stack and
    /// frame pointers must be as they were at the entry.
    pub stack: bool,
}

/// Where a probe goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// File offset of the probed instruction.
    pub offset: u64,
    /// That instruction, as disassembled (Intel syntax).
    pub instruction: String,
    /// Whether the kernel emulates it (otherwise it is single-stepped).
    pub emulated: bool,
}

impl Placement {
    /// At the entry, before the code was looked at.
    pub fn at_entry(offset: u64) -> Self {
        Placement {
            offset,
            instruction: String::from("?"),
            emulated: false,
        }
    }

    /// `offset - entry` as `+N`, for tables.
    pub fn describe(&self, entry: u64) -> String {
        format!(
            "+{} `{}` ({})",
            self.offset - entry,
            self.instruction,
            if self.emulated {
                "emulated"
            } else {
                "single-stepped"
            }
        )
    }
}

/// The probe point for a function at file offset `entry` in `data`.
pub fn place(data: &[u8], entry: u64, reads: Reads) -> Placement {
    let instructions = decode(data, entry);
    let at_entry = || match instructions.first() {
        Some(first) => placement(first),
        None => Placement::at_entry(entry),
    };
    let mut info = InstructionInfoFactory::new();
    let mut i = 0;
    while let Some(ins) = instructions.get(i) {
        if is_emulated(ins) {
            return placement(ins);
        }
        if reads.skip_null_check && i == skipped_prefix(&instructions) {
            if let Some(next) = instructions.get(i + 1) {
                if is_null_check(ins, next) {
                    i += 2;
                    continue;
                }
            }
        }
        if !is_harmless(ins, reads, &mut info) {
            break;
        }
        i += 1;
    }
    at_entry()
}

/// The instruction at file offset `offset` (a probe point chosen
/// elsewhere, e.g. in Go code), described as a placement.
pub fn at(data: &[u8], offset: u64) -> Placement {
    match decode(data, offset).first() {
        Some(first) => placement(first),
        None => Placement::at_entry(offset),
    }
}

/// Where `free`'s probe goes (the pointer in RDI; NULL frees nothing).
pub fn free_probe_offset(data: &[u8], entry: u64) -> u64 {
    place(
        data,
        entry,
        Reads {
            args: &[Register::RDI],
            skip_null_check: true,
            stack: false,
        },
    )
    .offset
}

fn decode(data: &[u8], entry: u64) -> Vec<Instruction> {
    let Some(rest) = usize::try_from(entry)
        .ok()
        .and_then(|start| data.get(start..))
    else {
        return Vec::new();
    };
    let code = &rest[..WINDOW.min(rest.len())];
    Decoder::with_ip(64, code, entry, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| i.code() != Code::INVALID)
        .collect()
}

fn placement(ins: &Instruction) -> Placement {
    let mut text = String::new();
    IntelFormatter::new().format(ins, &mut text);
    Placement {
        offset: ins.ip(),
        instruction: text,
        emulated: is_emulated(ins),
    }
}

/// How many leading `endbr64`s there are (the NULL check may follow them).
fn skipped_prefix(instructions: &[Instruction]) -> usize {
    instructions
        .iter()
        .take_while(|i| i.code() == Code::Endbr64)
        .count()
}

/// Instructions the kernel's x86 uprobe code emulates without
/// single-stepping: `push reg`, every `nop` form, relative `jmp`, `jcc`
/// and `call`.
pub fn is_emulated(i: &Instruction) -> bool {
    match i.mnemonic() {
        Mnemonic::Push => i.op0_kind() == OpKind::Register,
        Mnemonic::Nop => true,
        Mnemonic::Jmp | Mnemonic::Call => matches!(
            i.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ),
        _ => i.flow_control() == FlowControl::ConditionalBranch && !is_loop_or_jrcxz(i),
    }
}

/// `loop`, `jrcxz` and friends branch conditionally but are not `jcc`.
fn is_loop_or_jrcxz(i: &Instruction) -> bool {
    matches!(
        i.mnemonic(),
        Mnemonic::Loop
            | Mnemonic::Loope
            | Mnemonic::Loopne
            | Mnemonic::Jrcxz
            | Mnemonic::Jecxz
            | Mnemonic::Jcxz
    )
}

/// An instruction that can be executed before the probe without changing
/// what the probe reads: it falls through, and writes none of the argument
/// registers, the stack pointer or the frame pointer.
fn is_harmless(ins: &Instruction, reads: Reads, info: &mut InstructionInfoFactory) -> bool {
    if ins.flow_control() != FlowControl::Next {
        return false;
    }
    let used = info.info(ins);
    used.used_registers().iter().all(|r| {
        let written = matches!(
            r.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        let full = r.register().full_register();
        let stack = full == Register::RSP || full == Register::RBP;
        !written
            || !((reads.stack && stack) || reads.args.iter().any(|a| a.full_register() == full))
    })
}

/// `test %rdi,%rdi` followed by `je`.
fn is_null_check(test: &Instruction, next: &Instruction) -> bool {
    test.mnemonic() == Mnemonic::Test
        && test.op0_kind() == OpKind::Register
        && test.op1_kind() == OpKind::Register
        && test.op0_register() == Register::RDI
        && test.op1_register() == Register::RDI
        && next.mnemonic() == Mnemonic::Je
}

#[cfg(test)]
mod tests {
    use super::*;

    const RDI: Reads = Reads {
        args: &[Register::RDI],
        skip_null_check: false,
        stack: true,
    };
    const FREE: Reads = Reads {
        args: &[Register::RDI],
        skip_null_check: true,
        stack: false,
    };

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
        let p = place(&at(0x1000, GLIBC_FREE), 0x1000, FREE);
        assert_eq!(p.instruction, "push rbp");
        assert!(p.emulated);
        assert_eq!(p.describe(0x1000), "+9 `push rbp` (emulated)");
        // Without the NULL-check allowance (an allocation function), the
        // je is already emulated: the probe goes on it.
        assert_eq!(place(&at(0x1000, GLIBC_FREE), 0x1000, RDI).offset, 0x1003);
    }

    #[test]
    fn jemalloc_malloc_is_probed_on_its_size_check_branch() {
        // cmp rdi, 0x1000; ja ...: the cmp only reads RDI.
        let code = [
            0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x87, 0x93, 0, 0, 0,
        ];
        let p = place(&at(0x20, &code), 0x20, RDI);
        assert_eq!((p.offset, p.emulated), (0x27, true));
    }

    #[test]
    fn jemalloc_free_skips_its_address_arithmetic() {
        // mov rax, rdi; mov rdx, [rip+..]; mov rcx, rdi; shr rax, 0x1a;
        // and rcx, ..; cmp rcx, [rax+0x1b0]; jne ...
        let code = [
            0x48, 0x89, 0xf8, 0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, 0x48, 0x89, 0xf9, 0x48,
            0xc1, 0xe8, 0x1a, 0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, 0x48, 0x3b, 0x88, 0xb0,
            0x01, 0x00, 0x00, 0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00,
        ];
        let p = place(&at(0x10, &code), 0x10, FREE);
        assert_eq!((p.offset, p.emulated), (0x10 + 31, true), "{p:?}");
    }

    #[test]
    fn libstdcxx_operator_new_skips_endbr_test_and_mov() {
        // endbr64; test rdi,rdi; mov eax,1; push rbx
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0xb8, 0x01, 0, 0, 0, 0x53,
        ];
        let p = place(&at(0x40, &code), 0x40, RDI);
        assert_eq!((p.offset, p.instruction.as_str()), (0x40 + 12, "push rbx"));
    }

    #[test]
    fn endbr64_is_skipped_before_the_null_check() {
        let mut code = vec![0xf3, 0x0f, 0x1e, 0xfa]; // endbr64
        code.extend_from_slice(GLIBC_FREE);
        assert_eq!(free_probe_offset(&at(0x40, &code), 0x40), 0x40 + 4 + 9);
        // A push right at entry: nothing to skip.
        assert_eq!(free_probe_offset(&at(0x40, &[0x41, 0x54]), 0x40), 0x40);
    }

    #[test]
    fn instructions_that_change_what_the_probe_reads_stop_the_search() {
        // mov rdi, [rip+..]: overwrites the argument (mimalloc's malloc
        // moves it to RSI first).
        let code = [0x48, 0x8b, 0x3d, 0x00, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(place(&at(0x10, &code), 0x10, RDI).offset, 0x10);
        // mov rsi, rdi; mul rdx clobbers RDX (reallocarray reads it).
        let reads = Reads {
            args: &[Register::RSI, Register::RDX],
            skip_null_check: false,
            stack: true,
        };
        let code = [0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x55];
        assert_eq!(place(&at(0x10, &code), 0x10, reads).offset, 0x10);
        // sub rsp, 8: the return address would no longer be on top...
        let code = [0x48, 0x83, 0xec, 0x08, 0x55];
        assert_eq!(place(&at(0x10, &code), 0x10, RDI).offset, 0x10);
        // ...which a free-like probe does not read (jemalloc's sized
        // operator delete: test; je; sub rsp, 8; call sdallocx).
        assert_eq!(place(&at(0x10, &code), 0x10, FREE).offset, 0x14);
        // mov rbp, rsp: the frame-pointer walk would start elsewhere.
        let code = [0x48, 0x89, 0xe5, 0x55];
        assert_eq!(place(&at(0x10, &code), 0x10, RDI).offset, 0x10);
        // ret: leaves the function.
        assert_eq!(place(&at(0x10, &[0xc3, 0x55]), 0x10, RDI).offset, 0x10);
    }

    #[test]
    fn null_checks_of_other_registers_or_senses_are_not_skipped() {
        // test rsi, rsi; je: not free's argument.
        let code = [0x48, 0x85, 0xf6, 0x74, 0x05, 0x55];
        assert_eq!(place(&at(0x10, &code), 0x10, FREE).offset, 0x13); // on the je
                                                                      // test rdi, rdi; jne: the fall-through path is the NULL one; the
                                                                      // probe lands on the jne, which every call executes.
        let code = [0x48, 0x85, 0xff, 0x75, 0x05, 0x55];
        assert_eq!(place(&at(0x10, &code), 0x10, FREE).offset, 0x13);
        // Out of range.
        assert_eq!(free_probe_offset(&[0x55], 7), 7);
    }
}
