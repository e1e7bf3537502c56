//! The device models assembled as a kernel would: one bus, the PIC on it,
//! devices driving shared interrupt lines, a model clock, and the
//! injection decision; the guest side follows what Linux does at boot.

use hvcore::devices::bus::{Access, Bus, BusDevice, BusEvent, DeviceId, Space};
use hvcore::devices::i8042::I8042;
use hvcore::devices::inject::{Injection, Interruptibility, decide};
use hvcore::devices::lines::{IrqLevels, IrqPin};
use hvcore::devices::pic::DualPic;
use hvcore::devices::pit::Pit;
use hvcore::devices::port80::PostPort;
use hvcore::devices::rtc::Rtc;
use hvcore::uart::Uart16550;

type Pin<'a> = IrqPin<&'a IrqLevels>;

enum Dev<'a> {
    Pic(DualPic),
    Pit(Pit<Pin<'a>>),
    // Boxed: its host input queue makes it the big one.
    Uart(Box<Uart16550<Pin<'a>>>),
    Rtc(Rtc<Pin<'a>>),
    Kbd(I8042),
    Post(PostPort),
}

impl Dev<'_> {
    fn inner(&mut self) -> &mut dyn BusDevice {
        match self {
            Dev::Pic(d) => d,
            Dev::Pit(d) => d,
            Dev::Uart(d) => &mut **d,
            Dev::Rtc(d) => d,
            Dev::Kbd(d) => d,
            Dev::Post(d) => d,
        }
    }
}

impl BusDevice for Dev<'_> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        self.inner().read(access, data);
    }
    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        self.inner().write(access, data)
    }
}

struct Machine<'a> {
    bus: Bus<Dev<'a>>,
    levels: &'a IrqLevels,
    pic: DeviceId,
    pit: DeviceId,
    uart: DeviceId,
    rtc: DeviceId,
    now_ns: u64,
}

impl<'a> Machine<'a> {
    fn new(levels: &'a IrqLevels) -> Self {
        let mut bus = Bus::new();
        let pic = bus.add(Dev::Pic(DualPic::new()));
        let pit = bus.add(Dev::Pit(Pit::new(IrqPin::new(levels, 0))));
        let uart = bus.add(Dev::Uart(Box::new(Uart16550::with_irq(IrqPin::new(
            levels, 4,
        )))));
        let rtc = bus.add(Dev::Rtc(Rtc::new(1_796_700_615, 0, IrqPin::new(levels, 8))));
        let kbd = bus.add(Dev::Kbd(I8042::new()));
        let post = bus.add(Dev::Post(PostPort::default()));
        for (base, len, id) in [
            (0x20, 2, pic),
            (0xa0, 2, pic),
            (0x4d0, 2, pic),
            (0x40, 4, pit),
            (0x61, 1, pit),
            (0x3f8, 8, uart),
            (0x70, 2, rtc),
            (0x60, 1, kbd),
            (0x64, 1, kbd),
            (0x80, 1, post),
        ] {
            bus.map(Space::Port, base, len, id).unwrap();
        }
        Self {
            bus,
            levels,
            pic,
            pit,
            uart,
            rtc,
            now_ns: 0,
        }
    }

    fn outb(&mut self, port: u16, value: u8) -> Option<BusEvent> {
        self.bus
            .write(
                Space::Port,
                u64::from(port),
                1,
                u64::from(value),
                self.now_ns,
            )
            .unwrap()
            .event
    }

    fn inb(&mut self, port: u16) -> u8 {
        self.bus
            .read(Space::Port, u64::from(port), 1, self.now_ns)
            .unwrap()
            .value as u8
    }

    fn pic(&mut self) -> &mut DualPic {
        match self.bus.device_mut(self.pic) {
            Some(Dev::Pic(p)) => p,
            _ => unreachable!(),
        }
    }

    /// The vCPU loop before an entry: timers, lines, decision; returns the
    /// vector injected, if any.
    fn before_entry(&mut self, interrupts_enabled: bool) -> Option<u8> {
        let now = self.now_ns;
        if let Some(Dev::Pit(p)) = self.bus.device_mut(self.pit) {
            p.poll_irq(now);
        }
        if let Some(Dev::Rtc(r)) = self.bus.device_mut(self.rtc) {
            r.poll_irq(now);
        }
        let levels = self.levels;
        levels.sync_into(self.pic());
        let state = Interruptibility {
            pending_vector: self.pic().pending_vector(),
            interrupts_enabled,
            shadow: false,
            event_in_flight: false,
        };
        match decide(state) {
            Injection::InjectNow => Some(self.pic().acknowledge()),
            _ => None,
        }
    }

    fn next_deadline(&mut self) -> Option<u64> {
        let now = self.now_ns;
        let pit = match self.bus.device_mut(self.pit) {
            Some(Dev::Pit(p)) => p.next_irq_deadline(now),
            _ => None,
        };
        let rtc = match self.bus.device_mut(self.rtc) {
            Some(Dev::Rtc(r)) => r.next_irq_deadline(now),
            _ => None,
        };
        pit.into_iter().chain(rtc).min()
    }
}

/// Linux's `init_8259A` and its PIT clockevent at HZ=250.
fn linux_boot(m: &mut Machine) {
    m.outb(0x21, 0xff);
    m.outb(0xa1, 0xff);
    for (cmd, data, base, icw3) in [(0x20, 0x21, 0x30, 0x04), (0xa0, 0xa1, 0x38, 0x02)] {
        m.outb(cmd, 0x11);
        m.outb(data, base);
        m.outb(data, icw3);
        m.outb(data, 0x01);
    }
    m.outb(0x21, 0xfb & !(1 << 0) & !(1 << 4));
    m.outb(0xa1, 0xff);
    m.outb(0x43, 0x34);
    m.outb(0x40, (4773 & 0xff) as u8);
    m.outb(0x40, (4773 >> 8) as u8);
}

