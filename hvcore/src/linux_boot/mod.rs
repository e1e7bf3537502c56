//! Booting an unmodified Linux bzImage through its 64-bit entry point.
//!
//! Follows the kernel's Documentation/arch/x86/boot.rst ("The Real-Mode
//! Kernel Header", "Details of Header Fields", "64-bit Boot Protocol") and
//! Documentation/arch/x86/zero-page.rst. Pure: from the image, the initrd,
//! the command line and the RAM size it computes what a loader writes into
//! guest RAM and the vCPU state to start in; the kernel only copies.
//!
//! - [`header::parse`] reads and checks the setup header ([`SetupHeader`]).
//! - [`LinuxBoot::plan`] places everything ([`LinuxLayout`]), builds
//!   `boot_params` (the "zero page") with its e820 map, the identity-mapping
//!   page tables and the GDT, and returns a [`LinuxBoot`]: its
//!   [`writes`](LinuxBoot::writes) are `(GPA, bytes)` pairs, its
//!   [`entry`](LinuxBoot::entry) the registers ([`LinuxEntryState`]).
//! - Every bad input is a [`LinuxBootError`] whose `Display` names the
//!   problem, before anything is written.
//!
//! Host-tested over synthesized headers (`tests.rs`) and Debian's kernel
//! (`tests/linux_boot_debian.rs`); `cargo xtask linux-assets --boot-plan`
//! boots Debian's kernel in QEMU from exactly these writes and entry state,
//! with no firmware.
//!
//! Guest-physical layout (RAM is `[0, ram_bytes)`):
//!
//! ```text
//!  0x0000_0000  untouched page (real-mode IVT; Linux reserves it itself)
//!  0x0000_1000  GDT: null, null, __BOOT_CS 0x10 (64-bit code), __BOOT_DS 0x18
//!  0x0000_2000  PML4, then PDPT, then 4 PDs: identity map of [0, 4 GiB), 2 MiB pages
//!  0x0000_8000  boot stack (RSP = 0x1_0000; the kernel switches to its own at once)
//!  0x0001_0000  boot_params (the zero page)
//!  0x0002_0000  command line, NUL-terminated (up to 0xA_0000)
//!  0x000A_0000  legacy VGA / ROM hole (e820 reserved)
//!  0x0010_0000  RAM ...
//!  load address protected-mode kernel: pref_address (16 MiB for Debian's),
//!               else the lowest kernel_alignment multiple from 1 MiB that fits;
//!               init_size bytes kept free from here
//!  high         initrd: as high as RAM and initrd_addr_max allow, 4 KiB aligned
//! ```
//!
//! Everything lies below 4 GiB, inside the identity map: the 64-bit entry
//! needs the kernel's `init_size` range, `boot_params` and the command line
//! mapped (and this loader maps the initrd too). RAM from
//! [`APIC_HOLE_START`] to 4 GiB, when the VM has that much, is reported
//! reserved: it is where the I/O APIC and local APIC registers live on a PC.

pub mod bundle;
pub mod header;
#[cfg(test)]
mod tests;

extern crate alloc;

use crate::addr::GuestPhysAddr;
use alloc::vec::Vec;
use core::fmt;
pub use header::SetupHeader;

/// GPA of the GDT.
pub const GDT_GPA: u64 = 0x1000;
/// GPA of the PML4; the PDPT and the page directories follow it.
pub const PML4_GPA: u64 = 0x2000;
/// Page directories in the identity map (each maps 1 GiB with 2 MiB pages).
pub const PD_COUNT: u64 = 4;
/// Bytes of page tables: PML4, PDPT, [`PD_COUNT`] PDs.
pub const TABLES_BYTES: u64 = (2 + PD_COUNT) * 4096;
/// Initial RSP (the stack grows down over `[0x8000, 0x1_0000)`).
pub const STACK_TOP_GPA: u64 = 0x1_0000;
/// GPA of `boot_params`.
pub const ZERO_PAGE_GPA: u64 = 0x1_0000;
/// GPA of the command line.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Start of the legacy hole (VGA memory, option and BIOS ROMs) that the
/// kernel command line must stay below (boot.rst: "between the end of the
/// setup heap and 0xA0000").
pub const LEGACY_HOLE_START: u64 = 0xa_0000;
/// End of the legacy hole: RAM for the kernel starts here.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the range below 4 GiB a PC keeps for the I/O APIC, local APIC and
/// firmware; reported reserved when RAM reaches it.
pub const APIC_HOLE_START: u64 = 0xfec0_0000;
/// End of the identity map, and of the range anything is placed in.
pub const IDENTITY_MAP_END: u64 = PD_COUNT << 30;
const _: () = assert!(PML4_GPA + TABLES_BYTES <= 0x8000);
const _: () = assert!(GDT_GPA + 4 * 8 <= PML4_GPA);

