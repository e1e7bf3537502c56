//! The Thermocline kernel: the hypervisor that runs on the bare machine.
//!
//! This library holds every kernel module; the binaries are thin:
//! `src/main.rs` is the hypervisor, and each `src/bin/test_*.rs` is one
//! in-emulator test scenario (see `testing` and `tests/`). Every binary is
//! entered by the `bootloader` crate at the standard `_start` that
//! `bootloader_api::entry_point!` generates with [`BOOTLOADER_CONFIG`], and
//! calls [`init`] first.
//!
//! Layers, bottom first (docs/ARCHITECTURE.md, "Layers"); a module imports
//! only from its own layer or those below, which `cargo xtask test --step
//! layers` checks (`xtask/src/layers.rs` holds the same list):
//! 1. platform: hardware glue with `unsafe` (`hw`: ports, exit, CPUID/MSR;
//!    `gdt`; `interrupts`: IDT, entry stubs), `lock`, console and
//!    diagnostics (`console`, `logger`, `panic`, `interrupts::exceptions`,
//!    `cpu`), the test protocol (`testing`); then `mem` (frames, heap,
//!    physical memory), `smp::apic`, `time` (clock, tick), `smp` (CPUs,
//!    per-CPU data, IPIs), `sched` (threads);
//! 2. virt: the vendor trait (`virt`: `Extension`, `VirtCpu`) and its two
//!    backends, `svm` and `vmx`;
//! 3. vm: `vm` (the VM typed by its vendor, guest memory, vCPU threads and
//!    loop, exit handlers, the port bus and `vm::devices`, hypercalls);
//! 4. mm: `reclaim`, then `aging` (the aging thread and its exit-driven
//!    twin);
//! 5. launch: `launch` (the backend, chosen once, and the selected guest),
//!    `banner`, and the scenario support of `testing::{aging, guests,
//!    overcommit, smp}`.
//!
//! This file (the crate root) wires the layers together in [`init`];
//! arch-independent logic lives in the `hvcore` crate.
#![no_std]

extern crate alloc;

pub mod aging;
pub mod banner;
pub mod console;
pub mod cpu;
pub mod gdt;
pub mod hw;
pub mod interrupts;
pub mod launch;
pub mod lock;
pub mod logger;
pub mod mem;
mod panic;
pub mod reclaim;
pub mod sched;
pub mod smp;
pub mod svm;
pub mod testing;
pub mod time;
pub mod virt;
pub mod vm;
pub mod vmx;

pub use bootloader_api;

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::{BootInfo, MemoryRegionKind};
use spin::Once;

/// What every kernel binary asks of the bootloader.
///
/// All physical memory is mapped at a dynamic offset (the platform layer
/// reaches page tables and guest frames through it); the kernel stack is
/// larger than the 80 KiB default because exception reports and the hypervisor
/// paths nest deeply in debug builds.
pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    config
};

static BOOT_INFO: Once<&'static BootInfo> = Once::new();

/// The boot information, once [`init`] has run.
pub fn boot_info() -> Option<&'static BootInfo> {
    BOOT_INFO.get().copied()
}

/// The boot loader's ramdisk (`bootloader` 0.11: the file `set_ramdisk`
/// put on the disk, loaded and mapped by the loader), once [`init`] has
/// run; `None` when the image has none. A Linux guest's bundle travels
/// this way (`hvcore::linux_boot::bundle`).
pub fn ramdisk() -> Option<&'static [u8]> {
    let info = boot_info()?;
    let addr = info.ramdisk_addr.into_option()?;
    let len = usize::try_from(info.ramdisk_len).ok()?;
    if len == 0 {
        return None;
    }
    // SAFETY: the loader mapped `[addr, addr + len)` read-only-for-us and
    // reported it as in use (memory kind Bootloader), so the frame
    // allocator never hands its frames out; the mapping lives as long as
    // the kernel's page tables, which are never torn down.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// Brings up the boot CPU: console, logger, GDT/TSS, IDT, legacy PIC masked.
/// Every binary calls this first. Later layers add their steps here, in
/// dependency order, so every binary gets them.
pub fn init(boot_info: &'static mut BootInfo) {
    // 1. The console first, so anything after can report.
    let uart_ok = console::init();
    logger::init();
    if !uart_ok {
        log::warn!("COM1 failed the 16550 presence check: writing raw bytes");
    }
    // 2. CPU tables: exceptions are reportable from here on.
    gdt::init_boot_cpu();
    interrupts::load_idt();
    hw::mask_legacy_pic();
    // 3. Remember the boot information for the platform layer.
    let boot_info: &'static BootInfo = boot_info;
    BOOT_INFO.call_once(|| boot_info);
    log_memory(boot_info);
    // 4. The platform layer: frames, heap and physical memory access; the
    //    clock and the tick; all CPUs; threads (this code becomes the boot
    //    CPU's `boot` thread).
    let Some(offset) = boot_info.physical_memory_offset.into_option() else {
        panic!("the loader did not map physical memory");
    };
    mem::init(&boot_info.memory_regions, offset);
    time::init();
    smp::init(
        boot_info.rsdp_addr.into_option(),
        smp::ApEntry {
            init: || sched::init_this_cpu(true),
            main: sched::idle_loop,
        },
    );
    sched::init_this_cpu(false);
    x86_64::instructions::interrupts::enable();
}

/// Logs the memory map summary.
fn log_memory(boot_info: &BootInfo) {
    let usable_bytes: u64 = boot_info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| r.end - r.start)
        .sum();
    let offset = boot_info.physical_memory_offset.into_option();
    match offset {
        Some(offset) => log::info!(
            "memory: {} MiB usable in {} regions, physical memory mapped at {offset:#x}",
            usable_bytes >> 20,
            boot_info.memory_regions.len()
        ),
        None => log::warn!("memory: the loader did not map physical memory"),
    }
}

/// Where the boot path ends: the boot thread blocks for good and the
/// scheduler keeps every CPU running its threads.
pub fn idle() -> ! {
    log::info!("boot path done: the CPUs keep running their threads (quit QEMU with Ctrl-A X)");
    // Block the boot thread for good: the boot CPU goes on running its other
    // threads (guest vCPUs, the aging thread) and halts in its idle thread.
    loop {
        sched::park();
    }
}
