//! Epoch-based grace periods for table pages unlinked under lockless walkers.
//!
//! Aging walkers read table pages without any lock while a writer (map,
//! unmap, split, collapse) may unlink a page from the tree. The writer must
//! not hand that page back to the frame allocator while a walker that could
//! have seen the old link still runs. This module is the RCU-like rule that
//! decides when "nobody can still be in it" holds.
//!
//! # Protocol
//! One [`EpochDomain`] per table tree holds a global epoch counter (starts
//! at 1) and a fixed number of walker *slots*. A slot is shared by every
//! walker pinned in it, so pinning never waits for another walker to leave:
//! a VM may have more walkers at once (64 vCPUs faulting, the aging thread,
//! the reclaimer, queries) than the domain has slots.
//!
//! A slot is one word: how many walkers are in it (`count`), how many of
//! them have not yet published their epoch (`pending`), and the smallest
//! epoch its walkers published (`epoch`, meaningful while `count > 0`).
//!
//! * **Pin** (walker, once per walk, not per entry): join a slot, counted
//!   in and marked pending, with one read-modify-write (a compare-exchange
//!   that claims the first empty slot, or, when none is empty, a
//!   `fetch_add` on the least busy); read the
//!   global epoch *with a read-modify-write* (`fetch_add(0)`), `e`; merge
//!   `e` into the slot (its epoch becomes the smaller of the two) and leave
//!   `pending` in one compare-exchange. Unpin leaves the slot (release),
//!   emptying it when it is the last walker.
//! * **Retire** (writer, after the unlinking store): `r = global.fetch_add(1)`
//!   (the old value). The page may be freed once every slot is empty or has
//!   no pending walker and an epoch `> r` ([`EpochDomain::is_quiescent`]).
//!
//! Why this is enough: both sides do a read-modify-write on the same
//! counter, and RMWs on one location are totally ordered, each reading the
//! latest value (C++ "release sequence" rules; no `SeqCst` needed, which
//! loom also models exactly). Take a walker that could reach the page.
//! * If its RMW on the counter comes after the writer's, it reads
//!   `e >= r + 1` and acquires the writer's release, so the unlinking store
//!   happens-before every later read of the walker: it can never reach the
//!   page, whatever its slot says.
//! * If its RMW comes first, the writer's RMW acquires it, so the walker's
//!   join happens-before the writer's scan, which therefore reads the slot
//!   as the join left it or later: while the walker is in the slot, it is
//!   either still pending (blocks) or has merged `e <= r`, and the slot's
//!   epoch only ever goes down while it is occupied (blocks); once it has
//!   left, the release of its unpin (continued by every later
//!   read-modify-write of the slot) makes every read of that walker
//!   happen-before the free.
//!
//! A slot's epoch is the oldest of its walkers', so a slot that never
//! empties holds back reclaim of every page retired after its oldest
//! walker pinned; walks are short and the slots are many, so slots empty
//! between walks.
//!
//! Pages also need a TLB flush between unlink and reuse (the CPU's
//! paging-structure caches may still point into them); that is the writer's
//! business ([`crate::table::Mapper::tlb_flushed`]).
//!
//! The proofs are exercised by the loom models in `tests/loom.rs`
//! (`loom_unlink_vs_walker` and its deliberately broken twin,
//! `loom_epoch_grace_period`, and `loom_epoch_walkers_share_a_slot`, with
//! more walkers than slots).

use crate::sync::{AtomicU64, Ordering};

/// Walker slots of a table tree's domain. Any number of walkers can be
/// pinned at once; more slots only mean fewer walkers sharing one (a shared
/// slot holds back reclaim until its oldest walker leaves). The loom models
/// run with two, so that their three-thread models also share slots and
/// every extra slot does not multiply the interleavings loom explores.
#[cfg(not(loom))]
pub const WALKER_SLOTS: usize = 16;
/// Walker slots (two under loom: see the non-loom constant).
#[cfg(loom)]
pub const WALKER_SLOTS: usize = 2;

