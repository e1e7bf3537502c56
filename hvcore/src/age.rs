//! Aging: the one test-and-clear helper and the pass built on the one walk.
//!
//! # The helper: compare-exchange on the snapshot, not an atomic AND
//! [`test_and_clear_young`] clears the accessed bit of an entry *that the
//! caller examined*: it takes the walk's snapshot and does
//! `compare_exchange(snapshot, snapshot & !A)`. The alternative, an atomic
//! `fetch_and(!A)` (KVM's `clear_bit`), was argued on the KVM list in 2023
//! (Yu Zhao and Sean Christopherson, `kvm_arch_test_clear_young`). Both are
//! atomic read-modify-writes, so neither can lose a D bit the CPU sets
//! concurrently (a plain load + store could: that is the broken variant the
//! loom models catch). They differ when the entry changes identity between
//! the check and the clear:
//!
//! * the huge leaf we examined is split into a table (the AND lands on a
//!   non-leaf entry: we would clear a parent's A without scanning its
//!   children, exactly what subtree skipping must never do, see below), or
//! * the page is unmapped and something else mapped there (the AND clears
//!   A of a mapping we never examined: its access is lost, and a hot page
//!   may be reclaimed).
//!
//! The compare-exchange fails in both cases, and the walk handles the new
//! value instead. On x86 it costs the same single `lock cmpxchg` that an
//! AND whose old value is used compiles to (the AND needs a cmpxchg loop
//! then); only an AND whose result is ignored is a single `lock and`, and
//! we need the result. A failed exchange whose new value differs from the
//! snapshot only in A/D (the CPU set D, or another pass cleared A) is
//! retried on the new value: those bits only move that way, so retries
//! are bounded. Remaining ABA: the entry is unmapped and remapped to the
//! *same* frame with the same rights between check and clear; the clear
//! then lands on an equal entry, which loses at most that remapping's
//! first access (documented, harmless for reclaim since D is never lost).
//!
//! The helper is the only place in the crate that clears A (the writers in
//! [`crate::table`] only ever set it or swap whole entries).
//!
//! # The generation rides in the same compare-exchange
//! The value the helper writes also carries the pass's generation tag in
//! bits the CPU ignores ([`EntryFormat::GEN_MASK`]; the design and its
//! invariant are in [`crate::generations`]). So a young page is recorded
//! by the one locked instruction that ages it, and the pass writes nothing
//! else per page: no array of per-page state, no extra cache line. The
//! helper's second mode, [`Stamp::Retire`], sets the tag of an entry that
//! is *not* young to "old" when a table check finds it stale; it uses the
//! same compare-exchange on the snapshot, so a retirement can no more land
//! on a changed entry or lose a D bit than a clear can, and an entry that
//! became young since the snapshot is left to the scan. A failed exchange
//! is retried when only A, D, the rescan mark or the tag moved
//! ([`EntryFormat::MOVING`]).
//!
//! # Subtree skipping and the rule that makes it correct
//! The CPU sets A in every non-leaf EPT/NPT entry it walks through
//! (Intel SDM "Accessed and Dirty Flags for EPT"; AMD APM "Nested Paging").
//! A pass filters its walk on A ([`crate::walk`]): a non-leaf entry with A
//! clear was not walked since the last pass cleared it, so its table (512
//! entries, or 262144 for a 1 GiB entry) is skipped unread. A non-leaf entry
//! with A set is cleared **before** the walk steps into its table, and the
//! walk then scans all of that table's entries in the same pass. Clearing
//! after scanning, or clearing without scanning, loses accesses (the CPU
//! set the child's A while the parent's A was already set, and the next
//! pass skips the parent): the bug Linux's MGLRU had with non-leaf PMD A
//! bits. Writers that set A in software set it on ancestors afterwards
//! ([`crate::table`] rule 4), and new non-leaf entries start with A set.
//!
//! Clearing first is not enough on its own: the CPU sets A top-down, one
//! locked write per level, so a walk can set the parent's A *before* the
//! pass clears it and the leaf's A *after* the pass has read the leaf. The
//! leaf is then young under a parent whose A is clear, and a pass that
//! trusted the parent would skip it forever. So the helper, when it clears
//! a non-leaf A, sets a rescan mark in the same compare-exchange (a bit the
//! CPU ignores: [`EntryFormat::RESCAN`], EPT bit 11, NPT bit 9); the next
//! pass scans a marked table even if its A is still clear, clearing the
//! mark. A subtree is skipped only after one full pass found it untouched.
//! The cost is one extra scan of each table that was active in the previous
//! pass. `loom_access_during_pass_is_seen_by_this_or_next_pass` finds the
//! lost access when the mark is disabled; the host test
//! `*_walk_straddling_a_pass_is_not_lost` replays that interleaving.
//!
//! Guarantee: every access the guest makes between the end of pass N (its
//! TLB flush) and the start of pass N+1 makes the page young in pass N+1.
//! Accesses made *during* a pass are seen by this pass or the next one
//! (including walks that straddle the pass), with one exception shared by
//! every A-bit scheme: an access that hits a TLB or paging-structure cache
//! entry set up before the pass cleared the bits sets nothing, and is
//! recorded only if the page is touched again after the flush.
//!
//! # Measured
//! `cargo bench -p hvcore --bench aging` (what `cargo xtask bench` runs)
//! compares [`age_pass`] with a plain read of every leaf (the floor) and an
//! idealised KVM-style loop (an atomic AND on every young leaf, no
//! skipping); its figures, with machine and date, are in `docs/aging.md`
//! ("Measured"). Per young entry the hot path is one load (L1), one
//! `lock cmpxchg` and a bit set: at high density the pass is bound by the
//! locked instruction, as the KVM-style loop is; `cmpxchg16b` over two
//! adjacent entries would halve the locked instructions but needs 128-bit
//! atomics over the table (not expressible without `unsafe` here).
//!
//! # Flush
//! A pass that cleared any A bit asks its [`TlbFlush`] for one flush at the
//! end ([`crate::flush`]).

