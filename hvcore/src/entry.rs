//! The one write-side atomic helper: every compare-exchange on a
//! second-level entry goes through [`update_entry`].
//!
//! Modelled on Linux KVM's `tdp_mmu_set_spte_atomic`
//! (`arch/x86/kvm/mmu/tdp_mmu.c`), through which the TDP MMU funnels every
//! write that may race with the CPU or another walker: one helper owns the
//! compare-exchange against the caller's snapshot and refreshes the snapshot
//! when the exchange fails, so the ordering and the retry rule are written
//! once. Here the helper also owns the retry loop: the caller's `decide`
//! closure says, from the value the entry holds now, what to write over it
//! or that it no longer wants to write; the helper calls it again with the
//! new value whenever the exchange fails.
//!
//! Its users: the aging helper [`crate::age::test_and_clear_young`] (clear A,
//! write the generation tag, retire a tag), [`crate::table`]'s writers that
//! keep an entry present (protect, split, collapse, `mark_accessed` and the
//! ancestors' A of rule 4) and [`crate::generations::Generations::adopt`].
//! Entries are otherwise only written by a plain store into a non-present
//! entry (map, rule 1) or removed with `swap(0)` (unmap, rule 2 of
//! [`crate::table`]).
//!
//! The helper checks the writers' rules with debug assertions (in test and
//! debug builds; they compile to nothing in release): an exchange never
//! makes an entry present or non-present, and what it may change depends on
//! the [`Change`] the caller declares.

use crate::pte::EntryFormat;
use crate::sync::{AtomicU64, Ordering};

/// What a compare-exchange writer changes in an entry that stays present;
/// the helper checks it (debug assertions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only [`EntryFormat::MOVING`] bits (A, D, the rescan mark, the
    /// generation tag): aging, `mark_accessed`, adopting a guest.
    Moving,
    /// The rights of a leaf (protect): its frame, size, A, D and tag stay.
    Perms,
    /// A huge leaf becomes a table or a table a huge leaf (split,
    /// collapse): the generation tag stays ([`crate::table`] rule 6).
    Replace,
}

/// When [`update_entry`] tries again after a failed exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// With whatever the entry holds now (`decide` judges it).
    Always,
    /// Only while the entry still maps what the snapshot mapped: the value
    /// found differs from the snapshot in [`EntryFormat::MOVING`] bits only
    /// (the CPU set A or D, a pass aged it). Otherwise the entry is no
    /// longer the one examined: [`Update::Declined`] with the value found.
    /// Tested on the failure path only, so the first exchange costs nothing
    /// extra (the aging pass's hot path).
    WhileSame,
}

/// What [`update_entry`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// The exchange replaced `was` (the value the entry held at that
    /// instant) by `wrote`.
    Wrote {
        /// The value replaced.
        was: u64,
        /// The value written.
        wrote: u64,
    },
    /// `decide` asked for the value the entry already holds: nothing was
    /// written.
    Unchanged(u64),
    /// `decide` declined to write over this value: nothing was written.
    Declined(u64),
}

/// Writes over the entry in `slot`, which the caller read as `snapshot`,
/// the value `decide(current)` returns, with a compare-exchange against
/// the value it was computed from. When the exchange fails (the CPU set
/// A or D, another walker wrote, a writer replaced the entry), `decide` is
/// called again with the value found, if `retry` allows; `None` stops
/// without writing. So nothing is ever written over a value `decide` has
/// not seen, and no bit another agent set between the read and the write
/// is lost.
///
/// Every exchange has `AcqRel` success and `Acquire` failure ordering: the
/// written value is published to walkers that acquire-load the entry, and
/// a refreshed snapshot comes with what its writer published (a new table
/// page's zeroed contents).
#[inline(always)]
pub fn update_entry<F: EntryFormat>(
    slot: &AtomicU64,
    snapshot: u64,
    change: Change,
    retry: Retry,
    mut decide: impl FnMut(u64) -> Option<u64>,
) -> Update {
    let mut cur = snapshot;
    loop {
        let Some(new) = decide(cur) else {
            return Update::Declined(cur);
        };
        if new == cur {
            return Update::Unchanged(cur);
        }
        debug_check::<F>(cur, new, change);
        match slot.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                return Update::Wrote {
                    was: cur,
                    wrote: new,
                };
            }
            Err(now) if retry == Retry::WhileSame && (now ^ snapshot) & !F::MOVING != 0 => {
                return Update::Declined(now);
            }
            Err(now) => cur = now,
        }
    }
}

