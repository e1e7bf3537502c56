//! What the multi-vCPU scenarios (`test_svm_vcpus` in QEMU, `test_vmx_vcpus`
//! on full-system Bochs) share: the `smp` guest's layout (guests/src/bin/smp.rs),
//! its VM, and the exact check of the A/D bits its vCPUs leave behind, so
//! both backends are held to one definition; and the cases both run
//! ([`cases`]).

use crate::vm::{Extension, Vm, VmConfig, images};
use alloc::sync::Arc;
use hvcore::addr::GuestPhysAddr;

/// The `smp` guest's first vCPU region.
pub const REGION_GPA: u64 = 0x50_0000;
/// Bytes per vCPU region.
pub const REGION_BYTES: u64 = 0x2_0000;
/// Pages per vCPU region.
pub const REGION_PAGES: u64 = REGION_BYTES / 4096;
/// Mode 5: a non-zero word written here releases the spinning vCPUs.
pub const RELEASE_GPA: u64 = 0x40_0000;
/// RAM of the scenarios' `smp` VMs.
pub const RAM_BYTES: u64 = 16 << 20;
/// Regions checked: the four vCPUs' and four no vCPU touches.
const REGIONS: u64 = 8;

/// An `smp` VM in `mode` with `vcpus` vCPUs (4 KiB pages, so A/D bits are
/// per page).
pub fn smp_vm<E: Extension>(mode: u64, vcpus: u32) -> Arc<Vm<E>> {
    Vm::new_smp(
        VmConfig {
            name: "smp",
            image: images::SMP.bytes,
            ram_bytes: RAM_BYTES,
            huge_pages: false,
            boot_arg: mode | (u64::from(vcpus) << 8),
        },
        vcpus,
        None,
    )
    .expect("VM")
}

/// Backs every page of the regions and clears their A/D bits, so that
/// afterwards the bits show what the guest did and nothing else.
pub fn prepare_regions<E: Extension>(vm: &Vm<E>) {
    for page in 0..REGIONS * REGION_PAGES {
        vm.memory
            .write(GuestPhysAddr::new(REGION_GPA + page * 4096), &[0])
            .expect("back the regions");
    }
    vm.memory.clear_accessed_dirty();
}

/// After mode 0 with four vCPUs: pages 0-7 of each vCPU's region written
/// (A and D), pages 8-11 read (A only), the rest of each region and the
/// four unused regions untouched. Prints one line per wrong page (prefixed
/// with `tag`) and returns how many there were.
pub fn region_ad_mismatches<E: Extension>(vm: &Vm<E>, tag: &str) -> u64 {
    let mut mismatched = 0;
    for vcpu in 0..REGIONS {
        for page in 0..REGION_PAGES {
            let gpa = REGION_GPA + vcpu * REGION_BYTES + page * 4096;
            let want = match (vcpu < 4, page) {
                (true, 0..8) => (true, true),
                (true, 8..12) => (true, false),
                _ => (false, false),
            };
            let got = vm
                .memory
                .accessed_dirty(GuestPhysAddr::new(gpa))
                .expect("backed");
            if got != want {
                crate::println!(
                    "[{tag}] vCPU {vcpu} page {page} (GPA {gpa:#x}): A/D {got:?}, expected {want:?}"
                );
                mismatched += 1;
            }
        }
    }
    mismatched
}

/// The cases the multi-vCPU scenarios of both backends run, written once
/// (`test_svm_vcpus` on SVM, `test_vmx_vcpus` on VMX). Each runs the boot
/// vCPU on a thread pinned to the last CPU and waits for the VM to stop.
pub mod cases {
    use super::smp_vm;
    use crate::testing::guests::{MIB, new_vm};
    use crate::virt::Extension;
    use crate::vm::{self, StopReason, Vm, images};
    use alloc::sync::Arc;
    use core::sync::atomic::Ordering;

    /// Runs `vm`'s boot vCPU on the last CPU until the VM stops.
    fn run_on_last_cpu<E: Extension>(vm: &Arc<Vm<E>>) -> Option<StopReason> {
        vm::spawn_on(crate::smp::cpu_count() - 1, vm.clone()).join();
        vm.stop_reason()
    }

    /// Mode 1, one vCPU: an HLT with a deadline waits and returns; then an
    /// HLT with nothing that could wake it stops the VM at once (the one
    /// wait counted).
    pub fn hlt_without_wakeup<E: Extension>() {
        let vm = smp_vm::<E>(1, 1);
        let reason = vm::run_on_this_cpu(&vm);
        assert!(matches!(reason, StopReason::Halted { .. }), "{reason:?}");
        assert_eq!(
            vm.stats.halts.load(Ordering::Relaxed),
            1,
            "the deadline HLT waited"
        );
    }

    /// Three vCPUs, one of which WAKEs another first, then all HLT with no
    /// deadline: no vCPU runs, so nothing can ever send a WAKE, and the VM
    /// stops on its own instead of hanging until the host gives up on it.
    pub fn all_halted<E: Extension>() {
        let vm = smp_vm::<E>(6, 3);
        let reason = run_on_last_cpu(&vm);
        assert!(
            matches!(reason, Some(StopReason::Halted { .. })),
            "{reason:?}"
        );
        assert_eq!(vm.running_vcpus(), 0);
    }

    /// The `evil` guest's `scenario`, on one vCPU, run to its stop.
    fn evil<E: Extension>(scenario: u64) -> (Arc<Vm<E>>, StopReason) {
        let vm = new_vm::<E>(images::EVIL, 8 * MIB, scenario, true, None);
        let reason = vm::run_on_this_cpu(&vm);
        (vm, reason)
    }

    /// String I/O whose memory operand the guest cannot reach (a
    /// non-canonical address, past RAM, FS-relative) stops the VM naming
    /// the address.
    pub fn bad_string_io<E: Extension>() {
        match evil::<E>(13).1 {
            StopReason::StringIo { va, .. } => assert_eq!(va, 512 << 30),
            other => panic!("scenario 13: {other:?}"),
        }
        match evil::<E>(14).1 {
            StopReason::StringIo { va, .. } => assert_eq!(va, 8 * MIB + 0x1000),
            other => panic!("scenario 14: {other:?}"),
        }
        assert!(matches!(
            evil::<E>(16).1,
            StopReason::StringIo { va: 0, .. }
        ));
    }

    /// A `REP OUTSB` of 10 000 bytes moves every byte, 4096 elements per
    /// exit at most: at least 3 exits for the one instruction.
    pub fn long_rep_outs<E: Extension>() {
        let (vm, reason) = evil::<E>(15);
        assert_eq!(reason, StopReason::Exited(0));
        assert_eq!(vm.stats.string_io_elements.load(Ordering::Relaxed), 10_000);
        assert!(vm.stats.exits.load(Ordering::Relaxed) >= 3);
    }
}
