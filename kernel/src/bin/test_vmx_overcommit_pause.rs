//! Scenario `vmx_overcommit_pause` (full-system Bochs, 32 MiB, two CPUs):
//! the case of `test_overcommit_pause` on the VMX backend (shared in
//! `kernel::testing::overcommit`): the hot sets of two VMs alone exceed the
//! host, the big VM is paused with the documented message while the small
//! one finishes intact, and is stopped while still paused at the end.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::testing::overcommit::hot_sets_exceed_emulated;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vmx::vcpu::Vmx;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "vmx_overcommit_pause",
    cases: &[TestCase {
        name: "hot_sets_over_the_host_pause_one_vm",
        run: hot_sets_exceed_emulated::<Vmx>,
    }],
};
