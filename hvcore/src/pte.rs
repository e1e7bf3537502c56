//! Second-level page-table entry formats behind one trait.
//!
//! [`EntryFormat`] describes one format: where the present, large-page,
//! accessed and dirty bits are, how a frame address and permissions are
//! encoded, and the geometry (levels, entries per table). The walker
//! ([`crate::walk`]), the table manager ([`crate::table`]) and the aging pass
//! ([`crate::age`]) are generic over it, so one walker serves both vendors:
//! [`crate::ept::Ept`] (Intel SDM, "EPT Translation Mechanism") and
//! [`crate::npt::Npt`] (AMD APM vol. 2, "Nested Paging"). Tests plug in a
//! format with tiny tables so loom can explore whole walks.
//!
//! Levels count from the leaf: level 1 maps 4 KiB, level 2 maps 2 MiB
//! (a leaf there is a "large" page), level 3 maps 1 GiB, level 4 is the root
//! (PML4), whose entries are never leaves. A level is a [`Level`], never a
//! bare integer, so a level cannot be passed where a count or an index is
//! meant.
//!
//! Entries are plain `u64` values here; the atomics that hold them live in
//! table pages reached through [`crate::table::TableMemory`].

use crate::addr::HostPhysAddr;

/// A level of a second-level table tree, counted from the leaf (1 = the
/// 4 KiB level). Always within `1..=`[`Level::MAX`].
///
/// `#[repr(transparent)]` over a `u8` and every method `#[inline]` and
/// branch-free where it can be: the walker keeps its level in one, so the
/// aging pass compiles to what it did with a bare `u8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Level(u8);

impl Level {
    /// Level 1: entries map 4 KiB pages (x86 geometry).
    pub const PAGE_4K: Level = Level(1);
    /// Level 2: leaves map 2 MiB pages (x86 geometry).
    pub const PAGE_2M: Level = Level(2);
    /// Level 3: leaves map 1 GiB pages (x86 geometry).
    pub const PAGE_1G: Level = Level(3);
    /// Level 4: the root of a 4-level tree (PML4), whose entries are never
    /// leaves.
    pub const PML4: Level = Level(4);
    /// The deepest tree the walker supports. 5-level EPT/NPT would raise
    /// this to 5 and [`crate::walk::MAX_LEVELS`] with it.
    pub const MAX: Level = Level(crate::walk::MAX_LEVELS as u8);

    /// Level `n`, or `None` outside `1..=`[`Level::MAX`].
    #[inline]
    pub const fn new(n: u8) -> Option<Level> {
        if n >= 1 && n <= Level::MAX.0 {
            Some(Level(n))
        } else {
            None
        }
    }
    /// The level as a number (1 = the 4 KiB level).
    #[inline(always)]
    pub const fn get(self) -> u8 {
        self.0
    }
    /// Position of this level in an array with one element per level
    /// (`[_; MAX_LEVELS]`): 0 for level 1.
    #[inline(always)]
    pub const fn array_index(self) -> usize {
        self.0 as usize - 1
    }
    /// The level below (whose tables this level's non-leaf entries point
    /// to), or `None` at level 1.
    #[inline(always)]
    pub const fn next_lower(self) -> Option<Level> {
        if self.0 > 1 {
            Some(Level(self.0 - 1))
        } else {
            None
        }
    }
    /// The level above, or `None` at [`Level::MAX`].
    #[inline(always)]
    pub const fn next_higher(self) -> Option<Level> {
        if self.0 < Level::MAX.0 {
            Some(Level(self.0 + 1))
        } else {
            None
        }
    }
    /// Bytes of guest-physical space one entry at this level covers in a
    /// tree with `index_bits` index bits per level (9 for EPT and NPT: 4 KiB
    /// at level 1, 2 MiB at level 2, 1 GiB at level 3). Formats call it as
    /// [`EntryFormat::level_size`], which passes their own geometry.
    #[inline(always)]
    pub const fn page_bytes(self, index_bits: u32) -> u64 {
        1u64 << self.shift(index_bits)
    }
    /// The bit position of the lowest address bit that selects an entry at
    /// this level: 12 at level 1.
    #[inline(always)]
    const fn shift(self, index_bits: u32) -> u32 {
        12 + index_bits * (self.0 as u32 - 1)
    }
    /// All levels from `top` down to level 1, highest first.
    pub fn down_from(top: Level) -> impl Iterator<Item = Level> {
        (1..=top.0).rev().map(Level)
    }
}

impl core::fmt::Display for Level {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "level {}", self.0)
    }
}

