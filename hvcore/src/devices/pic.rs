//! The two 8259A programmable interrupt controllers of the PC: the master
//! at ports 0x20/0x21 takes IRQ 0-7, the slave at 0xA0/0xA1 takes IRQ 8-15
//! and its output is the master's IR2; the chipset's edge/level control
//! registers (ELCR) are at 0x4D0/0x4D1.
//!
//! Follows the Intel 8259A data sheet (ICW1-ICW4, OCW1-OCW3, the priority
//! resolver, poll mode, special mask and special fully nested modes) and
//! the facts of Linux KVM's `arch/x86/kvm/i8259.c` (the cascade is
//! re-evaluated after every change; an edge-triggered input requests once
//! per rising edge).
//!
//! Key type: [`DualPic`]. The vCPU loop asks [`DualPic::pending_vector`]
//! whether the INTR output is up (and which vector an acknowledge would
//! return), then calls [`DualPic::acknowledge`] when it injects: the INTA
//! cycle, which sets the in-service bit. Devices drive the inputs through
//! [`DualPic::set_irq`]. Ports reach it through [`crate::devices::bus`].
//!
//! Left out: single (non-cascaded) mode is accepted in ICW1 but the pair
//! stays cascaded (a PC always is), buffered mode and the 8080/85 call
//! vector format (ICW4 bits 0 and 2-3) have no effect, and there is no
//! local APIC in front of it (the PIC's INTR is the vCPU's interrupt pin).
//! A spurious request (INTR gone by the acknowledge) returns IR7's vector
//! without setting its in-service bit, as the data sheet says.

use super::bus::{Access, BusDevice, BusEvent, read_bytes, write_bytes};

/// Command port of the master (its data port is the next one).
pub const MASTER_PORT: u16 = 0x20;
/// Command port of the slave.
pub const SLAVE_PORT: u16 = 0xa0;
/// The master's ELCR (the slave's is the next port).
pub const ELCR_PORT: u16 = 0x4d0;
/// The master input the slave's output drives.
pub const CASCADE_IRQ: u8 = 2;

/// ELCR bits that can be set: IRQ 0, 1, 2 (timer, keyboard, cascade) and
/// 8, 13 (RTC, FPU) are edge-triggered on every PC chipset.
const ELCR_MASK: [u8; 2] = [0xf8, 0xde];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Init {
    /// Normal operation: writes to the data port are OCW1.
    #[default]
    Ready,
    /// ICW1 seen: the data port takes ICW2 next.
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, Default)]
struct Chip {
    /// Input levels as last seen, to find rising edges.
    last_level: u8,
    irr: u8,
    imr: u8,
    isr: u8,
    /// The IR with the highest priority (rotation moves it).
    lowest_priority_plus_one: u8,
    vector_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    init: Init,
    icw4_needed: bool,
    single: bool,
    level_all: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    elcr: u8,
}

/// The priority of the highest-priority bit of `mask`, 0 highest, 8 when
/// empty; `first` is the IR that currently has priority 0.
fn priority_of(mask: u8, first: u8) -> u8 {
    (0..8)
        .find(|p| mask & (1 << ((p + first) & 7)) != 0)
        .unwrap_or(8)
}

impl Chip {
    fn level_mask(&self) -> u8 {
        if self.level_all { 0xff } else { self.elcr }
    }

    fn set_input(&mut self, ir: u8, high: bool) {
        let bit = 1u8 << ir;
        if self.level_mask() & bit != 0 {
            // Level: the request follows the line.
            if high {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if high && self.last_level & bit == 0 {
            self.irr |= bit;
        }
        if high {
            self.last_level |= bit;
        } else {
            self.last_level &= !bit;
        }
    }

    /// The IR this chip would present, if any: the highest-priority
    /// unmasked request above everything in service.
    fn best(&self, is_master: bool) -> Option<u8> {
        let first = self.lowest_priority_plus_one;
        let requested = priority_of(self.irr & !self.imr, first);
        if requested == 8 {
            return None;
        }
        let mut in_service = self.isr;
        // Special fully nested: the slave may interrupt its own service on
        // the cascade input, so IR2 in service blocks nothing.
        if is_master && self.special_fully_nested {
            in_service &= !(1 << CASCADE_IRQ);
        }
        // Special mask: a masked IR in service does not hold back lower
        // priorities (the data sheet's "special mask mode").
        if self.special_mask {
            in_service &= !self.imr;
        }
        (requested < priority_of(in_service, first)).then_some((requested + first) & 7)
    }

    /// The INTA pulse for `ir`: into service, out of request (edge), and
    /// straight out of service again under auto-EOI.
    fn intack(&mut self, ir: u8) {
        let bit = 1u8 << ir;
        self.isr |= bit;
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.lowest_priority_plus_one = (ir + 1) & 7;
            }
            self.isr &= !bit;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            self.ocw2(value);
        }
    }

