//! Runtime variables found through the code that uses them, for binaries
//! without a symbol table (`-ldflags=-s`, the usual production build).
//! Stripping removes data symbols but not function names (the pclntab keeps
//! them), and a few small runtime functions touch the variables leaktrace
//! reads in a shape that holds from go1.21 to go1.27; tests check every
//! answer against the symbols of an unstripped build of each version.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::{image::Segments, pclntab::Pclntab};

/// The machine code of the functions in one Go binary.
pub(crate) struct CodeRefs<'a> {
    pub table: &'a Pclntab,
    pub segments: &'a Segments,
    pub data: &'a [u8],
}

impl CodeRefs<'_> {
    /// `(allglen, allgptr)`: `runtime.forEachGRace` loads the length, then
    /// the array pointer, before its loop (two atomic loads, kept in order).
    pub fn allg(&self) -> Option<(u64, u64)> {
        let code = self.decode("runtime.forEachGRace")?;
        let mut loads = code.iter().filter_map(rip_load);
        Some((loads.next()?, loads.next()?))
    }

    /// `(waitReasonStrings, its length)`: `runtime.waitReason.String`
    /// compares the reason with the length (`CMP AL, imm`) and then takes
    /// the table's address (the one LEA into writable data; the other is
    /// the "unknown wait reason" string constant).
    pub fn wait_reason_strings(&self) -> Option<(u64, u64)> {
        let code = self.decode("runtime.waitReason.String")?;
        let len = code.iter().find_map(|i| {
            (i.mnemonic() == Mnemonic::Cmp
                && i.op0_kind() == OpKind::Register
                && i.op0_register() == Register::AL
                && i.op1_kind() == OpKind::Immediate8)
                .then(|| i.immediate8().into())
        })?;
        let table = code
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Lea && i.is_ip_rel_memory_operand())
            .map(Instruction::ip_rel_memory_address)
            .find(|&a| self.is_writable(a))?;
        Some((table, len))
    }

    /// `runtime.gcController`: the receiver `runtime.gcControllerCommit`
    /// passes to the `*gcControllerState` methods it calls.
    pub fn gc_controller(&self) -> Option<u64> {
        self.receiver_at_call("runtime.gcControllerCommit", |callee| {
            callee.starts_with("runtime.(*gcControllerState).")
        })
    }

    /// `runtime.memstats`: `memstats.heapStats.acquire()` in the
    /// allocator's refill paths; `heapStats` is `mstats`' first field.
    pub fn memstats(&self) -> Option<u64> {
        ["runtime.(*mcache).refill", "runtime.(*mcache).allocLarge"]
            .into_iter()
            .find_map(|caller| {
                self.receiver_at_call(caller, |callee| {
                    callee == "runtime.(*consistentHeapStats).acquire"
                })
            })
    }

    /// `runtime.mbuckets`: the first variable `runtime.mProf_FlushLocked`
    /// loads (the head of the bucket list it walks).
    pub fn mbuckets(&self) -> Option<u64> {
        self.decode("runtime.mProf_FlushLocked")?
            .iter()
            .find_map(rip_load)
    }

    /// `runtime.MemProfileRate`: the variable loaded last before
    /// `runtime.fastexprand(MemProfileRate)` in the sampling set-up.
    pub fn mem_profile_rate(&self) -> Option<u64> {
        ["runtime.profilealloc", "runtime.allocmcache"]
            .into_iter()
            .find_map(|caller| {
                let code = self.decode(caller)?;
                let mut last = None;
                for i in &code {
                    if let Some(addr) = rip_load(i) {
                        last = Some(addr);
                    } else if self.callee(i) == Some("runtime.fastexprand") {
                        return last;
                    }
                }
                None
            })
    }

    /// The address put into RAX (the first argument, the receiver, in the
    /// Go register ABI) by a RIP-relative LEA right before a call from
    /// `caller` to a function `wanted` accepts.
    fn receiver_at_call(&self, caller: &str, wanted: impl Fn(&str) -> bool) -> Option<u64> {
        let code = self.decode(caller)?;
        code.windows(2).find_map(|w| {
            let (lea, call) = (&w[0], &w[1]);
            let receiver = lea.mnemonic() == Mnemonic::Lea
                && lea.op0_register() == Register::RAX
                && lea.is_ip_rel_memory_operand();
            (receiver && self.callee(call).is_some_and(&wanted))
                .then(|| lea.ip_rel_memory_address())
        })
    }

    /// The name of the function a direct CALL goes to.
    fn callee(&self, i: &Instruction) -> Option<&str> {
        if i.mnemonic() != Mnemonic::Call || i.op0_kind() != OpKind::NearBranch64 {
            return None;
        }
        let f = self.table.find(i.near_branch_target())?;
        self.table.name_of(&f)
    }

    fn decode(&self, name: &str) -> Option<Vec<Instruction>> {
        let f = self.table.by_name(name)?;
        let code = self
            .segments
            .bytes(self.data, f.entry, f.end.checked_sub(f.entry)?)?;
        let decoder = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
        Some(
            decoder
                .into_iter()
                .filter(|i| i.code() != Code::INVALID)
                .collect(),
        )
    }

    fn is_writable(&self, vaddr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.writable && vaddr >= s.vaddr && vaddr - s.vaddr < s.memsz)
    }
}

/// The variable a `MOV reg, [rip + disp]` loads.
fn rip_load(i: &Instruction) -> Option<u64> {
    (i.mnemonic() == Mnemonic::Mov
        && i.op0_kind() == OpKind::Register
        && i.op1_kind() == OpKind::Memory
        && i.is_ip_rel_memory_operand())
    .then(|| i.ip_rel_memory_address())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .into_iter()
            .collect()
    }

    #[test]
    fn rip_loads_are_movs_from_memory_only() {
        let code = [
            0x48, 0x8b, 0x0d, 0x10, 0x00, 0x00, 0x00, // mov rcx, [rip+0x10]
            0x48, 0x8d, 0x05, 0x20, 0x00, 0x00, 0x00, // lea rax, [rip+0x20]
            0x48, 0x89, 0x0d, 0x30, 0x00, 0x00, 0x00, // mov [rip+0x30], rcx
        ];
        let loads: Vec<u64> = decode(&code, 0x1000).iter().filter_map(rip_load).collect();
        assert_eq!(loads, vec![0x1000 + 7 + 0x10]);
    }
}
