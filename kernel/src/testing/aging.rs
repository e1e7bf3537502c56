//! Probes that aging scenarios share, for either backend: the hot set the
//! passes found scored against a guest's ground truth, and the host's frame
//! accounting around one reclaim; and the aging scenario's cases themselves
//! ([`accuracy`], [`nothing_lost`], [`memory_comes_back`]), generic over the
//! virtualization extension, so `test_aging` (SVM, QEMU) and
//! `test_vmx_aging` (VMX, full-system Bochs) run the same checks: the aging
//! thread on CPU 0 racing the guest's vCPU on the last CPU.
//!
//! Neighbours: `crate::aging` (passes and reclaim), `hvcore::generations`
//! (`Generations::score_hot_set`, the one scorer), `crate::vm` (the guest
//! events the probes run on).

use super::guests::{MIB, new_vm};
use crate::aging::{self, AgingConfig, Managed};
use crate::vm::{self, Extension, GuestEvent, Hook, StopReason, Vm, images};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::generations::ColdAfter;
use hvcore::guest_layout as layout;
use hvcore::reclaim::ReclaimTarget;

/// A pass at an interval boundary: no per-pass line, no detail (the probe
/// prints its own summary).
fn quiet() -> AgingConfig {
    AgingConfig {
        pass_lines: false,
        detail_every: 0,
        ..AgingConfig::default()
    }
}

/// Precision and recall of the hot set, accumulated over a guest's
/// `REPORT_TOUCHED` intervals. A `static` of the scenario; its hook calls
/// [`HotSetScorer::on_event`].
#[derive(Debug)]
pub struct HotSetScorer {
    /// The generation of the pass made at the previous interval boundary.
    boundary_seq: AtomicU64,
    true_pos: AtomicU64,
    false_pos: AtomicU64,
    false_neg: AtomicU64,
    intervals: AtomicU64,
}

impl Default for HotSetScorer {
    fn default() -> Self {
        Self::new()
    }
}

impl HotSetScorer {
    /// No interval scored yet.
    pub const fn new() -> Self {
        HotSetScorer {
            boundary_seq: AtomicU64::new(0),
            true_pos: AtomicU64::new(0),
            false_pos: AtomicU64::new(0),
            false_neg: AtomicU64::new(0),
            intervals: AtomicU64::new(0),
        }
    }

    /// At each interval boundary (the guest waits in `REPORT_TOUCHED`): one
    /// pass harvests the rest of the interval's accessed bits, then a page
    /// counts as hot if any pass since the previous boundary found it
    /// young. The first interval is not scored: it also saw the image being
    /// loaded. Other events are ignored.
    pub fn on_event<E: Extension>(&self, m: &Managed<E>, e: &GuestEvent) {
        let GuestEvent::Touched {
            interval,
            first_pfn,
            page_count,
            bitmap,
        } = e
        else {
            return;
        };
        let stats = aging::pass(m, &quiet());
        let prev = self.boundary_seq.swap(stats.seq, Ordering::AcqRel);
        if *interval == 0 || prev == 0 {
            return;
        }
        let score = m.mm.lock().gens.score_hot_set(
            m.vm.memory.tables(),
            *first_pfn,
            *page_count,
            bitmap,
            prev,
        );
        self.true_pos.fetch_add(score.true_hot, Ordering::Relaxed);
        self.false_pos.fetch_add(score.false_hot, Ordering::Relaxed);
        self.false_neg.fetch_add(score.missed, Ordering::Relaxed);
        self.intervals.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures so far.
    pub fn summary(&self) -> Accuracy {
        let (tp, fp, fneg) = (
            self.true_pos.load(Ordering::Relaxed),
            self.false_pos.load(Ordering::Relaxed),
            self.false_neg.load(Ordering::Relaxed),
        );
        Accuracy {
            intervals: self.intervals.load(Ordering::Relaxed),
            true_hot: tp,
            false_hot: fp,
            missed: fneg,
            precision_milli: (tp * 1000).checked_div(tp + fp).unwrap_or(0),
            recall_milli: (tp * 1000).checked_div(tp + fneg).unwrap_or(0),
        }
    }
}

/// What a [`HotSetScorer`] measured. Displays as
/// `N intervals, hot pages TP right, FP wrongly hot, FN missed: precision
/// P%, recall R%`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accuracy {
    /// Intervals scored.
    pub intervals: u64,
    /// Hot in the ground truth and in the hot set.
    pub true_hot: u64,
    /// In the hot set, not touched by the guest.
    pub false_hot: u64,
    /// Touched by the guest, not in the hot set.
    pub missed: u64,
    /// Precision in thousandths (0 when nothing was found hot).
    pub precision_milli: u64,
    /// Recall in thousandths (0 when nothing was touched).
    pub recall_milli: u64,
}

