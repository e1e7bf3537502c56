//! Reading guest memory by guest-virtual address: a software walk of the
//! guest's own page tables, used to fetch the bytes of an intercepted
//! instruction at the guest's RIP when the CPU does not say how long it was,
//! and to reach the memory operands of emulated string I/O
//! ([`crate::string_io`]), writes included ([`translate_write`]).
//!
//! Follows the AMD APM vol. 2 / Intel SDM vol. 3 "4-Level Paging" (long
//! mode, 4 KiB, 2 MiB and 1 GiB pages). Legacy 32-bit and PAE paging are
//! refused (`None`): Thermocline's guests run in long mode, and a handler
//! that cannot fetch the bytes stops the VM instead of guessing.
//!
//! Neighbours: [`crate::insn`] decodes what this fetches; the kernel's `vm`
//! module provides [`GuestPhysRead`] over the VM's memory.

use crate::addr::GuestPhysAddr;

/// Read access to guest-physical memory that never faults: `None` for an
/// address that is not backed by the guest's RAM.
pub trait GuestPhysRead {
    /// Reads `buf.len()` bytes at `gpa`; the range never crosses a 4 KiB page.
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()>;
}

/// Write access to guest-physical memory that never faults: `None` for an
/// address outside the guest's RAM (or with no frame to back it).
pub trait GuestPhysWrite {
    /// Writes `buf` at `gpa`; the range never crosses a 4 KiB page.
    fn write(&self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()>;
}

/// The paging controls a translation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPaging {
    /// Guest CR0.
    pub cr0: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest CR4.
    pub cr4: u64,
    /// Guest EFER.
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
const WRITABLE: u64 = 1 << 1;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

fn read_u64(mem: &impl GuestPhysRead, gpa: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read(GuestPhysAddr::new(gpa), &mut b)?;
    Some(u64::from_le_bytes(b))
}

/// Translates guest-virtual `va` to a guest-physical address, or `None`
/// when it is not mapped or the paging mode is not supported.
pub fn translate(mem: &impl GuestPhysRead, paging: GuestPaging, va: u64) -> Option<GuestPhysAddr> {
    walk(mem, paging, va, false)
}

/// [`translate`] for a supervisor write: also `None` when CR0.WP is set
/// and some level of the walk is read-only (the CPU would raise #PF).
pub fn translate_write(
    mem: &impl GuestPhysRead,
    paging: GuestPaging,
    va: u64,
) -> Option<GuestPhysAddr> {
    walk(mem, paging, va, paging.cr0 & CR0_WP != 0)
}

fn walk(
    mem: &impl GuestPhysRead,
    paging: GuestPaging,
    va: u64,
    need_writable: bool,
) -> Option<GuestPhysAddr> {
    if paging.cr0 & CR0_PG == 0 {
        return Some(GuestPhysAddr::new(va));
    }
    if paging.cr4 & CR4_PAE == 0 || paging.efer & EFER_LMA == 0 || paging.cr4 & CR4_LA57 != 0 {
        return None;
    }
    // Bits 63:47 must be equal (canonical), else the CPU raises #GP.
    if ((va as i64) << 16 >> 16) as u64 != va {
        return None;
    }
    let mut table = paging.cr3 & ADDR;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = read_u64(mem, table + ((va >> shift) & 511) * 8)?;
        if entry & PRESENT == 0 || (need_writable && entry & WRITABLE == 0) {
            return None;
        }
        if level == 1 || (level <= 3 && entry & LARGE != 0) {
            let size = 1u64 << shift;
            let base = entry & ADDR & !(size - 1);
            return Some(GuestPhysAddr::new(base | (va & (size - 1))));
        }
        table = entry & ADDR;
    }
    None
}