/// Selector of the 64-bit code segment (`__BOOT_CS`, boot.rst).
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment (`__BOOT_DS`, boot.rst).
pub const DATA_SELECTOR: u16 = 0x18;
/// The GDT: two null descriptors (the protocol names 0x10 and 0x18), a
/// 64-bit code segment (L=1, D=0, execute/read) and a 4 GiB flat read/write
/// data segment.
pub const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// `type_of_loader`: 0xFF, "undefined" (Thermocline has no assigned ID).
const TYPE_OF_LOADER_UNDEFINED: u8 = 0xff;
/// `vid_mode`: 0xFFFF, "normal" (boot.rst, "Special Command Line Options").
const VID_MODE_NORMAL: u16 = 0xffff;
/// Entries the zero page's `e820_table` holds.
const E820_MAX_ENTRIES: usize = 128;

// boot_params offsets (zero-page.rst and boot.rst).
const BP_EXT_RAMDISK_IMAGE: usize = 0x0c0;
const BP_EXT_RAMDISK_SIZE: usize = 0x0c4;
const BP_EXT_CMD_LINE_PTR: usize = 0x0c8;
const BP_E820_ENTRIES: usize = 0x1e8;
const BP_VID_MODE: usize = 0x1fa;
const BP_TYPE_OF_LOADER: usize = 0x210;
const BP_LOADFLAGS: usize = 0x211;
const BP_CODE32_START: usize = 0x214;
const BP_RAMDISK_IMAGE: usize = 0x218;
const BP_RAMDISK_SIZE: usize = 0x21c;
const BP_CMD_LINE_PTR: usize = 0x228;
const BP_E820_TABLE: usize = 0x2d0;
const E820_ENTRY_BYTES: usize = 20;
/// Size of `boot_params`.
pub const ZERO_PAGE_BYTES: usize = 4096;

/// Page-table entry bits (Intel SDM, "4-Level Paging": present, writable,
/// page size).
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const PAGE_4K: u64 = 4096;
const PAGE_2M: u64 = 2 << 20;

/// Why a Linux VM cannot be set up. Each names the problem for a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxBootError {
    /// The file ends before `what` does.
    Truncated {
        /// The part that is cut off.
        what: &'static str,
        /// Bytes the file would need.
        needed_bytes: u64,
        /// Bytes it has.
        len_bytes: u64,
    },
    /// Not a bzImage at all; the reason.
    NotBzImage(&'static str),
    /// Boot protocol older than 2.12 (no `xloadflags`, so no known 64-bit entry).
    ProtocolTooOld {
        /// The header's `version`.
        version: u16,
    },
    /// `xloadflags.XLF_KERNEL_64` is clear: a 32-bit kernel.
    No64BitEntry,
    /// A header field is impossible; which.
    BadHeader(&'static str),
    /// The protected-mode kernel and its `init_size` do not fit in RAM.
    KernelDoesNotFit {
        /// Where it would be loaded.
        load_gpa: u64,
        /// Bytes it needs from there.
        extent_bytes: u64,
        /// End of the RAM it must lie in.
        ram_end: u64,
    },
    /// The initrd does not fit between the kernel and the lower of the RAM
    /// end and `initrd_addr_max`.
    InitrdDoesNotFit {
        /// Its size.
        initrd_bytes: u64,
        /// First byte it may use (after the kernel's `init_size`).
        lowest_gpa: u64,
        /// One past the last byte it may use.
        limit_gpa: u64,
        /// The kernel's `initrd_addr_max` + 1.
        initrd_addr_limit: u64,
    },
    /// The command line is longer than the kernel's `cmdline_size` (or than
    /// the room below 0xA0000).
    CmdlineTooLong {
        /// Its length in bytes.
        len_bytes: u64,
        /// The most the kernel takes.
        max_bytes: u64,
    },
    /// The command line contains a NUL byte (it is passed NUL-terminated).
    CmdlineHasNul,
    /// RAM size 0.
    ZeroRam,
    /// RAM size not a multiple of 4 KiB.
    UnalignedRam {
        /// The size given.
        ram_bytes: u64,
    },
}

impl fmt::Display for LinuxBootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated {
                what,
                needed_bytes,
                len_bytes,
            } => write!(
                f,
                "truncated kernel image: {what} needs {needed_bytes} bytes, the file has {len_bytes}"
            ),
            Self::NotBzImage(why) => write!(f, "not a bzImage: {why}"),
            Self::ProtocolTooOld { version } => write!(
                f,
                "kernel boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later",
                version >> 8,
                version & 0xff
            ),
            Self::No64BitEntry => write!(
                f,
                "kernel has no 64-bit entry point (xloadflags.XLF_KERNEL_64 clear): a 32-bit kernel?"
            ),
            Self::BadHeader(why) => write!(f, "corrupt bzImage setup header: {why}"),
            Self::KernelDoesNotFit {
                load_gpa,
                extent_bytes,
                ram_end,
            } => write!(
                f,
                "kernel does not fit: it needs {extent_bytes:#x} bytes (init_size) from {load_gpa:#x}, \
                 but usable RAM ends at {ram_end:#x}; give the VM more memory"
            ),
            Self::InitrdDoesNotFit {
                initrd_bytes,
                lowest_gpa,
                limit_gpa,
                initrd_addr_limit,
            } => write!(
                f,
                "initrd does not fit: {initrd_bytes} bytes, but only {} are free between the kernel's end \
                 {lowest_gpa:#x} and {limit_gpa:#x} (the lower of the end of RAM and the kernel's \
                 initrd_addr_max + 1 = {initrd_addr_limit:#x})",
                limit_gpa.saturating_sub(lowest_gpa)
            ),
            Self::CmdlineTooLong {
                len_bytes,
                max_bytes,
            } => write!(
                f,
                "kernel command line too long: {len_bytes} bytes, this kernel takes at most {max_bytes} (cmdline_size)"
            ),
            Self::CmdlineHasNul => write!(f, "kernel command line contains a NUL byte"),
            Self::ZeroRam => write!(f, "VM RAM size is 0"),
            Self::UnalignedRam { ram_bytes } => {
                write!(f, "VM RAM size {ram_bytes:#x} is not a multiple of 4 KiB")
            }
        }
    }
}

