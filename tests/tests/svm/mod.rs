//! The SVM backend's scenarios (issue 5), booted in QEMU TCG with
//! `-cpu max` (SVM with nested paging): `test_svm` (hello, fault-in, exact
//! NPT A/D bits, isolation, bad VMCB refused), `test_svm_evil` (every evil
//! guest scenario, on one and two CPUs), `test_svm_smp` (one VM per CPU at
//! once, on two and four CPUs), `test_svm_vcpus` (VMs with several vCPUs:
//! the `smp` guest, HLT wait and wake, whole-VM stops, string I/O).
//! Included by `tests/qemu.rs` (`mod svm;`).
//!
//! Under KVM (`-cpu host`) these run only where the host offers nested SVM;
//! the scenarios themselves check that the backend is SVM.

use super::{BIOS_TIMEOUT, check_passed, machine};
use thermocline_tests::qemu::Firmware;
use thermocline_tests::runner::run;

fn expect_pass_on(kernel: &str, smp: u32, cases: usize) -> thermocline_tests::runner::Run {
    let mut m = machine(kernel, Firmware::Bios);
    m.smp = smp;
    let run = run(&m, BIOS_TIMEOUT);
    let report = check_passed(&run).unwrap_or_else(|e| panic!("{kernel} -smp {smp}: {e}"));
    assert_eq!(report.passed.len(), cases, "{run}");
    run
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn svm_guests_run_with_nested_paging() {
    let run = expect_pass_on("test_svm", 2, 12);
    // The guest's own words reach the console with its VM's name.
    assert!(
        run.saw("[vm hello] hello from a Thermocline guest"),
        "{run}"
    );
    assert!(
        run.saw("A/D check: 5 intervals compared, 0 mismatched pages"),
        "{run}"
    );
    assert!(run.saw("all inside RAM and on the VM's"), "{run}");
    assert!(
        run.saw(
            "refused as expected: the CPU refused the guest state (exit code 0xffffffff): EFER.SVME"
        ),
        "{run}"
    );
}

fn evil_on(smp: u32) {
    let run = expect_pass_on("test_svm_evil", smp, 10);
    // One line per misbehaviour, naming the VM, what and where.
    for line in [
        "vm evil: guest read outside its RAM at GPA 0x801000 (RIP ",
        "vm evil: guest wrote outside its RAM at GPA 0x4000000000 (RIP ",
        "vm evil: guest read unemulated port 0x60 (1 bytes) at RIP ",
        "vm evil: guest read unknown MSR 0xdead0000 at RIP ",
        "vm evil: guest executed VMRUN (SVM instruction) at RIP ",
        "vm evil: guest executed VMXON (VMX instruction) at RIP ",
        "vm evil: guest triple-faulted (shutdown) at RIP ",
        "vm evil: bad hypercall 0x1234 (args ",
        "vm evil: guest wrote 0x406a0 to CR4 at RIP ",
        "vm evil: stopped by the host: VM stopped",
        "vm hello: guest exited with code 0x0",
    ] {
        assert!(run.saw(line), "missing `{line}` (-smp {smp}): {run}");
    }
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn svm_evil_guests_are_survived_smp1() {
    evil_on(1);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn svm_evil_guests_are_survived_smp2() {
    evil_on(2);
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn svm_vms_on_every_cpu_at_once_smp2() {
    let run = expect_pass_on("test_svm_smp", 2, 1);
    assert!(
        run.saw("[svm_smp] 2 vCPU threads released together on 2 CPUs"),
        "{run}"
    );
    assert!(run.saw("[svm_smp] 2 VMs ran, at most "), "{run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn svm_vms_on_every_cpu_at_once_smp4() {
    let run = expect_pass_on("test_svm_smp", 4, 1);
    assert!(
        run.saw("[svm_smp] 4 vCPU threads released together on 4 CPUs"),
        "{run}"
    );
    assert!(run.saw("[svm_smp] 4 VMs ran, at most "), "{run}");
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn svm_vms_with_several_vcpus_smp4() {
    let run = expect_pass_on("test_svm_vcpus", 4, 10);
    // The guest's own checks, its string I/O (forward and with DF=1), and
    // the exact A/D bits of the four vCPUs' regions.
    for line in [
        "[vm smp] smp: vCPU 3 prints through rep outsb",
        "[vm smp] smp: vCPU 3 prints backward through std and rep outsb",
        "[vm smp] smp: 4 vCPUs, counter 80000, vCPU 1 slept ",
        " 0 failures",
        "[svm_vcpus] A/D check: 8 regions x 32 pages, 0 mismatched",
        "vm smp: vCPU 0: bad hypercall 0x6 (args 0x0 ",
        "vCPU already running, error returned, VM continues",
        "[svm_vcpus] flush generation ",
        "[svm_vcpus] resident limit 24 pages under 4 vCPUs: guest exited with code 0x0; ",
        // Once per VM, naming the vCPU that stopped it.
        "vm smp: guest halted with nothing to wake it (RIP ",
        "vm smp: vCPU 1: guest exited with code 0x7: VM stopped",
        "vm smp: vCPU 1: guest read outside its RAM at GPA 0x4000000000 (RIP ",
        "vm evil: string I/O at RIP ",
        "guest address 0x8000000000 not mapped (or read-only) in the guest's page tables: VM stopped",
        "guest address 0x801000 outside guest RAM: VM stopped",
        "is FS/GS-relative: segment overrides are not emulated: VM stopped",
        "vm checksum: checksum result: ",
    ] {
        assert!(run.saw(line), "missing `{line}`: {run}");
    }
}