use crate::entry::{Change, Retry, Update, update_entry};
use crate::flush::{FlushPolicy, TlbFlush};
use crate::generations::{CHECK_EVERY, EXACT_GENS, Generations, TAGS, decode, tag_of};
use crate::pte::{EntryFormat, Level};
use crate::sync::{AtomicU64, Ordering};
use crate::table::{TableMemory, Tables};
use crate::walk::{Batch, CHUNK, LeafChunk, MAX_LEVELS};

/// What the helper writes besides clearing A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// Age the entry: clear A (or the rescan mark) and write this
    /// generation tag (1 to 2047, see [`crate::generations`]).
    Young(u64),
    /// Retire the entry's generation tag to "old" if the entry is not young
    /// (A clear, no rescan mark); a young entry is left for the scan.
    Retire,
}

/// Result of [`test_and_clear_young`]. The outcomes that wrote carry the
/// value the helper replaced (`was`, which may differ from the caller's
/// snapshot in A, D, the rescan mark or the tag: the exchange was retried)
/// and the value it wrote (`wrote`): a walk that steps into the table under
/// an aged entry follows exactly `wrote` ([`crate::walk::Walk::wrote`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearYoung {
    /// A was set in the examined entry and is now clear in it, with the
    /// pass's tag (a non-leaf entry is also marked [`EntryFormat::RESCAN`]).
    Cleared {
        /// The value replaced.
        was: u64,
        /// The value written.
        wrote: u64,
    },
    /// A non-leaf entry with A clear but marked for one more scan: the mark
    /// is cleared, the tag written, and the walk must scan its table.
    Rescan {
        /// The value replaced.
        was: u64,
        /// The value written.
        wrote: u64,
    },
    /// [`Stamp::Retire`]: the entry was not young and its tag is now old.
    Retired {
        /// The value replaced.
        was: u64,
        /// The value written.
        wrote: u64,
    },
    /// Nothing to do: A was already clear (the snapshot or a concurrent
    /// pass), or, retiring, the entry is young or already old.
    WasOld,
    /// The entry no longer holds what was examined (unmapped, remapped,
    /// split, collapsed): nothing was written; this is the current value.
    Changed(u64),
}

