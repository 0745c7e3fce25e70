//! Go's function table (`.gopclntab`, the go1.20+ format, magic
//! 0xfffffff1): function entries and names, file:line for a pc, and the
//! inlining tree. It survives stripping, so everything here works on
//! binaries without symbols or DWARF.
//!
//! Layout (runtime/symtab.go): a pcHeader, then at offsets it gives the
//! function name table, the compilation-unit file index table (cutab), the
//! file name table, the pc-value tables, and the function table: `nfunc+1`
//! (entryoff, funcoff) u32 pairs followed by the `_func` records.

use super::{pcvalue::pcvalue, GoFrame};

const MAGIC_GO120: u32 = 0xffff_fff1;
/// Older magics, only to say why we refuse them.
const MAGICS_OLD: [u32; 3] = [0xffff_fffb, 0xffff_fffa, 0xffff_fff0];

/// `_func` field offsets (runtime2.go), stable from go1.20 to go1.27.
const FUNC_NAME_OFF: usize = 4;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_NPCDATA: usize = 28;
const FUNC_CU_OFFSET: usize = 32;
const FUNC_NFUNCDATA: usize = 43;
const FUNC_SIZE: usize = 44;

/// internal/abi: PCDATA_InlTreeIndex and FUNCDATA_InlTree.
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;
/// runtime.inlinedCall: funcID u8, pad `[3]u8`, nameOff i32, parentPc i32,
/// startLine i32.
const INLINED_CALL_SIZE: usize = 16;
/// Deeper inlining than this means a corrupt tree (or a cycle).
const MAX_INLINE_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PclntabError {
    #[error("the Go function table was written by a Go older than 1.20 (magic {0:#x}); leaktrace needs Go 1.21 or newer")]
    TooOld(u32),
    #[error("the Go function table has an unknown magic {0:#x}")]
    BadMagic(u32),
    #[error("the Go function table is malformed: {0}")]
    Malformed(&'static str),
}

/// The pcHeader fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub quantum: u8,
    pub ptr_size: u8,
    pub nfunc: usize,
    /// textStart: 0 since go1.26 (it needed a relocation); use moduledata.
    pub text_start: u64,
    pub funcnames: usize,
    pub cutab: usize,
    pub filetab: usize,
    pub pctab: usize,
    pub functab: usize,
}

/// Byte offset of textStart in the header: after the 8-byte prefix, nfunc
/// and nfiles.
pub(crate) fn text_start_offset(ptr_size: u8) -> u64 {
    8 + 2 * u64::from(ptr_size)
}

pub(crate) fn parse_header(data: &[u8]) -> Result<Header, PclntabError> {
    let magic = data
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(PclntabError::Malformed("no header"))?;
    if MAGICS_OLD.contains(&magic) {
        return Err(PclntabError::TooOld(magic));
    }
    if magic != MAGIC_GO120 {
        return Err(PclntabError::BadMagic(magic));
    }
    let (quantum, ptr_size) = match data.get(4..8) {
        Some(&[0, 0, q, p]) => (q, p),
        _ => return Err(PclntabError::Malformed("bad header padding")),
    };
    if !matches!(quantum, 1 | 2 | 4) || !matches!(ptr_size, 4 | 8) {
        return Err(PclntabError::Malformed("bad instruction or pointer size"));
    }
    let ps = usize::from(ptr_size);
    let word = |i: usize| -> Result<u64, PclntabError> {
        data.get(8 + i * ps..8 + (i + 1) * ps)
            .map(super::image::le_word)
            .ok_or(PclntabError::Malformed("truncated header"))
    };
    let offset = |i: usize| -> Result<usize, PclntabError> {
        let v = usize::try_from(word(i)?).map_err(|_| PclntabError::Malformed("offset"))?;
        if v >= data.len() {
            return Err(PclntabError::Malformed("table offset past the end"));
        }
        Ok(v)
    };
    let nfunc = usize::try_from(word(0)?).map_err(|_| PclntabError::Malformed("nfunc"))?;
    let h = Header {
        quantum,
        ptr_size,
        nfunc,
        text_start: word(2)?,
        funcnames: offset(3)?,
        cutab: offset(4)?,
        filetab: offset(5)?,
        pctab: offset(6)?,
        functab: offset(7)?,
    };
    let functab_len = nfunc
        .checked_add(1)
        .and_then(|n| n.checked_mul(8))
        .ok_or(PclntabError::Malformed("nfunc"))?;
    if nfunc == 0 || h.functab.saturating_add(functab_len) > data.len() {
        return Err(PclntabError::Malformed("function table past the end"));
    }
    Ok(h)
}

