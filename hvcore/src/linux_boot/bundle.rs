//! The Linux bundle: the bzImage, the initrd and the command line as one
//! file, so that one boot-loader ramdisk carries all three to the
//! hypervisor (`bootloader` 0.11's `set_ramdisk`, `BootInfo::ramdisk_addr`;
//! docs/guests.md, "Linux guests").
//!
//! Layout, all integers little-endian:
//!
//! ```text
//!  0  magic "TCLINUX1"
//!  8  u32 command line length (bytes, no NUL)
//! 12  u32 bzImage length
//! 16  u32 initrd length (0: none)
//! 20  u32 0 (reserved)
//! 24  command line, then bzImage, then initrd, back to back
//! ```
//!
//! [`parse`] checks the whole file before handing out the three parts;
//! every defect is a [`BundleError`] naming it. [`pack`] is the inverse
//! (xtask builds bundles with it).

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// The first eight bytes of a bundle.
pub const MAGIC: [u8; 8] = *b"TCLINUX1";
/// Bytes of the header before the command line.
pub const HEADER_BYTES: usize = 24;

/// The three parts of a bundle, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bundle<'a> {
    /// The kernel command line (no NUL).
    pub cmdline: &'a [u8],
    /// The whole bzImage file.
    pub kernel: &'a [u8],
    /// The initrd; empty for none.
    pub initrd: &'a [u8],
}

/// Why a bundle was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    /// Shorter than the header.
    ShortHeader {
        /// Bytes present.
        len_bytes: usize,
    },
    /// The magic is wrong: not a bundle.
    BadMagic,
    /// The reserved word is not zero (a newer or corrupt format).
    BadReserved,
    /// The lengths add up to more than the file holds.
    Truncated {
        /// Bytes the header promises.
        needed_bytes: u64,
        /// Bytes present.
        len_bytes: usize,
    },
    /// Bytes left over after the initrd.
    TrailingBytes {
        /// How many.
        extra_bytes: usize,
    },
    /// No kernel in it.
    NoKernel,
    /// A part longer than the format's 4 GiB - 1.
    PartTooLarge {
        /// Which part.
        what: &'static str,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ShortHeader { len_bytes } => write!(
                f,
                "Linux bundle of {len_bytes} bytes is shorter than its {HEADER_BYTES}-byte header"
            ),
            Self::BadMagic => write!(f, "not a Linux bundle (no TCLINUX1 magic)"),
            Self::BadReserved => write!(f, "Linux bundle header has a nonzero reserved word"),
            Self::Truncated {
                needed_bytes,
                len_bytes,
            } => write!(
                f,
                "truncated Linux bundle: the header promises {needed_bytes} bytes, the file has {len_bytes}"
            ),
            Self::TrailingBytes { extra_bytes } => write!(
                f,
                "Linux bundle has {extra_bytes} bytes after its initrd (corrupt lengths?)"
            ),
            Self::NoKernel => write!(f, "Linux bundle holds no kernel"),
            Self::PartTooLarge { what } => {
                write!(
                    f,
                    "the {what} is too large for a Linux bundle (4 GiB - 1 at most)"
                )
            }
        }
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The parts of the bundle `bytes`, checked.
pub fn parse(bytes: &[u8]) -> Result<Bundle<'_>, BundleError> {
    if bytes.len() < HEADER_BYTES {
        return Err(BundleError::ShortHeader {
            len_bytes: bytes.len(),
        });
    }
    if bytes[..8] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    if le32(bytes, 20) != 0 {
        return Err(BundleError::BadReserved);
    }
    let lens = [le32(bytes, 8), le32(bytes, 12), le32(bytes, 16)].map(u64::from);
    let needed_bytes = HEADER_BYTES as u64 + lens.iter().sum::<u64>();
    if needed_bytes > bytes.len() as u64 {
        return Err(BundleError::Truncated {
            needed_bytes,
            len_bytes: bytes.len(),
        });
    }
    if needed_bytes < bytes.len() as u64 {
        return Err(BundleError::TrailingBytes {
            extra_bytes: bytes.len() - needed_bytes as usize,
        });
    }
    if lens[1] == 0 {
        return Err(BundleError::NoKernel);
    }
    let (cmdline, rest) = bytes[HEADER_BYTES..].split_at(lens[0] as usize);
    let (kernel, initrd) = rest.split_at(lens[1] as usize);
    Ok(Bundle {
        cmdline,
        kernel,
        initrd,
    })
}

/// A bundle of `cmdline`, `kernel` and `initrd`.
pub fn pack(cmdline: &[u8], kernel: &[u8], initrd: &[u8]) -> Result<Vec<u8>, BundleError> {
    if kernel.is_empty() {
        return Err(BundleError::NoKernel);
    }
    let len32 = |what, part: &[u8]| {
        u32::try_from(part.len()).map_err(|_| BundleError::PartTooLarge { what })
    };
    let lens = [
        len32("command line", cmdline)?,
        len32("kernel", kernel)?,
        len32("initrd", initrd)?,
    ];
    let mut out = Vec::with_capacity(HEADER_BYTES + cmdline.len() + kernel.len() + initrd.len());
    out.extend_from_slice(&MAGIC);
    for len in lens {
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(cmdline);
    out.extend_from_slice(kernel);
    out.extend_from_slice(initrd);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defects_are_named() {
        let good = pack(b"console=ttyS0", b"KERNEL", b"INITRD").unwrap();
        assert_eq!(
            parse(&good).unwrap(),
            Bundle {
                cmdline: b"console=ttyS0",
                kernel: b"KERNEL",
                initrd: b"INITRD"
            }
        );
        assert_eq!(
            parse(&good[..10]),
            Err(BundleError::ShortHeader { len_bytes: 10 })
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(parse(&bad), Err(BundleError::BadMagic));
        let mut bad = good.clone();
        bad[20] = 1;
        assert_eq!(parse(&bad), Err(BundleError::BadReserved));
        assert!(matches!(
            parse(&good[..good.len() - 1]),
            Err(BundleError::Truncated { .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            parse(&long),
            Err(BundleError::TrailingBytes { extra_bytes: 1 })
        );
        assert_eq!(pack(b"", b"", b""), Err(BundleError::NoKernel));
        let no_kernel = {
            let mut b = good.clone();
            b[12..16].copy_from_slice(&0u32.to_le_bytes());
            b.truncate(HEADER_BYTES + 13 + 6);
            b
        };
        assert_eq!(parse(&no_kernel), Err(BundleError::NoKernel));
        for e in [BundleError::BadMagic, BundleError::NoKernel] {
            assert!(!alloc::format!("{e}").is_empty());
        }
    }

    proptest! {
        #[test]
        fn pack_then_parse_round_trips(
            cmdline in proptest::collection::vec(any::<u8>(), 0..64),
            kernel in proptest::collection::vec(any::<u8>(), 1..256),
            initrd in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let b = pack(&cmdline, &kernel, &initrd).unwrap();
            let p = parse(&b).unwrap();
            prop_assert_eq!(p.cmdline, &cmdline[..]);
            prop_assert_eq!(p.kernel, &kernel[..]);
            prop_assert_eq!(p.initrd, &initrd[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
        }
    }
}