/// Bits of a slot word: walkers in the slot (low byte), walkers that have
/// not published their epoch (next byte), their smallest published epoch
/// (the rest: 2^48 retirements, centuries at any rate a guest can unmap
/// tables).
const COUNT: u64 = 1;
const PENDING: u64 = 1 << 8;
const FIELD: u64 = 0xff;
const EPOCH_SHIFT: u32 = 16;
/// The most walkers one slot holds; a pin chooses the least busy slot, so
/// this bounds the walkers at once to `255 * slots`.
const MAX_IN_SLOT: u64 = FIELD;

const fn count(v: u64) -> u64 {
    v & FIELD
}
const fn pending(v: u64) -> u64 {
    (v >> 8) & FIELD
}
const fn epoch(v: u64) -> u64 {
    v >> EPOCH_SHIFT
}

/// The global epoch and walker slots of one table tree.
#[derive(Debug)]
pub struct EpochDomain<const SLOTS: usize = WALKER_SLOTS> {
    global: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

impl Default for EpochDomain {
    fn default() -> Self {
        Self::new()
    }
}

impl EpochDomain {
    /// A domain with no walkers, at epoch 1, with [`WALKER_SLOTS`] slots.
    pub fn new() -> Self {
        Self::with_slots()
    }
}

impl<const SLOTS: usize> EpochDomain<SLOTS> {
    /// A domain with no walkers, at epoch 1, with `SLOTS` slots (tests use
    /// fewer slots than walkers).
    pub fn with_slots() -> Self {
        const { assert!(SLOTS > 0) };
        Self {
            global: AtomicU64::new(1),
            slots: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Pins the caller: until the guard is dropped, no table page that was
    /// reachable when `pin` returned is freed. Never waits for another
    /// walker: a busy slot is shared.
    pub fn pin(&self) -> EpochGuard<'_, SLOTS> {
        let (slot, mut cur) = self.join();
        // An RMW, not a load: see the module docs.
        let e = self.global.fetch_add(0, Ordering::AcqRel);
        debug_assert!(e >> (64 - EPOCH_SHIFT) == 0, "epoch overflow");
        loop {
            // The slot's epoch is the oldest of its walkers': the first
            // walker to publish sets it, the others can only lower it.
            let published = epoch(cur);
            let oldest = if published == 0 { e } else { published.min(e) };
            let new = (oldest << EPOCH_SHIFT) | (cur & FIELD) | ((pending(cur) - 1) << 8);
            match self.slots[slot].compare_exchange(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    return EpochGuard {
                        domain: self,
                        slot,
                        last: new,
                    };
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Joins a slot as a pending walker: claims the first empty slot with a
    /// compare-exchange from 0 (an empty slot's word is 0), or, when none
    /// is empty, joins the least busy one seen with a `fetch_add`. Returns
    /// the slot and its word as the join left it. (With few walkers the
    /// first exchange succeeds: a pin then costs three atomic operations,
    /// as many as one with exclusive slots.)
    fn join(&self) -> (usize, u64) {
        let mut least = (0, u64::MAX);
        for (i, s) in self.slots.iter().enumerate() {
            match s.compare_exchange(0, COUNT | PENDING, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return (i, COUNT | PENDING),
                Err(v) if count(v) < least.1 => least = (i, count(v)),
                Err(_) => {}
            }
        }
        let joined = self.slots[least.0].fetch_add(COUNT | PENDING, Ordering::AcqRel);
        debug_assert!(
            count(joined) < MAX_IN_SLOT && pending(joined) < MAX_IN_SLOT,
            "more than {MAX_IN_SLOT} walkers in one epoch slot"
        );
        (least.0, joined + (COUNT | PENDING))
    }

    /// Called by a writer after the stores that unlink some pages: returns
    /// the epoch `r` to record with them.
    pub fn retire_epoch(&self) -> u64 {
        self.global.fetch_add(1, Ordering::AcqRel)
    }

    /// The current global epoch.
    pub fn current(&self) -> u64 {
        self.global.load(Ordering::Acquire)
    }

    /// Whether pages retired at epoch `r` can no longer be seen by any walker.
    pub fn is_quiescent(&self, r: u64) -> bool {
        debug_assert!(r < self.current(), "epoch {r} was never retired");
        self.slots.iter().all(|slot| {
            let v = slot.load(Ordering::Acquire);
            count(v) == 0 || (pending(v) == 0 && epoch(v) > r)
        })
    }
}

/// Proof that the holder is pinned in an [`EpochDomain`].
#[derive(Debug)]
pub struct EpochGuard<'a, const SLOTS: usize = WALKER_SLOTS> {
    domain: &'a EpochDomain<SLOTS>,
    slot: usize,
    /// The slot word as this walker last wrote it: the first guess of the
    /// unpin's exchange, right when nobody joined or left meanwhile.
    last: u64,
}

impl<const SLOTS: usize> Drop for EpochGuard<'_, SLOTS> {
    fn drop(&mut self) {
        let slot = &self.domain.slots[self.slot];
        let mut cur = self.last;
        loop {
            debug_assert!(count(cur) > pending(cur), "unpin from a slot it is not in");
            // The last walker out empties the slot, epoch included, so the
            // next walker starts it afresh.
            let new = if count(cur) == 1 { 0 } else { cur - COUNT };
            match slot.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn quiescence_follows_pins() {
        let d = EpochDomain::new();
        let g = d.pin();
        let r = d.retire_epoch();
        assert!(
            !d.is_quiescent(r),
            "a walker pinned before the retire blocks it"
        );
        let late = d.pin();
        drop(g);
        assert!(
            d.is_quiescent(r),
            "a walker pinned after the retire does not"
        );
        drop(late);
        assert!(d.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn walkers_beyond_the_slots_share_them_and_block_until_the_oldest_leaves() {
        let d = EpochDomain::<2>::with_slots();
        let early: Vec<_> = (0..6).map(|_| d.pin()).collect();
        let r = d.retire_epoch();
        assert!(!d.is_quiescent(r));
        let late: Vec<_> = (0..3).map(|_| d.pin()).collect();
        drop(early);
        // The late walkers share slots that the early ones made old: the
        // slots hold back the retirement until they empty.
        assert!(!d.is_quiescent(r));
        drop(late);
        assert!(d.is_quiescent(r));
        assert!(d.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
        // Emptied slots start afresh: a walker pinned after the retirement
        // no longer blocks it.
        let g = d.pin();
        assert!(d.is_quiescent(r));
        drop(g);
    }

    /// Four times as many threads as slots are all pinned at the same
    /// instant (a barrier inside the pinned section); with slots that
    /// walkers had to wait for, this would never get past the barrier.
    #[test]
    fn more_concurrent_walkers_than_slots_are_pinned_at_once() {
        use std::sync::{Arc, Barrier};
        const SLOTS: usize = 4;
        let d = Arc::new(EpochDomain::<SLOTS>::with_slots());
        let all_in = Arc::new(Barrier::new(4 * SLOTS + 1));
        let out = Arc::new(Barrier::new(4 * SLOTS + 1));
        let walkers: Vec<_> = (0..4 * SLOTS)
            .map(|_| {
                let (d, all_in, out) = (d.clone(), all_in.clone(), out.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        drop(d.pin());
                    }
                    let g = d.pin();
                    all_in.wait();
                    out.wait();
                    drop(g);
                })
            })
            .collect();
        all_in.wait();
        // Everyone is pinned: a retirement now must wait for all of them.
        let r = d.retire_epoch();
        assert!(!d.is_quiescent(r));
        out.wait();
        for w in walkers {
            w.join().unwrap();
        }
        assert!(d.is_quiescent(r));
        assert!(d.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    }
}