    fn icw1(&mut self, value: u8) {
        // The data sheet's initialization: IMR cleared, IR7 lowest, special
        // mask off, status read to IRR, edge detection re-armed (a line
        // already high must rise again). Level requests stay requested.
        let elcr = self.elcr;
        *self = Self {
            elcr,
            ..Self::default()
        };
        self.level_all = value & 0x08 != 0;
        self.irr = self.last_level & self.level_mask();
        self.last_level = 0;
        self.single = value & 0x02 != 0;
        self.icw4_needed = value & 0x01 != 0;
        self.init = Init::Icw2;
    }

    fn ocw2(&mut self, value: u8) {
        let ir = value & 7;
        match value >> 5 {
            // Rotate in auto-EOI mode: clear (0) or set (4).
            0 => self.rotate_on_auto_eoi = false,
            4 => self.rotate_on_auto_eoi = true,
            // Non-specific EOI, and with rotation.
            op @ (1 | 5) => {
                let p = priority_of(self.isr, self.lowest_priority_plus_one);
                if p < 8 {
                    let done = (p + self.lowest_priority_plus_one) & 7;
                    self.isr &= !(1 << done);
                    if op == 5 {
                        self.lowest_priority_plus_one = (done + 1) & 7;
                    }
                }
            }
            // Specific EOI, and with rotation.
            3 => self.isr &= !(1 << ir),
            7 => {
                self.isr &= !(1 << ir);
                self.lowest_priority_plus_one = (ir + 1) & 7;
            }
            // Set priority: `ir` becomes the lowest.
            6 => self.lowest_priority_plus_one = (ir + 1) & 7,
            // 2: no operation.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        self.init = match self.init {
            Init::Ready => {
                self.imr = value;
                Init::Ready
            }
            Init::Icw2 => {
                self.vector_base = value & 0xf8;
                match (self.single, self.icw4_needed) {
                    (false, _) => Init::Icw3,
                    (true, true) => Init::Icw4,
                    (true, false) => Init::Ready,
                }
            }
            // ICW3 names the cascade wiring, which is fixed on a PC.
            Init::Icw3 if self.icw4_needed => Init::Icw4,
            Init::Icw3 => Init::Ready,
            Init::Icw4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                Init::Ready
            }
        };
    }
}

/// The master/slave pair.
#[derive(Clone, Debug, Default)]
pub struct DualPic {
    chips: [Chip; 2],
}

const MASTER: usize = 0;
const SLAVE: usize = 1;

