//! One dispatch for port I/O and MMIO: devices register address ranges,
//! the exit handler asks the bus, and the bus never grows a `match` on
//! port numbers (the `Bus`/`BusDevice` split of Firecracker and Cloud
//! Hypervisor).
//!
//! A device is added once ([`Bus::add`], giving a [`DeviceId`]) and mapped
//! at any number of ranges ([`Bus::map`]); each access tells it the base of
//! the range it hit and the offset in it, so one device can answer at
//! several places (the PIT at 0x40 and, through port B, at 0x61). Ranges
//! are kept in an ordered map per address space and an overlap is refused.
//!
//! Widths: ports take 1, 2 or 4 bytes, MMIO also 8. An access that lies
//! wholly in one range goes to its device at its full width (byte-wide
//! devices split it with [`read_bytes`] and [`write_bytes`], as the ISA bus
//! splits a 16-bit cycle to an 8-bit device into byte cycles); one that
//! straddles a range's end or touches unclaimed addresses is split into
//! byte accesses by the bus.
//! Unclaimed bytes read 0xFF and take writes without effect; the bus counts
//! them and flags the first access to each such address (up to
//! [`UNCLAIMED_TRACKED`] addresses) so the kernel prints one line per
//! address rather than one per access.

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

/// Which address space an access is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// x86 I/O ports (IN/OUT), 16-bit addresses.
    Port,
    /// Guest-physical memory-mapped I/O.
    Mmio,
}

/// Where in a device an access landed, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The address space.
    pub space: Space,
    /// First address of the range the device was mapped at.
    pub base: u64,
    /// Offset of the access's first byte from `base`.
    pub offset: u64,
    /// The caller's monotonic clock, in nanoseconds.
    pub now_ns: u64,
}

/// Something a write asks of the VM beyond the register change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// The guest asked for a system reset (the i8042's pulse of the reset
    /// line, command 0xFE).
    ResetRequested,
    /// A guest program ended the VM through the exit device
    /// (`super::exit_port`) with `status`.
    GuestExit {
        /// The byte written.
        status: u8,
    },
    /// A guest program asked for a mark line with the host's clock
    /// (`super::exit_port`).
    Mark {
        /// The byte written.
        tag: u8,
    },
}

/// A device on the bus. `data` holds the access's bytes, little-endian,
/// and its length is the width (1, 2, 4 or, for MMIO, 8).
pub trait BusDevice {
    /// A guest read: fill `data`.
    fn read(&mut self, access: Access, data: &mut [u8]);

    /// A guest write of `data`; returns an event for the VM, if any.
    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent>;
}

impl<T: BusDevice + ?Sized> BusDevice for &mut T {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        (**self).read(access, data);
    }
    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        (**self).write(access, data)
    }
}

impl<T: BusDevice + ?Sized> BusDevice for Box<T> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        (**self).read(access, data);
    }
    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        (**self).write(access, data)
    }
}

/// A device's handle on one bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceId(usize);

/// Why a mapping or an access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// `[base, base + len)` overlaps a range mapped to `existing_base`.
    Overlap {
        /// The address space.
        space: Space,
        /// Start of the refused range.
        base: u64,
        /// Start of the range already there.
        existing_base: u64,
    },
    /// A range of zero length, past the end of the address space, or a
    /// port range beyond 0xFFFF.
    BadRange {
        /// The address space.
        space: Space,
        /// Start of the refused range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// No device with this id was added to this bus.
    UnknownDevice(DeviceId),
    /// A width other than 1, 2, 4 (or 8 for MMIO), or an access that runs
    /// past the end of the address space.
    BadAccess {
        /// The address space.
        space: Space,
        /// The address.
        addr: u64,
        /// The width in bytes.
        width_bytes: u8,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Overlap {
                space,
                base,
                existing_base,
            } => write!(
                f,
                "{space:?} range at {base:#x} overlaps the one mapped at {existing_base:#x}"
            ),
            Self::BadRange { space, base, len } => {
                write!(
                    f,
                    "{space:?} range at {base:#x} of {len:#x} bytes is empty or out of the space"
                )
            }
            Self::UnknownDevice(id) => write!(f, "no device {id:?} on this bus"),
            Self::BadAccess {
                space,
                addr,
                width_bytes,
            } => {
                write!(
                    f,
                    "{space:?} access of {width_bytes} bytes at {addr:#x} is not a valid width or runs out of the space"
                )
            }
        }
    }
}

