//! The boot banner: who we are, which CPU, what virtualization it offers.
//!
//! Printed once after `crate::init`. The harness and the README quote its
//! first line (`Thermocline <version>`); later layers add lines through their
//! own logging (CPUs, timer, memory).

use crate::cpu::{self, CpuInfo};
use crate::println;
use hvcore::cpu_features::{Backend, VmxFirmwareState};

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Prints the banner for the boot CPU and returns what it read.
pub fn print() -> CpuInfo {
    let info = cpu::read();
    let f = &info.features;
    println!(
        "Thermocline {}: x86_64 micro-hypervisor with second-level memory aging",
        env!("CARGO_PKG_VERSION")
    );
    let vendor = cpu::text(&info.cpuid.vendor_id);
    let brand = cpu::text(&info.brand);
    match info.hypervisor_id {
        Some(id) => println!(
            "  cpu      {vendor}, \"{brand}\", under hypervisor \"{}\"",
            cpu::text(&id)
        ),
        None => println!("  cpu      {vendor}, \"{brand}\""),
    }
    match f.vmx {
        Some(v) => {
            let firmware = match v.firmware {
                VmxFirmwareState::Unlocked => "unlocked",
                VmxFirmwareState::LockedEnabled => "locked, enabled",
                VmxFirmwareState::LockedDisabled => "locked, DISABLED by firmware",
            };
            println!(
                "  vmx      EPT {}, EPT A/D {}, VPID {}, unrestricted guest {}, preemption timer {}",
                yes(v.ept),
                yes(v.ept_ad),
                yes(v.vpid),
                yes(v.unrestricted_guest),
                yes(v.preemption_timer)
            );
            println!(
                "           2M/1G pages {}/{}, INVEPT single-context {}, VMCS revision {:#x}, feature control {firmware}",
                yes(v.ept_2m),
                yes(v.ept_1g),
                yes(v.invept_single),
                v.vmcs_revision
            );
        }
        None => println!("  vmx      not offered"),
    }
    match f.svm {
        Some(s) => {
            let firmware = match s.disabled_by_firmware {
                Some(true) => "DISABLED by firmware (VM_CR.SVMDIS)",
                Some(false) => "enabled",
                None => "unknown",
            };
            println!(
                "  svm      NPT {}, NRIP save {}, ASIDs {}, flush by ASID {}, decode assists {}, VMCB clean bits {}",
                yes(s.npt),
                yes(s.nrip_save),
                s.asids,
                yes(s.flush_by_asid),
                yes(s.decode_assists),
                yes(s.vmcb_clean)
            );
            println!("           revision {}, firmware {firmware}", s.revision);
        }
        None => println!("  svm      not offered"),
    }
    if let Some(number) = info.unreadable_msr {
        println!("  warning  MSR {number:#x} is advertised but faulted on read");
    }
    if let Some(boot) = crate::boot_info() {
        // GDB needs this offset to place the position-independent ELF's
        // symbols: `symbol-file <elf> -o <offset>` (README, "Debugging with GDB").
        println!(
            "  kernel   image offset {:#x}, {} KiB",
            boot.kernel_image_offset,
            boot.kernel_len / 1024
        );
    }
    match f.backend() {
        Some(Backend::Vmx) => println!("  backend  VMX with EPT"),
        Some(Backend::Svm) => println!("  backend  SVM with NPT"),
        None => {
            println!("  backend  none: this CPU cannot run guests (no usable VMX/EPT or SVM/NPT)")
        }
    }
    println!("  cpus     {}", crate::smp::Describe);
    println!("  timer    {}", crate::time::Describe);
    println!("{}", crate::aging::banner_line());
    info
}
