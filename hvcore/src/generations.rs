//! Generations, in the manner of Linux's multi-gen LRU
//! (`Documentation/mm/multigen_lru.rst`), kept in the table entries
//! themselves: no metadata per guest page outside the tables.
//!
//! Every aging pass is one *sequence number*. `max_seq` is the current
//! pass; `min_seq` the oldest generation told apart. A page's generation is
//! the last pass that found it young, so its age is `max_seq - seq` passes,
//! or `now_ms - pass_time_ms(seq)` milliseconds. Huge pages age as a unit
//! (one entry, one generation).
//!
//! # Where the generation lives: an 11-bit tag in the entry
//! The aging pass clears A with a compare-exchange ([`crate::age`]); the
//! same compare-exchange writes the pass's *tag* into bits 62:52 of the
//! entry ([`EntryFormat::GEN_MASK`], ignored by the CPU in both formats as
//! Thermocline runs them). Recording a young page therefore costs no store
//! besides the one the pass makes anyway. (A byte per page in a separate
//! array, the first design, cost 5-9 % of a pass at scattered 1 %: each
//! byte store that missed the cache held up the next locked instruction;
//! `docs/aging.md`.)
//!
//! Tag `0` means *old*: not young for at least [`EXACT_GENS`] passes (or
//! never since the guest was adopted). Tags `1..=2047` name a sequence
//! number modulo [`TAGS`]: `tag_of(seq) = seq % 2047 + 1`.
//!
//! # Decoding: a tag is read against its parent
//! Tags wrap, and the pass skips whole subtrees whose parent's A is clear,
//! so it cannot keep every tag in the guest within 2047 passes of
//! `max_seq` by visiting it. It does not need to. Non-leaf entries carry a
//! tag too: the pass stamps a non-leaf entry every time it scans the table
//! below it, so a non-leaf's generation is the last pass that scanned its
//! table, and the **invariant** is:
//!
//! > every entry that is not old has a generation at most its parent's, and
//! > less than [`TAGS`] passes older than it.
//!
//! (For entries of the root table, "parent" means `max_seq`.) So a tag
//! decodes uniquely top-down: `seq = parent - (tag_of(parent) - tag) mod
//! 2047` ([`decode`]). An old parent makes its whole subtree old: its pages
//! were not young for at least as long as it. A leaf whose A is set was
//! accessed after the last pass and counts as young now (`max_seq`).
//!
//! The pass keeps the invariant ([`crate::age`]): young entries get the
//! current tag, and their parents already have it. When it is about to
//! scan a table it *checks* it if the table's parent is old, or if a pass
//! of the table's turn (one in every [`CHECK_EVERY`], spread over the
//! tables by address) went by since the table was last scanned: the check
//! *retires* (sets to old) every child not young for [`EXACT_GENS`] passes.
//! So between two checks of a table at most `CHECK_EVERY` passes go by,
//! a child is never more than `EXACT_GENS + CHECK_EVERY <= 2047` passes
//! older than its parent, and a table skipped for any length of time is
//! checked when it is next scanned. Skipped subtrees are never touched:
//! their tags keep decoding against their parent's, which has not moved.
//! A check reads the table's 512 entries once more (from the cache: the
//! scan reads them next) and retires with the one helper; at one check per
//! table per 1024 passes it is invisible in the pass's cost, and a page
//! that stays cold is retired once.
//!
//! Writers keep the invariant too ([`crate::table`]): a split gives the new
//! table entry the huge leaf's tag and the children copy it; a collapse
//! gives the huge leaf the table entry's tag (its youngest child's or
//! younger); new entries start old, and a writer that wants a page young
//! sets A ([`crate::table::Tables::mark_accessed`]) as an access would.
//!
//! # Queries
//! Ages are exact up to [`EXACT_GENS`] passes; older pages are reported in
//! one merged generation, `min_seq = max_seq - EXACT_GENS`, so they are
//! never reported younger than they are by more than the merge (MGLRU keeps
//! four generations). Histograms, the coldest-first run list and single
//! lookups walk the tables ([`Generations::for_each_page_seq`], one walk
//! that decodes as it goes); the per-guest state besides the tables is the
//! sequence number and a ring of 256 pass timestamps.