impl Accuracy {
    /// The mission's bar: precision and recall of at least 99 % each, over
    /// at least `min_intervals` scored intervals.
    pub fn meets_bar(&self, min_intervals: u64) -> bool {
        self.intervals >= min_intervals && self.precision_milli >= 990 && self.recall_milli >= 990
    }
}

impl fmt::Display for Accuracy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} intervals, hot pages {} right, {} wrongly hot, {} missed: precision {}.{}%, recall {}.{}%",
            self.intervals,
            self.true_hot,
            self.false_hot,
            self.missed,
            self.precision_milli / 10,
            self.precision_milli % 10,
            self.recall_milli / 10,
            self.recall_milli % 10
        )
    }
}

/// Two passes, then a reclaim of at most `max_pages` pages not young in
/// the last pass, with the host's free frames counted before and after.
/// Prints one `memory comes back:` line and checks that every frame the
/// reclaimer gave back reached the host: the free count rises by the frames
/// freed, less the store's heap growth and one table page per huge page
/// split. Panics (fails the case) otherwise.
pub fn reclaim_and_account<E: Extension>(m: &Managed<E>, max_pages: u64) {
    aging::pass(m, &quiet());
    aging::pass(m, &quiet());
    let free0 = crate::mem::frame_stats().free_frames;
    let heap0 = crate::mem::heap::heap_bytes();
    let s0 = m.mm.lock().rec.stats();
    let b = aging::reclaim_vm(m, ReclaimTarget::ColderThan(ColdAfter::Gens(1)), max_pages);
    let free1 = crate::mem::frame_stats().free_frames;
    let heap1 = crate::mem::heap::heap_bytes();
    let mm = m.mm.lock();
    let s1 = mm.rec.stats();
    let st = mm.rec.store_stats();
    let freed = s1.frames_freed - s0.frames_freed;
    let heap_frames = (heap1 - heap0) / 4096;
    let splits = s1.huge_splits - s0.huge_splits;
    crate::println!(
        "memory comes back: reclaimed {} pages ({} zero, {} compressed, {} raw; {} compressed bytes, ratio {}.{:03}); free frames {free0} -> {free1}; frames freed {freed}, store heap grew by {heap_frames} frames, {splits} huge splits",
        b.reclaimed,
        b.zero,
        b.compressed,
        b.raw,
        st.compressed_bytes,
        st.ratio_milli() / 1000,
        st.ratio_milli() % 1000,
    );
    assert!(b.reclaimed > 0, "the reclaim found cold pages");
    assert_eq!(freed, b.reclaimed, "one frame freed per page reclaimed");
    // Splitting a huge page takes one table page each.
    assert_eq!(
        free1 + heap_frames + splits,
        free0 + freed,
        "the host got every reclaimed frame back"
    );
}

/// The CPU the scenarios' vCPU runs on: the last (the aging thread has CPU 0).
pub fn vcpu_cpu() -> usize {
    crate::smp::cpu_count() - 1
}

