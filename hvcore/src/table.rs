//! Table pages, the shared tree, and the table manager (writer).
//!
//! * [`TableMemory`]: how the core reaches a table page from its host
//!   physical address. The kernel implements it over its map of physical
//!   memory (the only `unsafe` involved lives there); host tests and
//!   benchmarks use `arena::HostArena` (feature `std`).
//! * [`TableAlloc`]: where table pages come from and go back to (the
//!   kernel's frame allocator).
//! * [`Table`]: the layout of one 4 KiB table page, with compile-time checks.
//! * [`Tables`]: one guest's tree (root, memory, epoch domain). Shared by
//!   everyone (`&self`): the aging thread, vCPU fault paths, queries. All of
//!   its walks are lockless.
//! * [`Mapper`]: the writer. Map, unmap, split, collapse and protect change
//!   the *structure* of the tree, so they are serialised by the caller (one
//!   `Mapper` per guest behind the guest's lock, `&mut self`). They still use
//!   atomic operations on entries, because the CPU's page walker (A/D bits)
//!   and the aging pass change entries at the same time.
//!
//! # Rules writers follow
//! 1. A new table page is fully written (zeroed) before the release store
//!    that links it, so lockless walkers (acquire loads) see it initialised.
//! 2. Entries are removed with `swap(0)`, so A/D bits the CPU set up to that
//!    instant are returned to the writer (a dirty bit is never lost on
//!    unmap); after the swap the CPU cannot set them any more (it faults on a
//!    non-present entry instead of writing A/D into it).
//! 3. Entries that stay present change only through the one compare-exchange
//!    helper, [`crate::entry::update_entry`] (protect, split, collapse,
//!    setting A), which keeps the A/D bits the CPU sets meanwhile and
//!    checks these rules with debug assertions.
//! 4. When software introduces an accessed bit the CPU did not set (collapse
//!    ORs the children's A into the new huge leaf), it sets A on the
//!    ancestors *afterwards*, so a later aging pass cannot skip the subtree
//!    (see [`crate::age`]).
//! 5. An unlinked table page is zeroed, retired with an epoch
//!    ([`crate::epoch`]), and freed only after the caller reported a TLB flush
//!    ([`Mapper::tlb_flushed`]) *and* every walker that could have seen it has
//!    unpinned ([`Mapper::reclaim`]). Retired pages are chained through their
//!    own first two entries (values with bits 11:0 clear, which are
//!    non-present in both formats, so a late walker reads them as holes).
//! 6. Generation tags ([`EntryFormat::GEN_MASK`]) belong to the
//!    aging pass ([`crate::generations`]): new entries start with tag 0
//!    (old); a split gives the new table entry and its children the huge
//!    leaf's tag; a collapse gives the huge leaf the table entry's tag
//!    (the helper asserts a split or collapse keeps it); its exchange is
//!    retried when only [`EntryFormat::MOVING`] bits changed
//!    ([`crate::entry::Retry::WhileSame`]).

use crate::addr::{GuestPhysAddr, HostPhysAddr};
use crate::entry::{Change, Retry, Update, update_entry};
use crate::epoch::EpochDomain;
use crate::pte::{EntryFormat, Level, Perms};
use crate::sync::{AtomicU64, Ordering};
use crate::walk::Walk;
use core::marker::PhantomData;

/// Reaches table pages by host-physical address.
pub trait TableMemory {
    /// The entries of the table page at `table`, or `None` if `table` is not
    /// a table page this memory knows (the walk then goes around it).
    /// The slice must have `F::ENTRIES` entries for the format in use.
    fn table(&self, table: HostPhysAddr) -> Option<&[AtomicU64]>;
}

impl<T: TableMemory + ?Sized> TableMemory for &T {
    fn table(&self, table: HostPhysAddr) -> Option<&[AtomicU64]> {
        (**self).table(table)
    }
}