/// What a range of the e820 map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM (type 1).
    Ram = 1,
    /// Reserved: not RAM for the kernel (type 2).
    Reserved = 2,
}

/// One range of the e820 memory map the guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: GuestPhysAddr,
    /// Length in bytes.
    pub size_bytes: u64,
    /// RAM or reserved.
    pub kind: E820Kind,
}

/// The e820 map of a VM with RAM `[0, ram_bytes)`: RAM with the legacy hole
/// `[0xA_0000, 0x10_0000)` reserved, and `[APIC_HOLE_START, 4 GiB)` reserved
/// where RAM reaches it. At most 5 entries.
pub fn e820_map(ram_bytes: u64) -> impl Iterator<Item = E820Entry> {
    let four_gib = 1u64 << 32;
    let ranges = [
        (0, LEGACY_HOLE_START.min(ram_bytes), E820Kind::Ram),
        (
            LEGACY_HOLE_START,
            HIGH_MEMORY_START.min(ram_bytes),
            E820Kind::Reserved,
        ),
        (
            HIGH_MEMORY_START,
            APIC_HOLE_START.min(ram_bytes),
            E820Kind::Ram,
        ),
        (APIC_HOLE_START, four_gib.min(ram_bytes), E820Kind::Reserved),
        (four_gib, ram_bytes, E820Kind::Ram),
    ];
    ranges
        .into_iter()
        .filter(|&(start, end, _)| end > start)
        .map(|(start, end, kind)| E820Entry {
            addr: GuestPhysAddr::new(start),
            size_bytes: end - start,
            kind,
        })
}

/// Where everything goes, in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    /// The protected-mode kernel's load address (entry = this + 0x200).
    pub kernel: GuestPhysAddr,
    /// Bytes from [`kernel`](Self::kernel) the kernel may use before it
    /// reads the memory map (`init_size`); nothing else is placed there.
    pub kernel_extent_bytes: u64,
    /// The initrd's address, if there is one.
    pub initrd: Option<GuestPhysAddr>,
    /// The initrd's size in bytes (0 when none).
    pub initrd_bytes: u64,
    /// The command line's address (NUL-terminated).
    pub cmdline: GuestPhysAddr,
    /// `boot_params`.
    pub zero_page: GuestPhysAddr,
    /// The identity map's PML4.
    pub pml4: GuestPhysAddr,
    /// The GDT.
    pub gdt: GuestPhysAddr,
}

