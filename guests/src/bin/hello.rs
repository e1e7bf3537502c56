//! `hello`: prints one line through the UART and exits with code 0.
//!
//! Boot argument (RSI): when non-zero, first makes that many `VERSION`
//! hypercalls (a measure of the exit round trip) and exits with 1 if any
//! returned something else than the ABI version.
#![no_std]
#![no_main]

use guests::{BootInfo, nr, println};

guests::entry!(main);

fn main(boot: BootInfo) -> u64 {
    for _ in 0..boot.arg {
        if guests::hypercall(nr::VERSION, 0, 0, 0, 0) != hvcore::hypercall::ABI_VERSION {
            return 1;
        }
    }
    println!(
        "hello from a Thermocline guest (vm {}, {} MiB RAM)",
        boot.vm_id,
        boot.ram_bytes >> 20
    );
    0
}
