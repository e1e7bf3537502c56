//! Scenario `overcommit`: guests whose memory adds up to about twice the
//! host's (QEMU `-m 64M`, set by `tests/tests/overcommit`) on the SVM
//! backend (issue 7, item 5). No VM has a reclaim target: reclaim is driven
//! by host memory pressure alone (`kernel::aging`: below
//! `reclaim::LOW_FREE_FRAMES` free frames, the coldest pages of any VM go
//! first), and a fault that finds no free frame pauses its VM in
//! `reclaim::wait_for_memory` with the documented message.
//! * all finish: two `checksum` VMs of 56 MiB each (112 MiB of guest RAM)
//!   with sparse data (compressible, as idle memory mostly is) run at once
//!   with zero mismatches;
//! * hot sets exceed the host: a `checksum` VM with 96 MiB of dense data
//!   (a hash in every word: it does not compress, so reclaiming it frees
//!   nothing) beside a small sparse one. The big VM is paused with the
//!   documented message; the small one finishes intact; the big one either
//!   resumes and finishes, or is stopped with `OutOfMemory` after
//!   `reclaim::PAUSE_LIMIT_MS` (as designed: nothing can free memory for
//!   it); the hypervisor does not panic.
//!
//! NOT DONE, not in the QEMU suite (no test in `tests/tests` boots it):
//! under QEMU TCG (`-smp 3 -m 64M`, two 56 MiB VMs) it made progress but
//! did not finish within 120 s. The VMs pause and resume hundreds of times
//! (each resume hands them only ~70 frames) and aging passes take 150-290 ms
//! for ~4,600 pages under pressure against ~1 ms without it (measured from
//! the `TCR pass` lines); why the passes slow down is not found yet. Two
//! hypervisor panics this scenario found are fixed (see `mem::alloc_guest_frame`
//! and `reclaim::KernelFrames`). Run by hand:
//! `qemu-system-x86_64 -cpu max -accel tcg -smp 3 -m 64M -drive
//! format=raw,file=target/images/debug/test_overcommit.bios.img,snapshot=on
//! -device isa-debug-exit,iobase=0xf4,iosize=0x04 -serial stdio -display
//! none -no-reboot`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use bootloader_api::{BootInfo, entry_point};
use hvcore::guest_layout as layout;
use hvcore::npt::Npt;
use kernel::aging::{self, AgingConfig, Managed};
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, StopReason, Svm, Vm, VmConfig, images};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "overcommit",
    cases: &[
        TestCase {
            name: "twice_the_host_memory_all_finish_intact",
            run: all_finish,
        },
        TestCase {
            name: "hot_set_over_the_host_pauses_that_vm_only",
            run: hot_sets_exceed,
        },
    ],
};

const MIB: u64 = 1 << 20;
/// The checksum guest's sparse-data flag (docs/guests.md).
const SPARSE: u64 = 1 << 32;

fn new_vm(ram_bytes: u64, boot_arg: u64) -> &'static Vm<Npt> {
    let config = VmConfig {
        name: images::CHECKSUM.name,
        image: images::CHECKSUM.bytes,
        ram_bytes,
        huge_pages: false,
        boot_arg,
    };
    Box::leak(Vm::<Npt>::new(config, None).expect("VM"))
}

fn host_mib() -> u64 {
    kernel::mem::frame_stats().managed_frames * 4096 / MIB
}