/// How many distinct unclaimed addresses the bus remembers, to flag only
/// the first access to each; past that every unclaimed access is counted
/// but none is flagged as first.
pub const UNCLAIMED_TRACKED: usize = 64;

/// Counts of accesses that touched unclaimed addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnclaimedCounts {
    /// Reads with at least one unclaimed byte.
    pub reads: u64,
    /// Writes with at least one unclaimed byte.
    pub writes: u64,
}

/// What an access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The value read (zero-extended), or zero for a write.
    pub value: u64,
    /// Some byte of the access reached no device.
    pub unclaimed: bool,
    /// ... and this is the first such access to its address the bus has
    /// seen: the kernel's cue to print one line about it.
    pub first_unclaimed: bool,
    /// What the device asked of the VM (writes only).
    pub event: Option<BusEvent>,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    len: u64,
    device: DeviceId,
}

/// The bus: devices, and the ranges they answer at in each space.
#[derive(Debug)]
pub struct Bus<D> {
    devices: Vec<D>,
    ports: BTreeMap<u64, Mapping>,
    mmio: BTreeMap<u64, Mapping>,
    unclaimed_seen: BTreeSet<(Space, u64)>,
    unclaimed: UnclaimedCounts,
}

impl<D> Default for Bus<D> {
    fn default() -> Self {
        Self::new()
    }
}

const PORT_SPACE_END: u64 = 0x1_0000;

fn valid_width(space: Space, width_bytes: u8) -> bool {
    matches!((space, width_bytes), (_, 1 | 2 | 4) | (Space::Mmio, 8))
}

impl<D> Bus<D> {
    /// An empty bus.
    pub const fn new() -> Self {
        Self {
            devices: Vec::new(),
            ports: BTreeMap::new(),
            mmio: BTreeMap::new(),
            unclaimed_seen: BTreeSet::new(),
            unclaimed: UnclaimedCounts {
                reads: 0,
                writes: 0,
            },
        }
    }

    /// Adds `device`, not yet mapped anywhere.
    pub fn add(&mut self, device: D) -> DeviceId {
        self.devices.push(device);
        DeviceId(self.devices.len() - 1)
    }

    /// The device behind `id`, for the kernel's direct calls (the PIC's
    /// injector interface, a timer's deadline).
    pub fn device_mut(&mut self, id: DeviceId) -> Option<&mut D> {
        self.devices.get_mut(id.0)
    }

    /// Maps `[base, base + len)` of `space` to `device`.
    pub fn map(
        &mut self,
        space: Space,
        base: u64,
        len: u64,
        device: DeviceId,
    ) -> Result<(), BusError> {
        if device.0 >= self.devices.len() {
            return Err(BusError::UnknownDevice(device));
        }
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end.filter(|&e| space == Space::Mmio || e <= PORT_SPACE_END) else {
            return Err(BusError::BadRange { space, base, len });
        };
        let map = self.space_mut(space);
        // The closest range starting at or below `base`, and the first
        // starting above it, are the only two that can overlap.
        let below = map
            .range(..=base)
            .next_back()
            .filter(|(b, m)| **b + m.len > base);
        let above = map.range(base..).next().filter(|(b, _)| **b < end);
        if let Some((&existing_base, _)) = below.or(above) {
            return Err(BusError::Overlap {
                space,
                base,
                existing_base,
            });
        }
        map.insert(base, Mapping { len, device });
        Ok(())
    }

    /// The device and range base that claim `addr`, if any.
    pub fn lookup(&self, space: Space, addr: u64) -> Option<(DeviceId, u64)> {
        let (&b, m) = self.space(space).range(..=addr).next_back()?;
        (addr - b < m.len).then_some((m.device, b))
    }

