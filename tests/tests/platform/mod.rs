//! The platform layer's scenarios (issue 3): `test_platform` on one, two and
//! four CPUs, an exception on an application processor, and heap exhaustion.
//! Included by `tests/qemu.rs` (`mod platform;`) so it shares its helpers.

use super::{BIOS_TIMEOUT, UEFI_TIMEOUT, check_passed, machine};
use thermocline_tests::qemu::Firmware;
use thermocline_tests::runner::{Outcome, run};

/// Cases in `kernel/src/bin/test_platform.rs`.
const PLATFORM_CASES: usize = 8;

fn platform_on(smp: u32, firmware: Firmware) {
    let mut m = machine("test_platform", firmware);
    m.smp = smp;
    let timeout = match firmware {
        Firmware::Bios => BIOS_TIMEOUT,
        Firmware::Uefi => UEFI_TIMEOUT,
    };
    let run = run(&m, timeout);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("-smp {smp}: {e}"));
    assert_eq!(report.passed.len(), PLATFORM_CASES, "{run}");
    // Every CPU QEMU was given is online and reported its APIC ID.
    assert!(
        run.saw(&format!("[platform] cpus={smp} timer=true")),
        "{run}"
    );
    assert!(
        run.saw(&format!("  cpus     {smp} online:")),
        "banner: {run}"
    );
    for cpu in 0..smp {
        assert!(
            run.saw(&format!("[platform] cpu{cpu} apic_id=")),
            "cpu{cpu}: {run}"
        );
    }
    assert!(run.saw("  timer    TSC "), "banner timer line: {run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn platform_smp1() {
    platform_on(1, Firmware::Bios);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn platform_smp2() {
    platform_on(2, Firmware::Bios);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn platform_smp4() {
    platform_on(4, Firmware::Bios);
}

/// The UEFI memory map and firmware leave different low memory and ACPI
/// tables: the trampoline and the MADT must work there too.
#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn platform_smp4_uefi() {
    platform_on(4, Firmware::Uefi);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn exception_on_an_ap_is_reported_like_on_the_boot_cpu() {
    let run = run(&machine("test_ap_exception", Firmware::Bios), BIOS_TIMEOUT);
    assert_eq!(run.outcome, Outcome::Failed, "{run}");
    let report = run.report();
    let text = report.exception.join("\n");
    for needle in [
        "#UD invalid opcode (vector 6) on cpu1",
        "RIP=0x",
        "RAX=",
        "R15=",
    ] {
        assert!(
            text.contains(needle),
            "report lacks `{needle}`:\n{text}\n{run}"
        );
    }
    assert_eq!(report.passed, ["second_cpu_is_online"], "{run}");
    assert_eq!(report.failed, ["invalid_opcode_on_cpu1"], "{run}");
    assert!(!run.saw("was not reported"), "{run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn heap_exhaustion_panics_with_the_sizes() {
    let run = run(
        &machine("test_heap_exhausted", Firmware::Bios),
        BIOS_TIMEOUT,
    );
    assert_eq!(run.outcome, Outcome::Failed, "{run}");
    let report = run.report();
    let panic = report.panic.clone().unwrap_or_default();
    assert!(
        panic.contains("kernel heap: cannot allocate 3145728 bytes (align 1)"),
        "panic line: {panic:?}\n{run}"
    );
    assert_eq!(report.passed, ["small_allocations_work"], "{run}");
    assert_eq!(
        report.failed,
        ["oversized_allocation_panics_with_sizes"],
        "{run}"
    );
}
