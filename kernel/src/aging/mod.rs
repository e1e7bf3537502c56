//! The aging thread: every interval, one aging pass over every managed VM
//! (the lockless walk of `hvcore::age`, which writes each young entry's
//! generation tag, `hvcore::generations`, into the entry itself),
//! one TLB flush request per VM per pass, report lines in the format of
//! `docs/report-format.md`, then reclaim toward each VM's target and, when
//! host memory runs low, from the coldest pages of any VM.
//!
//! Key types: [`Managed`] (a VM handed to the thread, of either vendor:
//! `Managed<Svm>` on NPT, `Managed<Vmx>` on EPT; one code path for both),
//! [`AgingConfig`].
//! The pass runs while the VM's vCPUs keep running on other CPUs: the
//! thread is pinned to CPU 0 and vCPUs to the others when there are
//! several. Locks it takes: see `crate::reclaim` (the VM's `VmMm` lock for
//! one pass; the writer lock only to reclaim).
//!
//! Without a timer (the Bochs CPU core: one CPU, cooperative scheduling, a
//! virtual clock) a thread would never run while a vCPU is in the guest, so
//! [`on_exits`] installs the same per-VM work ([`tick`]: pass, reclaim,
//! pressure) as the VM's exit work (`Vm::set_exit_work`): the vCPU runs it
//! on its own exit path, every `exits_per_pass` exits or when the virtual
//! clock passed the interval, with no lock held. A guest that never exits
//! is not aged there; one that exits rarely is aged rarely.
//!
//! The flush after an aging pass only *requests* the flush (vCPUs flush at
//! their next entry): clearing A needs the flush for the *next* accesses to
//! be seen, not for correctness, so the pass never waits for a vCPU.

use crate::reclaim::{self, Shootdown, VmMm, timing};
use crate::vm::memory::PhysTables;
use crate::vm::{Extension, Vm};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hvcore::age::{PassStats, age_pass};
use hvcore::flush::{FlushPolicy, TlbFlush};
use hvcore::generations::ColdAfter;
use hvcore::pte::EntryFormat;
use hvcore::reclaim::{BatchStats, ReclaimTarget, VictimCandidate, pressure_round};
use hvcore::report::{self, Record};
use hvcore::run_config::{self, ReclaimSetting, TargetNote};
use hvcore::table::Tables;

/// How the aging thread runs.
#[derive(Clone, Copy, Debug)]
pub struct AgingConfig {
    /// Time between the starts of two passes.
    pub interval_ms: u64,
    /// Print the histogram, map and ranges every this many passes (0: never).
    pub detail_every: u64,
    /// Print a `pass` line for every pass, and a `reclaim` line for every
    /// pass that reclaimed (the bed's serial port is slow for thousands).
    pub pass_lines: bool,
    /// Map cell size in 4 KiB pages.
    pub map_cell_pages: u64,
    /// Most pages reclaimed per VM per pass.
    pub reclaim_max_pages: u64,
    /// Print the `timing` lines (`crate::vm::timing`) and each VM's
    /// reclaimer times every this many ms, then start them afresh (0: never).
    pub timing_every_ms: u64,
}

impl Default for AgingConfig {
    fn default() -> Self {
        AgingConfig {
            interval_ms: 1000,
            detail_every: 10,
            pass_lines: true,
            map_cell_pages: 16,
            reclaim_max_pages: 4096,
            timing_every_ms: 0,
        }
    }
}

/// A VM handed to the aging thread (or to its exit work), of either
/// vendor (`Managed<Svm>` on NPT, `Managed<Vmx>` on EPT; one code path for
/// both).
#[derive(Debug)]
pub struct Managed<E: Extension> {
    /// The VM.
    pub vm: Arc<Vm<E>>,
    /// Its state, registered with `crate::reclaim`.
    pub mm: Arc<spin::Mutex<VmMm>>,
}

impl<E: Extension> Clone for Managed<E> {
    fn clone(&self) -> Self {
        Managed {
            vm: self.vm.clone(),
            mm: self.mm.clone(),
        }
    }
}

impl<E: Extension> Managed<E> {
    /// Registers `vm` for aging and, with a target, reclaim.
    pub fn new(vm: &Arc<Vm<E>>, target: Option<ReclaimTarget>) -> Self {
        let mm = reclaim::register(vm.name(), &vm.memory, target);
        Managed { vm: vm.clone(), mm }
    }
}

