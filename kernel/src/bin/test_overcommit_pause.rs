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

extern crate alloc;

use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use kernel::aging::{self, Managed};
use kernel::reclaim;
use kernel::testing::overcommit::{
    MIB, data_pages, host_bytes, new_vm, over_host_bytes, print_vm, spawn_aging, spawn_vcpu,
};
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::StopReason;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "overcommit_pause",
    cases: &[TestCase {
        name: "hot_sets_over_the_host_pause_one_vm",
        run: hot_sets_exceed,
    }],
};

/// Waits until `done()` or `limit_ms` passed; whether `done()`.
fn wait_until(limit_ms: u64, done: impl Fn() -> bool) -> bool {
    let t0 = kernel::time::now_ns();
    while !done() {
        if kernel::time::now_ns() - t0 > limit_ms * 1_000_000 {
            return false;
        }
        kernel::time::sleep_ms(5);
    }
    true
}

fn hot_sets_exceed() {
    let small_ram = 8 * MIB;
    let big_ram = over_host_bytes();
    let host = host_bytes();
    let pauses0 = reclaim::PAUSES.load(Ordering::Relaxed);
    kernel::reclaim::timing::reset();
    let small = new_vm("small", small_ram, 6);
    let big = new_vm("big", big_ram, 1);
    let ms = [Managed::new(&small, None), Managed::new(&big, None)];
    let ager = spawn_aging(&ms);
    // The small VM first, so its memory is its own before the big one
    // takes the rest.
    let v_small = spawn_vcpu(0, &small);
    assert!(
        wait_until(30_000, || small.memory.resident().0
            >= data_pages(small_ram)
            || small.stop_reason().is_some()),
        "the small VM filled its memory"
    );
    let v_big = spawn_vcpu(1, &big);
    v_small.join();
    // The big VM runs out: it is paused, and stays paused with nothing
    // left to reclaim.
    let paused = wait_until(30_000, || {
        reclaim::PAUSED_NOW.load(Ordering::Acquire) >= 1 || big.stop_reason().is_some()
    });
    kernel::time::sleep_ms(500);
    let still_paused =
        paused && reclaim::PAUSED_NOW.load(Ordering::Acquire) >= 1 && big.stop_reason().is_none();
    kernel::println!(
        "overcommit: a {} MiB VM beside an {} MiB one, both of incompressible data, on a host of {} MiB: the small VM stopped ({}); the big VM is {}",
        big_ram / MIB,
        small_ram / MIB,
        host / MIB,
        small.stop_reason().expect("joined"),
        if still_paused {
            "still paused for memory at the end: stopping it"
        } else {
            "NOT paused"
        }
    );
    big.request_stop();
    v_big.join();
    aging::stop();
    ager.join();
    kernel::reclaim::timing::print("overcommit");
    print_vm(&small, &ms[0]);
    print_vm(&big, &ms[1]);
    assert!(big_ram > host, "the big VM alone exceeds the host");
    assert_eq!(
        small.stop_reason(),
        Some(StopReason::Exited(0)),
        "the small VM finishes"
    );
    assert_eq!(small.checksum_result(), Some((data_pages(small_ram), 0)));
    assert!(
        still_paused,
        "the big VM waits, paused, while memory is short"
    );
    assert!(reclaim::PAUSES.load(Ordering::Relaxed) > pauses0);
    assert!(
        matches!(big.stop_reason(), Some(StopReason::OutOfMemory { .. })),
        "the big VM, stopped while paused: {:?}",
        big.stop_reason()
    );
    assert_eq!(reclaim::PAUSED_NOW.load(Ordering::Relaxed), 0);
    small.memory.check_isolation().expect("small VM isolation");
    big.memory.check_isolation().expect("big VM isolation");
}
