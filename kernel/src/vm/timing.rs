//! Where the time of aging passes, reclaim and fault-ins goes, host-wide:
//! one [`Stat`] (count, total, maximum) per phase, fed from the TSC clock
//! by `crate::aging`, `crate::reclaim` and `crate::vm::memory`, printed as
//! `timing` lines by [`print`]. Measurement only: nothing decides on them.
//!
//! Neighbours: `hvcore::reclaim::ReclaimTimes` splits the reclaimer's own
//! work (selection, unmap, flush, store, fault-in) per VM.

use core::sync::atomic::{AtomicU64, Ordering};

/// Count, total and maximum of one phase, in nanoseconds.
#[derive(Debug)]
pub struct Stat {
    name: &'static str,
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Stat {
    const fn new(name: &'static str) -> Self {
        Stat {
            name,
            count: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Adds one occurrence of `ns`.
    pub fn add(&self, ns: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Adds the time since `t0_ns` (a `crate::time::now_ns` reading) and
    /// returns now.
    pub fn since(&self, t0_ns: u64) -> u64 {
        let now = crate::time::now_ns();
        self.add(now.saturating_sub(t0_ns));
        now
    }

    fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
        self.total_ns.store(0, Ordering::Relaxed);
        self.max_ns.store(0, Ordering::Relaxed);
    }
}

/// Waiting for the VM's `VmMm` lock at the start of an aging pass.
pub static PASS_LOCK: Stat = Stat::new("pass_lock_wait");
/// The lockless walk, which writes the generation tags (`hvcore::age::age_pass`).
pub static PASS_WALK: Stat = Stat::new("pass_walk_stamp");
/// The rest of a pass: histograms, feedback, report lines.
pub static PASS_POST: Stat = Stat::new("pass_post");
/// One reclaim batch's wait for the VM's writer lock.
pub static RECLAIM_WRITER_WAIT: Stat = Stat::new("reclaim_writer_wait");
/// One reclaim batch with the writer lock held.
pub static RECLAIM_HELD: Stat = Stat::new("reclaim_batch_held");
/// One round of pressure-driven reclaim over all VMs.
pub static PRESSURE: Stat = Stat::new("pressure_round");
/// A vCPU's wait for its VM's writer lock on a nested page fault.
pub static FAULT_WRITER_WAIT: Stat = Stat::new("fault_writer_wait");
/// A nested page fault with the writer lock held.
pub static FAULT_HELD: Stat = Stat::new("fault_held");
/// Taking a frame for guest memory (`mem::alloc_guest_frame`).
pub static FRAME_ALLOC: Stat = Stat::new("frame_alloc");

static ALL: [&Stat; 9] = [
    &PASS_LOCK,
    &PASS_WALK,
    &PASS_POST,
    &RECLAIM_WRITER_WAIT,
    &RECLAIM_HELD,
    &PRESSURE,
    &FAULT_WRITER_WAIT,
    &FAULT_HELD,
    &FRAME_ALLOC,
];

/// Zeroes every phase (at the start of a scenario).
pub fn reset() {
    for s in ALL {
        s.reset();
    }
}

/// Prints one `timing` line per phase that occurred:
/// `timing LABEL PHASE: n=COUNT total_us=T mean_us=M max_us=X`.
pub fn print(label: &str) {
    for s in ALL {
        let n = s.count.load(Ordering::Relaxed);
        if n == 0 {
            continue;
        }
        let total = s.total_ns.load(Ordering::Relaxed);
        crate::println!(
            "timing {label} {}: n={n} total_us={} mean_us={} max_us={}",
            s.name,
            total / 1000,
            total / n / 1000,
            s.max_ns.load(Ordering::Relaxed) / 1000
        );
    }
}
