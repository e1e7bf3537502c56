//! Thermocline's exit device, two byte-wide ports for guest programs (and
//! the test harness behind them): a byte written to [`EXIT_PORT`] ends the
//! VM with that byte as its status ([`BusEvent::GuestExit`]); a byte
//! written to [`MARK_PORT`] asks the hypervisor to print a mark line with
//! its own clock ([`BusEvent::Mark`]), so a guest's notion of elapsed time
//! can be checked against the host's. Reads return 0xFF (nothing drives
//! them). From Linux user space, without ioperm: `/dev/port`, e.g.
//! `printf '\003' | dd of=/dev/port bs=1 seek=244 count=1` ends the VM
//! with status 3 (docs/guests.md, "Linux guests").
//!
//! 0xF4 is where QEMU's isa-debug-exit is usually placed; no PC device
//! decodes 0xF4/0xF5 (the ISA math coprocessor's ports are 0xF0-0xFF, and
//! no x86-64 machine has one).

use super::bus::{Access, BusDevice, BusEvent, read_bytes, write_bytes};

/// The status port.
pub const EXIT_PORT: u16 = 0xf4;
/// The mark port, right after it.
pub const MARK_PORT: u16 = 0xf5;
/// Ports decoded from [`EXIT_PORT`].
pub const PORTS: u16 = 2;

/// The device (stateless: each write is an event).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitPort;

impl BusDevice for ExitPort {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        read_bytes(access, data, |_| 0xff);
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        write_bytes(access, data, |offset, value| match offset {
            0 => Some(BusEvent::GuestExit { status: value }),
            _ => Some(BusEvent::Mark { tag: value }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::bus::{Bus, Space};
    use super::*;

    #[test]
    fn a_byte_ends_the_vm_or_marks() {
        let mut bus = Bus::new();
        let id = bus.add(ExitPort);
        bus.map(Space::Port, u64::from(EXIT_PORT), u64::from(PORTS), id)
            .unwrap();
        let w = bus.write(Space::Port, 0xf4, 1, 3, 0).unwrap();
        assert_eq!(w.event, Some(BusEvent::GuestExit { status: 3 }));
        let w = bus.write(Space::Port, 0xf5, 1, 7, 0).unwrap();
        assert_eq!(w.event, Some(BusEvent::Mark { tag: 7 }));
        assert_eq!(bus.read(Space::Port, 0xf4, 1, 0).unwrap().value, 0xff);
    }
}
