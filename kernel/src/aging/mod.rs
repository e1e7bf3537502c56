//! The aging thread: every interval, one aging pass over every managed VM
//! (the lockless walk of `hvcore::age`, stamping `hvcore::generations`),
//! one TLB flush request per VM per pass, report lines in the format of
//! `docs/report-format.md`, then reclaim toward each VM's target and, when
//! host memory runs low, from the coldest pages of any VM.
//!
//! Key types: [`Managed`] (a VM handed to the thread), [`AgingConfig`].
//! The pass runs while the VM's vCPUs keep running on other CPUs: the
//! thread is pinned to CPU 0 and vCPUs to the others when there are
//! several. Locks it takes: see `crate::reclaim` (the VM's `VmMm` lock for
//! one pass; the writer lock only to reclaim). Without a timer (the Bochs
//! bed), [`pass`] is called from VM exits instead of a thread.
//!
//! The flush after an aging pass only *requests* the flush (vCPUs flush at
//! their next entry): clearing A needs the flush for the *next* accesses to
//! be seen, not for correctness, so the pass never waits for a vCPU.

use crate::reclaim::{self, Shootdown, VmMm};
use crate::vm::Vm;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use hvcore::age::{PassStats, age_pass};
use hvcore::flush::{FlushPolicy, TlbFlush};
use hvcore::generations::ColdAfter;
use hvcore::npt::Npt;
use hvcore::reclaim::{BATCH_PAGES, BatchStats, ReclaimTarget};
use hvcore::report::{self, Record};

/// How the aging thread runs.
#[derive(Clone, Copy, Debug)]
pub struct AgingConfig {
    /// Time between the starts of two passes.
    pub interval_ms: u64,
    /// Print the histogram, map and ranges every this many passes (0: never).
    pub detail_every: u64,
    /// Print a `pass` line for every pass.
    pub pass_lines: bool,
    /// Map cell size in 4 KiB pages.
    pub map_cell_pages: u64,
    /// Most pages reclaimed per VM per pass.
    pub reclaim_max_pages: u64,
}

impl Default for AgingConfig {
    fn default() -> Self {
        AgingConfig {
            interval_ms: 1000,
            detail_every: 10,
            pass_lines: true,
            map_cell_pages: 16,
            reclaim_max_pages: 4096,
        }
    }
}

/// A VM handed to the aging thread.
#[derive(Debug, Clone)]
pub struct Managed {
    /// The VM (SVM backend).
    pub vm: &'static Vm<Npt>,
    /// Its state, registered with `crate::reclaim`.
    pub mm: Arc<spin::Mutex<VmMm>>,
}

impl Managed {
    /// Registers `vm` for aging and, with a target, reclaim.
    pub fn new(vm: &'static Vm<Npt>, target: Option<ReclaimTarget>) -> Self {
        let mm = reclaim::register(vm.name(), vm.memory.tables(), vm.config.ram_bytes, target);
        Managed { vm, mm }
    }
}

struct RequestFlush<'a>(&'a Vm<Npt>);

impl TlbFlush for RequestFlush<'_> {
    fn flush_guest_tlb(&mut self) {
        self.0.request_tlb_flush();
    }
}

/// One aging pass over `m`, with its report lines. Returns the pass stats.
pub fn pass(m: &Managed, config: &AgingConfig) -> PassStats {
    let t0 = crate::time::now_ns();
    let now = t0 / 1_000_000;
    let mut mm = m.mm.lock();
    let stats = age_pass(
        m.vm.memory.tables(),
        &mut mm.gens,
        now,
        &mut RequestFlush(m.vm),
        FlushPolicy::OncePerPass,
    );
    let dur_us = (crate::time::now_ns() - t0) / 1000;
    let resident: u64 = mm.gens.histogram(now).map(|b| b.pages).sum();
    // Working set for the refault budget: pages young within a minute.
    let ws: u64 = mm
        .gens
        .histogram(now)
        .filter(|b| b.age_ms < 60_000)
        .map(|b| b.pages)
        .sum();
    mm.rec.feedback_mut().end_pass(now, ws);
    if config.pass_lines {
        crate::println!(
            "{}",
            Record::Pass(report::PassLine {
                vm: mm.name.into(),
                n: stats.seq,
                t_ms: now,
                scanned: resident,
                young: stats.young_pages,
                skipped: stats.subtrees_skipped,
                dur_us,
            })
        );
    }
    if config.detail_every != 0 && stats.seq.is_multiple_of(config.detail_every) {
        print_detail(&mm, stats.seq, now, config);
    }
    stats
}

