//! One test per in-emulator scenario: each boots a kernel image that
//! `cargo xtask test` built (directory in `THERMOCLINE_IMAGES`) in QEMU and
//! checks the outcome and the console protocol.
//!
//! They are `#[ignore]`d for plain `cargo test` (no images there); xtask runs
//! them with `--include-ignored`. The runner self-tests at the end prove that
//! a failing, crashing or hanging kernel is not mistaken for a pass.

use std::path::PathBuf;
use std::time::Duration;
use thermocline_tests::protocol::Report;
use thermocline_tests::qemu::{Firmware, Machine, detect_accel};
use thermocline_tests::runner::{Outcome, Run, run, run_until};

/// The aging thread and the reclaimer (issue 7).
mod aging;
/// Linux guests (issue 12).
mod linux;
/// The platform layer's scenarios (issue 3), sharing the helpers below.
mod platform;
/// A resident-memory limit per VM (issue 7).
mod resident;
/// The SVM backend's scenarios (issue 5).
mod svm;

/// Generous: two QEMUs share two cores in CI, and OVMF boots slowly under TCG.
const BIOS_TIMEOUT: Duration = Duration::from_secs(90);
const UEFI_TIMEOUT: Duration = Duration::from_secs(180);

/// The first banner line (`kernel/src/banner.rs`).
const BANNER: &str = "Thermocline 0.1.0:";

fn image(kernel: &str, firmware: Firmware) -> PathBuf {
    let dir = std::env::var_os("THERMOCLINE_IMAGES")
        .expect("THERMOCLINE_IMAGES is not set: run these tests with `cargo xtask test`");
    let path = PathBuf::from(dir).join(format!("{kernel}.{}", firmware.image_suffix()));
    assert!(
        path.is_file(),
        "missing image {}: run `cargo xtask test`",
        path.display()
    );
    path
}

fn machine(kernel: &str, firmware: Firmware) -> Machine {
    Machine::new(image(kernel, firmware), firmware, detect_accel().accel)
}

fn boot(kernel: &str, firmware: Firmware) -> Run {
    let timeout = match firmware {
        Firmware::Bios => BIOS_TIMEOUT,
        Firmware::Uefi => UEFI_TIMEOUT,
    };
    run(&machine(kernel, firmware), timeout)
}

/// The pass criterion for a scenario: the success exit *and* a complete,
/// all-passing console protocol. The runner self-tests use this same function.
fn check_passed(run: &Run) -> Result<Report, String> {
    let report = run.report();
    if run.outcome != Outcome::Passed {
        return Err(format!("scenario did not pass: {run}"));
    }
    if !report.all_passed() {
        return Err(format!(
            "exit code says pass but the console disagrees ({report:?}): {run}"
        ));
    }
    Ok(report)
}

