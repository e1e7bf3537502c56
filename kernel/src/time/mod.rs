//! Time: a monotonic nanosecond clock from the TSC, calibrated at boot
//! against the PIT; a periodic local-APIC timer interrupt on every CPU (the
//! scheduler's tick); `sleep_ms`.
//!
//! Two modes, chosen once by [`init`] on the boot CPU:
//! - **Timer** (QEMU, hardware): the TSC advances, so it is calibrated
//!   against PIT channel 2 (10 ms gate, best of three; CPUID leaf 0x15/0x16
//!   when the PIT does not answer), and each CPU's APIC timer ticks at
//!   [`TICK_HZ`] (calibrated against the TSC). Threads are preempted.
//! - **Cooperative** (the Bochs CPU core): the TSC does not advance and arming the
//!   APIC timer aborts the emulator. Detected by the TSC standing still across
//!   a busy loop; the APIC is never touched. [`now_ns`] is then a virtual
//!   clock that advances by [`VIRTUAL_STEP_NS`] at every read (monotonic, so
//!   deadlines still pass), and threads switch only when they yield or block.
//!
//! Neighbours: `smp::apic` drives the APIC; the scheduler, a layer above,
//! installs what it does on each tick ([`set_tick_hook`]) and how a thread
//! blocks until a deadline ([`set_sleep_hook`]); this module never calls
//! it.
//! Follows: Intel SDM Vol. 3 "Time-Stamp Counter", "APIC Timer"; the 8254 PIT
//! data sheet (mode 0, channel 2 gated by port 0x61).

use crate::hw;
use crate::interrupts::{self, InterruptFrame};
use crate::smp::apic;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Vector of the APIC timer tick.
pub const TIMER_VECTOR: u8 = 0xEF;
/// Scheduler ticks per second in timer mode.
pub const TICK_HZ: u64 = 100;
/// How far the virtual clock of cooperative mode moves per read.
pub const VIRTUAL_STEP_NS: u64 = 1_000;

/// PIT input clock.
const PIT_HZ: u64 = 1_193_182;
/// PIT count for the 10 ms calibration window.
const PIT_COUNT: u16 = (PIT_HZ / 100) as u16;
/// TSC ticks in the calibration window, scaled to one second.
const WINDOW_PER_SECOND: u64 = 100;

const MODE_UNSET: u8 = 0;
const MODE_TIMER: u8 = 1;
const MODE_COOPERATIVE: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_BASE: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick as a 32.32 fixed-point number: `now_ns` is then
/// one multiplication instead of a 128-bit division.
static NS_PER_TICK_Q32: AtomicU64 = AtomicU64::new(0);
static VIRTUAL_NS: AtomicU64 = AtomicU64::new(0);
/// APIC timer ticks (bus clock / 16) per scheduler tick.
static APIC_TICKS_PER_TICK: AtomicU32 = AtomicU32::new(0);
/// Where the TSC frequency came from, for the banner.
static SOURCE: AtomicU8 = AtomicU8::new(0);
/// Timer interrupts taken, all CPUs together.
static TICKS: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; CR4.TSD is clear at CPL 0 anyway.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether this machine has a working timer (preemptive scheduling).
pub fn has_timer() -> bool {
    MODE.load(Ordering::Acquire) == MODE_TIMER
}

/// TSC frequency in Hz (0 in cooperative mode).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Timer interrupts taken so far, on all CPUs.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Nanoseconds since [`init`]: monotonic on each CPU, and across CPUs as far
/// as their TSCs agree (they do in QEMU and on invariant-TSC hardware).
pub fn now_ns() -> u64 {
    if has_timer() {
        let delta = rdtsc().wrapping_sub(TSC_BASE.load(Ordering::Relaxed));
        ((u128::from(delta) * u128::from(NS_PER_TICK_Q32.load(Ordering::Relaxed))) >> 32) as u64
    } else {
        VIRTUAL_NS.fetch_add(VIRTUAL_STEP_NS, Ordering::Relaxed) + VIRTUAL_STEP_NS
    }
}

/// Spins until `deadline_ns` ([`now_ns`] time). For code that cannot sleep:
/// early boot, the AP start-up sequence.
pub fn spin_until(deadline_ns: u64) {
    while now_ns() < deadline_ns {
        core::hint::spin_loop();
    }
}

/// Run on every tick, on the CPU that took it (the scheduler's preemption).
static TICK_HOOK: spin::Once<fn()> = spin::Once::new();

/// Blocks the calling thread until a deadline (`now_ns` time); false when
/// it cannot (no scheduler runs on this CPU yet).
pub type SleepHook = fn(deadline_ns: u64) -> bool;

static SLEEP_HOOK: spin::Once<SleepHook> = spin::Once::new();

/// Installs what every tick runs after its EOI (once; later calls are
/// ignored). Ticks before it do nothing but count.
pub fn set_tick_hook(hook: fn()) {
    TICK_HOOK.call_once(|| hook);
}

/// Installs how [`sleep_ms`] blocks a thread (once; later calls are
/// ignored).
pub fn set_sleep_hook(hook: SleepHook) {
    SLEEP_HOOK.call_once(|| hook);
}

/// Sleeps `ms` milliseconds: the thread blocks when the scheduler runs on
/// this CPU, else the CPU spins.
pub fn sleep_ms(ms: u64) {
    let deadline = now_ns().saturating_add(ms.saturating_mul(1_000_000));
    let blocked = SLEEP_HOOK.get().is_some_and(|sleep| sleep(deadline));
    if !blocked {
        spin_until(deadline);
    }
}

