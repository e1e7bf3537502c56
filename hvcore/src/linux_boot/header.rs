//! The bzImage setup header: read and checked, nothing written.
//!
//! Offsets and rules follow "The Real-Mode Kernel Header" and "Details of
//! Header Fields" in the kernel's Documentation/arch/x86/boot.rst. Every
//! read is bounds-checked first, so a short or corrupt file is an error.

use super::LinuxBootError;

/// Offset of the setup header in the image (and in `boot_params`).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Offset of the jump instruction whose displacement gives the header's end.
const JUMP_OFFSET: usize = 0x200;
/// The short-jump opcode the header starts with.
const JUMP_OPCODE: u8 = 0xeb;
/// Where the displacement counts from (the byte after the jump).
const JUMP_BASE: usize = 0x202;
/// End of the last field this loader reads (`init_size`, protocol 2.10).
const FIELDS_END: usize = 0x264;
/// The setup header must end before `boot_params.edd_mbr_sig_buffer` (0x290),
/// the next field of the zero page it is copied into.
const HEADER_LIMIT: usize = 0x290;

const BOOT_FLAG: usize = 0x1fe;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const SETUP_SECTS: usize = 0x1f1;
const SYSSIZE: usize = 0x1f4;
const HEADER_MAGIC_AT: usize = 0x202;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
const VERSION: usize = 0x206;
const KERNEL_VERSION: usize = 0x20e;
const LOADFLAGS: usize = 0x211;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;

/// `loadflags` bit 0: the protected-mode code loads at 1 MiB (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit 0: the kernel has the 64-bit entry at offset 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// The first protocol with `xloadflags` (2.12): without it a loader cannot
/// tell whether the 64-bit entry exists.
pub const MIN_PROTOCOL: u16 = 0x020c;
/// A sector of the real-mode part, whatever the medium.
const SECTOR_BYTES: usize = 512;
/// `setup_sects == 0` means this many, for old kernels.
const DEFAULT_SETUP_SECTS: usize = 4;
/// Offset of the 64-bit entry from the start of the protected-mode kernel.
pub const ENTRY_64_OFFSET: u64 = 0x200;

/// The setup-header fields the loader decides with, as read from the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version, `(major << 8) | minor`.
    pub version: u16,
    /// Real-mode sectors after the boot sector (0 in the file reads as 4).
    pub setup_sects: usize,
    /// Size of the protected-mode kernel in bytes (`syssize` * 16).
    pub protected_mode_bytes: u64,
    /// `loadflags` as in the image.
    pub loadflags: u8,
    /// `xloadflags` as in the image.
    pub xloadflags: u16,
    /// Highest address any initrd byte may occupy (inclusive).
    pub initrd_addr_max: u32,
    /// Alignment of the load address for a relocatable kernel.
    pub kernel_alignment: u32,
    /// Whether the protected-mode kernel may load at any aligned address.
    pub relocatable: bool,
    /// Longest command line without its terminating NUL.
    pub cmdline_size: u32,
    /// Where the kernel prefers to be loaded (where it runs if not relocatable).
    pub pref_address: u64,
    /// Bytes from the load address the kernel needs before it reads the memory map.
    pub init_size: u32,
    /// Offset one past the last byte of the setup header (from its jump).
    pub header_end: usize,
}

impl SetupHeader {
    /// Offset of the protected-mode kernel in the file.
    pub fn protected_mode_offset(&self) -> usize {
        (self.setup_sects + 1) * SECTOR_BYTES
    }

    /// Bytes from the load address the kernel may use during start-up: its
    /// `init_size`, or its size if that is larger (a header that says less
    /// than the code it carries is not trusted to be right).
    pub fn extent_bytes(&self) -> u64 {
        u64::from(self.init_size).max(self.protected_mode_bytes)
    }
}

fn u8_at(bytes: &[u8], at: usize) -> u8 {
    bytes[at]
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32_at(bytes, at)) | (u64::from(u32_at(bytes, at + 4)) << 32)
}

/// Fails with [`LinuxBootError::Truncated`] unless `image` has `needed` bytes.
fn need(image: &[u8], needed: usize, what: &'static str) -> Result<(), LinuxBootError> {
    if image.len() < needed {
        Err(LinuxBootError::Truncated {
            what,
            needed_bytes: needed as u64,
            len_bytes: image.len() as u64,
        })
    } else {
        Ok(())
    }
}

