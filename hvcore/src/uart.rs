//! A 16550A UART device model (COM1 at 0x3F8, IRQ 4 on a PC): what
//! Linux's 8250 driver needs for an interactive console, and the
//! line-by-line console Thermocline's own guests print through.
//!
//! Follows the National Semiconductor PC16550D data sheet: the register
//! map and DLAB, the 16-byte receive FIFO and its trigger levels, the
//! interrupt identification priorities (line status, then received data
//! or character timeout, then transmitter empty, then modem status),
//! FCR, LCR, LSR (DR, OE, THRE, TEMT), MCR with OUT2 gating the interrupt
//! and loopback, MSR with its delta bits, and the scratch register. Linux's
//! `autoconfig` (drivers/tty/serial/8250/8250_port.c) identifies it as a
//! 16550A: IER keeps only bits 0-3, loopback reflects RTS/OUT2 in CTS/DCD,
//! IIR bits 7:6 are set when the FIFO is on and bits 5:4 are never set (no
//! EFR, no 64-byte FIFO), and a loopback burst fills exactly 16 bytes.
//!
//! The two ends the host sees: received bytes go into a host-side queue
//! ([`Uart16550::push_input`], [`HOST_QUEUE_BYTES`]) that refills the
//! FIFO as the guest reads, so typing faster than the guest reads loses
//! nothing until that queue is full; transmitted bytes wait in a 16-byte
//! transmit FIFO until the host takes them ([`Uart16550::drain_output`]),
//! and THRE/TEMT (and the transmitter-empty interrupt) follow that FIFO, so
//! a slow host console holds the guest back instead of dropping output.
//!
//! Left out: baud rate timing (bytes move as fast as the host moves them;
//! the divisor is stored for the guest to read back), parity, framing and
//! break errors (a virtual line has none), DMA mode signals, and the real
//! receive timeout's four character times: a FIFO below its trigger level
//! with nothing more queued reports the timeout at once.
//!
//! Key types: [`Uart16550`] (the device, which is also a
//! [`BusDevice`]), [`LineConsole`] (the UART with its output cut into
//! clean lines, for guests written for Thermocline). Neighbours: the
//! kernel's `vm` module routes port exits for `[COM1, COM1 + 8)` here.

use crate::devices::bus::{Access, BusDevice, BusEvent, read_bytes, write_bytes};
use crate::devices::{IrqLine, NoIrq};

/// Base port of COM1.
pub const COM1: u16 = 0x3f8;
/// COM1's IRQ.
pub const COM1_IRQ: u8 = 4;
/// Number of ports the UART decodes.
pub const PORTS: u16 = 8;
/// Longest line kept before it is flushed without a newline.
pub const LINE_MAX_BYTES: usize = 160;
/// Bytes of the receive and transmit FIFOs.
pub const FIFO_BYTES: usize = 16;
/// Bytes the host may queue for the guest beyond the receive FIFO.
pub const HOST_QUEUE_BYTES: usize = 1024;

// Register offsets.
const RBR_THR: u16 = 0;
const IER: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;

const IER_RX_DATA: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_LINE_STATUS: u8 = 1 << 2;
const IER_MODEM_STATUS: u8 = 1 << 3;
/// Bits 4-7 are not implemented on a 16550A (Linux checks that bit 6
/// does not stick, which would mean an XScale UART).
const IER_MASK: u8 = 0x0f;

const IIR_NONE: u8 = 0x01;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_ENABLE: u8 = 1 << 0;
const FCR_CLEAR_RX: u8 = 1 << 1;
const FCR_CLEAR_TX: u8 = 1 << 2;

const LCR_DLAB: u8 = 1 << 7;

const MCR_DTR: u8 = 1 << 0;
const MCR_RTS: u8 = 1 << 1;
const MCR_OUT1: u8 = 1 << 2;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOP: u8 = 1 << 4;
const MCR_MASK: u8 = 0x1f;

