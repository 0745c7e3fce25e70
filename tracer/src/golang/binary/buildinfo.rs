//! The Go version from `.go.buildinfo`, which the linker always writes and
//! stripping keeps.
//!
//! Layout (debug/buildinfo): a 32-byte header, 16-byte aligned, starting
//! with the 14-byte magic "\xff Go buildinf:", then the pointer size and a
//! flags byte. Since Go 1.18 flag bit 0x2 says the version and module info
//! follow the header inline, each as a varint length and the bytes.

use super::pcvalue::read_varint;

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_SIZE: usize = 32;
const ALIGN: usize = 16;
const FLAGS_OFFSET: usize = 15;
const FLAG_VERSION_INLINE: u8 = 0x2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildInfoError {
    #[error("the Go build info has no header")]
    Missing,
    #[error("the Go build info uses the pre-Go 1.18 format; leaktrace needs Go 1.21 or newer")]
    TooOld,
    #[error("the Go build info is truncated or malformed")]
    Malformed,
}

/// Offset of the first 16-byte aligned build info magic in `data`.
pub(crate) fn find_magic(data: &[u8]) -> Option<usize> {
    (0..data.len().saturating_sub(HEADER_SIZE - 1))
        .step_by(ALIGN)
        .find(|&i| data[i..].starts_with(MAGIC))
}

/// The Go version string ("go1.25.5") of a build info blob that starts
/// with the magic.
pub(crate) fn version(blob: &[u8]) -> Result<String, BuildInfoError> {
    if !blob.starts_with(MAGIC) || blob.len() < HEADER_SIZE {
        return Err(BuildInfoError::Missing);
    }
    if blob[FLAGS_OFFSET] & FLAG_VERSION_INLINE == 0 {
        return Err(BuildInfoError::TooOld);
    }
    let rest = &blob[HEADER_SIZE..];
    let (len, n) = read_varint(rest).ok_or(BuildInfoError::Malformed)?;
    let bytes = rest
        .get(n..n + len as usize)
        .ok_or(BuildInfoError::Malformed)?;
    let v = std::str::from_utf8(bytes).map_err(|_| BuildInfoError::Malformed)?;
    if v.is_empty() {
        return Err(BuildInfoError::Malformed);
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(flags: u8, version: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(8); // pointer size
        b.push(flags);
        b.resize(HEADER_SIZE, 0);
        b.push(version.len() as u8);
        b.extend_from_slice(version.as_bytes());
        b.push(3);
        b.extend_from_slice(b"mod");
        b
    }

    #[test]
    fn inline_version() {
        assert_eq!(version(&blob(2, "go1.25.5")).as_deref(), Ok("go1.25.5"));
        // Flag bit 0 is the endianness; irrelevant for inline strings.
        assert_eq!(version(&blob(3, "go1.21.13")).as_deref(), Ok("go1.21.13"));
    }

    #[test]
    fn old_and_broken() {
        assert_eq!(version(&blob(0, "go1.17")), Err(BuildInfoError::TooOld));
        assert_eq!(version(b"nope"), Err(BuildInfoError::Missing));
        let mut b = blob(2, "go1.25.5");
        b.truncate(HEADER_SIZE + 4);
        assert_eq!(version(&b), Err(BuildInfoError::Malformed));
        assert_eq!(version(&blob(2, "")), Err(BuildInfoError::Malformed));
    }

    #[test]
    fn magic_is_found_aligned_only() {
        let mut data = vec![0u8; 64];
        data.extend_from_slice(&blob(2, "go1.22.10"));
        assert_eq!(find_magic(&data), Some(64));
        let mut unaligned = vec![0u8; 8];
        unaligned.extend_from_slice(&blob(2, "go1.22.10"));
        assert_eq!(find_magic(&unaligned), None);
    }
}
