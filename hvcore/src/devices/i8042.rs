//! The least of the 8042 keyboard controller a PC guest needs: its status
//! port answers "output buffer empty, input buffer empty", so drivers that
//! wait on it do not spin, and its reset commands reach the VM as
//! [`BusEvent::ResetRequested`]. Ports 0x60 (data) and 0x64 (status and
//! command).
//!
//! The reset: command 0xFE (Linux's `reboot=k`, the x86 default fallback,
//! writes it up to ten times after `kb_wait` sees the input buffer empty)
//! pulses output port bit 0, the CPU reset line; so does any command
//! 0xF0-0xFF whose bit 0 is clear, and writing the output port (command
//! 0xD1, then a data byte) with bit 0 clear.
//!
//! Left out, and why: there is no keyboard or mouse behind it (the console
//! is the UART), so no command ever answers and the output buffer is never
//! full. Linux's i8042 driver, when it probes the ports directly, waits
//! for its controller self-test (0xAA) to answer and gives up after its
//! timeout (about half a second of guest time) with "controller selftest
//! timeout"; the A20 gate (output port bit 1) is always on in long mode.

use super::bus::{Access, BusDevice, BusEvent, read_bytes, write_bytes};

/// The data port.
pub const DATA_PORT: u16 = 0x60;
/// The status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;

/// Status: the system flag (self-test passed at power-on) and the
/// keyboard not inhibited; output and input buffers empty (bits 0 and 1
/// clear), no timeout or parity error.
pub const STATUS_IDLE: u8 = 0x14;

const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_FIRST: u8 = 0xf0;
const OUTPUT_PORT_RESET: u8 = 1 << 0;

/// The controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I8042 {
    /// The last command expects a data byte on port 0x60.
    awaiting_output_port: bool,
    /// Commands the guest sent that this model does not act on.
    ignored_commands: u64,
}

impl I8042 {
    /// A controller after power-on.
    pub fn new() -> Self {
        Self::default()
    }

    /// A write to the command port.
    pub fn write_command(&mut self, value: u8) -> Option<BusEvent> {
        self.awaiting_output_port = false;
        match value {
            CMD_WRITE_OUTPUT_PORT => self.awaiting_output_port = true,
            // Pulse output lines: bits 3:0 select (active low), bit 0 is
            // the reset line.
            v if v >= CMD_PULSE_FIRST && v & OUTPUT_PORT_RESET == 0 => {
                return Some(BusEvent::ResetRequested);
            }
            v if v >= CMD_PULSE_FIRST => {}
            _ => self.ignored_commands += 1,
        }
        None
    }

    /// A write to the data port.
    pub fn write_data(&mut self, value: u8) -> Option<BusEvent> {
        if core::mem::take(&mut self.awaiting_output_port) && value & OUTPUT_PORT_RESET == 0 {
            return Some(BusEvent::ResetRequested);
        }
        None
    }

    /// Commands seen that had no effect here (for the kernel's report).
    pub fn ignored_commands(&self) -> u64 {
        self.ignored_commands
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        let status = access.base == u64::from(COMMAND_PORT);
        // The output buffer is empty: the data port reads nothing new.
        read_bytes(access, data, |_| if status { STATUS_IDLE } else { 0x00 });
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        let command = access.base == u64::from(COMMAND_PORT);
        write_bytes(access, data, |_, value| {
            if command {
                self.write_command(value)
            } else {
                self.write_data(value)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::bus::{Bus, Space};
    use super::*;

    fn bus() -> Bus<I8042> {
        let mut bus = Bus::new();
        let id = bus.add(I8042::new());
        bus.map(Space::Port, u64::from(DATA_PORT), 1, id).unwrap();
        bus.map(Space::Port, u64::from(COMMAND_PORT), 1, id)
            .unwrap();
        bus
    }

    #[test]
    fn linux_kbd_reboot_sees_an_empty_input_buffer_then_resets() {
        let mut bus = bus();
        // kb_wait: input buffer full (bit 1) must read clear.
        let status = bus.read(Space::Port, 0x64, 1, 0).unwrap().value;
        assert_eq!(status & 0x03, 0);
        let out = bus.write(Space::Port, 0x64, 1, 0xfe, 0).unwrap();
        assert_eq!(out.event, Some(BusEvent::ResetRequested));
    }

    #[test]
    fn other_commands_do_nothing_and_output_port_writes_can_reset() {
        let mut k = I8042::new();
        assert_eq!(k.write_command(0xaa), None);
        assert_eq!(k.write_command(0xff), None); // pulses no line
        assert_eq!(k.write_command(0xf1), None); // bit 0 set: reset not pulsed
        assert_eq!(k.write_command(0xfc), Some(BusEvent::ResetRequested));
        assert_eq!(k.ignored_commands(), 1);
        assert_eq!(k.write_data(0x00), None); // not after 0xD1
        k.write_command(0xd1);
        assert_eq!(k.write_data(0x03), None); // reset line high: run
        assert_eq!(k.write_data(0x02), None); // the command took one byte
        k.write_command(0xd1);
        assert_eq!(k.write_data(0x02), Some(BusEvent::ResetRequested));
    }
}