    /// Counts of unclaimed accesses so far.
    pub fn unclaimed_counts(&self) -> UnclaimedCounts {
        self.unclaimed
    }

    fn space(&self, space: Space) -> &BTreeMap<u64, Mapping> {
        match space {
            Space::Port => &self.ports,
            Space::Mmio => &self.mmio,
        }
    }

    fn space_mut(&mut self, space: Space) -> &mut BTreeMap<u64, Mapping> {
        match space {
            Space::Port => &mut self.ports,
            Space::Mmio => &mut self.mmio,
        }
    }

    fn check(&self, space: Space, addr: u64, width_bytes: u8) -> Result<(), BusError> {
        let end = addr.checked_add(u64::from(width_bytes));
        let fits = end.is_some_and(|e| space == Space::Mmio || e <= PORT_SPACE_END);
        if valid_width(space, width_bytes) && fits {
            Ok(())
        } else {
            Err(BusError::BadAccess {
                space,
                addr,
                width_bytes,
            })
        }
    }

    /// The device whose range holds all of `[addr, addr + width)`.
    fn whole(&self, space: Space, addr: u64, width_bytes: u8) -> Option<(DeviceId, u64)> {
        let (id, base) = self.lookup(space, addr)?;
        let m = self.space(space).get(&base)?;
        (addr - base + u64::from(width_bytes) <= m.len).then_some((id, base))
    }

    fn note_unclaimed(&mut self, space: Space, addr: u64, write: bool) -> bool {
        if write {
            self.unclaimed.writes += 1;
        } else {
            self.unclaimed.reads += 1;
        }
        if self.unclaimed_seen.len() >= UNCLAIMED_TRACKED {
            return false;
        }
        self.unclaimed_seen.insert((space, addr))
    }
}

impl<D: BusDevice> Bus<D> {
    /// A guest read of `width_bytes` at `addr`.
    pub fn read(
        &mut self,
        space: Space,
        addr: u64,
        width_bytes: u8,
        now_ns: u64,
    ) -> Result<Outcome, BusError> {
        self.check(space, addr, width_bytes)?;
        let mut data = [0xffu8; 8];
        let data = &mut data[..usize::from(width_bytes)];
        let mut unclaimed = false;
        if let Some((id, base)) = self.whole(space, addr, width_bytes) {
            let access = Access {
                space,
                base,
                offset: addr - base,
                now_ns,
            };
            self.devices[id.0].read(access, data);
        } else {
            for (i, byte) in (addr..).zip(data.iter_mut()) {
                match self.lookup(space, i) {
                    Some((id, base)) => {
                        let access = Access {
                            space,
                            base,
                            offset: i - base,
                            now_ns,
                        };
                        self.devices[id.0].read(access, core::slice::from_mut(byte));
                    }
                    None => unclaimed = true,
                }
            }
        }
        let first_unclaimed = unclaimed && self.note_unclaimed(space, addr, false);
        Ok(Outcome {
            value: le_value(data),
            unclaimed,
            first_unclaimed,
            event: None,
        })
    }

    /// A guest write of the low `width_bytes` of `value` at `addr`.
    pub fn write(
        &mut self,
        space: Space,
        addr: u64,
        width_bytes: u8,
        value: u64,
        now_ns: u64,
    ) -> Result<Outcome, BusError> {
        self.check(space, addr, width_bytes)?;
        let bytes = value.to_le_bytes();
        let data = &bytes[..usize::from(width_bytes)];
        let mut unclaimed = false;
        let mut event = None;
        if let Some((id, base)) = self.whole(space, addr, width_bytes) {
            let access = Access {
                space,
                base,
                offset: addr - base,
                now_ns,
            };
            event = self.devices[id.0].write(access, data);
        } else {
            for (i, byte) in (addr..).zip(data.iter()) {
                match self.lookup(space, i) {
                    Some((id, base)) => {
                        let access = Access {
                            space,
                            base,
                            offset: i - base,
                            now_ns,
                        };
                        event = self.devices[id.0]
                            .write(access, core::slice::from_ref(byte))
                            .or(event);
                    }
                    None => unclaimed = true,
                }
            }
        }
        let first_unclaimed = unclaimed && self.note_unclaimed(space, addr, true);
        Ok(Outcome {
            value: 0,
            unclaimed,
            first_unclaimed,
            event,
        })
    }
}