const LSR_DR: u8 = 1 << 0;
const LSR_OE: u8 = 1 << 1;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;

const MSR_CTS: u8 = 1 << 4;
const MSR_DSR: u8 = 1 << 5;
const MSR_RI: u8 = 1 << 6;
const MSR_DCD: u8 = 1 << 7;
/// What the modem inputs show with no loopback: a terminal that is always
/// there and ready (CTS, DSR, DCD), never ringing.
const MSR_CONNECTED: u8 = MSR_CTS | MSR_DSR | MSR_DCD;

/// A fixed-capacity byte queue.
#[derive(Clone, Debug)]
struct Ring<const N: usize> {
    bytes: [u8; N],
    head: usize,
    len: usize,
}

impl<const N: usize> Ring<N> {
    const fn new() -> Self {
        Self {
            bytes: [0; N],
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, b: u8) -> bool {
        if self.len == N {
            return false;
        }
        self.bytes[(self.head + self.len) % N] = b;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.bytes[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(b)
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

/// Why the UART interrupts, highest priority first; the value is IIR
/// bits 3:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    LineStatus = 0x06,
    RxData = 0x04,
    RxTimeout = 0x0c,
    Thre = 0x02,
    ModemStatus = 0x00,
}

/// State of one emulated UART, driving the interrupt line `L`.
#[derive(Clone, Debug)]
pub struct Uart16550<L = NoIrq> {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
    /// Sticky LSR error bits (OE), cleared by reading LSR.
    lsr_errors: u8,
    /// MSR delta bits, cleared by reading MSR.
    msr_deltas: u8,
    /// The transmitter-empty interrupt is pending (cleared by reading it
    /// from IIR or by writing THR, set when the transmit FIFO empties or
    /// the interrupt is enabled while it is empty).
    thre_pending: bool,
    rx: Ring<FIFO_BYTES>,
    tx: Ring<FIFO_BYTES>,
    host: Ring<HOST_QUEUE_BYTES>,
    tx_dropped: u64,
    irq: L,
    irq_level: bool,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// A UART after reset whose interrupt output goes nowhere.
    pub const fn new() -> Self {
        Self::with_irq(NoIrq)
    }
}

impl<L: IrqLine> Uart16550<L> {
    /// A UART after reset driving `irq`.
    pub const fn with_irq(irq: L) -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fcr: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            thre_pending: false,
            rx: Ring::new(),
            tx: Ring::new(),
            host: Ring::new(),
            tx_dropped: 0,
            irq,
            irq_level: false,
        }
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn fifo_bytes(&self) -> usize {
        if self.fifo_enabled() { FIFO_BYTES } else { 1 }
    }

    fn rx_trigger(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    /// The modem status inputs: the MCR outputs in loopback (RTS to CTS,
    /// DTR to DSR, OUT1 to RI, OUT2 to DCD), a connected terminal otherwise.
    fn modem_inputs(&self) -> u8 {
        if !self.loopback() {
            return MSR_CONNECTED;
        }
        let m = self.mcr;
        let bit = |mask: u8, to: u8| if m & mask != 0 { to } else { 0 };
        bit(MCR_RTS, MSR_CTS)
            | bit(MCR_DTR, MSR_DSR)
            | bit(MCR_OUT1, MSR_RI)
            | bit(MCR_OUT2, MSR_DCD)
    }

    /// Sets the delta bits for input changes from `before` to now.
    fn note_modem_change(&mut self, before: u8) {
        let after = self.modem_inputs();
        let changed = before ^ after;
        // DCTS, DDSR, DDCD: any change; TERI: RI's trailing edge only.
        self.msr_deltas |= (changed & (MSR_CTS | MSR_DSR)) >> 4;
        self.msr_deltas |= (changed & MSR_DCD) >> 4;
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            self.msr_deltas |= 1 << 2;
        }
    }

    fn cause(&self) -> Option<Cause> {
        let ier = self.ier;
        if ier & IER_LINE_STATUS != 0 && self.lsr_errors != 0 {
            Some(Cause::LineStatus)
        } else if ier & IER_RX_DATA != 0 && self.rx.len >= self.rx_trigger() {
            Some(Cause::RxData)
        } else if ier & IER_RX_DATA != 0 && self.rx.len > 0 {
            Some(Cause::RxTimeout)
        } else if ier & IER_THRE != 0 && self.thre_pending {
            Some(Cause::Thre)
        } else if ier & IER_MODEM_STATUS != 0 && self.msr_deltas != 0 {
            Some(Cause::ModemStatus)
        } else {
            None
        }
    }

    /// Recomputes the interrupt output: a pending cause, gated by OUT2 (the
    /// PC's interrupt buffer enable), and off in loopback, where the data
    /// sheet forces the modem control outputs (OUT2 among them) inactive.
    fn update_irq(&mut self) {
        let level = self.cause().is_some() && self.mcr & MCR_OUT2 != 0 && !self.loopback();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Moves queued host input into the receive FIFO (not in loopback,
    /// where the serial input is disconnected).
    fn refill_rx(&mut self) {
        if self.loopback() {
            return;
        }
        while self.rx.len < self.fifo_bytes() {
            let Some(b) = self.host.pop() else { break };
            self.rx.push(b);
        }
    }

    /// A byte arriving at the receiver from the line (loopback): into the
    /// FIFO, or an overrun when it is full.
    fn receive_from_line(&mut self, byte: u8) {
        if self.rx.len < self.fifo_bytes() {
            self.rx.push(byte);
            return;
        }
        self.lsr_errors |= LSR_OE;
        // Without the FIFO the new character replaces the unread one; with
        // it, the character in the shift register is lost.
        if !self.fifo_enabled() {
            self.rx.clear();
            self.rx.push(byte);
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            self.receive_from_line(byte);
            self.thre_pending = true;
            return;
        }
        if self.tx.len >= self.fifo_bytes() || !self.tx.push(byte) {
            self.tx_dropped += 1;
        }
        self.thre_pending = false;
    }

    /// A guest write of `value` to register `offset` (0-7; others ignored).
    pub fn write(&mut self, offset: u16, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match (offset, dlab) {
            (RBR_THR, false) => self.transmit(value),
            (RBR_THR, true) => self.dll = value,
            (IER, false) => {
                let enabling_thre = value & IER_THRE != 0 && self.ier & IER_THRE == 0;
                self.ier = value & IER_MASK;
                // Enabling the interrupt while the transmitter is empty
                // raises it (Linux's startup relies on that to trust THRE).
                if enabling_thre && self.tx.len == 0 {
                    self.thre_pending = true;
                }
            }
            (IER, true) => self.dlm = value,
            (IIR_FCR, _) => self.write_fcr(value),
            (LCR, _) => self.lcr = value,
            (MCR, _) => {
                let before = self.modem_inputs();
                self.mcr = value & MCR_MASK;
                self.note_modem_change(before);
                self.refill_rx();
            }
            (SCR, _) => self.scr = value,
            // LSR and MSR are read-only (writes are factory test on some
            // parts; nothing here).
            _ => {}
        }
        self.update_irq();
    }

    fn write_fcr(&mut self, value: u8) {
        let had_tx = self.tx.len > 0;
        // Turning the FIFOs on or off clears them.
        if (value ^ self.fcr) & FCR_ENABLE != 0 {
            self.rx.clear();
            self.tx.clear();
        }
        if value & FCR_CLEAR_RX != 0 {
            self.rx.clear();
        }
        if value & FCR_CLEAR_TX != 0 {
            self.tx.clear();
        }
        if had_tx && self.tx.len == 0 {
            self.thre_pending = true;
        }
        // Bits 1-2 self-clear; 3 (DMA mode) and 4-5 (reserved) are not
        // kept; 7:6 is the receive trigger level.
        self.fcr = value & (FCR_ENABLE | 0xc0);
        self.refill_rx();
    }

    /// A guest read of register `offset` (0-7; others read 0xFF). Reads
    /// have effects: RBR pops the FIFO, IIR acknowledges THRE, LSR clears
    /// the overrun, MSR clears the deltas.
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        let value = match (offset, dlab) {
            (RBR_THR, false) => {
                let b = self.rx.pop().unwrap_or(0);
                self.refill_rx();
                b
            }
            (RBR_THR, true) => self.dll,
            (IER, false) => self.ier,
            (IER, true) => self.dlm,
            (IIR_FCR, _) => self.read_iir(),
            (LCR, _) => self.lcr,
            (MCR, _) => self.mcr,
            (LSR, _) => {
                let lsr = self.lsr();
                self.lsr_errors = 0;
                lsr
            }
            (MSR, _) => {
                let msr = self.modem_inputs() | self.msr_deltas;
                self.msr_deltas = 0;
                msr
            }
            (SCR, _) => self.scr,
            _ => 0xff,
        };
        self.update_irq();
        value
    }

    fn read_iir(&mut self) -> u8 {
        let fifo = if self.fifo_enabled() {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        match self.cause() {
            Some(cause) => {
                if cause == Cause::Thre {
                    self.thre_pending = false;
                }
                fifo | cause as u8
            }
            None => fifo | IIR_NONE,
        }
    }

    fn lsr(&self) -> u8 {
        let mut lsr = self.lsr_errors;
        if self.rx.len > 0 {
            lsr |= LSR_DR;
        }
        if self.tx.len == 0 {
            lsr |= LSR_THRE | LSR_TEMT;
        }
        lsr
    }

    /// Queues bytes typed on the host for the guest; returns how many were
    /// taken (fewer than `bytes.len()` when the host queue is full: keep
    /// the rest and offer it again later).
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.iter().take_while(|&&b| self.host.push(b)).count();
        self.refill_rx();
        self.update_irq();
        taken
    }

    /// Bytes waiting for the guest, in the FIFO and the host queue.
    pub fn input_pending(&self) -> usize {
        self.rx.len + self.host.len
    }

    /// Hands the transmitted bytes to `out`, in order, and empties the
    /// transmit FIFO (which raises the transmitter-empty interrupt).
    pub fn drain_output(&mut self, mut out: impl FnMut(u8)) {
        if self.tx.len == 0 {
            return;
        }
        while let Some(b) = self.tx.pop() {
            out(b);
        }
        self.thre_pending = true;
        self.update_irq();
    }

    /// The interrupt output's level.
    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    /// Bytes the guest wrote while the transmit FIFO was full (it did not
    /// wait for THRE), which were lost.
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }
}

impl<L: IrqLine> BusDevice for Uart16550<L> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        read_bytes(access, data, |offset| {
            Uart16550::read(self, u16::try_from(offset).unwrap_or(u16::MAX))
        });
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        write_bytes(access, data, |offset, value| {
            Uart16550::write(self, u16::try_from(offset).unwrap_or(u16::MAX), value);
            None
        })
    }
}

