//! An object's unwind rows, from its `.eh_frame` (or `.debug_frame` where
//! it has none): per address range, how to find the caller's frame, in the
//! few shapes the probes follow (see `tracer_common::cfa`).

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, Encoding, EndianSlice, Format,
    LittleEndian, Operation, Reader, RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection};
use tracer_common::{cfa, rbp, UnwindRule};

use super::UnwindError;

type R<'a> = EndianSlice<'a, LittleEndian>;

/// Rows of one object: (ELF virtual address, rule), sorted by address,
/// neighbours with the same rule merged, a `cfa::NONE` row at each gap
/// between functions.
pub type Rows = Vec<(u32, UnwindRule)>;

/// The object's rows, or `Ok(None)` when it carries no unwind information.
pub fn rows_of(file: &object::File<'_>) -> Result<Option<Rows>, UnwindError> {
    let mut raw = Vec::new();
    if let Some(section) = file.section_by_name(".eh_frame") {
        let data = section.uncompressed_data().map_err(bad)?;
        let mut eh = EhFrame::new(&data, LittleEndian);
        eh.set_address_size(8);
        let bases = BaseAddresses::default().set_eh_frame(section.address());
        collect(&eh, &bases, &mut raw)?;
    } else if let Some(section) = file.section_by_name(".debug_frame") {
        let data = section.uncompressed_data().map_err(bad)?;
        let mut df = DebugFrame::new(&data, LittleEndian);
        df.set_address_size(8);
        collect(&df, &BaseAddresses::default(), &mut raw)?;
    } else {
        return Ok(None);
    }
    if raw.is_empty() {
        return Ok(None);
    }
    Ok(Some(finish(raw)))
}

fn bad(e: impl std::fmt::Display) -> UnwindError {
    UnwindError::Parse(e.to_string())
}

/// A row before sorting: address, rule, and whether it only marks the end
/// of a function (a real row at the same address wins over it).
type RawRow = (u64, bool, UnwindRule);

fn collect<'a, S>(
    section: &S,
    bases: &BaseAddresses,
    out: &mut Vec<RawRow>,
) -> Result<(), UnwindError>
where
    S: UnwindSection<R<'a>>,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(bad)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        // A malformed FDE loses its function, not the object.
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        let signal = fde.is_signal_trampoline();
        let ra_register = fde.cie().return_address_register();
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            let rule = if signal {
                UnwindRule {
                    cfa: cfa::SIGNAL,
                    ..UnwindRule::default()
                }
            } else {
                rule_of(section, row, ra_register)
            };
            out.push((row.start_address(), false, rule));
        }
        out.push((fde.end_address(), true, UnwindRule::default()));
    }
    Ok(())
}

fn rule_of<'a, S>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
    ra_register: gimli::Register,
) -> UnwindRule
where
    S: UnwindSection<R<'a>>,
{
    let unsupported = UnwindRule {
        cfa: cfa::UNSUPPORTED,
        ..UnwindRule::default()
    };
    match row.register(ra_register) {
        Some(RegisterRule::Undefined) => {
            return UnwindRule {
                cfa: cfa::ROOT,
                ..UnwindRule::default()
            }
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return unsupported,
    }
    let (kind, offset, extra) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => cfa::RSP,
                X86_64::RBP => cfa::RBP,
                _ => return unsupported,
            };
            (kind, *offset, 0)
        }
        CfaRule::Expression(e) => match e.get(section).ok().and_then(|e| expression_rule(e.0)) {
            Some(r) => r,
            None => return unsupported,
        },
    };
    let (rbp_kind, rbp_offset) = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => (rbp::SAME, 0),
        Some(RegisterRule::Offset(n)) => (rbp::AT_CFA, n),
        Some(_) => (rbp::LOST, 0),
    };
    let (Ok(offset), Ok(rbp_offset)) = (i32::try_from(offset), i32::try_from(rbp_offset)) else {
        return unsupported;
    };
    UnwindRule {
        cfa: kind,
        rbp: rbp_kind,
        _pad: 0,
        cfa_offset: offset,
        rbp_offset,
        extra,
    }
}