#[test]
fn timer_ticks_arrive_at_hz_through_pic_and_injector() {
    let levels = IrqLevels::new();
    let mut m = Machine::new(&levels);
    linux_boot(&mut m);
    let mut ticks = 0;
    while let Some(deadline) = m.next_deadline() {
        if deadline > 1_000_000_000 {
            break;
        }
        m.now_ns = deadline;
        if let Some(v) = m.before_entry(true) {
            assert_eq!(v, 0x30);
            ticks += 1;
            m.outb(0x20, 0x60); // Linux's specific EOI for IRQ 0
        }
    }
    // 1193182 / 4773 = 249.99 Hz: 249 whole periods end within a second.
    assert_eq!(ticks, 249);
}

#[test]
fn a_typed_line_reaches_the_guest_through_irq4() {
    let levels = IrqLevels::new();
    let mut m = Machine::new(&levels);
    linux_boot(&mut m);
    // The 8250 driver: 8N1, FIFO with trigger 8, RX interrupts, OUT2.
    m.outb(0x3fb, 0x03);
    m.outb(0x3fa, 0x87);
    m.outb(0x3f9, 0x05);
    m.outb(0x3fc, 0x0b);
    assert_eq!(m.before_entry(true), None);
    if let Some(Dev::Uart(u)) = m.bus.device_mut(m.uart) {
        assert_eq!(u.push_input(b"uname -r\r"), 9);
    }
    // Interrupts off: the vector waits for the window.
    assert_eq!(m.before_entry(false), None);
    assert_eq!(m.before_entry(true), Some(0x34));
    let mut got = Vec::new();
    loop {
        let iir = m.inb(0x3fa);
        if iir & 1 != 0 {
            break;
        }
        while m.inb(0x3fd) & 1 != 0 {
            got.push(m.inb(0x3f8));
        }
    }
    m.outb(0x20, 0x64);
    assert_eq!(got, b"uname -r\r");
    assert_eq!(m.before_entry(true), None);
    // And the echo goes out.
    for &b in b"uname -r\r\n" {
        while m.inb(0x3fd) & 0x20 == 0 {}
        m.outb(0x3f8, b);
        if let Some(Dev::Uart(u)) = m.bus.device_mut(m.uart) {
            u.drain_output(|b| got.push(b));
        }
    }
    assert_eq!(&got[9..], b"uname -r\r\n");
}

#[test]
fn rtc_time_reset_and_unclaimed_ports() {
    let levels = IrqLevels::new();
    let mut m = Machine::new(&levels);
    m.outb(0x70, 0x80 | 0x04); // hours, NMI masked
    assert_eq!(m.inb(0x71), 0x03);
    m.outb(0x80, 0x00);
    let r = m.bus.read(Space::Port, 0x2f8, 1, 0).unwrap();
    assert!(r.unclaimed && r.first_unclaimed && r.value == 0xff);
    assert_eq!(m.outb(0x64, 0xfe), Some(BusEvent::ResetRequested));
}

#[test]
fn wide_accesses_to_byte_devices_are_byte_cycles() {
    let levels = IrqLevels::new();
    let mut m = Machine::new(&levels);
    linux_boot(&mut m);
    // inw 0x20: IRR from 0x20, IMR from 0x21.
    let v = m.bus.read(Space::Port, 0x20, 2, 0).unwrap();
    assert_eq!((v.value, v.unclaimed), (0xea00, false));
    // outw 0x70: index then data, the hours set while the clock runs.
    m.bus.write(Space::Port, 0x70, 2, 0x1504, 0).unwrap();
    m.outb(0x70, 0x04);
    assert_eq!(m.inb(0x71), 0x15);
    let v = m.bus.read(Space::Port, 0x70, 2, 0).unwrap();
    assert_eq!(v.value, 0x15ff);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const PORTS: [u16; 24] = [
        0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x3f8, 0x3f9, 0x3fa,
        0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x70, 0x71, 0x60, 0x64, 0x80,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any guest traffic on the platform's ports, at any widths and
        /// times, with the vCPU loop's calls in between: no panic (the
        /// tests build with overflow checks), and once the vCPU loop has
        /// polled the timers the deadlines they report lie ahead.
        #[test]
        fn arbitrary_port_traffic_never_panics(
            ops in prop::collection::vec((0usize..PORTS.len(), prop::sample::select(vec![1u8, 2, 4]), any::<u32>(), any::<bool>(), 0u64..5_000_000), 1..300),
            input in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let levels = IrqLevels::new();
            let mut m = Machine::new(&levels);
            if let Some(Dev::Uart(u)) = m.bus.device_mut(m.uart) {
                u.push_input(&input);
            }
            for (port, width, value, write, dt) in ops {
                m.now_ns += dt;
                let port = u64::from(PORTS[port]);
                if write {
                    m.bus.write(Space::Port, port, width, u64::from(value), m.now_ns).unwrap();
                } else {
                    m.bus.read(Space::Port, port, width, m.now_ns).unwrap();
                }
                if let Some(Dev::Uart(u)) = m.bus.device_mut(m.uart) {
                    u.drain_output(|_| {});
                }
                if let Some(v) = m.before_entry(value & 1 != 0) {
                    m.outb(0x20, 0x20);
                    if v & 0x08 != 0 {
                        m.outb(0xa0, 0x20);
                    }
                }
                // before_entry polled the timers at this instant: whatever
                // they report next lies ahead.
                if let Some(d) = m.next_deadline() {
                    prop_assert!(d > m.now_ns, "deadline {} not after now {}", d, m.now_ns);
                }
            }
        }
    }
}