/// Runs `m`'s VM on [`vcpu_cpu`] while the aging thread runs `config` on
/// CPU 0 over it; returns how the VM stopped.
pub fn run_with_aging<E: Extension>(m: &Managed<E>, config: AgingConfig) -> StopReason {
    let vcpu = vm::spawn_on(vcpu_cpu(), m.vm.clone());
    let ms = alloc::vec![m.clone()];
    let ager = crate::sched::spawn_on(0, "aging", move || aging::run(ms, config));
    vcpu.join();
    aging::stop();
    ager.join();
    m.vm.stop_reason().expect("stopped")
}

/// A hook made at run time: the scenarios' hooks need the VM's [`Managed`]
/// handle, made after the VM, so they read it from a slot filled later.
/// Leaked: a scenario makes a handful.
fn slot_hook<E: Extension>(
    f: impl Fn(&Managed<E>, &GuestEvent) + Sync + 'static,
) -> (&'static spin::Mutex<Option<Managed<E>>>, Hook<E>) {
    let slot: &'static spin::Mutex<Option<Managed<E>>> =
        Box::leak(Box::new(spin::Mutex::new(None)));
    let hook = Box::leak(Box::new(move |_: &Vm<E>, e: &GuestEvent| {
        // Cloned out first: the hook runs with the slot's lock released.
        let m = slot.lock().clone();
        if let Some(m) = m {
            f(&m, e);
        }
    }));
    (slot, hook)
}

/// Case: the `pattern` guest's ground truth (pages touched per interval)
/// against the hot set the aging thread's passes found while the guest ran
/// on another CPU: precision and recall at least 99 % each.
pub fn accuracy<E: Extension>() {
    let scorer: &'static HotSetScorer = Box::leak(Box::new(HotSetScorer::new()));
    let (slot, hook) = slot_hook::<E>(move |m, e| scorer.on_event(m, e));
    // 12 intervals of 100 ms, 48 hot pages, over 12 MiB (8 MiB of data).
    let arg = 12 | (100 << 16) | (48 << 32);
    // 4 KiB pages: a huge page ages as a unit, so its 512 pages are all
    // hot when one is.
    let vm = new_vm::<E>(images::PATTERN, 12 * MIB, arg, false, Some(hook));
    let m = Managed::new(&vm, None);
    *slot.lock() = Some(m.clone());
    let config = AgingConfig {
        interval_ms: 10,
        detail_every: 5,
        ..AgingConfig::default()
    };
    assert_eq!(run_with_aging(&m, config), StopReason::Exited(0));
    *slot.lock() = None;
    let a = scorer.summary();
    crate::println!(
        "accuracy: {a} (aging on CPU 0, {} guest on CPU {})",
        E::NAME,
        vcpu_cpu()
    );
    assert!(a.meets_bar(10), "{a}");
}

/// Lets the guest wait 150 ms at each mark, as a guest that sleeps between
/// phases.
fn pause_hook<E: Extension>(_vm: &Vm<E>, e: &GuestEvent) {
    if matches!(e, GuestEvent::Mark(_)) {
        crate::time::spin_until(crate::time::now_ns() + 150_000_000);
    }
}