use crate::addr::{GuestPhysAddr, PAGE_SIZE_4K};
use crate::entry::{Change, Retry, Update, update_entry};
use crate::pte::{EntryFormat, Level};
use crate::sync::Ordering;
use crate::table::{TableMemory, Tables};
use crate::walk::Batch;

/// Distinct generation tags (1 to 2047; 0 is "old").
pub const TAGS: u64 = 2047;
/// Generations told apart: a page not young for this many passes is in
/// the merged oldest generation `min_seq`.
pub const EXACT_GENS: u64 = 255;
/// A table's stale tags are retired at least once every this many passes
/// (when it is scanned after its turn came).
pub const CHECK_EVERY: u64 = 1024;
const _: () = assert!(EXACT_GENS + CHECK_EVERY <= TAGS);
/// Pass timestamps kept (a power of two above the window).
const RING: usize = 256;
const _: () = assert!(EXACT_GENS < RING as u64);

/// The tag that names `seq`.
#[inline(always)]
pub const fn tag_of(seq: u64) -> u64 {
    seq % TAGS + 1
}

/// The generation of an entry with tag `tag` whose parent's generation is
/// `parent` (`None`: old), under the invariant of the module docs; `None`
/// if the entry is old.
#[inline(always)]
pub const fn decode(parent: Option<u64>, tag: u64) -> Option<u64> {
    match parent {
        Some(p) if tag != 0 => p.checked_sub((tag_of(p) + TAGS - tag) % TAGS),
        _ => None,
    }
}

/// When a page counts as cold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColdAfter {
    /// Not young in the last `n` passes (`max_seq - seq >= n`).
    Gens(u64),
    /// Not young for at least this many milliseconds.
    Millis(u64),
}

/// One row of the age histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgeBucket {
    /// The generation (sequence number).
    pub seq: u64,
    /// Passes since that generation (`max_seq - seq`).
    pub age_gens: u64,
    /// Milliseconds since that pass, at `now_ms`.
    pub age_ms: u64,
    /// 4 KiB pages in the generation.
    pub pages: u64,
}

/// A run of consecutive pages of one generation, yielded coldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColdRun {
    /// First page.
    pub gpa: GuestPhysAddr,
    /// Length in 4 KiB pages.
    pub pages: u64,
    /// Their generation.
    pub seq: u64,
}

/// The sequence bookkeeping of one guest; the generations themselves are
/// in its tables.
#[derive(Clone, Debug)]
pub struct Generations {
    max_seq: u64,
    pass_ms: [u64; RING],
}

impl Generations {
    /// Generations starting at seq 1 at `now_ms`. Every page of the tables
    /// is old until a pass finds it young or [`Generations::adopt`] stamps
    /// it.
    pub fn new(now_ms: u64) -> Self {
        let mut g = Generations {
            max_seq: 1,
            pass_ms: [0; RING],
        };
        g.pass_ms[1] = now_ms;
        g
    }

    /// The current generation.
    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    /// The oldest generation told apart (older pages are merged into it).
    pub fn min_seq(&self) -> u64 {
        self.max_seq.saturating_sub(EXACT_GENS).max(1)
    }

    /// When pass `seq` started, if it is in the window.
    pub fn pass_time_ms(&self, seq: u64) -> Option<u64> {
        (self.min_seq()..=self.max_seq)
            .contains(&seq)
            .then(|| self.pass_ms[seq as usize % RING])
    }

    /// Starts pass `max_seq + 1` at `now_ms` and returns its number. Only
    /// [`crate::age::age_pass`] calls this: the pass that follows keeps the
    /// invariant for the new number.
    pub fn begin_pass(&mut self, now_ms: u64) -> u64 {
        self.max_seq += 1;
        self.pass_ms[self.max_seq as usize % RING] = now_ms;
        self.max_seq
    }

