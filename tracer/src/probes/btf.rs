//! Field offsets in the running kernel's structs, read from its BTF
//! (/sys/kernel/btf/vmlinux), for eBPF programs written without CO-RE.

use std::{collections::HashMap, fs};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const BTF_MAGIC: u16 = 0xeb9f;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read {VMLINUX_BTF}: {0} (leaktrace needs a kernel with CONFIG_DEBUG_INFO_BTF)"
    )]
    Read(std::io::Error),
    #[error("malformed kernel BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Composite {
    name: u32,
    members: Vec<Member>,
}

/// The structs and unions of a BTF blob, enough to find member offsets.
pub struct Btf {
    strings: Vec<u8>,
    /// Type id → composite (structs and unions only).
    composites: HashMap<u32, Composite>,
}

impl Btf {
    pub fn from_kernel() -> Result<Self, BtfError> {
        Btf::parse(&fs::read(VMLINUX_BTF).map_err(BtfError::Read)?)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let header = |o| {
            u32_at(o)
                .map(|v| v as usize)
                .ok_or(BtfError::Malformed("short header"))
        };
        let hdr_len = header(4)?;
        let (type_off, type_len) = (header(8)?, header(12)?);
        let (str_off, str_len) = (header(16)?, header(20)?);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut composites = HashMap::new();
        let mut pos = types_start;
        let mut id = 1u32; // type id 0 is void
        while pos < types_end {
            let short = BtfError::Malformed("type section truncated");
            let name = u32_at(pos).ok_or(short)?;
            let info = u32_at(pos + 4).ok_or(BtfError::Malformed("type section truncated"))?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            pos += 12;
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                KIND_STRUCT | KIND_UNION => 12 * vlen,
                6 | 13 => 8 * vlen,        // enum, func_proto
                15 | 19 => 12 * vlen,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, qualifiers, func, float, type_tag
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let at = pos + 12 * m;
                    let (Some(name), Some(type_id), Some(offset)) =
                        (u32_at(at), u32_at(at + 4), u32_at(at + 8))
                    else {
                        return Err(BtfError::Malformed("member truncated"));
                    };
                    // With kind_flag the top 8 bits hold a bitfield size.
                    let bit_offset = if kind_flag {
                        offset & 0x00ff_ffff
                    } else {
                        offset
                    };
                    members.push(Member {
                        name,
                        type_id,
                        bit_offset,
                    });
                }
                composites.insert(id, Composite { name, members });
            }
            pos += extra;
            id += 1;
        }
        Ok(Btf {
            strings,
            composites,
        })
    }

    fn name(&self, off: u32) -> &str {
        let bytes = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous
    /// structs and unions.
    pub fn member_offset(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let (_, s) = self
            .composites
            .iter()
            .find(|(_, c)| self.name(c.name) == name && !c.members.is_empty())
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))?;
        self.find_in(s, field, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::Missing(format!("{name}.{field}")))
    }

    fn find_in(&self, c: &Composite, field: &str, base_bits: u32) -> Option<u32> {
        for m in &c.members {
            if self.name(m.name) == field {
                return Some(base_bits + m.bit_offset);
            }
        }
        for m in c.members.iter().filter(|m| m.name == 0) {
            if let Some(inner) = self.composites.get(&m.type_id) {
                if let Some(bits) = self.find_in(inner, field, base_bits + m.bit_offset) {
                    return Some(bits);
                }
            }
        }
        None
    }
}

/// Where `pid` and `tgid` live in this kernel's `struct task_struct`.
pub fn task_pid_offsets() -> Result<(u32, u32), BtfError> {
    let btf = Btf::from_kernel()?;
    Ok((
        btf.member_offset("task_struct", "pid")?,
        btf.member_offset("task_struct", "tgid")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_task_struct_pid_and_tgid() {
        let (pid, tgid) = task_pid_offsets().expect("this kernel has BTF");
        // pid_t pid; pid_t tgid; are adjacent in every kernel since 2.6.
        assert_eq!(tgid, pid + 4);
        assert!(pid > 0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all").is_err());
    }
}
