//! The guest cases both backends run, written once, generic over the
//! vendor: `test_svm` runs them on SVM (QEMU), `test_vmx_guests` on VMX
//! (full-system Bochs), so neither copy can drift from the other. Each case
//! builds its VMs with [`new_vm`], runs them to their end on this CPU and
//! checks the outcome; a failed check panics (fails the case).
//!
//! Neighbours: `crate::vm` (the VMs), the guests of `guests/` (their
//! contracts in docs/guests.md), `super::smp` (the multi-vCPU cases).

use crate::virt::Extension;
use crate::vm::{self, GuestEvent, Hook, StopReason, Vm, VmConfig, images};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::addr::GuestPhysAddr;
use hvcore::guest_layout as layout;
use hvcore::pte::{EntryFormat, Level};

/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;

/// A VM of `image` with `ram_bytes` of RAM, `boot_arg` in RSI, 2 MiB pages
/// where it can when `huge_pages`, `hook` on its guest events: the one
/// helper every scenario builds its single-vCPU VMs with.
///
/// # Panics
/// When the VM cannot be made (a test set-up error).
pub fn new_vm<E: Extension>(
    image: images::Image,
    ram_bytes: u64,
    boot_arg: u64,
    huge_pages: bool,
    hook: Option<Hook<E>>,
) -> Arc<Vm<E>> {
    let config = VmConfig {
        name: image.name,
        image: image.bytes,
        ram_bytes,
        huge_pages,
        boot_arg,
    };
    Vm::new(config, hook).expect("VM")
}

/// Pages of the `checksum` guest's data region in `ram_bytes` of RAM.
pub fn data_pages(ram_bytes: u64) -> u64 {
    (ram_bytes - layout::DATA_START_GPA) / 4096
}

/// `hello` runs, makes its hypercalls and exits, misbehaving in nothing.
pub fn hello_runs<E: Extension>() {
    let vm = new_vm::<E>(images::HELLO, 8 * MIB, 0, true, None);
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    assert!(vm.stats.hypercalls.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        vm.stats.reports.load(Ordering::Relaxed),
        0,
        "hello misbehaves in nothing"
    );
}

/// Without huge pages, nested page faults back the `checksum` guest's RAM
/// page by page on first touch: nothing of the data region before it runs,
/// one fault per data page at least, 4 KiB frames and leaves only, every
/// data page resident after.
pub fn fault_in_4k<E: Extension>() {
    let ram = 12 * MIB;
    let vm = new_vm::<E>(images::CHECKSUM, ram, 1, false, None);
    let before = vm.memory.resident().0;
    assert!(
        vm.memory
            .accessed_dirty(GuestPhysAddr::new(layout::DATA_START_GPA))
            .is_none(),
        "data is not backed before the guest runs"
    );
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
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
            assert_eq!(level, Level::PAGE_4K);
            leaves += 1;
        });
    assert_eq!(leaves, data_pages(ram), "every data page backed");
}

/// With huge pages, the whole 2 MiB-aligned data region is backed by 2 MiB
/// leaves, one fault per 2 MiB at most.
pub fn fault_in_2m<E: Extension>() {
    let ram = 16 * MIB;
    let vm = new_vm::<E>(images::CHECKSUM, ram, 1, true, None);
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    assert_eq!(vm.checksum_result(), Some((data_pages(ram), 0)));
    let mut huge = 0;
    vm.memory
        .tables()
        .for_each_leaf(layout::DATA_START_GPA, ram, |_, level, _| {
            assert_eq!(
                level,
                Level::PAGE_2M,
                "the data region is 2 MiB aligned and whole"
            );
            huge += 1;
        });
    assert_eq!(huge, (ram - layout::DATA_START_GPA) / (2 * MIB));
    let served = vm.stats.faults_served.load(Ordering::Relaxed);
    assert!(served <= ram / (2 * MIB), "one fault per 2 MiB: {served}");
}

/// Intervals compared by [`ad_hook`], and the pages whose A/D disagreed.
static AD_CHECKED: AtomicU64 = AtomicU64::new(0);
static AD_FAILURES: AtomicU64 = AtomicU64::new(0);

