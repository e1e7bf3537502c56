//! Scenario `svm_vcpus`: VMs with several vCPUs on the SVM backend (the
//! `smp` guest, docs/guests.md). The cases are `kernel::testing::vcpus`,
//! shared with `test_vmx_vcpus`: a 4-vCPU VM runs its workout while another
//! VM runs, NPT A/D bits exact, a flush request reaches every vCPU, reclaim
//! under a resident limit with four vCPUs faulting, HLT waits and wakes,
//! EXIT or a fault on any vCPU stops the VM, bad string I/O. Run with
//! `-smp 4`.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::svm::Svm;
use kernel::testing::{Scenario, run_scenario, vcpus};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::println!("[svm_vcpus] cpus={}", kernel::smp::cpu_count());
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "svm_vcpus",
    cases: &vcpus::cases::<Svm>(),
};