/// The UART with its output cut into lines: for guests written for
/// Thermocline, whose console lines the kernel prints with the VM's name
/// in front. Carriage returns and other control bytes except tab are
/// dropped, so a guest cannot drive the host's terminal.
#[derive(Clone, Debug)]
pub struct LineConsole {
    uart: Uart16550,
    line: [u8; LINE_MAX_BYTES],
    len: usize,
}

impl Default for LineConsole {
    fn default() -> Self {
        Self::new()
    }
}

impl LineConsole {
    /// A console after reset.
    pub const fn new() -> Self {
        Self {
            uart: Uart16550::new(),
            line: [0; LINE_MAX_BYTES],
            len: 0,
        }
    }

    /// A guest write of `value` to register `offset` (0-7). `sink` receives
    /// each completed line, without its newline.
    pub fn write(&mut self, offset: u16, value: u8, sink: &mut impl FnMut(&[u8])) {
        self.uart.write(offset, value);
        let Self { uart, line, len } = self;
        uart.drain_output(|b| push_byte(line, len, b, sink));
    }

    /// A guest read of register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        self.uart.read(offset)
    }

    /// Hands a partial line to `sink` (when the VM stops).
    pub fn flush(&mut self, sink: &mut impl FnMut(&[u8])) {
        if self.len > 0 {
            sink(&self.line[..self.len]);
            self.len = 0;
        }
    }
}

