//! Shared test support: a simulated CPU that walks second-level tables and
//! sets A/D bits like the hardware, optionally with a TLB that behaves like
//! nested KVM's shadow EPT (TESTBEDS.md §1): A is set only on a miss, and
//! translations stay cached until the guest's TLB is flushed.
#![allow(dead_code, reason = "each test binary uses a different part")]

use hvcore::addr::GuestPhysAddr;
use hvcore::flush::TlbFlush;
use hvcore::pte::{EntryFormat, Level};
use hvcore::sync::Ordering;
use hvcore::table::{TableMemory, Tables};
use std::collections::HashMap;

/// A simulated vCPU's page walker and TLB.
#[derive(Debug, Default)]
pub struct SimCpu {
    /// Cached translations: 4 KiB page number -> whether the cached
    /// translation already has D set.
    pub tlb: HashMap<u64, bool>,
    /// Whether translations are cached at all.
    pub caching: bool,
    /// Hardware walks done (TLB misses).
    pub walks: u64,
}

impl SimCpu {
    /// A CPU without a TLB: every access walks and sets A (QEMU TCG-like).
    pub fn uncached() -> Self {
        Self::default()
    }

    /// A CPU whose TLB keeps translations until flushed.
    pub fn cached() -> Self {
        SimCpu {
            caching: true,
            ..Self::default()
        }
    }

    /// One guest access. Returns false on a nested page fault (not mapped).
    pub fn access<F: EntryFormat, M: TableMemory>(
        &mut self,
        tables: &Tables<F, M>,
        gpa: u64,
        write: bool,
    ) -> bool {
        let page = gpa / 4096;
        if self.caching
            && let Some(&dirty) = self.tlb.get(&page)
            && (!write || dirty)
        {
            return true;
        }
        self.walks += 1;
        let mut table = tables.root();
        for level in Level::down_from(F::LEVELS) {
            let Some(entries) = tables.mem().table(table) else {
                return false;
            };
            let slot = &entries[F::index(gpa, level)];
            let e = slot.load(Ordering::Acquire);
            if !F::is_present(e) || (write && !F::perms(e).write) {
                return false;
            }
            // The CPU sets A (and D on a write to a leaf) with locked RMWs.
            slot.fetch_or(F::ACCESSED, Ordering::AcqRel);
            if F::is_leaf(e, level) {
                if write {
                    slot.fetch_or(F::DIRTY, Ordering::AcqRel);
                }
                if self.caching {
                    self.tlb.insert(page, write);
                }
                return true;
            }
            table = F::addr(e);
        }
        false
    }
}

impl TlbFlush for SimCpu {
    fn flush_guest_tlb(&mut self) {
        self.tlb.clear();
    }
}

/// Pages whose leaf has A (or D) set in `[0, end)`.
pub fn pages_with<F: EntryFormat, M: TableMemory>(
    tables: &Tables<F, M>,
    end: u64,
    bit: u64,
) -> Vec<u64> {
    let mut out = Vec::new();
    tables.for_each_leaf(0, end, |gpa, level, e| {
        if e & bit != 0 {
            out.extend((0..F::level_size(level) / 4096).map(|i| gpa / 4096 + i));
        }
    });
    out
}

/// The guest address of page number `p`.
pub fn page(p: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(p * 4096)
}

/// Fails a test that never ends instead of hanging the suite: unless the
/// guard is dropped within `limit`, prints `what` and aborts the test
/// binary (a panic on another thread could not stop the looping one).
pub struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub fn new(what: impl Into<String>, limit: std::time::Duration) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        let what = what.into();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !seen.load(std::sync::atomic::Ordering::Acquire) {
                if start.elapsed() > limit {
                    // Past the test harness's capture, which the abort
                    // would throw away.
                    let msg = format!("watchdog: {what} did not end within {limit:?}; aborting\n");
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
                    std::process::abort();
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
    }
}