/// Provides and takes back 4 KiB table pages.
pub trait TableAlloc {
    /// A page for a table, or `None` when memory is exhausted. Its contents
    /// need not be zero: the [`Mapper`] clears it before linking it.
    fn alloc_table(&mut self) -> Option<HostPhysAddr>;
    /// Takes back a page that no walker can reach any more.
    fn free_table(&mut self, table: HostPhysAddr);
}

impl<T: TableAlloc + ?Sized> TableAlloc for &mut T {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        (**self).alloc_table()
    }
    fn free_table(&mut self, table: HostPhysAddr) {
        (**self).free_table(table)
    }
}

/// One 4 KiB table page of 512 entries (EPT and NPT alike), as the CPU
/// reads it. The kernel views physical table pages as this type.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct Table {
    /// The entries; the CPU sets A/D bits in them with locked operations.
    pub entries: [AtomicU64; 512],
}

#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::size_of::<Table>() == 4096);
    assert!(core::mem::align_of::<Table>() == 4096);
    assert!(core::mem::size_of::<AtomicU64>() == 8);
};

#[cfg(not(loom))]
impl Table {
    /// An empty (all non-present) table.
    pub const fn new() -> Self {
        Table {
            entries: [const { AtomicU64::new(0) }; 512],
        }
    }
}

#[cfg(not(loom))]
impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

/// What went wrong in a table operation. No variant leaves the tree
/// half-changed in a way walkers or the CPU could misread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// An address or size is not 4 KiB aligned, or a range is empty.
    Unaligned,
    /// The range goes past the space the format can translate.
    OutOfRange,
    /// The permissions cannot be encoded (see [`Perms::is_valid`]).
    BadPerms,
    /// Part of the range is already mapped (at this guest address).
    AlreadyMapped(GuestPhysAddr),
    /// The allocator had no page for a table.
    OutOfMemory,
    /// Nothing suitable is mapped there (split/collapse target).
    NotMapped(GuestPhysAddr),
    /// Collapse: the children are not one contiguous, aligned, uniform run.
    NotCollapsible(GuestPhysAddr),
    /// The mapper was used with the tables of another guest.
    WrongTables,
}

/// The largest page size a mapping may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB pages only.
    Size4K = 1,
    /// Up to 2 MiB pages.
    Size2M = 2,
    /// Up to 1 GiB pages.
    Size1G = 3,
}

impl PageSize {
    /// The highest level at which a mapping of this size may put a leaf.
    #[inline]
    pub const fn max_level(self) -> Level {
        match self {
            PageSize::Size4K => Level::PAGE_4K,
            PageSize::Size2M => Level::PAGE_2M,
            PageSize::Size1G => Level::PAGE_1G,
        }
    }
}

/// A translation found by [`Tables::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address of the guest address asked for.
    pub hpa: HostPhysAddr,
    /// The level of the leaf.
    pub level: Level,
    /// Rights of the leaf.
    pub perms: Perms,
    /// Accessed bit of the leaf.
    pub accessed: bool,
    /// Dirty bit of the leaf.
    pub dirty: bool,
}

/// What a writer operation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// 4 KiB pages whose translation changed.
    pub pages: u64,
    /// Of those, pages whose leaf had D set when it was removed.
    pub dirty_pages: u64,
    /// Whether a TLB flush is needed before the change is complete (a
    /// translation was removed, narrowed or replaced).
    pub flush_needed: bool,
}

impl Changed {
    fn add(&mut self, other: Changed) {
        self.pages += other.pages;
        self.dirty_pages += other.dirty_pages;
        self.flush_needed |= other.flush_needed;
    }
}

/// One guest's second-level table tree, shared by every walker.
#[derive(Debug)]
pub struct Tables<F: EntryFormat, M: TableMemory> {
    root: HostPhysAddr,
    mem: M,
    epoch: EpochDomain,
    _f: PhantomData<F>,
}

