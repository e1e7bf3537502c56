//! Scenario `hang`: halts forever with interrupts off and never exits. The
//! runner's self-test requires a timeout, QEMU killed, and the console tail.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "hang",
    cases: &[TestCase {
        name: "halts_forever",
        run: || kernel::hw::halt_forever(),
    }],
};
