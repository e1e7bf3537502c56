//! The multi-vCPU scenario's cases, generic over the virtualization
//! extension: `test_svm_vcpus` runs them on SVM (QEMU, 4 CPUs) and
//! `test_vmx_vcpus` on VMX (full-system Bochs, 2 CPUs), so both backends
//! are held to the same checks. The `smp` guest (docs/guests.md): a 4-vCPU
//! VM runs its workout to completion while another VM runs; second-level
//! A/D bits are set on exactly the pages its vCPUs touched; a TLB flush
//! request (the reclaimer's shootdown) reaches every vCPU, and reclaim
//! under a resident limit loses nothing while the four vCPUs fault
//! concurrently; HLT waits and wakes (deadline, `WAKE`, host stop); EXIT or
//! a fault on any vCPU stops the whole VM, reported once naming the vCPU;
//! bad string I/O stops a VM with a clear line. Every case needs a timer
//! and at least two CPUs (a vCPU spinning in the guest without exits gives
//! its CPU back only to an interrupt).
//!
//! Neighbours: [`super::smp`] (the guest's layout and A/D check, and the
//! four cases `test_svm_vcpus` and `test_vmx_vcpus` shared first:
//! [`super::smp::cases`]).

use super::TestCase;
use super::guests::MIB;
use super::smp::{REGION_PAGES, RELEASE_GPA, cases, prepare_regions, region_ad_mismatches, smp_vm};
use crate::aging::{self, AgingConfig, Managed};
use crate::reclaim::Shootdown;
use crate::vm::{self, Extension, StopReason, Vm, VmConfig, images};
use crate::{sched, smp, time};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hvcore::addr::GuestPhysAddr;
use hvcore::exit::AccessKind;
use hvcore::flush::TlbFlush;
use hvcore::reclaim::ReclaimTarget;

/// The cases, in order, for extension `E`.
pub const fn cases<E: Extension>() -> [TestCase; 10] {
    [
        TestCase {
            name: "four_vcpus_run_while_another_vm_runs",
            run: four_vcpus_with_another_vm::<E>,
        },
        TestCase {
            name: "flush_request_reaches_every_vcpu",
            run: flush_reaches_every_vcpu::<E>,
        },
        TestCase {
            name: "reclaim_under_four_vcpus_loses_nothing",
            run: reclaim_under_four_vcpus::<E>,
        },
        TestCase {
            name: "hlt_with_nothing_to_wake_stops_the_vm",
            run: cases::hlt_without_wakeup::<E>,
        },
        TestCase {
            name: "every_vcpu_halted_with_nothing_to_wake_stops_the_vm",
            run: cases::all_halted::<E>,
        },
        TestCase {
            name: "host_stop_wakes_halted_vcpus",
            run: stop_wakes_halted::<E>,
        },
        TestCase {
            name: "exit_on_one_vcpu_stops_all",
            run: exit_on_secondary::<E>,
        },
        TestCase {
            name: "fault_on_one_vcpu_stops_all",
            run: fault_on_secondary::<E>,
        },
        TestCase {
            name: "bad_string_io_stops_the_vm",
            run: cases::bad_string_io::<E>,
        },
        TestCase {
            name: "long_rep_outs_runs_in_batches",
            run: cases::long_rep_outs::<E>,
        },
    ]
}

/// The tag of the scenario's own lines: `svm_vcpus` or `vmx_vcpus`.
fn tag<E: Extension>() -> &'static str {
    match E::NAME {
        "SVM" => "svm_vcpus",
        _ => "vmx_vcpus",
    }
}

/// Far below the `smp` guest's working set (image, tables, stacks, regions).
const LIMIT_PAGES: u64 = 24;

/// Runs the boot vCPU of `vm` on a thread pinned to `cpu`.
fn spawn_boot<E: Extension>(cpu: usize, vm: &Arc<Vm<E>>) -> sched::JoinHandle {
    vm::spawn_on(cpu, vm.clone())
}

