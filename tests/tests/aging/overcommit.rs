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

/// The console line that starts with `prefix`, if any.
fn line<'a>(run: &'a Run, prefix: &str) -> Option<&'a str> {
    run.console
        .iter()
        .map(|l| l.text.as_str())
        .find(|t| t.starts_with(prefix))
}

/// The number right after `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Whether `text` is a pause line of VM `vm` in the documented format
/// (docs/ARCHITECTURE.md, "Overcommit"):
/// `vm NAME: paused: no free host frame for GPA 0x... (free F, reserved K, cold pages R)`.
fn is_pause_line(text: &str, vm: &str) -> bool {
    let Some(rest) = text.strip_prefix(&format!("vm {vm}: paused: no free host frame for GPA 0x"))
    else {
        return false;
    };
    let Some((gpa, figures)) = rest.split_once(' ') else {
        return false;
    };
    gpa.chars().all(|c| c.is_ascii_hexdigit())
        && number_after(figures, "(free ").is_some()
        && number_after(figures, ", reserved ").is_some()
        && number_after(figures, ", cold pages ").is_some()
        && figures.ends_with(')')
}

/// Two VMs of more than the host each finish intact, with `smp` CPUs (with
/// two, both vCPUs share CPU 1 and the aging thread has CPU 0).
fn twice_the_host(smp: u32) {
    let run = boot("test_overcommit", smp);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("test_overcommit -smp {smp}: {e}"));
    assert_eq!(report.passed.len(), 1, "{run}");
    // The guests' RAM adds up to at least twice what QEMU was given.
    let summary = line(&run, "overcommit: 2 VMs x ").unwrap_or_else(|| panic!("{run}"));
    let total_mib = number_after(summary, " = ").unwrap_or_else(|| panic!("{summary}"));
    assert!(total_mib >= 2 * HOST_MIB, "{summary}");
    for vm in ["oc-a", "oc-b"] {
        // Finished, nothing lost, and reclaimed (the scenario asserts how
        // much).
        let l = line(
            &run,
            &format!("overcommit {vm}: guest exited with code 0x0; checksum Some(("),
        )
        .unwrap_or_else(|| panic!("{vm} did not finish: {run}"));
        assert!(l.contains(", 0)); reclaimed "), "{l}");
        assert!(number_after(l, "reclaimed ").is_some_and(|n| n > 0), "{l}");
        // The report shows it: the final `TCR reclaim` line of the VM.
        let r = line(&run, &format!("TCR reclaim vm={vm} ")).unwrap_or_else(|| panic!("{run}"));
        assert!(number_after(r, " freed=").is_some_and(|n| n > 0), "{r}");
    }
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
    assert!(
        run.console.iter().any(|l| is_pause_line(&l.text, "big")),
        "no pause line of the big VM in the documented format: {run}"
    );
    assert!(
        !run.console.iter().any(|l| is_pause_line(&l.text, "small")),
        "the small VM was paused: {run}"
    );
    assert!(run.saw("vm small: guest exited with code 0x0"), "{run}");
    assert!(
        run.saw("vm small: checksum result: 1024 pages checked, 0 mismatches"),
        "{run}"
    );
    assert!(
        run.saw("the big VM is still paused for memory at the end"),
        "{run}"
    );
    assert!(run.saw("vm big: stopped while paused for memory"), "{run}");
    // Why it could never resume: its dense data does not compress, so
    // reclaim under pressure leaves it resident.
    assert!(
        run.console.iter().any(|l| l
            .text
            .starts_with("vm big: stopped while paused for memory")
            && l.text.contains("the cold pages do not compress")),
        "the stop line does not say why the memory never came back: {run}"
    );
}

#[test]
fn pause_lines_are_recognised() {
    assert!(is_pause_line(
        "vm big: paused: no free host frame for GPA 0xfe5000 (free 1280, reserved 1280, cold pages 3140)",
        "big"
    ));
    assert!(!is_pause_line(
        "vm big: paused: no free host frame for GPA 0xfe5000 (free 1280, reserved 1280)",
        "big"
    ));
    assert!(!is_pause_line(
        "vm big: paused: no free host frame for the fault at GPA 0xfe5000 (1280 frames free); waiting for memory",
        "big"
    ));
    assert!(!is_pause_line(
        "vm small: paused: no free host frame for GPA 0xfe5000 (free 1, reserved 2, cold pages 3)",
        "big"
    ));
}
