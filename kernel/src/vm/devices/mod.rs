//! The guest's devices: each one file, each registered on the VM's port
//! bus (`hvcore::port_bus`) by [`attach`]. The exit handlers
//! (`super::ports`) ask the bus for every IN, OUT, INS and OUTS and report a
//! port no device decodes; they know no device by its ports.
//!
//! A new device: a file here implementing [`PortDevice`], and one line in
//! [`attach`].

pub mod uart;

use super::VmConfig;
use alloc::boxed::Box;
use hvcore::port_bus::{BusError, PortBus};

/// A device behind port I/O. Called from a vCPU's exit path (several vCPUs
/// may call at once), with the offset from the device's base port.
pub trait PortDevice: Send + Sync {
    /// An IN of `size_bytes` (1, 2 or 4) at `offset`.
    fn read(&self, offset: u16, size_bytes: u8) -> u32;
    /// An OUT of `size_bytes` (1, 2 or 4) of `value` at `offset`.
    fn write(&self, offset: u16, size_bytes: u8, value: u32);
    /// The VM stopped: hand out anything the device still holds (the
    /// UART's unfinished line).
    fn flush(&self) {}
}

/// One VM's port bus.
pub type Ports = PortBus<Box<dyn PortDevice>>;

/// The devices of a VM made from `config`, on a new bus.
pub fn attach(config: &VmConfig) -> Result<Ports, BusError> {
    let mut bus = Ports::new();
    bus.register(
        uart::BASE,
        uart::PORTS,
        Box::new(uart::Com1::new(config.name)),
    )?;
    Ok(bus)
}
