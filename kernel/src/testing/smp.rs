//! What the multi-vCPU scenarios (`test_svm_vcpus` in QEMU, `test_vmx_vcpus`
//! on full-system Bochs) share: the `smp` guest's layout (guests/src/bin/smp.rs),
//! its VM, and the exact check of the A/D bits its vCPUs leave behind, so
//! both backends are held to one definition.

use crate::vm::{Vm, VmConfig, images};
use alloc::sync::Arc;
use hvcore::addr::GuestPhysAddr;
use hvcore::pte::EntryFormat;

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
pub fn smp_vm<F: EntryFormat>(mode: u64, vcpus: u32) -> Arc<Vm<F>> {
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
pub fn prepare_regions<F: EntryFormat>(vm: &Vm<F>) {
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
pub fn region_ad_mismatches<F: EntryFormat>(vm: &Vm<F>, tag: &str) -> u64 {
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