fn push_byte(
    line: &mut [u8; LINE_MAX_BYTES],
    len: &mut usize,
    byte: u8,
    sink: &mut impl FnMut(&[u8]),
) {
    match byte {
        b'\n' => {
            sink(&line[..*len]);
            *len = 0;
        }
        b'\t' | 0x20..=0x7e => {
            line[*len] = byte;
            *len += 1;
            if *len == LINE_MAX_BYTES {
                sink(&line[..*len]);
                *len = 0;
            }
        }
        // Anything else could drive the host's terminal: drop it.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::testing::ProbeLine;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    fn send(u: &mut LineConsole, s: &[u8]) -> Vec<String> {
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
        let mut u = LineConsole::new();
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
    fn dlab_switches_registers_and_lsr_is_ready_after_each_byte() {
        let mut u = LineConsole::new();
        let mut none = |_: &[u8]| panic!("no output expected");
        u.write(3, 0x80, &mut none);
        u.write(0, 0x03, &mut none);
        u.write(1, 0x00, &mut none);
        assert_eq!((u.read(0), u.read(1)), (3, 0));
        u.write(3, 0x03, &mut none);
        assert_eq!(u.read(3), 3);
        u.write(7, 0x5a, &mut none);
        assert_eq!(u.read(7), 0x5a);
        u.write(0, b'x', &mut none);
        assert_eq!(u.read(5) & 0x60, 0x60);
        assert_eq!(u.read(0), 0);
    }

    /// Linux's `autoconfig` and `size_fifo`, step by step, ending in the
    /// verdict it would reach.
    fn linux_probe(u: &mut Uart16550<impl IrqLine>) -> &'static str {
        // IER existence test.
        let saved_ier = u.read(IER);
        u.write(IER, 0);
        let s2 = u.read(IER) & 0x0f;
        u.write(IER, 0x0f);
        let s3 = u.read(IER) & 0x0f;
        u.write(IER, saved_ier);
        if s2 != 0 || s3 != 0x0f {
            return "none (IER test)";
        }
        // Loopback test.
        let save_mcr = u.read(MCR);
        let save_lcr = u.read(LCR);
        u.write(MCR, MCR_LOOP | 0x0a);
        let status = u.read(MSR) & 0xf0;
        u.write(MCR, save_mcr);
        if status != 0x90 {
            return "none (loopback test)";
        }
        // FIFO detection through IIR bits 7:6.
        u.write(LCR, 0xbf);
        u.write(IIR_FCR, 0); // EFR on chips that have one
        u.write(LCR, 0);
        u.write(IIR_FCR, FCR_ENABLE);
        match u.read(IIR_FCR) >> 6 {
            0 => return "8250/16450",
            1 => return "unknown",
            2 => return "16550",
            _ => {}
        }
        // autoconfig_16550a: EFR with DLAB (ST16C650V1), then with 0xBF.
        u.write(LCR, 0x80);
        if u.read(IIR_FCR) == 0 {
            return "16650";
        }
        u.write(LCR, 0xbf);
        if u.read(IIR_FCR) == 0 {
            return "EFR UART";
        }
        // National Semiconductor SuperIO: bank 2's EXCR1 mirrors LOOP.
        u.write(LCR, 0);
        let s1 = u.read(MCR);
        u.write(LCR, 0xe0);
        let s2 = u.read(IIR_FCR);
        if (s1 ^ s2) & MCR_LOOP == 0 {
            u.write(LCR, 0);
            u.write(MCR, s1 ^ MCR_LOOP);
            u.write(LCR, 0xe0);
            let s2 = u.read(IIR_FCR);
            u.write(LCR, 0);
            u.write(MCR, s1);
            if (s2 ^ s1) & MCR_LOOP != 0 {
                return "NS16550A";
            }
        }
        // TI16750: IIR bit 5 with the 64-byte FIFO bit.
        u.write(LCR, 0);
        u.write(IIR_FCR, FCR_ENABLE | 0x20);
        let s1 = u.read(IIR_FCR) >> 5;
        u.write(IIR_FCR, FCR_ENABLE);
        u.write(LCR, 0x80);
        u.write(IIR_FCR, FCR_ENABLE | 0x20);
        let s2 = u.read(IIR_FCR) >> 5;
        u.write(IIR_FCR, FCR_ENABLE);
        u.write(LCR, 0);
        if s1 == 6 && s2 == 7 {
            return "16750";
        }
        // XScale: IER bit 6 sticks.
        let ier = u.read(IER);
        u.write(IER, ier & !0x40);
        if u.read(IER) & 0x40 == 0 {
            u.write(IER, ier | 0x40);
            if u.read(IER) & 0x40 != 0 {
                return "XScale";
            }
        }
        u.write(IER, ier);
        // size_fifo: 256 bytes in loopback, count what arrives.
        u.write(LCR, 0);
        let old_fcr = u.read(IIR_FCR);
        let old_mcr = u.read(MCR);
        u.write(IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX);
        u.write(MCR, MCR_LOOP);
        u.write(LCR, 0x80);
        u.write(RBR_THR, 1);
        u.write(IER, 0);
        u.write(LCR, 0x03);
        for b in 0..=255 {
            u.write(RBR_THR, b);
        }
        let mut count = 0;
        while u.read(LSR) & LSR_DR != 0 && count < 256 {
            u.read(RBR_THR);
            count += 1;
        }
        u.write(IIR_FCR, old_fcr);
        u.write(MCR, old_mcr);
        u.write(LCR, save_lcr);
        if count == 64 { "U6 16550A" } else { "16550A" }
    }

    #[test]
    fn linux_autoconfig_finds_a_16550a() {
        let mut u = Uart16550::new();
        assert_eq!(linux_probe(&mut u), "16550A");
        // And the loopback burst left nothing behind for the console.
        u.drain_output(|_| panic!("loopback bytes reached the host"));
    }

    #[test]
    fn linux_thre_tests_see_the_interrupt_reasserted() {
        let line = ProbeLine::default();
        let mut u = Uart16550::with_irq(line.clone());
        // serial8250_do_startup's THRE re-assert test.
        u.write(IER, IER_THRE);
        let iir1 = u.read(IIR_FCR);
        u.write(IER, 0);
        u.write(IER, IER_THRE);
        let iir = u.read(IIR_FCR);
        u.write(IER, 0);
        assert_eq!((iir1 & 1, iir & 1), (0, 0));
        // The TX-enable test: IER.THRI, LSR, IIR shows the interrupt.
        u.write(IER, IER_THRE);
        let lsr = u.read(LSR);
        let iir = u.read(IIR_FCR);
        assert_eq!((lsr & LSR_TEMT, iir & 0x0f), (LSR_TEMT, 0x02));
        // No OUT2: the line stayed low through all of it.
        assert_eq!(line.rises(), 0);
    }

    #[test]
    fn out2_gates_the_line_and_each_thre_is_an_edge() {
        let line = ProbeLine::default();
        let mut u = Uart16550::with_irq(line.clone());
        u.write(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        u.write(IER, IER_THRE);
        assert!(line.high());
        assert_eq!(u.read(IIR_FCR), 0x02);
        assert!(!line.high());
        u.write(RBR_THR, b'a');
        assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), 0);
        let mut out = Vec::new();
        u.drain_output(|b| out.push(b));
        assert_eq!(out, b"a");
        assert_eq!(line.rises(), 2);
        u.write(MCR, MCR_DTR | MCR_RTS);
        assert!(!line.high());
    }

    #[test]
    fn receive_fifo_trigger_timeout_and_data_ready() {
        let line = ProbeLine::default();
        let mut u = Uart16550::with_irq(line.clone());
        u.write(MCR, MCR_OUT2);
        // Linux's 16550A setting: FIFO on, trigger at 8... here 4 (01).
        u.write(IIR_FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX | 0x40);
        u.write(IER, IER_RX_DATA | IER_LINE_STATUS);
        assert_eq!(u.push_input(b"ab"), 2);
        // Below the trigger with nothing more coming: the timeout.
        assert_eq!(u.read(IIR_FCR), 0xcc);
        assert!(line.high());
        u.push_input(b"cdefghijklmnopqrstuv");
        assert_eq!(u.read(IIR_FCR), 0xc4);
        assert_eq!(u.input_pending(), 22);
        let mut got = Vec::new();
        while u.read(LSR) & LSR_DR != 0 {
            got.push(u.read(RBR_THR));
        }
        assert_eq!(got, b"abcdefghijklmnopqrstuv");
        assert_eq!(u.read(IIR_FCR), 0xc1);
        assert!(!line.high());
    }

    #[test]
    fn host_queue_takes_what_fits() {
        let mut u = Uart16550::new();
        let big = vec![b'x'; HOST_QUEUE_BYTES + FIFO_BYTES + 10];
        assert_eq!(u.push_input(&big), HOST_QUEUE_BYTES);
        assert_eq!(u.input_pending(), HOST_QUEUE_BYTES);
        // FIFO off: one byte at a time, still all of it.
        let mut n = 0;
        while u.read(LSR) & LSR_DR != 0 {
            u.read(RBR_THR);
            n += 1;
        }
        assert_eq!(n, HOST_QUEUE_BYTES);
    }

    #[test]
    fn loopback_overrun_and_line_status_priority() {
        let line = ProbeLine::default();
        let mut u = Uart16550::with_irq(line.clone());
        u.write(IIR_FCR, FCR_ENABLE);
        u.write(
            IER,
            IER_RX_DATA | IER_THRE | IER_LINE_STATUS | IER_MODEM_STATUS,
        );
        u.write(MCR, MCR_LOOP | MCR_OUT2);
        for b in 0..17 {
            u.write(RBR_THR, b);
        }
        // Line status outranks received data and THRE; the line itself is
        // off in loopback.
        assert_eq!(u.read(IIR_FCR), 0xc6);
        assert!(!line.high());
        assert_eq!(u.read(LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        assert_eq!(u.read(LSR) & LSR_OE, 0);
        assert_eq!(u.read(IIR_FCR), 0xc4);
        for _ in 0..16 {
            u.read(RBR_THR);
        }
        assert_eq!(u.read(IIR_FCR), 0xc2);
        // THRE read from IIR is acknowledged: modem status (loopback
        // DCD rose with OUT2) is next.
        assert_eq!(u.read(IIR_FCR), 0xc0);
        // Loopback dropped CTS and DSR (RTS, DTR are low), kept DCD.
        assert_eq!(u.read(MSR), MSR_DCD | 0x03);
        assert_eq!(u.read(IIR_FCR), 0xc1);
        // Without the FIFO a second byte overwrites the first.
        u.write(IIR_FCR, 0);
        u.write(RBR_THR, 1);
        u.write(RBR_THR, 2);
        assert_eq!(u.read(LSR) & LSR_OE, LSR_OE);
        assert_eq!(u.read(RBR_THR), 2);
    }

    #[test]
    fn msr_deltas_follow_loopback_changes() {
        let mut u = Uart16550::new();
        assert_eq!(u.read(MSR), MSR_CONNECTED);
        // Into loopback with all outputs low: CTS, DSR, DCD fall.
        u.write(MCR, MCR_LOOP);
        assert_eq!(u.read(MSR), 0x0b);
        u.write(MCR, MCR_LOOP | MCR_OUT1);
        assert_eq!(u.read(MSR), MSR_RI);
        u.write(MCR, MCR_LOOP);
        assert_eq!(u.read(MSR), 0x04); // trailing edge of RI
        assert_eq!(u.read(MSR), 0);
    }

    #[test]
    fn host_input_waits_out_loopback() {
        let mut u = Uart16550::new();
        u.write(MCR, MCR_LOOP);
        u.push_input(b"k");
        assert_eq!(u.read(LSR) & LSR_DR, 0);
        u.write(MCR, 0);
        assert_eq!(u.read(RBR_THR), b'k');
    }

    #[test]
    fn guest_ignoring_thre_loses_bytes_and_they_are_counted() {
        let mut u = Uart16550::new();
        u.write(IIR_FCR, FCR_ENABLE);
        for b in 0..20 {
            u.write(RBR_THR, b);
        }
        assert_eq!(u.tx_dropped(), 4);
        let mut out = Vec::new();
        u.drain_output(|b| out.push(b));
        assert_eq!(out, (0..16).collect::<Vec<u8>>());
    }

    /// A register-level reference for the interrupt identification.
    fn expected_iid(ier: u8, overrun: bool, rx: usize, trigger: usize, thre: bool) -> u8 {
        if ier & IER_LINE_STATUS != 0 && overrun {
            0x06
        } else if ier & IER_RX_DATA != 0 && rx >= trigger {
            0x04
        } else if ier & IER_RX_DATA != 0 && rx > 0 {
            0x0c
        } else if ier & IER_THRE != 0 && thre {
            0x02
        } else {
            0x01
        }
    }

    proptest! {
        /// Whatever the guest and host do, the receive FIFO hands bytes
        /// over in order with none lost or duplicated (outside loopback),
        /// and IIR names the highest-priority cause.
        #[test]
        fn fifo_order_and_iir_priority(ops in prop::collection::vec((0u8..6, any::<u8>()), 1..200)) {
            let mut u = Uart16550::new();
            let mut sent: Vec<u8> = Vec::new();
            let mut got: Vec<u8> = Vec::new();
            let mut next = 0u8;
            for (op, arg) in ops {
                match op {
                    0 => {
                        let n = usize::from(arg % 40);
                        let bytes: Vec<u8> = (0..n).map(|i| next.wrapping_add(i as u8)).collect();
                        let taken = u.push_input(&bytes);
                        sent.extend_from_slice(&bytes[..taken]);
                        next = next.wrapping_add(taken as u8);
                    }
                    1 => {
                        if u.read(LSR) & LSR_DR != 0 {
                            got.push(u.read(RBR_THR));
                        }
                    }
                    2 => u.write(IER, arg),
                    3 => {
                        // Switching the FIFO on or off empties it: those
                        // bytes are lost on hardware too.
                        if (arg ^ u.fcr) & FCR_ENABLE != 0 {
                            let lost = got.len()..got.len() + u.rx.len;
                            sent.drain(lost);
                        }
                        u.write(IIR_FCR, arg & !FCR_CLEAR_RX);
                    }
                    4 => {
                        let ier = u.read(IER);
                        let fifo = u.fcr & FCR_ENABLE != 0;
                        let want = expected_iid(ier, u.lsr_errors != 0, u.rx.len, u.rx_trigger(), u.thre_pending);
                        let iir = u.read(IIR_FCR);
                        prop_assert_eq!(iir & 0x0f, want);
                        prop_assert_eq!(iir & 0xf0, if fifo { 0xc0 } else { 0 });
                    }
                    _ => {
                        u.write(RBR_THR, arg);
                        u.drain_output(|_| {});
                    }
                }
            }
            while u.read(LSR) & LSR_DR != 0 {
                got.push(u.read(RBR_THR));
            }
            prop_assert_eq!(got, sent);
        }
    }
}
