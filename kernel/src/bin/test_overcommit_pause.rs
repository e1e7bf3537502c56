//! Scenario `overcommit_pause` (issue 7, item 5): the hot sets of the VMs
//! alone exceed the host. Booted by `tests/tests/aging/overcommit.rs` in
//! QEMU TCG `-m 32M -smp 3`, on the SVM backend, with reclaim driven by
//! host memory pressure alone (see `test_overcommit`).
//!
//! Case `hot_sets_over_the_host_pause_one_vm`: a small `checksum` VM fills
//! its memory, then a big one larger than the host starts; both hold dense
//! data (a hash in every word: it does not compress, and the pressure
//! reclaimer leaves such pages resident, since a raw copy would cost the
//! heap the frame it frees), so their memory cannot shrink. The big VM is
//! paused with the documented message (docs/ARCHITECTURE.md,
//! "Overcommit"), the small one finishes intact, and the big one is
//! reported still paused at the end: the small VM's memory stays allocated
//! after it exits (test VMs are never torn down), so nothing frees memory
//! for it. The scenario then stops it (`OutOfMemory`, after the line
//! `vm big: stopped while paused for memory`). The hypervisor does not
//! panic.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::svm::Svm;
use kernel::testing::overcommit::hot_sets_exceed;
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "overcommit_pause",
    cases: &[TestCase {
        name: "hot_sets_over_the_host_pause_one_vm",
        run: hot_sets_exceed::<Svm>,
    }],
};
