//! Scenario `ap_exception`: an exception on an application processor is
//! reported like one on the boot CPU (the same `[exception]` report, naming
//! the CPU) and ends the run with the failure code. Booted with `-smp 2` by
//! `tests/tests/platform.rs`, which expects exactly that failure.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::smp;
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "ap_exception",
    cases: &[
        TestCase {
            name: "second_cpu_is_online",
            run: second_cpu_is_online,
        },
        TestCase {
            name: "invalid_opcode_on_cpu1",
            run: invalid_opcode_on_cpu1,
        },
    ],
};

fn second_cpu_is_online() {
    assert!(smp::is_online(1), "this scenario needs -smp 2 or more");
}

fn invalid_opcode_on_cpu1() {
    smp::run_on(1, &|| {
        // SAFETY: UD2 raises #UD on purpose; the report ends the run.
        unsafe { core::arch::asm!("ud2") };
    });
    panic!("the #UD on cpu1 was not reported");
}