/// What the pass writes over an entry it examined at `level`: a leaf loses
/// A; a non-leaf with A set loses A and gains the rescan mark; a non-leaf
/// with only the mark loses the mark; each of these takes the pass's tag.
/// Retiring clears the tag of an entry that is none of these.
#[inline(always)]
fn aged<F: EntryFormat>(old: u64, level: Level, stamp: Stamp) -> u64 {
    let young = old & (F::ACCESSED | F::RESCAN) != 0;
    match stamp {
        _ if !F::is_present(old) => old,
        Stamp::Retire if young => old,
        Stamp::Retire => F::with_gen_tag(old, 0),
        Stamp::Young(_) if !young => old,
        Stamp::Young(tag) if F::is_leaf(old, level) => F::with_gen_tag(old & !F::ACCESSED, tag),
        Stamp::Young(tag) if old & F::ACCESSED != 0 => {
            F::with_gen_tag((old & !F::ACCESSED) | F::RESCAN, tag)
        }
        Stamp::Young(tag) => F::with_gen_tag(old & !F::RESCAN, tag),
    }
}

/// The one aging helper: test-and-clear the accessed bit of the entry at
/// `level` in `slot`, whose value the caller read as `snapshot`, and write
/// the pass's generation tag in the same compare-exchange (or, with
/// [`Stamp::Retire`], retire the tag of an entry that is not young),
/// without ever losing a concurrently set D bit or writing to an entry
/// other than the one examined. See the module docs for why this is a
/// compare-exchange, and for the rescan mark it keeps in non-leaf entries.
#[inline(always)]
pub fn test_and_clear_young<F: EntryFormat>(
    slot: &AtomicU64,
    snapshot: u64,
    level: Level,
    stamp: Stamp,
) -> ClearYoung {
    let outcome = |was: u64, wrote: u64| match stamp {
        Stamp::Retire => ClearYoung::Retired { was, wrote },
        Stamp::Young(_) if was & F::ACCESSED != 0 => ClearYoung::Cleared { was, wrote },
        Stamp::Young(_) => ClearYoung::Rescan { was, wrote },
    };
    #[cfg(hvcore_broken_aging)]
    {
        // Deliberately broken (a non-atomic read-modify-write), compiled only
        // with `--cfg hvcore_broken_aging` to show the loom models catch it.
        let _ = snapshot;
        let v = slot.load(Ordering::Acquire);
        let new = aged::<F>(v, level, stamp);
        if new == v {
            return ClearYoung::WasOld;
        }
        slot.store(new, Ordering::Release);
        return outcome(v, new);
    }
    #[cfg(not(hvcore_broken_aging))]
    {
        // A failed exchange is retried when only bits that move under us
        // without changing what the entry maps ([`EntryFormat::MOVING`])
        // differ from the snapshot; otherwise the entry is no longer the
        // one examined.
        let update = update_entry::<F>(slot, snapshot, Change::Moving, Retry::WhileSame, |cur| {
            Some(aged::<F>(cur, level, stamp))
        });
        match update {
            Update::Wrote { was, wrote } => outcome(was, wrote),
            Update::Unchanged(_) => ClearYoung::WasOld,
            Update::Declined(now) => ClearYoung::Changed(now),
        }
    }
}