/// Access rights of a mapping, the same for both vendors.
///
/// EPT cannot express write-without-read (a misconfiguration, Intel SDM
/// "EPT Misconfigurations"); NPT cannot express write- or execute-only
/// (its present bit is the read right). [`Perms::is_valid`] rejects both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Perms {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Instruction fetches allowed.
    pub exec: bool,
}

impl Perms {
    /// Read, write and execute.
    pub const RWX: Perms = Perms {
        read: true,
        write: true,
        exec: true,
    };
    /// Read and write, no execute.
    pub const RW: Perms = Perms {
        read: true,
        write: true,
        exec: false,
    };
    /// Read only.
    pub const R: Perms = Perms {
        read: true,
        write: false,
        exec: false,
    };
    /// Read and execute.
    pub const RX: Perms = Perms {
        read: true,
        write: false,
        exec: true,
    };

    /// Whether both formats can encode these rights: every mapping must be
    /// readable (a non-readable mapping is an unmapped page).
    pub const fn is_valid(self) -> bool {
        self.read
    }
}

/// One second-level entry format and its table geometry.
///
/// Implementors are zero-sized markers; every method is a pure function of
/// the entry value, so the walker's generated code is the same as if the
/// bits were hard-coded.
pub trait EntryFormat: Copy + Send + Sync + core::fmt::Debug + 'static {
    /// Short name for messages ("EPT", "NPT").
    const NAME: &'static str;
    /// Number of levels; the root table is at this level.
    const LEVELS: Level = Level::PML4;
    /// Highest level at which an entry may be a leaf (1 GiB pages).
    const MAX_LEAF_LEVEL: Level = Level::PAGE_1G;
    /// Index bits per level: 512 entries per 4 KiB table.
    const INDEX_BITS: u32 = 9;
    /// The accessed bit, in leaf and non-leaf entries.
    const ACCESSED: u64;
    /// The dirty bit (leaf entries only).
    const DIRTY: u64;
    /// A bit the CPU ignores in non-leaf entries, used by the aging pass to
    /// mark a non-leaf entry whose A it cleared: the next pass scans that
    /// table again even if A stays clear (see [`crate::age`]).
    const RESCAN: u64;
    /// Bits 62:52: the generation tag of the entry (see
    /// [`crate::generations`]). The CPU ignores them in every leaf and
    /// non-leaf entry of both formats as Thermocline runs them: in EPT as
    /// long as the features that give bits 57, 58, 60 and 61 a meaning
    /// (guest-paging verification, paging-write access, supervisor shadow
    /// stacks, sub-page write permissions; Intel SDM "EPT Translation
    /// Mechanism", tables of EPT entry formats) are off, which Thermocline
    /// never turns on; in NPT bits 58:52 are available to software and bits
    /// 62:59 hold a protection key only when the host runs with CR4.PKE=1,
    /// which Thermocline never sets (AMD APM vol. 2, "Long-Mode Page
    /// Translation", "Protection Keys").
    const GEN_MASK: u64 = 0x7ff << 52;
    /// Bits that change under a writer without changing what the entry
    /// maps: A and D (the CPU), the rescan mark and the generation tag (the
    /// aging pass). Compare-exchange loops retry when only these moved.
    const MOVING: u64 = Self::ACCESSED | Self::DIRTY | Self::RESCAN | Self::GEN_MASK;
    /// The large-page bit ("PS"): the entry at level 2 or 3 is a leaf.
    const LARGE: u64 = 1 << 7;
    /// Bits holding the frame or table address (51:12).
    const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

    /// Entries per table.
    const ENTRIES: usize = 1 << Self::INDEX_BITS;

    /// Whether the entry maps anything (leaf or table).
    fn is_present(entry: u64) -> bool;
    /// Permissions of a present entry.
    fn perms(entry: u64) -> Perms;
    /// A non-leaf entry pointing at `table`, with full rights (rights are
    /// enforced at the leaf) and A set, so the next aging pass descends
    /// into it (see [`crate::age`] on subtree skipping).
    fn make_table(table: HostPhysAddr) -> u64;
    /// A leaf at `level` mapping `frame` with `perms`, A and D clear.
    fn make_leaf(frame: HostPhysAddr, level: Level, perms: Perms) -> u64;
    /// `entry` (a leaf) with its rights replaced by `perms`; A, D, frame and
    /// the large bit are kept.
    fn with_perms(entry: u64, perms: Perms) -> u64;

    /// The generation tag held by the entry (0 to 2047).
    #[inline(always)]
    fn gen_tag(entry: u64) -> u64 {
        (entry & Self::GEN_MASK) >> 52
    }
    /// `entry` with its generation tag replaced by `tag` (0 to 2047).
    #[inline(always)]
    fn with_gen_tag(entry: u64, tag: u64) -> u64 {
        (entry & !Self::GEN_MASK) | ((tag << 52) & Self::GEN_MASK)
    }

    /// Whether a present entry at `level` is a leaf.
    #[inline(always)]
    fn is_leaf(entry: u64, level: Level) -> bool {
        level == Level::PAGE_4K || (level <= Self::MAX_LEAF_LEVEL && entry & Self::LARGE != 0)
    }
    /// Whether the entry is present and points at a table.
    #[inline(always)]
    fn is_table(entry: u64, level: Level) -> bool {
        level > Level::PAGE_4K && Self::is_present(entry) && !Self::is_leaf(entry, level)
    }
    /// The frame or table address held by the entry.
    #[inline(always)]
    fn addr(entry: u64) -> HostPhysAddr {
        HostPhysAddr::new(entry & Self::ADDR_MASK)
    }
    /// Bytes of guest-physical space one entry at `level` covers.
    #[inline(always)]
    fn level_size(level: Level) -> u64 {
        level.page_bytes(Self::INDEX_BITS)
    }
    /// Index of `gpa` in a table at `level`.
    #[inline(always)]
    fn index(gpa: u64, level: Level) -> usize {
        ((gpa >> level.shift(Self::INDEX_BITS)) as usize) & (Self::ENTRIES - 1)
    }
    /// Bytes of guest-physical space the whole structure covers.
    fn space_size() -> u64 {
        Self::level_size(Self::LEVELS) << Self::INDEX_BITS
    }
}

