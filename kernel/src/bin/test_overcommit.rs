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

extern crate alloc;

use alloc::vec::Vec;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use kernel::aging::{self, Managed};
use kernel::reclaim;
use kernel::svm::Svm;
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
    name: "overcommit",
    cases: &[TestCase {
        name: "twice_the_host_memory_all_finish_intact",
        run: all_finish,
    }],
};

/// The checksum guest's sparse-data flag (docs/guests.md).
const SPARSE: u64 = 1 << 32;

fn all_finish() {
    let ram = over_host_bytes();
    let names = ["oc-a", "oc-b"];
    let host = host_bytes();
    let free0 = kernel::mem::frame_stats().free_frames;
    let pauses0 = reclaim::PAUSES.load(Ordering::Relaxed);
    let freed0 = reclaim::FRAMES_FREED.load(Ordering::Relaxed);
    let taken0 = reclaim::FRAMES_TAKEN.load(Ordering::Relaxed);
    kernel::reclaim::timing::reset();
    let vms: Vec<_> = names.iter().map(|&n| new_vm(n, ram, 1 | SPARSE)).collect();
    let ms: Vec<Managed<Svm>> = vms.iter().map(|vm| Managed::new(vm, None)).collect();
    let t0 = kernel::time::now_ns();
    let ager = spawn_aging(&ms);
    let vcpus: Vec<_> = vms
        .iter()
        .enumerate()
        .map(|(i, vm)| spawn_vcpu(i, vm))
        .collect();
    for v in vcpus {
        v.join();
    }
    aging::stop();
    ager.join();
    let run_ms = (kernel::time::now_ns() - t0) / 1_000_000;
    kernel::reclaim::timing::print("overcommit");
    let total = ram * vms.len() as u64;
    kernel::println!(
        "overcommit: {} VMs x {} MiB = {} MiB of guest RAM on a host of {} MiB ({} MiB free at the start), done in {run_ms} ms, {} pauses",
        vms.len(),
        ram / MIB,
        total / MIB,
        host / MIB,
        free0 * 4096 / MIB,
        reclaim::PAUSES.load(Ordering::Relaxed) - pauses0
    );
    let mut reclaimed = 0;
    for (vm, m) in vms.iter().zip(&ms) {
        print_vm(vm, m);
        reclaimed += m.mm.lock().rec.stats().reclaimed_total;
    }
    assert!(total >= 2 * host, "the guests overcommit the host twice");
    for vm in &vms {
        assert_eq!(
            vm.stop_reason(),
            Some(StopReason::Exited(0)),
            "{}",
            vm.name()
        );
        assert_eq!(
            vm.checksum_result(),
            Some((data_pages(ram), 0)),
            "{}: nothing lost",
            vm.name()
        );
        // The frame map survived thousands of reclaims and fault-ins.
        vm.memory
            .check_isolation()
            .unwrap_or_else(|e| panic!("{}: {e}", vm.name()));
    }
    // Every data page was written: the host could hold at most its free
    // frames of them, so pressure reclaimed at least the rest.
    let written = data_pages(ram) * vms.len() as u64;
    assert!(
        reclaimed >= written - free0,
        "host pressure drove reclaim: {reclaimed} pages reclaimed for {written} written on {free0} free frames"
    );
    // Every frame the reclaimers count as freed went back to the frame
    // allocator, and every fault-in took one from it.
    let (mut freed, mut taken) = (0, 0);
    for m in &ms {
        let s = m.mm.lock().rec.stats();
        freed += s.frames_freed;
        taken += s.frames_taken;
    }
    assert_eq!(
        reclaim::FRAMES_FREED.load(Ordering::Relaxed) - freed0,
        freed,
        "frames given back to the allocator"
    );
    assert_eq!(
        reclaim::FRAMES_TAKEN.load(Ordering::Relaxed) - taken0,
        taken,
        "frames taken from the allocator for fault-ins"
    );
    for m in &ms {
        let mm = m.mm.lock();
        let s = mm.rec.stats();
        // Frame accounting: every frame reclaim freed is either back in a
        // fault-in or stands for a page kept in the store.
        assert_eq!(s.frames_freed - s.frames_taken, s.reclaimed_pages);
        assert_eq!(
            mm.rec.store_stats().pages(),
            s.reclaimed_pages + mm.rec.clean_copies()
        );
    }
    assert_eq!(reclaim::PAUSED_NOW.load(Ordering::Relaxed), 0);
}