/// Where the inlining trees are: `moduledata.gofunc`, the base of every
/// funcdata offset.
#[derive(Clone)]
pub(crate) enum GoFunc {
    /// Inside the pclntab copy (go1.26+ puts go:func.* there), at this offset.
    InTable(usize),
    /// Elsewhere (in .rodata): our own copy of the bytes from gofunc on.
    Copy(Vec<u8>),
}

/// One function of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Func {
    /// Offset of its `_func` record in the table.
    off: usize,
    pub entry: u64,
    pub end: u64,
}

/// A parsed, owned function table.
#[derive(Clone)]
pub(crate) struct Pclntab {
    data: Vec<u8>,
    header: Header,
    /// Base of the functab entry offsets.
    text_start: u64,
    gofunc: Option<GoFunc>,
}

impl std::fmt::Debug for Pclntab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pclntab")
            .field("bytes", &self.data.len())
            .field("nfunc", &self.header.nfunc)
            .field("text_start", &format_args!("{:#x}", self.text_start))
            .field("inline_trees", &self.gofunc.is_some())
            .finish()
    }
}

impl Pclntab {
    pub fn new(data: Vec<u8>, header: Header, text_start: u64, gofunc: Option<GoFunc>) -> Self {
        Pclntab {
            data,
            header,
            text_start,
            gofunc,
        }
    }

    pub fn has_inline_trees(&self) -> bool {
        self.gofunc.is_some()
    }

    pub fn without_inline_trees(self) -> Self {
        Pclntab {
            gofunc: None,
            ..self
        }
    }

