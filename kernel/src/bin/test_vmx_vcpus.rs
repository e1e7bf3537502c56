//! Scenario `vmx_vcpus` (full-system Bochs, two CPUs, a timer): VMs with
//! several vCPUs on the VMX backend, the cases of `test_svm_vcpus` shared in
//! `kernel::testing::vcpus`: a 4-vCPU VM runs its workout while another VM
//! runs, EPT A/D bits exact, a flush request reaches every vCPU spinning in
//! the guest, reclaim under a resident limit with four vCPUs faulting, HLT
//! waits and wakes, EXIT or a fault on any vCPU stops the VM while another
//! spins, bad string I/O, a long REP OUTSB in batches.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use hvcore::cpu_features::Backend;
use kernel::testing::{Scenario, run_scenario, vcpus};
use kernel::vmx::vcpu::Vmx;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::println!("[vmx_vcpus] cpus={}", kernel::smp::cpu_count());
    assert_eq!(
        kernel::launch::backend(),
        Some(Backend::Vmx),
        "the bed offers VMX"
    );
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "vmx_vcpus",
    cases: &vcpus::cases::<Vmx>(),
};