/// Whether the TSC stands still across a busy loop (the Bochs CPU core).
fn tsc_is_frozen() -> bool {
    let t0 = rdtsc();
    let mut x = 0u64;
    for i in 0..200_000u64 {
        x = core::hint::black_box(x.wrapping_add(i));
    }
    let t1 = rdtsc();
    t1.wrapping_sub(t0) < 1_000
}

/// TSC ticks during one 10 ms PIT channel 2 countdown, or `None` if the PIT
/// output never rises (no PIT).
fn pit_window_tsc() -> Option<u64> {
    // SAFETY: ports 0x61 (system control port B), 0x43 and 0x42 (PIT mode and
    // channel 2) drive only the PIT's channel 2 and the speaker gate, which
    // is kept off; no memory is involved.
    unsafe {
        let port_b = hw::inb(0x61);
        // Gate channel 2 on (bit 0), speaker data off (bit 1).
        hw::outb(0x61, (port_b & !0x02) | 0x01);
        // Channel 2, low then high byte, mode 0 (interrupt on terminal
        // count: OUT goes low now and high when the count runs out), binary.
        hw::outb(0x43, 0b1011_0000);
        hw::outb(0x42, (PIT_COUNT & 0xFF) as u8);
        hw::outb(0x42, (PIT_COUNT >> 8) as u8);
        let t0 = rdtsc();
        // Bounded: a machine without a PIT must not hang the boot.
        for _ in 0..50_000_000u64 {
            if hw::inb(0x61) & 0x20 != 0 {
                return Some(rdtsc().wrapping_sub(t0));
            }
        }
        None
    }
}

/// The TSC frequency from CPUID leaf 0x15 (crystal ratio) or 0x16 (base MHz).
fn cpuid_tsc_hz() -> Option<u64> {
    let max = hw::cpuid(0, 0).eax;
    if max >= 0x15 {
        let r = hw::cpuid(0x15, 0);
        if r.eax != 0 && r.ebx != 0 && r.ecx != 0 {
            return Some(u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax));
        }
    }
    if max >= 0x16 {
        let mhz = hw::cpuid(0x16, 0).eax & 0xFFFF;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    None
}

/// Chooses the mode, calibrates the TSC and the APIC timer, and starts the
/// tick on the boot CPU (interrupts stay as they are: the scheduler enables
/// them). Call once, on the boot CPU, after `mem::init`.
pub fn init() {
    if tsc_is_frozen() {
        MODE.store(MODE_COOPERATIVE, Ordering::Release);
        log::warn!(
            "the TSC does not advance and there is no usable timer: cooperative mode \
             (threads switch only when they yield or block; the APIC timer is never armed)"
        );
        return;
    }
    let pit = (0..3).filter_map(|_| pit_window_tsc()).min();
    let (hz, source) = match pit {
        Some(window) if window > 0 => (window * WINDOW_PER_SECOND, 1),
        _ => match cpuid_tsc_hz() {
            Some(hz) => (hz, 2),
            None => (1_000_000_000, 3),
        },
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    NS_PER_TICK_Q32.store(
        ((1_000_000_000u128 << 32) / u128::from(hz)) as u64,
        Ordering::Relaxed,
    );
    SOURCE.store(source, Ordering::Relaxed);
    TSC_BASE.store(rdtsc(), Ordering::Relaxed);
    MODE.store(MODE_TIMER, Ordering::Release);

    apic::init_boot_cpu();
    interrupts::set_handler(TIMER_VECTOR, on_timer);
    interrupts::set_handler(apic::SPURIOUS_VECTOR, on_spurious);
    // APIC timer ticks in 10 ms, measured with the freshly calibrated TSC.
    apic::timer_start_calibration();
    spin_until(now_ns() + 10_000_000);
    let per_10ms = apic::timer_stop_calibration();
    let per_tick = (u64::from(per_10ms) * 100 / TICK_HZ).clamp(1, u64::from(u32::MAX));
    APIC_TICKS_PER_TICK.store(per_tick as u32, Ordering::Relaxed);
    start_tick_this_cpu();
    log::info!("{}", Describe);
}

/// Starts the periodic tick on this CPU (its APIC already enabled).
pub fn start_tick_this_cpu() {
    if has_timer() {
        apic::timer_periodic(TIMER_VECTOR, APIC_TICKS_PER_TICK.load(Ordering::Relaxed));
    }
}

fn on_timer(_frame: &mut InterruptFrame) {
    TICKS.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
    if let Some(tick) = TICK_HOOK.get() {
        tick();
    }
}

fn on_spurious(_frame: &mut InterruptFrame) {
    // A spurious interrupt is not in service: no EOI.
}

/// One line for the banner: the clock, its calibration, the tick.
#[derive(Clone, Copy, Debug)]
pub struct Describe;

impl core::fmt::Display for Describe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match MODE.load(Ordering::Acquire) {
            MODE_TIMER => {
                let source = match SOURCE.load(Ordering::Relaxed) {
                    1 => "calibrated against the PIT",
                    2 => "from CPUID (the PIT did not answer)",
                    _ => "ASSUMED 1 GHz (no PIT, no CPUID frequency)",
                };
                write!(
                    f,
                    "TSC {}.{:03} MHz {source}; APIC timer {} Hz per CPU ({}), preemptive scheduling",
                    tsc_hz() / 1_000_000,
                    tsc_hz() / 1_000 % 1_000,
                    TICK_HZ,
                    if apic::is_x2apic() { "x2APIC" } else { "xAPIC" }
                )
            }
            MODE_COOPERATIVE => write!(
                f,
                "NO TIMER (TSC frozen): virtual clock, cooperative scheduling (threads switch only when they yield or block)"
            ),
            _ => write!(f, "not initialised"),
        }
    }
}
