//! Benchmark kernel `bench_guest` (issue 7): what aging and reclaim cost a
//! running guest, measured inside the hypervisor. Not a test: it is not in
//! the QEMU suite (`tests/tests/qemu.rs` lists scenarios by name); `cargo
//! xtask bench --guest` boots it and prints its `[bench]` lines as a table.
//! Its cases assert only what makes a figure meaningful (the guests ran to
//! the end and lost nothing), never a speed.
//!
//! Cases:
//! * **throughput**: two identical `pattern` guests (work report on: bit 48
//!   of the boot argument, see `guests/src/bin/pattern.rs`) run at the same
//!   time on CPUs 1 and 2; the aging thread (CPU 0, default 1 s interval,
//!   adaptive reclaim) manages only one of them. Work per second of both,
//!   and their ratio. Two rounds, the aged VM on CPU 1 then on CPU 2, so a
//!   difference between the two CPUs cancels out. Running both at once,
//!   rather than one after the other, exposes both to the same host load:
//!   under TCG each vCPU is a host thread, and the load of a shared host
//!   changes from one second to the next by more than the 2 % measured
//!   here. Two figures: the ratio of the rounds' total rates, and the
//!   median over every interval of the aged VM's rate over the plain VM's
//!   in the same interval (robust to a burst of host load in one round).
//!   Then two control rounds, same CPUs, neither VM aged: the same two
//!   figures for them are the noise floor. With fewer than 3 CPUs the two
//!   runs are sequential (one CPU for the guest, one for the aging
//!   thread), and say so (no medians, no control).
//! * **checksum**: the `checksum` guest (dense, then sparse data) writes
//!   its memory and waits in `MARK 1`: two passes, then everything is
//!   reclaimed (pages/s, TSC cycles/page, compression ratio of the store),
//!   then brought back by the hypervisor's own fault-in path page by page
//!   (cycles/page, the hypervisor's share of a nested page fault). At `MARK
//!   2` (a third of the pages rewritten) everything is reclaimed again, and
//!   the guest's verify sweep faults it back through real nested page
//!   faults: its duration against the same guest without that reclaim
//!   gives the cost per page as the guest sees it (exit, fault-in, entry).
//!
//! Output: `[bench] <key> <value> <unit> <description>` lines (parsed by
//! `xtask/src/bench.rs`); figures under TCG are from an emulated CPU.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::cpu_features::Backend;
use hvcore::generations::ColdAfter;
use hvcore::guest_layout as layout;
use hvcore::hypercall::work_report;

use hvcore::reclaim::ReclaimTarget;
use kernel::aging::{self, AgingConfig, Managed};
use kernel::svm::Svm;
use kernel::testing::guests::new_vm;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, Extension, GuestEvent, StopReason, Vm, images};
use kernel::vmx::vcpu::Vmx;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "bench_guest",
    cases: &[
        TestCase {
            name: "throughput_aging_on_vs_off",
            run: throughput,
        },
        TestCase {
            name: "reclaim_and_fault_in_on_checksum_data",
            run: checksum,
        },
    ],
};

const MIB: u64 = 1 << 20;
/// RAM of each `pattern` VM: 28 MiB of data pages, a quarter of them hot.
const PATTERN_RAM: u64 = 32 * MIB;
const PATTERN_HOT_PAGES: u64 = 1792;
const PATTERN_INTERVAL_MS: u64 = 250;
/// 8 s of guest time per round (the hot set moves every 1 s).
const PATTERN_INTERVALS: u64 = 32;
/// RAM of each `checksum` VM.
const CHECKSUM_RAM: u64 = 16 * MIB;

/// Prints one benchmark figure.
fn figure(key: &str, value: impl core::fmt::Display, unit: &str, what: &str) {
    kernel::println!("[bench] {key} {value} {unit} {what}");
}

/// `a / b` as a decimal string with `places` decimals (no floats in the
/// kernel's formatting path).
fn ratio(a: u64, b: u64, places: u32) -> alloc::string::String {
    let scale = 10u64.pow(places);
    let Some(v) = (u128::from(a) * u128::from(scale)).checked_div(u128::from(b)) else {
        return "-".into();
    };
    let v = v as u64;
    if places == 0 {
        return alloc::format!("{v}");
    }
    alloc::format!("{}.{:0w$}", v / scale, v % scale, w = places as usize)
}

