//! Port 0x80, the POST code port: firmware writes progress codes there
//! and Linux writes it as an I/O delay (`outb_p`, `io_delay=0x80`, the x86
//! default). Writes are taken and counted, with the last value kept for a
//! report; reads return 0xFF, as from a port nothing drives (Linux's 8250
//! probe writes it to discharge the bus between its IER reads, which is
//! all it needs).

use super::bus::{Access, BusDevice, BusEvent, read_bytes, write_bytes};

/// The port.
pub const POST_PORT: u16 = 0x80;

/// The sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostPort {
    writes: u64,
    last: Option<u8>,
}

impl PostPort {
    /// Writes so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The last value written, if any.
    pub fn last(&self) -> Option<u8> {
        self.last
    }
}

impl BusDevice for PostPort {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        read_bytes(access, data, |_| 0xff);
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        write_bytes(access, data, |_, value| {
            self.writes += 1;
            self.last = Some(value);
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::bus::{Bus, Space};
    use super::*;

    #[test]
    fn writes_are_counted_reads_float() {
        let mut bus = Bus::new();
        let id = bus.add(PostPort::default());
        bus.map(Space::Port, u64::from(POST_PORT), 1, id).unwrap();
        for v in [0x00, 0xab] {
            let w = bus.write(Space::Port, 0x80, 1, v, 0).unwrap();
            assert!(!w.unclaimed && w.event.is_none());
        }
        let r = bus.read(Space::Port, 0x80, 1, 0).unwrap();
        assert_eq!((r.value, r.unclaimed), (0xff, false));
        let p = bus.device_mut(id).unwrap();
        assert_eq!((p.writes(), p.last()), (2, Some(0xab)));
    }
}