struct RequestFlush<'a, E: Extension>(&'a Vm<E>);

impl<E: Extension> TlbFlush for RequestFlush<'_, E> {
    fn flush_guest_tlb(&mut self) {
        self.0.request_tlb_flush();
    }
}

/// One aging pass over `m`, with its report lines. Returns the pass stats.
pub fn pass<E: Extension>(m: &Managed<E>, config: &AgingConfig) -> PassStats {
    let t0 = crate::time::now_ns();
    let now = t0 / 1_000_000;
    let tables = m.vm.memory.tables();
    let mut mm = m.mm.lock();
    let t_walk = timing::PASS_LOCK.since(t0);
    let stats = age_pass(
        tables,
        &mut mm.gens,
        now,
        &mut RequestFlush(&m.vm),
        FlushPolicy::OncePerPass,
    );
    let t_post = timing::PASS_WALK.since(t_walk);
    let dur_us = (t_post - t0) / 1000;
    // One walk of the tables for the three figures (each histogram is
    // one): the resident pages, the working set for the refault budget
    // (pages young within a minute), and the pages not young in this pass
    // (`reclaim::cold_pages`).
    let (resident, ws, cold) = mm
        .gens
        .histogram(tables, now)
        .fold((0, 0, 0), |(r, w, c), b| {
            (
                r + b.pages,
                w + if b.age_ms < 60_000 { b.pages } else { 0 },
                c + if b.age_gens >= 1 { b.pages } else { 0 },
            )
        });
    mm.cold_pages = cold;
    mm.rec.feedback_mut().end_pass(now, ws);
    // The lines are made under the lock and printed after it: a console
    // line takes the serial port's time (on full-system Bochs, whose UART
    // runs at its baud rate, a detail pass's lines take tens of emulated
    // milliseconds), and a vCPU's fault path waits for this lock.
    let mut lines: Vec<Record> = Vec::new();
    if config.pass_lines {
        lines.push(Record::Pass(report::PassLine {
            vm: mm.name.into(),
            n: stats.seq,
            t_ms: now,
            scanned: resident,
            young: stats.young_pages,
            skipped: stats.subtrees_skipped,
            dur_us,
        }));
    }
    if config.detail_every != 0 && stats.seq.is_multiple_of(config.detail_every) {
        detail_lines(
            &mm,
            tables,
            m.vm.config.ram_bytes,
            stats.seq,
            now,
            config,
            &mut lines,
        );
    }
    drop(mm);
    for line in lines {
        crate::println!("{line}");
    }
    timing::PASS_POST.since(t_post);
    stats
}

fn detail_lines<F: EntryFormat>(
    mm: &VmMm,
    tables: &Tables<F, PhysTables>,
    ram_bytes: u64,
    n: u64,
    now: u64,
    config: &AgingConfig,
    lines: &mut Vec<Record>,
) {
    let vm: alloc::string::String = mm.name.into();
    lines.push(Record::Hist(report::HistLine {
        vm: vm.clone(),
        n,
        t_ms: now,
        buckets: mm
            .gens
            .histogram(tables, now)
            .map(|b| report::HistBucket {
                seq: b.seq,
                age_ms: b.age_ms,
                pages: b.pages,
            })
            .collect(),
    }));
    lines.push(Record::Map(report::MapLine {
        vm: vm.clone(),
        n,
        t_ms: now,
        base: 0,
        cell_kb: config.map_cell_pages * 4,
        cells: report::map_cells(&mm.gens, tables, ram_bytes, config.map_cell_pages),
    }));
    let threshold = mm.rec.feedback().threshold_gens();
    lines.push(Record::Ranges(report::RangesLine {
        vm,
        n,
        t_ms: now,
        hot: report::ranges_where(&mm.gens, tables, |age| age < 2),
        cold: report::ranges_where(&mm.gens, tables, |age| age >= threshold),
    }));
}

