//! The local APIC of each CPU: identity, end of interrupt, inter-processor
//! interrupts and the timer, in x2APIC mode (MSRs) when the CPU offers it and
//! xAPIC mode (memory-mapped registers) otherwise.
//!
//! The xAPIC registers are reached through the mapping of physical memory,
//! which covers the first 4 GiB and so the default base 0xFEE0_0000. The mode
//! is chosen once on the boot CPU ([`init_boot_cpu`]) and every AP follows it.
//!
//! Never used on a CPU without a working timer (the Bochs CPU core): there the
//! APIC timer aborts the emulator, so `time` keeps the platform in
//! cooperative mode and nothing here runs.
//!
//! Follows: Intel SDM Vol. 3 "Advanced Programmable Interrupt Controller
//! (APIC)": "Local APIC Register Address Map", "x2APIC Register Address
//! Space", "Interrupt Command Register (ICR)", "APIC Timer".

use crate::hw;
use crate::mem::phys;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hvcore::addr::HostPhysAddr;
use x86_64::registers::model_specific::Msr;

/// IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
/// First x2APIC register MSR; register at xAPIC offset `o` is `0x800 + o / 16`.
const X2APIC_MSR_BASE: u32 = 0x800;

/// xAPIC register offsets.
mod reg {
    pub const ID: u32 = 0x20;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xB0;
    pub const SVR: u32 = 0xF0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
}

/// Vector of the spurious interrupt (bits 3:0 set, as old APICs require).
pub const SPURIOUS_VECTOR: u8 = 0xFF;

static X2APIC: AtomicBool = AtomicBool::new(false);
/// Virtual address of the xAPIC registers (xAPIC mode only).
static MMIO: AtomicU64 = AtomicU64::new(0);

/// Whether the APICs run in x2APIC mode.
pub fn is_x2apic() -> bool {
    X2APIC.load(Ordering::Relaxed)
}

fn read(offset: u32) -> u32 {
    if is_x2apic() {
        // SAFETY: x2APIC mode is on, so the register MSR exists (only
        // registers that exist in both modes are read).
        (unsafe { hw::rdmsr(X2APIC_MSR_BASE + offset / 16) }) as u32
    } else {
        let at = MMIO.load(Ordering::Relaxed) + u64::from(offset);
        // SAFETY: `at` is an xAPIC register in the mapped register page.
        unsafe { (at as *const u32).read_volatile() }
    }
}

fn write(offset: u32, value: u32) {
    if is_x2apic() {
        // SAFETY: x2APIC mode is on, so the register MSR exists; writing an
        // APIC register affects only interrupt delivery.
        unsafe { Msr::new(X2APIC_MSR_BASE + offset / 16).write(u64::from(value)) }
    } else {
        let at = MMIO.load(Ordering::Relaxed) + u64::from(offset);
        // SAFETY: `at` is an xAPIC register in the mapped register page.
        unsafe { (at as *mut u32).write_volatile(value) }
    }
}

/// Chooses the mode (x2APIC when CPUID.1:ECX[21] says so) and enables this
/// CPU's APIC. Call on the boot CPU after `mem::init`.
pub fn init_boot_cpu() {
    let x2 = hw::cpuid(1, 0).ecx & (1 << 21) != 0;
    X2APIC.store(x2, Ordering::Relaxed);
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (CPUID.1:EDX[9],
    // which every x86_64 CPU has).
    let base = unsafe { hw::rdmsr(MSR_APIC_BASE) };
    MMIO.store(
        phys::to_virt(HostPhysAddr::new(base & 0x000F_FFFF_FFFF_F000)) as u64,
        Ordering::Relaxed,
    );
    enable_this_cpu();
}

/// Enables this CPU's APIC in the chosen mode, accepting all priorities.
pub fn enable_this_cpu() {
    // SAFETY: IA32_APIC_BASE exists; setting the enable bit (and the x2APIC
    // bit when CPUID offers it) only changes how the APIC is addressed.
    unsafe {
        let mut msr = Msr::new(MSR_APIC_BASE);
        let mut base = msr.read() | APIC_BASE_ENABLE;
        if is_x2apic() {
            base |= APIC_BASE_X2APIC;
        }
        msr.write(base);
    }
    write(reg::TPR, 0);
    write(reg::SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    if is_x2apic() {
        read(reg::ID)
    } else {
        read(reg::ID) >> 24
    }
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(reg::EOI, 0);
}

/// ICR delivery modes.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    Fixed(u8),
    Init,
    Startup(u8),
}

fn send(dest_apic_id: u32, delivery: Delivery) {
    let low: u32 = match delivery {
        Delivery::Fixed(v) => u32::from(v),
        // Level assert, as the INIT IPI wants.
        Delivery::Init => (0b101 << 8) | (1 << 14),
        Delivery::Startup(page) => (0b110 << 8) | u32::from(page),
    };
    if is_x2apic() {
        // SAFETY: the x2APIC ICR MSR exists in x2APIC mode; sending an IPI
        // affects only the target's interrupt state.
        unsafe {
            Msr::new(X2APIC_MSR_BASE + reg::ICR_LOW / 16)
                .write((u64::from(dest_apic_id) << 32) | u64::from(low));
        }
    } else {
        // Two register writes: with interrupts on, a tick could switch to a
        // thread that sends its own IPI in between and retarget ours.
        x86_64::instructions::interrupts::without_interrupts(|| {
            // Wait for the previous IPI to leave (delivery status, bit 12).
            for _ in 0..1_000_000 {
                if read(reg::ICR_LOW) & (1 << 12) == 0 {
                    break;
                }
                core::hint::spin_loop();
            }
            write(reg::ICR_HIGH, dest_apic_id << 24);
            write(reg::ICR_LOW, low);
        });
    }
}

/// Sends interrupt `vector` to the CPU with APIC ID `dest_apic_id`.
pub fn send_ipi(dest_apic_id: u32, vector: u8) {
    send(dest_apic_id, Delivery::Fixed(vector));
}

/// Sends INIT to `dest_apic_id` (the first step of starting an AP).
pub fn send_init(dest_apic_id: u32) {
    send(dest_apic_id, Delivery::Init);
}

/// Sends a start-up IPI: the AP starts in real mode at `page * 4096`.
pub fn send_startup(dest_apic_id: u32, page: u8) {
    send(dest_apic_id, Delivery::Startup(page));
}

/// Timer divide configuration value for "divide by 16".
const DIVIDE_BY_16: u32 = 0b0011;
/// LVT timer mode bits: periodic.
const TIMER_PERIODIC: u32 = 1 << 17;
/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;

/// Starts the timer counting down from `u32::MAX`, masked, for calibration.
pub fn timer_start_calibration() {
    write(reg::TIMER_DIVIDE, DIVIDE_BY_16);
    write(reg::LVT_TIMER, LVT_MASKED);
    write(reg::TIMER_INITIAL, u32::MAX);
}

/// Ticks the timer has counted since [`timer_start_calibration`]; stops it.
pub fn timer_stop_calibration() -> u32 {
    let elapsed = u32::MAX - read(reg::TIMER_CURRENT);
    write(reg::TIMER_INITIAL, 0);
    elapsed
}

/// Fires `vector` every `ticks` timer ticks (bus clock / 16) on this CPU.
pub fn timer_periodic(vector: u8, ticks: u32) {
    write(reg::TIMER_DIVIDE, DIVIDE_BY_16);
    write(reg::LVT_TIMER, TIMER_PERIODIC | u32::from(vector));
    write(reg::TIMER_INITIAL, ticks.max(1));
}