/// The CFA expressions compilers emit that the probes follow:
/// - GCC's PLT: `breg7 N; breg16 0; lit15; and; litK; ge; lit3; shl; plus`
///   (CFA = rsp + N, + 8 once the pc is K bytes into its 16-byte entry);
/// - stack realignment: `bregX N; deref` (X = rsp or rbp), optionally
///   followed by `plus_uconst M`.
fn expression_rule(expr: R<'_>) -> Option<(u8, i64, i32)> {
    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 4,
        address_size: 8,
    };
    let mut ops = Vec::new();
    let mut input = expr;
    while !input.is_empty() {
        ops.push(Operation::parse(&mut input, encoding).ok()?);
        if ops.len() > 12 {
            return None;
        }
    }
    use Operation as O;
    match ops.as_slice() {
        [O::RegisterOffset {
            register: X86_64::RSP,
            offset: n,
            ..
        }, O::RegisterOffset {
            register: X86_64::RA,
            offset: 0,
            ..
        }, O::UnsignedConstant { value: 15 }, O::And, O::UnsignedConstant { value: k }, O::Ge, O::UnsignedConstant { value: 3 }, O::Shl, O::Plus] => {
            Some((cfa::PLT, *n, i32::try_from(*k).ok()?))
        }
        [O::RegisterOffset {
            register, offset, ..
        }, O::Deref { .. }, rest @ ..] => {
            let kind = match *register {
                X86_64::RSP => cfa::DEREF_RSP,
                X86_64::RBP => cfa::DEREF_RBP,
                _ => return None,
            };
            let extra = match rest {
                [] => 0,
                [O::PlusConstant { value }] => i32::try_from(*value).ok()?,
                _ => return None,
            };
            Some((kind, *offset, extra))
        }
        _ => None,
    }
}

/// Sorts, drops end markers shadowed by a function starting right there,
/// and merges neighbours with the same rule.
fn finish(mut raw: Vec<RawRow>) -> Rows {
    raw.sort_by_key(|&(pc, end, _)| (pc, !end));
    let mut rows: Rows = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        // Of the rows at one address, the last is a real row if any.
        let pc = raw[i].0;
        let mut j = i;
        while j + 1 < raw.len() && raw[j + 1].0 == pc {
            j += 1;
        }
        let rule = raw[j].2;
        i = j + 1;
        let Ok(pc) = u32::try_from(pc) else {
            break; // objects beyond 4 GiB of address space: not covered
        };
        if rows.last().is_some_and(|&(_, r)| r == rule) {
            continue;
        }
        rows.push((pc, rule));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: u8, offset: i32) -> UnwindRule {
        UnwindRule {
            cfa: kind,
            cfa_offset: offset,
            ..UnwindRule::default()
        }
    }

    #[test]
    fn end_markers_give_way_to_a_function_starting_there_and_equal_rows_merge() {
        let raw = vec![
            (0x1000, false, rule(cfa::RSP, 8)),
            (0x1001, false, rule(cfa::RSP, 16)),
            (0x1005, false, rule(cfa::RSP, 16)),
            (0x1010, true, UnwindRule::default()),
            (0x1010, false, rule(cfa::RSP, 8)),
            (0x1020, true, UnwindRule::default()),
            (0x1030, false, rule(cfa::RSP, 8)),
        ];
        assert_eq!(
            finish(raw),
            vec![
                (0x1000, rule(cfa::RSP, 8)),
                (0x1001, rule(cfa::RSP, 16)),
                (0x1010, rule(cfa::RSP, 8)),
                (0x1020, UnwindRule::default()),
                (0x1030, rule(cfa::RSP, 8)),
            ]
        );
    }

    #[test]
    fn debians_libc_has_rows_of_the_shapes_the_probes_follow() {
        let data = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").expect("libc");
        let file = object::File::parse(&*data).expect("ELF");
        let rows = rows_of(&file).expect("parse").expect("libc has .eh_frame");
        // ~23,000 rows measured for glibc 2.36 (research notes).
        assert!(rows.len() > 15_000, "{} rows", rows.len());
        let count = |k: u8| rows.iter().filter(|(_, r)| r.cfa == k).count();
        // Measured: 99 % of the rows that are not gaps between functions
        // are `CFA = rsp + N`.
        assert!(count(cfa::RSP) * 100 / (rows.len() - count(cfa::NONE)) >= 95);
        assert!(count(cfa::RBP) > 0);
        assert!(
            count(cfa::ROOT) > 0,
            "_start / clone's child mark the outermost frame"
        );
        assert!(count(cfa::SIGNAL) > 0, "__restore_rt");
        assert!(count(cfa::PLT) > 0, ".plt");
        assert!(count(cfa::UNSUPPORTED) * 1000 / rows.len() < 5);
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