/// Counters of one aging pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// The generation this pass stamped.
    pub seq: u64,
    /// Young leaves found (and cleared).
    pub young_leaves: u64,
    /// 4 KiB pages in those leaves.
    pub young_pages: u64,
    /// Non-leaf entries whose A was cleared (and whose tables were scanned).
    pub tables_entered: u64,
    /// Non-leaf entries with A clear scanned once more because the previous
    /// pass cleared their A (the rescan mark).
    pub tables_rescanned: u64,
    /// Tables skipped because their parent's A was clear.
    pub subtrees_skipped: u64,
    /// 8-entry leaf lines skipped without a young entry.
    pub leaf_lines_skipped: u64,
    /// Leaf entries read (the pages the pass looked at; the rest of the
    /// guest was skipped with its parent's A bit clear).
    pub leaf_entries_read: u64,
    /// Entries that changed under the pass and were handled again.
    pub raced: u64,
    /// Tables whose children's generation tags the pass checked (see
    /// [`crate::generations`]: a table under an old parent, or one whose
    /// turn, one pass in every [`CHECK_EVERY`], came since its last scan).
    pub tables_checked: u64,
    /// Entries whose tag the pass retired to "old" (not young for
    /// [`EXACT_GENS`] passes).
    pub retired: u64,
    /// Whether the pass cleared something, so translations must be flushed.
    pub flush_needed: bool,
    /// Whether the pass called the flush.
    pub flushed: bool,
}

/// Where an aging walk reports young leaves.
pub trait YoungSink {
    /// A young leaf at `level` (any level) whose A was cleared.
    fn leaf(&mut self, gpa: u64, level: Level, entry: u64);
    /// Young 4 KiB leaves of one chunk of a leaf table: bit `k` of
    /// `cleared` set means the entry at `gpa + k * 4096` (snapshot `old[k]`)
    /// was young. The default reports each through [`YoungSink::leaf`].
    #[inline(always)]
    fn chunk(&mut self, gpa: u64, cleared: u32, old: &[u64; CHUNK]) {
        let mut m = cleared;
        while m != 0 {
            let k = m.trailing_zeros() as usize;
            m &= m - 1;
            self.leaf(gpa + k as u64 * 4096, Level::PAGE_4K, old[k]);
        }
    }
}

const _: () = assert!(CHUNK <= 32, "YoungSink::chunk takes a 32-bit mask");

impl<T: FnMut(u64, Level, u64)> YoungSink for T {
    #[inline(always)]
    fn leaf(&mut self, gpa: u64, level: Level, entry: u64) {
        self(gpa, level, entry)
    }
}

/// Handles one entry of an aging walk: clears A with the one helper and,
/// for a leaf, reports it young. A non-leaf entry is cleared before the walk
/// steps into it; the value the helper replaced and the value it wrote are
/// returned (the pass decodes the generation the table had from the first,
/// and the walk follows the second). An entry that changed under the pass
/// is handled again with its new value.
#[inline(always)]
fn age_entry<F: EntryFormat>(
    slot: &AtomicU64,
    gpa: u64,
    level: Level,
    snapshot: u64,
    tag: u64,
    stats: &mut PassStats,
    young: &mut impl YoungSink,
) -> Option<(u64, u64)> {
    let mut old = snapshot;
    loop {
        if !F::is_present(old) {
            return None;
        }
        match test_and_clear_young::<F>(slot, old, level, Stamp::Young(tag)) {
            ClearYoung::WasOld | ClearYoung::Retired { .. } => return None,
            ClearYoung::Rescan { was, wrote } => {
                stats.tables_rescanned += 1;
                return Some((was, wrote));
            }
            ClearYoung::Cleared { was, wrote } => {
                stats.flush_needed = true;
                if F::is_leaf(was, level) {
                    stats.young_leaves += 1;
                    stats.young_pages += F::level_size(level) / 4096;
                    young.leaf(gpa, level, was);
                    return None;
                }
                stats.tables_entered += 1;
                return Some((was, wrote));
            }
            ClearYoung::Changed(now) => {
                stats.raced += 1;
                old = now;
            }
        }
    }
}