/// Where the figures come from: the accelerator is the host's business
/// (xtask prints it); the kernel says what CPUID shows.
fn say_where() {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    let under = if leaf1.ecx & (1 << 31) != 0 {
        let l = core::arch::x86_64::__cpuid(0x4000_0000);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&l.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&l.ecx.to_le_bytes());
        sig[8..].copy_from_slice(&l.edx.to_le_bytes());
        let s = core::str::from_utf8(&sig)
            .unwrap_or("?")
            .trim_end_matches('\0');
        if s.is_empty() || s.bytes().any(|b| !b.is_ascii_graphic()) {
            alloc::string::String::from("a hypervisor with no signature (QEMU TCG)")
        } else {
            alloc::format!("hypervisor signature {s:?}")
        }
    } else {
        "no hypervisor bit".into()
    };
    kernel::println!(
        "bench: {} CPUs, TSC {} MHz, {under}; under QEMU TCG every figure is from an emulated CPU",
        kernel::smp::cpu_count(),
        kernel::time::tsc_hz() / 1_000_000
    );
}

// ---------------------------------------------------------------------
// Throughput: pattern guests, aged and not.

/// One VM's work reports: (time, count) per interval.
struct Work {
    vm_id: AtomicU64,
    reports: spin::Mutex<Vec<(u64, u64)>>,
}

impl Work {
    const fn new() -> Self {
        Work {
            vm_id: AtomicU64::new(u64::MAX),
            reports: spin::Mutex::new(Vec::new()),
        }
    }
    fn reset(&self, vm_id: u32) {
        self.reports.lock().clear();
        self.vm_id.store(u64::from(vm_id), Ordering::Release);
    }
    fn record(&self, now_ns: u64, work: u64) {
        self.reports.lock().push((now_ns, work));
    }
    fn count(&self) -> usize {
        self.reports.lock().len()
    }
    /// Work per second from the first report to the last, or 0 with fewer
    /// than two reports.
    fn per_s(&self) -> u64 {
        let r = self.reports.lock();
        match (r.first(), r.last()) {
            (Some(&(t0, w0)), Some(&(t1, w1))) => rate(w1 - w0, t1 - t0),
            _ => 0,
        }
    }
    /// Work per second in each interval after the first report.
    fn interval_rates(&self) -> Vec<u64> {
        self.reports
            .lock()
            .windows(2)
            .map(|w| rate(w[1].1 - w[0].1, w[1].0 - w[0].0))
            .collect()
    }
}

/// `work` per second over `ns`; 0 for an empty span.
fn rate(work: u64, ns: u64) -> u64 {
    (u128::from(work) * 1_000_000_000)
        .checked_div(u128::from(ns))
        .unwrap_or(0) as u64
}

/// Per interval `k`, `a`'s rate over `b`'s in ten-thousandths: the two VMs
/// run at once, so interval `k` of each covers about the same host time,
/// and a burst of host load that slows both cancels out of the pair.
fn paired_ratios_e4(a: &Work, b: &Work) -> Vec<u64> {
    a.interval_rates()
        .iter()
        .zip(b.interval_rates())
        .filter(|&(_, rb)| rb != 0)
        .map(|(&ra, rb)| (u128::from(ra) * 10_000 / u128::from(rb)) as u64)
        .collect()
}

/// The median of `v` (sorted in place); 0 when empty.
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

static WORK: [Work; 2] = [Work::new(), Work::new()];

fn work_hook<E: Extension>(vm: &Vm<E>, e: &GuestEvent) {
    let GuestEvent::Mark(tag) = *e else {
        return;
    };
    let Some(work) = work_report::count(tag) else {
        return;
    };
    let now = kernel::time::now_ns();
    if let Some(w) = WORK
        .iter()
        .find(|w| w.vm_id.load(Ordering::Acquire) == u64::from(vm.id))
    {
        w.record(now, work);
    }
}

fn pattern_vm<E: Extension>() -> Arc<Vm<E>> {
    let arg =
        PATTERN_INTERVALS | (PATTERN_INTERVAL_MS << 16) | (PATTERN_HOT_PAGES << 32) | (1 << 48);
    let hook: vm::Hook<E> = Box::leak(Box::new(work_hook::<E>));
    new_vm(images::PATTERN, PATTERN_RAM, arg, false, Some(hook))
}

/// The aging thread's configuration: the defaults of a run (1 s, report
/// lines), so the figure is the cost of the default configuration.
fn bench_aging() -> AgingConfig {
    AgingConfig::default()
}

