//! `hello`: prints one line through the UART and exits with code 0.
#![no_std]
#![no_main]

use guests::{BootInfo, println};

guests::entry!(main);

fn main(boot: BootInfo) -> u64 {
    println!(
        "hello from a Thermocline guest (vm {}, {} MiB RAM)",
        boot.vm_id,
        boot.ram_bytes >> 20
    );
    0
}
