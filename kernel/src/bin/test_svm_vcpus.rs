//! Scenario `svm_vcpus`: VMs with several vCPUs on the SVM backend (the
//! `smp` guest, docs/guests.md). A 4-vCPU VM runs its workout to completion
//! while another VM runs; NPT A/D bits are set on exactly the pages its
//! vCPUs touched; a TLB flush request (the reclaimer's shootdown) reaches
//! every vCPU, and reclaim under a resident limit loses nothing while the
//! four vCPUs fault concurrently; HLT waits and wakes (deadline, `WAKE`,
//! host stop); EXIT or a fault on any vCPU stops the whole VM, reported
//! once naming the vCPU; bad string I/O stops a VM with a clear line. Run
//! with `-smp 4`.
//!
//! HLT without a wake-up, every vCPU halted, bad string I/O and the long
//! REP OUTSB are written once in `kernel::testing::smp::cases` and run by
//! `test_vmx_vcpus` too.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use hvcore::addr::GuestPhysAddr;
use hvcore::exit::AccessKind;
use hvcore::flush::TlbFlush;
use hvcore::reclaim::ReclaimTarget;
use kernel::aging::{self, AgingConfig, Managed};
use kernel::reclaim::Shootdown;
use kernel::svm::Svm;
use kernel::testing::smp::{
    REGION_PAGES, RELEASE_GPA, cases, prepare_regions, region_ad_mismatches, smp_vm,
};
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, StopReason, Vm, VmConfig, images};
use kernel::{sched, smp, time};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::println!("[svm_vcpus] cpus={}", smp::cpu_count());
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "svm_vcpus",
    cases: &[
        TestCase {
            name: "four_vcpus_run_while_another_vm_runs",
            run: four_vcpus_with_another_vm,
        },
        TestCase {
            name: "flush_request_reaches_every_vcpu",
            run: flush_reaches_every_vcpu,
        },
        TestCase {
            name: "reclaim_under_four_vcpus_loses_nothing",
            run: reclaim_under_four_vcpus,
        },
        TestCase {
            name: "hlt_with_nothing_to_wake_stops_the_vm",
            run: cases::hlt_without_wakeup::<Svm>,
        },
        TestCase {
            name: "every_vcpu_halted_with_nothing_to_wake_stops_the_vm",
            run: cases::all_halted::<Svm>,
        },
        TestCase {
            name: "host_stop_wakes_halted_vcpus",
            run: stop_wakes_halted,
        },
        TestCase {
            name: "exit_on_one_vcpu_stops_all",
            run: exit_on_secondary,
        },
        TestCase {
            name: "fault_on_one_vcpu_stops_all",
            run: fault_on_secondary,
        },
        TestCase {
            name: "bad_string_io_stops_the_vm",
            run: cases::bad_string_io::<Svm>,
        },
        TestCase {
            name: "long_rep_outs_runs_in_batches",
            run: cases::long_rep_outs::<Svm>,
        },
    ],
};

const MIB: u64 = 1 << 20;
/// Far below the `smp` guest's working set (image, tables, stacks, regions).
const LIMIT_PAGES: u64 = 24;

/// Runs the boot vCPU of `vm` on a thread pinned to `cpu`.
fn spawn_boot(cpu: usize, vm: &Arc<Vm<Svm>>) -> sched::JoinHandle {
    let vm = vm.clone();
    sched::spawn_on(cpu, "vcpu0", move || {
        vm::run_on_this_cpu(&vm);
    })
}

fn four_vcpus_with_another_vm() {
    let cpus = smp::cpu_count();
    assert!(cpus >= 2, "run this scenario with -smp 2 or more");
    let vm = smp_vm::<Svm>(0, 4);
    prepare_regions(&*vm);
    let other = Vm::<Svm>::new(
        VmConfig {
            name: "checksum",
            image: images::CHECKSUM.bytes,
            ram_bytes: 24 * MIB,
            huge_pages: true,
            boot_arg: 2,
        },
        None,
    )
    .expect("VM");
    let checksum = {
        let other = other.clone();
        sched::spawn_on(1, "vcpu-checksum", move || {
            vm::run_on_this_cpu(&other);
        })
    };
    let start_ns = time::now_ns();
    spawn_boot(cpus - 1, &vm).join();
    let elapsed_ms = (time::now_ns() - start_ns) / 1_000_000;
    checksum.join();
    assert_eq!(vm.stop_reason(), Some(StopReason::Exited(0)));
    assert_eq!(vm.running_vcpus(), 0, "every vCPU thread returned");
    assert_eq!(other.stop_reason(), Some(StopReason::Exited(0)));
    assert_eq!(other.checksum_result().map(|r| r.1), Some(0));
    let mismatched = region_ad_mismatches(&*vm, "svm_vcpus");
    kernel::println!(
        "[svm_vcpus] A/D check: 8 regions x {REGION_PAGES} pages, {mismatched} mismatched"
    );
    assert_eq!(mismatched, 0);
    let halts = vm.stats.halts.load(Ordering::Relaxed);
    let elements = vm.stats.string_io_elements.load(Ordering::Relaxed);
    kernel::println!(
        "[svm_vcpus] 4 vCPUs done in {elapsed_ms} ms: {halts} HLTs waited, {elements} string I/O elements, {} exits",
        vm.stats.exits.load(Ordering::Relaxed)
    );
    assert!(halts >= 2, "vCPU 1 slept and vCPU 2 waited for WAKE");
    assert!(
        elements >= 100,
        "vCPU 3 printed and read through string I/O"
    );
    // The guest's bad VCPU_START/WAKE arguments were reported, not fatal.
    assert!(vm.stats.reports.load(Ordering::Relaxed) >= 6);
    vm.memory.check_isolation().expect("isolation");
}

