//! Scenario `runner_selftest_fail`: a kernel whose second case fails an
//! assertion. The harness's self-test requires the runner to report it as
//! failed, naming the case; a runner that called this a pass would be broken.
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
    name: "runner_selftest_fail",
    cases: &[
        TestCase {
            name: "passes",
            run: || {},
        },
        TestCase {
            name: "fails_an_assertion",
            run: fails,
        },
    ],
};

fn fails() {
    let two = core::hint::black_box(2);
    assert_eq!(two + two, 5, "this kernel fails on purpose");
}
