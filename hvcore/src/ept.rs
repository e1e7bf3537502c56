//! Intel EPT entries and the EPT pointer.
//!
//! Follows the Intel SDM, vol. 3C, "EPT Translation Mechanism",
//! "Accessed and Dirty Flags for EPT" and "Virtual-Machine Control
//! Structures: Extended-Page-Table Pointer (EPTP)".
//!
//! ```text
//!  63      52 51              12 11 10  9   8   7   6  5 4 3  2   1   0
//! +----------+------------------+-----+---+---+---+---+------+---+---+---+
//! | ignored  | frame / table PA | ign | D | A | PS|IPAT| type | X | W | R |
//! +----------+------------------+-----+---+---+---+---+------+---+---+---+
//! ```
//! An entry is present when any of R/W/X is set. Leaves carry the memory type
//! (bits 5:3, write-back = 6); non-leaf entries must keep bits 7:3 clear
//! (reserved), except A (bit 8), which the CPU sets when it walks through
//! the entry if the EPTP enables A/D flags (bit 6).

use crate::addr::HostPhysAddr;
use crate::pte::{EntryFormat, Level, Perms};

/// The EPT entry format (marker type).
#[derive(Clone, Copy, Debug)]
pub struct Ept;

const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const X: u64 = 1 << 2;
/// Write-back memory type in bits 5:3 of a leaf.
const MEMTYPE_WB: u64 = 6 << 3;

impl EntryFormat for Ept {
    const NAME: &'static str = "EPT";
    const ACCESSED: u64 = 1 << 8;
    const DIRTY: u64 = 1 << 9;
    /// Bit 11: ignored by the CPU in every EPT paging-structure entry.
    const RESCAN: u64 = 1 << 11;

    #[inline(always)]
    fn is_present(entry: u64) -> bool {
        entry & (R | W | X) != 0
    }
    fn perms(entry: u64) -> Perms {
        Perms {
            read: entry & R != 0,
            write: entry & W != 0,
            exec: entry & X != 0,
        }
    }
    fn make_table(table: HostPhysAddr) -> u64 {
        (table.as_u64() & Self::ADDR_MASK) | R | W | X | Self::ACCESSED
    }
    fn make_leaf(frame: HostPhysAddr, level: Level, perms: Perms) -> u64 {
        let large = if level > Level::PAGE_4K {
            Self::LARGE
        } else {
            0
        };
        (frame.as_u64() & Self::ADDR_MASK) | MEMTYPE_WB | large | rights(perms)
    }
    fn with_perms(entry: u64, perms: Perms) -> u64 {
        (entry & !(R | W | X)) | rights(perms)
    }
}

fn rights(perms: Perms) -> u64 {
    (if perms.read { R } else { 0 })
        | (if perms.write { W } else { 0 })
        | (if perms.exec { X } else { 0 })
}

/// Builds the EPT pointer for a VMCS: a 4-level walk of write-back tables
/// rooted at `pml4`, with accessed/dirty flags enabled when `ad_enabled`
/// (only if IA32_VMX_EPT_VPID_CAP bit 21 says the CPU supports them).
///
/// ```text
///  63   52 51             12 11   7   6    5   3  2   0
/// +-------+-----------------+-------+----+-------+------+
/// |   0   |   PML4 address  |   0   | AD | len-1 | type |
/// +-------+-----------------+-------+----+-------+------+
/// ```
pub const fn eptp(pml4: HostPhysAddr, ad_enabled: bool) -> u64 {
    const WALK_LENGTH_4: u64 = (4 - 1) << 3;
    const TYPE_WB: u64 = 6;
    const AD_ENABLE: u64 = 1 << 6;
    (pml4.as_u64() & 0x000F_FFFF_FFFF_F000)
        | WALK_LENGTH_4
        | TYPE_WB
        | if ad_enabled { AD_ENABLE } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eptp_layout() {
        let p = eptp(HostPhysAddr::new(0x1234_5000), true);
        assert_eq!(p, 0x1234_5000 | 0x5e);
        assert_eq!(eptp(HostPhysAddr::new(0x1000), false), 0x101e);
    }

    #[test]
    fn leaf_and_table_bits() {
        let leaf = Ept::make_leaf(HostPhysAddr::new(0x20_0000), Level::PAGE_2M, Perms::RW);
        assert_eq!(leaf, 0x20_0000 | (6 << 3) | (1 << 7) | 0b011);
        assert!(Ept::is_present(leaf) && Ept::is_leaf(leaf, Level::PAGE_2M));
        assert_eq!(Ept::perms(leaf), Perms::RW);
        assert_eq!(
            Ept::with_perms(leaf | Ept::DIRTY, Perms::RX),
            0x20_0000 | (6 << 3) | (1 << 7) | 0b101 | Ept::DIRTY
        );
        let table = Ept::make_table(HostPhysAddr::new(0x5000));
        assert_eq!(table, 0x5000 | 0x107);
        assert!(Ept::is_table(table, Level::PAGE_2M) && !Ept::is_table(table, Level::PAGE_4K));
        // A 4 KiB leaf never has the large bit, and bit 7 is ignored there.
        assert_eq!(
            Ept::make_leaf(HostPhysAddr::new(0x3000), Level::PAGE_4K, Perms::R),
            0x3000 | 0x31
        );
        assert!(!Ept::is_present(Ept::ACCESSED | Ept::DIRTY | 0x1000));
    }
}
