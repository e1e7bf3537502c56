//! A resident-memory limit per VM (issue 7), booted in QEMU TCG `-smp 3`:
//! scenario `test_resident` (a busy `pattern` guest whose whole data region
//! is hot is barely reclaimed; a sleeping `checksum` guest is reclaimed
//! down to the limit and verifies every word; the hypervisor's instruction
//! fetches see the guest's bytes while a reclaimer on another CPU takes the
//! fetched pages again and again). Included by `tests/qemu.rs`
//! (`mod resident;`).

use super::{check_passed, machine};
use std::time::Duration;
use thermocline_tests::qemu::Firmware;
use thermocline_tests::runner::run;

/// A hang detector, not a speed bound: about 22 s on a 2-core host.
const RESIDENT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn resident_limit_keeps_the_busy_guest_and_reclaims_the_sleeper() {
    let mut m = machine("test_resident", Firmware::Bios);
    m.smp = 3;
    let run = run(&m, RESIDENT_TIMEOUT);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("test_resident: {e}"));
    assert_eq!(report.passed.len(), 2, "{run}");
    // The figures; the scenario asserts the limits.
    assert!(run.saw("resident limit 256 pages: busy pattern"), "{run}");
    assert!(
        run.saw("resident limit 256 pages: sleeping checksum"),
        "{run}"
    );
    assert!(
        run.saw("checksum result: 1024 pages checked, 0 mismatches"),
        "{run}"
    );
    assert!(run.saw("fetch while reclaimed:"), "{run}");
}
