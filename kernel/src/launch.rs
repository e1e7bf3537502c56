//! The launcher: which backend runs guests on this machine, and the guest
//! `cargo xtask run --guest NAME` chose.

use crate::svm::Svm;
use crate::virt::Extension;
use crate::vm::{Vm, VmConfig, images, spawn_on};
use crate::vmx::vcpu::Vmx;
use alloc::vec;
use alloc::vec::Vec;
use hvcore::cpu_features::Backend;

static BACKEND: spin::Once<Option<Backend>> = spin::Once::new();

/// The backend this machine runs guests with, decided once from CPUID.
pub fn backend() -> Option<Backend> {
    *BACKEND.call_once(|| crate::cpu::read().features.backend())
}

/// The guest `cargo xtask run --guest NAME` chose (the build-time variable
/// `THERMOCLINE_GUEST`); `pattern` when none was: it runs until QEMU is
/// quit, with a known access pattern, so the live aging report shows the
/// product.
pub const SELECTED_GUEST: &str = match option_env!("THERMOCLINE_GUEST") {
    Some(name) => name,
    None => "pattern",
};

/// RAM of the VM that [`run_selected_guest`] starts.
const SELECTED_RAM_BYTES: u64 = 64 << 20;

/// Runs [`SELECTED_GUEST`] the way `cargo xtask run` shows it, on the
/// backend this machine has (chosen here, once): on a vCPU thread pinned
/// to the last CPU, waiting until it stops. `evil` runs each of its
/// scenarios that ends by itself, one VM each.
pub fn run_selected_guest() {
    match backend() {
        Some(Backend::Svm) => run_selected::<Svm>(),
        Some(Backend::Vmx) => run_selected::<Vmx>(),
        None => crate::println!("vm: no usable virtualization extension: no guest runs"),
    }
}

fn run_selected<E: Extension>() {
    if SELECTED_GUEST == LINUX_GUEST {
        run_linux::<E>();
        return;
    }
    let Some(image) = images::by_name(SELECTED_GUEST) else {
        crate::println!("vm: no guest called {SELECTED_GUEST}");
        return;
    };
    let boot_args: Vec<u64> = if image.name == "evil" {
        vec![1, 2 | ((256 << 30) << 8), 3, 4, 5, 6, 8]
    } else {
        vec![0]
    };
    let cpu = crate::smp::cpu_count() - 1;
    for boot_arg in boot_args {
        let config = VmConfig {
            name: image.name,
            image: image.bytes,
            ram_bytes: SELECTED_RAM_BYTES,
            huge_pages: true,
            boot_arg,
        };
        if image.name == "smp" {
            run_selected_smp::<E>(config, cpu);
            continue;
        }
        let vm = match Vm::<E>::new(config, None) {
            Ok(vm) => vm,
            Err(why) => {
                crate::println!("vm {}: not created: {why}", image.name);
                return;
            }
        };
        crate::println!(
            "vm {}: starting on CPU {cpu} with {} ({} MiB RAM, boot argument {boot_arg:#x})",
            vm.name(),
            E::NAME,
            SELECTED_RAM_BYTES >> 20
        );
        // The aging thread reports on the guest while it runs (VM exits
        // drive it where there is no timer), and reclaims toward
        // `cargo xtask run --reclaim-target`.
        crate::aging::run_selected(vm, cpu);
    }
}

/// The name `cargo xtask run --guest linux` selects.
pub const LINUX_GUEST: &str = "linux";

/// RAM of the Linux VM: Debian's kernel needs about 51 MiB from its 16 MiB
/// load address to decompress (init_size), and the guest's page cache,
/// initramfs and workload the rest.
pub const LINUX_RAM_BYTES: u64 = match option_env!("THERMOCLINE_LINUX_RAM_MIB") {
    Some(mib) => parse_mib(mib) << 20,
    None => 256 << 20,
};

const fn parse_mib(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u64;
    while i < b.len() {
        assert!(
            b[i].is_ascii_digit(),
            "THERMOCLINE_LINUX_RAM_MIB must be a number"
        );
        v = v * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    v
}

/// The Linux VM of `cargo xtask run --guest linux`: its bzImage, initrd
/// and command line come in the boot loader's ramdisk as one bundle
/// (`hvcore::linux_boot::bundle`); aging runs over it as over any guest.
fn run_linux<E: Extension>() {
    let Some(vm) = new_linux_vm::<E>(LINUX_GUEST, LINUX_RAM_BYTES) else {
        return;
    };
    let cpu = crate::smp::cpu_count() - 1;
    crate::println!(
        "vm {}: Linux starting on CPU {cpu} with {} ({} MiB RAM); its COM1 is the console",
        vm.name(),
        E::NAME,
        LINUX_RAM_BYTES >> 20
    );
    // The shell owns COM1 from here: the log and the aging report go to
    // COM2 (`cargo xtask run` writes it beside the run), if there is one.
    if crate::console::divert_to_com2() {
        crate::console::write_raw(
            b"thermocline: the log and the aging report continue on COM2 (target/run/com2.log; `cargo xtask report target/run/com2.log`)\r\n",
        );
    }
    let vm2 = vm.clone();
    crate::aging::run_selected(vm, cpu);
    // The stop line where the user looks, too.
    if let Some(reason) = vm2.stop_reason() {
        crate::console::write_raw(
            alloc::format!(
                "\r\nthermocline: vm {}: {reason}: VM stopped\r\n",
                vm2.name()
            )
            .as_bytes(),
        );
    }
}

/// A Linux VM of `ram_bytes` from the ramdisk's bundle, or `None` after a
/// line saying why not.
pub fn new_linux_vm<E: Extension>(
    name: &'static str,
    ram_bytes: u64,
) -> Option<alloc::sync::Arc<Vm<E>>> {
    let Some(ramdisk) = crate::ramdisk() else {
        crate::println!(
            "vm {name}: not created: the boot image carries no Linux bundle (build it with `cargo xtask run --guest linux`)"
        );
        return None;
    };
    let bundle = match hvcore::linux_boot::bundle::parse(ramdisk) {
        Ok(b) => b,
        Err(e) => {
            crate::println!("vm {name}: not created: {e}");
            return None;
        }
    };
    let boot = hvcore::linux_boot::LinuxBootConfig {
        kernel_image: bundle.kernel,
        initrd: bundle.initrd,
        cmdline: bundle.cmdline,
        ram_bytes,
    };
    match Vm::<E>::new_linux(name, &boot, true, None) {
        Ok(vm) => Some(vm),
        Err(e) => {
            crate::println!("vm {name}: not created: {e}");
            None
        }
    }
}

/// vCPUs of the `smp` guest that `cargo xtask run --guest smp` shows.
const SELECTED_SMP_VCPUS: u32 = 4;

/// `cargo xtask run --guest smp`: the guest with
/// [`SELECTED_SMP_VCPUS`] vCPUs, its boot vCPU on CPU `cpu` (no aging
/// thread: the run shows the vCPUs, not the aging report).
fn run_selected_smp<E: Extension>(config: VmConfig, cpu: usize) {
    let name = config.name;
    match Vm::<E>::new_smp(config, SELECTED_SMP_VCPUS, None) {
        Ok(vm) => {
            crate::println!(
                "vm {name}: starting with {SELECTED_SMP_VCPUS} vCPUs, the boot vCPU on CPU {cpu}"
            );
            spawn_on(cpu, vm).join();
        }
        Err(why) => crate::println!("vm {name}: not created: {why}"),
    }
}
