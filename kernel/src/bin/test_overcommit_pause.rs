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

use alloc::boxed::Box;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use hvcore::guest_layout as layout;
use hvcore::npt::Npt;
use kernel::aging::{self, AgingConfig, Managed};
use kernel::reclaim;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, StopReason, Svm, Vm, VmConfig, images};

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

const MIB: u64 = 1 << 20;
fn new_vm(name: &'static str, ram_bytes: u64, boot_arg: u64) -> &'static Vm<Npt> {
    let config = VmConfig {
        name,
        image: images::CHECKSUM.bytes,
        ram_bytes,
        huge_pages: false,
        boot_arg,
    };
    Box::leak(Vm::<Npt>::new(config, None).expect("VM"))
}

/// Bytes of RAM the frame allocator manages: the host, as guests see it.
fn host_bytes() -> u64 {
    kernel::mem::frame_stats().managed_frames * 4096
}

/// RAM of a VM that alone is larger than the host.
fn over_host_bytes() -> u64 {
    (host_bytes() + 8 * MIB).next_multiple_of(2 * MIB)
}

fn data_pages(ram: u64) -> u64 {
    (ram - layout::DATA_START_GPA) / 4096
}

fn aging_config() -> AgingConfig {
    AgingConfig {
        interval_ms: 10,
        // Thousands of pass lines would slow the emulated serial port;
        // the final `TCR reclaim` lines and the events show the reclaim.
        pass_lines: false,
        detail_every: 0,
        timing_every_ms: 5000,
        ..AgingConfig::default()
    }
}

/// The vCPU CPU of the `i`-th VM: CPU 0 stays with the aging thread when
/// there are others (the reclaim that unpauses the VMs must not wait for
/// a time slice).
fn vcpu_cpu(i: usize) -> usize {
    let n = kernel::smp::cpu_count();
    if n > 1 { 1 + i % (n - 1) } else { 0 }
}

fn spawn_vcpu(i: usize, vm: &'static Vm<Npt>) -> kernel::sched::JoinHandle {
    kernel::sched::spawn_on(vcpu_cpu(i), "vcpu", move || {
        vm::run_on_this_cpu::<Svm>(vm);
    })
}

fn spawn_aging(ms: &[Managed]) -> kernel::sched::JoinHandle {
    let all = ms.to_vec();
    kernel::sched::spawn_on(0, "aging", move || aging::run(all, aging_config()))
}

fn print_vm(vm: &Vm<Npt>, m: &Managed) {
    let mm = m.mm.lock();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    let t = mm.rec.times();
    kernel::println!(
        "overcommit {}: {}; checksum {:?}; reclaimed {} pages ({} zero, {} compressed, {} raw now, {} compressed bytes), {} refaults, {} kept incompressible, {} resident frames",
        vm.name(),
        vm.stop_reason().expect("stopped"),
        vm.checksum_result(),
        s.reclaimed_total,
        st.zero_pages,
        st.compressed_pages,
        st.raw_pages,
        st.compressed_bytes,
        s.refaults,
        s.kept_incompressible,
        vm.memory.resident().0
    );
    kernel::println!(
        "timing overcommit {}: select_us={} unmap_us={} flush_us={} store_us={} fault_in_us={}",
        vm.name(),
        t.select_ns / 1000,
        t.unmap_ns / 1000,
        t.flush_ns / 1000,
        t.store_ns / 1000,
        t.fault_in_ns / 1000
    );
}

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
    let ms = [Managed::new(small, None), Managed::new(big, None)];
    let ager = spawn_aging(&ms);
    // The small VM first, so its memory is its own before the big one
    // takes the rest.
    let v_small = spawn_vcpu(0, small);
    assert!(
        wait_until(30_000, || small.memory.resident().0
            >= data_pages(small_ram)
            || small.stop_reason().is_some()),
        "the small VM filled its memory"
    );
    let v_big = spawn_vcpu(1, big);
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
    print_vm(small, &ms[0]);
    print_vm(big, &ms[1]);
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