/// A test format: NPT bits with 2-entry tables and two levels, so that a
/// whole walk is a handful of atomic operations and loom can enumerate every
/// interleaving of it. Level 2 leaves are "large pages" of 8 KiB.
#[derive(Clone, Copy, Debug)]
pub struct TinyFormat;

impl EntryFormat for TinyFormat {
    const NAME: &'static str = "tiny";
    const LEVELS: Level = Level::PAGE_2M;
    const MAX_LEAF_LEVEL: Level = Level::PAGE_2M;
    const INDEX_BITS: u32 = 1;
    const ACCESSED: u64 = crate::npt::Npt::ACCESSED;
    const DIRTY: u64 = crate::npt::Npt::DIRTY;
    const RESCAN: u64 = crate::npt::Npt::RESCAN;

    fn is_present(entry: u64) -> bool {
        crate::npt::Npt::is_present(entry)
    }
    fn perms(entry: u64) -> Perms {
        crate::npt::Npt::perms(entry)
    }
    fn make_table(table: HostPhysAddr) -> u64 {
        crate::npt::Npt::make_table(table)
    }
    fn make_leaf(frame: HostPhysAddr, level: Level, perms: Perms) -> u64 {
        crate::npt::Npt::make_leaf(frame, level, perms)
    }
    fn with_perms(entry: u64, perms: Perms) -> u64 {
        crate::npt::Npt::with_perms(entry, perms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_outside_the_tree_do_not_exist() {
        assert_eq!(Level::new(0), None);
        assert_eq!(Level::new(1), Some(Level::PAGE_4K));
        assert_eq!(Level::new(4), Some(Level::PML4));
        assert_eq!(Level::new(Level::MAX.get() + 1), None);
    }

    #[test]
    fn stepping_stops_at_both_ends() {
        assert_eq!(Level::PAGE_4K.next_lower(), None);
        assert_eq!(Level::PAGE_2M.next_lower(), Some(Level::PAGE_4K));
        assert_eq!(Level::PAGE_1G.next_higher(), Some(Level::PML4));
        assert_eq!(Level::MAX.next_higher(), None);
        let all: [Level; 4] = [Level::PML4, Level::PAGE_1G, Level::PAGE_2M, Level::PAGE_4K];
        assert!(Level::down_from(Level::PML4).eq(all));
        assert!(Level::down_from(Level::PAGE_4K).eq([Level::PAGE_4K]));
    }

    #[test]
    fn page_bytes_follow_the_geometry() {
        assert_eq!(Level::PAGE_4K.page_bytes(9), 4096);
        assert_eq!(Level::PAGE_2M.page_bytes(9), 2 << 20);
        assert_eq!(Level::PAGE_1G.page_bytes(9), 1 << 30);
        assert_eq!(Level::PML4.page_bytes(9), 512 << 30);
        // The loom format: 2 entries per table, so level 2 maps 8 KiB.
        assert_eq!(TinyFormat::level_size(Level::PAGE_2M), 8192);
        assert_eq!(TinyFormat::index(0x2000, Level::PAGE_4K), 0);
        assert_eq!(TinyFormat::index(0x2000, Level::PAGE_2M), 1);
        assert_eq!(Level::PAGE_4K.array_index(), 0);
        assert_eq!(Level::PML4.array_index(), 3);
    }
}