/// Reads and checks the setup header of `image`, a whole bzImage file.
///
/// # Errors
/// [`LinuxBootError::Truncated`], [`LinuxBootError::NotBzImage`],
/// [`LinuxBootError::ProtocolTooOld`], [`LinuxBootError::No64BitEntry`],
/// [`LinuxBootError::BadHeader`]: see their documentation.
pub fn parse(image: &[u8]) -> Result<SetupHeader, LinuxBootError> {
    need(image, BOOT_FLAG + 2, "the boot sector")?;
    if u16_at(image, BOOT_FLAG) != BOOT_FLAG_MAGIC {
        return Err(LinuxBootError::NotBzImage(
            "no boot-sector magic 0xAA55 at offset 0x1FE",
        ));
    }
    need(image, VERSION + 2, "the setup header's signature")?;
    if &image[HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4] != HEADER_MAGIC {
        return Err(LinuxBootError::NotBzImage(
            "no \"HdrS\" signature at offset 0x202 (a pre-2.00 kernel or not a kernel)",
        ));
    }
    let version = u16_at(image, VERSION);
    if version < MIN_PROTOCOL {
        return Err(LinuxBootError::ProtocolTooOld { version });
    }
    if u8_at(image, JUMP_OFFSET) != JUMP_OPCODE {
        return Err(LinuxBootError::BadHeader(
            "the setup header does not start with a short jump (0xEB)",
        ));
    }
    let header_end = JUMP_BASE + usize::from(u8_at(image, JUMP_OFFSET + 1));
    if header_end < FIELDS_END {
        return Err(LinuxBootError::BadHeader(
            "the setup header ends before init_size (0x260), which protocol 2.10+ has",
        ));
    }
    if header_end > HEADER_LIMIT {
        return Err(LinuxBootError::BadHeader(
            "the setup header is longer than the room for it in boot_params (to 0x290)",
        ));
    }
    need(image, header_end, "the setup header")?;
    let loadflags = u8_at(image, LOADFLAGS);
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxBootError::NotBzImage(
            "loadflags.LOADED_HIGH is clear (a zImage, loaded at 64 KiB)",
        ));
    }
    let xloadflags = u16_at(image, XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxBootError::No64BitEntry);
    }
    let setup_sects = match usize::from(u8_at(image, SETUP_SECTS)) {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    let syssize = u32_at(image, SYSSIZE);
    if syssize == 0 {
        return Err(LinuxBootError::BadHeader(
            "syssize is 0: no protected-mode kernel",
        ));
    }
    let protected_mode_bytes = u64::from(syssize) * 16;
    if protected_mode_bytes <= ENTRY_64_OFFSET {
        return Err(LinuxBootError::BadHeader(
            "the protected-mode kernel (syssize) ends before its 64-bit entry at 0x200",
        ));
    }
    let relocatable = u8_at(image, RELOCATABLE_KERNEL) != 0;
    let kernel_alignment = u32_at(image, KERNEL_ALIGNMENT);
    if relocatable && !kernel_alignment.is_power_of_two() {
        return Err(LinuxBootError::BadHeader(
            "kernel_alignment of a relocatable kernel is not a power of two",
        ));
    }
    let header = SetupHeader {
        version,
        setup_sects,
        protected_mode_bytes,
        loadflags,
        xloadflags,
        initrd_addr_max: u32_at(image, INITRD_ADDR_MAX),
        kernel_alignment,
        relocatable,
        cmdline_size: u32_at(image, CMDLINE_SIZE),
        pref_address: u64_at(image, PREF_ADDRESS),
        init_size: u32_at(image, INIT_SIZE),
        header_end,
    };
    let offset = header.protected_mode_offset();
    let end = (offset as u64)
        .checked_add(protected_mode_bytes)
        .ok_or(LinuxBootError::BadHeader("syssize overflows"))?;
    if (image.len() as u64) < end {
        return Err(LinuxBootError::Truncated {
            what: "the protected-mode kernel (setup_sects and syssize)",
            needed_bytes: end,
            len_bytes: image.len() as u64,
        });
    }
    Ok(header)
}

/// The kernel's version string, if the header points at a readable one
/// (`kernel_version` + 0x200, NUL-terminated, inside the setup code).
pub fn kernel_version<'a>(image: &'a [u8], header: &SetupHeader) -> Option<&'a str> {
    let pointer = usize::from(u16_at(image, KERNEL_VERSION));
    if pointer == 0 {
        return None;
    }
    let start = pointer + 0x200;
    let setup_end = header.protected_mode_offset().min(image.len());
    let text = image.get(start..setup_end)?;
    let len = text.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&text[..len]).ok()
}
