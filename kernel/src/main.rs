//! The Thermocline hypervisor binary. Kept small: everything is in the
//! library (`kernel::init` and the layers it brings up).
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::banner::print();
    kernel::launch::run_selected_guest();
    kernel::idle()
}