/// One round: `aged` and `plain` run at once on `cpus`; only `aged` is
/// handed to the aging thread. Returns (aged, plain) work/s.
fn round<E: Extension>(
    aged: Arc<Vm<E>>,
    plain: Arc<Vm<E>>,
    cpus: (usize, usize),
    concurrent: bool,
    label: &str,
) -> (u64, u64) {
    WORK[0].reset(aged.id);
    WORK[1].reset(plain.id);
    let m = Managed::new(&aged, Some(ReclaimTarget::Adaptive));
    let run_plain = move || {
        assert_eq!(vm::run_on_this_cpu(&plain), StopReason::Exited(0));
    };
    let run_aged = |cpu: usize| {
        let vcpu = vm::spawn_on(cpu, aged.clone());
        let ms = alloc::vec![m.clone()];
        let ager = kernel::sched::spawn_on(0, "aging", move || aging::run(ms, bench_aging()));
        vcpu.join();
        aging::stop();
        ager.join();
    };
    if concurrent {
        let p = kernel::sched::spawn_on(cpus.1, "vcpu", run_plain);
        run_aged(cpus.0);
        p.join();
    } else {
        let p = kernel::sched::spawn_on(cpus.1, "vcpu", run_plain);
        p.join();
        run_aged(cpus.0);
    }
    assert_eq!(aged.stop_reason(), Some(StopReason::Exited(0)));
    let (a, p) = (WORK[0].per_s(), WORK[1].per_s());
    assert!(
        WORK[0].count() >= 2 && WORK[1].count() >= 2,
        "both guests reported their work"
    );
    let mm = m.mm.lock();
    let s = mm.rec.stats();
    let now = kernel::reclaim::now_ms();
    let resident: u64 = mm
        .gens
        .histogram(aged.memory.tables(), now)
        .map(|b| b.pages)
        .sum();
    kernel::println!(
        "bench: {label}: aged VM on CPU {} {a} work/s, plain VM on CPU {} {p} work/s, ratio {} (median of intervals {}); aging passes {}, reclaimed {} pages, {} refaults, {} resident at the end",
        cpus.0,
        cpus.1,
        ratio(a, p, 4),
        ratio(median(&mut paired_ratios_e4(&WORK[0], &WORK[1])), 10_000, 4),
        mm.gens.max_seq(),
        s.reclaimed_total,
        s.refaults,
        resident
    );
    (a, p)
}

fn throughput() {
    match kernel::launch::backend() {
        Some(Backend::Vmx) => throughput_on::<Vmx>(),
        Some(Backend::Svm) => throughput_on::<Svm>(),
        None => panic!("no virtualization extension: nothing to measure"),
    }
}

