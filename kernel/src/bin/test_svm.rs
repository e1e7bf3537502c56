//! Scenario `svm`: guests run on the SVM backend with nested paging.
//! `hello` runs and exits; nested page faults back RAM on first touch (4 KiB
//! and 2 MiB); NPT accessed/dirty bits are set on every page the `checksum`
//! guest wrote, and on exactly the pages the
//! `pattern` guest reports touching; the `checksum` guest sees its data
//! intact; no guest-physical address reaches a frame the VM does not own;
//! a VMCB with bad state is refused with a message naming the field.
//! The cases both backends run are written once in
//! `kernel::testing::guests` (`test_vmx_guests` runs them on VMX).
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use hvcore::addr::GuestPhysAddr;
use hvcore::cpu_features::Backend;
use hvcore::table::TableMemory;
use kernel::svm::Svm;
use kernel::svm::{SvmVcpu, vmcb};
use kernel::testing::{Scenario, TestCase, guests, run_scenario};
use kernel::vm::{self, EntryError, Extension, StopReason, VirtCpu, Vm, VmConfig, images};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "svm",
    cases: &[
        TestCase {
            name: "svm_is_the_backend_and_enables",
            run: svm_enables,
        },
        TestCase {
            name: "hello_runs_and_exits",
            run: guests::hello_runs::<Svm>,
        },
        TestCase {
            name: "npf_backs_ram_on_first_touch_4k",
            run: guests::fault_in_4k::<Svm>,
        },
        TestCase {
            name: "npf_backs_ram_with_2m_pages",
            run: guests::fault_in_2m::<Svm>,
        },
        TestCase {
            name: "npt_ad_bits_after_checksum",
            run: guests::ad_bits_after_checksum::<Svm>,
        },
        TestCase {
            name: "npt_ad_bits_match_the_pages_touched",
            // 20 ms intervals of host time.
            run: || guests::ad_bits_match_the_pages_touched::<Svm>(20),
        },
        TestCase {
            name: "no_gpa_reaches_a_foreign_frame",
            run: guests::no_gpa_reaches_a_foreign_frame::<Svm>,
        },
        TestCase {
            name: "host_frame_addresses_reach_only_guest_ram",
            run: host_frames_unreachable,
        },
        TestCase {
            name: "bad_vmcb_state_is_refused",
            run: bad_vmcb_refused,
        },
        TestCase {
            name: "more_live_vcpus_than_asids",
            run: more_vcpus_than_asids,
        },
        TestCase {
            name: "exit_round_trip_benchmark",
            run: exit_round_trip,
        },
        TestCase {
            name: "dropping_a_vm_returns_every_frame",
            run: teardown_returns_frames,
        },
    ],
};

const MIB: u64 = 1 << 20;

fn config(image: images::Image, ram_bytes: u64, huge_pages: bool, boot_arg: u64) -> VmConfig {
    VmConfig {
        name: image.name,
        image: image.bytes,
        ram_bytes,
        huge_pages,
        boot_arg,
    }
}

fn svm_enables() {
    assert_eq!(
        kernel::launch::backend(),
        Some(Backend::Svm),
        "QEMU -cpu max offers SVM with NPT"
    );
    Svm::enable_on_this_cpu().expect("SVM enables");
    // Idempotent.
    Svm::enable_on_this_cpu().expect("SVM enables twice");
}

/// A guest that names a host frame's address as a GPA reaches its own RAM
/// (or nothing), never the host frame: here the frame is the VM's own NPT
/// root, whose first entry is non-zero while the guest runs.
fn host_frames_unreachable() {
    use hvcore::guest_walk::GuestPhysRead;
    let ram = 128 * MIB;
    let mut vm = Vm::<Svm>::new(config(images::EVIL, ram, true, 0), None).expect("VM");
    let root = vm.memory.tables().root().as_u64();
    alloc::sync::Arc::get_mut(&mut vm)
        .expect("a new VM has one owner")
        .config
        .boot_arg = 12 | (root << 8);
    let reason = vm::run_on_this_cpu(&vm);
    let host_entry = vm
        .memory
        .tables()
        .mem()
        .table(vm.memory.tables().root())
        .expect("root")[0]
        .load(Ordering::Relaxed);
    assert_ne!(host_entry, 0, "the root maps the guest's low memory");
    kernel::println!("host-frame probe: GPA {root:#x} (this VM's NPT root) gave {reason}");
    match reason {
        StopReason::Exited(value) => {
            let mut own = [0u8; 8];
            vm.memory
                .read(GuestPhysAddr::new(root), &mut own)
                .expect("inside RAM");
            assert_eq!(value, u64::from_le_bytes(own), "the guest read its own RAM");
            assert_ne!(value, host_entry, "the guest read the host's table entry");
        }
        StopReason::OutsideRam { gpa, .. } => assert_eq!(gpa, root),
        other => panic!("unexpected stop: {other:?}"),
    }
}

