//! Scenario `overcommit` (issue 7, item 5): guests whose memory adds up to
//! twice the host's and more, on the SVM backend, booted by
//! `tests/tests/aging/overcommit.rs` in QEMU TCG with a small `-m` (32M:
//! overcommit is relative, and a small host keeps the scenario short) and
//! `-smp 3`. No VM has a reclaim target: reclaim is driven by host memory
//! pressure alone (`kernel::aging`: below `reclaim::WATERMARKS.low_frames`
//! free frames, the coldest pages of any VM go first, up to the high mark),
//! and a fault that finds no free frame pauses its VM in
//! `reclaim::wait_for_memory` with the documented message
//! (docs/ARCHITECTURE.md, "Overcommit") until memory comes back.
//!
//! Case `twice_the_host_memory_all_finish_intact`: two `checksum` VMs of
//! (host frames + 8 MiB) each, sparse data (compressible, as idle memory
//! mostly is), run at once: both finish with zero mismatches, host pressure
//! reclaimed at least the pages the host could not hold, the reclaimers'
//! frame counters balance and each VM's tables still map exactly the
//! frames it owns. The VMs' memory stays allocated after they stop, so the
//! case where the hot sets exceed the host boots on its own
//! (`test_overcommit_pause`).
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::svm::Svm;
use kernel::testing::overcommit::all_finish;
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "overcommit",
    cases: &[TestCase {
        name: "twice_the_host_memory_all_finish_intact",
        run: all_finish::<Svm>,
    }],
};
