//! What the overcommit scenarios (`test_overcommit`: memory twice the
//! host's, all VMs finish; `test_overcommit_pause`: hot sets over the host,
//! one VM paused) share: `checksum` VMs sized against the host, one vCPU
//! thread each off CPU 0, the aging thread on CPU 0 with reclaim driven by
//! host pressure alone, and the per-VM outcome lines the host harness
//! (`tests/tests/aging/overcommit.rs`) prints; and the two cases
//! themselves, generic over the extension: [`all_finish`] and
//! [`hot_sets_exceed`] run on SVM (`test_overcommit`,
//! `test_overcommit_pause`, QEMU) and on VMX (`test_vmx_overcommit`,
//! `test_vmx_overcommit_pause`, full-system Bochs). They boot separately
//! since test VMs are never torn down: the first case's memory stays
//! allocated.

use crate::aging::{self, AgingConfig, Managed};
use crate::reclaim;
use crate::vm::{Extension, StopReason, Vm, VmConfig, images};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hvcore::guest_layout as layout;

/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;

/// A `checksum` VM of `ram_bytes` with 4 KiB pages.
pub fn new_vm<E: Extension>(name: &'static str, ram_bytes: u64, boot_arg: u64) -> Arc<Vm<E>> {
    let config = VmConfig {
        name,
        image: images::CHECKSUM.bytes,
        ram_bytes,
        huge_pages: false,
        boot_arg,
    };
    Vm::new(config, None).expect("VM")
}

/// Bytes of RAM the frame allocator manages: the host, as guests see it.
pub fn host_bytes() -> u64 {
    crate::mem::frame_stats().managed_frames * 4096
}

/// RAM of a VM that alone is larger than the host.
pub fn over_host_bytes() -> u64 {
    (host_bytes() + 8 * MIB).next_multiple_of(2 * MIB)
}

/// The pages the checksum guest writes and verifies.
pub fn data_pages(ram: u64) -> u64 {
    (ram - layout::DATA_START_GPA) / 4096
}

/// Passes every 10 ms, quiet: reclaim is driven by host pressure alone.
pub fn aging_config() -> AgingConfig {
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
pub fn vcpu_cpu(i: usize) -> usize {
    let n = crate::smp::cpu_count();
    if n > 1 { 1 + i % (n - 1) } else { 0 }
}

/// Runs `vm` on [`vcpu_cpu`]`(i)`.
pub fn spawn_vcpu<E: Extension>(i: usize, vm: &Arc<Vm<E>>) -> crate::sched::JoinHandle {
    crate::vm::spawn_on(vcpu_cpu(i), vm.clone())
}

/// The aging thread on CPU 0 over `ms`.
pub fn spawn_aging<E: Extension>(ms: &[Managed<E>]) -> crate::sched::JoinHandle {
    let all = ms.to_vec();
    crate::sched::spawn_on(0, "aging", move || aging::run(all, aging_config()))
}

/// One `overcommit NAME:` line of the VM's outcome and reclaim counters,
/// and one `timing overcommit NAME:` line of where reclaim spent its time.
pub fn print_vm<E: Extension>(vm: &Vm<E>, m: &Managed<E>) {
    let mm = m.mm.lock();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    let t = mm.rec.times();
    crate::println!(
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
    crate::println!(
        "timing overcommit {}: select_us={} unmap_us={} flush_us={} store_us={} fault_in_us={}",
        vm.name(),
        t.select_ns / 1000,
        t.unmap_ns / 1000,
        t.flush_ns / 1000,
        t.store_ns / 1000,
        t.fault_in_ns / 1000
    );
}

/// The checksum guest's sparse-data flag (docs/guests.md).
const SPARSE: u64 = 1 << 32;

/// Case `twice_the_host_memory_all_finish_intact` (`test_overcommit`,
/// `test_vmx_overcommit`).
pub fn all_finish<E: Extension>() {
    let ram = over_host_bytes();
    let names = ["oc-a", "oc-b"];
    let host = host_bytes();
    let free0 = crate::mem::frame_stats().free_frames;
    let pauses0 = reclaim::PAUSES.load(Ordering::Relaxed);
    let freed0 = reclaim::FRAMES_FREED.load(Ordering::Relaxed);
    let taken0 = reclaim::FRAMES_TAKEN.load(Ordering::Relaxed);
    crate::reclaim::timing::reset();
    let vms: Vec<_> = names
        .iter()
        .map(|&n| new_vm::<E>(n, ram, 1 | SPARSE))
        .collect();
    let ms: Vec<Managed<E>> = vms.iter().map(|vm| Managed::new(vm, None)).collect();
    let t0 = crate::time::now_ns();
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
    let run_ms = (crate::time::now_ns() - t0) / 1_000_000;
    crate::reclaim::timing::print("overcommit");
    let total = ram * vms.len() as u64;
    crate::println!(
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

/// Waits until `done()` or `limit_ms` passed; whether `done()`.
fn wait_until(limit_ms: u64, done: impl Fn() -> bool) -> bool {
    let t0 = crate::time::now_ns();
    while !done() {
        if crate::time::now_ns() - t0 > limit_ms * 1_000_000 {
            return false;
        }
        crate::time::sleep_ms(5);
    }
    true
}

/// Case `hot_sets_over_the_host_pause_one_vm` (`test_overcommit_pause`):
/// each wait (the small VM filled, the big one paused) may take 30 s.
pub fn hot_sets_exceed<E: Extension>() {
    hot_sets_exceed_waiting::<E>(30_000);
}

/// [`hot_sets_exceed`] on full-system Bochs (`test_vmx_overcommit_pause`):
/// each wait may take 120 emulated seconds. Bochs runs 50 M instructions
/// per emulated second (`tests/src/bochs.rs`), QEMU TCG about 1 G per
/// second, so the same fault-ins and pressure rounds take about 20 times
/// the guest time (measured: the big VM was not yet paused after 30 s; it
/// takes about 60 s to fill the host there).
pub fn hot_sets_exceed_emulated<E: Extension>() {
    hot_sets_exceed_waiting::<E>(120_000);
}

fn hot_sets_exceed_waiting<E: Extension>(wait_ms: u64) {
    let small_ram = 8 * MIB;
    let big_ram = over_host_bytes();
    let host = host_bytes();
    let pauses0 = reclaim::PAUSES.load(Ordering::Relaxed);
    crate::reclaim::timing::reset();
    let small = new_vm::<E>("small", small_ram, 6);
    let big = new_vm::<E>("big", big_ram, 1);
    let ms = [Managed::new(&small, None), Managed::new(&big, None)];
    let ager = spawn_aging(&ms);
    // The small VM first, so its memory is its own before the big one
    // takes the rest.
    let v_small = spawn_vcpu(0, &small);
    assert!(
        wait_until(wait_ms, || small.memory.resident().0
            >= data_pages(small_ram)
            || small.stop_reason().is_some()),
        "the small VM filled its memory"
    );
    let v_big = spawn_vcpu(1, &big);
    v_small.join();
    // The big VM runs out: it is paused, and stays paused with nothing
    // left to reclaim.
    let paused = wait_until(wait_ms, || {
        reclaim::PAUSED_NOW.load(Ordering::Acquire) >= 1 || big.stop_reason().is_some()
    });
    crate::time::sleep_ms(500);
    let still_paused =
        paused && reclaim::PAUSED_NOW.load(Ordering::Acquire) >= 1 && big.stop_reason().is_none();
    crate::println!(
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
    crate::reclaim::timing::print("overcommit");
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
