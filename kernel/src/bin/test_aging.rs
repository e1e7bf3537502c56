//! Scenario `aging`: the aging thread and the reclaimer with guests running
//! on the SVM backend (issue 7). The aging thread runs on CPU 0, the vCPU
//! on the last CPU. The cases live in `kernel::testing::aging`, shared with
//! `test_vmx_aging` (the same checks on VMX):
//! * accuracy: the `pattern` guest's ground truth (pages touched per
//!   interval) against the hot set the aging passes found; precision and
//!   recall printed, at least 99 % each;
//! * nothing lost: the `checksum` guest rewrites and verifies its memory
//!   while aging and reclaim run concurrently: zero mismatches. It once
//!   ended in host page faults at garbage RIPs: a thread of this run needs
//!   about 70 KiB of stack in debug builds (measured with the stack
//!   high-water mark the case prints) and overflowed the 64 KiB thread
//!   stacks of the time, now 256 KiB;
//! * memory comes back: after a reclaim the free-frame count rises by the
//!   frames the reclaimer gave back (heap growth for the store accounted).
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::svm::Svm;
use kernel::testing::aging::{accuracy, memory_comes_back, nothing_lost};
use kernel::testing::guests::MIB;
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "aging",
    cases: &[
        TestCase {
            name: "hot_and_cold_sets_match_the_pattern_guest",
            run: accuracy::<Svm>,
        },
        TestCase {
            name: "nothing_lost",
            run: nothing_lost::<Svm>,
        },
        TestCase {
            name: "reclaimed_frames_come_back_to_the_host",
            run: || {
                // Everything not young in the last of two passes.
                memory_comes_back::<Svm>(16 * MIB, u64::MAX)
            },
        },
    ],
};
