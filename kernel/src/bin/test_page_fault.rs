//! Scenario `page_fault`: a write to an unmapped address. The harness expects
//! a readable #PF report (vector, decoded error code, RIP, CR2, registers),
//! the case reported as FAILED, and the failure exit.
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
    name: "page_fault",
    cases: &[TestCase {
        name: "write_to_unmapped_address",
        run: write_unmapped,
    }],
};

/// Canonical, in the lower half, and far from anything the loader maps.
const UNMAPPED: u64 = 0x0000_0dea_dbee_f000;

fn write_unmapped() {
    let ptr = UNMAPPED as *mut u64;
    // SAFETY: not sound on purpose: nothing is mapped at UNMAPPED, so the
    // write raises #PF before touching memory, and the fatal report ends the run.
    unsafe { ptr.write_volatile(0x5eed) };
}