impl DualPic {
    /// Both chips at power-on: no vector base programmed, all inputs
    /// edge-triggered, nothing masked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drives input `irq` (0-15) to `high`. Other numbers are ignored (a
    /// wiring mistake in the caller, not a guest action).
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        if irq < 16 {
            self.chips[usize::from(irq >> 3)].set_input(irq & 7, high);
            self.update_cascade();
        }
    }

    /// The slave's INTR is the master's IR2. It is a level output held
    /// until the acknowledge, so the master's request follows it: a slave
    /// request that goes away (a level input dropped, a mask) withdraws
    /// the cascade request too, instead of leaving a latched edge that
    /// would become a spurious IRQ 15.
    fn update_cascade(&mut self) {
        let slave_out = self.chips[SLAVE].best(false).is_some();
        let master = &mut self.chips[MASTER];
        let bit = 1 << CASCADE_IRQ;
        if slave_out {
            master.irr |= bit;
            master.last_level |= bit;
        } else {
            master.irr &= !bit;
            master.last_level &= !bit;
        }
    }

    /// The vector an acknowledge would return now, when INTR is up.
    pub fn pending_vector(&self) -> Option<u8> {
        let [master, slave] = &self.chips;
        let ir = master.best(true)?;
        if ir == CASCADE_IRQ {
            let slave_ir = slave.best(false).unwrap_or(7);
            Some(slave.vector_base | slave_ir)
        } else {
            Some(master.vector_base | ir)
        }
    }

    /// The interrupt-acknowledge cycle: returns the vector to deliver and
    /// puts its IR in service. With nothing pending it returns the master's
    /// IR7 vector (spurious, nothing put in service). The master's IR2
    /// request follows the slave's output, so the slave always has a
    /// request when IR2 wins; were it gone, the slave's IR7 vector would be
    /// returned with only the master's IR2 in service (the data sheet's
    /// spurious IRQ 15).
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.chips[MASTER].best(true) {
            Some(CASCADE_IRQ) => {
                self.chips[MASTER].intack(CASCADE_IRQ);
                let slave = &mut self.chips[SLAVE];
                match slave.best(false) {
                    Some(ir) => {
                        slave.intack(ir);
                        slave.vector_base | ir
                    }
                    None => slave.vector_base | 7,
                }
            }
            Some(ir) => {
                self.chips[MASTER].intack(ir);
                self.chips[MASTER].vector_base | ir
            }
            None => self.chips[MASTER].vector_base | 7,
        };
        self.update_cascade();
        vector
    }

    fn poll(&mut self, chip: usize) -> u8 {
        self.chips[chip].poll = false;
        let Some(ir) = self.chips[chip].best(chip == MASTER) else {
            return 0;
        };
        // A poll read is the chip's acknowledge (the data sheet: the read
        // is treated as INTA).
        self.chips[chip].intack(ir);
        self.update_cascade();
        0x80 | ir
    }

    /// A guest read of the chip's command (`data_port` false) or data port.
    pub fn read_port(&mut self, slave: bool, data_port: bool) -> u8 {
        let chip = usize::from(slave);
        if self.chips[chip].poll {
            return self.poll(chip);
        }
        let c = &self.chips[chip];
        match (data_port, c.read_isr) {
            (true, _) => c.imr,
            (false, true) => c.isr,
            (false, false) => c.irr,
        }
    }

    /// A guest write to the chip's command or data port.
    pub fn write_port(&mut self, slave: bool, data_port: bool, value: u8) {
        let chip = &mut self.chips[usize::from(slave)];
        if data_port {
            chip.write_data(value);
        } else {
            chip.write_command(value);
        }
        self.update_cascade();
    }

    /// The ELCR of the slave (`slave`) or master chip.
    pub fn elcr(&self, slave: bool) -> u8 {
        self.chips[usize::from(slave)].elcr
    }

    /// Sets an ELCR; bits for inputs that are always edge-triggered stay 0.
    pub fn set_elcr(&mut self, slave: bool, value: u8) {
        let i = usize::from(slave);
        self.chips[i].elcr = value & ELCR_MASK[i];
        self.update_cascade();
    }

    /// The in-service registers (master, slave), for tests and reports.
    pub fn in_service(&self) -> (u8, u8) {
        (self.chips[MASTER].isr, self.chips[SLAVE].isr)
    }
}