/// The `reclaim` report line of `mm` (whose tables are `tables`) for pass
/// `n`.
pub fn reclaim_line<F: EntryFormat>(
    mm: &VmMm,
    tables: &Tables<F, PhysTables>,
    n: u64,
    interval_ms: u64,
) -> Record {
    let now = reclaim::now_ms();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    let t = mm.rec.feedback().threshold_gens();
    Record::Reclaim(report::ReclaimLine {
        vm: mm.name.into(),
        n,
        t_ms: now,
        resident: mm.gens.histogram(tables, now).map(|b| b.pages).sum(),
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
/// the reclaimer's `batch_pages` at a time: each batch holds the VM's
/// writer lock, then its `VmMm` lock, and lets go before the next, so a
/// vCPU's fault waits for one batch at most.
pub fn reclaim_vm<E: Extension>(
    m: &Managed<E>,
    target: ReclaimTarget,
    max_pages: u64,
) -> BatchStats {
    let vm = &m.vm;
    let mut total = BatchStats::default();
    let batch_pages = m.mm.lock().rec.batch_pages() as u64;
    while total.reclaimed < max_pages {
        let batch = (max_pages - total.reclaimed).min(batch_pages);
        let t0 = crate::time::now_ns();
        let b = vm.memory.with_writer(|mapper, frames| {
            let t_held = timing::RECLAIM_WRITER_WAIT.since(t0);
            let _held = TimeHeld(t_held);
            let mut mm = m.mm.lock();
            let VmMm {
                gens,
                rec,
                cold_pages,
                ..
            } = &mut *mm;
            let mut kf = reclaim::KernelFrames::new(frames);
            let request = || vm.request_tlb_flush();
            let mut flush = Shootdown { request: &request };
            let b = rec.reclaim_toward(
                vm.memory.tables(),
                mapper,
                &mut kf,
                &mut flush,
                gens,
                target,
                reclaim::now_ms(),
                batch,
            );
            *cold_pages = cold_pages.saturating_sub(b.reclaimed);
            b
        });
        // A vCPU that faulted meanwhile spins on the writer lock, which a
        // spin lock would hand straight back to this loop: let it through
        // first (bounded, should it not be scheduled).
        let t_wait = crate::time::now_ns();
        while vm.memory.faults_waiting() && crate::time::now_ns() - t_wait < 2_000_000 {
            core::hint::spin_loop();
        }
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

/// Adds the time from its start to its drop to `timing::RECLAIM_HELD`
/// (dropped after the batch's locals, inside the writer lock).
struct TimeHeld(u64);

impl Drop for TimeHeld {
    fn drop(&mut self) {
        timing::RECLAIM_HELD.since(self.0);
    }
}

/// Adds the time from its start to its drop to `timing::PRESSURE`.
struct TimeRound(u64);

impl Drop for TimeRound {
    fn drop(&mut self) {
        timing::PRESSURE.since(self.0);
    }
}

/// Set by [`stop`]; the thread ends at its next wake-up.
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the aging thread to end.
pub fn stop() {
    STOP.store(true, Ordering::Release);
}

/// The thread body: passes every `config.interval_ms` over `vms` until
/// every VM stopped (or [`stop`]); then one last reclaim line per VM.
pub fn run<E: Extension>(vms: Vec<Managed<E>>, config: AgingConfig) {
    STOP.store(false, Ordering::Release);
    let mut next = crate::time::now_ns();
    let mut timing_at = next;
    let mut barren_until_ms = alloc::vec![0u64; vms.len()];
    loop {
        if config.timing_every_ms != 0
            && crate::time::now_ns() - timing_at >= config.timing_every_ms * 1_000_000
        {
            timing_at = crate::time::now_ns();
            print_timing(&vms, timing_at / 1_000_000);
        }
        if STOP.load(Ordering::Acquire) || vms.iter().all(|m| m.vm.stop_reason().is_some()) {
            break;
        }
        if crate::time::now_ns() >= next {
            for m in &vms {
                if m.vm.stop_reason().is_none() {
                    vm_work(m, &config);
                }
            }
            // A pass that overran its interval still sleeps a little, so
            // the CPU it shares with vCPUs (one-CPU machines) is not
            // monopolised.
            next += config.interval_ms * 1_000_000;
            let now = crate::time::now_ns();
            if next < now + 1_000_000 {
                next = now + 1_000_000;
            }
        }
        // Host memory pressure: reclaim the coldest pages of any VM. Looked
        // at every PRESSURE_CHECK_MS, not only once per interval (1 s by
        // default), so a VM paused for memory waits for one round, not for
        // the next pass.
        if reclaim::WATERMARKS.under_pressure(crate::mem::frame_stats().free_frames) {
            pressure(&vms, &mut barren_until_ms);
        }
        let check = crate::time::now_ns() + PRESSURE_CHECK_MS * 1_000_000;
        crate::sched::sleep_until(next.min(check));
    }
    for m in &vms {
        final_line(m, &config);
    }
}

/// How often the aging thread looks at host memory pressure between passes.
pub const PRESSURE_CHECK_MS: u64 = 5;

/// Pages per batch (one TLB flush) of pressure reclaim: each flush waits
/// for every CPU to take an interrupt, which cost 12-17 ms per flush under
/// TCG on a loaded host (more than the 64 pages of a default batch took to
/// unmap and store).
pub const PRESSURE_BATCH_PAGES: usize = hvcore::reclaim::MAX_BATCH_PAGES;

/// How long a VM whose pressure batch freed nothing for good is passed over
/// (`hvcore::reclaim::VictimCandidate::barren`).
pub const BARREN_MS: u64 = 500;

/// The `timing` lines of the phases and of each VM's reclaimer, labelled
/// with the time in ms; the phases start afresh.
pub fn print_timing<E: Extension>(vms: &[Managed<E>], t_ms: u64) {
    let label = alloc::format!("t_ms={t_ms}");
    timing::print(&label);
    timing::reset();
    for m in vms {
        let mm = m.mm.lock();
        let t = mm.rec.times();
        crate::println!(
            "timing {label} vm {}: select_us={} unmap_us={} flush_us={} store_us={} fault_in_us={} free_frames={}",
            mm.name,
            t.select_ns / 1000,
            t.unmap_ns / 1000,
            t.flush_ns / 1000,
            t.store_ns / 1000,
            t.fault_in_ns / 1000,
            crate::mem::frame_stats().free_frames
        );
    }
}

/// One VM's work per interval: a pass, then reclaim toward its target (a
/// `reclaim` line when pages went, and with the detail lines).
fn vm_work<E: Extension>(m: &Managed<E>, config: &AgingConfig) -> PassStats {
    let stats = pass(m, config);
    let target = m.mm.lock().target;
    let detail_pass = stats.seq.is_multiple_of(config.detail_every.max(1));
    if let Some(target) = target {
        let b = reclaim_vm(m, target, config.reclaim_max_pages);
        if (config.pass_lines && b.reclaimed > 0) || detail_pass {
            let mm = m.mm.lock();
            let line = reclaim_line(&mm, m.vm.memory.tables(), stats.seq, config.interval_ms);
            drop(mm);
            crate::println!("{line}");
            if let (ReclaimTarget::ResidentLimit { pages }, Record::Reclaim(r)) = (target, &line) {
                say_if_unmet(m, pages, r.resident, b.reclaimed);
            }
        }
    } else if detail_pass && m.mm.lock().rec.stats().reclaimed_pages > 0 {
        // No target, but host memory pressure took pages from this VM:
        // show it, or `report` would say nothing was reclaimed.
        let line = reclaim_line(
            &m.mm.lock(),
            m.vm.memory.tables(),
            stats.seq,
            config.interval_ms,
        );
        crate::println!("{line}");
    }
    stats
}

/// Says once per VM (console line and `TCR event ... what=target_unmet`)
/// that its resident limit of `limit_pages` cannot be met
/// (`hvcore::run_config::target_note`).
fn say_if_unmet<E: Extension>(m: &Managed<E>, limit_pages: u64, resident: u64, reclaimed: u64) {
    let ram_pages = m.vm.config.ram_bytes / 4096;
    let Some(note) = run_config::target_note(limit_pages, ram_pages, resident, reclaimed) else {
        return;
    };
    {
        let mut mm = m.mm.lock();
        if mm.target_unmet_said {
            return;
        }
        mm.target_unmet_said = true;
    }
    let (limit_kib, resident_kib, ram_kib) = (limit_pages * 4, resident * 4, ram_pages * 4);
    let (text, detail) = match note {
        TargetNote::LargerThanRam => (
            alloc::format!(
                "resident limit {limit_kib} KiB is not below the VM's {ram_kib} KiB of RAM: nothing is reclaimed to meet it"
            ),
            alloc::format!("limit_{limit_kib}_KiB_not_below_ram_{ram_kib}_KiB"),
        ),
        TargetNote::NotMet => (
            alloc::format!(
                "resident limit {limit_kib} KiB cannot be met: {resident_kib} KiB stay resident because they were young in the last passes (the limit is soft; reclaim goes on toward it)"
            ),
            alloc::format!("resident_{resident_kib}_KiB_stays_above_limit_{limit_kib}_KiB"),
        ),
    };
    crate::println!("vm {}: {text}", m.vm.name());
    crate::println!(
        "{}",
        Record::Event(report::EventLine {
            vm: m.vm.name().into(),
            t_ms: reclaim::now_ms(),
            what: report::EventKind::TargetUnmet,
            detail,
        })
    );
}

/// The last `reclaim` line of `m`, once it stopped.
pub fn final_line<E: Extension>(m: &Managed<E>, config: &AgingConfig) {
    let mm = m.mm.lock();
    let n = mm.gens.max_seq();
    crate::println!(
        "{}",
        reclaim_line(&mm, m.vm.memory.tables(), n, config.interval_ms)
    );
}

/// Exits between two passes of the exit-driven aging (no timer), unless
/// the virtual clock passed the interval first.
pub const EXITS_PER_PASS: u64 = 64;

/// Without a timer: installs the work of one aging-thread interval over
/// `m` (a pass, reclaim toward the target, reclaim under host memory
/// pressure) as `m.vm`'s exit work. The vCPU runs it after an exit once
/// `exits_per_pass` exits went by or `config.interval_ms` of the clock
/// passed since the last pass, whichever is first. Returns false (and
/// installs nothing) when the VM already has exit work.
pub fn on_exits<E: Extension>(m: Managed<E>, config: AgingConfig, exits_per_pass: u64) -> bool {
    // The work lives in the VM: it holds the VM weakly, not in a cycle.
    let vm = Arc::downgrade(&m.vm);
    let mm = m.mm;
    let exits = AtomicU64::new(0);
    let last_ns = AtomicU64::new(crate::time::now_ns());
    let interval_ns = config.interval_ms.saturating_mul(1_000_000);
    m.vm.set_exit_work(Box::new(move || {
        let Some(vm) = vm.upgrade() else {
            return;
        };
        let m = Managed { vm, mm: mm.clone() };
        let n = exits.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::time::now_ns();
        let due_by_clock = now.saturating_sub(last_ns.load(Ordering::Relaxed)) >= interval_ns;
        if n < exits_per_pass.max(1) && !due_by_clock {
            return;
        }
        exits.store(0, Ordering::Relaxed);
        last_ns.store(now, Ordering::Relaxed);
        vm_work(&m, &config);
        if reclaim::WATERMARKS.under_pressure(crate::mem::frame_stats().free_frames) {
            pressure(core::slice::from_ref(&m), &mut [0]);
        }
    }))
}

/// One round of reclaim under host memory pressure
/// (`hvcore::reclaim::pressure_round`): one batch at a time from the VM
/// holding the coldest page not young in the last pass, until
/// `reclaim::WATERMARKS` is satisfied or nothing more can be freed. A VM
/// whose batch freed no frame for good (all rescued, incompressible) is
/// passed over for [`BARREN_MS`] (`barren_until_ms`, one entry per VM).
fn pressure<E: Extension>(vms: &[Managed<E>], barren_until_ms: &mut [u64]) {
    let t0 = crate::time::now_ns();
    let _round = TimeRound(t0);
    let now = reclaim::now_ms();
    let survey = |i: usize| {
        let m: &Managed<E> = &vms[i];
        if m.vm.stop_reason().is_some() {
            return VictimCandidate::default();
        }
        let mm = m.mm.lock();
        let now = reclaim::now_ms();
        VictimCandidate {
            coldest_age_ms: mm
                .gens
                .histogram(m.vm.memory.tables(), now)
                .find(|b| b.age_gens >= 1)
                .map(|b| b.age_ms),
            barren: barren_until_ms[i] > now,
        }
    };
    let round = pressure_round(
        reclaim::WATERMARKS,
        vms.len(),
        || crate::mem::frame_stats().free_frames,
        survey,
        |i| {
            // No raw copies under pressure: one would cost the heap the
            // frame its page frees. Larger batches: fewer flushes, and the
            // vCPUs mostly wait for memory anyway.
            let batch_pages = {
                let mut mm = vms[i].mm.lock();
                let before = mm.rec.batch_pages();
                mm.rec.set_store_raw(false);
                mm.rec.set_batch_pages(PRESSURE_BATCH_PAGES);
                before
            };
            let b = reclaim_vm(
                &vms[i],
                ReclaimTarget::ColderThan(ColdAfter::Gens(1)),
                PRESSURE_BATCH_PAGES as u64,
            );
            let mut mm = vms[i].mm.lock();
            mm.rec.set_store_raw(true);
            mm.rec.set_batch_pages(batch_pages);
            b
        },
    );
    for i in round.went_barren {
        barren_until_ms[i] = now + BARREN_MS;
    }
}

/// `cargo xtask run --age-interval-ms N` (build-time variable
/// `THERMOCLINE_AGE_INTERVAL_MS`, parsed by `hvcore::run_config` like xtask
/// does); 1000 when unset. A malformed value stops the build.
pub const AGE_INTERVAL_MS: u64 = match option_env!("THERMOCLINE_AGE_INTERVAL_MS") {
    Some(s) => match run_config::parse_interval_ms(s) {
        Ok(n) => n,
        Err(_) => panic!(
            "THERMOCLINE_AGE_INTERVAL_MS: expected a whole number of milliseconds from 1 to 3600000"
        ),
    },
    None => run_config::DEFAULT_INTERVAL_MS,
};

/// `cargo xtask run --reclaim-target SIZE|adaptive|off` (build-time
/// variable `THERMOCLINE_RECLAIM_TARGET`, parsed by `hvcore::run_config`);
/// off when unset. A malformed value stops the build.
pub const RECLAIM_SETTING: ReclaimSetting = match option_env!("THERMOCLINE_RECLAIM_TARGET") {
    Some(s) => match run_config::parse_reclaim_target(s) {
        Ok(t) => t,
        Err(_) => panic!(
            "THERMOCLINE_RECLAIM_TARGET: expected off, adaptive, or a size with an optional K, M or G suffix, a multiple of 4 KiB"
        ),
    },
    None => ReclaimSetting::Off,
};

/// The reclaim target of this run, from the build-time configuration.
pub fn configured_target() -> Option<ReclaimTarget> {
    match RECLAIM_SETTING {
        ReclaimSetting::Off => None,
        ReclaimSetting::Adaptive => Some(ReclaimTarget::Adaptive),
        ReclaimSetting::ResidentBytes(b) => Some(ReclaimTarget::ResidentLimit { pages: b / 4096 }),
    }
}

/// The banner line describing the run's aging and reclaim configuration.
pub fn banner_line() -> alloc::string::String {
    let target = match configured_target() {
        Some(ReclaimTarget::ResidentLimit { pages }) => {
            alloc::format!("resident limit {} KiB per VM", pages * 4)
        }
        Some(ReclaimTarget::Adaptive) => "adaptive (refaults under 0.2 %/min)".into(),
        Some(ReclaimTarget::ColderThan(_)) | None => {
            "off (aging only; host memory pressure still reclaims)".into()
        }
    };
    // Without a timer no thread runs while a vCPU is in the guest.
    let driver = if crate::time::has_timer() {
        "thread on CPU 0"
    } else {
        "on VM exits (no timer)"
    };
    alloc::format!("  aging    interval {AGE_INTERVAL_MS} ms, {driver}, reclaim {target}")
}

/// Runs `vm` (the guest `cargo xtask run` chose) on backend `E` with the
/// configured reclaim target, until it stops: on CPU `cpu` with the aging
/// thread on CPU 0 where there is a timer; without one (the Bochs CPU core) on
/// this CPU, aging on its exits ([`on_exits`]).
pub fn run_selected<E: Extension>(vm: Arc<Vm<E>>, cpu: usize) {
    let m = Managed::new(&vm, configured_target());
    let config = AgingConfig {
        interval_ms: AGE_INTERVAL_MS,
        ..AgingConfig::default()
    };
    if !crate::time::has_timer() {
        crate::println!(
            "vm {}: no timer: aging runs on VM exits (every {EXITS_PER_PASS} exits or {} ms of the virtual clock), not on a thread",
            vm.name(),
            config.interval_ms
        );
        let ok = on_exits(m.clone(), config, EXITS_PER_PASS);
        debug_assert!(ok, "a new VM has no exit work");
        crate::vm::run_on_this_cpu(&vm);
        final_line(&m, &config);
        return;
    }
    let vcpu = crate::vm::spawn_on(cpu, vm);
    let ms = alloc::vec![m];
    let ager = crate::sched::spawn_on(0, "aging", move || run(ms, config));
    vcpu.join();
    stop();
    ager.join();
}
