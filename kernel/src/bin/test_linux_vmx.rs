//! Scenario `linux_vmx`: Debian's unmodified kernel boots on the VMX
//! backend, the same guest as `test_linux` (SVM, QEMU) from the same kind
//! of bundle in the loader's ramdisk (xtask's test step `linux-assets`
//! writes `test_linux_vmx.bundle` with `thermocline_test=thermocline`).
//! It needs a CPU with VMX, EPT and a timer: full-system Bochs (TESTBEDS.md
//! section 4; not the CPU-core bed, which has neither a ramdisk nor a
//! timer, hence the name outside `test_vmx*`). There Linux runs the test
//! init to its end: kernel release, memory and interrupts, the workload,
//! two uptime marks 20 s apart through the mark port, and the workload's
//! status through the exit device. The VMX side it exercises: the 64-bit
//! boot state (`VcpuStart::Linux64`), PIC interrupts injected and
//! interrupt-window exits, the MSRs Linux owns passed through and switched
//! per vCPU (SYSCALL and SWAPGS for its user space), HLT and the STI
//! shadow.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vmx::vcpu::Vmx;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "linux_vmx",
    cases: &[TestCase {
        name: "linux_boots_on_vmx_and_exits_through_the_exit_device",
        run: boots,
    }],
};

fn boots() {
    kernel::testing::linux::boots_and_exits::<Vmx>();
}