    /// Stamps every present entry of `tables` with the current generation,
    /// so that a new guest's pages count their age from now rather than
    /// starting old. All entries share one tag afterwards, which satisfies
    /// the invariant whatever it was before. Returns the 4 KiB pages of the
    /// leaves stamped.
    pub fn adopt<F: EntryFormat, M: TableMemory>(&self, tables: &Tables<F, M>) -> u64 {
        let tag = tag_of(self.max_seq);
        let mut pages = 0;
        let mut walk = tables.walk(0, F::space_size(), Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            if !F::is_present(e.old) {
                continue;
            }
            let update =
                update_entry::<F>(walk.slot(), e.old, Change::Moving, Retry::Always, |cur| {
                    F::is_present(cur).then(|| F::with_gen_tag(cur, tag))
                });
            if let Update::Wrote { wrote: v, .. } | Update::Unchanged(v) = update
                && F::is_leaf(v, e.level)
            {
                pages += F::level_size(e.level) / PAGE_SIZE_4K;
            }
        }
        pages
    }

    /// Calls `f(gpa, pages, seq)` for every present leaf overlapping
    /// `[start, end)`, in address order, with its generation decoded
    /// (clamped to `min_seq`) and its 4 KiB page count (a huge leaf is one
    /// call, with its own first address). The one decoding walk every query
    /// uses.
    pub fn for_each_page_seq<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, u64),
    ) {
        self.scan(tables, start, end, |gpa, pages, seq, _| {
            f(gpa, pages, seq);
            true
        });
    }

    /// [`Generations::for_each_page_seq`] that also tells `f` whether the
    /// leaf's A is set (accessed since the last pass), and stops when `f`
    /// returns false.
    fn scan<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, u64, bool) -> bool,
    ) {
        let min = self.min_seq();
        // The generation of the entry on the current path at each level;
        // the root table's entries decode against `max_seq`.
        let mut path: [Option<u64>; crate::walk::MAX_LEVELS + 2] =
            [None; crate::walk::MAX_LEVELS + 2];
        path[usize::from(F::LEVELS.get()) + 1] = Some(self.max_seq);
        let leaf_seq = |parent: Option<u64>, v: u64| {
            if v & F::ACCESSED != 0 {
                self.max_seq
            } else {
                decode(parent, F::gen_tag(v)).map_or(min, |s| s.max(min))
            }
        };
        // Every present entry has a nonzero bit in this filter, so the walk
        // yields all of them and hands over whole leaf lines.
        let mut walk = tables.walk(start, end, Level::PAGE_4K, !0);
        while let Some(b) = walk.next_batch() {
            match b {
                Batch::Entry(e) => {
                    if !F::is_present(e.old) {
                        continue;
                    }
                    let l = usize::from(e.level.get());
                    if !F::is_leaf(e.old, e.level) {
                        path[l] = decode(path[l + 1], F::gen_tag(e.old));
                    } else if !f(
                        e.gpa,
                        F::level_size(e.level) / PAGE_SIZE_4K,
                        leaf_seq(path[l + 1], e.old),
                        e.old & F::ACCESSED != 0,
                    ) {
                        return;
                    }
                }
                Batch::Leaves(run) => {
                    for (k, slot) in run.slots.iter().enumerate() {
                        let v = slot.load(Ordering::Acquire);
                        if F::is_present(v)
                            && !f(
                                run.gpa + k as u64 * PAGE_SIZE_4K,
                                1,
                                leaf_seq(path[2], v),
                                v & F::ACCESSED != 0,
                            )
                        {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The generation of the page holding `gpa`, if it is mapped.
    pub fn seq_of<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
    ) -> Option<u64> {
        let g = gpa.as_u64();
        let mut out = None;
        self.for_each_page_seq(tables, g, g.saturating_add(1), |_, _, s| out = Some(s));
        out
    }

    /// Scores the hot set against ground truth: `touched` is a bitmap of the
    /// pages from `first_pfn` on (bit `i` of word `i / 64`: page
    /// `first_pfn + i` was touched), as a guest reports it for one interval;
    /// a page counts as hot if a pass after `since_seq` found it young.
    /// Unmapped pages are never hot.
    pub fn score_hot_set<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        first_pfn: u64,
        page_count: u64,
        touched: &[u64],
        since_seq: u64,
    ) -> HotSetScore {
        let was_touched = |i: u64| {
            touched
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
        };
        let mut score = HotSetScore::default();
        let start = first_pfn.saturating_mul(PAGE_SIZE_4K);
        let end = first_pfn
            .saturating_add(page_count)
            .saturating_mul(PAGE_SIZE_4K);
        self.for_each_page_seq(tables, start, end, |gpa, pages, seq| {
            if seq <= since_seq {
                return;
            }
            let first = (gpa / PAGE_SIZE_4K).max(first_pfn);
            let last = (gpa / PAGE_SIZE_4K + pages).min(first_pfn + page_count);
            for pfn in first..last {
                if was_touched(pfn - first_pfn) {
                    score.true_hot += 1;
                } else {
                    score.false_hot += 1;
                }
            }
        });
        let touched_pages: u64 = (0..page_count).filter(|&i| was_touched(i)).count() as u64;
        score.missed = touched_pages - score.true_hot;
        score
    }

    /// Young within the last `k` passes (`k >= 1`: the current one counts).
    pub fn is_hot<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
        k: u64,
    ) -> bool {
        self.seq_of(tables, gpa)
            .is_some_and(|s| s + k > self.max_seq)
    }

    /// Whether a page of generation `seq` is cold by `after` at `now_ms`.
    pub fn seq_is_cold(&self, seq: u64, after: ColdAfter, now_ms: u64) -> bool {
        let seq = seq.clamp(self.min_seq(), self.max_seq);
        match after {
            ColdAfter::Gens(n) => self.max_seq - seq >= n,
            ColdAfter::Millis(t) => now_ms.saturating_sub(self.pass_ms[seq as usize % RING]) >= t,
        }
    }

    /// Whether the (mapped) page holding `gpa` is cold.
    pub fn is_cold<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        gpa: GuestPhysAddr,
        after: ColdAfter,
        now_ms: u64,
    ) -> bool {
        self.seq_of(tables, gpa)
            .is_some_and(|s| self.seq_is_cold(s, after, now_ms))
    }

    /// Pages per age in passes (index `max_seq - seq`, `0..=EXACT_GENS`),
    /// by one walk of the tables.
    fn counts<F: EntryFormat, M: TableMemory>(&self, tables: &Tables<F, M>) -> [u64; RING] {
        let mut counts = [0u64; RING];
        self.for_each_page_seq(tables, 0, F::space_size(), |_, pages, seq| {
            if let Some(c) = counts.get_mut((self.max_seq - seq) as usize) {
                *c += pages;
            }
        });
        counts
    }

    /// The age histogram, oldest generation first; empty generations are
    /// left out. One walk of the tables.
    pub fn histogram<F: EntryFormat, M: TableMemory>(
        &self,
        tables: &Tables<F, M>,
        now_ms: u64,
    ) -> impl Iterator<Item = AgeBucket> + '_ {
        let counts = self.counts(tables);
        (self.min_seq()..=self.max_seq).filter_map(move |seq| {
            let pages = counts[(self.max_seq - seq) as usize];
            (pages > 0).then(|| AgeBucket {
                seq,
                age_gens: self.max_seq - seq,
                age_ms: now_ms.saturating_sub(self.pass_ms[seq as usize % RING]),
                pages,
            })
        })
    }

    /// Cold pages, coldest generation first, as runs of consecutive pages of
    /// one generation (for the reclaimer). A page whose A is set (accessed
    /// since the last pass) is never cold. One walk of the tables to count,
    /// then one more per non-empty cold generation, each stopping where the
    /// caller stops taking runs.
    pub fn coldest<'g, F: EntryFormat, M: TableMemory>(
        &'g self,
        tables: &'g Tables<F, M>,
        after: ColdAfter,
        now_ms: u64,
    ) -> ColdIter<'g, F, M> {
        ColdIter {
            counts: self.counts(tables),
            gens: self,
            tables,
            after,
            now_ms,
            seq: self.min_seq(),
            pos: 0,
        }
    }
}