/// Control, segment and general registers at the 64-bit entry
/// (boot.rst, "64-bit Boot Protocol"), vendor-neutral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxEntryState {
    /// The load address + 0x200.
    pub rip: u64,
    /// `boot_params`.
    pub rsi: u64,
    /// A small stack in low memory.
    pub rsp: u64,
    /// Only the reserved bit 1: interrupts off.
    pub rflags: u64,
    /// PE, ET, NE, PG: protected mode with paging.
    pub cr0: u64,
    /// The identity map's PML4.
    pub cr3: u64,
    /// PAE (required for long mode).
    pub cr4: u64,
    /// LME and LMA: long mode active. Linux turns on NX and SCE itself.
    pub efer: u64,
    /// GDTR base.
    pub gdt_base: u64,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// CS (64-bit code, the descriptor `GDT[2]`).
    pub code_selector: u16,
    /// DS, ES, SS (and FS, GS): flat data, `GDT[3]`.
    pub data_selector: u16,
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// One write into guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestWrite<'a> {
    /// Where the first byte goes.
    pub gpa: GuestPhysAddr,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// What a loader needs to boot one Linux VM.
#[derive(Clone, Copy, Debug)]
pub struct LinuxBootConfig<'a> {
    /// The whole bzImage file.
    pub kernel_image: &'a [u8],
    /// The initrd (initramfs) file; empty for none.
    pub initrd: &'a [u8],
    /// The kernel command line, without a NUL.
    pub cmdline: &'a [u8],
    /// RAM size of the VM: nonzero, a multiple of 4 KiB.
    pub ram_bytes: u64,
}

/// A checked, placed Linux boot: the bytes to write and the state to enter in.
#[derive(Clone, Debug)]
pub struct LinuxBoot<'a> {
    header: SetupHeader,
    layout: LinuxLayout,
    kernel: &'a [u8],
    initrd: &'a [u8],
    zero_page: Vec<u8>,
    tables: Vec<u8>,
    gdt: [u8; 32],
    cmdline: Vec<u8>,
    entry: LinuxEntryState,
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// End of the RAM range `[HIGH_MEMORY_START, ..)` everything high is placed in.
fn high_ram_end(ram_bytes: u64) -> u64 {
    ram_bytes.min(APIC_HOLE_START)
}

/// Where the protected-mode kernel goes.
///
/// A relocatable kernel goes at its `pref_address` when that is aligned and
/// fits (it is where the kernel would run anyway, so the decompressor need
/// not move), else at the lowest `kernel_alignment` multiple from 1 MiB. A
/// kernel that is not relocatable runs only at its `pref_address`.
fn place_kernel(header: &SetupHeader, ram_bytes: u64) -> Result<u64, LinuxBootError> {
    let extent = header.extent_bytes();
    let ram_end = high_ram_end(ram_bytes);
    let fits = |load: u64| {
        load >= HIGH_MEMORY_START && load.checked_add(extent).is_some_and(|end| end <= ram_end)
    };
    let pref = header.pref_address;
    if !header.relocatable {
        let load = if pref == 0 { HIGH_MEMORY_START } else { pref };
        return if fits(load) {
            Ok(load)
        } else {
            Err(LinuxBootError::KernelDoesNotFit {
                load_gpa: load,
                extent_bytes: extent,
                ram_end,
            })
        };
    }
    let align = u64::from(header.kernel_alignment);
    if pref != 0 && pref.is_multiple_of(align) && fits(pref) {
        return Ok(pref);
    }
    let lowest = align_up(HIGH_MEMORY_START, align).unwrap_or(u64::MAX);
    if fits(lowest) {
        Ok(lowest)
    } else {
        Err(LinuxBootError::KernelDoesNotFit {
            load_gpa: lowest,
            extent_bytes: extent,
            ram_end,
        })
    }
}

/// Where the initrd goes: as high as the end of RAM and `initrd_addr_max`
/// allow, page aligned, above the kernel's `init_size` range.
fn place_initrd(
    header: &SetupHeader,
    ram_bytes: u64,
    kernel_end: u64,
    initrd_bytes: u64,
) -> Result<u64, LinuxBootError> {
    let initrd_addr_limit = u64::from(header.initrd_addr_max) + 1;
    let limit = high_ram_end(ram_bytes).min(initrd_addr_limit);
    let lowest = align_up(kernel_end, PAGE_4K).unwrap_or(u64::MAX);
    let err = LinuxBootError::InitrdDoesNotFit {
        initrd_bytes,
        lowest_gpa: lowest,
        limit_gpa: limit,
        initrd_addr_limit,
    };
    let start = limit.checked_sub(initrd_bytes).ok_or(err)? & !(PAGE_4K - 1);
    if start < lowest { Err(err) } else { Ok(start) }
}

fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Writes a 64-bit address into a 32-bit field and its `ext_` high half.
fn put_split(buf: &mut [u8], low_at: usize, ext_at: usize, value: u64) {
    put_u32(buf, low_at, value as u32);
    put_u32(buf, ext_at, (value >> 32) as u32);
}

/// The identity map of `[0, IDENTITY_MAP_END)`: PML4, PDPT, PDs of 2 MiB pages.
fn identity_tables() -> Vec<u8> {
    let mut tables = alloc::vec![0u8; TABLES_BYTES as usize];
    let pdpt = PML4_GPA + PAGE_4K;
    let pd = pdpt + PAGE_4K;
    let mut put = |gpa: u64, value: u64| {
        let at = (gpa - PML4_GPA) as usize;
        tables[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(PML4_GPA, pdpt | PRESENT | WRITABLE);
    for i in 0..PD_COUNT {
        put(pdpt + i * 8, (pd + i * PAGE_4K) | PRESENT | WRITABLE);
    }
    for i in 0..PD_COUNT * 512 {
        put(
            pd + i * 8,
            (i * PAGE_2M) | PRESENT | WRITABLE | PAGE_SIZE_BIT,
        );
    }
    tables
}

impl<'a> LinuxBoot<'a> {
    /// Checks the inputs and places the kernel, initrd, command line,
    /// `boot_params`, page tables and GDT in a VM of `config.ram_bytes`.
    ///
    /// # Errors
    /// Any [`LinuxBootError`]: the image is not a usable bzImage, or
    /// something does not fit.
    pub fn plan(config: &LinuxBootConfig<'a>) -> Result<Self, LinuxBootError> {
        let ram_bytes = config.ram_bytes;
        if ram_bytes == 0 {
            return Err(LinuxBootError::ZeroRam);
        }
        if !ram_bytes.is_multiple_of(PAGE_4K) {
            return Err(LinuxBootError::UnalignedRam { ram_bytes });
        }
        let header = header::parse(config.kernel_image)?;
        if config.cmdline.contains(&0) {
            return Err(LinuxBootError::CmdlineHasNul);
        }
        let cmdline_max = u64::from(header.cmdline_size).min(LEGACY_HOLE_START - CMDLINE_GPA - 1);
        let cmdline_len = config.cmdline.len() as u64;
        if cmdline_len > cmdline_max {
            return Err(LinuxBootError::CmdlineTooLong {
                len_bytes: cmdline_len,
                max_bytes: cmdline_max,
            });
        }
        // The low structures need RAM up to the end of the command line.
        if ram_bytes < LEGACY_HOLE_START {
            return Err(LinuxBootError::KernelDoesNotFit {
                load_gpa: HIGH_MEMORY_START,
                extent_bytes: header.extent_bytes(),
                ram_end: ram_bytes,
            });
        }
        let load = place_kernel(&header, ram_bytes)?;
        let kernel_end = load + header.extent_bytes();
        let initrd_bytes = config.initrd.len() as u64;
        let initrd = if initrd_bytes == 0 {
            None
        } else {
            Some(place_initrd(&header, ram_bytes, kernel_end, initrd_bytes)?)
        };
        let layout = LinuxLayout {
            kernel: GuestPhysAddr::new(load),
            kernel_extent_bytes: header.extent_bytes(),
            initrd: initrd.map(GuestPhysAddr::new),
            initrd_bytes,
            cmdline: GuestPhysAddr::new(CMDLINE_GPA),
            zero_page: GuestPhysAddr::new(ZERO_PAGE_GPA),
            pml4: GuestPhysAddr::new(PML4_GPA),
            gdt: GuestPhysAddr::new(GDT_GPA),
        };
        let offset = header.protected_mode_offset();
        let kernel = &config.kernel_image[offset..offset + header.protected_mode_bytes as usize];
        let zero_page = zero_page(config.kernel_image, &header, &layout, ram_bytes);
        let mut gdt = [0u8; 32];
        for (slot, descriptor) in gdt.as_chunks_mut::<8>().0.iter_mut().zip(GDT) {
            slot.copy_from_slice(&descriptor.to_le_bytes());
        }
        let mut cmdline = Vec::with_capacity(config.cmdline.len() + 1);
        cmdline.extend_from_slice(config.cmdline);
        cmdline.push(0);
        let entry = LinuxEntryState {
            rip: load + header::ENTRY_64_OFFSET,
            rsi: ZERO_PAGE_GPA,
            rsp: STACK_TOP_GPA,
            rflags: 0x2,
            cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
            cr3: PML4_GPA,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            gdt_base: GDT_GPA,
            gdt_limit: (GDT.len() * 8 - 1) as u16,
            code_selector: CODE_SELECTOR,
            data_selector: DATA_SELECTOR,
        };
        Ok(Self {
            header,
            layout,
            kernel,
            initrd: config.initrd,
            zero_page,
            tables: identity_tables(),
            gdt,
            cmdline,
            entry,
        })
    }

    /// The setup header as read from the image.
    pub fn header(&self) -> &SetupHeader {
        &self.header
    }

    /// Where everything goes.
    pub fn layout(&self) -> &LinuxLayout {
        &self.layout
    }

    /// The vCPU state at the 64-bit entry.
    pub fn entry(&self) -> &LinuxEntryState {
        &self.entry
    }

    /// The bytes of `boot_params` as written.
    pub fn zero_page(&self) -> &[u8] {
        &self.zero_page
    }

    /// Every write into guest RAM, in ascending GPA order, none overlapping:
    /// GDT, page tables, `boot_params`, command line, kernel, initrd. RAM not
    /// named here is left as it is (zero in a new VM).
    pub fn writes(&self) -> impl Iterator<Item = GuestWrite<'_>> {
        let initrd = self.layout.initrd.map(|gpa| GuestWrite {
            gpa,
            bytes: self.initrd,
        });
        [
            GuestWrite {
                gpa: self.layout.gdt,
                bytes: &self.gdt,
            },
            GuestWrite {
                gpa: self.layout.pml4,
                bytes: &self.tables,
            },
            GuestWrite {
                gpa: self.layout.zero_page,
                bytes: &self.zero_page,
            },
            GuestWrite {
                gpa: self.layout.cmdline,
                bytes: &self.cmdline,
            },
            GuestWrite {
                gpa: self.layout.kernel,
                bytes: self.kernel,
            },
        ]
        .into_iter()
        .chain(initrd)
    }
}

/// `boot_params`: zero, the image's setup header copied to 0x1F1 as the
/// 64-bit protocol says, the loader's fields, and the e820 map.
fn zero_page(image: &[u8], header: &SetupHeader, layout: &LinuxLayout, ram_bytes: u64) -> Vec<u8> {
    let mut bp = alloc::vec![0u8; ZERO_PAGE_BYTES];
    let start = header::SETUP_HEADER_OFFSET;
    bp[start..header.header_end].copy_from_slice(&image[start..header.header_end]);
    bp[BP_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED;
    // Keep LOADED_HIGH; clear the loader-written bits this loader does not
    // use (QUIET_FLAG, CAN_USE_HEAP: there is no real-mode setup to run).
    bp[BP_LOADFLAGS] = header.loadflags & header::LOADED_HIGH;
    put_u16(&mut bp, BP_VID_MODE, VID_MODE_NORMAL);
    // The kernel is below 4 GiB (`place_kernel`), so the 32-bit field holds it.
    put_u32(&mut bp, BP_CODE32_START, layout.kernel.as_u64() as u32);
    let initrd = layout.initrd.map_or(0, GuestPhysAddr::as_u64);
    put_split(&mut bp, BP_RAMDISK_IMAGE, BP_EXT_RAMDISK_IMAGE, initrd);
    put_split(
        &mut bp,
        BP_RAMDISK_SIZE,
        BP_EXT_RAMDISK_SIZE,
        layout.initrd_bytes,
    );
    put_split(
        &mut bp,
        BP_CMD_LINE_PTR,
        BP_EXT_CMD_LINE_PTR,
        layout.cmdline.as_u64(),
    );
    let mut count = 0;
    for (i, entry) in e820_map(ram_bytes).enumerate().take(E820_MAX_ENTRIES) {
        let at = BP_E820_TABLE + i * E820_ENTRY_BYTES;
        bp[at..at + 8].copy_from_slice(&entry.addr.as_u64().to_le_bytes());
        bp[at + 8..at + 16].copy_from_slice(&entry.size_bytes.to_le_bytes());
        put_u32(&mut bp, at + 16, entry.kind as u32);
        count += 1;
    }
    bp[BP_E820_ENTRIES] = count;
    bp
}
