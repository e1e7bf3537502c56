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
//! at 1) and a fixed number of walker slots.
//!
//! * **Pin** (walker, once per walk, not per entry): claim a free slot by
//!   moving it 0 -> `CLAIMED`; read the global epoch *with a read-modify-write*
//!   (`fetch_add(0)`); publish `e` in the slot. Unpin stores 0 (release).
//! * **Retire** (writer, after the unlinking store): `r = global.fetch_add(1)`
//!   (the old value). The page may be freed once every slot is free or holds
//!   an epoch `e > r` ([`EpochDomain::is_quiescent`]); `CLAIMED` counts as
//!   epoch 0 and therefore blocks.
//!
//! Why this is enough: both sides do a read-modify-write on the same
//! counter, and RMWs on one location are totally ordered, each reading the
//! latest value (C++ "release sequence" rules; no `SeqCst` needed, which
//! loom also models exactly).
//! * If the walker's RMW comes after the writer's, it reads `e >= r + 1` and
//!   acquires the writer's release, so the unlinking store happens-before
//!   every later read of the walker: it can never reach the page. Its slot
//!   says `e > r`: no wait.
//! * If the walker's RMW comes first, the writer's RMW acquires it, so the
//!   walker's claim (`CLAIMED`) happens-before the writer's scan: the scan
//!   sees `CLAIMED`, the walker's `e <= r` (wait), or 0 written by the
//!   walker's unpin, whose release makes every read of that walker
//!   happen-before the free.
//!
//! Pages also need a TLB flush between unlink and reuse (the CPU's
//! paging-structure caches may still point into them); that is the writer's
//! business ([`crate::table::Mapper::tlb_flushed`]).
//!
//! The proofs are exercised by the loom models in `tests/loom.rs`
//! (`loom_unlink_vs_walker` and its deliberately broken twin).

use crate::sync::{AtomicU64, Ordering};

/// Walker slots per domain: the aging thread, the fault path and a few
/// queries at once. A walker that finds no free slot retries (it is a
/// bounded, short wait: walks do not block).
pub const MAX_WALKERS: usize = 8;

/// Slot value while a walker is between claiming and publishing its epoch.
const CLAIMED: u64 = 1;

/// The global epoch and walker slots of one table tree.
#[derive(Debug)]
pub struct EpochDomain {
    global: AtomicU64,
    slots: [AtomicU64; MAX_WALKERS],
}

impl Default for EpochDomain {
    fn default() -> Self {
        Self::new()
    }
}

impl EpochDomain {
    /// A domain with no walkers, at epoch 1.
    pub fn new() -> Self {
        Self {
            global: AtomicU64::new(1),
            slots: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Pins the caller: until the guard is dropped, no table page that was
    /// reachable when `pin` returned is freed. `None` when every slot is taken.
    pub fn try_pin(&self) -> Option<EpochGuard<'_>> {
        for (i, slot) in self.slots.iter().enumerate() {
            if slot
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // An RMW, not a load: see the module docs.
                let e = self.global.fetch_add(0, Ordering::AcqRel);
                slot.store(e << 1 | 1, Ordering::Release);
                return Some(EpochGuard {
                    domain: self,
                    slot: i,
                });
            }
        }
        None
    }

    /// Pins the caller, spinning while every slot is taken.
    pub fn pin(&self) -> EpochGuard<'_> {
        loop {
            if let Some(g) = self.try_pin() {
                return g;
            }
            core::hint::spin_loop();
            #[cfg(loom)]
            loom::thread::yield_now();
        }
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
        self.slots.iter().all(|slot| {
            let v = slot.load(Ordering::Acquire);
            v == 0 || (v >> 1) > r
        })
    }
}

/// Proof that the holder is pinned in an [`EpochDomain`].
#[derive(Debug)]
pub struct EpochGuard<'a> {
    domain: &'a EpochDomain,
    slot: usize,
}

impl Drop for EpochGuard<'_> {
    fn drop(&mut self) {
        self.domain.slots[self.slot].store(0, Ordering::Release);
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
        let guards: Vec<_> = (0..MAX_WALKERS).map(|_| d.pin()).collect();
        assert!(d.try_pin().is_none());
        drop(guards);
        assert!(d.try_pin().is_some());
    }
}
