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
//! Guarantee: every access the guest makes between the end of pass N (its
//! TLB flush) and the start of pass N+1 makes the page young in pass N+1.
//! Accesses made *during* a pass are seen by this pass or a later one, with
//! one exception shared by every A-bit scheme: an access that hits a TLB or
//! paging-structure cache entry set up before the pass cleared the bits sets
//! nothing, and is recorded only if the page is touched again after the
//! flush.
//!
//! # Flush
//! A pass that cleared any A bit asks its [`TlbFlush`] for one flush at the
//! end ([`crate::flush`]).

use crate::flush::{FlushPolicy, TlbFlush};
use crate::generations::Generations;
use crate::pte::EntryFormat;
use crate::sync::{AtomicU64, Ordering};
use crate::table::{TableMemory, Tables};

/// Result of [`test_and_clear_young`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearYoung {
    /// A was set in the examined entry and is now clear in it.
    Cleared,
    /// A was already clear (the snapshot or a concurrent pass): not young.
    WasOld,
    /// The entry no longer holds what was examined (unmapped, remapped,
    /// split, collapsed): nothing was written; this is the current value.
    Changed(u64),
}

/// The one aging helper: test-and-clear the accessed bit of the entry in
/// `slot`, whose value the caller read as `snapshot`, without ever losing a
/// concurrently set D bit or clearing A in an entry other than the one
/// examined. See the module docs for why this is a compare-exchange.
#[inline(always)]
pub fn test_and_clear_young<F: EntryFormat>(slot: &AtomicU64, snapshot: u64) -> ClearYoung {
    #[cfg(hvcore_broken_aging)]
    {
        // Deliberately broken (a non-atomic read-modify-write), compiled only
        // with `--cfg hvcore_broken_aging` to show the loom models catch it.
        let _ = snapshot;
        let v = slot.load(Ordering::Acquire);
        if v & F::ACCESSED == 0 {
            return ClearYoung::WasOld;
        }
        slot.store(v & !F::ACCESSED, Ordering::Release);
        return ClearYoung::Cleared;
    }
    #[cfg(not(hvcore_broken_aging))]
    {
        let mut old = snapshot;
        loop {
            if old & F::ACCESSED == 0 {
                return ClearYoung::WasOld;
            }
            match slot.compare_exchange(
                old,
                old & !F::ACCESSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return ClearYoung::Cleared,
                Err(now) if (now ^ old) & !(F::ACCESSED | F::DIRTY) == 0 => old = now,
                Err(now) => return ClearYoung::Changed(now),
            }
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
    /// Tables skipped because their parent's A was clear.
    pub subtrees_skipped: u64,
    /// 8-entry leaf lines skipped without a young entry.
    pub leaf_lines_skipped: u64,
    /// Entries that changed under the pass and were handled again.
    pub raced: u64,
    /// Whether the pass cleared something, so translations must be flushed.
    pub flush_needed: bool,
    /// Whether the pass called the flush.
    pub flushed: bool,
}

/// Handles one entry of an aging walk: clears A with the one helper and,
/// for a leaf, reports it young through `young(gpa, level, entry)`. A
/// non-leaf entry is cleared before the walk steps into it.
#[inline(always)]
fn age_entry<F: EntryFormat>(
    slot: &AtomicU64,
    gpa: u64,
    level: u8,
    snapshot: u64,
    stats: &mut PassStats,
    young: &mut impl FnMut(u64, u8, u64),
) {
    let mut old = snapshot;
    loop {
        if !F::is_present(old) {
            return;
        }
        match test_and_clear_young::<F>(slot, old) {
            ClearYoung::WasOld => return,
            ClearYoung::Cleared => {
                stats.flush_needed = true;
                if F::is_leaf(old, level) {
                    stats.young_leaves += 1;
                    stats.young_pages += F::level_size(level) / 4096;
                    young(gpa, level, old);
                } else {
                    stats.tables_entered += 1;
                }
                return;
            }
            ClearYoung::Changed(now) => {
                stats.raced += 1;
                old = now;
            }
        }
    }
}

/// Ages `[start, end)`: every entry with A set is cleared by the one helper,
/// skipping cold subtrees and lines, and `young(gpa, level, entry)` is called
/// for every leaf that was young. Does not flush (see [`age_pass`]).
pub fn age_range<F: EntryFormat, M: TableMemory>(
    tables: &Tables<F, M>,
    start: u64,
    end: u64,
    mut young: impl FnMut(u64, u8, u64),
) -> PassStats {
    let mut stats = PassStats::default();
    let mut walk = tables.walk(start, end, 1, F::ACCESSED);
    while let Some(e) = walk.next() {
        age_entry::<F>(walk.slot(), e.gpa, e.level, e.old, &mut stats, &mut young);
    }
    stats.subtrees_skipped = walk.stats.subtrees_skipped;
    stats.leaf_lines_skipped = walk.stats.leaf_lines_skipped;
    stats
}

/// Whether any page in `[start, end)` is young, without clearing anything
/// (KVM's `test_age_gfn`).
pub fn test_young<F: EntryFormat, M: TableMemory>(
    tables: &Tables<F, M>,
    start: u64,
    end: u64,
) -> bool {
    let mut walk = tables.walk(start, end, 1, F::ACCESSED);
    while let Some(e) = walk.next() {
        if F::is_present(e.old) && F::is_leaf(e.old, e.level) {
            return true;
        }
    }
    false
}

/// One aging pass over the whole guest: starts a generation at `now_ms`,
/// ages every mapped page (stamping young ones into `gens`), then flushes
/// once through `flush` if the pass cleared anything and `policy` says so.
pub fn age_pass<F, M, S, T>(
    tables: &Tables<F, M>,
    gens: &mut Generations<S>,
    now_ms: u64,
    flush: &mut T,
    policy: FlushPolicy,
) -> PassStats
where
    F: EntryFormat,
    M: TableMemory,
    S: AsRef<[u8]> + AsMut<[u8]>,
    T: TlbFlush,
{
    let seq = gens.begin_pass(now_ms);
    let mut stats = age_range(tables, 0, F::space_size(), |gpa, level, _| {
        gens.stamp(gpa, F::level_size(level))
    });
    stats.seq = seq;
    if stats.flush_needed && policy == FlushPolicy::OncePerPass {
        flush.flush_guest_tlb();
        stats.flushed = true;
    }
    stats
}