/// Ages one chunk of leaf entries (the hot path): the same helper and rules
/// as [`age_entry`], with the young ones reported together. Each selected
/// entry is read again right before the helper (an L1 hit: the walk has
/// just read its line) and that value is the snapshot the helper compares
/// against; the alternative, keeping the walk's first read, costs a stack
/// store per entry that every locked instruction then waits for.
#[inline(always)]
fn age_chunk<F: EntryFormat>(
    chunk: &LeafChunk<'_>,
    tag: u64,
    stats: &mut PassStats,
    young: &mut impl YoungSink,
    per_page: bool,
) {
    let mut mask = chunk.mask;
    let mut cleared = 0u32;
    let mut old = [0u64; CHUNK];
    while mask != 0 {
        let k = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let (Some(slot), Some(o)) = (chunk.slots.get(k), old.get_mut(k)) else {
            break;
        };
        let snapshot = slot.load(Ordering::Acquire);
        if !F::is_present(snapshot) {
            continue;
        }
        match test_and_clear_young::<F>(slot, snapshot, Level::PAGE_4K, Stamp::Young(tag)) {
            ClearYoung::Cleared { was, .. } => {
                cleared |= 1 << k;
                *o = was;
                if per_page {
                    young.leaf(chunk.gpa + k as u64 * 4096, Level::PAGE_4K, was);
                }
            }
            ClearYoung::WasOld | ClearYoung::Rescan { .. } | ClearYoung::Retired { .. } => {}
            ClearYoung::Changed(now) => {
                stats.raced += 1;
                age_entry::<F>(
                    slot,
                    chunk.gpa + k as u64 * 4096,
                    Level::PAGE_4K,
                    now,
                    tag,
                    stats,
                    young,
                );
            }
        }
    }
    if cleared != 0 {
        let n = u64::from(cleared.count_ones());
        stats.young_leaves += n;
        stats.young_pages += n;
        stats.flush_needed = true;
        if !per_page {
            young.chunk(chunk.gpa, cleared, &old);
        }
    }
}

/// Whether a table whose parent had generation `was` before pass `seq`
/// must be checked before the scan: its parent is old, or a pass of its
/// turn (one in every [`CHECK_EVERY`], offset by `key`, which spreads the
/// tables' turns over the passes) went by since `was`.
#[inline(always)]
fn check_due(was: Option<u64>, seq: u64, key: u64) -> bool {
    let Some(was) = was else {
        return true;
    };
    let key = key % CHECK_EVERY;
    (seq + key) / CHECK_EVERY != (was.min(seq) + key) / CHECK_EVERY
}

/// Retires the tags of the entries of `table` (at `level`) that are not
/// young and were last young [`EXACT_GENS`] or more passes before `seq`,
/// given `parent`, the generation the table's parent entry had before this
/// pass stamped it (`None`: old, so every tag below it is stale). Keeps the
/// invariant of [`crate::generations`]; each retirement goes through the
/// one helper. Entries are tested a line at a time without branches, so a
/// table whose tags are all fresh costs a read of lines the scan is about
/// to read anyway.
pub fn retire_stale<F: EntryFormat>(
    table: &[AtomicU64],
    level: Level,
    parent: Option<u64>,
    seq: u64,
    stats: &mut PassStats,
) {
    stats.tables_checked += 1;
    // A child with tag `t` is `ahead + (ptag - t) mod TAGS` passes old.
    let (ptag, ahead) = match parent {
        Some(p) => (tag_of(p), seq.saturating_sub(p)),
        None => (0, EXACT_GENS),
    };
    let limit = EXACT_GENS.saturating_sub(ahead);
    for line in table.chunks(8) {
        let mut stale = 0u32;
        for (k, slot) in line.iter().enumerate() {
            let v = slot.load(Ordering::Acquire);
            let t = F::gen_tag(v);
            let d = ptag.wrapping_sub(t);
            let back = if d > TAGS { d.wrapping_add(TAGS) } else { d };
            let is = (v & (F::ACCESSED | F::RESCAN) == 0) & (t != 0) & (back >= limit);
            stale |= u32::from(is) << k;
        }
        while stale != 0 {
            let k = stale.trailing_zeros() as usize;
            stale &= stale - 1;
            let slot = &line[k];
            let mut old = slot.load(Ordering::Acquire);
            loop {
                match test_and_clear_young::<F>(slot, old, level, Stamp::Retire) {
                    ClearYoung::Retired { .. } => stats.retired += 1,
                    ClearYoung::Changed(now) if F::is_present(now) => {
                        // Replaced meanwhile: writers give a new entry tag
                        // 0 or the stale entry's own (split, collapse), so
                        // it is retired too unless it is young.
                        old = now;
                        continue;
                    }
                    _ => {}
                }
                break;
            }
        }
    }
}

