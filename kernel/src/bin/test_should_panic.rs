//! Scenario `should_panic`: a case panics on purpose. The harness expects the
//! failure exit, the `[panic]` line with this file's location and message,
//! and the case reported as FAILED after one passing case.
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
    name: "should_panic",
    cases: &[
        TestCase {
            name: "before_the_panic",
            run: || {},
        },
        TestCase {
            name: "panics_on_purpose",
            run: panics,
        },
        TestCase {
            name: "never_reached",
            run: || {},
        },
    ],
};

fn panics() {
    panic!("deliberate panic: the harness expects this message");
}
