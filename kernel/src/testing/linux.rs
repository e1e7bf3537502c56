//! The Linux case both backends run: `test_linux` (SVM, QEMU) and
//! `test_linux_vmx` (VMX, full-system Bochs) boot the bundle in the loader's
//! ramdisk and let the test init run to its end.

use crate::launch::{self, LINUX_RAM_BYTES};
use crate::vm::{self, Extension, StopReason};
use core::sync::atomic::{AtomicU64, Ordering};

/// Boots the bundle's Linux on this CPU until it stops, prints the VM's
/// exit, halt and injection counts, and checks that timer interrupts
/// reached the guest and that the test init ended with status 0 through
/// the exit device.
pub fn boots_and_exits<E: Extension>() {
    let vm = launch::new_linux_vm::<E>("linux", LINUX_RAM_BYTES).expect("Linux VM");
    let start_ns = vm::now_ns();
    let reason = vm::run_on_this_cpu(&vm);
    let ms = (vm::now_ns() - start_ns) / 1_000_000;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    crate::println!(
        "linux: VM stopped after {ms} ms: {reason}; {} exits, {} halts, {} interrupts injected, {} interrupt-window exits",
        n(&vm.stats.exits),
        n(&vm.stats.halts),
        n(&vm.stats.interrupts_injected),
        n(&vm.stats.window_exits)
    );
    assert!(
        n(&vm.stats.interrupts_injected) > 0,
        "the timer reached the guest"
    );
    assert_eq!(reason, StopReason::Exited(0), "the test init's status");
}