/// How a hot set compares with ground truth ([`Generations::score_hot_set`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotSetScore {
    /// Touched and found hot.
    pub true_hot: u64,
    /// Found hot but not touched.
    pub false_hot: u64,
    /// Touched but not found hot.
    pub missed: u64,
}

/// Iterator of [`Generations::coldest`].
#[derive(Debug)]
pub struct ColdIter<'g, F: EntryFormat, M: TableMemory> {
    counts: [u64; RING],
    gens: &'g Generations,
    tables: &'g Tables<F, M>,
    after: ColdAfter,
    now_ms: u64,
    seq: u64,
    pos: u64,
}

impl<F: EntryFormat, M: TableMemory> Iterator for ColdIter<'_, F, M> {
    type Item = ColdRun;

    fn next(&mut self) -> Option<ColdRun> {
        let max = self.gens.max_seq;
        while self.seq <= max && self.gens.seq_is_cold(self.seq, self.after, self.now_ms) {
            if self.counts[(max - self.seq) as usize] > 0 && self.pos < F::space_size() {
                // The first run of this generation at or after `pos`.
                let (want, pos) = (self.seq, self.pos);
                let mut run = None::<(u64, u64)>;
                self.gens.scan(
                    self.tables,
                    pos,
                    F::space_size(),
                    |gpa, pages, seq, accessed| {
                        // A huge leaf that starts before `pos`: its rest.
                        let skip = pos.saturating_sub(gpa) / PAGE_SIZE_4K;
                        let (gpa, pages) = (gpa.max(pos), pages - skip.min(pages));
                        // Accessed since the last pass: young now, never
                        // cold, whatever the threshold (a page the
                        // reclaimer rescues is such a page, and must not be
                        // offered again in the same round).
                        let hit = seq == want && !accessed;
                        match &mut run {
                            Some((start, len)) if hit && *start + *len * PAGE_SIZE_4K == gpa => {
                                *len += pages;
                                true
                            }
                            Some(_) => false,
                            None if hit => {
                                run = Some((gpa, pages));
                                true
                            }
                            None => true,
                        }
                    },
                );
                if let Some((start, len)) = run {
                    self.pos = start + len * PAGE_SIZE_4K;
                    return Some(ColdRun {
                        gpa: GuestPhysAddr::new(start),
                        pages: len,
                        seq: want,
                    });
                }
            }
            self.seq += 1;
            self.pos = 0;
        }
        None
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn decode_inverts_tag_of_within_the_window() {
        for parent in [1u64, 2, 500, 2046, 2047, 2048, 10_000, 123_456] {
            for back in 0..TAGS.min(parent) {
                let seq = parent - back;
                assert_eq!(
                    decode(Some(parent), tag_of(seq)),
                    Some(seq),
                    "{parent} {back}"
                );
            }
            assert_eq!(decode(Some(parent), 0), None);
            assert_eq!(decode(None, tag_of(parent)), None);
        }
    }

    #[test]
    fn tags_fit_the_entry_field_and_skip_old() {
        for seq in 0..5 * TAGS {
            let t = tag_of(seq);
            assert!((1..=TAGS).contains(&t));
            assert_eq!(t << 52 & !crate::npt::Npt::GEN_MASK, 0);
        }
    }

    #[test]
    fn min_seq_and_cold_clamp_to_the_window() {
        let mut g = Generations::new(0);
        for pass in 1..=400u64 {
            g.begin_pass(pass * 10);
        }
        assert_eq!(g.max_seq(), 401);
        assert_eq!(g.min_seq(), 401 - EXACT_GENS);
        // A generation older than the window is as cold as the merged one.
        assert!(g.seq_is_cold(3, ColdAfter::Gens(EXACT_GENS), 0));
        assert!(!g.seq_is_cold(3, ColdAfter::Gens(EXACT_GENS + 1), 0));
        assert_eq!(g.pass_time_ms(401), Some(4000));
        assert_eq!(g.pass_time_ms(401 - EXACT_GENS - 1), None);
        // Pass `seq` started at `(seq - 1) * 10` ms.
        assert!(g.seq_is_cold(391, ColdAfter::Millis(100), 4000));
        assert!(!g.seq_is_cold(392, ColdAfter::Millis(100), 4000));
    }
}