/// Fetches up to `buf.len()` bytes at guest-virtual `va`, page by page;
/// returns how many were read before the first unmapped byte.
pub fn fetch(mem: &impl GuestPhysRead, paging: GuestPaging, va: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let at = va.wrapping_add(done as u64);
        let Some(gpa) = translate(mem, paging, at) else {
            break;
        };
        let in_page = (4096 - (at & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        if mem.read(gpa, &mut buf[done..done + n]).is_none() {
            break;
        }
        done += n;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_layout::{BOOT_CPU_STATE, boot_table_words};
    use std::collections::HashMap;

    struct Mem(HashMap<u64, u8>, u64);
    impl GuestPhysRead for Mem {
        fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
            assert!(gpa.as_u64() / 4096 == (gpa.as_u64() + buf.len() as u64 - 1) / 4096);
            if gpa.as_u64() + buf.len() as u64 > self.1 {
                return None;
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *self.0.get(&(gpa.as_u64() + i as u64)).unwrap_or(&0);
            }
            Some(())
        }
    }

    fn boot_mem(ram: u64) -> Mem {
        let mut m = HashMap::new();
        for (gpa, v) in boot_table_words() {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                m.insert(gpa.as_u64() + i as u64, *b);
            }
        }
        Mem(m, ram)
    }

    fn paging() -> GuestPaging {
        GuestPaging {
            cr0: BOOT_CPU_STATE.cr0,
            cr3: BOOT_CPU_STATE.cr3,
            cr4: BOOT_CPU_STATE.cr4,
            efer: BOOT_CPU_STATE.efer,
        }
    }

    #[test]
    fn boot_tables_translate_identity() {
        let mem = boot_mem(16 << 20);
        for va in [0x10_0000u64, 0x12_3456, 0x3f_ffff, 0xdead_beef] {
            assert_eq!(translate(&mem, paging(), va), Some(GuestPhysAddr::new(va)));
        }
        // Past 512 GiB nothing is mapped.
        assert_eq!(translate(&mem, paging(), 512 << 30), None);
    }

    #[test]
    fn fetch_crosses_pages_and_stops_at_the_end_of_ram() {
        let mut mem = boot_mem(0x20_0000);
        for i in 0..6u64 {
            mem.0.insert(0x10_0ffd + i, 0xa0 + i as u8);
        }
        let mut buf = [0u8; 6];
        assert_eq!(fetch(&mem, paging(), 0x10_0ffd, &mut buf), 6);
        assert_eq!(buf, [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5]);
        let mut buf = [0u8; 15];
        assert_eq!(fetch(&mem, paging(), 0x1f_fffc, &mut buf), 4);
    }

    #[test]
    fn unsupported_modes_are_refused() {
        let mem = boot_mem(16 << 20);
        let mut p = paging();
        p.efer &= !EFER_LMA;
        assert_eq!(translate(&mem, p, 0x1000), None);
        p.cr0 &= !CR0_PG;
        assert_eq!(translate(&mem, p, 0x1234), Some(GuestPhysAddr::new(0x1234)));
    }

    #[test]
    fn writes_need_writable_entries_when_wp_is_set() {
        let mut mem = boot_mem(16 << 20);
        assert_eq!(
            translate_write(&mem, paging(), 0x40_0000),
            Some(GuestPhysAddr::new(0x40_0000))
        );
        // Make the 2 MiB page at 4 MiB read-only (PD entry 2).
        let pde = crate::guest_layout::PD_GPA + 2 * 8;
        let ro = (0x40_0000u64 | PRESENT | LARGE).to_le_bytes();
        for (i, b) in ro.iter().enumerate() {
            mem.0.insert(pde + i as u64, *b);
        }
        assert_eq!(translate_write(&mem, paging(), 0x40_0010), None);
        assert_eq!(
            translate(&mem, paging(), 0x40_0010),
            Some(GuestPhysAddr::new(0x40_0010))
        );
        let mut p = paging();
        p.cr0 &= !CR0_WP;
        assert_eq!(
            translate_write(&mem, p, 0x40_0010),
            Some(GuestPhysAddr::new(0x40_0010))
        );
    }
}
