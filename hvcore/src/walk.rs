//! The one walk: a pre-order iterator over the entries of a second-level
//! table tree that cover `[start, end)`, down to a minimum level.
//!
//! Modelled on Linux KVM's `tdp_iter` (`arch/x86/kvm/mmu/tdp_iter.c`): the
//! iterator sits on one entry at a time and moves with three small steps,
//! `try_step_down`, `try_step_side` and
//! `try_step_up`. For each entry it yields a *snapshot* (`old`), the
//! value it read; handlers decide from the snapshot and change the entry only
//! with atomic operations that check or preserve it (see [`crate::age`]).
//! Before stepping down into the table an entry points to, the entry is
//! **re-read**: a handler may just have replaced it (split, unmap, a new
//! table), and another writer or the CPU may have changed it, so the step
//! follows the current link, never a stale one.
//!
//! Every operation of the crate is a handler driven by this iterator: aging
//! and young-tests ([`crate::age`]), map, unmap, split, collapse, protect and
//! translate ([`crate::table`]). The only other loop over table entries is
//! the teardown of a *detached* subtree ([`crate::table::Mapper`]), which no
//! longer has a guest range.
//!
//! # Lockless use
//! A walk holds an [`EpochGuard`] for its whole life (taken by
//! [`crate::table::Tables::walk`]), so every table page it can reach stays
//! allocated until it ends, even if a writer unlinks it meanwhile
//! ([`crate::epoch`]). Entries are read with `Acquire` so that a table page
//! initialised before its link was published (`Release`) is seen initialised.
//!
//! # Filtering
//! A walk may carry a `filter` mask: entries with none of those bits set are
//! not yielded, and tables behind such non-leaf entries are not entered. The
//! aging pass filters on the accessed bit, which both skips cold subtrees
//! (a non-leaf A clear: nothing under it was walked by the CPU) and, at any
//! level, reads a 64-byte line of 8 entries at once and skips it when none
//! has the bit (the cheap common case of a sparse pass). Leaf tables go
//! through [`Walk::next_batch`] in chunks of four lines
//! ([`LeafRun::for_each_chunk`]). Skipped lines and subtrees are counted in
//! [`WalkStats`].

use crate::epoch::EpochGuard;
use crate::pte::{EntryFormat, Level};
use crate::sync::{AtomicU64, Ordering};
use crate::table::TableMemory;
use core::marker::PhantomData;

/// Entries per 64-byte cache line.
const LINE: usize = 8;
/// Deepest tree supported (4-level EPT/NPT).
pub const MAX_LEVELS: usize = 4;

/// One yielded entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkEntry {
    /// Guest-physical address of the first byte the entry covers.
    pub gpa: u64,
    /// Level of the entry.
    pub level: Level,
    /// The value read for this entry (the snapshot).
    pub old: u64,
}

/// Leaf entries a handler is given at once by [`LeafRun::for_each_chunk`]:
/// four 64-byte lines. The filter test of a chunk is branch-free and the
/// chunk is skipped with one branch when nothing in it passes, so a branch
/// is mispredicted at most once per chunk on its way in and once on the way
/// out of the handler's loop over the set bits, instead of once per line
/// (8 entries) or per entry: at 10 % of entries young and randomly placed,
/// the "any bit in this line?" branch is a coin toss. 8-, 32- and 64-entry
/// chunks were measured against each other (`docs/aging.md`, "Leaf scan:
/// chunk size"); 64 is too often non-empty at 1 % young.
pub const CHUNK: usize = 32;

/// Up to [`CHUNK`] consecutive leaf entries, as [`LeafRun::for_each_chunk`]
/// hands them to a handler.
#[derive(Clone, Copy, Debug)]
pub struct LeafChunk<'a> {
    /// Guest-physical address of the first entry.
    pub gpa: u64,
    /// The entries (at most [`CHUNK`]).
    pub slots: &'a [AtomicU64],
    /// Bit `k` set: entry `k` passed the filter when the chunk was read.
    /// This read only selects entries: a handler takes its snapshot of a
    /// selected entry when it examines it (an L1 hit by then), so the
    /// snapshot it acts on is never older than the filter test.
    pub mask: u64,
}

