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
        let _ = CONSOLE.lock().write_fmt(args);
    });
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