fn four_vcpus_with_another_vm<E: Extension>() {
    let cpus = smp::cpu_count();
    assert!(cpus >= 2, "run this scenario with -smp 2 or more");
    let vm = smp_vm::<E>(0, 4);
    prepare_regions(&*vm);
    let other = Vm::<E>::new(
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
    let checksum = vm::spawn_on(1, other.clone());
    let start_ns = time::now_ns();
    spawn_boot::<E>(cpus - 1, &vm).join();
    let elapsed_ms = (time::now_ns() - start_ns) / 1_000_000;
    checksum.join();
    assert_eq!(vm.stop_reason(), Some(StopReason::Exited(0)));
    assert_eq!(vm.running_vcpus(), 0, "every vCPU thread returned");
    assert_eq!(other.stop_reason(), Some(StopReason::Exited(0)));
    assert_eq!(other.checksum_result().map(|r| r.1), Some(0));
    let mismatched = region_ad_mismatches(&*vm, tag::<E>());
    crate::println!(
        "[{}] A/D check: 8 regions x {REGION_PAGES} pages, {mismatched} mismatched",
        tag::<E>()
    );
    assert_eq!(mismatched, 0);
    let halts = vm.stats.halts.load(Ordering::Relaxed);
    let elements = vm.stats.string_io_elements.load(Ordering::Relaxed);
    crate::println!(
        "[{}] 4 vCPUs done in {elapsed_ms} ms: {halts} HLTs waited, {elements} string I/O elements, {} exits",
        tag::<E>(),
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
fn flush_reaches_every_vcpu<E: Extension>() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<E>(5, 4);
    let boot = spawn_boot::<E>(cpus - 1, &vm);
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
            crate::println!(
                "[{}] flush generation {target} reached vCPUs {:?}",
                tag::<E>(),
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
fn reclaim_under_four_vcpus<E: Extension>() {
    let cpus = smp::cpu_count();
    // vCPU 0 sleeps 300 ms before it checks the others' regions: they are
    // cold by then, reclaimed, and come back when it reads them.
    let vm = smp_vm::<E>(300 << 16, 4);
    let m = Managed::new(
        &vm,
        Some(ReclaimTarget::ResidentLimit { pages: LIMIT_PAGES }),
    );
    let config = AgingConfig {
        interval_ms: 10,
        detail_every: 1000,
        ..AgingConfig::default()
    };
    let boot = spawn_boot::<E>(cpus - 1, &vm);
    let all = alloc::vec![m.clone()];
    let ager = sched::spawn_on(0, "aging", move || aging::run(all, config));
    boot.join();
    aging::stop();
    ager.join();
    let stats = m.mm.lock().rec.stats();
    crate::println!(
        "[{}] resident limit {LIMIT_PAGES} pages under 4 vCPUs: {}; {} pages reclaimed, {} refaults",
        tag::<E>(),
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

fn stop_wakes_halted<E: Extension>() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<E>(2, 2);
    let boot = spawn_boot::<E>(cpus - 1, &vm);
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

fn exit_on_secondary<E: Extension>() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<E>(3, 3);
    spawn_boot::<E>(cpus - 1, &vm).join();
    // vCPU 0 spun without exits: only the IPI got it out of the guest.
    assert_eq!(vm.stop_reason(), Some(StopReason::Exited(7)));
    assert_eq!(vm.running_vcpus(), 0);
}

fn fault_on_secondary<E: Extension>() {
    let cpus = smp::cpu_count();
    let vm = smp_vm::<E>(4, 2);
    spawn_boot::<E>(cpus - 1, &vm).join();
    match vm.stop_reason() {
        Some(StopReason::OutsideRam { gpa, access, .. }) => {
            assert_eq!(gpa, 256 << 30);
            assert_eq!(access, AccessKind::Read);
        }
        other => panic!("expected a stop outside RAM, got {other:?}"),
    }
    vm.memory.check_isolation().expect("isolation");
}
