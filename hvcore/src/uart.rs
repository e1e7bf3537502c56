//! A 16550 UART device model, output only: enough for a guest driver that
//! programs the divisor and line control, polls the line status register and
//! writes the transmit register. Completed lines go to a sink the kernel
//! prints with the VM's name as a prefix.
//!
//! Follows the National Semiconductor PC16550D data sheet (register map,
//! DLAB, LSR bits). Input is never pending (LSR.DR = 0) and no interrupts
//! are raised: guests poll.
//!
//! Key type: [`Uart16550`]. Neighbours: the kernel's `vm` module routes port
//! exits for `[COM1, COM1 + 8)` here.

/// Base port of COM1.
pub const COM1: u16 = 0x3f8;
/// Number of ports the UART decodes.
pub const PORTS: u16 = 8;
/// Longest line kept before it is flushed without a newline.
pub const LINE_MAX_BYTES: usize = 160;

const LCR_DLAB: u8 = 1 << 7;
/// LSR: transmit holding register empty, transmitter empty.
const LSR_IDLE: u8 = (1 << 5) | (1 << 6);
/// MSR: clear to send, data set ready, carrier detect.
const MSR_READY: u8 = (1 << 4) | (1 << 5) | (1 << 7);

/// State of one emulated UART.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    line: [u8; LINE_MAX_BYTES],
    len: usize,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// A UART after reset.
    pub const fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            line: [0; LINE_MAX_BYTES],
            len: 0,
        }
    }

    /// A guest write of `value` to register `offset` (0-7). `sink` receives
    /// each completed line, without its newline; carriage returns and other
    /// control bytes except tab are dropped.
    pub fn write(&mut self, offset: u16, value: u8, sink: &mut impl FnMut(&[u8])) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match (offset, dlab) {
            (0, false) => self.transmit(value, sink),
            (0, true) => self.dll = value,
            (1, false) => self.ier = value & 0x0f,
            (1, true) => self.dlm = value,
            (3, _) => self.lcr = value,
            (4, _) => self.mcr = value & 0x1f,
            (7, _) => self.scr = value,
            // FCR, LSR, MSR writes have no visible effect here.
            _ => {}
        }
    }

    /// A guest read of register `offset` (0-7).
    pub fn read(&self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match (offset, dlab) {
            (0, false) => 0,
            (0, true) => self.dll,
            (1, false) => self.ier,
            (1, true) => self.dlm,
            // IIR: no interrupt pending, FIFOs enabled.
            (2, _) => 0xc1,
            (3, _) => self.lcr,
            (4, _) => self.mcr,
            (5, _) => LSR_IDLE,
            (6, _) => MSR_READY,
            (7, _) => self.scr,
            _ => 0xff,
        }
    }

    /// Hands a partial line to `sink` (when the VM stops).
    pub fn flush(&mut self, sink: &mut impl FnMut(&[u8])) {
        if self.len > 0 {
            sink(&self.line[..self.len]);
            self.len = 0;
        }
    }

    fn transmit(&mut self, byte: u8, sink: &mut impl FnMut(&[u8])) {
        match byte {
            b'\n' => {
                sink(&self.line[..self.len]);
                self.len = 0;
            }
            b'\t' | 0x20..=0x7e => {
                self.line[self.len] = byte;
                self.len += 1;
                if self.len == LINE_MAX_BYTES {
                    self.flush(sink);
                }
            }
            // Anything else could drive the host's terminal: drop it.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(u: &mut Uart16550, s: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in s {
            u.write(0, b, &mut |l| {
                lines.push(String::from_utf8(l.to_vec()).unwrap())
            });
        }
        lines
    }

    #[test]
    fn lines_come_out_whole_and_clean() {
        let mut u = Uart16550::new();
        assert_eq!(send(&mut u, b"hel"), Vec::<String>::new());
        assert_eq!(send(&mut u, b"lo\r\nx\x1b[2J\n"), vec!["hello", "x[2J"]);
        let long = [b'a'; LINE_MAX_BYTES + 3];
        let lines = send(&mut u, &long);
        assert_eq!(lines.len(), 1);
        let mut rest = Vec::new();
        u.flush(&mut |l| rest.push(l.len()));
        assert_eq!(rest, vec![3]);
    }

    #[test]
    fn dlab_switches_registers_and_lsr_is_always_ready() {
        let mut u = Uart16550::new();
        let mut none = |_: &[u8]| panic!("no output expected");
        u.write(3, 0x80, &mut none);
        u.write(0, 0x03, &mut none);
        u.write(1, 0x00, &mut none);
        assert_eq!((u.read(0), u.read(1)), (3, 0));
        u.write(3, 0x03, &mut none);
        assert_eq!(u.read(3), 3);
        u.write(7, 0x5a, &mut none);
        assert_eq!(u.read(7), 0x5a);
        assert_eq!(u.read(5) & 0x20, 0x20);
        assert_eq!(u.read(0), 0);
    }
}