    /// Spot-checks the inlining trees of some functions: each first entry
    /// must name a function and point its call site into the caller. A
    /// wrong `gofunc` base fails this at once.
    pub fn inline_trees_look_valid(&self) -> bool {
        if self.gofunc.is_none() {
            return true;
        }
        const SAMPLE: usize = 64;
        (0..self.header.nfunc)
            .filter_map(|i| self.func(i))
            .filter(|f| self.funcdata_off(f, FUNCDATA_INL_TREE).is_some())
            .take(SAMPLE)
            .all(|f| {
                let Some(call) = self
                    .inline_tree(&f)
                    .and_then(|t| t.get(..INLINED_CALL_SIZE))
                else {
                    return false;
                };
                let name_off = u32::from_le_bytes([call[4], call[5], call[6], call[7]]);
                let parent_pc = i32::from_le_bytes([call[8], call[9], call[10], call[11]]);
                let named = self.name_at(name_off).is_some_and(|n| !n.is_empty());
                let in_caller =
                    u64::try_from(parent_pc).is_ok_and(|p| p < f.end.saturating_sub(f.entry));
                named && in_caller
            })
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        let b = self.data.get(off..off.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string at `off`.
    fn cstr(&self, off: usize) -> Option<&str> {
        let rest = self.data.get(off..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..len]).ok()
    }

    /// (entryoff, funcoff) of functab slot `i` (0..=nfunc).
    fn slot(&self, i: usize) -> Option<(u32, u32)> {
        let off = self.header.functab + i * 8;
        Some((self.u32_at(off)?, self.u32_at(off + 4)?))
    }

    fn func(&self, i: usize) -> Option<Func> {
        if i >= self.header.nfunc {
            return None;
        }
        let (entry, funcoff) = self.slot(i)?;
        let (end, _) = self.slot(i + 1)?;
        let off = self.header.functab.checked_add(funcoff as usize)?;
        if off.checked_add(FUNC_SIZE)? > self.data.len() {
            return None;
        }
        Some(Func {
            off,
            entry: self.text_start + u64::from(entry),
            end: self.text_start + u64::from(end),
        })
    }

    /// The function whose [entry, end) holds `pc`.
    pub fn find(&self, pc: u64) -> Option<Func> {
        let rel = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let n = self.header.nfunc;
        let (first, _) = self.slot(0)?;
        let (last, _) = self.slot(n)?;
        if rel < first || rel >= last {
            return None;
        }
        // Largest i with entryoff(i) <= rel.
        let (mut lo, mut hi) = (0usize, n);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.slot(mid)?.0 <= rel {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.func(lo)
    }

    /// Every function of the table, in address order.
    pub fn functions(&self) -> impl Iterator<Item = Func> + '_ {
        (0..self.header.nfunc).filter_map(|i| self.func(i))
    }

    /// The function called `name` (a linear scan; done a few times per run).
    pub fn by_name(&self, name: &str) -> Option<Func> {
        (0..self.header.nfunc)
            .filter_map(|i| self.func(i))
            .find(|f| self.name_of(f) == Some(name))
    }

    fn name_at(&self, name_off: u32) -> Option<&str> {
        self.cstr(self.header.funcnames.checked_add(name_off as usize)?)
    }

    pub fn name_of(&self, f: &Func) -> Option<&str> {
        self.name_at(self.u32_at(f.off + FUNC_NAME_OFF)?)
    }

    /// Value of the pc-value table at `table_off` (0: no table) for `pc`.
    fn value(&self, f: &Func, table_off: u32, pc: u64) -> Option<i32> {
        if table_off == 0 {
            return None;
        }
        let table = self
            .data
            .get(self.header.pctab.checked_add(table_off as usize)?..)?;
        pcvalue(table, f.entry, u32::from(self.header.quantum), pc)
    }

    fn pcdata_table(&self, f: &Func, index: usize) -> Option<u32> {
        let npcdata = self.u32_at(f.off + FUNC_NPCDATA)? as usize;
        if index >= npcdata {
            return None;
        }
        self.u32_at(f.off + FUNC_SIZE + index * 4)
    }

    fn funcdata_off(&self, f: &Func, index: usize) -> Option<u32> {
        let npcdata = self.u32_at(f.off + FUNC_NPCDATA)? as usize;
        let nfuncdata = usize::from(*self.data.get(f.off + FUNC_NFUNCDATA)?);
        if index >= nfuncdata {
            return None;
        }
        let off = self.u32_at(f.off + FUNC_SIZE + npcdata * 4 + index * 4)?;
        (off != u32::MAX).then_some(off)
    }

    /// Source file and line of `pc` in `f`.
    pub fn file_line(&self, f: &Func, pc: u64) -> (Option<String>, Option<u32>) {
        let file = self
            .u32_at(f.off + FUNC_PCFILE)
            .and_then(|t| self.value(f, t, pc))
            .and_then(|fileno| self.file_name(f, fileno));
        let line = self
            .u32_at(f.off + FUNC_PCLN)
            .and_then(|t| self.value(f, t, pc))
            .and_then(|l| u32::try_from(l).ok())
            .filter(|&l| l > 0);
        (file, line)
    }

    /// File `fileno` of `f`'s compilation unit.
    fn file_name(&self, f: &Func, fileno: i32) -> Option<String> {
        let fileno = usize::try_from(fileno).ok()?;
        let cu = self.u32_at(f.off + FUNC_CU_OFFSET)? as usize;
        let slot = self
            .header
            .cutab
            .checked_add(cu.checked_add(fileno)?.checked_mul(4)?)?;
        let off = self.u32_at(slot)?;
        if off == u32::MAX {
            return None;
        }
        self.cstr(self.header.filetab.checked_add(off as usize)?)
            .map(str::to_string)
    }

    /// The bytes of `f`'s inlining tree, from its first entry on.
    fn inline_tree(&self, f: &Func) -> Option<&[u8]> {
        let off = self.funcdata_off(f, FUNCDATA_INL_TREE)? as usize;
        match self.gofunc.as_ref()? {
            GoFunc::InTable(base) => self.data.get(base.checked_add(off)?..),
            GoFunc::Copy(bytes) => bytes.get(off..),
        }
    }

    /// Frames for `pc`, innermost (inlined) first, the physical function
    /// last. Empty if `pc` is not in Go code.
    pub fn symbolize(&self, pc: u64) -> Vec<GoFrame> {
        let Some(f) = self.find(pc) else {
            return Vec::new();
        };
        let mut frames = Vec::new();
        let mut pc = pc;
        let inline = self
            .inline_tree(&f)
            .zip(self.pcdata_table(&f, PCDATA_INL_TREE_INDEX));
        if let Some((tree, index_table)) = inline {
            while frames.len() < MAX_INLINE_DEPTH {
                let Some(ix) = self
                    .value(&f, index_table, pc)
                    .and_then(|ix| usize::try_from(ix).ok())
                else {
                    break;
                };
                let Some(call) = ix
                    .checked_mul(INLINED_CALL_SIZE)
                    .and_then(|o| tree.get(o..o + INLINED_CALL_SIZE))
                else {
                    break;
                };
                let name_off = u32::from_le_bytes([call[4], call[5], call[6], call[7]]);
                let parent_pc = i32::from_le_bytes([call[8], call[9], call[10], call[11]]);
                let (file, line) = self.file_line(&f, pc);
                frames.push(GoFrame {
                    function: self.name_at(name_off).unwrap_or("?").to_string(),
                    file,
                    line,
                });
                // The call site: an instruction of the caller's body.
                pc = f.entry.wrapping_add_signed(i64::from(parent_pc));
            }
        }
        let (file, line) = self.file_line(&f, pc);
        frames.push(GoFrame {
            function: self.name_of(&f).unwrap_or("?").to_string(),
            file,
            line,
        });
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built table with two functions at text 0x401000:
    /// main.outer [0x401000, 0x401040) in /src/a.go, with main.inner
    /// inlined into it at [0x401010, 0x401020), and main.other
    /// [0x401040, 0x401050) in /src/b.go.
    fn tiny() -> Pclntab {
        let mut names = Vec::new();
        let mut name = |s: &str| {
            let off = names.len() as u32;
            names.extend_from_slice(s.as_bytes());
            names.push(0);
            off
        };
        let (outer, inner, other) = (name("main.outer"), name("main.inner"), name("main.other"));
        let filetab = b"/src/a.go\0/src/b.go\0".to_vec();
        // cutab: CU 0 has files [a.go]; CU 1 has [b.go].
        let cutab: Vec<u8> = [0u32, 10].iter().flat_map(|v| v.to_le_bytes()).collect();
        // pctab: offset 0 is unused ("no table").
        let mut pctab = vec![0u8];
        let mut table = |t: &[u8]| {
            let off = pctab.len() as u32;
            pctab.extend_from_slice(t);
            off
        };
        let file0 = table(&[2, 0x40, 0]); // file 0 for 0x40 bytes
        let lines_outer = table(&[22, 0x10, 20, 0x10, 3, 0x20, 0]); // 10, then 20, then 18
        let inl_index = table(&[0, 0x10, 2, 0x10, 1, 0x20, 0]); // -1, 0, -1
        let lines_other = table(&[0xca, 0x01, 0x10, 0]); // +101 (a two-byte varint): line 100
                                                         // gofunc: one inlinedCall: main.inner called from pc entry+8.
        let mut gofunc = vec![0u8; 4];
        gofunc.extend_from_slice(&inner.to_le_bytes());
        gofunc.extend_from_slice(&8i32.to_le_bytes());
        gofunc.extend_from_slice(&5i32.to_le_bytes());

        let func =
            |name_off: u32, pcfile: u32, pcln: u32, cu: u32, pcdata: &[u32], funcdata: &[u32]| {
                let mut f = vec![0u8; FUNC_SIZE];
                f[FUNC_NAME_OFF..FUNC_NAME_OFF + 4].copy_from_slice(&name_off.to_le_bytes());
                f[FUNC_PCFILE..FUNC_PCFILE + 4].copy_from_slice(&pcfile.to_le_bytes());
                f[FUNC_PCLN..FUNC_PCLN + 4].copy_from_slice(&pcln.to_le_bytes());
                f[FUNC_NPCDATA..FUNC_NPCDATA + 4]
                    .copy_from_slice(&(pcdata.len() as u32).to_le_bytes());
                f[FUNC_CU_OFFSET..FUNC_CU_OFFSET + 4].copy_from_slice(&cu.to_le_bytes());
                f[FUNC_NFUNCDATA] = funcdata.len() as u8;
                for v in pcdata.iter().chain(funcdata) {
                    f.extend_from_slice(&v.to_le_bytes());
                }
                f
            };
        let f_outer = func(
            outer,
            file0,
            lines_outer,
            0,
            &[0, 0, inl_index],
            &[u32::MAX, u32::MAX, u32::MAX, 0],
        );
        let f_other = func(other, file0, lines_other, 1, &[], &[]);

        let header_len = 8 + 8 * 8;
        let funcnames = header_len;
        let cu = funcnames + names.len();
        let files = cu + cutab.len();
        let pcs = files + filetab.len();
        let functab = pcs + pctab.len();
        let slots = 3 * 8;
        let gofunc_at = functab + slots + f_outer.len() + f_other.len();
        let mut data = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for w in [2, 2, 0x401000, funcnames, cu, files, pcs, functab] {
            data.extend_from_slice(&(w as u64).to_le_bytes());
        }
        data.extend_from_slice(&names);
        data.extend_from_slice(&cutab);
        data.extend_from_slice(&filetab);
        data.extend_from_slice(&pctab);
        for (entry, funcoff) in [(0u32, slots), (0x40, slots + f_outer.len()), (0x50, 0)] {
            data.extend_from_slice(&entry.to_le_bytes());
            data.extend_from_slice(&(funcoff as u32).to_le_bytes());
        }
        data.extend_from_slice(&f_outer);
        data.extend_from_slice(&f_other);
        data.extend_from_slice(&gofunc);
        let header = parse_header(&data).expect("valid header");
        assert_eq!(header.nfunc, 2);
        assert_eq!(header.text_start, 0x401000);
        Pclntab::new(data, header, 0x401000, Some(GoFunc::InTable(gofunc_at)))
    }

    fn frame(function: &str, file: &str, line: u32) -> GoFrame {
        GoFrame {
            function: function.into(),
            file: Some(file.into()),
            line: Some(line),
        }
    }

    #[test]
    fn lookup_by_pc_and_name() {
        let t = tiny();
        let f = t.find(0x401000).expect("first function");
        assert_eq!((f.entry, f.end), (0x401000, 0x401040));
        assert_eq!(t.name_of(&f), Some("main.outer"));
        let f = t.find(0x40104f).expect("second function");
        assert_eq!(t.name_of(&f), Some("main.other"));
        assert_eq!(t.find(0x401050), None);
        assert_eq!(t.find(0x400fff), None);
        let f = t.by_name("main.other").expect("by name");
        assert_eq!((f.entry, f.end), (0x401040, 0x401050));
        assert_eq!(t.by_name("main.nope"), None);
    }

    #[test]
    fn file_and_line() {
        let t = tiny();
        assert_eq!(
            t.symbolize(0x401004),
            vec![frame("main.outer", "/src/a.go", 10)]
        );
        assert_eq!(
            t.symbolize(0x401030),
            vec![frame("main.outer", "/src/a.go", 18)]
        );
        assert_eq!(
            t.symbolize(0x401041),
            vec![frame("main.other", "/src/b.go", 100)]
        );
        assert!(t.symbolize(0x402000).is_empty());
    }

    #[test]
    fn inlined_frames_innermost_first() {
        let t = tiny();
        // 0x401014 is in main.inner's body (line 20), inlined at the call
        // site entry+8 (line 10 of main.outer).
        assert_eq!(
            t.symbolize(0x401014),
            vec![
                frame("main.inner", "/src/a.go", 20),
                frame("main.outer", "/src/a.go", 10)
            ]
        );
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header(&[0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8]),
            Err(PclntabError::TooOld(0xffff_fff0))
        );
        assert_eq!(
            parse_header(&[1, 2, 3, 4]),
            Err(PclntabError::BadMagic(0x0403_0201))
        );
        assert!(matches!(
            parse_header(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8, 1]),
            Err(PclntabError::Malformed(_))
        ));
    }
}