/// The reclaimer's flush (`Shootdown`: request, then an interrupt on every
/// CPU) while every vCPU spins in the guest without exits: each vCPU flushes
/// for the new generation before it runs guest code again.
fn flush_reaches_every_vcpu() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<Svm>(5, 4);
    let boot = spawn_boot(cpus - 1, &vm);
    let deadline = time::now_ns() + 10_000_000_000;
    while vm.running_vcpus() < 4 {
        assert!(time::now_ns() < deadline, "the vCPUs did not start");
        time::sleep_ms(1);
    }
    time::sleep_ms(20);
    let request = || vm.request_tlb_flush();
    let mut shootdown = Shootdown { request: &request };
    shootdown.flush_guest_tlb();
    let target = vm.tlb_generation();
    // Every vCPU was forced out of the guest by the interrupt and flushes
    // before it enters again; wait for each to have re-entered.
    let deadline = time::now_ns() + 5_000_000_000;
    loop {
        let seen: Vec<(u32, u64)> = vm.vcpu_flush_generations();
        assert_eq!(seen.len(), 4, "all four vCPUs still run");
        if seen.iter().all(|&(_, g)| g == target) {
            kernel::println!(
                "[svm_vcpus] flush generation {target} reached vCPUs {:?}",
                seen.iter().map(|s| s.0).collect::<Vec<_>>()
            );
            break;
        }
        assert!(
            time::now_ns() < deadline,
            "a vCPU never flushed: {seen:?}, target {target}"
        );
        time::sleep_ms(1);
    }
    vm.memory
        .write(GuestPhysAddr::new(RELEASE_GPA), &1u64.to_le_bytes())
        .expect("release");
    boot.join();
    assert_eq!(vm.stop_reason(), Some(StopReason::Exited(0)));
}

/// The aging thread with a resident limit far below what the `smp` guest
/// uses: its pages are reclaimed and faulted back while its four vCPUs run
/// and fault concurrently (every reclaim batch ends with a shootdown over
/// all CPUs); the guest's own end checks (counter, every region's stamps,
/// read after the pages were reclaimed) pass.
fn reclaim_under_four_vcpus() {
    let cpus = smp::cpu_count();
    // vCPU 0 sleeps 300 ms before it checks the others' regions: they are
    // cold by then, reclaimed, and come back when it reads them.
    let vm = smp_vm::<Svm>(300 << 16, 4);
    let m = Managed::new(
        &vm,
        Some(ReclaimTarget::ResidentLimit { pages: LIMIT_PAGES }),
    );
    let config = AgingConfig {
        interval_ms: 10,
        detail_every: 1000,
        ..AgingConfig::default()
    };
    let boot = spawn_boot(cpus - 1, &vm);
    let all = alloc::vec![m.clone()];
    let ager = sched::spawn_on(0, "aging", move || aging::run(all, config));
    boot.join();
    aging::stop();
    ager.join();
    let stats = m.mm.lock().rec.stats();
    kernel::println!(
        "[svm_vcpus] resident limit {LIMIT_PAGES} pages under 4 vCPUs: {}; {} pages reclaimed, {} refaults",
        vm.stop_reason().expect("stopped"),
        stats.reclaimed_total,
        stats.refaults
    );
    assert_eq!(vm.stop_reason(), Some(StopReason::Exited(0)));
    assert!(
        stats.reclaimed_total > 0,
        "the limit made the reclaimer work"
    );
    assert!(stats.refaults > 0, "reclaimed pages were read back");
    vm.memory.check_isolation().expect("isolation");
}

fn stop_wakes_halted() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<Svm>(2, 2);
    let boot = spawn_boot(cpus - 1, &vm);
    let deadline = time::now_ns() + 10_000_000_000;
    while vm.running_vcpus() < 2 {
        assert!(time::now_ns() < deadline, "vCPU 1 did not start");
        time::sleep_ms(1);
    }
    time::sleep_ms(100);
    assert_eq!(vm.stop_reason(), None, "both vCPUs wait in HLT");
    let exits = vm.stats.exits.load(Ordering::Relaxed);
    time::sleep_ms(100);
    assert_eq!(
        vm.stats.exits.load(Ordering::Relaxed),
        exits,
        "a halted vCPU sleeps: no exits while it waits"
    );
    vm.request_stop();
    boot.join();
    assert_eq!(vm.stop_reason(), Some(StopReason::Killed));
    assert_eq!(vm.running_vcpus(), 0);
}

fn exit_on_secondary() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<Svm>(3, 3);
    spawn_boot(cpus - 1, &vm).join();
    // vCPU 0 spun without exits: only the IPI got it out of the guest.
    assert_eq!(vm.stop_reason(), Some(StopReason::Exited(7)));
    assert_eq!(vm.running_vcpus(), 0);
}

fn fault_on_secondary() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<Svm>(4, 2);
    spawn_boot(cpus - 1, &vm).join();
    match vm.stop_reason() {
        Some(StopReason::OutsideRam { gpa, access, .. }) => {
            assert_eq!(gpa, 256 << 30);
            assert_eq!(access, AccessKind::Read);
        }
        other => panic!("expected a stop outside RAM, got {other:?}"),
    }
    vm.memory.check_isolation().expect("isolation");
}
