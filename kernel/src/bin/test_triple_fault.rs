//! Scenario `triple_fault`: loads an empty IDT and executes INT3, so the CPU
//! cannot deliver the exception and shuts down. With `--no-reboot` QEMU exits
//! with status 0, neither the pass nor the fail code: the runner's self-test
//! requires this to be reported as a crash with the console tail.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::testing::{Scenario, TestCase, run_scenario};
use x86_64::VirtAddr;
use x86_64::structures::DescriptorTablePointer;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "triple_fault",
    cases: &[TestCase {
        name: "empty_idt_then_int3",
        run: triple_fault,
    }],
};

fn triple_fault() {
    let empty = DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::zero(),
    };
    // SAFETY: not sound on purpose: with no IDT, INT3 escalates to a triple
    // fault, which resets (here: stops) the machine. Nothing runs after it.
    unsafe { x86_64::instructions::tables::lidt(&empty) };
    x86_64::instructions::interrupts::int3();
}
