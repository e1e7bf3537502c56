//! Per-CPU data, found through the GS base.
//!
//! Each CPU's IA32_GS_BASE points at its [`PerCpu`] in a static array; the
//! first field is the CPU's index, so [`this_index`] is one `mov` from
//! `gs:[0]`. VM-entry/exit code must keep the host GS base (SVM: VMLOAD
//! loads the guest's GS base, so save and restore the host's around it;
//! VMX: the host-state area's GS base field).

use super::apic;
use crate::lock::IrqSpinLock;
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use x86_64::VirtAddr;
use x86_64::registers::model_specific::GsBase;

/// Most CPUs the kernel drives.
pub const MAX_CPUS: usize = 64;

/// One CPU's data.
#[repr(C)]
#[derive(Debug)]
pub struct PerCpu {
    /// Must stay the first field: read as `gs:[0]`.
    index_word: AtomicUsize,
    /// The CPU's index (0 = boot CPU).
    pub index: usize,
    /// Its local APIC ID.
    pub apic_id: AtomicU32,
    /// Started and running its scheduler.
    pub online: AtomicBool,
    /// Closures other CPUs asked it to run (see `smp::run_on`).
    pub(super) calls: IrqSpinLock<VecDeque<super::CallRef>>,
}

static CPUS: [PerCpu; MAX_CPUS] = {
    let mut cpus = [const {
        PerCpu {
            index_word: AtomicUsize::new(0),
            index: 0,
            apic_id: AtomicU32::new(u32::MAX),
            online: AtomicBool::new(false),
            calls: IrqSpinLock::new(VecDeque::new()),
        }
    }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        cpus[i].index = i;
        cpus[i].index_word = AtomicUsize::new(i);
        i += 1;
    }
    cpus
};

/// Set once the boot CPU's GS base points at its [`PerCpu`].
static GS_READY: AtomicBool = AtomicBool::new(false);

/// Points this CPU's GS base at `CPUS[index]` and records its APIC ID.
pub fn install(index: usize, apic_id: u32) {
    let cpu = &CPUS[index];
    cpu.apic_id.store(apic_id, Ordering::Relaxed);
    GsBase::write(VirtAddr::from_ptr(cpu));
    GS_READY.store(true, Ordering::Release);
}

/// Whether per-CPU data is reachable (after the boot CPU's [`install`]).
pub fn is_ready() -> bool {
    GS_READY.load(Ordering::Acquire)
}

/// The index of the CPU executing this (0 before [`install`]).
pub fn this_index() -> usize {
    if !is_ready() {
        return 0;
    }
    let index: usize;
    // SAFETY: GS base points at this CPU's PerCpu (installed before
    // GS_READY, and on every AP before it runs Rust code that could get
    // here), whose first word is its index.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags));
    }
    index
}

/// This CPU's data.
pub fn this() -> &'static PerCpu {
    &CPUS[this_index()]
}

/// CPU `index`'s data.
///
/// # Panics
/// If `index >= MAX_CPUS`.
pub fn get(index: usize) -> &'static PerCpu {
    &CPUS[index]
}

/// The APIC ID of the CPU executing this, from its APIC or CPUID.
pub fn current_apic_id() -> u32 {
    if crate::time::has_timer() {
        apic::id()
    } else {
        crate::hw::cpuid(1, 0).ebx >> 24
    }
}
