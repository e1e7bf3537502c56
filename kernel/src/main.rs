//! The Thermocline hypervisor binary. Kept small: everything is in the
//! library (`kernel::init` and the layers it brings up). The run ends with
//! the success exit once every VM the run started has stopped, each as it
//! should (`kernel::launch::ended_as_expected`), else with the failure exit.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::banner::print();
    let failed = kernel::launch::run_selected_guest();
    // Every VM has stopped (or none could start): nothing is left to show,
    // so end the run instead of idling until the user quits. Where the exit
    // device is missing the CPU halts and the line says what to do.
    if failed == 0 {
        kernel::println!(
            "thermocline: every VM has stopped (how each ended is on its `vm NAME:` lines above): ending the run (if the emulator stays, quit it: Ctrl-A X in QEMU)"
        );
        kernel::hw::exit(kernel::hw::ExitCode::Success)
    }
    // A VM that stopped for anything but its own clean exit (an
    // undecodable instruction, no memory, a guest that reported failure)
    // is a failed run, though the hypervisor itself is fine.
    kernel::println!(
        "thermocline: every VM has stopped, {failed} of them not cleanly (see the `thermocline: vm NAME` lines above): ending the run with the failure code (if the emulator stays, quit it: Ctrl-A X in QEMU)"
    );
    kernel::hw::exit(kernel::hw::ExitCode::Failure)
}
