//! The Thermocline hypervisor binary. Kept small: everything is in the
//! library (`kernel::init` and the layers it brings up). The run ends with
//! the success exit once every VM the run started has stopped.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::banner::print();
    kernel::launch::run_selected_guest();
    // Every VM has stopped (or none could start): nothing is left to show,
    // so end the run instead of idling until the user quits. Where the exit
    // device is missing the CPU halts and the line says what to do.
    kernel::println!(
        "thermocline: every VM has stopped (how each ended is on its `vm NAME:` lines above): ending the run (if the emulator stays, quit it: Ctrl-A X in QEMU)"
    );
    kernel::hw::exit(kernel::hw::ExitCode::Success)
}
