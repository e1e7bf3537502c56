//! Scenario `double_fault`: unbounded recursion overflows the kernel stack
//! into the loader's guard page. Pushing the #PF frame then faults too, so the
//! CPU raises #DF, which only a separate IST stack can handle. The harness
//! expects the #DF report and the failure exit (no triple fault).
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
    name: "double_fault",
    cases: &[TestCase {
        name: "stack_overflow",
        run: overflow_entry,
    }],
};

fn overflow_entry() {
    core::hint::black_box(overflow(1));
}

#[expect(unconditional_recursion, reason = "overflowing the stack is the point")]
fn overflow(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    overflow(frame[0] + 1) + frame[63]
}
