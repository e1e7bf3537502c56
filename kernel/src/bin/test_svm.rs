//! Scenario `svm`: guests run on the SVM backend with nested paging.
//! `hello` runs and exits; nested page faults back RAM on first touch (4 KiB
//! and 2 MiB); NPT accessed/dirty bits are set on exactly the pages the
//! `pattern` guest reports touching; the `checksum` guest sees its data
//! intact; no guest-physical address reaches a frame the VM does not own;
//! a VMCB with bad state is refused with a message naming the field.
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::addr::GuestPhysAddr;
use hvcore::cpu_features::Backend;
use hvcore::guest_layout as layout;
use hvcore::npt::Npt;
use hvcore::pte::EntryFormat;
use hvcore::table::TableMemory;
use kernel::svm::Svm;
use kernel::svm::{SvmVcpu, vmcb};
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{
    self, EntryError, Extension, GuestEvent, StopReason, VirtCpu, Vm, VmConfig, images,
};

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
            run: hello_runs,
        },
        TestCase {
            name: "npf_backs_ram_on_first_touch_4k",
            run: fault_in_4k,
        },
        TestCase {
            name: "npf_backs_ram_with_2m_pages",
            run: fault_in_2m,
        },
        TestCase {
            name: "npt_ad_bits_match_the_pages_touched",
            run: ad_bits_exact,
        },
        TestCase {
            name: "no_gpa_reaches_a_foreign_frame",
            run: isolation,
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

fn hello_runs() {
    let vm = Vm::<Svm>::new(config(images::HELLO, 8 * MIB, true, 0), None).expect("VM");
    let reason = vm::run_on_this_cpu(&vm);
    assert_eq!(reason, StopReason::Exited(0));
    assert!(vm.stats.hypercalls.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        vm.stats.reports.load(Ordering::Relaxed),
        0,
        "hello misbehaves in nothing"
    );
}

fn data_pages(ram_bytes: u64) -> u64 {
    (ram_bytes - layout::DATA_START_GPA) / 4096
}

fn fault_in_4k() {
    let ram = 12 * MIB;
    let vm = Vm::<Svm>::new(config(images::CHECKSUM, ram, false, 1), None).expect("VM");
    let before = vm.memory.resident().0;
    assert!(
        vm.memory
            .accessed_dirty(GuestPhysAddr::new(layout::DATA_START_GPA))
            .is_none(),
        "data is not backed before the guest runs"
    );
    let reason = vm::run_on_this_cpu(&vm);
    assert_eq!(reason, StopReason::Exited(0));
    assert_eq!(vm.checksum_result(), Some((data_pages(ram), 0)));
    let served = vm.stats.faults_served.load(Ordering::Relaxed);
    assert!(
        served >= data_pages(ram),
        "one fault per data page at least: {served} < {}",
        data_pages(ram)
    );
    let (frames, bytes) = vm.memory.resident();
    assert_eq!(bytes, frames * 4096, "4 KiB frames only");
    assert!(frames >= before + data_pages(ram));
    let mut leaves = 0;
    vm.memory
        .tables()
        .for_each_leaf(layout::DATA_START_GPA, ram, |_, level, _| {
            assert_eq!(level, 1);
            leaves += 1;
        });
    assert_eq!(leaves, data_pages(ram), "every data page backed");
}

fn fault_in_2m() {
    let ram = 16 * MIB;
    let vm = Vm::<Svm>::new(config(images::CHECKSUM, ram, true, 1), None).expect("VM");
    let reason = vm::run_on_this_cpu(&vm);
    assert_eq!(reason, StopReason::Exited(0));
    assert_eq!(vm.checksum_result(), Some((data_pages(ram), 0)));
    let mut huge = 0;
    vm.memory
        .tables()
        .for_each_leaf(layout::DATA_START_GPA, ram, |_, level, _| {
            assert_eq!(level, 2, "the data region is 2 MiB aligned and whole");
            huge += 1;
        });
    assert_eq!(huge, (ram - layout::DATA_START_GPA) / (2 * MIB));
    let served = vm.stats.faults_served.load(Ordering::Relaxed);
    assert!(served <= ram / (2 * MIB), "one fault per 2 MiB: {served}");
}

/// Set by the hook: intervals checked, and the first mismatch.
static AD_CHECKED: AtomicU64 = AtomicU64::new(0);
static AD_FAILURES: AtomicU64 = AtomicU64::new(0);

/// At each `REPORT_TOUCHED`, the guest is stopped in the exit: compare the
/// NPT A/D bits of the data region with the guest's bitmap, then clear
/// them all (the vCPU flushes the TLB before resuming).
fn ad_hook(vm: &Vm<Svm>, e: &GuestEvent) {
    let GuestEvent::Touched {
        interval,
        first_pfn,
        page_count,
        bitmap,
    } = e
    else {
        return;
    };
    // Interval 0 starts before the first clear: only later ones are exact.
    if *interval > 0 {
        let mut wrong = 0;
        for i in 0..*page_count {
            let touched = bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0;
            let gpa = GuestPhysAddr::new((first_pfn + i) * 4096);
            let (a, d) = vm.memory.accessed_dirty(gpa).unwrap_or((false, false));
            // The pattern guest writes every page it touches.
            if a != touched || d != touched {
                if wrong < 4 {
                    kernel::println!(
                        "A/D mismatch: interval {interval} GPA {:#x}: touched {touched}, A {a}, D {d}",
                        gpa.as_u64()
                    );
                }
                wrong += 1;
            }
        }
        // Outside the data region only the layout's pages (boot tables,
        // stack, image) may be accessed; page 0 is never used.
        vm.memory
            .tables()
            .for_each_leaf(0, Npt::space_size(), |gpa, _, entry| {
                let accessed = entry & Npt::ACCESSED != 0;
                let in_report = gpa >= first_pfn * 4096 && gpa < (first_pfn + page_count) * 4096;
                if accessed && !in_report && !(4096..layout::DATA_START_GPA).contains(&gpa) {
                    wrong += 1;
                }
            });
        AD_CHECKED.fetch_add(1, Ordering::Relaxed);
        AD_FAILURES.fetch_add(wrong, Ordering::Relaxed);
    }
    vm.memory.clear_accessed_dirty();
}

fn ad_bits_exact() {
    let ram = 12 * MIB;
    // 6 intervals of 20 ms, 48 hot pages: two phases, so the hot set moves.
    let arg = 6 | (20 << 16) | (48 << 32);
    let vm = Vm::<Svm>::new(config(images::PATTERN, ram, false, arg), Some(&ad_hook)).expect("VM");
    let reason = vm::run_on_this_cpu(&vm);
    assert_eq!(reason, StopReason::Exited(0));
    let checked = AD_CHECKED.load(Ordering::Relaxed);
    kernel::println!(
        "A/D check: {checked} intervals compared, {} mismatched pages",
        AD_FAILURES.load(Ordering::Relaxed)
    );
    assert_eq!(checked, 5);
    assert_eq!(AD_FAILURES.load(Ordering::Relaxed), 0);
}

fn isolation() {
    for (huge, ram) in [(false, 10 * MIB), (true, 14 * MIB)] {
        let vm = Vm::<Svm>::new(config(images::CHECKSUM, ram, huge, 1), None).expect("VM");
        assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
        let report = vm
            .memory
            .check_isolation()
            .unwrap_or_else(|e| panic!("isolation: {e}"));
        kernel::println!(
            "isolation: {} leaves map {} pages, all inside RAM and on the VM's {} frames",
            report.leaves,
            report.pages,
            report.frames
        );
        assert!(report.pages >= data_pages(ram));
    }
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