fn bad_vmcb_refused() {
    Svm::enable_on_this_cpu().expect("SVM");
    let vm = Vm::<Svm>::new(config(images::HELLO, 8 * MIB, true, 0), None).expect("VM");
    type Spoiler = fn(&mut SvmVcpu);
    let spoilers: [(&str, Spoiler); 3] = [
        ("SVME", |v| {
            let efer = v.vmcb_mut().get(vmcb::EFER);
            v.vmcb_mut().set(vmcb::EFER, efer & !hvcore::svm::EFER_SVME);
        }),
        ("ASID is 0", |v| v.vmcb_mut().set(vmcb::GUEST_ASID, 0)),
        ("VMRUN intercept", |v| {
            v.vmcb_mut().set(vmcb::INTERCEPT_MISC2, 0)
        }),
    ];
    for (needle, spoil) in spoilers {
        let mut vcpu = vm.create_boot_vcpu().expect("vCPU");
        spoil(&mut vcpu);
        match vcpu.run() {
            Err(e @ EntryError::InvalidState { code, reason }) => {
                kernel::println!("refused as expected: {e}");
                assert_eq!(code as u32, 0xffff_ffff);
                assert!(reason.is_some_and(|r| r.contains(needle)), "{e}");
            }
            other => panic!("VMRUN accepted a VMCB without {needle}: {other:?}"),
        }
    }
    // The same VM still runs with a good VMCB afterwards.
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
}

fn checksum_once(huge_pages: bool) -> u64 {
    let vm = Vm::<Svm>::new(config(images::CHECKSUM, 16 * MIB, huge_pages, 1), None).expect("VM");
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    vm.memory.resident().0
}

fn teardown_returns_frames() {
    // Warm up: the heap grows to what a VM's bookkeeping needs and keeps it.
    checksum_once(false);
    checksum_once(true);
    for huge_pages in [false, true] {
        let before = kernel::mem::frame_stats().free_frames;
        let resident = checksum_once(huge_pages);
        let after = kernel::mem::frame_stats().free_frames;
        kernel::println!(
            "teardown (huge pages {huge_pages}): {resident} guest frames used, free frames {before} -> {after}"
        );
        assert_eq!(
            after, before,
            "guest frames, tables and the VMCB all come back"
        );
    }
}

/// Prints what one VMMCALL exit and return costs (a benchmark: the figure
/// is reported, not judged; QEMU TCG is far slower than hardware).
fn exit_round_trip() {
    const CALLS: u64 = 20_000;
    let vm = Vm::<Svm>::new(config(images::HELLO, 8 * MIB, true, CALLS), None).expect("VM");
    let start_ns = kernel::time::now_ns();
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    let elapsed_ns = kernel::time::now_ns() - start_ns;
    let hypercalls = vm.stats.hypercalls.load(Ordering::Relaxed);
    assert_eq!(hypercalls, CALLS + 1, "every VERSION call and the EXIT");
    kernel::println!(
        "bench: {hypercalls} hypercalls, {} exits in {} ms: {} ns per exit round trip (VM creation included)",
        vm.stats.exits.load(Ordering::Relaxed),
        elapsed_ns / 1_000_000,
        elapsed_ns / vm.stats.exits.load(Ordering::Relaxed).max(1)
    );
}

/// QEMU offers 16 ASIDs: 24 vCPUs alive at once share the last one (and
/// flush it at every entry); every VM still runs correctly, and ASIDs come
/// back when vCPUs go.
fn more_vcpus_than_asids() {
    use alloc::vec::Vec;
    let vms: Vec<_> = (0..24)
        .map(|_| Vm::<Svm>::new(config(images::HELLO, 6 * MIB, true, 0), None).expect("VM"))
        .collect();
    let mut vcpus: Vec<_> = vms
        .iter()
        .map(|vm| vm.create_boot_vcpu().expect("vCPU"))
        .collect();
    // Run them in reverse order of creation, all alive until the end.
    for (vm, vcpu) in vms.iter().zip(vcpus.iter_mut()).rev() {
        let reason = vm::finish(vm, vm::run_vcpu(vm, vcpu));
        assert_eq!(reason, StopReason::Exited(0));
    }
    drop(vcpus);
    // Every private ASID came back: a new VM still gets one and runs.
    assert_eq!(
        vm::run_on_this_cpu(
            &Vm::<Svm>::new(config(images::HELLO, 6 * MIB, true, 0), None).expect("VM")
        ),
        StopReason::Exited(0)
    );
}
