//! Where to see a goroutine being created, cheaply.
//!
//! Every goroutine comes out of `runtime.newproc1`, called (on the system
//! stack) by a few runtime closures: `newproc.func1` for every `go`
//! statement, and rarer ones for coroutines (`iter.Pull`), `synctest` and
//! debugger calls. `newproc1`'s RET is single-stepped by the kernel (about
//! 14 µs per hit in a busy server), so instead:
//!
//! - in `newproc.func1`, the hot path, the probe goes where the new `g` is
//!   handed to `runqput` in RBX: on the `call runtime.runqput`, or on the
//!   nop just before it when the compiler put one there; both are
//!   instructions the kernel emulates;
//! - in every other caller, on the instruction after its `call
//!   runtime.newproc1`, where the new `g` is the result in RAX.
//!
//! If `newproc.func1` does not have that shape, leaktrace falls back to
//! probing each RET of `newproc1` (RAX), which sees every caller.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register,
};

use super::{disasm, image::Segments, pclntab::Pclntab, GoError};

pub(crate) const NEWPROC1: &str = "runtime.newproc1";
const NEWPROC_CLOSURE: &str = "runtime.newproc.func1";
const RUNQPUT: &str = "runtime.runqput";

/// Which register holds the new `g` at a creation probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewG {
    Rax,
    Rbx,
}

/// One creation probe point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreationProbe {
    /// The function it sits in, and where.
    pub function: String,
    /// Link-time address of that function's entry and of the probe.
    pub entry: u64,
    pub at: u64,
    pub new_g: NewG,
}

/// The creation probes of a Go binary (see the module docs).
pub(crate) fn creation_probes(
    table: &Pclntab,
    segments: &Segments,
    data: &[u8],
) -> Result<Vec<CreationProbe>, GoError> {
    let newproc1 = table
        .by_name(NEWPROC1)
        .ok_or(GoError::MissingFunction(NEWPROC1))?;
    let runqput = table.by_name(RUNQPUT).map(|f| f.entry);
    let decode = |entry: u64, end: u64| -> Option<Vec<Instruction>> {
        let code = segments.bytes(data, entry, end.checked_sub(entry)?)?;
        Some(
            Decoder::with_ip(64, code, entry, DecoderOptions::NONE)
                .into_iter()
                .collect(),
        )
    };
    let mut probes = Vec::new();
    let mut hot_path_found = false;
    // newproc1 is unexported: only the runtime calls it.
    for f in table.functions() {
        let Some(name) = table.name_of(&f).filter(|n| n.starts_with("runtime.")) else {
            continue;
        };
        let Some(code) = decode(f.entry, f.end) else {
            continue;
        };
        for (i, ins) in code.iter().enumerate() {
            if !is_direct_call_to(ins, newproc1.entry) {
                continue;
            }
            let handoff = (name == NEWPROC_CLOSURE)
                .then(|| runqput.and_then(|r| handoff_point(&code[i + 1..], r)))
                .flatten();
            match handoff {
                Some(at) => {
                    hot_path_found = true;
                    probes.push(CreationProbe {
                        function: format!("{name} (g to runqput)"),
                        entry: f.entry,
                        at,
                        new_g: NewG::Rbx,
                    });
                }
                None => match code.get(i + 1) {
                    Some(next) => probes.push(CreationProbe {
                        function: format!("{name} (newproc1 returned)"),
                        entry: f.entry,
                        at: next.ip(),
                        new_g: NewG::Rax,
                    }),
                    None => return fallback(newproc1.entry, newproc1.end, segments, data),
                },
            }
        }
    }
    if !hot_path_found {
        return fallback(newproc1.entry, newproc1.end, segments, data);
    }
    Ok(probes)
}

/// Each RET of newproc1, where the new g is in RAX.
fn fallback(
    entry: u64,
    end: u64,
    segments: &Segments,
    data: &[u8],
) -> Result<Vec<CreationProbe>, GoError> {
    let code = segments
        .bytes(data, entry, end.saturating_sub(entry))
        .ok_or(GoError::NotInFile(NEWPROC1))?;
    let returns = disasm::x86_64_returns(code, entry);
    if returns.is_empty() {
        return Err(GoError::NoReturn);
    }
    Ok(returns
        .into_iter()
        .map(|at| CreationProbe {
            function: format!("{NEWPROC1} (RET)"),
            entry,
            at,
            new_g: NewG::Rax,
        })
        .collect())
}

