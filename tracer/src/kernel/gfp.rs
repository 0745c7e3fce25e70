//! GFP flags as the kernel's own tracepoints print them (`GFP_KERNEL|
//! __GFP_ZERO`), for the bit layout of Linux 6.x (`___GFP_*_BIT` in the
//! kernel's BTF; checked on 6.18).

const fn bit(n: u32) -> u32 {
    1 << n
}

const DMA: u32 = bit(0);
const HIGHMEM: u32 = bit(1);
const DMA32: u32 = bit(2);
const MOVABLE: u32 = bit(3);
const RECLAIMABLE: u32 = bit(4);
const HIGH: u32 = bit(5);
const IO: u32 = bit(6);
const FS: u32 = bit(7);
const ZERO: u32 = bit(8);
const DIRECT_RECLAIM: u32 = bit(10);
const KSWAPD_RECLAIM: u32 = bit(11);
const WRITE: u32 = bit(12);
const NOWARN: u32 = bit(13);
const RETRY_MAYFAIL: u32 = bit(14);
const NOFAIL: u32 = bit(15);
const NORETRY: u32 = bit(16);
const MEMALLOC: u32 = bit(17);
const COMP: u32 = bit(18);
const NOMEMALLOC: u32 = bit(19);
const HARDWALL: u32 = bit(20);
const THISNODE: u32 = bit(21);
const ACCOUNT: u32 = bit(22);
const ZEROTAGS: u32 = bit(23);
const NO_OBJ_EXT: u32 = bit(24);

const RECLAIM: u32 = DIRECT_RECLAIM | KSWAPD_RECLAIM;
const KERNEL: u32 = RECLAIM | IO | FS;
const USER: u32 = RECLAIM | IO | FS | HARDWALL;

/// In the kernel's order (`show_gfp_flags`): composites first, each taken
/// out of what is left once matched.
const NAMES: [(u32, &str); 34] = [
    (USER | HIGHMEM | MOVABLE, "GFP_HIGHUSER_MOVABLE"),
    (USER | HIGHMEM, "GFP_HIGHUSER"),
    (USER, "GFP_USER"),
    (KERNEL | ACCOUNT, "GFP_KERNEL_ACCOUNT"),
    (KERNEL, "GFP_KERNEL"),
    (RECLAIM | IO, "GFP_NOFS"),
    (HIGH | KSWAPD_RECLAIM, "GFP_ATOMIC"),
    (RECLAIM, "GFP_NOIO"),
    (KSWAPD_RECLAIM | NOWARN, "GFP_NOWAIT"),
    (DMA, "GFP_DMA"),
    (DMA32, "GFP_DMA32"),
    (HIGHMEM, "__GFP_HIGHMEM"),
    (MOVABLE, "__GFP_MOVABLE"),
    (RECLAIMABLE, "__GFP_RECLAIMABLE"),
    (HIGH, "__GFP_HIGH"),
    (IO, "__GFP_IO"),
    (FS, "__GFP_FS"),
    (ZERO, "__GFP_ZERO"),
    (DIRECT_RECLAIM, "__GFP_DIRECT_RECLAIM"),
    (KSWAPD_RECLAIM, "__GFP_KSWAPD_RECLAIM"),
    (WRITE, "__GFP_WRITE"),
    (NOWARN, "__GFP_NOWARN"),
    (RETRY_MAYFAIL, "__GFP_RETRY_MAYFAIL"),
    (NOFAIL, "__GFP_NOFAIL"),
    (NORETRY, "__GFP_NORETRY"),
    (MEMALLOC, "__GFP_MEMALLOC"),
    (COMP, "__GFP_COMP"),
    (NOMEMALLOC, "__GFP_NOMEMALLOC"),
    (HARDWALL, "__GFP_HARDWALL"),
    (THISNODE, "__GFP_THISNODE"),
    (ACCOUNT, "__GFP_ACCOUNT"),
    (ZEROTAGS, "__GFP_ZEROTAGS"),
    (NO_OBJ_EXT, "__GFP_NO_OBJ_EXT"),
    (0, ""),
];

/// `flags` by name, `|`-joined; bits without a name as hex.
pub fn names(flags: u32) -> String {
    if flags == 0 {
        return "0".to_string();
    }
    let mut left = flags;
    let mut out: Vec<String> = Vec::new();
    for (mask, name) in NAMES {
        if mask != 0 && left & mask == mask {
            out.push(name.to_string());
            left &= !mask;
        }
    }
    if left != 0 {
        out.push(format!("{left:#x}"));
    }
    out.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_as_the_kernel_prints_them() {
        assert_eq!(names(0xcc0), "GFP_KERNEL");
        assert_eq!(names(0x400cc0), "GFP_KERNEL_ACCOUNT");
        assert_eq!(names(0xdc0), "GFP_KERNEL|__GFP_ZERO");
        assert_eq!(names(0x140cca), "GFP_HIGHUSER_MOVABLE|__GFP_COMP");
        assert_eq!(names(0x820), "GFP_ATOMIC");
        assert_eq!(names(1 << 9), "0x200");
        assert_eq!(names(0), "0");
    }
}
