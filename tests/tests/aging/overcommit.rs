//! Overcommit (issue 7, item 5), booted in QEMU TCG `-smp 3` (and 2) with
//! a small host (`-m 32M`: overcommit is relative, and a small host keeps
//! each scenario to seconds): `test_overcommit` (two VMs of more than the host
//! each, mostly cold and compressible, finish intact with reclaim driven by
//! host pressure) and `test_overcommit_pause` (the VMs' memory cannot
//! shrink: the big VM is paused with the documented message, the small one
//! finishes, the big one is still paused at the end). Included by
//! `aging/mod.rs` (`mod overcommit;`).

use super::super::{check_passed, machine};
use std::time::Duration;
use thermocline_tests::checks::{check_all_finish, check_pause};
use thermocline_tests::qemu::Firmware;
use thermocline_tests::runner::{Run, run};

/// The host memory QEMU is given; the guests' RAM is checked against it.
const HOST_MIB: u64 = 32;

/// A hang detector, not a speed bound: about 12-18 s and 5 s on a loaded
/// 2-core host.
const OVERCOMMIT_TIMEOUT: Duration = Duration::from_secs(240);

fn boot(kernel: &str, smp: u32) -> Run {
    let mut m = machine(kernel, Firmware::Bios);
    m.smp = smp;
    m.mem = format!("{HOST_MIB}M");
    run(&m, OVERCOMMIT_TIMEOUT)
}

/// Two VMs of more than the host each finish intact, with `smp` CPUs (with
/// two, both vCPUs share CPU 1 and the aging thread has CPU 0).
fn twice_the_host(smp: u32) {
    let run = boot("test_overcommit", smp);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("test_overcommit -smp {smp}: {e}"));
    assert_eq!(report.passed.len(), 1, "{run}");
    check_all_finish(&run, HOST_MIB);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn overcommit_twice_the_host_all_vms_finish_intact() {
    twice_the_host(3);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn overcommit_twice_the_host_all_vms_finish_intact_on_two_cpus() {
    twice_the_host(2);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn overcommit_hot_sets_over_the_host_pause_one_vm() {
    let run = boot("test_overcommit_pause", 3);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("test_overcommit_pause: {e}"));
    assert_eq!(report.passed.len(), 1, "{run}");
    check_pause(&run);
}
