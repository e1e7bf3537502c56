//! Scenario `linux`: Debian's unmodified kernel, with the project's
//! initramfs, boots on the SVM backend from the bundle in the loader's
//! ramdisk (`hvcore::linux_boot::bundle`; xtask's test step
//! `linux-assets` writes it with `thermocline_test=thermocline`). The test
//! init (xtask/src/linux/init.sh) reports the kernel release, memory and
//! interrupts, runs the workload, marks uptime twice 20 s apart through the
//! mark port, and ends the VM with the workload's status through the exit
//! device; the host test (tests/tests/qemu/linux.rs) reads the console.
//! Bad inputs (a truncated or garbage bzImage, an initrd that does not
//! fit, a command line too long) are refused by `Vm::new_linux` with a
//! message before any VM starts.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;
use bootloader_api::{BootInfo, entry_point};
use hvcore::linux_boot::{LinuxBoot, LinuxBootConfig, bundle};
use hvcore::reclaim::ReclaimTarget;
use kernel::launch::LINUX_RAM_BYTES;
use kernel::svm::Svm;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vm::{self, StopReason, Vm};
use kernel::{aging, sched, smp};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "linux",
    cases: &[
        TestCase {
            name: "bad_linux_inputs_are_refused",
            run: bad_inputs,
        },
        TestCase {
            name: "linux_boots_and_exits_through_the_exit_device",
            run: boots,
        },
        TestCase {
            name: "linux_workload_intact_under_adaptive_reclaim",
            run: under_adaptive_reclaim,
        },
        TestCase {
            name: "linux_shell_answers_then_a_guest_panic_stops_the_vm",
            run: interactive_shell,
        },
    ],
};

fn the_bundle() -> bundle::Bundle<'static> {
    let ramdisk =
        kernel::ramdisk().expect("the image carries no Linux bundle (test step linux-assets)");
    bundle::parse(ramdisk).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(what: &str, boot: &LinuxBootConfig<'_>, needle: &str) {
    match Vm::<Svm>::new_linux("bad", boot, true, None) {
        Ok(_) => panic!("{what}: the VM was made"),
        Err(e) => {
            let msg = format!("{e}");
            kernel::println!("linux: {what}: refused: {msg}");
            assert!(
                msg.contains(needle),
                "{what}: `{msg}` should say `{needle}`"
            );
        }
    }
}

fn bad_inputs() {
    let b = the_bundle();
    let good = LinuxBootConfig {
        kernel_image: b.kernel,
        initrd: b.initrd,
        cmdline: b.cmdline,
        ram_bytes: LINUX_RAM_BYTES,
    };
    refused(
        "truncated bzImage",
        &LinuxBootConfig {
            kernel_image: &b.kernel[..b.kernel.len() / 2],
            ..good
        },
        "truncated",
    );
    let garbage = vec![0x5au8; 64 * 1024];
    refused(
        "garbage kernel",
        &LinuxBootConfig {
            kernel_image: &garbage,
            ..good
        },
        "bzImage",
    );
    // RAM that holds the kernel's init_size but only half the initrd.
    let layout = *LinuxBoot::plan(&good).expect("the bundle boots").layout();
    let kernel_end = layout.kernel.as_u64() + layout.kernel_extent_bytes;
    let small_ram = (kernel_end + b.initrd.len() as u64 / 2).next_multiple_of(4096);
    refused(
        "initrd larger than RAM allows",
        &LinuxBootConfig {
            ram_bytes: small_ram,
            ..good
        },
        "initrd does not fit",
    );
    let long = vec![b'x'; 1 << 20];
    refused(
        "command line too long",
        &LinuxBootConfig {
            cmdline: &long,
            ..good
        },
        "command line too long",
    );
}

fn boots() {
    kernel::testing::linux::boots_and_exits::<Svm>();
}

/// The command line of the reclaim case: the bundle's, with the test init
/// told to run only the workload (bigger, more passes) and exit.
const RECLAIM_CMDLINE: &[u8] = b"console=ttyS0 acpi=off nolapic noapic panic=-1 \
thermocline_test=workload thermocline_workload=--size-mib,32,--passes,2";

/// Aging every 100 ms with the adaptive reclaimer over the Linux VM (as
/// `cargo xtask run --guest linux --reclaim-target adaptive
/// --age-interval-ms 100` does): the workload verifies its 32 MiB intact,
/// pages were reclaimed and the refaults counted.
fn under_adaptive_reclaim() {
    let b = the_bundle();
    let boot = LinuxBootConfig {
        kernel_image: b.kernel,
        initrd: b.initrd,
        cmdline: RECLAIM_CMDLINE,
        ram_bytes: LINUX_RAM_BYTES,
    };
    let vm =
        Vm::<Svm>::new_linux("linux-aged", &boot, true, None).unwrap_or_else(|e| panic!("{e}"));
    let m = aging::Managed::new(&vm, Some(ReclaimTarget::Adaptive));
    let config = aging::AgingConfig {
        interval_ms: 100,
        detail_every: 0,
        pass_lines: false,
        ..aging::AgingConfig::default()
    };
    let cpu = smp::cpu_count() - 1;
    let vcpu = vm::spawn_on(cpu, vm.clone());
    let managed = m.clone();
    let ager = sched::spawn_on(0, "aging", move || aging::run(alloc::vec![managed], config));
    vcpu.join();
    aging::stop();
    ager.join();
    let stats = m.mm.lock().rec.stats();
    kernel::println!(
        "linux: under adaptive reclaim: {:?}; reclaimed {} pages in all, {} refaults",
        vm.stop_reason(),
        stats.reclaimed_total,
        stats.refaults
    );
    assert_eq!(
        vm.stop_reason(),
        Some(StopReason::Exited(0)),
        "the workload's status"
    );
    assert!(
        stats.reclaimed_total > 0,
        "the adaptive reclaimer took pages"
    );
}

/// The interactive path: the init's shell on the console (no
/// `thermocline_test`); the host test types a command when the shell is
/// up and, after the reply, crashes the guest kernel through
/// /proc/sysrq-trigger: the panic text reaches the console, `panic=-1`
/// reboots through the i8042, and that stops the VM (and only the VM: this
/// scenario goes on to report).
fn interactive_shell() {
    let b = the_bundle();
    let boot = LinuxBootConfig {
        kernel_image: b.kernel,
        initrd: b.initrd,
        cmdline: b"console=ttyS0 acpi=off nolapic noapic panic=-1",
        ram_bytes: LINUX_RAM_BYTES,
    };
    let vm =
        Vm::<Svm>::new_linux("linux-shell", &boot, true, None).unwrap_or_else(|e| panic!("{e}"));
    let reason = vm::run_on_this_cpu(&vm);
    assert!(
        matches!(reason, StopReason::ResetRequested { .. }),
        "a guest panic reboots, which stops the VM: {reason}"
    );
}
