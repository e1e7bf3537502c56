//! Scenario `vmx_aging` (full-system Bochs, two CPUs, a timer): the aging
//! thread and the reclaimer of issue 7 with guests on the VMX backend
//! (EPT). The aging thread on CPU 0 races the guest's vCPU on CPU 1, as on
//! SVM: the cases are `test_aging`'s, shared in `kernel::testing::aging`.
//! * accuracy: the `pattern` guest's ground truth (pages touched per
//!   interval) against the hot set the passes found; precision and recall
//!   printed, at least 99 %;
//! * nothing lost: the `checksum` guest fills, rewrites and verifies its
//!   memory while passes and reclaim run on the other CPU (the EPT
//!   accessed bits cleared under a running guest, pages taken and faulted
//!   back through EPT violations): zero mismatches;
//! * memory comes back: after a reclaim the free-frame count rises by the
//!   frames the reclaimer gave back (heap growth for the store accounted);
//!   128 pages of one 2 MiB page here, where every page costs emulated
//!   time (all of a 16 MiB VM on SVM).
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::testing::aging::{accuracy, memory_comes_back, nothing_lost};
use kernel::testing::guests::MIB;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vmx::vcpu::Vmx;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    assert!(
        kernel::time::has_timer() && kernel::smp::cpu_count() >= 2,
        "vmx_aging races the aging thread against a guest: it needs a timer and two CPUs"
    );
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "vmx_aging",
    cases: &[
        TestCase {
            name: "hot_and_cold_sets_match_the_pattern_guest",
            run: accuracy::<Vmx>,
        },
        TestCase {
            name: "nothing_lost",
            run: nothing_lost::<Vmx>,
        },
        TestCase {
            name: "reclaimed_frames_come_back_to_the_host",
            run: || {
                // Data in one 2 MiB page, 128 pages reclaimed (one huge page
                // split for them; more would only cost emulated time).
                memory_comes_back::<Vmx>(6 * MIB, 128)
            },
        },
    ],
};
