//! The aging thread and the reclaimer with guests on the SVM backend
//! (issue 7), booted in QEMU TCG with `-cpu max`: scenario `test_aging`
//! (pattern-guest accuracy with the aging thread on CPU 0 and the guest on
//! the last CPU; reclaimed frames come back to the host and the guest reads
//! everything back intact). Included by `tests/qemu.rs` (`mod aging;`).

/// Host memory overcommit: reclaim under host pressure, pause and resume.
mod overcommit;

use super::{check_passed, machine};
use std::time::Duration;

/// A hang detector, not a speed bound: `nothing_lost` alone takes about 45 s
/// on an idle 2-core host (reclaim and refaults of every page, three rounds,
/// under TCG), and CI runs two QEMUs at once.
const AGING_TIMEOUT: Duration = Duration::from_secs(300);
use thermocline_tests::qemu::Firmware;
use thermocline_tests::runner::run;

fn aging_on(smp: u32) {
    let mut m = machine("test_aging", Firmware::Bios);
    m.smp = smp;
    let run = run(&m, AGING_TIMEOUT);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("test_aging -smp {smp}: {e}"));
    assert_eq!(report.passed.len(), 3, "{run}");
    // The figures; the scenario itself asserts at least 99 % each.
    assert!(run.saw("accuracy: "), "{run}");
    assert!(run.saw("memory comes back: reclaimed"), "{run}");
    // Reclaim and fault-in concurrent with the guest on another CPU; the
    // scenario asserts zero mismatches and that pages were reclaimed and
    // refaulted.
    assert!(run.saw("nothing lost (3 rounds in "), "{run}");
    assert!(
        run.saw("checksum result: 3072 pages checked, 0 mismatches"),
        "{run}"
    );
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn aging_and_reclaim_with_two_cpus() {
    aging_on(2);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn aging_and_reclaim_with_three_cpus() {
    aging_on(3);
}
