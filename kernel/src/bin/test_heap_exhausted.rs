//! Scenario `heap_exhausted`: a heap request the heap cannot serve ends in a
//! clear panic that names the size, not in a null pointer or corruption.
//! `tests/tests/platform.rs` expects the failure and checks the message.
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::{BootInfo, entry_point};
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "heap_exhausted",
    cases: &[
        TestCase {
            name: "small_allocations_work",
            run: small_allocations_work,
        },
        TestCase {
            name: "oversized_allocation_panics_with_sizes",
            run: oversized_allocation,
        },
    ],
};

fn small_allocations_work() {
    let v: alloc::vec::Vec<u32> = (0..1000).collect();
    assert_eq!(v.iter().sum::<u32>(), 499_500);
}

fn oversized_allocation() {
    // 3 MiB: more than one 2 MiB heap span can hold.
    let v = alloc::vec![1u8; 3 << 20];
    panic!(
        "a 3 MiB allocation unexpectedly succeeded ({} bytes)",
        v.len()
    );
}
