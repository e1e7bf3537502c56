//! The boot contract between the hypervisor and its guests: where the image,
//! stack, boot page tables and GDT lie in guest-physical memory, and the
//! contents of those tables. Documented for people in `docs/guests.md`.
//!
//! A guest starts in 64-bit long mode at CPL 0 with paging on: its page
//! tables identity-map GPA `[0, 4 GiB)` with 2 MiB pages and
//! `[4 GiB, 512 GiB)` with 1 GiB pages, so a guest can name any of those
//! addresses (the `evil` guest relies on that). RAM is `[0, ram_bytes)`;
//! everything else is unbacked and reaching it stops the VM.
//!
//! ```text
//!  GPA 0x0000_0000  unused page
//!      0x0000_1000  PML4
//!      0x0000_2000  PDPT (entries 0-3 -> PDs, 4-511 -> 1 GiB pages)
//!      0x0000_3000  4 PDs (2 MiB pages)
//!      0x0000_7000  GDT: null, 64-bit code (0x08), data (0x10)
//!      0x0000_8000  stack (grows down from 0x10_0000)
//!      0x0010_0000  guest image (entry = first byte)
//!      0x0040_0000  data region, up to the end of RAM
//! ```
//!
//! Registers at entry: RIP = [`IMAGE_GPA`], RSP = [`STACK_TOP_GPA`],
//! RDI = RAM size in bytes, RSI = boot argument, RDX = VM id, RFLAGS = 0x2
//! (interrupts off), no IDT.
//!
//! Neighbours: the kernel's `vm` module writes these tables into guest RAM;
//! the vendor backends load CR0/CR3/CR4/EFER/segments from [`BootCpuState`].

use crate::addr::GuestPhysAddr;

/// GPA of the boot PML4.
pub const PML4_GPA: u64 = 0x1000;
/// GPA of the boot PDPT.
pub const PDPT_GPA: u64 = 0x2000;
/// GPA of the first of four boot page directories.
pub const PD_GPA: u64 = 0x3000;
/// Number of page directories (each maps 1 GiB with 2 MiB pages).
pub const PD_COUNT: u64 = 4;
/// GPA of the boot GDT.
pub const GDT_GPA: u64 = 0x7000;
/// Initial stack pointer (the stack grows down toward the GDT page).
pub const STACK_TOP_GPA: u64 = 0x10_0000;
/// Where the flat guest image is loaded; also the entry point.
pub const IMAGE_GPA: u64 = 0x10_0000;
/// Largest image the layout leaves room for.
pub const IMAGE_MAX_BYTES: u64 = DATA_START_GPA - IMAGE_GPA;
/// First byte of the data region guests use for workloads.
pub const DATA_START_GPA: u64 = 0x40_0000;
/// Smallest RAM a guest may have: the layout plus 1 MiB of data.
pub const MIN_RAM_BYTES: u64 = DATA_START_GPA + 0x10_0000;
/// Highest GPA (exclusive) the boot page tables map.
pub const MAPPED_LIMIT_GPA: u64 = 512 << 30;
const _: () = assert!(IMAGE_GPA + IMAGE_MAX_BYTES <= DATA_START_GPA);
const _: () = assert!(GDT_GPA < STACK_TOP_GPA && PD_GPA + PD_COUNT * 0x1000 <= GDT_GPA);

/// Code segment selector at entry.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector at entry.
pub const DATA_SELECTOR: u16 = 0x10;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const LARGE: u64 = 1 << 7;

/// The GDT entries at [`GDT_GPA`]: null, 64-bit code, flat data.
pub const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// Every 8-byte word the hypervisor writes into guest RAM before the first
/// entry (page tables and GDT), as `(gpa, value)`. Pages of the tables not
/// named here are zero.
pub fn boot_table_words() -> impl Iterator<Item = (GuestPhysAddr, u64)> {
    let pml4 = core::iter::once((PML4_GPA, PDPT_GPA | PRESENT | WRITABLE));
    let pdpt = (0..512u64).map(|i| {
        let value = if i < PD_COUNT {
            (PD_GPA + i * 0x1000) | PRESENT | WRITABLE
        } else {
            (i << 30) | PRESENT | WRITABLE | LARGE
        };
        (PDPT_GPA + i * 8, value)
    });
    let pds = (0..PD_COUNT * 512).map(|i| (PD_GPA + i * 8, (i << 21) | PRESENT | WRITABLE | LARGE));
    let gdt = GDT
        .iter()
        .enumerate()
        .map(|(i, &d)| (GDT_GPA + i as u64 * 8, d));
    pml4.chain(pdpt)
        .chain(pds)
        .chain(gdt)
        .map(|(gpa, value)| (GuestPhysAddr::new(gpa), value))
}

/// The guest-physical pages the boot tables occupy (PML4, PDPT, PDs, GDT):
/// the hardware page walker touches them, so accessed-bit tests expect them.
pub fn boot_table_pages() -> core::ops::Range<u64> {
    PML4_GPA / 0x1000..GDT_GPA / 0x1000 + 1
}

/// Control and segment state of a guest at entry, vendor-neutral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootCpuState {
    /// CR0: PE, MP, ET, NE, WP, PG.
    pub cr0: u64,
    /// CR3: the boot PML4.
    pub cr3: u64,
    /// CR4: PAE, OSFXSR, OSXMMEXCPT.
    pub cr4: u64,
    /// EFER: LME, LMA, NXE.
    pub efer: u64,
    /// RFLAGS: only the reserved bit 1.
    pub rflags: u64,
}

/// The state every guest starts in.
pub const BOOT_CPU_STATE: BootCpuState = BootCpuState {
    cr0: (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31),
    cr3: PML4_GPA,
    cr4: (1 << 5) | (1 << 9) | (1 << 10),
    efer: (1 << 8) | (1 << 10) | (1 << 11),
    rflags: 0x2,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_identity_map_every_named_address() {
        let words: std::collections::HashMap<u64, u64> =
            boot_table_words().map(|(g, v)| (g.as_u64(), v)).collect();
        let read = |gpa: u64| words.get(&gpa).copied().unwrap_or(0);
        // Walk the tables as a CPU would for a few addresses.
        for va in [
            0u64,
            0x10_0000,
            0x40_1234,
            (3 << 30) + 0x2345,
            (7 << 30) + 5,
            (512 << 30) - 1,
        ] {
            let pml4e = read(PML4_GPA + ((va >> 39) & 511) * 8);
            assert_eq!(pml4e & 1, 1);
            let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
            assert_eq!(pdpte & 1, 1);
            let pa = if pdpte & LARGE != 0 {
                (pdpte & !0x3fff_ffff) + (va & 0x3fff_ffff)
            } else {
                let pde = read((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
                assert_eq!(pde & (PRESENT | LARGE), PRESENT | LARGE);
                (pde & !0x1f_ffff) + (va & 0x1f_ffff)
            };
            assert_eq!(pa, va, "va {va:#x}");
        }
        // Every table word lies inside the table pages.
        for gpa in words.keys() {
            assert!(boot_table_pages().contains(&(gpa / 0x1000)));
        }
    }
}