/// In the code after `call newproc1`: the point where the new g (moved
/// from RAX to RBX) is about to be passed to `runqput`. The code up to the
/// call must be straight-line, copy RAX to RBX once and not touch RBX
/// again. The probe goes on a nop right before the call if there is one
/// after the copy, else on the call itself.
fn handoff_point(after: &[Instruction], runqput: u64) -> Option<u64> {
    let mut copied = false;
    let mut nop_at = None;
    for ins in after {
        if is_direct_call_to(ins, runqput) {
            return copied.then(|| nop_at.unwrap_or(ins.ip()));
        }
        if ins.code() == Code::INVALID || ins.flow_control() != FlowControl::Next {
            return None;
        }
        if ins.mnemonic() == Mnemonic::Nop {
            if copied {
                nop_at = Some(ins.ip());
            }
            continue;
        }
        nop_at = None;
        let copies_rax_to_rbx = ins.mnemonic() == Mnemonic::Mov
            && ins.op0_kind() == OpKind::Register
            && ins.op0_register() == Register::RBX
            && ins.op1_kind() == OpKind::Register
            && ins.op1_register() == Register::RAX;
        if copies_rax_to_rbx && !copied {
            copied = true;
        } else if writes_register(ins, Register::RBX) {
            return None;
        }
    }
    None
}

fn is_direct_call_to(ins: &Instruction, target: u64) -> bool {
    ins.mnemonic() == Mnemonic::Call
        && ins.op0_kind() == OpKind::NearBranch64
        && ins.near_branch_target() == target
}

/// Whether `ins` may write `reg` (implicitly too, e.g. `xchg`, `mul`).
fn writes_register(ins: &Instruction, reg: Register) -> bool {
    let mut factory = iced_x86::InstructionInfoFactory::new();
    factory.info(ins).used_registers().iter().any(|r| {
        r.register().full_register() == reg
            && !matches!(
                r.access(),
                iced_x86::OpAccess::Read | iced_x86::OpAccess::CondRead | iced_x86::OpAccess::None
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .into_iter()
            .collect()
    }

    /// Go 1.23's newproc.func1 after `call newproc1` (at 0x444360):
    /// mov rdx,[r14+30h]; mov rdx,[rdx+0d0h]; mov rbx,rax; mov ecx,1;
    /// mov rax,rdx; nop dword [rax+rax]; call runqput (0x448800)
    const GO123_AFTER_NEWPROC1: &[u8] = &[
        0x49, 0x8b, 0x56, 0x30, 0x48, 0x8b, 0x92, 0xd0, 0x00, 0x00, 0x00, 0x48, 0x89, 0xc3, 0xb9,
        0x01, 0x00, 0x00, 0x00, 0x48, 0x89, 0xd0, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0xe8, 0x7b, 0x44,
        0x00, 0x00,
    ];

    #[test]
    fn the_nop_before_runqput_is_the_probe_point() {
        let code = decode(GO123_AFTER_NEWPROC1, 0x444365);
        assert_eq!(handoff_point(&code, 0x448800), Some(0x44437b));
    }

    #[test]
    fn without_a_nop_the_call_is_the_probe_point() {
        // Go 1.21: the same without the nop; the call is at 0x442375.
        let mut bytes = GO123_AFTER_NEWPROC1.to_vec();
        bytes.drain(22..27);
        let code = decode(&bytes, 0x44235f);
        let call = code.last().expect("call").ip();
        let target = code.last().expect("call").near_branch_target();
        assert_eq!(handoff_point(&code, target), Some(call));
    }

    #[test]
    fn rbx_rewritten_or_never_copied_means_no_handoff_point() {
        let code = decode(GO123_AFTER_NEWPROC1, 0x444365);
        // Another callee than runqput.
        assert_eq!(handoff_point(&code, 0x1234), None);
        // mov rbx, rax replaced by mov rbx, rdx: RBX is not the new g.
        let mut bytes = GO123_AFTER_NEWPROC1.to_vec();
        bytes[13] = 0xd3;
        let code = decode(&bytes, 0x444365);
        assert_eq!(handoff_point(&code, 0x448800), None);
    }
}
