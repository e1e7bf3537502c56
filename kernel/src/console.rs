//! The serial console on COM1: `print!`/`println!`, shared by the logger.
//!
//! Normal output goes through a `uart_16550` driver behind a spin lock taken
//! with interrupts off (an interrupt handler that prints on the same CPU must
//! not find the lock held by the code it interrupted). Panic and exception
//! reports use [`emergency_writer`], which writes the port directly without
//! the lock: they may run while this CPU holds it, and a report garbled by a
//! concurrent line is better than none.
//!
//! Line endings: `\n` is sent as `\r\n` so a raw terminal shows lines; the
//! harness strips the `\r`.
//!
//! A guest may own COM1 (`cargo xtask run --guest linux`: its shell is the
//! console, [`write_raw`] and [`read_input`]); then [`divert_to_com2`]
//! moves the kernel's own lines to COM2, which `cargo xtask run` writes to
//! a file.
//!
//! Neighbours: `hw` (ports), `logger` (log facade), `panic`, `interrupts`.

use crate::hw;
use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, Uart16550};

/// The console's sink: the initialised UART, or raw port writes when the
/// device did not answer `uart_16550`'s presence check (a minimal emulated
/// port, such as the Bochs CPU-core bed's, may not model the scratch register).
enum Sink {
    /// Not initialised yet: raw writes, so even the earliest line is seen.
    Raw,
    /// The driver, after a successful init.
    Uart(Uart16550<PioBackend>),
}

/// Writes one string with newline translation to a byte sink.
fn write_translated(s: &str, mut put: impl FnMut(&[u8])) {
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            put(b"\r\n");
        }
        put(line.as_bytes());
    }
}

impl Write for Sink {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        match self {
            Sink::Raw => write_translated(s, |b| b.iter().copied().for_each(hw::com1_write_byte)),
            Sink::Uart(uart) => write_translated(s, |b| uart.send_bytes_exact(b)),
        }
        Ok(())
    }
}

static CONSOLE: Mutex<Sink> = Mutex::new(Sink::Raw);

/// COM2, once [`divert_to_com2`] found it: where the log goes while a
/// guest owns COM1.
static COM2: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);
/// Whether `print!`/`println!` go to COM2.
static DIVERTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Sends `print!`/`println!` (the log, the aging report, VM lines) to COM2
/// from now on, so a guest that owns COM1 as its console (a Linux VM's
/// shell) is not garbled by them; panic and exception reports stay on COM1.
/// Returns `false`, and changes nothing, when COM2 fails the UART presence
/// check (no second serial port).
pub fn divert_to_com2() -> bool {
    without_interrupts(|| {
        let mut com2 = COM2.lock();
        if com2.is_none() {
            // SAFETY: COM2 (0x2F8..0x2FF) is the standard second serial
            // port; nothing else in this kernel uses those ports.
            let Ok(mut uart) = (unsafe { Uart16550::new_port(hw::COM2) }) else {
                return false;
            };
            let config = Config {
                baud_rate: BaudRate::Baud115200,
                ..Config::default()
            };
            if uart.init(config).is_err() {
                return false;
            }
            *com2 = Some(uart);
        }
        DIVERTED.store(true, core::sync::atomic::Ordering::Release);
        true
    })
}

/// Initialises COM1 at 115200 8N1. Idempotent; called by [`crate::init`].
/// Returns whether the UART passed the driver's presence check.
pub fn init() -> bool {
    without_interrupts(|| {
        let mut sink = CONSOLE.lock();
        if matches!(*sink, Sink::Uart(_)) {
            return true;
        }
        // SAFETY: COM1 (0x3F8..0x3FF) is the standard PC serial port; this
        // kernel is its only user and nothing else is mapped at those ports.
        let Ok(mut uart) = (unsafe { Uart16550::new_port(hw::COM1) }) else {
            return false;
        };
        let config = Config {
            baud_rate: BaudRate::Baud115200,
            ..Config::default()
        };
        if uart.init(config).is_err() {
            return false;
        }
        *sink = Sink::Uart(uart);
        true
    })
}

/// Runs `f` with this CPU's interrupts disabled, restoring the previous state.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(f)
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    without_interrupts(|| {
        // Writes to the sink cannot fail; a formatting error from a Display
        // impl only truncates this message.
        if DIVERTED.load(core::sync::atomic::Ordering::Acquire)
            && let Some(com2) = COM2.lock().as_mut()
        {
            let _ = Com2Writer(com2).write_fmt(args);
            return;
        }
        let _ = CONSOLE.lock().write_fmt(args);
    });
}

struct Com2Writer<'a>(&'a mut Uart16550<PioBackend>);

impl Write for Com2Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_translated(s, |b| self.0.send_bytes_exact(b));
        Ok(())
    }
}

/// Writes `bytes` as they are, without newline translation: a guest's
/// console output (a Linux VM's COM1), which carries its own `\r\n`.
pub fn write_raw(bytes: &[u8]) {
    without_interrupts(|| match &mut *CONSOLE.lock() {
        Sink::Raw => bytes.iter().copied().for_each(hw::com1_write_byte),
        Sink::Uart(uart) => uart.send_bytes_exact(bytes),
    });
}

/// Bytes typed on the console since the last call, at most `buf.len()`
/// (none when the UART failed its presence check: raw mode cannot tell a
/// missing receiver from an idle one).
pub fn read_input(buf: &mut [u8]) -> usize {
    without_interrupts(|| match &mut *CONSOLE.lock() {
        Sink::Raw => 0,
        Sink::Uart(uart) => uart.receive_bytes(buf),
    })
}

/// A lock-free console writer for panic and exception reports.
#[derive(Debug)]
pub struct EmergencyWriter;

impl Write for EmergencyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_translated(s, |b| b.iter().copied().for_each(hw::com1_write_byte));
        Ok(())
    }
}

/// The lock-free writer; see the module docs for when to use it.
pub fn emergency_writer() -> EmergencyWriter {
    EmergencyWriter
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::_print(format_args!($($arg)*)));
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::console::_print(format_args!("{}\n", format_args!($($arg)*))));
}
