//! AMD nested page table entries and the nested CR3.
//!
//! Follows the AMD APM vol. 2, "Nested Paging" and "Long-Mode Page
//! Translation": an NPT is an ordinary long-mode page table walked with the
//! host's paging controls, and every guest access counts as a user access,
//! so every level carries U=1.
//!
//! ```text
//!  63  62   52 51              12 11  9  8   7   6   5   4   3   2   1   0
//! +----+-------+------------------+-----+---+---+---+---+---+---+---+---+---+
//! | NX | avail | frame / table PA |avail| G | PS| D | A |PCD|PWT| U | W | P |
//! +----+-------+------------------+-----+---+---+---+---+---+---+---+---+---+
//! ```
//! NX (bit 63) is reserved unless the host runs with EFER.NXE=1; the kernel
//! must set EFER.NXE before using a table with a non-executable mapping.

use crate::addr::HostPhysAddr;
use crate::pte::{EntryFormat, Level, Perms};

/// The NPT (long-mode page table) entry format (marker type).
#[derive(Clone, Copy, Debug)]
pub struct Npt;

const P: u64 = 1 << 0;
const W: u64 = 1 << 1;
const U: u64 = 1 << 2;
const NX: u64 = 1 << 63;

impl EntryFormat for Npt {
    const NAME: &'static str = "NPT";
    const ACCESSED: u64 = 1 << 5;
    const DIRTY: u64 = 1 << 6;
    /// Bit 9: available to software (AVL) at every level.
    const RESCAN: u64 = 1 << 9;

    #[inline(always)]
    fn is_present(entry: u64) -> bool {
        entry & P != 0
    }
    fn perms(entry: u64) -> Perms {
        Perms {
            read: entry & P != 0,
            write: entry & W != 0,
            exec: entry & NX == 0,
        }
    }
    fn make_table(table: HostPhysAddr) -> u64 {
        (table.as_u64() & Self::ADDR_MASK) | P | W | U | Self::ACCESSED
    }
    fn make_leaf(frame: HostPhysAddr, level: Level, perms: Perms) -> u64 {
        let large = if level > Level::PAGE_4K {
            Self::LARGE
        } else {
            0
        };
        (frame.as_u64() & Self::ADDR_MASK) | large | U | rights(perms)
    }
    fn with_perms(entry: u64, perms: Perms) -> u64 {
        (entry & !(P | W | NX)) | rights(perms)
    }
}

fn rights(perms: Perms) -> u64 {
    (if perms.read { P } else { 0 })
        | (if perms.write { W } else { 0 })
        | (if perms.exec { 0 } else { NX })
}

/// The VMCB's nested CR3 for a table rooted at `pml4`: write-back
/// (PWT = PCD = 0), so only the address bits are set.
pub const fn ncr3(pml4: HostPhysAddr) -> u64 {
    pml4.as_u64() & 0x000F_FFFF_FFFF_F000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_and_table_bits() {
        let leaf = Npt::make_leaf(HostPhysAddr::new(0x4000_0000), Level::PAGE_1G, Perms::RW);
        assert_eq!(leaf, 0x4000_0000 | NX | (1 << 7) | 0b111);
        assert!(Npt::is_leaf(leaf, Level::PAGE_1G));
        assert_eq!(Npt::perms(leaf), Perms::RW);
        let x = Npt::with_perms(leaf | Npt::ACCESSED, Perms::RX);
        assert_eq!(x, 0x4000_0000 | (1 << 7) | 0b101 | Npt::ACCESSED);
        assert_eq!(Npt::make_table(HostPhysAddr::new(0x7000)), 0x7027);
        assert_eq!(ncr3(HostPhysAddr::new(0x7000)), 0x7000);
        assert_eq!(Npt::level_size(Level::PAGE_4K), 4096);
        assert_eq!(Npt::level_size(Level::PAGE_1G), 1 << 30);
        assert_eq!(Npt::index(0x4020_3000, Level::PAGE_4K), 3);
        assert_eq!(Npt::index(0x4020_3000, Level::PAGE_2M), 1);
        assert_eq!(Npt::index(0x4020_3000, Level::PAGE_1G), 1);
        assert_eq!(Npt::space_size(), 1 << 48);
    }
}
