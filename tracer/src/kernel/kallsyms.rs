//! Kernel addresses to function names, by `/proc/kallsyms` (the kernel's
//! own symbols and every loaded module's).

use std::{fs, io};

use crate::symbolize::Frame;

const KALLSYMS: &str = "/proc/kallsyms";

/// The kernel's text symbols, by address.
pub struct KernelSymbols {
    /// (address, name, module), sorted by address.
    symbols: Vec<(u64, String, Option<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("cannot read {KALLSYMS}: {0}")]
    Read(io::Error),
    #[error("{KALLSYMS} shows no addresses (kernel.kptr_restrict hides them: run as root, or set it to 1)")]
    Hidden,
}

impl KernelSymbols {
    pub fn load() -> Result<Self, KallsymsError> {
        let text = fs::read_to_string(KALLSYMS).map_err(KallsymsError::Read)?;
        let symbols = Self::parse(&text);
        if symbols.symbols.is_empty() {
            return Err(KallsymsError::Hidden);
        }
        Ok(symbols)
    }

    /// Text symbols of `kallsyms`'s lines (`ADDR TYPE NAME [MODULE]`);
    /// those at address 0 (hidden) are left out.
    pub fn parse(kallsyms: &str) -> Self {
        let mut symbols: Vec<(u64, String, Option<String>)> = kallsyms
            .lines()
            .filter_map(|line| {
                let mut cols = line.split_whitespace();
                let addr = u64::from_str_radix(cols.next()?, 16).ok()?;
                let kind = cols.next()?;
                let name = cols.next()?;
                let module = cols
                    .next()
                    .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
                let text = matches!(kind, "t" | "T" | "w" | "W");
                (text && addr != 0).then(|| (addr, name.to_string(), module))
            })
            .collect();
        symbols.sort_by_key(|s| s.0);
        KernelSymbols { symbols }
    }

    /// The function `ip` is in.
    pub fn lookup(&self, ip: u64) -> Option<(&str, u64, Option<&str>)> {
        let i = self.symbols.partition_point(|s| s.0 <= ip).checked_sub(1)?;
        let (addr, name, module) = &self.symbols[i];
        Some((name, ip - addr, module.as_deref()))
    }

    /// The frame of return address `ip` (looked up at `ip - 1`, inside
    /// the call, as a function's last call returns past its end).
    pub fn frame(&self, ip: u64) -> Frame {
        match self.lookup(ip.saturating_sub(1)) {
            Some((name, _, module)) => Frame {
                address: ip,
                symbol: Some(name.to_string()),
                module: Some(module.unwrap_or("kernel").to_string()),
                file: None,
                line: None,
                inlined: false,
                location: None,
            },
            None => Frame::unknown(ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_and_modules() {
        let syms = KernelSymbols::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81001000 t do_one\n\
             ffffffff81002000 D some_data\n\
             ffffffffc0001000 t mod_fn\t[nf_tables]\n\
             0000000000000000 T hidden\n",
        );
        assert_eq!(
            syms.lookup(0xffffffff81001010),
            Some(("do_one", 0x10, None))
        );
        // Data symbols are not functions: the text before them holds.
        assert_eq!(syms.lookup(0xffffffff81002010).map(|s| s.0), Some("do_one"));
        assert_eq!(
            syms.lookup(0xffffffffc0001004),
            Some(("mod_fn", 4, Some("nf_tables")))
        );
        assert_eq!(syms.lookup(0x1000), None);
        // A return address just past a function's end is its call.
        assert_eq!(
            syms.frame(0xffffffff81001000).symbol.as_deref(),
            Some("_stext")
        );
    }
}
