//! COM1 of the project's own guests: the 16550 model of `hvcore::uart`
//! (output only, polled), each line the guest writes printed on the
//! console as `[vm NAME] ...`.

use hvcore::devices::bus::{Access, BusDevice, BusEvent};
use hvcore::uart::{self, LineConsole};

/// The base port COM1 decodes from.
pub const BASE: u16 = uart::COM1;
/// Ports it decodes.
pub const PORTS: u16 = uart::PORTS;

/// The guest's COM1.
#[derive(Debug)]
pub struct Com1 {
    /// The VM's name, the prefix of its lines.
    name: &'static str,
    uart: LineConsole,
}

impl Com1 {
    /// COM1 of the VM `name`, reset.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            uart: LineConsole::new(),
        }
    }

    /// Prints the unfinished line, if any (the VM stopped).
    pub fn flush(&mut self) {
        let name = self.name;
        self.uart.flush(&mut |line: &[u8]| print_line(name, line));
    }
}

fn print_line(name: &str, line: &[u8]) {
    let text = core::str::from_utf8(line).unwrap_or("<invalid UTF-8>");
    crate::println!("[vm {name}] {text}");
}

/// A wider access reaches the register at its address only (the low byte
/// of an OUT; an IN reads the register zero-extended), as this console has
/// always behaved for the project's guests.
impl BusDevice for Com1 {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(register(access));
        }
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        let name = self.name;
        if let Some(&value) = data.first() {
            self.uart
                .write(register(access), value, &mut |line: &[u8]| {
                    print_line(name, line)
                });
        }
        None
    }
}

fn register(access: Access) -> u16 {
    u16::try_from(access.offset).unwrap_or(u16::MAX)
}