fn expect_pass(kernel: &str, firmware: Firmware, cases: usize) -> Run {
    let run = boot(kernel, firmware);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.passed.len(), cases, "{run}");
    run
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn basic_bios() {
    let run = expect_pass("test_basic", Firmware::Bios, 8);
    assert!(run.saw(BANNER), "banner missing: {run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn basic_uefi() {
    let run = expect_pass("test_basic", Firmware::Uefi, 8);
    assert!(run.saw(BANNER), "banner missing: {run}");
}

fn hypervisor_banner(firmware: Firmware) {
    let timeout = match firmware {
        Firmware::Bios => BIOS_TIMEOUT,
        Firmware::Uefi => UEFI_TIMEOUT,
    };
    let run = run_until(
        &machine("thermocline", firmware),
        timeout,
        Some("  backend  "),
    );
    assert_eq!(run.outcome, Outcome::Stopped, "{run}");
    let banner = run.time_to(BANNER).expect("banner line");
    eprintln!(
        "{firmware:?}: image to banner {:.3} s (QEMU spawn to first banner line)",
        banner.as_secs_f64()
    );
    for what in ["  cpu ", "  vmx ", "  svm ", "  backend "] {
        assert!(run.saw(what), "banner line `{what}` missing: {run}");
    }
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn hypervisor_banner_bios() {
    hypervisor_banner(Firmware::Bios);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn hypervisor_banner_uefi() {
    hypervisor_banner(Firmware::Uefi);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn should_panic_reports_location_and_message() {
    let run = boot("test_should_panic", Firmware::Bios);
    assert_eq!(run.outcome, Outcome::Failed, "{run}");
    let report = run.report();
    let panic = report.panic.clone().unwrap_or_default();
    assert!(
        panic.starts_with("at kernel/src/bin/test_should_panic.rs:")
            && panic.ends_with(": deliberate panic: the harness expects this message"),
        "panic line: {panic:?}\n{run}"
    );
    assert_eq!(report.passed, ["before_the_panic"], "{run}");
    assert_eq!(report.failed, ["panics_on_purpose"], "{run}");
    assert_eq!(report.summary, Some((1, 1)), "{run}");
    assert!(!run.saw("never_reached"), "{run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn page_fault_prints_readable_report() {
    let run = boot("test_page_fault", Firmware::Bios);
    assert_eq!(run.outcome, Outcome::Failed, "{run}");
    let report = run.report();
    let text = report.exception.join("\n");
    for needle in [
        "#PF page fault (vector 14) on cpu0",
        "error code 0x2 (not present, write, supervisor)",
        "CR2=0x00000deadbeef000",
        "RIP=0x",
        "RAX=",
        "R15=",
    ] {
        assert!(
            text.contains(needle),
            "report lacks `{needle}`:\n{text}\n{run}"
        );
    }
    assert_eq!(report.failed, ["write_to_unmapped_address"], "{run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn double_fault_is_handled_on_its_own_stack() {
    let run = boot("test_double_fault", Firmware::Bios);
    assert_eq!(
        run.outcome,
        Outcome::Failed,
        "a triple fault would crash: {run}"
    );
    let report = run.report();
    assert!(
        report
            .exception
            .iter()
            .any(|l| l.starts_with("#DF double fault (vector 8)")),
        "{run}"
    );
    assert_eq!(report.failed, ["stack_overflow"], "{run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn runner_selftest_failing_kernel_is_reported_failed() {
    let run = boot("test_runner_selftest_fail", Firmware::Bios);
    assert_eq!(run.outcome, Outcome::Failed, "{run}");
    let err = check_passed(&run).expect_err("a failing kernel must not pass");
    assert!(err.contains("did not pass"), "{err}");
    let report = run.report();
    assert_eq!(report.failed, ["fails_an_assertion"], "{run}");
    assert_eq!(report.passed, ["passes"], "{run}");
    assert!(
        report
            .panic
            .unwrap_or_default()
            .contains("this kernel fails on purpose")
    );
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn runner_selftest_triple_fault_is_a_crash_with_console_tail() {
    let run = boot("test_triple_fault", Firmware::Bios);
    assert_eq!(run.outcome, Outcome::Crashed(Some(0)), "{run}");
    let err = check_passed(&run).expect_err("a crash must not pass");
    assert!(err.contains("crashed: QEMU exit status 0"), "{err}");
    assert!(
        err.contains("| [scenario] triple_fault cases=1"),
        "tail in report: {err}"
    );
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn runner_selftest_hang_times_out_and_is_killed() {
    // Long enough for the kernel to reach its hang on a loaded CI machine
    // (boot alone took over 5 s there), short enough not to slow the suite.
    let timeout = Duration::from_secs(20);
    let run = run(&machine("test_hang", Firmware::Bios), timeout);
    assert_eq!(run.outcome, Outcome::TimedOut(timeout), "{run}");
    assert!(run.elapsed < timeout + Duration::from_secs(10), "{run}");
    let err = check_passed(&run).expect_err("a hang must not pass");
    assert!(err.contains("timed out after 20.0 s"), "{err}");
    assert!(
        err.contains("| [scenario] hang cases=1"),
        "the kernel must have reached its hang before the deadline: {err}"
    );
}
