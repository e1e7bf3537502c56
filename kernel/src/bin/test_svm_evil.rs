//! Scenario `svm_evil`: every `evil` guest scenario on the SVM backend.
//! The hypervisor survives each, prints one line naming the VM, what and
//! where, and stops or continues the VM as `crate::vm` documents; the
//! endless loop is preempted by the timer while another VM runs to
//! completion on another CPU.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use hvcore::exit::AccessKind;
use kernel::svm::Svm;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, StopReason, Vm, VmConfig, images};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "svm_evil",
    cases: &[
        TestCase {
            name: "read_outside_ram_stops_the_vm",
            run: read_outside_ram,
        },
        TestCase {
            name: "write_far_outside_ram_stops_the_vm",
            run: write_outside_ram,
        },
        TestCase {
            name: "unemulated_ports_read_all_ones",
            run: ports,
        },
        TestCase {
            name: "unknown_msrs_get_gp",
            run: msrs,
        },
        TestCase {
            name: "vmx_and_svm_instructions_get_ud",
            run: virt_instructions,
        },
        TestCase {
            name: "triple_fault_stops_the_vm",
            run: triple_fault,
        },
        TestCase {
            name: "bad_hypercalls_get_errors",
            run: bad_hypercalls,
        },
        TestCase {
            name: "xmm_state_stays_in_its_vm",
            run: fpu_isolation,
        },
        TestCase {
            name: "osxsave_and_xsetbv_are_refused",
            run: xsave_refused,
        },
        TestCase {
            name: "endless_loop_is_preempted_while_another_vm_runs",
            run: kernel::testing::evil::endless_loop::<Svm>,
        },
    ],
};

const RAM: u64 = 8 << 20;

fn evil(scenario: u64, address: u64) -> Arc<Vm<Svm>> {
    Vm::new(
        VmConfig {
            name: "evil",
            image: images::EVIL.bytes,
            ram_bytes: RAM,
            huge_pages: true,
            boot_arg: scenario | (address << 8),
        },
        None,
    )
    .expect("VM")
}

fn run(vm: &Arc<Vm<Svm>>) -> StopReason {
    vm::run_on_this_cpu(vm)
}

fn reports(vm: &Vm<Svm>) -> u64 {
    vm.stats.reports.load(Ordering::Relaxed)
}

fn read_outside_ram() {
    let vm = evil(1, 0);
    match run(&vm) {
        StopReason::OutsideRam { gpa, access, .. } => {
            assert_eq!(gpa, RAM + 0x1000);
            assert_eq!(access, AccessKind::Read);
        }
        other => panic!("expected a stop outside RAM, got {other:?}"),
    }
    vm.memory.check_isolation().expect("isolation");
}

fn write_outside_ram() {
    // 256 GiB: mapped by the guest's 1 GiB pages, far past its RAM.
    let far = 256 << 30;
    let vm = evil(2, far);
    match run(&vm) {
        StopReason::OutsideRam { gpa, access, .. } => {
            assert_eq!(gpa, far);
            assert_eq!(access, AccessKind::Write);
        }
        other => panic!("expected a stop outside RAM, got {other:?}"),
    }
    vm.memory.check_isolation().expect("isolation");
}

fn ports() {
    let vm = evil(3, 0);
    assert_eq!(run(&vm), StopReason::Exited(0));
    // Five ports, each read twice and written once: one line per port,
    // and the bus counts every access.
    assert_eq!(reports(&vm), 5);
    let counts = vm.unclaimed_accesses();
    assert_eq!((counts.reads, counts.writes), (10, 5), "{counts:?}");
}

fn msrs() {
    let vm = evil(4, 0);
    assert_eq!(run(&vm), StopReason::Exited(0));
    // Four unknown MSRs read and written, one EFER write setting SVME: one
    // line per MSR (the guest itself checks it took all nine #GPs).
    assert_eq!(reports(&vm), 5);
}

fn virt_instructions() {
    let vm = evil(5, 0);
    assert_eq!(run(&vm), StopReason::Exited(0));
    assert_eq!(reports(&vm), 12, "one line per instruction");
}

fn triple_fault() {
    let vm = evil(6, 0);
    assert!(matches!(run(&vm), StopReason::TripleFault { .. }));
}

fn bad_hypercalls() {
    let vm = evil(8, 0);
    assert_eq!(run(&vm), StopReason::Exited(0));
    assert_eq!(reports(&vm), 6);
}

fn fpu_isolation() {
    let writer = evil(9, 0);
    assert_eq!(run(&writer), StopReason::Exited(0));
    // Same CPU, next VM: XMM0 must be its own (zero), not the secret.
    let reader = evil(10, 0);
    assert_eq!(
        run(&reader),
        StopReason::Exited(0),
        "XMM0 leaked between VMs"
    );
}

fn xsave_refused() {
    let vm = evil(11, 0);
    assert_eq!(run(&vm), StopReason::Exited(0));
    assert!(reports(&vm) >= 2, "CR4 write and XSETBV (#UD) reported");
}