/// At each `REPORT_TOUCHED` (the guest waits in the exit): the second-level
/// A and D bits of the data region must be set on exactly the pages the
/// guest says it touched (it writes every page it touches), and outside
/// the report only the layout's pages (boot tables, stack, image; page 0 is
/// never used) may be accessed. Then every bit is cleared; the VM asks its
/// vCPUs for a TLB flush after the hook (SVM: TLB control; VMX: INVEPT), so
/// the next interval's accesses set them again.
fn ad_hook<E: Extension>(vm: &Vm<E>, e: &GuestEvent) {
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
            if a != touched || d != touched {
                if wrong < 4 {
                    crate::println!(
                        "A/D mismatch: interval {interval} GPA {:#x}: touched {touched}, A {a}, D {d}",
                        gpa.as_u64()
                    );
                }
                wrong += 1;
            }
        }
        vm.memory.tables().for_each_leaf(
            0,
            <E::Format as EntryFormat>::space_size(),
            |gpa, _, entry| {
                let accessed = entry & <E::Format as EntryFormat>::ACCESSED != 0;
                let in_report = gpa >= first_pfn * 4096 && gpa < (first_pfn + page_count) * 4096;
                if accessed && !in_report && !(4096..layout::DATA_START_GPA).contains(&gpa) {
                    wrong += 1;
                }
            },
        );
        AD_CHECKED.fetch_add(1, Ordering::Relaxed);
        AD_FAILURES.fetch_add(wrong, Ordering::Relaxed);
    }
    vm.memory.clear_accessed_dirty();
}

/// The `pattern` guest, 6 intervals of `interval_ms` (of whatever clock
/// `TIME_NS` gives: the virtual one without a timer) with 48 hot pages, so
/// the hot set moves once: A/D exact in each of the 5 intervals after the
/// first ([`ad_hook`]).
pub fn ad_bits_match_the_pages_touched<E: Extension>(interval_ms: u64) {
    let arg = 6 | (interval_ms << 16) | (48 << 32);
    let hook: Hook<E> = Box::leak(Box::new(ad_hook::<E>));
    let vm = new_vm::<E>(images::PATTERN, 12 * MIB, arg, false, Some(hook));
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    let checked = AD_CHECKED.load(Ordering::Relaxed);
    let failures = AD_FAILURES.load(Ordering::Relaxed);
    crate::println!("A/D check: {checked} intervals compared, {failures} mismatched pages");
    assert_eq!(checked, 5);
    assert_eq!(failures, 0);
}

/// After the `checksum` guest ran (4 KiB and 2 MiB pages), every present
/// leaf of the whole guest-physical space lies inside RAM and maps a frame
/// the VM owns, none twice (`GuestMemory::check_isolation`).
pub fn no_gpa_reaches_a_foreign_frame<E: Extension>() {
    for (huge, ram) in [(false, 10 * MIB), (true, 14 * MIB)] {
        let vm = new_vm::<E>(images::CHECKSUM, ram, 1, huge, None);
        assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
        let report = vm
            .memory
            .check_isolation()
            .unwrap_or_else(|e| panic!("isolation: {e}"));
        crate::println!(
            "isolation: {} leaves map {} pages, all inside RAM and on the VM's {} frames",
            report.leaves,
            report.pages,
            report.frames
        );
        assert!(report.pages >= data_pages(ram));
    }
}

/// The `checksum` guest writes then verifies every data page: after it,
/// every data leaf is accessed and dirty, and no leaf lies past RAM.
pub fn ad_bits_after_checksum<E: Extension>() {
    let ram = 10 * MIB;
    let vm = new_vm::<E>(images::CHECKSUM, ram, 1, false, None);
    vm.memory.clear_accessed_dirty();
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    let (mut data, mut wrong) = (0u64, 0u64);
    vm.memory.tables().for_each_leaf(
        0,
        <E::Format as EntryFormat>::space_size(),
        |gpa, _, entry| {
            let a = entry & <E::Format as EntryFormat>::ACCESSED != 0;
            let d = entry & <E::Format as EntryFormat>::DIRTY != 0;
            if gpa >= layout::DATA_START_GPA {
                data += 1;
                wrong += u64::from(!(a && d));
            }
            wrong += u64::from(gpa >= ram);
        },
    );
    crate::println!(
        "{} A/D after checksum: {data} data leaves, {wrong} wrong",
        E::NAME
    );
    assert_eq!(data, data_pages(ram));
    assert_eq!(wrong, 0);
}