impl<F: EntryFormat, M: TableMemory> Tables<F, M> {
    /// An empty tree whose root page comes from `alloc`.
    pub fn new<A: TableAlloc>(mem: M, alloc: &mut A) -> Result<Self, MapError> {
        let root = alloc.alloc_table().ok_or(MapError::OutOfMemory)?;
        let entries = mem
            .table(root)
            .filter(|t| t.len() == F::ENTRIES)
            .ok_or(MapError::OutOfMemory)?;
        for e in entries {
            e.store(0, Ordering::Relaxed);
        }
        Ok(Tables {
            root,
            mem,
            epoch: EpochDomain::new(),
            _f: PhantomData,
        })
    }

    /// Host-physical address of the root (PML4) table: what goes into the
    /// EPTP ([`crate::ept::eptp`]) or the VMCB's nCR3 ([`crate::npt::ncr3`]).
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// The memory through which table pages are reached.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The epoch domain that protects this tree's pages.
    pub fn epoch(&self) -> &EpochDomain {
        &self.epoch
    }

    /// A lockless walk over `[start, end)` down to `min_level`, yielding only
    /// entries with some bit of `filter` set (0: every entry). The walk pins
    /// the tree's epoch until it is dropped.
    pub fn walk(&self, start: u64, end: u64, min_level: Level, filter: u64) -> Walk<'_, F, M> {
        let guard = self.epoch.pin();
        let root = self.mem.table(self.root).unwrap_or(&[]);
        Walk::new(&self.mem, guard, root, start, end, min_level, filter)
    }

    /// The leaf translating `gpa`, if any.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<Translation> {
        let g = gpa.as_u64();
        let mut walk = self.walk(g, g.checked_add(1)?, Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            if !F::is_present(e.old) {
                return None;
            }
            if F::is_leaf(e.old, e.level) {
                let offset = g & (F::level_size(e.level) - 1);
                return Some(Translation {
                    hpa: HostPhysAddr::new(F::addr(e.old).as_u64() + offset),
                    level: e.level,
                    perms: F::perms(e.old),
                    accessed: e.old & F::ACCESSED != 0,
                    dirty: e.old & F::DIRTY != 0,
                });
            }
        }
        None
    }

    /// Calls `f(gpa, level, entry)` for every present leaf overlapping
    /// `[start, end)` (a lockless snapshot; used by tests and reports).
    pub fn for_each_leaf(&self, start: u64, end: u64, mut f: impl FnMut(u64, Level, u64)) {
        let mut walk = self.walk(start, end, Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            if F::is_present(e.old) && F::is_leaf(e.old, e.level) {
                f(e.gpa, e.level, e.old);
            }
        }
    }

    /// Sets `bits` (A, or A and D) on the leaf that maps `gpa`, as the CPU
    /// would on an access, then A on its ancestors (rule 4), so that the
    /// next aging pass finds the page young. For the hypervisor's own
    /// accesses to guest memory and for pages it has just faulted in.
    /// False, and nothing written, when no leaf maps `gpa` (compare-exchanges
    /// throughout, so an entry unmapped meanwhile is never given bits).
    pub fn mark_accessed(&self, gpa: GuestPhysAddr, bits: u64) -> bool {
        let g = gpa.as_u64();
        let Some(end) = g.checked_add(1) else {
            return false;
        };
        let bits = bits & (F::ACCESSED | F::DIRTY);
        let mut ancestors: [Option<&AtomicU64>; crate::walk::MAX_LEVELS] =
            [None; crate::walk::MAX_LEVELS];
        let mut walk = self.walk(g, end, Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            if !F::is_present(e.old) {
                return false;
            }
            let slot = walk.slot();
            if !F::is_leaf(e.old, e.level) {
                ancestors[e.level.array_index()] = Some(slot);
                continue;
            }
            let level = e.level;
            let update = update_entry::<F>(slot, e.old, Change::Moving, Retry::Always, |cur| {
                (F::is_present(cur) && F::is_leaf(cur, level)).then_some(cur | bits)
            });
            if let Update::Declined(_) = update {
                return false;
            }
            for a in ancestors.iter().flatten() {
                set_accessed_if_table::<F>(a);
            }
            return true;
        }
        false
    }
}

