//! Go's pc-value tables: the run-length encoded (value delta, pc delta)
//! varint pairs behind pcfile, pcln and every PCDATA table of the pclntab.

/// Reads one unsigned LEB128-style varint as the Go runtime does (7 bits a
/// byte, low group first, truncated to 32 bits). Returns the value and the
/// number of bytes read; `None` if the input ends mid-varint.
pub(crate) fn read_varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    let mut shift: u32 = 0;
    for (i, &b) in p.iter().enumerate() {
        // Go masks the shift the same way, so overlong encodings wrap
        // identically instead of panicking on overflow.
        value |= u32::from(b & 0x7f).wrapping_shl(shift & 31);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
        if i > 8 {
            // No valid table has varints this long; stop on garbage.
            return None;
        }
    }
    None
}

/// Zig-zag decoding of a value delta (0, -1, 1, -2, ... from 0, 1, 2, 3, ...).
fn zigzag(u: u32) -> i32 {
    ((u >> 1) as i32) ^ -((u & 1) as i32)
}

/// The value a pc-value `table` gives `target`, for a function starting at
/// `entry`, with pc deltas scaled by the architecture's instruction
/// `quantum`. `None` if `target` is outside the ranges the table covers or
/// the table is malformed.
pub(crate) fn pcvalue(table: &[u8], entry: u64, quantum: u32, target: u64) -> Option<i32> {
    let mut p = table;
    let mut pc = entry;
    // Tables start from -1 so that a first delta of +1 means value 0.
    let mut val: i32 = -1;
    loop {
        let (uvdelta, n) = read_varint(p)?;
        // A zero value delta ends the table, except as the very first
        // entry (where a zero delta is a real "value -1" run).
        if uvdelta == 0 && pc != entry {
            return None;
        }
        val = val.wrapping_add(zigzag(uvdelta));
        p = p.get(n..)?;
        let (pcdelta, n) = read_varint(p)?;
        p = p.get(n..)?;
        pc = pc.wrapping_add(u64::from(pcdelta) * u64::from(quantum));
        if target < pc {
            return Some(val);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(read_varint(&[0x00]), Some((0, 1)));
        assert_eq!(read_varint(&[0x7f, 0xff]), Some((127, 1)));
        assert_eq!(read_varint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_varint(&[0xe5, 0x8e, 0x26]), Some((624_485, 3)));
        assert_eq!(read_varint(&[0x80]), None);
        assert_eq!(read_varint(&[]), None);
    }

    #[test]
    fn zigzag_values() {
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(1), -1);
        assert_eq!(zigzag(2), 1);
        assert_eq!(zigzag(3), -2);
        assert_eq!(zigzag(20), 10);
    }

    /// A table as the Go linker writes it: line 10 for 4 bytes, line 12 for
    /// 6 bytes, line 11 for 0x100 bytes, end.
    fn table() -> Vec<u8> {
        vec![
            22, 4, // -1 + 11 = 10, pc += 4
            4, 6, // +2 = 12, pc += 6
            1, 0x80, 0x02, // -1 = 11, pc += 256 (a two-byte varint)
            0,    // end
        ]
    }

    #[test]
    fn lookups() {
        let t = table();
        let entry = 0x1000;
        assert_eq!(pcvalue(&t, entry, 1, 0x1000), Some(10));
        assert_eq!(pcvalue(&t, entry, 1, 0x1003), Some(10));
        assert_eq!(pcvalue(&t, entry, 1, 0x1004), Some(12));
        assert_eq!(pcvalue(&t, entry, 1, 0x1009), Some(12));
        assert_eq!(pcvalue(&t, entry, 1, 0x100a), Some(11));
        assert_eq!(pcvalue(&t, entry, 1, 0x1109), Some(11));
        assert_eq!(pcvalue(&t, entry, 1, 0x110a), None);
    }

    #[test]
    fn quantum_scales_pc_deltas() {
        let t = table();
        // On a 4-byte-quantum architecture the first run covers 16 bytes.
        assert_eq!(pcvalue(&t, 0, 4, 15), Some(10));
        assert_eq!(pcvalue(&t, 0, 4, 16), Some(12));
    }

    #[test]
    fn first_zero_delta_is_a_value_not_the_end() {
        // Value -1 for 8 bytes, then 0 for 8 bytes.
        let t = [0, 8, 2, 8, 0];
        assert_eq!(pcvalue(&t, 0, 1, 3), Some(-1));
        assert_eq!(pcvalue(&t, 0, 1, 9), Some(0));
        assert_eq!(pcvalue(&t, 0, 1, 16), None);
    }

    #[test]
    fn truncated_tables_fail_cleanly() {
        assert_eq!(pcvalue(&[22], 0, 1, 0), None);
        assert_eq!(pcvalue(&[22, 0x80], 0, 1, 0), None);
        assert_eq!(pcvalue(&[], 0, 1, 0), None);
    }
}
