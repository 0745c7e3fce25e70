//! What /proc says about a process: its memory mappings and basic status.

use std::{fs, io, path::PathBuf};

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// Offset into the mapped file.
    pub file_offset: u64,
    /// Device of the mapped file, as /proc prints it (`fd:01`).
    pub dev: String,
    pub inode: u64,
    /// Path as the target sees it (inside its mount namespace), if file-backed.
    pub path: Option<String>,
    /// The kernel's name of a mapping without a file (`[heap]`, `[stack]`,
    /// `[vvar]`, `[anon:NAME]`).
    pub pseudo: Option<String>,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// A path through which this process can open the mapped file, even
    /// when the target lives in another mount namespace or the file was
    /// deleted.
    pub fn open_path(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

pub fn read_maps(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().map(str::trim_start).unwrap_or("");
    let (start, end) = range.split_once('-')?;
    let pseudo = path.starts_with('[').then(|| path.to_string());
    let path = if path.starts_with('/') {
        Some(path.trim_end_matches(" (deleted)").to_string())
    } else {
        None
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        readable: perms.as_bytes().first() == Some(&b'r'),
        writable: perms.as_bytes().get(1) == Some(&b'w'),
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        path,
        pseudo,
    })
}

/// Fields of /proc/PID/stat that leaktrace needs.
#[derive(Debug, Clone)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub flags: u64,
    /// When the task started, in clock ticks since boot.
    pub start_ticks: u64,
}

const PF_KTHREAD: u64 = 0x0020_0000;

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

pub fn read_stat(pid: u32) -> io::Result<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/PID/stat"))
}

pub fn read_task_stat(pid: u32, tid: u32) -> io::Result<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable task stat"))
}

fn parse_stat(text: &str) -> Option<Stat> {
    // comm is in parentheses and may itself contain spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    // rest[0] = state (field 3), rest[6] = flags (field 9), rest[19] = starttime (field 22)
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        flags: rest.get(6)?.parse().ok()?,
        start_ticks: rest.get(19).and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    read_stat(pid).is_ok_and(|s| s.state != 'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps() {
        let text = "\
55d0c6a00000-55d0c6a01000 r--p 00000000 fe:01 1234 /usr/bin/demo
7f1c2a028000-7f1c2a1bd000 r-xp 00028000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a400000-7f1c2a421000 rw-p 00000000 00:00 0 \n\
7ffd5e5b2000-7ffd5e5d3000 rw-p 00000000 00:00 0                          [stack]
7f00000000-7f00001000 r-xp 00001000 fe:01 99 /tmp/gone lib (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[1].start, 0x7f1c2a028000);
        assert!(maps[1].executable);
        assert_eq!(maps[1].file_offset, 0x28000);
        assert_eq!(
            maps[1].path.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(maps[2].path, None);
        assert_eq!(maps[3].path, None);
        assert_eq!(maps[4].path.as_deref(), Some("/tmp/gone lib"));
        assert!(maps[1].contains(0x7f1c2a028000) && !maps[1].contains(0x7f1c2a1bd000));
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = parse_stat(
            "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 0",
        )
        .expect("parses");
        assert_eq!(s.start_ticks, 12345);
        assert_eq!(s.comm, "my (odd) name");
        assert_eq!(s.state, 'S');
        assert!(!s.is_kernel_thread());
        let k = parse_stat("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0").expect("parses");
        assert!(k.is_kernel_thread());
    }
}
