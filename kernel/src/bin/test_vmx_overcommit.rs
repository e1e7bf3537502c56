//! Scenario `vmx_overcommit` (full-system Bochs, 32 MiB, two CPUs): the
//! case of `test_overcommit` on the VMX backend (shared in
//! `kernel::testing::overcommit`): two `checksum` VMs of more than the host
//! each run at once, reclaim driven by host pressure alone; a fault that
//! finds no free frame pauses its VM until reclaim brings memory back, and
//! it resumes. Both finish with zero mismatches, the frame counters balance
//! and each VM's EPT tables map exactly the frames it owns.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::testing::overcommit::all_finish;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vmx::vcpu::Vmx;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "vmx_overcommit",
    cases: &[TestCase {
        name: "twice_the_host_memory_all_finish_intact",
        run: all_finish::<Vmx>,
    }],
};
