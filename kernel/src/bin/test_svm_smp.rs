//! Scenario `svm_smp`: VMs on several CPUs at once. One vCPU thread per VM,
//! pinned to its own CPU; every VM runs the `checksum` guest to completion
//! with no mismatch, and the NPT isolation check holds for each.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::svm::Svm;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, StopReason, Vm, VmConfig, images};
use kernel::{sched, smp};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::println!("[svm_smp] cpus={}", smp::cpu_count());
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "svm_smp",
    cases: &[TestCase {
        name: "one_vm_per_cpu_at_once",
        run: one_vm_per_cpu,
    }],
};

/// VM names, one per CPU, so console lines say which VM speaks.
const NAMES: [&str; 8] = [
    "cpu0", "cpu1", "cpu2", "cpu3", "cpu4", "cpu5", "cpu6", "cpu7",
];

fn one_vm_per_cpu() {
    let cpus = smp::cpu_count();
    assert!(cpus >= 2, "run this scenario with -smp 2 or more");
    // Every vCPU thread waits here until all have started, so the VMs are
    // released together rather than whenever TCG happens to schedule each
    // host thread (an overlap count without it depended on host load).
    let started = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    let mut vms = Vec::new();
    for cpu in 0..cpus {
        let vm: Arc<Vm<Svm>> = Vm::new(
            VmConfig {
                name: NAMES[cpu % NAMES.len()],
                image: images::CHECKSUM.bytes,
                ram_bytes: 24 << 20,
                huge_pages: cpu % 2 == 0,
                boot_arg: 2,
            },
            None,
        )
        .expect("VM");
        vms.push(vm.clone());
        let (started, running, most) = (started.clone(), running.clone(), most_at_once.clone());
        handles.push(sched::spawn_on(cpu, "vcpu", move || {
            assert_eq!(smp::cpu_index(), cpu);
            started.fetch_add(1, Ordering::AcqRel);
            while started.load(Ordering::Acquire) < cpus {
                sched::yield_now();
            }
            let now = running.fetch_add(1, Ordering::AcqRel) + 1;
            most.fetch_max(now, Ordering::AcqRel);
            let reason = vm::run_on_this_cpu(&vm);
            running.fetch_sub(1, Ordering::AcqRel);
            assert_eq!(reason, StopReason::Exited(0), "VM on CPU {cpu}");
        }));
    }
    for h in handles {
        h.join();
    }
    for vm in &vms {
        assert_eq!(vm.stop_reason(), Some(StopReason::Exited(0)));
        let (_, mismatches) = vm.checksum_result().expect("checksum reported");
        assert_eq!(mismatches, 0);
        vm.memory.check_isolation().expect("isolation");
    }
    let most = most_at_once.load(Ordering::Acquire);
    kernel::println!(
        "[svm_smp] {} vCPU threads released together on {cpus} CPUs",
        started.load(Ordering::Acquire)
    );
    kernel::println!("[svm_smp] {} VMs ran, at most {most} at once", vms.len());
    // How many overlap after the release still depends on how the host
    // schedules QEMU's vCPU threads; two is the least that shows VMs ran
    // concurrently on different CPUs.
    assert!(most >= 2, "VMs overlapped in time");
}