/// The invariant of [`crate::generations`], checked where the pass has
/// just moved a table's parent from generation `was` to `seq`: every child
/// that is not young decodes to the same generation against the new stamp
/// as against the old, that is, it is less than [`TAGS`] passes older than
/// its parent (after the table's check, if one was due).
#[cfg(debug_assertions)]
fn debug_check_tags<F: EntryFormat>(table: &[AtomicU64], was: Option<u64>, seq: u64) {
    for slot in table {
        let v = slot.load(Ordering::Acquire);
        let t = F::gen_tag(v);
        if F::is_present(v) && t != 0 && v & (F::ACCESSED | F::RESCAN) == 0 {
            debug_assert_eq!(
                decode(was, t),
                decode(Some(seq), t),
                "{}: tag {t} of {v:#x} is too old for its parent (generation {was:?}, now {seq})",
                F::NAME
            );
        }
    }
}

/// Ages `[start, end)` as part of pass `gens.max_seq()`: every entry with A
/// set is cleared by the one helper and takes the pass's generation tag,
/// skipping cold subtrees and lines; stale tags in the tables it scans are
/// retired (module docs of [`crate::generations`]); every leaf that was
/// young is reported to `young` (a closure `FnMut(gpa, level, entry)` will
/// do). Does not flush (see [`age_pass`]).
pub fn age_range<F: EntryFormat, M: TableMemory>(
    tables: &Tables<F, M>,
    gens: &Generations,
    start: u64,
    end: u64,
    mut young: impl YoungSink,
) -> PassStats {
    let seq = gens.max_seq();
    let tag = tag_of(seq);
    let mut stats = PassStats {
        seq,
        ..PassStats::default()
    };
    // The generation each entry on the walk's current path had before this
    // pass stamped it; entries of the root table decode against `seq`.
    let mut before: [Option<u64>; MAX_LEVELS + 2] = [None; MAX_LEVELS + 2];
    before[usize::from(F::LEVELS.get()) + 1] = Some(seq);
    let mut walk = tables
        .walk(start, end, Level::PAGE_4K, F::ACCESSED | F::RESCAN)
        .leaf_filter(F::ACCESSED);
    let mut sparse = true;
    let mut per_page = true;
    while let Some(item) = walk.next_batch() {
        match item {
            Batch::Entry(e) => {
                stats.leaf_entries_read += u64::from(e.level == Level::PAGE_4K);
                let slot = walk.slot();
                let Some((old, wrote)) =
                    age_entry::<F>(slot, e.gpa, e.level, e.old, tag, &mut stats, &mut young)
                else {
                    // Not stamped by this pass (a leaf, gone, or aged by
                    // someone else meanwhile): its table, if any, is not
                    // ours to scan.
                    walk.skip_children();
                    continue;
                };
                // Scan the table under the entry as the helper stamped it,
                // not whatever a writer may link there next (its children's
                // tags decode against this stamp).
                debug_assert!(
                    F::is_table(wrote, e.level) && F::gen_tag(wrote) == tag,
                    "the pass steps only into a table entry it stamped"
                );
                walk.wrote(wrote);
                // A table the walk is about to scan: check its children's
                // tags if its parent is old or its turn came since it was
                // last scanned (the invariant of `crate::generations`).
                let l = usize::from(e.level.get());
                let was = decode(before[l + 1], F::gen_tag(old));
                before[l] = was;
                if check_due(
                    was,
                    seq,
                    e.gpa / F::level_size(e.level) + u64::from(e.level.get()),
                ) && let Some(child) = tables.mem().table(F::addr(old))
                    && child.len() == F::ENTRIES
                    && let Some(lower) = e.level.next_lower()
                {
                    retire_stale::<F>(child, lower, was, seq, &mut stats);
                }
                #[cfg(debug_assertions)]
                if let Some(child) = tables.mem().table(F::addr(wrote)) {
                    debug_check_tags::<F>(child, was, seq);
                }
            }
            Batch::Leaves(run) => {
                stats.leaf_entries_read += run.slots.len() as u64;
                let skipped = run.for_each_chunk(sparse, |chunk| {
                    age_chunk::<F>(&chunk, tag, &mut stats, &mut young, per_page)
                });
                stats.leaf_lines_skipped += skipped;
                // Expect the next table to look like this one. More than
                // 3/4 of the lines skipped (under about 3 % of the entries
                // young, scattered): scan line by line. More than 1/8
                // skipped (young pages scattered, under about 25 %): report
                // each young page as it is cleared rather than per chunk.
                sparse = skipped * 4 > run.lines() * 3;
                per_page = skipped * 8 > run.lines();
            }
        }
    }
    stats.subtrees_skipped = walk.stats.subtrees_skipped;
    stats.leaf_lines_skipped += walk.stats.leaf_lines_skipped;
    stats
}