fn throughput_on<E: Extension>() {
    say_where();
    let n = kernel::smp::cpu_count();
    assert!(n >= 2, "the benchmark needs an aging CPU and a vCPU CPU");
    let concurrent = n >= 3;
    let data_pages = (PATTERN_RAM - layout::DATA_START_GPA) / 4096;
    kernel::println!(
        "bench: throughput: pattern guests of {} MiB ({data_pages} data pages, {PATTERN_HOT_PAGES} hot, moving every {} ms), {PATTERN_INTERVALS} intervals of {PATTERN_INTERVAL_MS} ms; aging every {} ms with adaptive reclaim; {}",
        PATTERN_RAM / MIB,
        PATTERN_INTERVAL_MS * 4,
        bench_aging().interval_ms,
        if concurrent {
            "aged and plain VM at the same time on CPUs 1 and 2"
        } else {
            "only 2 CPUs: plain VM, then aged VM, on CPU 1 (sequential: host load may differ)"
        }
    );
    // Concurrent: the aged VM on CPU 1, 2, 1, 2. Sequential: plain then
    // aged, twice.
    let rounds: &[(usize, usize)] = if concurrent {
        &[(1, 2), (2, 1), (1, 2), (2, 1)]
    } else {
        &[(1, 1), (1, 1)]
    };
    let mut sum = (0u64, 0u64);
    let mut ratios_e4 = Vec::new();
    let mut paired_e4 = Vec::new();
    for (i, &cpus) in rounds.iter().enumerate() {
        let (aged, plain) = (pattern_vm::<E>(), pattern_vm::<E>());
        let label = alloc::format!("round {}", i + 1);
        let (a, p) = round::<E>(aged, plain, cpus, concurrent, &label);
        paired_e4.extend(paired_ratios_e4(&WORK[0], &WORK[1]));
        sum.0 += a;
        sum.1 += p;
        ratios_e4.push(
            (u128::from(a) * 10_000)
                .checked_div(u128::from(p))
                .unwrap_or(0) as u64,
        );
    }
    let k = rounds.len() as u64;
    figure(
        "throughput.off",
        sum.1 / k,
        "touches/s",
        "pattern guest, aging and reclaim off (mean of rounds)",
    );
    figure(
        "throughput.on",
        sum.0 / k,
        "touches/s",
        "pattern guest, aging every 1 s and adaptive reclaim on (mean of rounds)",
    );
    let (lo, hi) = spread(&ratios_e4);
    figure(
        "throughput.ratio",
        ratio(sum.0, sum.1, 4),
        "on/off",
        &alloc::format!(
            "target >= 0.98; {} rounds ranged {} to {}",
            rounds.len(),
            ratio(lo, 10_000, 4),
            ratio(hi, 10_000, 4)
        ),
    );
    if !concurrent {
        return;
    }
    let pairs = paired_e4.len();
    figure(
        "throughput.ratio_median",
        ratio(median(&mut paired_e4), 10_000, 4),
        "on/off",
        &alloc::format!("median over {pairs} intervals of aged/plain rate in the same interval"),
    );
    // The noise floor: the same two rounds with neither VM aged, one VM
    // standing in for the aged one (on CPU 1, then on CPU 2, as above).
    // However far this ratio is from 1, the on/off ratio cannot resolve.
    let mut control_e4 = Vec::new();
    let mut control_paired_e4 = Vec::new();
    let mut control = (0u64, 0u64);
    for (i, &(c_stand_in, c_other)) in [(1usize, 2usize), (2, 1)].iter().enumerate() {
        let (v1, v2) = (pattern_vm::<E>(), pattern_vm::<E>());
        WORK[0].reset(v1.id);
        WORK[1].reset(v2.id);
        let h1 = vm::spawn_on(c_stand_in, v1.clone());
        let h2 = vm::spawn_on(c_other, v2.clone());
        h1.join();
        h2.join();
        assert_eq!(v1.stop_reason(), Some(StopReason::Exited(0)));
        assert_eq!(v2.stop_reason(), Some(StopReason::Exited(0)));
        let (a, b) = (WORK[0].per_s(), WORK[1].per_s());
        control_paired_e4.extend(paired_ratios_e4(&WORK[0], &WORK[1]));
        kernel::println!(
            "bench: control {}: neither VM aged: stand-in on CPU {c_stand_in} {a} work/s, other on CPU {c_other} {b} work/s, ratio {} (median of intervals {})",
            i + 1,
            ratio(a, b, 4),
            ratio(median(&mut paired_ratios_e4(&WORK[0], &WORK[1])), 10_000, 4)
        );
        control.0 += a;
        control.1 += b;
        control_e4.push(
            (u128::from(a) * 10_000)
                .checked_div(u128::from(b))
                .unwrap_or(0) as u64,
        );
    }
    let (lo, hi) = spread(&control_e4);
    figure(
        "throughput.control_ratio",
        ratio(control.0, control.1, 4),
        "ratio",
        &alloc::format!(
            "noise floor: neither VM aged, same rounds and CPU swap; 2 rounds ranged {} to {}",
            ratio(lo, 10_000, 4),
            ratio(hi, 10_000, 4)
        ),
    );
    let pairs = control_paired_e4.len();
    figure(
        "throughput.control_median",
        ratio(median(&mut control_paired_e4), 10_000, 4),
        "ratio",
        &alloc::format!("noise floor of ratio_median: {pairs} intervals, neither VM aged"),
    );
}

/// The smallest and largest of `v` (0, 0 when empty).
fn spread(v: &[u64]) -> (u64, u64) {
    (
        v.iter().min().copied().unwrap_or(0),
        v.iter().max().copied().unwrap_or(0),
    )
}

// ---------------------------------------------------------------------
// Checksum: reclaim, fault-in, compression.

/// What the checksum hook measured.
struct Probe {
    vm_id: AtomicU64,
    /// Reclaim at `MARK 2` too (the measured VM), or not (the baseline).
    reclaim_at_mark2: AtomicU64,
    mark2_ns: AtomicU64,
    result_ns: AtomicU64,
    mark2_reclaimed: AtomicU64,
    /// The guest writes sparse data (names the figures).
    sparse: AtomicU64,
}

