//! Scenario `vmx_vcpus` (the Bochs bed: one CPU, no timer, cooperative
//! threads): VMs with several vCPUs on the VMX backend, through the same
//! `vm` code as `test_svm_vcpus` on SVM. The `smp` guest's 4-vCPU workout
//! runs to completion with every vCPU's thread on the one CPU (they take
//! turns where a vCPU waits in HLT: no timer preempts a running one), with
//! EPT A/D bits set on exactly the pages the vCPUs touched; HLT with nothing
//! to wake it stops the VM; a host stop wakes halted vCPUs; bad string I/O
//! stops the VM; a long REP OUTSB runs in batches.
//!
//! Not here (they need a second CPU or a timer: a vCPU spinning in the
//! guest without exits never gives the one CPU back): `EXIT` or a fault on
//! one vCPU while another spins, and the flush-reaches-every-vCPU case.
//!
//! HLT without a wake-up, every vCPU halted, bad string I/O and the long
//! REP OUTSB are written once in `kernel::testing::smp::cases` and run by
//! `test_svm_vcpus` too.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use hvcore::cpu_features::Backend;
use kernel::testing::smp::{REGION_PAGES, cases, prepare_regions, region_ad_mismatches};
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, StopReason, Vm};
use kernel::vmx::vcpu::Vmx;
use kernel::{sched, time};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "vmx_vcpus",
    cases: &[
        TestCase {
            name: "four_vcpus_take_turns_on_one_cpu",
            run: four_vcpus,
        },
        TestCase {
            name: "hlt_with_nothing_to_wake_stops_the_vm",
            run: cases::hlt_without_wakeup::<Vmx>,
        },
        TestCase {
            name: "every_vcpu_halted_with_nothing_to_wake_stops_the_vm",
            run: cases::all_halted::<Vmx>,
        },
        TestCase {
            name: "host_stop_wakes_halted_vcpus",
            run: stop_wakes_halted,
        },
        TestCase {
            name: "bad_string_io_stops_the_vm",
            run: cases::bad_string_io::<Vmx>,
        },
        TestCase {
            name: "long_rep_outs_runs_in_batches",
            run: cases::long_rep_outs::<Vmx>,
        },
    ],
};

fn smp_vm(mode: u64, vcpus: u32) -> Arc<Vm<Vmx>> {
    assert_eq!(
        kernel::launch::backend(),
        Some(Backend::Vmx),
        "the bed offers VMX"
    );
    kernel::testing::smp::smp_vm(mode, vcpus)
}

fn four_vcpus() {
    let vm = smp_vm(0, 4);
    prepare_regions(&*vm);
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    assert_eq!(vm.running_vcpus(), 0);
    let mismatched = region_ad_mismatches(&*vm, "vmx_vcpus");
    kernel::println!(
        "[vmx_vcpus] A/D check: 8 regions x {REGION_PAGES} pages, {mismatched} mismatched; {} HLTs waited, {} string I/O elements",
        vm.stats.halts.load(Ordering::Relaxed),
        vm.stats.string_io_elements.load(Ordering::Relaxed)
    );
    assert_eq!(mismatched, 0);
    assert!(vm.stats.halts.load(Ordering::Relaxed) >= 2);
    vm.memory.check_isolation().expect("isolation");
}

fn stop_wakes_halted() {
    let vm = smp_vm(2, 2);
    let boot = {
        let vm = vm.clone();
        sched::spawn_on(0, "vcpu0", move || {
            vm::run_on_this_cpu(&vm);
        })
    };
    // Cooperative: this thread sleeps, the vCPUs run until both halt.
    while vm.running_vcpus() < 2 {
        time::sleep_ms(1);
    }
    time::sleep_ms(50);
    assert_eq!(vm.stop_reason(), None, "both vCPUs wait in HLT");
    vm.request_stop();
    boot.join();
    assert_eq!(vm.stop_reason(), Some(StopReason::Killed));
}
