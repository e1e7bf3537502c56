//! The guest's devices, each registered on the VM's one bus
//! (`hvcore::devices::bus`, port I/O and MMIO) by [`Devices::for_layout`]
//! or [`Devices::for_pc`]. The exit handlers (`super::ports`) ask the bus
//! for every IN, OUT, INS and OUTS; they know no device by its ports, and
//! the bus reports each unclaimed port once.
//!
//! Two sets:
//! - The project's own guests: COM1 as a line console (`uart`), each line
//!   printed as `[vm NAME] ...`.
//! - A PC for Linux ([`Devices::for_pc`]): the 8259 pair (with ELCR), the
//!   8254 with port B at 0x61, COM1 as a 16550A on IRQ 4 whose output goes
//!   straight to the console and whose input is the console's (when this
//!   VM owns it), the CMOS RTC on IRQ 8 started from the host's CMOS clock,
//!   the i8042 (its reset command stops the VM), port 0x80 and the exit
//!   device (`hvcore::devices::exit_port`). Devices raise lines in one
//!   atomic word (`IrqLevels`); [`Devices::poll`] folds them into the PIC
//!   before each entry.
//!
//! A new device: a variant of [`Device`] and one registration.

pub mod uart;

use alloc::boxed::Box;
use alloc::sync::Arc;
use hvcore::devices::bus::{Access, Bus, BusDevice, BusError, BusEvent, DeviceId, Space};
use hvcore::devices::exit_port::{self, ExitPort};
use hvcore::devices::i8042::{self, I8042};
use hvcore::devices::lines::{IrqLevels, IrqPin};
use hvcore::devices::pic::{self, DualPic};
use hvcore::devices::pit::{self, Pit};
use hvcore::devices::port61;
use hvcore::devices::port80::{self, PostPort};
use hvcore::devices::rtc::{self, CivilTime, Rtc};
use hvcore::uart::{self as uart16550, Uart16550};

/// A device's interrupt line: a pin in the VM's `IrqLevels`.
pub type Pin = IrqPin<Arc<IrqLevels>>;

/// Every kind of device a VM may have.
#[derive(Debug)]
pub enum Device {
    /// COM1 of the project's guests: output cut into lines (boxed: its
    /// line buffer).
    LineConsole(Box<uart::Com1>),
    /// The 8259 pair.
    Pic(DualPic),
    /// The 8254 (and port B).
    Pit(Pit<Pin>),
    /// COM1 as a 16550A (boxed: its queues make it the big one).
    Serial(Box<Uart16550<Pin>>),
    /// The CMOS RTC.
    Rtc(Rtc<Pin>),
    /// The keyboard controller.
    Kbd(I8042),
    /// Port 0x80.
    Post(PostPort),
    /// The exit device.
    Exit(ExitPort),
}

impl Device {
    fn inner(&mut self) -> &mut dyn BusDevice {
        match self {
            Self::LineConsole(d) => &mut **d,
            Self::Pic(d) => d,
            Self::Pit(d) => d,
            Self::Serial(d) => &mut **d,
            Self::Rtc(d) => d,
            Self::Kbd(d) => d,
            Self::Post(d) => d,
            Self::Exit(d) => d,
        }
    }
}

impl BusDevice for Device {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        self.inner().read(access, data);
    }
    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        self.inner().write(access, data)
    }
}

/// The ids of the PC devices the vCPU loop reaches directly.
#[derive(Clone, Copy, Debug)]
struct PcIds {
    pic: DeviceId,
    pit: DeviceId,
    serial: DeviceId,
    rtc: DeviceId,
}

/// One VM's devices: the bus and, for a PC, the interrupt plumbing.
#[derive(Debug)]
pub struct Devices {
    /// The bus every access goes through.
    pub bus: Bus<Device>,
    levels: Arc<IrqLevels>,
    pc: Option<PcIds>,
    line_console: Option<DeviceId>,
}

impl Devices {
    /// The devices of the project's guests (module docs).
    pub fn for_layout(name: &'static str) -> Result<Self, BusError> {
        let mut bus = Bus::new();
        let com1 = bus.add(Device::LineConsole(Box::new(uart::Com1::new(name))));
        bus.map(
            Space::Port,
            u64::from(uart::BASE),
            u64::from(uart::PORTS),
            com1,
        )?;
        Ok(Self {
            bus,
            levels: Arc::new(IrqLevels::new()),
            pc: None,
            line_console: Some(com1),
        })
    }