fn le_value(data: &[u8]) -> u64 {
    data.iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b))
}

/// A read of a byte-wide device: each byte of a wider access is a read of
/// the next register, as the ISA bus splits a 16- or 32-bit cycle into
/// byte cycles for an 8-bit device. `read` gets each byte's offset.
pub fn read_bytes(access: Access, data: &mut [u8], mut read: impl FnMut(u64) -> u8) {
    for (offset, b) in (access.offset..).zip(data.iter_mut()) {
        *b = read(offset);
    }
}

/// A write to a byte-wide device, split the same way; returns the last
/// event any byte raised.
pub fn write_bytes(
    access: Access,
    data: &[u8],
    mut write: impl FnMut(u64, u8) -> Option<BusEvent>,
) -> Option<BusEvent> {
    let mut event = None;
    for (offset, &b) in (access.offset..).zip(data) {
        event = write(offset, b).or(event);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// A device that logs accesses and reads back its offset pattern.
    #[derive(Default)]
    struct Log {
        reads: Vec<(u64, u64, usize)>,
        writes: Vec<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Log {
        fn read(&mut self, a: Access, data: &mut [u8]) {
            self.reads.push((a.base, a.offset, data.len()));
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0x10 + a.offset as u8 + i as u8;
            }
        }
        fn write(&mut self, a: Access, data: &[u8]) -> Option<BusEvent> {
            self.writes.push((a.base, a.offset, data.to_vec()));
            (data[0] == 0xfe).then_some(BusEvent::ResetRequested)
        }
    }

    #[test]
    fn overlaps_and_bad_ranges_are_refused() {
        let mut bus: Bus<Log> = Bus::new();
        let a = bus.add(Log::default());
        bus.map(Space::Port, 0x40, 4, a).unwrap();
        assert_eq!(
            bus.map(Space::Port, 0x43, 1, a),
            Err(BusError::Overlap {
                space: Space::Port,
                base: 0x43,
                existing_base: 0x40
            })
        );
        assert_eq!(
            bus.map(Space::Port, 0x3c, 5, a),
            Err(BusError::Overlap {
                space: Space::Port,
                base: 0x3c,
                existing_base: 0x40
            })
        );
        // Adjacent ranges and the same addresses in the other space are fine.
        bus.map(Space::Port, 0x3c, 4, a).unwrap();
        bus.map(Space::Port, 0x44, 1, a).unwrap();
        bus.map(Space::Mmio, 0x40, 4, a).unwrap();
        assert!(matches!(
            bus.map(Space::Port, 0x10, 0, a),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.map(Space::Port, 0xfff0, 0x20, a),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.map(Space::Mmio, u64::MAX, 2, a),
            Err(BusError::BadRange { .. })
        ));
        assert_eq!(
            bus.map(Space::Port, 0x100, 1, DeviceId(7)),
            Err(BusError::UnknownDevice(DeviceId(7)))
        );
    }

    #[test]
    fn accesses_reach_the_device_with_base_and_offset() {
        let mut bus: Bus<Log> = Bus::new();
        let pit = bus.add(Log::default());
        bus.map(Space::Port, 0x40, 4, pit).unwrap();
        bus.map(Space::Port, 0x61, 1, pit).unwrap();
        let r = bus.read(Space::Port, 0x42, 1, 5).unwrap();
        assert_eq!((r.value, r.unclaimed), (0x12, false));
        let r = bus.read(Space::Port, 0x40, 4, 5).unwrap();
        assert_eq!(r.value, 0x1312_1110);
        let w = bus.write(Space::Port, 0x61, 1, 0xfe, 5).unwrap();
        assert_eq!(w.event, Some(BusEvent::ResetRequested));
        let dev = bus.device_mut(pit).unwrap();
        assert_eq!(dev.reads, vec![(0x40, 2, 1), (0x40, 0, 4)]);
        assert_eq!(dev.writes, vec![(0x61, 0, vec![0xfe])]);
    }

    #[test]
    fn unclaimed_reads_all_ones_and_is_flagged_once_per_address() {
        let mut bus: Bus<Log> = Bus::new();
        let r = bus.read(Space::Port, 0x80, 1, 0).unwrap();
        assert_eq!(
            (r.value, r.unclaimed, r.first_unclaimed),
            (0xff, true, true)
        );
        let r = bus.read(Space::Port, 0x80, 4, 0).unwrap();
        assert_eq!((r.value, r.first_unclaimed), (0xffff_ffff, false));
        let w = bus.write(Space::Port, 0x80, 2, 0x1234, 0).unwrap();
        assert!(w.unclaimed && !w.first_unclaimed && w.event.is_none());
        let r = bus.read(Space::Mmio, 0xfee0_0000, 8, 0).unwrap();
        assert_eq!((r.value, r.first_unclaimed), (u64::MAX, true));
        assert_eq!(
            bus.unclaimed_counts(),
            UnclaimedCounts {
                reads: 3,
                writes: 1
            }
        );
        for port in 0..2 * UNCLAIMED_TRACKED as u64 {
            bus.read(Space::Port, 0x100 + port, 1, 0).unwrap();
        }
        assert!(!bus.read(Space::Port, 0x1000, 1, 0).unwrap().first_unclaimed);
    }

    #[test]
    fn straddling_accesses_split_into_bytes() {
        let mut bus: Bus<Log> = Bus::new();
        let d = bus.add(Log::default());
        bus.map(Space::Port, 0x61, 1, d).unwrap();
        // inw 0x60: 0x60 unclaimed, 0x61 the device's offset 0.
        let r = bus.read(Space::Port, 0x60, 2, 0).unwrap();
        assert_eq!((r.value, r.unclaimed), (0x10ff, true));
        let w = bus.write(Space::Port, 0x61, 2, 0xaa55, 0).unwrap();
        assert!(w.unclaimed);
        assert_eq!(
            bus.device_mut(d).unwrap().writes,
            vec![(0x61, 0, vec![0x55])]
        );
    }

    #[test]
    fn bad_widths_are_errors_not_panics() {
        let mut bus: Bus<Log> = Bus::new();
        for w in [0u8, 3, 5, 16] {
            assert!(bus.read(Space::Port, 0x10, w, 0).is_err());
            assert!(bus.write(Space::Mmio, 0x10, w, 0, 0).is_err());
        }
        assert!(bus.read(Space::Port, 0x10, 8, 0).is_err());
        assert!(bus.read(Space::Mmio, 0x10, 8, 0).is_ok());
        assert!(bus.read(Space::Port, 0xffff, 2, 0).is_err());
        assert!(bus.read(Space::Port, 0xfffc, 4, 0).is_ok());
        assert!(bus.read(Space::Mmio, u64::MAX, 2, 0).is_err());
    }

    proptest! {
        /// Whatever ranges are asked for, the accepted ones never overlap
        /// and every address is claimed by exactly the accepted range that
        /// covers it.
        #[test]
        fn accepted_ranges_partition_addresses(ranges in prop::collection::vec((0u64..256, 1u64..16), 1..40)) {
            let mut bus: Bus<Log> = Bus::new();
            let d = bus.add(Log::default());
            let mut accepted: Vec<(u64, u64)> = Vec::new();
            for (base, len) in ranges {
                let overlaps = accepted.iter().any(|&(b, l)| base < b + l && b < base + len);
                let r = bus.map(Space::Mmio, base, len, d);
                prop_assert_eq!(r.is_ok(), !overlaps);
                if r.is_ok() {
                    accepted.push((base, len));
                }
            }
            for addr in 0..300 {
                let want = accepted.iter().find(|&&(b, l)| (b..b + l).contains(&addr)).map(|&(b, _)| b);
                prop_assert_eq!(bus.lookup(Space::Mmio, addr).map(|(_, b)| b), want);
            }
        }
    }
}