/// Case: the `checksum` guest rewrites and verifies its memory while the
/// aging thread and the reclaimer run concurrently on another CPU: zero
/// mismatches, most pages reclaimed and faulted back.
pub fn nothing_lost<E: Extension>() {
    let (ram, rounds) = (8 * MIB, 3);
    // The guest waits 150 ms at each mark (before rewriting a third of its
    // pages, before verifying): long enough for most of its memory to be
    // reclaimed; its next sweep brings the pages back while aging and
    // reclaim keep running.
    let pause: Hook<E> = Box::leak(Box::new(pause_hook::<E>));
    let vm = new_vm::<E>(images::CHECKSUM, ram, rounds, false, Some(pause));
    // Pages not young for 3 passes of 10 ms go.
    let m = Managed::new(&vm, Some(ReclaimTarget::ColderThan(ColdAfter::Gens(3))));
    let t0 = crate::time::now_ns();
    let config = AgingConfig {
        interval_ms: 10,
        detail_every: 10,
        reclaim_max_pages: 256,
        ..AgingConfig::default()
    };
    let reason = run_with_aging(&m, config);
    let run_ms = (crate::time::now_ns() - t0) / 1_000_000;
    let mm = m.mm.lock();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    let pages = (ram - layout::DATA_START_GPA) / 4096;
    let result = vm.checksum_result();
    crate::println!(
        "nothing lost ({rounds} rounds in {run_ms} ms, {} guest on CPU {}): {reason}; checksum {result:?}; reclaimed {} pages in total ({} zero, {} compressed, {} raw now), {} refaults, {} rescued, {} clean drops, {} huge splits",
        E::NAME,
        vcpu_cpu(),
        s.reclaimed_total,
        st.zero_pages,
        st.compressed_pages,
        st.raw_pages,
        s.refaults,
        s.rescued,
        s.clean_drops,
        s.huge_splits
    );
    assert_eq!(reason, StopReason::Exited(0));
    assert_eq!(result, Some((pages, 0)), "every word verified, none wrong");
    assert!(
        s.reclaimed_total >= pages,
        "the reclaimer took most pages (several times over) while the guest ran"
    );
    assert!(s.refaults > 0, "and the guest brought them back");
    crate::println!(
        "deepest thread stack so far: {} of {} bytes",
        crate::sched::stack_high_water_bytes(),
        crate::sched::STACK_BYTES
    );
}

/// What [`comes_back_hook`] runs at `MARK 1`, once; set by
/// [`memory_comes_back`] (type-erased: a static cannot name the vendor).
static COMES_BACK: spin::Mutex<Option<Box<dyn Fn() + Send>>> = spin::Mutex::new(None);

/// At `MARK 1` (the guest has written all its data and waits): the
/// reclaim of [`memory_comes_back`], once.
fn comes_back_hook<E: Extension>(_vm: &Vm<E>, e: &GuestEvent) {
    if *e != GuestEvent::Mark(1) {
        return;
    }
    // Taken out first: the reclaim runs with the lock released.
    let reclaim = COMES_BACK.lock().take();
    if let Some(reclaim) = reclaim {
        reclaim();
    }
}

/// The `checksum` guest in `ram_bytes` of RAM with 2 MiB pages: at its
/// `MARK 1`, at most `max_pages` pages not young in the last of two passes
/// are reclaimed with the host's frames counted around it
/// ([`reclaim_and_account`]: every frame freed reaches the host), and the
/// guest then verifies every word intact. Run by `test_aging` and
/// `test_vmx_aging` (smaller there: each page reclaimed costs emulated
/// time).
pub fn memory_comes_back<E: Extension>(ram_bytes: u64, max_pages: u64) {
    let hook: Hook<E> = Box::leak(Box::new(comes_back_hook::<E>));
    let vm = new_vm::<E>(images::CHECKSUM, ram_bytes, 1, true, Some(hook));
    let m = Managed::new(&vm, None);
    let ran = Arc::new(AtomicU64::new(0));
    let reclaim = {
        let (m, ran) = (m.clone(), ran.clone());
        move || {
            reclaim_and_account(&m, max_pages);
            ran.store(1, Ordering::Relaxed);
        }
    };
    *COMES_BACK.lock() = Some(Box::new(reclaim));
    let reason = vm::run_on_this_cpu(&vm);
    *COMES_BACK.lock() = None;
    assert_eq!(reason, StopReason::Exited(0));
    assert_eq!(ran.load(Ordering::Relaxed), 1, "the hook ran");
    let pages = (ram_bytes - layout::DATA_START_GPA) / 4096;
    assert_eq!(
        vm.checksum_result(),
        Some((pages, 0)),
        "and everything came back intact"
    );
}