/// Runs every VM on its own thread (spread over the CPUs but CPU 0) with
/// the aging thread on CPU 0 and no reclaim target; returns the stop
/// reasons and the VMs' reclaim state.
fn run_all(vms: &[&'static Vm<Npt>]) -> (Vec<StopReason>, Vec<Managed>) {
    let ms: Vec<Managed> = vms.iter().map(|vm| Managed::new(vm, None)).collect();
    let n = kernel::smp::cpu_count();
    let vcpus: Vec<_> = vms
        .iter()
        .enumerate()
        .map(|(i, &vm)| {
            // CPU 0 stays with the aging thread when there are others:
            // the reclaim that unpauses the VMs must not wait for a slice.
            let cpu = if n > 1 { 1 + i % (n - 1) } else { 0 };
            kernel::sched::spawn_on(cpu, "vcpu", move || {
                vm::run_on_this_cpu::<Svm>(vm);
            })
        })
        .collect();
    let config = AgingConfig {
        interval_ms: 10,
        detail_every: 50,
        ..AgingConfig::default()
    };
    let aging_ms = ms.clone();
    let ager = kernel::sched::spawn_on(0, "aging", move || aging::run(aging_ms, config));
    for v in vcpus {
        v.join();
    }
    aging::stop();
    ager.join();
    let reasons = vms
        .iter()
        .map(|vm| vm.stop_reason().expect("stopped"))
        .collect();
    (reasons, ms)
}

fn print_vm(i: usize, vm: &Vm<Npt>, m: &Managed, reason: &StopReason) {
    let mm = m.mm.lock();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    kernel::println!(
        "overcommit vm{i}: {reason}; checksum {:?}; reclaimed {} pages ({} zero, {} compressed, {} raw now, {} compressed bytes), {} refaults, {} store full",
        vm.checksum_result(),
        s.reclaimed_total,
        st.zero_pages,
        st.compressed_pages,
        st.raw_pages,
        st.compressed_bytes,
        s.refaults,
        s.store_full
    );
}

fn all_finish() {
    let (ram, count) = (56 * MIB, 2);
    let pages = (ram - layout::DATA_START_GPA) / 4096;
    let host = host_mib();
    let free0 = kernel::mem::frame_stats().free_frames;
    let vms: Vec<_> = (0..count).map(|_| new_vm(ram, 1 | SPARSE)).collect();
    let t0 = kernel::time::now_ns();
    let (reasons, ms) = run_all(&vms);
    let run_ms = (kernel::time::now_ns() - t0) / 1_000_000;
    kernel::println!(
        "overcommit: {count} VMs x {} MiB = {} MiB of guest RAM on a host of {host} MiB ({} MiB free at the start), done in {run_ms} ms",
        ram / MIB,
        count * ram / MIB,
        free0 * 4096 / MIB
    );
    let mut reclaimed = 0;
    for (i, vm) in vms.iter().enumerate() {
        print_vm(i, vm, &ms[i], &reasons[i]);
        reclaimed += ms[i].mm.lock().rec.stats().reclaimed_total;
    }
    assert!(
        count * ram >= 3 * host * MIB / 2,
        "the guests overcommit the host"
    );
    for (i, vm) in vms.iter().enumerate() {
        assert_eq!(reasons[i], StopReason::Exited(0), "vm{i}");
        assert_eq!(
            vm.checksum_result(),
            Some((pages, 0)),
            "vm{i}: nothing lost"
        );
    }
    assert!(
        reclaimed * 4096 >= count * ram - free0 * 4096,
        "host pressure drove reclaim of at least the overcommitted pages"
    );
}

fn hot_sets_exceed() {
    let (big, small) = (96 * MIB, 8 * MIB);
    let host = host_mib();
    // The small VM first, so it has its memory before the big one takes
    // the rest.
    let vms = [new_vm(small, 2 | SPARSE), new_vm(big, 1)];
    let (reasons, ms) = run_all(&vms);
    kernel::println!(
        "overcommit: a {} MiB VM of incompressible data beside an {} MiB one on a host of {host} MiB",
        big / MIB,
        small / MIB
    );
    for (i, vm) in vms.iter().enumerate() {
        print_vm(i, vm, &ms[i], &reasons[i]);
    }
    assert!(big > host * MIB, "the big VM alone exceeds the host");
    let small_pages = (small - layout::DATA_START_GPA) / 4096;
    assert_eq!(reasons[0], StopReason::Exited(0), "the small VM finishes");
    assert_eq!(vms[0].checksum_result(), Some((small_pages, 0)));
    match reasons[1] {
        StopReason::OutOfMemory { .. } => {
            kernel::println!("overcommit: the big VM stayed paused and was stopped (as designed)");
        }
        StopReason::Exited(0) => {
            let big_pages = (big - layout::DATA_START_GPA) / 4096;
            assert_eq!(vms[1].checksum_result(), Some((big_pages, 0)));
            kernel::println!("overcommit: the big VM resumed and finished intact");
        }
        ref r => panic!("big VM: {r}"),
    }
}