/// Sets A on an ancestor entry (rule 4) if it still points to a table: an
/// entry a writer removed or replaced by a leaf meanwhile is left alone, so
/// a non-present entry is never given bits.
fn set_accessed_if_table<F: EntryFormat>(slot: &AtomicU64) {
    // Any level from 2 up reads a table entry the same way (present, not
    // large).
    update_entry::<F>(
        slot,
        slot.load(Ordering::Acquire),
        Change::Moving,
        Retry::Always,
        |cur| F::is_table(cur, Level::PAGE_2M).then_some(cur | F::ACCESSED),
    );
}

/// The writer of one guest's tree. See the module docs for its rules.
#[derive(Debug)]
pub struct Mapper<A: TableAlloc> {
    alloc: A,
    root: HostPhysAddr,
    retired_head: Option<HostPhysAddr>,
    retired_tail: Option<HostPhysAddr>,
    retired_pages: u64,
    flushed_epoch: u64,
}

impl<A: TableAlloc> Mapper<A> {
    /// A writer for `tables`, taking table pages from `alloc`.
    pub fn new<F: EntryFormat, M: TableMemory>(tables: &Tables<F, M>, alloc: A) -> Self {
        Mapper {
            alloc,
            root: tables.root,
            retired_head: None,
            retired_tail: None,
            retired_pages: 0,
            flushed_epoch: 0,
        }
    }

    /// The allocator.
    pub fn alloc_mut(&mut self) -> &mut A {
        &mut self.alloc
    }

    /// Unlinked table pages not yet given back.
    pub fn retired_pages(&self) -> u64 {
        self.retired_pages
    }