/// The writers' rules the helper can see from one exchange.
#[inline(always)]
fn debug_check<F: EntryFormat>(old: u64, new: u64, change: Change) {
    debug_assert!(
        F::is_present(old) && F::is_present(new),
        "{}: a compare-exchange keeps an entry present ({old:#x} -> {new:#x}); \
         entries are created by a store and removed by swap(0)",
        F::NAME
    );
    match change {
        Change::Moving => debug_assert!(
            (old ^ new) & !F::MOVING == 0,
            "{}: more than A/D/rescan/tag changed ({old:#x} -> {new:#x})",
            F::NAME
        ),
        Change::Perms => debug_assert!(
            (old ^ new) & (F::ADDR_MASK | F::LARGE | F::ACCESSED | F::DIRTY | F::GEN_MASK) == 0,
            "{}: protect changed more than the rights ({old:#x} -> {new:#x})",
            F::NAME
        ),
        Change::Replace => debug_assert!(
            F::gen_tag(old) == F::gen_tag(new),
            "{}: a split or collapse lost the generation tag ({old:#x} -> {new:#x})",
            F::NAME
        ),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::addr::HostPhysAddr;
    use crate::npt::Npt;
    use crate::pte::{Level, Perms};

    fn leaf() -> u64 {
        Npt::make_leaf(HostPhysAddr::new(0x5000), Level::PAGE_4K, Perms::RW)
    }

    #[test]
    fn a_failed_exchange_asks_again_with_the_value_found() {
        let slot = AtomicU64::new(leaf() | Npt::DIRTY);
        let mut seen = Vec::new();
        // The caller's snapshot predates the CPU setting D.
        let r = update_entry::<Npt>(&slot, leaf(), Change::Moving, Retry::Always, |v| {
            seen.push(v);
            Some(v | Npt::ACCESSED)
        });
        assert_eq!(seen, [leaf(), leaf() | Npt::DIRTY]);
        assert_eq!(
            r,
            Update::Wrote {
                was: leaf() | Npt::DIRTY,
                wrote: leaf() | Npt::DIRTY | Npt::ACCESSED
            }
        );
        assert_eq!(
            slot.load(Ordering::Relaxed),
            leaf() | Npt::DIRTY | Npt::ACCESSED
        );
    }

    #[test]
    fn retrying_while_same_stops_at_a_remapped_entry() {
        let remapped = Npt::make_leaf(HostPhysAddr::new(0x9000), Level::PAGE_4K, Perms::RW);
        let slot = AtomicU64::new(remapped);
        let r = update_entry::<Npt>(&slot, leaf(), Change::Moving, Retry::WhileSame, |v| {
            Some(v | Npt::ACCESSED)
        });
        assert_eq!(r, Update::Declined(remapped));
        assert_eq!(slot.load(Ordering::Relaxed), remapped);
        slot.store(leaf() | Npt::DIRTY, Ordering::Relaxed);
        let r = update_entry::<Npt>(&slot, leaf(), Change::Moving, Retry::WhileSame, |v| {
            Some(v | Npt::ACCESSED)
        });
        assert!(matches!(r, Update::Wrote { .. }), "{r:?}");
    }

    #[test]
    fn declining_or_asking_for_the_same_value_writes_nothing() {
        let slot = AtomicU64::new(leaf());
        let r = update_entry::<Npt>(&slot, leaf(), Change::Moving, Retry::Always, |_| None);
        assert_eq!(r, Update::Declined(leaf()));
        let r = update_entry::<Npt>(&slot, leaf(), Change::Moving, Retry::Always, Some);
        assert_eq!(r, Update::Unchanged(leaf()));
        assert_eq!(slot.load(Ordering::Relaxed), leaf());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "keeps an entry present")]
    fn making_an_entry_present_by_exchange_is_refused() {
        let slot = AtomicU64::new(0);
        update_entry::<Npt>(&slot, 0, Change::Moving, Retry::Always, |_| Some(leaf()));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "more than A/D/rescan/tag")]
    fn a_moving_change_may_not_remap() {
        let slot = AtomicU64::new(leaf());
        update_entry::<Npt>(&slot, leaf(), Change::Moving, Retry::Always, |v| {
            Some(v + 0x1000)
        });
    }
}