/// The data kind of the running checksum VM, for figure names.
fn data_kind() -> &'static str {
    if PROBE.sparse.load(Ordering::Acquire) != 0 {
        "sparse"
    } else {
        "dense"
    }
}

static PROBE: Probe = Probe {
    vm_id: AtomicU64::new(u64::MAX),
    reclaim_at_mark2: AtomicU64::new(0),
    mark2_ns: AtomicU64::new(0),
    result_ns: AtomicU64::new(0),
    mark2_reclaimed: AtomicU64::new(0),
    sparse: AtomicU64::new(0),
};

static CHECKSUM_VM: spin::Mutex<Option<Managed<Svm>>> = spin::Mutex::new(None);
static CHECKSUM_VM_EPT: spin::Mutex<Option<Managed<Vmx>>> = spin::Mutex::new(None);

/// The managed VM of the running checksum case, of either format.
trait Slot: Extension {
    fn slot() -> &'static spin::Mutex<Option<Managed<Self>>>;
}
impl Slot for Svm {
    fn slot() -> &'static spin::Mutex<Option<Managed<Self>>> {
        &CHECKSUM_VM
    }
}
impl Slot for Vmx {
    fn slot() -> &'static spin::Mutex<Option<Managed<Self>>> {
        &CHECKSUM_VM_EPT
    }
}

/// Two quiet passes: every page not touched since is then not young in
/// the last one.
fn settle<E: Extension>(m: &Managed<E>) {
    let quiet = AgingConfig {
        pass_lines: false,
        detail_every: 0,
        ..AgingConfig::default()
    };
    aging::pass(m, &quiet);
    aging::pass(m, &quiet);
}

/// Reclaims everything not young in the last pass; returns (pages,
/// TSC cycles, ns).
fn reclaim_all<E: Extension>(m: &Managed<E>) -> (hvcore::reclaim::BatchStats, u64, u64) {
    let (t0, c0) = (kernel::time::now_ns(), kernel::time::rdtsc());
    let b = aging::reclaim_vm(m, ReclaimTarget::ColderThan(ColdAfter::Gens(1)), u64::MAX);
    let (c1, t1) = (kernel::time::rdtsc(), kernel::time::now_ns());
    (b, c1 - c0, t1 - t0)
}

fn checksum_hook<E: Slot>(vm: &Vm<E>, e: &GuestEvent) {
    if PROBE.vm_id.load(Ordering::Acquire) != u64::from(vm.id) {
        return;
    }
    let measured = PROBE.reclaim_at_mark2.load(Ordering::Acquire) != 0;
    match *e {
        GuestEvent::Mark(1) if measured => {
            let Some(m) = E::slot().lock().clone() else {
                return;
            };
            settle(&m);
            let (b, cycles, ns) = reclaim_all(&m);
            let st = m.mm.lock().rec.store_stats();
            figure(
                &alloc::format!("reclaim.pages_per_s.{}", data_kind()),
                (u128::from(b.reclaimed) * 1_000_000_000)
                    .checked_div(u128::from(ns))
                    .unwrap_or(0),
                "pages/s",
                &alloc::format!(
                    "reclaim of {} pages ({} zero, {} compressed, {} raw), batches of 64 with a cross-CPU flush each",
                    b.reclaimed,
                    b.zero,
                    b.compressed,
                    b.raw
                ),
            );
            figure(
                &alloc::format!("reclaim.cycles_per_page.{}", data_kind()),
                cycles.checked_div(b.reclaimed).unwrap_or(0),
                "TSC/page",
                "the same reclaim, per page",
            );
            figure(
                &alloc::format!("compression.ratio.{}", data_kind()),
                ratio(st.ratio_milli(), 1000, 3),
                "x",
                &alloc::format!(
                    "non-zero pages: {} bytes kept for {} pages ({} compressed, {} raw)",
                    st.stored_bytes(),
                    st.compressed_pages + st.raw_pages,
                    st.compressed_pages,
                    st.raw_pages
                ),
            );
            // Back, one page at a time, through the path a nested page
            // fault takes (without the exit).
            let pages = (vm.config.ram_bytes - layout::DATA_START_GPA) / 4096;
            let (t0, c0) = (kernel::time::now_ns(), kernel::time::rdtsc());
            let mut back = 0u64;
            for p in 0..pages {
                let gpa = hvcore::addr::GuestPhysAddr::new(layout::DATA_START_GPA + p * 4096);
                if matches!(vm.memory.fault_in(gpa), vm::memory::FaultOutcome::Mapped(_)) {
                    back += 1;
                }
            }
            let (c1, t1) = (kernel::time::rdtsc(), kernel::time::now_ns());
            figure(
                &alloc::format!("faultin.hv_cycles_per_page.{}", data_kind()),
                (c1 - c0).checked_div(back).unwrap_or(0),
                "TSC/page",
                &alloc::format!(
                    "hypervisor fault-in path, {back} pages ({} ns/page), no VM exit",
                    (t1 - t0).checked_div(back).unwrap_or(0)
                ),
            );
        }
        GuestEvent::Mark(2) => {
            if measured {
                let Some(m) = E::slot().lock().clone() else {
                    return;
                };
                settle(&m);
                let (b, _, ns) = reclaim_all(&m);
                PROBE.mark2_reclaimed.store(b.reclaimed, Ordering::Release);
                let clean = m.mm.lock().rec.stats().clean_drops;
                figure(
                    &alloc::format!("reclaim.again_pages_per_s.{}", data_kind()),
                    (u128::from(b.reclaimed) * 1_000_000_000)
                        .checked_div(u128::from(ns))
                        .unwrap_or(0),
                    "pages/s",
                    &alloc::format!(
                        "second reclaim of {} pages, {clean} of them clean drops (unwritten since fault-in)",
                        b.reclaimed
                    ),
                );
            }
            PROBE
                .mark2_ns
                .store(kernel::time::now_ns(), Ordering::Release);
        }
        GuestEvent::Checksum { .. } => {
            PROBE
                .result_ns
                .store(kernel::time::now_ns(), Ordering::Release);
        }
        _ => {}
    }
}