/// Consecutive whole lines of one leaf table inside the walk's range,
/// yielded at once by [`Walk::next_batch`] (the walk already stands on
/// their last entry).
#[derive(Clone, Copy, Debug)]
pub struct LeafRun<'a> {
    /// Guest-physical address of the first entry.
    pub gpa: u64,
    /// The entries (a multiple of 8).
    pub slots: &'a [AtomicU64],
    filter: u64,
    line: usize,
}

impl<'a> LeafRun<'a> {
    /// The hot loop of a pass: reads the run [`CHUNK`] entries at a time,
    /// computes which pass the filter without a branch per entry, skips the
    /// chunk when none does and calls `f` for the others (a tail shorter
    /// than a chunk goes line by line). Returns the number of 8-entry lines
    /// in which no entry passed. (Test formats with tables smaller than a
    /// line use the whole table as the line and the chunk, so the loom
    /// models run this very loop.)
    ///
    /// `sparse` is a hint: most lines are expected to be skipped (the
    /// previous run of a pass skipped most lines). The run then goes a line
    /// (8 entries) at a time, each line first ORed together, two
    /// instructions per entry, and the per-entry mask is computed only for
    /// lines with a filter bit, from a second read of their (now cached)
    /// entries; otherwise the mask of each chunk is computed directly.
    /// Either way the same entries reach `f`.
    #[inline(always)]
    pub fn for_each_chunk(&self, sparse: bool, mut f: impl FnMut(LeafChunk<'a>)) -> u64 {
        if sparse {
            self.scan_run::<true>(&mut f)
        } else {
            self.scan_run::<false>(&mut f)
        }
    }

    /// Lines in the run.
    pub fn lines(&self) -> u64 {
        (self.slots.len() / self.line) as u64
    }

    #[inline(always)]
    fn scan_run<const SPARSE: bool>(&self, f: &mut impl FnMut(LeafChunk<'a>)) -> u64 {
        match self.line {
            // Sparse: a line at a time, so that the mask is computed for
            // the few young lines only, not for their whole chunk.
            8 if SPARSE => self.scan::<8, 8, true>(self.slots, self.gpa, f),
            8 => {
                let (chunks, _) = self.slots.as_chunks::<CHUNK>();
                let head = chunks.len() * CHUNK;
                let skipped = self.scan::<CHUNK, 8, SPARSE>(&self.slots[..head], self.gpa, &mut *f);
                let tail_gpa = self.gpa + head as u64 * 4096;
                skipped + self.scan::<8, 8, SPARSE>(&self.slots[head..], tail_gpa, f)
            }
            4 => self.scan::<4, 4, SPARSE>(self.slots, self.gpa, f),
            2 => self.scan::<2, 2, SPARSE>(self.slots, self.gpa, f),
            _ => self.scan::<1, 1, SPARSE>(self.slots, self.gpa, f),
        }
    }

    /// Scans `slots` (a multiple of `N` entries, `N` a multiple of `L`)
    /// `N` at a time; counts lines of `L` entries with nothing passing.
    #[inline(always)]
    fn scan<const N: usize, const L: usize, const SPARSE: bool>(
        &self,
        slots: &'a [AtomicU64],
        gpa: u64,
        f: &mut impl FnMut(LeafChunk<'a>),
    ) -> u64 {
        let mut skipped = 0;
        let (chunks, _) = slots.as_chunks::<N>();
        // One filter bit (the aging pass: A) is a shift and a mask per
        // entry; several need a compare per entry, measurably slower when
        // almost every chunk is skipped.
        let bit = self.filter.trailing_zeros() % 64;
        let one_bit = self.filter == 1 << bit;
        for (n, slots) in chunks.iter().enumerate() {
            if SPARSE {
                let mut any = 0u64;
                for slot in slots {
                    any |= slot.load(Ordering::Acquire);
                }
                if any & self.filter == 0 {
                    skipped += (N / L) as u64;
                    continue;
                }
            }
            let mut mask = 0u64;
            if one_bit {
                for (k, slot) in slots.iter().enumerate() {
                    mask |= ((slot.load(Ordering::Acquire) >> bit) & 1) << k;
                }
            } else {
                for (k, slot) in slots.iter().enumerate() {
                    mask |= u64::from(slot.load(Ordering::Acquire) & self.filter != 0) << k;
                }
            }
            if mask == 0 {
                skipped += (N / L) as u64;
                continue;
            }
            for l in 0..N / L {
                skipped += u64::from((mask >> (l * L)) & ((1 << L) - 1) == 0);
            }
            f(LeafChunk {
                gpa: gpa + (n * N) as u64 * 4096,
                slots,
                mask,
            });
        }
        skipped
    }
}

/// An item of [`Walk::next_batch`].
#[derive(Clone, Copy, Debug)]
pub enum Batch<'a> {
    /// One entry, as [`Walk::next`] yields it (the slot is [`Walk::slot`]).
    Entry(WalkEntry),
    /// Whole lines of leaf entries (level 1) for the handler to scan with
    /// [`LeafRun::for_each_chunk`].
    Leaves(LeafRun<'a>),
}

/// What a filtered walk skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Whole 8-entry lines skipped at the leaf level.
    pub leaf_lines_skipped: u64,
    /// Present non-leaf entries not entered because the filter bits were clear.
    pub subtrees_skipped: u64,
    /// Guest bytes covered by present entries that were skipped (leaf
    /// entries skipped alone or in lines, and whole subtrees).
    pub bytes_skipped_upper_bound: u64,
    /// Non-leaf entries whose table address the memory did not accept
    /// (corruption or a bug; the walk goes around them).
    pub bad_links: u64,
}

/// The iterator. Build it with [`crate::table::Tables::walk`].
#[derive(Debug)]
pub struct Walk<'a, F: EntryFormat, M: TableMemory> {
    mem: &'a M,
    _guard: EpochGuard<'a>,
    tables: [Option<&'a [AtomicU64]>; MAX_LEVELS],
    /// Per level: the first index of the cached line, or `usize::MAX`.
    line_base: [usize; MAX_LEVELS],
    lines: [[u64; LINE]; MAX_LEVELS],
    level: Level,
    index: usize,
    gpa: u64,
    start: u64,
    end: u64,
    min_level: Level,
    filter: u64,
    /// The filter of level-1 entries (see [`Walk::leaf_filter`]).
    leaf_filter: u64,
    old: u64,
    /// The value a handler wrote over the current entry with a
    /// compare-exchange ([`Walk::wrote`]): the next step down follows it.
    written: Option<u64>,
    started: bool,
    done: bool,
    /// Counters of what the filter skipped.
    pub stats: WalkStats,
    _f: PhantomData<F>,
}

impl<'a, F: EntryFormat, M: TableMemory> Walk<'a, F, M> {
    pub(crate) fn new(
        mem: &'a M,
        guard: EpochGuard<'a>,
        root: &'a [AtomicU64],
        start: u64,
        end: u64,
        min_level: Level,
        filter: u64,
    ) -> Self {
        let mut tables = [None; MAX_LEVELS];
        tables[F::LEVELS.array_index()] = Some(root);
        let end = end.min(F::space_size());
        Walk {
            mem,
            _guard: guard,
            tables,
            line_base: [usize::MAX; MAX_LEVELS],
            lines: [[0; LINE]; MAX_LEVELS],
            level: F::LEVELS,
            index: F::index(start, F::LEVELS),
            gpa: start & !(F::level_size(F::LEVELS) - 1),
            start,
            end,
            min_level: min_level.min(F::LEVELS),
            filter,
            leaf_filter: filter,
            old: 0,
            written: None,
            started: false,
            done: start >= end || root.len() != F::ENTRIES,
            stats: WalkStats::default(),
            _f: PhantomData,
        }
    }

    /// Filters level-1 (4 KiB leaf) entries on `filter` instead of the
    /// walk's filter; only for a filtered walk (a walk without a filter
    /// stays unfiltered). The aging pass filters non-leaf entries on A and
    /// the rescan mark, which only non-leaf entries carry, and leaves on A
    /// alone: one bit is cheaper to test without a branch
    /// ([`LeafRun::for_each_chunk`]).
    pub fn leaf_filter(mut self, filter: u64) -> Self {
        if self.filter != 0 && filter != 0 {
            self.leaf_filter = filter;
        }
        self
    }

    /// The atomic that holds the current entry.
    #[inline(always)]
    pub fn slot(&self) -> &'a AtomicU64 {
        let table = self.tables[self.level.array_index()].unwrap_or(&[]);
        // The iterator never rests on an index outside its table: `index`
        // is reduced modulo ENTRIES and tables are checked to have ENTRIES.
        &table[self.index]
    }

    /// Re-reads the current entry and makes it the snapshot.
    #[inline(always)]
    pub fn reread(&mut self) -> u64 {
        self.old = self.slot().load(Ordering::Acquire);
        self.old
    }

    /// The current entry, if the walk has not ended.
    pub fn current(&self) -> Option<WalkEntry> {
        debug_assert!(
            self.done
                || (self.min_level..=F::LEVELS).contains(&self.level)
                    && self.gpa.is_multiple_of(F::level_size(self.level))
                    && self.gpa < self.end
                    && self.gpa + F::level_size(self.level) > self.start
                    && self.index == F::index(self.gpa, self.level),
            "the walk stands on an entry outside its range or level"
        );
        (self.started && !self.done).then_some(WalkEntry {
            gpa: self.gpa,
            level: self.level,
            old: self.old,
        })
    }

    /// Guest bytes from the current entry's start to the end of the walk's
    /// range, capped at the entry's size: whether the entry is fully inside
    /// the range is `covered() == F::level_size(level)`.
    pub fn covered(&self) -> u64 {
        let size = F::level_size(self.level);
        let lo = self.gpa.max(self.start);
        let hi = (self.gpa + size).min(self.end);
        hi.saturating_sub(lo)
    }

    /// Tells the walk that the handler has just replaced the current entry
    /// with `value` by a successful compare-exchange (itself a read of the
    /// entry at that instant): the walk steps into the table `value` points
    /// to instead of re-reading, so the table it scans is the one the
    /// handler's write applies to. The aging pass needs this: it stamps a
    /// non-leaf entry with the pass's generation and then stamps the
    /// children, and the children's tags are only meaningful under that
    /// parent ([`crate::generations`]). If a writer replaces the entry
    /// afterwards, the walk scans a detached table, which the epoch keeps
    /// allocated and whose entries writers have already cleared.
    #[inline(always)]
    pub fn wrote(&mut self, value: u64) {
        self.old = value;
        self.written = Some(value);
    }

    /// Tells the walk not to step into the table under the current entry
    /// (a handler found it no longer needs a visit).
    #[inline(always)]
    pub fn skip_children(&mut self) {
        self.written = Some(0);
    }

    /// Steps into the table the current entry points to, re-reading the
    /// entry first (or following what a handler just wrote there,
    /// [`Walk::wrote`]). Returns false at `min_level`, at a leaf, at a
    /// non-present entry, or when the link is not a valid table.
    fn try_step_down(&mut self) -> bool {
        if self.level <= self.min_level {
            self.written = None;
            return false;
        }
        let entry = match self.written.take() {
            Some(v) => v,
            None => self.reread(),
        };
        if !F::is_table(entry, self.level) {
            return false;
        }
        let Some(child) = self
            .mem
            .table(F::addr(entry))
            .filter(|t| t.len() == F::ENTRIES)
        else {
            self.stats.bad_links += 1;
            return false;
        };
        // Above `min_level`, so never level 1.
        let Some(lower) = self.level.next_lower() else {
            return false;
        };
        if lower == Level::PAGE_4K && self.filter != 0 {
            self.prefetch_next_leaf_table();
        }
        self.level = lower;
        let l = self.level.array_index();
        self.tables[l] = Some(child);
        self.line_base[l] = usize::MAX;
        let from = self.gpa.max(self.start);
        self.index = F::index(from, self.level);
        self.gpa = from & !(F::level_size(self.level) - 1);
        true
    }

    /// About to step into a leaf table: asks the CPU to fetch the first
    /// lines of the next leaf table this filtered walk will enter (the next
    /// entry of the current level-2 line that passes the filter), so that
    /// the hardware prefetcher's stream is under way when the walk gets
    /// there. A walk that skips cold tables jumps between streams; without
    /// this each young table starts with a full memory latency. A hint
    /// only: nothing is read.
    #[inline(always)]
    fn prefetch_next_leaf_table(&mut self) {
        let l = self.level.array_index();
        let line = F::ENTRIES.min(LINE);
        let base = self.line_base[l];
        if base == usize::MAX || self.index < base {
            return;
        }
        for (gap, &next) in self.lines[l][(self.index - base + 1).min(line)..line]
            .iter()
            .enumerate()
        {
            if next & self.filter != 0 && F::is_table(next, self.level) {
                // The next table straight after this one: the running
                // stream reaches it (when tables are contiguous) anyway.
                if gap == 0 {
                    return;
                }
                if let Some(t) = self.mem.table(F::addr(next)) {
                    for k in (0..t.len().min(64)).step_by(LINE) {
                        core::hint::prefetch_read(t[k..].as_ptr(), core::hint::Locality::L1);
                    }
                }
                return;
            }
        }
    }

    /// Steps to the next entry of the same table, if it is in range.
    fn try_step_side(&mut self) -> bool {
        let next = self.gpa + F::level_size(self.level);
        if self.index + 1 >= F::ENTRIES || next >= self.end {
            return false;
        }
        self.index += 1;
        self.gpa = next;
        true
    }

    /// Steps back to the parent entry (already visited).
    fn try_step_up(&mut self) -> bool {
        if self.level >= F::LEVELS {
            return false;
        }
        let Some(upper) = self.level.next_higher() else {
            return false;
        };
        self.level = upper;
        self.index = F::index(self.gpa, self.level);
        self.gpa &= !(F::level_size(self.level) - 1);
        true
    }

    /// Loads the snapshot of the entry the iterator now sits on and says
    /// whether it passes the filter. With a filter, a whole line is read at
    /// once and, when no entry in it passes, the iterator moves to its last
    /// entry so the next side step leaves the line.
    #[inline(always)]
    fn load_filtered(&mut self) -> bool {
        let l = self.level.array_index();
        let table = self.tables[l].unwrap_or(&[]);
        if self.filter == 0 {
            self.old = table[self.index].load(Ordering::Acquire);
            return true;
        }
        let filter = if self.level == Level::PAGE_4K {
            self.leaf_filter
        } else {
            self.filter
        };
        let line = F::ENTRIES.min(LINE);
        let base = self.index & !(line - 1);
        if self.line_base[l] != base {
            let mut any = 0;
            for (k, v) in self.lines[l][..line].iter_mut().enumerate() {
                *v = table[base + k].load(Ordering::Acquire);
                any |= *v;
            }
            self.line_base[l] = base;
            let size = F::level_size(self.level);
            let line_end = (self.gpa & !(size * line as u64 - 1)) + size * line as u64;
            if any & filter == 0 && self.index == base && line_end <= self.end {
                self.skip_line(l, line);
                return false;
            }
        }
        self.old = self.lines[l][self.index - base];
        if self.old & filter != 0 {
            return true;
        }
        if F::is_present(self.old) {
            self.count_skip(self.old, 1);
        }
        false
    }

    #[cold]
    fn count_skip_line(&mut self, l: usize, line: usize) {
        for k in 0..line {
            let v = self.lines[l][k];
            if F::is_present(v) {
                self.count_skip(v, 1);
            }
        }
    }

    #[inline(always)]
    fn skip_line(&mut self, l: usize, line: usize) {
        if self.level == Level::PAGE_4K {
            self.stats.leaf_lines_skipped += 1;
            self.stats.bytes_skipped_upper_bound += F::level_size(Level::PAGE_4K) * line as u64;
        } else {
            self.count_skip_line(l, line);
        }
        self.index += line - 1;
        self.gpa += F::level_size(self.level) * (line as u64 - 1);
    }

    fn count_skip(&mut self, entry: u64, n: u64) {
        if F::is_table(entry, self.level) {
            self.stats.subtrees_skipped += n;
        }
        self.stats.bytes_skipped_upper_bound += F::level_size(self.level) * n;
    }

    /// Moves to the next entry that passes the filter and returns its
    /// snapshot. Pre-order: an entry comes before the entries of the table
    /// it points to. The table is entered only if the entry passed the
    /// filter and, re-read, still points to a table.
    #[allow(
        clippy::should_implement_trait,
        reason = "a lending-style walk whose handlers also use `slot`"
    )]
    #[inline]
    pub fn next(&mut self) -> Option<WalkEntry> {
        if self.done {
            return None;
        }
        let mut may_descend = true;
        if !self.started {
            self.started = true;
            if self.load_filtered() {
                return self.current();
            }
            may_descend = false;
        }
        loop {
            let moved = (may_descend && self.try_step_down()) || self.step_side_or_up();
            if !moved {
                self.done = true;
                return None;
            }
            if self.load_filtered() {
                return self.current();
            }
            may_descend = false;
        }
    }

    /// Like [`Walk::next`], but at level 1 of a filtered walk the whole
    /// lines of the leaf table that lie inside the range come as one
    /// [`Batch::Leaves`], which the handler scans in a tight loop
    /// ([`LeafRun::for_each_chunk`]: the same filtering as [`Walk::next`],
    /// without a trip through the stepping logic per entry). Same order;
    /// the handler takes the snapshots of the leaves it examines.
    #[inline]
    pub fn next_batch(&mut self) -> Option<Batch<'a>> {
        if self.done {
            return None;
        }
        let mut may_descend = true;
        if !self.started {
            self.started = true;
            if let Some(b) = self.visit() {
                return Some(b);
            }
            may_descend = false;
        }
        loop {
            let moved = (may_descend && self.try_step_down()) || self.step_side_or_up();
            if !moved {
                self.done = true;
                return None;
            }
            if let Some(b) = self.visit() {
                return Some(b);
            }
            may_descend = false;
        }
    }

    /// The batch at the iterator's position, or `None` if filtered out.
    #[inline(always)]
    fn visit(&mut self) -> Option<Batch<'a>> {
        let line = F::ENTRIES.min(LINE);
        if self.level == Level::PAGE_4K && self.filter != 0 && self.index.is_multiple_of(line) {
            let size = F::level_size(Level::PAGE_4K);
            let line_bytes = size * line as u64;
            let lines = ((F::ENTRIES - self.index) / line)
                .min(((self.end - self.gpa) / line_bytes) as usize);
            if lines > 0 {
                debug_assert!(self.gpa >= self.start && self.index + lines * line <= F::ENTRIES);
                let table = self.tables[0].unwrap_or(&[]);
                let slots = &table[self.index..self.index + lines * line];
                let gpa = self.gpa;
                self.index += lines * line - 1;
                self.gpa += (lines * line) as u64 * size - size;
                let filter = self.leaf_filter;
                return Some(Batch::Leaves(LeafRun {
                    gpa,
                    slots,
                    filter,
                    line,
                }));
            }
        }
        if self.load_filtered() {
            return self.current().map(Batch::Entry);
        }
        None
    }

    #[inline(always)]
    fn step_side_or_up(&mut self) -> bool {
        self.written = None;
        loop {
            if self.try_step_side() {
                return true;
            }
            if !self.try_step_up() {
                return false;
            }
        }
    }
}
