//! Scenario `vmx_aging` (the Bochs bed: one CPU, no timer, a virtual
//! clock): the aging pass and the reclaimer of issue 7 with guests on the
//! VMX backend (EPT). With no timer no aging thread can run while the vCPU
//! is in the guest, so the same per-VM work runs on the vCPU's VM exits
//! (`kernel::aging::on_exits`), interleaved with the guest rather than
//! concurrent with it: that is as far as one CPU allows.
//! * accuracy: the `pattern` guest's ground truth (pages touched per
//!   interval) against the hot set the passes (on exits, and one at each
//!   interval boundary) found; precision and recall printed, at least 99 %;
//! * nothing lost: the `checksum` guest fills, rewrites and verifies its
//!   memory while passes and reclaim run on its exits (its EPT violations
//!   among them): zero mismatches, pages reclaimed and faulted back;
//! * memory comes back: after a reclaim the free-frame count rises by the
//!   frames the reclaimer gave back (heap growth for the store accounted).
#![no_std]
#![no_main]

extern crate alloc;

use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::Ordering;
use hvcore::generations::ColdAfter;
use hvcore::guest_layout as layout;
use hvcore::reclaim::ReclaimTarget;
use kernel::aging::{self, AgingConfig, Managed};
use kernel::testing::aging::{HotSetScorer, memory_comes_back};
use kernel::testing::guests::new_vm;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, GuestEvent, StopReason, Vm, images};
use kernel::vmx::vcpu::Vmx;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "vmx_aging",
    cases: &[
        TestCase {
            name: "the_bed_has_no_timer_so_aging_runs_on_exits",
            run: no_timer,
        },
        TestCase {
            name: "hot_and_cold_sets_match_the_pattern_guest",
            run: accuracy,
        },
        TestCase {
            name: "nothing_lost",
            run: nothing_lost,
        },
        TestCase {
            name: "reclaimed_frames_come_back_to_the_host",
            run: || {
                // Data in one 2 MiB page, 128 pages reclaimed (one huge page split
                // for them; more would only cost emulated time).
                memory_comes_back::<Vmx>(6 * MIB, 128)
            },
        },
    ],
};

const MIB: u64 = 1 << 20;

/// The precondition of this scenario: the bed is in cooperative mode, and
/// the banner says where aging runs.
fn no_timer() {
    assert!(
        !kernel::time::has_timer(),
        "the Bochs bed has no timer (cooperative mode)"
    );
    let line = aging::banner_line();
    kernel::println!("{line}");
    assert!(line.contains("on VM exits"), "{line}");
}

static ACCURACY: spin::Mutex<Option<Managed<Vmx>>> = spin::Mutex::new(None);
static SCORER: HotSetScorer = HotSetScorer::new();

/// A page is hot if a pass since the previous boundary (on exits, or the
/// one the scorer makes there) found it young.
fn accuracy_hook(_vm: &Vm<Vmx>, e: &GuestEvent) {
    if let Some(m) = ACCURACY.lock().clone() {
        SCORER.on_event(&m, e);
    }
}

fn accuracy() {
    // 12 intervals of 1 ms of the virtual clock, 48 hot pages, over 12 MiB
    // (8 MiB of data), 4 KiB pages (a huge page ages as a unit).
    let arg = 12 | (1 << 16) | (48 << 32);
    let vm = new_vm::<Vmx>(images::PATTERN, 12 * MIB, arg, false, Some(&accuracy_hook));
    let m = Managed::new(&vm, None);
    *ACCURACY.lock() = Some(m.clone());
    let config = AgingConfig {
        interval_ms: 1,
        detail_every: 20,
        ..AgingConfig::default()
    };
    assert!(
        aging::on_exits(m.clone(), config, 64),
        "exit work installed"
    );
    assert!(
        !aging::on_exits(m.clone(), config, 64),
        "a VM takes exit work once"
    );
    assert_eq!(vm::run_on_this_cpu(&vm), StopReason::Exited(0));
    *ACCURACY.lock() = None;
    let passes = m.mm.lock().gens.max_seq();
    let a = SCORER.summary();
    kernel::println!(
        "accuracy: {a}; {passes} passes ({} at boundaries, the rest on VM exits; one CPU, no timer)",
        a.intervals + 1
    );
    assert!(a.meets_bar(10), "{a}");
    assert!(
        passes > a.intervals + 1,
        "passes also ran on exits, not only at the boundaries"
    );
}

fn nothing_lost() {
    // Small: every page reclaimed (compressed) and faulted back costs
    // emulated time (about 0.1 s each, measured on the bed).
    let (ram, rounds) = (layout::MIN_RAM_BYTES, 1);
    let vm = new_vm::<Vmx>(images::CHECKSUM, ram, rounds, false, None);
    // Pages not young for 3 passes go, at most 8 per pass. A pass every 16
    // exits: the guest's EPT violations (first touches, then refaults) are
    // most of its exits, so its sweeps and the reclaimer take turns on this
    // one CPU, and a page swept early is reclaimed while the sweep goes on.
    let m = Managed::new(&vm, Some(ReclaimTarget::ColderThan(ColdAfter::Gens(3))));
    let config = AgingConfig {
        interval_ms: 1,
        detail_every: 100,
        pass_lines: false,
        reclaim_max_pages: 8,
        ..AgingConfig::default()
    };
    assert!(aging::on_exits(m.clone(), config, 16));
    let reason = vm::run_on_this_cpu(&vm);
    aging::final_line(&m, &config);
    let mm = m.mm.lock();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    let pages = (ram - layout::DATA_START_GPA) / 4096;
    let result = vm.checksum_result();
    kernel::println!(
        "nothing lost ({rounds} rounds, {} passes on {} exits): {reason}; checksum {result:?}; reclaimed {} pages in total ({} zero, {} compressed, {} raw now), {} refaults, {} rescued, {} clean drops",
        mm.gens.max_seq(),
        vm.stats.exits.load(Ordering::Relaxed),
        s.reclaimed_total,
        st.zero_pages,
        st.compressed_pages,
        st.raw_pages,
        s.refaults,
        s.rescued,
        s.clean_drops
    );
    assert_eq!(reason, StopReason::Exited(0));
    assert_eq!(result, Some((pages, 0)), "every word verified, none wrong");
    assert!(
        s.reclaimed_total >= pages / 2,
        "the reclaimer took a good part of the pages while the guest ran"
    );
    assert!(s.refaults > 0, "and the guest brought them back");
}
