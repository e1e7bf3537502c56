//! The `evil` guest's case that needs a timer, generic over the
//! extension: `test_svm_evil` (QEMU) and `test_vmx_guests` (full-system
//! Bochs) run it. Scenario 7 loops forever without an exit: only host
//! interrupts (external-interrupt exiting on VMX, the INTR intercept on SVM)
//! take its CPU back, while another VM runs to completion.

use crate::vm::{self, Extension, StopReason, Vm, VmConfig, images};
use crate::{smp, time};
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

/// RAM of the scenario's VMs.
const RAM: u64 = 8 << 20;

/// Case `endless_loop_is_preempted_while_another_vm_runs`.
pub fn endless_loop<E: Extension>() {
    let cpus = smp::cpu_count();
    assert!(time::has_timer(), "the bed gives a timer");
    let config = |name, image: images::Image, boot_arg| VmConfig {
        name,
        image: image.bytes,
        ram_bytes: RAM,
        huge_pages: true,
        boot_arg,
    };
    let looping: Arc<Vm<E>> = Vm::new(config("evil", images::EVIL, 7), None).expect("VM");
    // On one CPU the loop shares it with this thread: preemption is what
    // lets the test go on at all.
    let spinner = vm::spawn_on(cpus - 1, looping.clone());
    // Another VM runs to completion meanwhile (on CPU 0).
    let hello = Vm::<E>::new(config("hello", images::HELLO, 0), None).expect("VM");
    assert_eq!(vm::run_on_this_cpu(&hello), StopReason::Exited(0));
    time::sleep_ms(200);
    let exits = looping.stats.exits.load(Ordering::Relaxed);
    crate::println!("endless loop: {exits} exits (host interrupts) in the first 200 ms");
    assert!(exits > 0, "the timer must take the CPU back from the guest");
    assert_eq!(looping.stop_reason(), None, "still looping");
    looping.request_stop();
    spinner.join();
    assert_eq!(looping.stop_reason(), Some(StopReason::Killed));
}
