//! Finding the RET instructions of a Go function: Go code must never get a
//! uretprobe (moving goroutine stacks break the hijacked return address),
//! so leaktrace puts plain uprobes on each RET instead.

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind};

/// Addresses of every RET (near, with or without a stack adjustment) in
/// x86-64 `code` that starts at address `ip`.
pub(crate) fn x86_64_returns(code: &[u8], ip: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    for instr in &mut decoder {
        // Undecodable bytes (padding, data in text) are skipped one
        // instruction at a time, as the decoder does by itself.
        if instr.code() == Code::INVALID {
            continue;
        }
        if instr.mnemonic() == Mnemonic::Ret {
            out.push(instr.ip());
        }
    }
    out
}

/// The CALLs in x86-64 `code` that starts at `ip`: (address of the call,
/// target if direct).
pub fn x86_64_calls(code: &[u8], ip: u64) -> Vec<(u64, Option<u64>)> {
    let decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    decoder
        .into_iter()
        .filter(|i| i.mnemonic() == Mnemonic::Call)
        .map(|i| {
            let target = (i.op0_kind() == OpKind::NearBranch64).then(|| i.near_branch_target());
            (i.ip(), target)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_calls_and_direct_targets() {
        let code = [
            0xe8, 0x0b, 0x00, 0x00, 0x00, // call +11 -> 0x1010
            0xff, 0xd0, // call rax (indirect: no target)
            0xe8, 0xf4, 0xff, 0xff, 0xff, // call -12 -> 0x1000
            0xc3,
        ];
        assert_eq!(
            x86_64_calls(&code, 0x1000),
            vec![
                (0x1000, Some(0x1010)),
                (0x1005, None),
                (0x1007, Some(0x1000))
            ]
        );
    }

    #[test]
    fn finds_every_ret() {
        let code = [
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp, rsp
            0x74, 0x01, // je +1
            0xc3, // ret
            0x5d, // pop rbp
            0xc2, 0x08, 0x00, // ret 8
            0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(x86_64_returns(&code, 0x1000), vec![0x1006, 0x1008]);
    }

    #[test]
    fn immediate_c3_bytes_are_not_rets() {
        // mov eax, 0xc3c3c3c3 contains 0xc3 bytes but no RET.
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3];
        assert!(x86_64_returns(&code, 0).is_empty());
    }
}
