//! The port I/O bus of one VM: devices registered on ranges of ports, and
//! the lookup the exit handler makes for every IN, OUT, INS and OUTS. The
//! handler asks the bus; it never matches on port numbers, so a new device
//! is one registration.
//!
//! Key type: [`PortBus`], generic over what a device is (the kernel stores
//! its device objects; the tests store numbers). Ranges never overlap and
//! never wrap past port 0xFFFF; a port belongs to at most one device, which
//! sees the offset from its own base.
//!
//! Neighbours: the kernel's `vm::devices` (the devices and their
//! registration), `crate::uart` (the 16550 model COM1 wraps).

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// Why a registration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// A range of no ports.
    Empty,
    /// The range runs past port 0xFFFF.
    PastLastPort,
    /// Some port of the range is another device's, which starts at `base`.
    Overlaps {
        /// The base port of the device already there.
        base: u16,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a device must decode at least one port"),
            Self::PastLastPort => f.write_str("the port range runs past port 0xffff"),
            Self::Overlaps { base } => {
                write!(f, "the port range overlaps the device at port {base:#x}")
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Range<D> {
    base: u16,
    /// Ports decoded, at least 1; `base + len - 1 <= 0xFFFF`.
    len: u32,
    device: D,
}

impl<D> Range<D> {
    fn end(&self) -> u32 {
        u32::from(self.base) + self.len
    }
}

/// Devices on port ranges, sorted by base port.
#[derive(Clone, Debug)]
pub struct PortBus<D> {
    ranges: Vec<Range<D>>,
}

impl<D> Default for PortBus<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D> PortBus<D> {
    /// A bus with no device: every port is unclaimed.
    pub const fn new() -> Self {
        Self { ranges: Vec::new() }
    }

    /// Puts `device` on ports `[base, base + ports)`.
    pub fn register(&mut self, base: u16, ports: u16, device: D) -> Result<(), BusError> {
        if ports == 0 {
            return Err(BusError::Empty);
        }
        let len = u32::from(ports);
        if u32::from(base) + len > 0x1_0000 {
            return Err(BusError::PastLastPort);
        }
        // The first range that ends after `base`: the only one that can
        // overlap from below, or the first one above.
        let at = self.ranges.partition_point(|r| r.end() <= u32::from(base));
        if let Some(next) = self.ranges.get(at)
            && u32::from(next.base) < u32::from(base) + len
        {
            return Err(BusError::Overlaps { base: next.base });
        }
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    /// The device that decodes `port`, and `port`'s offset from its base.
    pub fn find(&self, port: u16) -> Option<(&D, u16)> {
        let at = self.ranges.partition_point(|r| r.end() <= u32::from(port));
        let r = self.ranges.get(at)?;
        (r.base <= port).then(|| (&r.device, port - r.base))
    }

    /// Every device, by base port.
    pub fn devices(&self) -> impl Iterator<Item = &D> {
        self.ranges.iter().map(|r| &r.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ports_reach_their_device_with_its_offset() {
        let mut bus = PortBus::new();
        bus.register(0x3f8, 8, 'u').unwrap();
        bus.register(0x40, 4, 'p').unwrap();
        bus.register(0xffff, 1, 'z').unwrap();
        assert_eq!(bus.find(0x3f8), Some((&'u', 0)));
        assert_eq!(bus.find(0x3ff), Some((&'u', 7)));
        assert_eq!(bus.find(0x400), None);
        assert_eq!(bus.find(0x3f7), None);
        assert_eq!(bus.find(0x43), Some((&'p', 3)));
        assert_eq!(bus.find(0xffff), Some((&'z', 0)));
        assert_eq!(bus.find(0), None);
        assert_eq!(bus.devices().copied().collect::<Vec<_>>(), ['p', 'u', 'z']);
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut bus = PortBus::new();
        bus.register(0x3f8, 8, 1).unwrap();
        assert_eq!(bus.register(0x60, 0, 2), Err(BusError::Empty));
        assert_eq!(bus.register(0xfff0, 0x11, 2), Err(BusError::PastLastPort));
        assert_eq!(
            bus.register(0x3f0, 9, 2),
            Err(BusError::Overlaps { base: 0x3f8 })
        );
        assert_eq!(
            bus.register(0x3ff, 1, 2),
            Err(BusError::Overlaps { base: 0x3f8 })
        );
        assert_eq!(
            bus.register(0x300, 0x200, 2),
            Err(BusError::Overlaps { base: 0x3f8 })
        );
        // Adjacent on both sides is fine.
        bus.register(0x3f0, 8, 3).unwrap();
        bus.register(0x400, 1, 4).unwrap();
        assert_eq!(bus.find(0x3f7), Some((&3, 7)));
        assert_eq!(bus.find(0x400), Some((&4, 0)));
    }

    proptest! {
        /// Against a port-by-port map: a registration succeeds exactly when
        /// its ports are free and in range, and every port then reaches the
        /// device that claimed it, at the right offset.
        #[test]
        fn agrees_with_a_port_map(
            // Crowded windows at both ends of the port space, so ranges
            // touch, overlap by one port and run past 0xFFFF often.
            regs in proptest::collection::vec(
                (prop_oneof![0u16..256, 0xff00u16..=0xffff], 0u16..48),
                0..40,
            ),
            probes in proptest::collection::vec(prop_oneof![0u16..300, 0xff00u16..=0xffff], 64),
        ) {
            let mut bus = PortBus::new();
            let mut owner: Vec<Option<(usize, u16)>> = vec![None; 0x1_0000];
            for (i, &(base, ports)) in regs.iter().enumerate() {
                let end = u32::from(base) + u32::from(ports);
                let free = ports > 0
                    && end <= 0x1_0000
                    && (u32::from(base)..end).all(|p| owner[p as usize].is_none());
                prop_assert_eq!(bus.register(base, ports, i).is_ok(), free);
                if free {
                    for p in u32::from(base)..end {
                        owner[p as usize] = Some((i, (p - u32::from(base)) as u16));
                    }
                }
            }
            let claimed = regs.iter().map(|&(b, _)| b);
            for port in probes.into_iter().chain(claimed) {
                let got = bus.find(port).map(|(&d, off)| (d, off));
                prop_assert_eq!(got, owner[port as usize]);
            }
        }
    }
}