    fn check<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        gpa: u64,
        size: u64,
    ) -> Result<u64, MapError> {
        if tables.root != self.root {
            return Err(MapError::WrongTables);
        }
        if !gpa.is_multiple_of(4096) || !size.is_multiple_of(4096) || size == 0 {
            return Err(MapError::Unaligned);
        }
        let end = gpa.checked_add(size).ok_or(MapError::OutOfRange)?;
        if end > F::space_size() {
            return Err(MapError::OutOfRange);
        }
        Ok(end)
    }

    fn new_table<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
    ) -> Result<HostPhysAddr, MapError> {
        let page = self.alloc.alloc_table().ok_or(MapError::OutOfMemory)?;
        let Some(entries) = tables.mem.table(page).filter(|t| t.len() == F::ENTRIES) else {
            self.alloc.free_table(page);
            return Err(MapError::OutOfMemory);
        };
        for e in entries {
            e.store(0, Ordering::Relaxed);
        }
        Ok(page)
    }

    /// Maps `[gpa, gpa + size)` to `[hpa, hpa + size)` with `perms`, using
    /// the largest pages up to `max_page` that the alignment of both
    /// addresses allows. Fails without changing anything if any part of the
    /// range is already mapped; when table pages run out, the part already
    /// mapped is unmapped again (its table pages are retired as usual).
    /// New leaves have A and D clear.
    pub fn map<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: u64,
        perms: Perms,
        max_page: PageSize,
    ) -> Result<Changed, MapError> {
        let (g, h) = (gpa.as_u64(), hpa.as_u64());
        let end = self.check(tables, g, size)?;
        if !h.is_multiple_of(4096) {
            return Err(MapError::Unaligned);
        }
        h.checked_add(size).ok_or(MapError::OutOfRange)?;
        if !perms.is_valid() {
            return Err(MapError::BadPerms);
        }
        let mut existing = None;
        tables.for_each_leaf(g, end, |leaf_gpa, _, _| {
            existing.get_or_insert(leaf_gpa.max(g));
        });
        if let Some(at) = existing {
            return Err(MapError::AlreadyMapped(GuestPhysAddr::new(at)));
        }
        let max_level = max_page.max_level().min(F::MAX_LEAF_LEVEL);
        let mut flush_needed = false;
        let mut walk = tables.walk(g, end, Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            let size_l = F::level_size(e.level);
            let inside = walk.covered() == size_l;
            let frame = h.wrapping_add(e.gpa.wrapping_sub(g));
            let fits = inside && e.level <= max_level && frame.is_multiple_of(size_l);
            if F::is_present(e.old) {
                // A table: created on the way down, or left empty by an
                // earlier unmap (the range holds no leaf: checked above).
                // Replace an empty one by the huge leaf that fits here.
                if fits && F::is_table(e.old, e.level) {
                    let leaf = F::make_leaf(HostPhysAddr::new(frame), e.level, perms);
                    let old = walk.slot().swap(leaf, Ordering::AcqRel);
                    walk.reread();
                    if F::is_table(old, e.level) {
                        self.zap_detached(tables, F::addr(old), e.level, e.gpa, &mut |_, _, _| {});
                        self.retire(tables, &[F::addr(old)]);
                    }
                    flush_needed = true;
                }
                continue;
            }
            // Rules 1 and 2: a store only ever fills a non-present entry
            // (nobody else makes one present: the CPU faults on it and the
            // helper never writes one).
            debug_assert!(!F::is_present(walk.slot().load(Ordering::Relaxed)));
            if fits {
                let leaf = F::make_leaf(HostPhysAddr::new(frame), e.level, perms);
                walk.slot().store(leaf, Ordering::Release);
            } else {
                let Ok(page) = self.new_table(tables) else {
                    // Out of table pages: undo the part already mapped.
                    drop(walk);
                    self.unmap(tables, gpa, size, |_, _, _| {})?;
                    return Err(MapError::OutOfMemory);
                };
                walk.slot().store(F::make_table(page), Ordering::Release);
            }
        }
        Ok(Changed {
            pages: size / 4096,
            dirty_pages: 0,
            flush_needed,
        })
    }

    /// Unmaps `[gpa, gpa + size)`, splitting huge pages that straddle its
    /// edges and unlinking tables that lie entirely inside it. `on_leaf`
    /// sees every removed leaf as `(gpa, level, old entry)`, D bit included
    /// (a reclaimer must save the page if D is set).
    pub fn unmap<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
        size: u64,
        mut on_leaf: impl FnMut(u64, Level, u64),
    ) -> Result<Changed, MapError> {
        let g = gpa.as_u64();
        let end = self.check(tables, g, size)?;
        let mut done = Changed::default();
        let mut walk = tables.walk(g, end, Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            if !F::is_present(e.old) {
                continue;
            }
            let inside = walk.covered() == F::level_size(e.level);
            if !inside {
                if F::is_leaf(e.old, e.level) {
                    self.split_entry(tables, walk.slot(), e.level)?;
                    done.flush_needed = true;
                }
                continue; // the walk re-reads and steps into the table
            }
            let old = walk.slot().swap(0, Ordering::AcqRel);
            walk.reread();
            if !F::is_present(old) {
                continue;
            }
            done.flush_needed = true;
            if F::is_leaf(old, e.level) {
                done.add(leaf_removed::<F>(old, e.level));
                on_leaf(e.gpa, e.level, old);
            } else {
                let removed = self.zap_detached(tables, F::addr(old), e.level, e.gpa, &mut on_leaf);
                done.add(removed);
                self.retire(tables, &[F::addr(old)]);
            }
        }
        Ok(done)
    }

    /// Empties a table that is no longer linked, retiring its sub-tables;
    /// `parent` is the level of the entry that pointed to it.
    /// This is the one loop over entries outside [`Walk`]: the subtree has no
    /// guest range any more. Entries are swapped to 0 so A/D bits the CPU set
    /// through stale paging-structure caches are collected, not lost.
    fn zap_detached<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        table: HostPhysAddr,
        parent: Level,
        base_gpa: u64,
        on_leaf: &mut impl FnMut(u64, Level, u64),
    ) -> Changed {
        let mut done = Changed::default();
        let Some(level) = parent.next_lower() else {
            return done; // a leaf level points to no table
        };
        let Some(entries) = tables.mem.table(table) else {
            return done;
        };
        for (i, slot) in entries.iter().enumerate() {
            let old = slot.swap(0, Ordering::AcqRel);
            if !F::is_present(old) {
                continue;
            }
            let gpa = base_gpa + i as u64 * F::level_size(level);
            if F::is_leaf(old, level) {
                done.add(leaf_removed::<F>(old, level));
                on_leaf(gpa, level, old);
            } else {
                done.add(self.zap_detached(tables, F::addr(old), level, gpa, on_leaf));
                self.retire(tables, &[F::addr(old)]);
            }
        }
        done
    }

    /// Replaces the huge leaf in `slot` (at `level`) by a table of
    /// `level - 1` leaves that map the same frames with the same rights and
    /// the leaf's A/D bits, with a compare-exchange that retries if the CPU
    /// or the aging pass changed A/D meanwhile.
    fn split_entry<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        slot: &AtomicU64,
        level: Level,
    ) -> Result<(), MapError> {
        let page = self.new_table(tables)?;
        let Some(children) = tables.mem.table(page) else {
            return Err(MapError::OutOfMemory);
        };
        // The children are written for the value the exchange will be
        // tried against, again on every retry (the CPU or a pass changed A,
        // D or the tag meanwhile): rule 1, the release of the exchange
        // publishes them.
        let update = update_entry::<F>(
            slot,
            slot.load(Ordering::Acquire),
            Change::Replace,
            Retry::Always,
            |old| {
                if !F::is_present(old) || !F::is_leaf(old, level) {
                    return None;
                }
                let lower = level.next_lower()?;
                let child_size = F::level_size(lower);
                let base = F::addr(old).as_u64() & !(F::level_size(level) - 1);
                // The children inherit A, D and the generation tag; the new
                // table entry carries the same tag, so the children's tags
                // decode against it exactly as the leaf's did against its
                // parent (see `crate::generations`).
                let flags = old & (F::ACCESSED | F::DIRTY | F::GEN_MASK);
                for (i, c) in children.iter().enumerate() {
                    let frame = HostPhysAddr::new(base + i as u64 * child_size);
                    c.store(
                        F::make_leaf(frame, lower, F::perms(old)) | flags,
                        Ordering::Relaxed,
                    );
                }
                Some(F::make_table(page) | (old & F::GEN_MASK))
            },
        );
        if let Update::Declined(_) = update {
            self.alloc.free_table(page); // never linked
        }
        Ok(())
    }

    /// Splits the huge leaf of `level` that maps `gpa` into a table of
    /// smaller leaves (same frames, rights, A and D).
    pub fn split<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
        level: Level,
    ) -> Result<Changed, MapError> {
        let g = gpa.as_u64() & !(F::level_size(level) - 1);
        self.check(tables, g, 4096)?;
        if level == Level::PAGE_4K || level > F::MAX_LEAF_LEVEL {
            return Err(MapError::NotMapped(gpa));
        }
        let mut walk = tables.walk(g, g + 1, level, 0);
        while let Some(e) = walk.next() {
            if e.level == level && F::is_present(e.old) && F::is_leaf(e.old, level) {
                self.split_entry(tables, walk.slot(), level)?;
                let pages = F::level_size(level) / 4096;
                return Ok(Changed {
                    pages,
                    dirty_pages: 0,
                    flush_needed: true,
                });
            }
        }
        Err(MapError::NotMapped(gpa))
    }

    /// Replaces the table under the `level` entry that covers `gpa` by one
    /// huge leaf, if its entries are leaves mapping one aligned, contiguous
    /// run of frames with the same rights. The new leaf's A and D are the OR
    /// of the children's (collected again after the swap, so bits the CPU set
    /// meanwhile are kept); A is then also set on the ancestors.
    pub fn collapse<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
        level: Level,
    ) -> Result<Changed, MapError> {
        let g = gpa.as_u64() & !(F::level_size(level) - 1);
        self.check(tables, g, 4096)?;
        let Some(lower) = level.next_lower() else {
            return Err(MapError::NotCollapsible(gpa));
        };
        if level > F::MAX_LEAF_LEVEL {
            return Err(MapError::NotCollapsible(gpa));
        }
        let mut ancestors: [Option<&AtomicU64>; crate::walk::MAX_LEVELS] =
            [None; crate::walk::MAX_LEVELS];
        let mut walk = tables.walk(g, g + 1, level, 0);
        while let Some(e) = walk.next() {
            if e.level > level {
                ancestors[e.level.array_index()] = Some(walk.slot());
                continue;
            }
            if !F::is_table(e.old, level) {
                return Err(MapError::NotCollapsible(gpa));
            }
            let table = F::addr(e.old);
            let children = tables
                .mem
                .table(table)
                .ok_or(MapError::NotCollapsible(gpa))?;
            let first = children[0].load(Ordering::Acquire);
            let child_size = F::level_size(lower);
            let perms = F::perms(first);
            let base = F::addr(first).as_u64();
            if !base.is_multiple_of(F::level_size(level)) {
                return Err(MapError::NotCollapsible(gpa));
            }
            let mut flags = 0;
            for (i, c) in children.iter().enumerate() {
                let v = c.load(Ordering::Acquire);
                let expect = F::make_leaf(
                    HostPhysAddr::new(base + i as u64 * child_size),
                    lower,
                    perms,
                );
                if !F::is_present(v) || !F::is_leaf(v, lower) || v & !F::MOVING != expect {
                    return Err(MapError::NotCollapsible(gpa));
                }
                flags |= v & (F::ACCESSED | F::DIRTY);
            }
            let leaf = F::make_leaf(HostPhysAddr::new(base), level, perms);
            // The CPU (A) and aging passes (A, rescan mark, generation tag)
            // change the table entry under us without changing the table it
            // points to: retry. The huge leaf takes the table entry's
            // generation tag, the youngest of its children's (the
            // invariant of `crate::generations`): as young as its youngest
            // page, never colder than any.
            let snapshot = e.old;
            let update = update_entry::<F>(
                walk.slot(),
                snapshot,
                Change::Replace,
                Retry::WhileSame,
                |cur| Some(leaf | flags | (cur & F::GEN_MASK)),
            );
            if let Update::Declined(_) = update {
                return Err(MapError::NotCollapsible(gpa));
            }
            let slot = walk.slot();
            drop(walk);
            // Bits the CPU set in the children until they went non-present.
            let mut late = 0;
            for c in children {
                late |= c.swap(0, Ordering::AcqRel) & (F::ACCESSED | F::DIRTY);
            }
            if late != 0 {
                update_entry::<F>(
                    slot,
                    slot.load(Ordering::Acquire),
                    Change::Moving,
                    Retry::Always,
                    |cur| F::is_present(cur).then_some(cur | late),
                );
            }
            if (flags | late) & F::ACCESSED != 0 {
                for a in ancestors.iter().flatten() {
                    set_accessed_if_table::<F>(a);
                }
            }
            self.retire(tables, &[table]);
            return Ok(Changed {
                pages: F::level_size(level) / 4096,
                dirty_pages: 0,
                flush_needed: true,
            });
        }
        Err(MapError::NotCollapsible(gpa))
    }

    /// Changes the rights of every page mapped in `[gpa, gpa + size)`,
    /// splitting huge pages that straddle the edges. A and D are kept.
    pub fn protect<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
        size: u64,
        perms: Perms,
    ) -> Result<Changed, MapError> {
        let g = gpa.as_u64();
        let end = self.check(tables, g, size)?;
        if !perms.is_valid() {
            return Err(MapError::BadPerms);
        }
        let mut done = Changed::default();
        let mut walk = tables.walk(g, end, Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            if !F::is_present(e.old) || !F::is_leaf(e.old, e.level) {
                continue;
            }
            if walk.covered() != F::level_size(e.level) {
                self.split_entry(tables, walk.slot(), e.level)?;
                done.flush_needed = true;
                continue;
            }
            let level = e.level;
            let update =
                update_entry::<F>(walk.slot(), e.old, Change::Perms, Retry::Always, |cur| {
                    (F::is_present(cur) && F::is_leaf(cur, level))
                        .then(|| F::with_perms(cur, perms))
                });
            match update {
                Update::Wrote { .. } => {
                    done.pages += F::level_size(level) / 4096;
                    done.flush_needed = true;
                }
                Update::Unchanged(_) => done.pages += F::level_size(level) / 4096,
                Update::Declined(_) => {}
            }
        }
        Ok(done)
    }

    /// Records unlinked, emptied table pages for freeing after a flush and a
    /// grace period.
    fn retire<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        pages: &[HostPhysAddr],
    ) {
        let r = tables.epoch.retire_epoch();
        for &page in pages {
            let Some(entries) = tables.mem.table(page) else {
                continue;
            };
            // Rule 5: emptied with swap(0) before it is retired.
            debug_assert!(
                entries.iter().all(|e| e.load(Ordering::Relaxed) == 0),
                "a retired table page still holds entries"
            );
            entries[0].store(0, Ordering::Release);
            entries[1].store(r << 12, Ordering::Release);
            match self.retired_tail {
                Some(tail) => {
                    if let Some(t) = tables.mem.table(tail) {
                        t[0].store(page.as_u64(), Ordering::Release);
                    }
                }
                None => self.retired_head = Some(page),
            }
            self.retired_tail = Some(page);
            self.retired_pages += 1;
        }
    }

    /// The caller flushed the guest's TLB (INVEPT / TLB control) after the
    /// changes made so far: retired pages may be freed once walkers are gone.
    /// Frees what it can and returns how many pages went back.
    pub fn tlb_flushed<F: EntryFormat, M: TableMemory>(&mut self, tables: &Tables<F, M>) -> u64 {
        self.flushed_epoch = tables.epoch.current();
        self.reclaim(tables)
    }

    /// Frees retired pages whose grace period is over and that a flush has
    /// covered; returns how many went back to the allocator.
    pub fn reclaim<F: EntryFormat, M: TableMemory>(&mut self, tables: &Tables<F, M>) -> u64 {
        let mut freed = 0;
        while let Some(page) = self.retired_head {
            let Some(entries) = tables.mem.table(page) else {
                break;
            };
            let r = entries[1].load(Ordering::Acquire) >> 12;
            if r >= self.flushed_epoch || !tables.epoch.is_quiescent(r) {
                break;
            }
            let next = entries[0].load(Ordering::Acquire);
            self.retired_head = (next != 0).then(|| HostPhysAddr::new(next));
            if self.retired_head.is_none() {
                self.retired_tail = None;
            }
            self.retired_pages -= 1;
            self.alloc.free_table(page);
            freed += 1;
        }
        freed
    }
}

fn leaf_removed<F: EntryFormat>(old: u64, level: Level) -> Changed {
    let pages = F::level_size(level) / 4096;
    Changed {
        pages,
        dirty_pages: if old & F::DIRTY != 0 { pages } else { 0 },
        flush_needed: true,
    }
}