fn print_detail(mm: &VmMm, n: u64, now: u64, config: &AgingConfig) {
    let vm: alloc::string::String = mm.name.into();
    crate::println!(
        "{}",
        Record::Hist(report::HistLine {
            vm: vm.clone(),
            n,
            t_ms: now,
            buckets: mm
                .gens
                .histogram(now)
                .map(|b| report::HistBucket {
                    seq: b.seq,
                    age_ms: b.age_ms,
                    pages: b.pages,
                })
                .collect(),
        })
    );
    crate::println!(
        "{}",
        Record::Map(report::MapLine {
            vm: vm.clone(),
            n,
            t_ms: now,
            base: 0,
            cell_kb: config.map_cell_pages * 4,
            cells: report::map_cells(&mm.gens, config.map_cell_pages),
        })
    );
    let threshold = mm.rec.feedback().threshold_gens();
    crate::println!(
        "{}",
        Record::Ranges(report::RangesLine {
            vm,
            n,
            t_ms: now,
            hot: report::ranges_where(&mm.gens, |age| age < 2),
            cold: report::ranges_where(&mm.gens, |age| age >= threshold),
        })
    );
}

/// The `reclaim` report line of `mm` for pass `n`.
pub fn reclaim_line(mm: &VmMm, n: u64, interval_ms: u64) -> Record {
    let now = reclaim::now_ms();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    let t = mm.rec.feedback().threshold_gens();
    Record::Reclaim(report::ReclaimLine {
        vm: mm.name.into(),
        n,
        t_ms: now,
        resident: mm.gens.histogram(now).map(|b| b.pages).sum(),
        reclaimed: s.reclaimed_pages,
        zero: st.zero_pages,
        compressed: st.compressed_pages,
        raw: st.raw_pages,
        cbytes: st.compressed_bytes,
        ratio_milli: st.ratio_milli(),
        refaults: s.refaults,
        threshold_gens: t,
        threshold_ms: t * interval_ms,
        freed: s.frames_freed,
    })
}

/// Reclaims from `m` toward `target` (at most `max_pages`), one batch of
/// `hvcore::reclaim::BATCH_PAGES` at a time: each batch holds the VM's
/// writer lock, then its `VmMm` lock, and lets go before the next, so a
/// vCPU's fault waits for one batch at most.
pub fn reclaim_vm(m: &Managed, target: ReclaimTarget, max_pages: u64) -> BatchStats {
    let vm = m.vm;
    let mut total = BatchStats::default();
    while total.reclaimed < max_pages {
        let batch = (max_pages - total.reclaimed).min(BATCH_PAGES as u64);
        let b = vm.memory.with_writer(|mapper, frames| {
            let mut mm = m.mm.lock();
            let VmMm { gens, rec, .. } = &mut *mm;
            let mut kf = reclaim::KernelFrames::new(frames);
            let request = || vm.request_tlb_flush();
            let mut flush = Shootdown { request: &request };
            rec.reclaim_toward(
                vm.memory.tables(),
                mapper,
                &mut kf,
                &mut flush,
                gens,
                target,
                reclaim::now_ms(),
                batch,
            )
        });
        total.candidates += b.candidates;
        total.reclaimed += b.reclaimed;
        total.zero += b.zero;
        total.compressed += b.compressed;
        total.raw += b.raw;
        total.rescued += b.rescued;
        total.not_mapped += b.not_mapped;
        if b.reclaimed < batch {
            break; // nothing (more) colder than the target
        }
    }
    total
}

/// Set by [`stop`]; the thread ends at its next wake-up.
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the aging thread to end.
pub fn stop() {
    STOP.store(true, Ordering::Release);
}

/// The thread body: passes every `config.interval_ms` over `vms` until
/// every VM stopped (or [`stop`]); then one last reclaim line per VM.
pub fn run(vms: Vec<Managed>, config: AgingConfig) {
    STOP.store(false, Ordering::Release);
    let mut next = crate::time::now_ns();
    loop {
        if STOP.load(Ordering::Acquire) || vms.iter().all(|m| m.vm.stop_reason().is_some()) {
            break;
        }
        for m in &vms {
            if m.vm.stop_reason().is_some() {
                continue;
            }
            let stats = pass(m, &config);
            let target = m.mm.lock().target;
            if let Some(target) = target {
                let b = reclaim_vm(m, target, config.reclaim_max_pages);
                if b.reclaimed > 0 || stats.seq.is_multiple_of(config.detail_every.max(1)) {
                    let line = reclaim_line(&m.mm.lock(), stats.seq, config.interval_ms);
                    crate::println!("{line}");
                }
            }
        }
        // Host memory pressure: reclaim the coldest pages of any VM.
        if crate::mem::frame_stats().free_frames < reclaim::LOW_FREE_FRAMES {
            pressure(&vms);
        }
        // A pass that overran its interval still sleeps a little, so the
        // CPU it shares with vCPUs (one-CPU machines) is not monopolised.
        next += config.interval_ms * 1_000_000;
        let now = crate::time::now_ns();
        if next < now + 1_000_000 {
            next = now + 1_000_000;
        }
        crate::sched::sleep_until(next);
    }
    for m in &vms {
        let mm = m.mm.lock();
        let n = mm.gens.max_seq();
        crate::println!("{}", reclaim_line(&mm, n, config.interval_ms));
    }
}