impl BusDevice for DualPic {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        let elcr = access.base == u64::from(ELCR_PORT);
        let slave = access.base == u64::from(SLAVE_PORT);
        read_bytes(access, data, |offset| {
            let odd = offset & 1 != 0;
            if elcr {
                self.elcr(odd)
            } else {
                self.read_port(slave, odd)
            }
        });
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        let elcr = access.base == u64::from(ELCR_PORT);
        let slave = access.base == u64::from(SLAVE_PORT);
        write_bytes(access, data, |offset, value| {
            let odd = offset & 1 != 0;
            if elcr {
                self.set_elcr(odd, value);
            } else {
                self.write_port(slave, odd, value);
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Linux's `init_8259A`: ICW1 0x11, vector bases 0x30/0x38 (what
    /// Linux programs), cascade on IR2, 8086 mode, everything masked but
    /// the cascade; `auto_eoi` adds ICW4 bit 1.
    fn linux_init(auto_eoi: bool) -> DualPic {
        let mut p = DualPic::new();
        let icw4 = if auto_eoi { 0x03 } else { 0x01 };
        for (slave, base, icw3) in [(false, 0x30, 0x04), (true, 0x38, 0x02)] {
            p.write_port(slave, false, 0x11);
            p.write_port(slave, true, base);
            p.write_port(slave, true, icw3);
            p.write_port(slave, true, icw4);
        }
        p.write_port(false, true, 0xfb);
        p.write_port(true, true, 0xff);
        p
    }

    fn pulse(p: &mut DualPic, irq: u8) {
        p.set_irq(irq, true);
        p.set_irq(irq, false);
    }

    fn unmask(p: &mut DualPic, irq: u8) {
        let slave = irq >= 8;
        let imr = p.read_port(slave, true);
        p.write_port(slave, true, imr & !(1 << (irq & 7)));
    }

    #[test]
    fn timer_edge_is_delivered_once_then_eoi_allows_the_next() {
        let mut p = linux_init(false);
        unmask(&mut p, 0);
        assert_eq!(p.pending_vector(), None);
        p.set_irq(0, true);
        assert_eq!(p.pending_vector(), Some(0x30));
        assert_eq!(p.acknowledge(), 0x30);
        assert_eq!(p.in_service(), (1, 0));
        // Still high: no new edge, nothing pending.
        assert_eq!(p.pending_vector(), None);
        p.set_irq(0, false);
        p.set_irq(0, true);
        // A new edge while IR0 is in service waits for the EOI.
        assert_eq!(p.pending_vector(), None);
        p.write_port(false, false, 0x60); // specific EOI, IR0
        assert_eq!(p.pending_vector(), Some(0x30));
    }

    #[test]
    fn slave_interrupts_go_through_the_cascade_and_need_two_eois() {
        let mut p = linux_init(false);
        unmask(&mut p, 8);
        pulse(&mut p, 8);
        assert_eq!(p.pending_vector(), Some(0x38));
        assert_eq!(p.acknowledge(), 0x38);
        assert_eq!(p.in_service(), (1 << 2, 1));
        pulse(&mut p, 8);
        assert_eq!(p.pending_vector(), None);
        p.write_port(true, false, 0x60); // slave EOI
        // The master's IR2 is still in service: the slave's new request waits.
        assert_eq!(p.pending_vector(), None);
        p.write_port(false, false, 0x62); // master EOI for the cascade
        assert_eq!(p.pending_vector(), Some(0x38));
    }

    #[test]
    fn ocw3_reads_irr_and_isr_and_imr_reads_back() {
        let mut p = linux_init(false);
        p.write_port(false, true, 0xf7);
        pulse(&mut p, 0);
        pulse(&mut p, 3);
        assert_eq!(p.read_port(false, false), 0x09); // IRR by default
        assert_eq!(p.read_port(false, true), 0xf7);
        assert_eq!(p.acknowledge(), 0x33);
        p.write_port(false, false, 0x0b); // read ISR
        assert_eq!(p.read_port(false, false), 0x08);
        p.write_port(false, false, 0x0a); // read IRR
        assert_eq!(p.read_port(false, false), 0x01);
    }

    #[test]
    fn poll_acknowledges_and_reports_the_level() {
        let mut p = linux_init(false);
        p.write_port(false, true, 0x00);
        pulse(&mut p, 5);
        p.write_port(false, false, 0x0c);
        assert_eq!(p.read_port(false, false), 0x85);
        assert_eq!(p.in_service(), (1 << 5, 0));
        // The poll lasts one read.
        assert_eq!(p.read_port(false, false), 0);
        p.write_port(false, false, 0x0c);
        assert_eq!(p.read_port(false, false), 0);
    }

    #[test]
    fn auto_eoi_and_rotation() {
        let mut p = linux_init(true);
        p.write_port(false, true, 0x00);
        pulse(&mut p, 1);
        assert_eq!(p.acknowledge(), 0x31);
        assert_eq!(p.in_service(), (0, 0));
        // Rotate in AEOI: the serviced IR becomes lowest, so IR3 beats IR1.
        p.write_port(false, false, 0x80);
        pulse(&mut p, 1);
        assert_eq!(p.acknowledge(), 0x31);
        pulse(&mut p, 1);
        pulse(&mut p, 3);
        assert_eq!(p.acknowledge(), 0x33);
        assert_eq!(p.acknowledge(), 0x31);
    }

    #[test]
    fn rotate_on_nonspecific_eoi_and_set_priority() {
        let mut p = linux_init(false);
        p.write_port(false, true, 0x00);
        pulse(&mut p, 4);
        assert_eq!(p.acknowledge(), 0x34);
        p.write_port(false, false, 0xa0); // rotate on non-specific EOI
        pulse(&mut p, 4);
        pulse(&mut p, 6);
        assert_eq!(p.pending_vector(), Some(0x36)); // IR4 now lowest
        p.write_port(false, false, 0xc6); // set priority: IR6 lowest
        assert_eq!(p.pending_vector(), Some(0x34));
    }

    #[test]
    fn special_mask_lets_lower_priorities_through() {
        let mut p = linux_init(false);
        p.write_port(false, true, 0x00);
        pulse(&mut p, 1);
        assert_eq!(p.acknowledge(), 0x31);
        pulse(&mut p, 5);
        assert_eq!(p.pending_vector(), None);
        p.write_port(false, true, 0x02); // mask IR1 (in service)
        p.write_port(false, false, 0x68); // special mask on
        assert_eq!(p.pending_vector(), Some(0x35));
        p.write_port(false, false, 0x48); // special mask off
        assert_eq!(p.pending_vector(), None);
    }

    #[test]
    fn spurious_requests_give_ir7_without_service() {
        let mut p = linux_init(false);
        assert_eq!(p.acknowledge(), 0x37);
        assert_eq!(p.in_service(), (0, 0));
        // A level request that drops before the acknowledge.
        p.set_elcr(false, 0x20);
        unmask(&mut p, 5);
        p.set_irq(5, true);
        assert_eq!(p.pending_vector(), Some(0x35));
        p.set_irq(5, false);
        assert_eq!(p.acknowledge(), 0x37);
        assert_eq!(p.in_service(), (0, 0));
    }

    #[test]
    fn elcr_keeps_level_requests_until_the_line_drops() {
        let mut p = linux_init(false);
        p.set_elcr(false, 0xff);
        assert_eq!(p.elcr(false), 0xf8);
        p.set_elcr(true, 0xff);
        assert_eq!(p.elcr(true), 0xde);
        unmask(&mut p, 11);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), 0x3b);
        p.write_port(true, false, 0x20);
        p.write_port(false, false, 0x20);
        // Still high: requested again after the EOI.
        assert_eq!(p.pending_vector(), Some(0x3b));
        p.set_irq(11, false);
        assert_eq!(p.pending_vector(), None);
    }

    #[test]
    fn special_fully_nested_lets_a_higher_slave_irq_in() {
        let mut p = DualPic::new();
        for (slave, base, icw3) in [(false, 0x30, 0x04), (true, 0x38, 0x02)] {
            p.write_port(slave, false, 0x11);
            p.write_port(slave, true, base);
            p.write_port(slave, true, icw3);
            p.write_port(slave, true, if slave { 0x01 } else { 0x11 });
        }
        pulse(&mut p, 12);
        assert_eq!(p.acknowledge(), 0x3c);
        pulse(&mut p, 9);
        assert_eq!(p.pending_vector(), Some(0x39));
    }

    #[test]
    fn bus_ports_reach_both_chips_and_the_elcr() {
        let mut p = DualPic::new();
        let at = |base: u16, offset| Access {
            space: super::super::bus::Space::Port,
            base: u64::from(base),
            offset,
            now_ns: 0,
        };
        p.write(at(SLAVE_PORT, 1), &[0x5a]);
        p.write(at(ELCR_PORT, 1), &[0x28]);
        let mut b = [0u8; 1];
        p.read(at(SLAVE_PORT, 1), &mut b);
        assert_eq!(b[0], 0x5a);
        p.read(at(ELCR_PORT, 1), &mut b);
        assert_eq!(b[0], 0x08); // IRQ 13 stays edge
        p.read(at(MASTER_PORT, 1), &mut b);
        assert_eq!(b[0], 0);
    }

    /// The reference order of the 15 usable inputs under a master
    /// rotation `rm` and a slave rotation `rs` (each the IR with priority
    /// 0): the slave's inputs take the cascade's place.
    fn priority_order(rm: u8, rs: u8) -> Vec<u8> {
        let mut order = Vec::new();
        for p in 0..8 {
            let ir = (p + rm) & 7;
            if ir == CASCADE_IRQ {
                order.extend((0..8).map(|q| 8 + ((q + rs) & 7)));
            } else {
                order.push(ir);
            }
        }
        order
    }

    proptest! {
        /// With nothing in service, the vector presented is the first
        /// requested and unmasked input in the rotated priority order.
        #[test]
        fn highest_priority_unmasked_request_wins(
            requests in any::<u16>(), mask in any::<u16>(), rm in 0u8..8, rs in 0u8..8,
        ) {
            let mut p = linux_init(false);
            p.write_port(false, true, (mask as u8) & !(1 << CASCADE_IRQ));
            p.write_port(true, true, (mask >> 8) as u8);
            // Set priority: the IR before `r` is lowest.
            p.write_port(false, false, 0xc0 | ((rm + 7) & 7));
            p.write_port(true, false, 0xc0 | ((rs + 7) & 7));
            for irq in (0..16).filter(|&i| i != 2 && requests & (1 << i) != 0) {
                pulse(&mut p, irq);
            }
            let want = priority_order(rm, rs).into_iter().find(|&irq| {
                requests & (1 << irq) != 0 && mask & (1 << irq) == 0
            });
            let base = |irq: u8| if irq < 8 { 0x30 } else { 0x38 };
            prop_assert_eq!(p.pending_vector(), want.map(|irq| base(irq) | (irq & 7)));
        }

        /// Masked inputs are never delivered, every request is delivered
        /// exactly once, in priority order, and after each EOI the
        /// in-service registers return to what they were before the
        /// acknowledge.
        #[test]
        fn nested_delivery_and_eoi_restore(
            requests in any::<u16>(), mask in any::<u16>(), raise_between in any::<u16>(),
        ) {
            let mut p = linux_init(false);
            p.write_port(false, true, (mask as u8) & !(1 << CASCADE_IRQ));
            p.write_port(true, true, (mask >> 8) as u8);
            let usable = |bits: u16| bits & !(1 << 2);
            let mut outstanding = usable(requests);
            for irq in (0..16).filter(|&i| outstanding & (1 << i) != 0) {
                pulse(&mut p, irq);
            }
            let mut delivered = 0u16;
            // Deliver everything, nesting: higher priority arrives while a
            // lower one is in service; EOI in reverse order.
            let mut stack: Vec<(u8, (u8, u8))> = Vec::new();
            for _ in 0..64 {
                if let Some(v) = p.pending_vector() {
                    let before = p.in_service();
                    let got = p.acknowledge();
                    prop_assert_eq!(got, v);
                    let irq = if got >= 0x38 { got - 0x38 + 8 } else { got - 0x30 };
                    prop_assert!(mask & (1 << irq) == 0, "masked irq {} delivered", irq);
                    prop_assert!(delivered & (1 << irq) == 0, "irq {} delivered twice", irq);
                    if let Some(&(top, _)) = stack.last() {
                        let order = priority_order(0, 0);
                        let pos = |i: u8| order.iter().position(|&x| x == i);
                        prop_assert!(pos(irq) < pos(top), "irq {} nested into {}", irq, top);
                    }
                    delivered |= 1 << irq;
                    stack.push((irq, before));
                    // Something new arrives while this one is in service.
                    let extra = usable(raise_between) & !delivered & !outstanding;
                    if let Some(n) = (0..16).find(|&i| extra & (1 << i) != 0) {
                        outstanding |= 1 << n;
                        pulse(&mut p, n);
                    }
                } else if let Some((irq, before)) = stack.pop() {
                    if irq >= 8 {
                        p.write_port(true, false, 0x20);
                    }
                    p.write_port(false, false, 0x20);
                    prop_assert_eq!(p.in_service(), before);
                } else {
                    break;
                }
            }
            prop_assert_eq!(delivered, outstanding & !mask);
            prop_assert_eq!(p.in_service(), (0, 0));
        }
    }
}
