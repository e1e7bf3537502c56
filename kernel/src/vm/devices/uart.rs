//! COM1: the 16550 model of `hvcore::uart` (output only, polled), each
//! line the guest writes printed on the console as `[vm NAME] ...`.

use super::PortDevice;
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
    uart: spin::Mutex<LineConsole>,
}

impl Com1 {
    /// COM1 of the VM `name`, reset.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            uart: spin::Mutex::new(LineConsole::new()),
        }
    }

    fn print_line(&self, line: &[u8]) {
        let text = core::str::from_utf8(line).unwrap_or("<invalid UTF-8>");
        crate::println!("[vm {}] {text}", self.name);
    }
}

impl PortDevice for Com1 {
    fn read(&self, offset: u16, _size_bytes: u8) -> u32 {
        u32::from(self.uart.lock().read(offset))
    }

    /// The UART takes the low byte of a wider OUT.
    fn write(&self, offset: u16, _size_bytes: u8, value: u32) {
        self.uart
            .lock()
            .write(offset, value as u8, &mut |line: &[u8]| {
                self.print_line(line)
            });
    }

    fn flush(&self) {
        self.uart
            .lock()
            .flush(&mut |line: &[u8]| self.print_line(line));
    }
}