/// Reclaims under host memory pressure: from the VM holding the oldest
/// generation first, pages not young in the last pass.
fn pressure(vms: &[Managed]) {
    let mut order: Vec<(u64, &Managed)> = vms
        .iter()
        .filter(|m| m.vm.stop_reason().is_none())
        .map(|m| {
            let mm = m.mm.lock();
            let now = reclaim::now_ms();
            let oldest = mm.gens.histogram(now).next().map_or(0, |b| b.age_ms);
            (oldest, m)
        })
        .collect();
    order.sort_by_key(|e| core::cmp::Reverse(e.0));
    for (_, m) in order {
        reclaim_vm(m, ReclaimTarget::ColderThan(ColdAfter::Gens(1)), 1024);
        if crate::mem::frame_stats().free_frames >= reclaim::LOW_FREE_FRAMES * 2 {
            break;
        }
    }
}

/// Parses a decimal number with an optional `K`, `M` or `G` suffix (powers
/// of 1024), in const context; `None` when malformed.
const fn parse_size(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: u64 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        n = match n.checked_mul(10) {
            Some(v) => v + (b[i] - b'0') as u64,
            None => return None,
        };
        i += 1;
    }
    if i == 0 {
        return None;
    }
    let shift = if i == b.len() {
        0
    } else if i + 1 == b.len() {
        match b[i] {
            b'K' | b'k' => 10,
            b'M' | b'm' => 20,
            b'G' | b'g' => 30,
            _ => return None,
        }
    } else {
        return None;
    };
    n.checked_mul(1 << shift)
}

/// `cargo xtask run --age-interval-ms N` (build-time variable
/// `THERMOCLINE_AGE_INTERVAL_MS`); 1000 when unset or malformed.
pub const AGE_INTERVAL_MS: u64 = match option_env!("THERMOCLINE_AGE_INTERVAL_MS") {
    Some(s) => match parse_size(s) {
        Some(n) if n > 0 => n,
        _ => 1000,
    },
    None => 1000,
};

/// `cargo xtask run --reclaim-target SIZE` (build-time variable
/// `THERMOCLINE_RECLAIM_TARGET`): each VM's resident-memory limit in bytes,
/// or `adaptive` (everything colder than the feedback loop's threshold);
/// `None` (unset or `off`): aging only.
pub const RECLAIM_TARGET_BYTES: Option<u64> = match option_env!("THERMOCLINE_RECLAIM_TARGET") {
    Some(s) => parse_size(s),
    None => None,
};

/// Whether the run reclaims adaptively (`--reclaim-target adaptive`).
pub const RECLAIM_ADAPTIVE: bool = matches!(
    option_env!("THERMOCLINE_RECLAIM_TARGET"),
    Some(s) if s.len() == 8 && s.as_bytes()[0] == b'a'
);

/// The reclaim target of this run, from the build-time configuration.
pub fn configured_target() -> Option<ReclaimTarget> {
    if RECLAIM_ADAPTIVE {
        return Some(ReclaimTarget::Adaptive);
    }
    RECLAIM_TARGET_BYTES.map(|b| ReclaimTarget::ResidentLimit { pages: b / 4096 })
}

/// The banner line describing the run's aging and reclaim configuration.
pub fn banner_line() -> alloc::string::String {
    let target = match configured_target() {
        Some(ReclaimTarget::ResidentLimit { pages }) => {
            alloc::format!("resident limit {} KiB per VM", pages * 4)
        }
        Some(ReclaimTarget::Adaptive) => "adaptive (refaults under 0.2 %/min)".into(),
        Some(ReclaimTarget::ColderThan(_)) | None => "off (aging only)".into(),
    };
    alloc::format!("  aging    interval {AGE_INTERVAL_MS} ms, reclaim {target}")
}

/// Runs `vm` (the guest `cargo xtask run` chose) on CPU `cpu` with the
/// aging thread on CPU 0 and the configured reclaim target, until it stops.
pub fn run_selected(vm: alloc::boxed::Box<Vm<Npt>>, cpu: usize) {
    let vm: &'static Vm<Npt> = alloc::boxed::Box::leak(vm);
    let m = Managed::new(vm, configured_target());
    let vcpu = crate::sched::spawn_on(cpu, "vcpu", move || {
        crate::vm::run_on_this_cpu::<crate::vm::Svm>(vm);
    });
    let config = AgingConfig {
        interval_ms: AGE_INTERVAL_MS,
        ..AgingConfig::default()
    };
    let ms = alloc::vec![m];
    let ager = crate::sched::spawn_on(0, "aging", move || run(ms, config));
    vcpu.join();
    stop();
    ager.join();
}