/// Runs one checksum VM on this CPU; returns the verify sweep's ns (from
/// the end of the `MARK 2` hook to `CHECKSUM_RESULT`).
fn checksum_run<E: Slot>(sparse: bool, measured: bool) -> (u64, u64) {
    let arg = 1 | (u64::from(sparse) << 32);
    let hook: vm::Hook<E> = Box::leak(Box::new(checksum_hook::<E>));
    let vm = new_vm::<E>(images::CHECKSUM, CHECKSUM_RAM, arg, false, Some(hook));
    let m = Managed::new(&vm, None);
    *E::slot().lock() = Some(m);
    PROBE
        .reclaim_at_mark2
        .store(u64::from(measured), Ordering::Release);
    PROBE.mark2_reclaimed.store(0, Ordering::Release);
    PROBE.sparse.store(u64::from(sparse), Ordering::Release);
    PROBE.vm_id.store(u64::from(vm.id), Ordering::Release);
    let reason = vm::run_on_this_cpu(&vm);
    *E::slot().lock() = None;
    let pages = (CHECKSUM_RAM - layout::DATA_START_GPA) / 4096;
    assert_eq!(reason, StopReason::Exited(0));
    assert_eq!(vm.checksum_result(), Some((pages, 0)), "nothing lost");
    let verify_ns =
        PROBE.result_ns.load(Ordering::Acquire) - PROBE.mark2_ns.load(Ordering::Acquire);
    (verify_ns, PROBE.mark2_reclaimed.load(Ordering::Acquire))
}

fn checksum() {
    match kernel::launch::backend() {
        Some(Backend::Vmx) => checksum_on::<Vmx>(),
        Some(Backend::Svm) => checksum_on::<Svm>(),
        None => panic!("no virtualization extension: nothing to measure"),
    }
}

fn checksum_on<E: Slot>() {
    for sparse in [false, true] {
        let data = if sparse { "sparse" } else { "dense" };
        kernel::println!(
            "bench: checksum guest, {data} data, {} MiB",
            CHECKSUM_RAM / MIB
        );
        let (base_ns, _) = checksum_run::<E>(sparse, false);
        let (ns, reclaimed) = checksum_run::<E>(sparse, true);
        let extra = ns.saturating_sub(base_ns);
        figure(
            &alloc::format!("faultin.guest_ns_per_page.{data}"),
            extra.checked_div(reclaimed).unwrap_or(0),
            "ns/page",
            &alloc::format!(
                "as the guest sees it (exit + fault-in + entry): verify sweep {} ms with {reclaimed} pages reclaimed, {} ms without",
                ns / 1_000_000,
                base_ns / 1_000_000
            ),
        );
    }
}