    /// The PC Linux boots on (module docs); the RTC starts at `unix_s`
    /// at monotonic time `now_ns`.
    pub fn for_pc(unix_s: u64, now_ns: u64) -> Result<Self, BusError> {
        let levels = Arc::new(IrqLevels::new());
        let pin = |irq| IrqPin::new(levels.clone(), irq);
        let mut bus = Bus::new();
        let pic = bus.add(Device::Pic(DualPic::new()));
        let pit = bus.add(Device::Pit(Pit::new(pin(pit::PIT_IRQ))));
        let serial = bus.add(Device::Serial(Box::new(Uart16550::with_irq(pin(
            uart16550::COM1_IRQ,
        )))));
        let rtc = bus.add(Device::Rtc(Rtc::new(unix_s, now_ns, pin(rtc::RTC_IRQ))));
        let kbd = bus.add(Device::Kbd(I8042::new()));
        let post = bus.add(Device::Post(PostPort::default()));
        let exit = bus.add(Device::Exit(ExitPort));
        for (base, len, id) in [
            (pic::MASTER_PORT, 2, pic),
            (pic::SLAVE_PORT, 2, pic),
            (pic::ELCR_PORT, 2, pic),
            (pit::PIT_PORT, pit::PIT_PORTS, pit),
            (port61::PORT_B, 1, pit),
            (uart16550::COM1, uart16550::PORTS, serial),
            (rtc::RTC_PORT, 2, rtc),
            (i8042::DATA_PORT, 1, kbd),
            (i8042::COMMAND_PORT, 1, kbd),
            (port80::POST_PORT, 1, post),
            (exit_port::EXIT_PORT, exit_port::PORTS, exit),
        ] {
            bus.map(Space::Port, u64::from(base), u64::from(len), id)?;
        }
        Ok(Self {
            bus,
            levels,
            pc: Some(PcIds {
                pic,
                pit,
                serial,
                rtc,
            }),
            line_console: None,
        })
    }

    /// Whether this is the PC (interrupts, timers) rather than the
    /// project's line console.
    pub fn is_pc(&self) -> bool {
        self.pc.is_some()
    }

    fn pic(&mut self, ids: PcIds) -> Option<&mut DualPic> {
        match self.bus.device_mut(ids.pic) {
            Some(Device::Pic(p)) => Some(p),
            _ => None,
        }
    }

    /// Brings the timers to `now_ns`, feeds `input` to the serial port,
    /// folds the lines into the PIC; returns the vector the PIC would
    /// deliver. Bytes of `input` the UART could not take are dropped (its
    /// host queue holds 1 KiB; a person types slower than Linux reads).
    pub fn poll(&mut self, now_ns: u64, input: &[u8]) -> Option<u8> {
        let ids = self.pc?;
        if let Some(Device::Pit(p)) = self.bus.device_mut(ids.pit) {
            p.poll_irq(now_ns);
        }
        if let Some(Device::Rtc(r)) = self.bus.device_mut(ids.rtc) {
            r.poll_irq(now_ns);
        }
        if !input.is_empty()
            && let Some(Device::Serial(s)) = self.bus.device_mut(ids.serial)
        {
            s.push_input(input);
        }
        let levels = self.levels.clone();
        let pic = self.pic(ids)?;
        levels.sync_into(pic);
        pic.pending_vector()
    }

    /// Acknowledges the PIC's pending interrupt: the vector to inject.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let ids = self.pc?;
        self.pic(ids).map(DualPic::acknowledge)
    }

    /// The earliest timer deadline after `now_ns`, if any.
    pub fn next_deadline(&mut self, now_ns: u64) -> Option<u64> {
        let ids = self.pc?;
        let pit = match self.bus.device_mut(ids.pit) {
            Some(Device::Pit(p)) => p.next_irq_deadline(now_ns),
            _ => None,
        };
        let rtc = match self.bus.device_mut(ids.rtc) {
            Some(Device::Rtc(r)) => r.next_irq_deadline(now_ns),
            _ => None,
        };
        pit.into_iter().chain(rtc).min()
    }

    /// Hands what the guest transmitted on its serial port to `out`.
    pub fn drain_serial(&mut self, out: impl FnMut(u8)) {
        if let Some(ids) = self.pc
            && let Some(Device::Serial(s)) = self.bus.device_mut(ids.serial)
        {
            s.drain_output(out);
        }
    }

    /// The VM stopped: the line console hands out its unfinished line.
    pub fn flush(&mut self) {
        if let Some(id) = self.line_console
            && let Some(Device::LineConsole(c)) = self.bus.device_mut(id)
        {
            c.flush();
        }
    }
}

/// The host's time of day from its CMOS clock, in Unix seconds (0 when the
/// clock reads as nonsense). Waits out an update in progress, then reads
/// twice until two reads agree, as Linux's `mc146818_get_time` does.
pub fn host_unix_seconds() -> u64 {
    const STATUS_A_UIP: u8 = 0x80;
    const STATUS_B_BINARY: u8 = 0x04;
    const STATUS_B_24H: u8 = 0x02;
    let read = || {
        for _ in 0..1_000_000 {
            if crate::hw::cmos_read(0x0a) & STATUS_A_UIP == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, rtc::CENTURY_INDEX, 0x0b].map(crate::hw::cmos_read)
    };
    let mut regs = read();
    for _ in 0..4 {
        let again = read();
        if again == regs {
            break;
        }
        regs = again;
    }
    let status_b = regs[7];
    let bin = |v: u8| {
        if status_b & STATUS_B_BINARY != 0 {
            v
        } else {
            (v >> 4) * 10 + (v & 0xf)
        }
    };
    let mut hour = bin(regs[2] & 0x7f);
    if status_b & STATUS_B_24H == 0 && regs[2] & 0x80 != 0 {
        hour = (hour % 12) + 12;
    }
    let century = match bin(regs[6]) {
        c @ 19..=30 => i64::from(c),
        _ => 20,
    };
    let time = CivilTime {
        year: century * 100 + i64::from(bin(regs[5])),
        month: bin(regs[4]),
        day: bin(regs[3]),
        hour,
        minute: bin(regs[1]),
        second: bin(regs[0]),
        weekday: 0,
    };
    time.to_unix()
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0)
}