/// Whether any page in `[start, end)` is young, without clearing anything
/// (KVM's `test_age_gfn`).
pub fn test_young<F: EntryFormat, M: TableMemory>(
    tables: &Tables<F, M>,
    start: u64,
    end: u64,
) -> bool {
    let mut walk = tables.walk(start, end, Level::PAGE_4K, F::ACCESSED | F::RESCAN);
    while let Some(e) = walk.next() {
        if F::is_present(e.old) && F::is_leaf(e.old, e.level) {
            return true;
        }
    }
    false
}

/// Drops young reports: the generation is in the entry already.
struct NoReports;
impl YoungSink for NoReports {
    #[inline(always)]
    fn leaf(&mut self, _: u64, _: Level, _: u64) {}
    #[inline(always)]
    fn chunk(&mut self, _: u64, _: u32, _: &[u64; CHUNK]) {}
}

/// One aging pass over the whole guest: starts a generation at `now_ms`,
/// ages every mapped page (young ones take the generation's tag in their
/// entry, stale tags are retired), then flushes once through `flush` if
/// the pass cleared anything and `policy` says so.
pub fn age_pass<F, M, T>(
    tables: &Tables<F, M>,
    gens: &mut Generations,
    now_ms: u64,
    flush: &mut T,
    policy: FlushPolicy,
) -> PassStats
where
    F: EntryFormat,
    M: TableMemory,
    T: TlbFlush,
{
    let seq = gens.begin_pass(now_ms);
    let mut stats = age_range(tables, gens, 0, F::space_size(), NoReports);
    // The root table is scanned by every pass; its entries decode against
    // `max_seq`, so it is checked when its turn comes (after the walk: the
    // entries it just stamped are young and stay).
    if check_due(seq.checked_sub(1), seq, u64::MAX / 2)
        && let Some(root) = tables.mem().table(tables.root())
        && root.len() == F::ENTRIES
    {
        retire_stale::<F>(root, F::LEVELS, Some(seq), seq, &mut stats);
    }
    if stats.flush_needed && policy == FlushPolicy::OncePerPass {
        flush.flush_guest_tlb();
        stats.flushed = true;
    }
    stats
}
