//! The virtual PC platform a single-vCPU Linux needs, as pure logic: each
//! device a state machine driven by guest register accesses and a given
//! clock, tested on the host with no VM at all.
//!
//! What each module models (the measured minimal set of TESTBEDS.md
//! section 5: Debian's kernel with `acpi=off nolapic noapic` uses only
//! these):
//!
//! - [`bus`]: one dispatch for port I/O and MMIO. Devices register address
//!   ranges (refused when they overlap); an access nobody claims reads all
//!   ones and its writes vanish, and is reported once per address so the
//!   kernel can print one line about it.
//! - [`pic`]: the 8259A master/slave pair cascaded on IRQ 2, with the ELCR
//!   edge/level registers at 0x4D0/0x4D1; [`pic::DualPic::pending_vector`]
//!   and [`pic::DualPic::acknowledge`] are what the vCPU loop's injector
//!   uses.
//! - [`pit`]: the 8254 timer, counters computed from elapsed time at
//!   1.193182 MHz on each read (nothing ticks), channel 0's next IRQ 0
//!   edge reported as a deadline for one host timer; [`port61`] is system
//!   control port B, which gates channel 2 and shows its output (Linux
//!   calibrates the TSC through it).
//! - [`crate::uart`] (kept at its old path): the 16550A with its receive
//!   FIFO, interrupt identification and the modem/loopback registers Linux's
//!   8250 driver probes.
//! - [`rtc`]: the MC146818 CMOS clock and NVRAM at 0x70/0x71, time taken
//!   from a Unix-seconds clock, with the update-in-progress window and the
//!   periodic, alarm and update-ended interrupts on IRQ 8.
//! - [`i8042`]: the keyboard controller's status port and its reset
//!   command (0xFE), which becomes a [`bus::BusEvent::ResetRequested`].
//! - [`port80`]: the POST/delay port, a sink.
//! - [`exit_port`]: Thermocline's own exit device (0xF4: end the VM with a
//!   status; 0xF5: a mark line with the host's clock).
//! - [`inject`]: the vCPU loop's decision whether to inject the PIC's
//!   vector now, ask for an interrupt-window exit, or do nothing.
//! - [`lines`]: interrupt lines as one atomic word, for devices that live
//!   apart from the PIC; pulses survive until the vCPU loop folds them in.
//!
//! Left out, and why: the local APIC and I/O APIC (one vCPU boots with
//! `nolapic noapic` on the PIC alone; several vCPUs are a later step), the
//! 8259's single (non-cascaded) mode, its buffered mode and the 8080/85
//! call format (no PC uses them), keyboard and mouse data behind the i8042
//! (the console is the UART), the 16550's DMA mode signals and the PIT's
//! speaker. Each module says what it leaves out of its own device.
//!
//! Interrupt lines are a trait ([`IrqLine`]): a device owns its line and
//! raises or lowers it; [`lines::IrqPin`] is the implementation that
//! reaches the PIC through [`lines::IrqLevels`], a test's records it. Devices keep no clock: every method that
//! depends on time takes `now_ns`, a monotonic count of nanoseconds that
//! the caller supplies, as KVM's i8254 computes counts from ktime on read.
//!
//! Neighbours: the kernel (once it wires the platform) maps these onto a
//! VM's port exits, arms one host timer at the earliest deadline the PIT
//! and RTC report, and asks [`inject`] what to do before each VM entry.

pub mod bus;
pub mod exit_port;
pub mod i8042;
pub mod inject;
pub mod lines;
pub mod pic;
pub mod pit;
pub mod port61;
pub mod port80;
pub mod rtc;

/// An interrupt request line from a device towards the interrupt
/// controller. Devices call [`IrqLine::set_level`] with the level their
/// output pin now has, only when it changes; an edge-triggered PIC input
/// sees a request on each rise.
pub trait IrqLine {
    /// Drives the line to `high`.
    fn set_level(&mut self, high: bool);

    /// Drives the line high.
    fn raise(&mut self) {
        self.set_level(true);
    }

    /// Drives the line low.
    fn lower(&mut self) {
        self.set_level(false);
    }
}

/// A line connected to nothing: the device's interrupt output is unused.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoIrq;

impl IrqLine for NoIrq {
    fn set_level(&mut self, _high: bool) {}
}

impl<T: IrqLine + ?Sized> IrqLine for &mut T {
    fn set_level(&mut self, high: bool) {
        (**self).set_level(high);
    }
}

/// Nanoseconds per second, the unit every `now_ns` is in.
pub const NS_PER_SEC: u64 = 1_000_000_000;

#[cfg(test)]
pub(crate) mod testing {
    use super::IrqLine;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A line whose level and number of rising edges a test can read
    /// while the device owns its clone.
    #[derive(Clone, Debug, Default)]
    pub struct ProbeLine {
        pub level: Rc<Cell<bool>>,
        pub rises: Rc<Cell<u32>>,
    }

    impl ProbeLine {
        pub fn high(&self) -> bool {
            self.level.get()
        }
        pub fn rises(&self) -> u32 {
            self.rises.get()
        }
    }

    impl IrqLine for ProbeLine {
        fn set_level(&mut self, high: bool) {
            if high && !self.level.get() {
                self.rises.set(self.rises.get() + 1);
            }
            self.level.set(high);
        }
    }
}
