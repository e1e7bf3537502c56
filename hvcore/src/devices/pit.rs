//! The 8254 programmable interval timer at ports 0x40-0x43: three 16-bit
//! down-counters clocked at 1.193182 MHz. Channel 0's output is IRQ 0,
//! channel 2's gate and output are wired to system control port B (0x61,
//! [`super::port61`]), channel 1 (DRAM refresh on the original PC) counts
//! but drives nothing.
//!
//! Nothing ticks: a channel remembers when it started counting and every
//! read computes the count and the output from the elapsed time at
//! [`PIT_HZ`] (as Linux KVM's `arch/x86/kvm/i8254.c` does). For IRQ 0 the
//! kernel arms one host timer at [`Pit::next_irq_deadline`] and calls
//! [`Pit::poll_irq`] when it fires, which pulses the line once for the
//! edges since the previous poll (the PIC's request latch holds only one,
//! so late edges coalesce, as they would on hardware).
//!
//! Follows the Intel 8254 data sheet: the control word, access modes
//! LSB/MSB/LSB-then-MSB, counter latch and read-back commands, BCD
//! counting, modes 0-5 with their OUT waveforms and gate rules (modes 0
//! and 4 pause while the gate is low; 1 and 5 start on its rising edge; 2
//! and 3 stop with OUT high and reload on its rising edge).
//!
//! Simplified, and why: a count written in modes 2 and 3 takes effect at
//! once rather than at the end of the current period (Linux writes the
//! control word first, which restarts the channel anyway); writing only the
//! first byte of a two-byte count in mode 0 does not stop counting; mode
//! 3 with an odd count is computed as the data sheet's even case (its
//! high half one clock long only matters to a speaker). Modes 1 and 5 on
//! channel 0 never trigger (its gate is tied high), so they raise no IRQ.
//! A guest may program a period of one clock: the kernel should put a
//! floor under the host timer it arms (KVM's `min_timer_period_us`).

use super::bus::{Access, BusDevice, BusEvent, read_bytes, write_bytes};
use super::port61::SystemControl;
use super::{IrqLine, NS_PER_SEC, NoIrq};

/// The input clock of every channel, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// First of the four PIT ports (counters 0-2, then the control word).
pub const PIT_PORT: u16 = 0x40;
/// Number of ports from [`PIT_PORT`].
pub const PIT_PORTS: u16 = 4;
/// The IRQ channel 0 drives.
pub const PIT_IRQ: u8 = 0;

/// Whole PIT clocks in `ns` nanoseconds.
pub fn ticks_in(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / u128::from(NS_PER_SEC)) as u64
}

/// The first nanosecond at which `ticks` whole clocks have elapsed.
pub fn ns_for_ticks(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Which bytes a counter's reads and writes move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Bytes {
    Lsb,
    Msb,
    /// LSB then MSB: the low byte is next.
    #[default]
    WordLow,
    /// ... the high byte is next.
    WordHigh,
}

impl Bytes {
    fn from_rw(rw: u8) -> Self {
        match rw {
            1 => Self::Lsb,
            2 => Self::Msb,
            _ => Self::WordLow,
        }
    }

    fn rw(self) -> u8 {
        match self {
            Self::Lsb => 1,
            Self::Msb => 2,
            Self::WordLow | Self::WordHigh => 3,
        }
    }
}

/// Whether and since when a counter counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Run {
    /// No count written since the control word, or (modes 1 and 5) no
    /// gate trigger yet.
    #[default]
    Idle,
    /// Counting: `base_ticks` clocks had elapsed at `since_ns`.
    Running { since_ns: u64, base_ticks: u64 },
    /// Stopped by a low gate after `ticks` clocks.
    Held { ticks: u64 },
}

/// One counter.
#[derive(Clone, Debug, Default)]
struct Channel {
    mode: u8,
    bcd: bool,
    /// The access mode of the last control word (which also resets the
    /// read and write byte order).
    rw: Bytes,
    read_next: Bytes,
    write_next: Bytes,
    write_low: u8,
    /// The count register as written (0 means the maximum).
    reload: u16,
    run: Run,
    gate: bool,
    /// A count written since the control word (status bit 6 is its
    /// inverse, the data sheet's NULL COUNT).
    counted: bool,
    latched_count: Option<(u16, Bytes)>,
    latched_status: Option<u8>,
    /// Rising edges of OUT already reported (channel 0's IRQ).
    edges_seen: u64,
}

fn from_bcd(v: u16) -> u64 {
    (0..4)
        .rev()
        .fold(0, |acc, i| acc * 10 + u64::from((v >> (i * 4)) & 0xf))
}

fn to_bcd(v: u64) -> u16 {
    (0..4).fold(0u16, |acc, i| {
        acc | (((v / 10u64.pow(i)) % 10) as u16) << (i * 4)
    })
}

impl Channel {
    /// The initial count in clocks: 0 means 2^16 (binary) or 10^4 (BCD).
    fn period(&self) -> u64 {
        let n = if self.bcd {
            from_bcd(self.reload)
        } else {
            u64::from(self.reload)
        };
        match n {
            0 if self.bcd => 10_000,
            0 => 0x1_0000,
            n => n,
        }
    }

    fn elapsed_ticks(&self, now_ns: u64) -> Option<u64> {
        match self.run {
            Run::Idle => None,
            Run::Running {
                since_ns,
                base_ticks,
            } => Some(base_ticks + ticks_in(now_ns.saturating_sub(since_ns))),
            Run::Held { ticks } => Some(ticks),
        }
    }

    /// The counting element's value now, as the guest reads it.
    fn count(&self, now_ns: u64) -> u16 {
        let n = self.period();
        let Some(d) = self.elapsed_ticks(now_ns) else {
            return self.reload;
        };
        let wrap = if self.bcd { 10_000 } else { 0x1_0000 };
        let c = match self.mode {
            2 => n - d % n,
            3 => n - (2 * d) % n,
            // 0, 1, 4, 5: down once, then on through zero.
            _ => (n + wrap - d % wrap) % wrap,
        };
        if self.bcd {
            to_bcd(c % 10_000)
        } else {
            c as u16
        }
    }

    /// The OUT pin now.
    fn out(&self, now_ns: u64) -> bool {
        let n = self.period();
        match (self.mode, self.run) {
            (0, Run::Idle) => false,
            (_, Run::Idle) => true,
            // Modes 2 and 3 drive OUT high while the gate holds them.
            (2 | 3, Run::Held { .. }) => true,
            _ => {
                let d = self.elapsed_ticks(now_ns).unwrap_or(0);
                match self.mode {
                    0 => d >= n,
                    1 => d >= n,
                    2 => d % n != n - 1,
                    3 => d % n < n.div_ceil(2),
                    // 4 and 5: one clock low at terminal count.
                    _ => d != n,
                }
            }
        }
    }

    /// Rising edges of OUT after `d` clocks of counting (the IRQ 0 view;
    /// modes 1 and 5 never start on channel 0).
    fn edges(&self, d: u64) -> u64 {
        let n = self.period();
        match self.mode {
            0 => u64::from(d >= n),
            2 | 3 => d / n,
            4 => u64::from(d > n),
            _ => 0,
        }
    }

    /// The clock count at which rising edge number `k` (from 1) comes.
    fn edge_tick(&self, k: u64) -> Option<u64> {
        let n = self.period();
        match (self.mode, k) {
            (0, 1) => Some(n),
            (2 | 3, k) => n.checked_mul(k),
            (4, 1) => Some(n + 1),
            _ => None,
        }
    }

    fn status(&self, now_ns: u64) -> u8 {
        u8::from(self.out(now_ns)) << 7
            | u8::from(!self.counted) << 6
            | self.rw.rw() << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now_ns: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some((self.count(now_ns), self.rw));
        }
    }

    fn latch_status(&mut self, now_ns: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(now_ns));
        }
    }

    fn control(&mut self, value: u8) {
        let rw = (value >> 4) & 3;
        let mode = (value >> 1) & 7;
        self.rw = Bytes::from_rw(rw);
        self.read_next = self.rw;
        self.write_next = self.rw;
        // Modes 6 and 7 are 2 and 3 (the data sheet's "X" bit).
        self.mode = if mode > 5 { mode - 4 } else { mode };
        self.bcd = value & 1 != 0;
        self.run = Run::Idle;
        self.counted = false;
        self.latched_count = None;
        self.latched_status = None;
        self.edges_seen = 0;
    }

    fn read(&mut self, now_ns: u64) -> u8 {
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        if let Some((v, next)) = self.latched_count {
            let [lo, hi] = v.to_le_bytes();
            return match next {
                Bytes::Lsb | Bytes::WordHigh => {
                    self.latched_count = None;
                    if next == Bytes::Lsb { lo } else { hi }
                }
                Bytes::Msb => {
                    self.latched_count = None;
                    hi
                }
                Bytes::WordLow => {
                    self.latched_count = Some((v, Bytes::WordHigh));
                    lo
                }
            };
        }
        let [lo, hi] = self.count(now_ns).to_le_bytes();
        match self.read_next {
            Bytes::Lsb => lo,
            Bytes::Msb => hi,
            Bytes::WordLow => {
                self.read_next = Bytes::WordHigh;
                lo
            }
            Bytes::WordHigh => {
                self.read_next = Bytes::WordLow;
                hi
            }
        }
    }

    fn write(&mut self, value: u8, now_ns: u64) {
        let reload = match self.write_next {
            Bytes::Lsb => u16::from(value),
            Bytes::Msb => u16::from(value) << 8,
            Bytes::WordLow => {
                self.write_low = value;
                self.write_next = Bytes::WordHigh;
                return;
            }
            Bytes::WordHigh => {
                self.write_next = Bytes::WordLow;
                u16::from_le_bytes([self.write_low, value])
            }
        };
        self.reload = reload;
        self.counted = true;
        self.edges_seen = 0;
        self.run = match (self.mode, self.gate) {
            // Modes 1 and 5 wait for a rising gate.
            (1 | 5, _) => Run::Idle,
            (_, true) => Run::Running {
                since_ns: now_ns,
                base_ticks: 0,
            },
            (_, false) => Run::Held { ticks: 0 },
        };
    }

    fn set_gate(&mut self, high: bool, now_ns: u64) {
        let rising = high && !self.gate;
        let falling = !high && self.gate;
        self.gate = high;
        if !self.counted {
            return;
        }
        match (self.mode, rising, falling, self.run) {
            // Modes 0 and 4: the gate pauses and resumes the count.
            (0 | 4, _, true, Run::Running { .. }) | (2 | 3, _, true, Run::Running { .. }) => {
                let ticks = self.elapsed_ticks(now_ns).unwrap_or(0);
                self.run = Run::Held { ticks };
            }
            (0 | 4, true, _, Run::Held { ticks }) => {
                self.run = Run::Running {
                    since_ns: now_ns,
                    base_ticks: ticks,
                };
            }
            // Modes 1, 2, 3, 5: a rising gate (re)starts from the count.
            (1 | 2 | 3 | 5, true, _, _) => {
                self.run = Run::Running {
                    since_ns: now_ns,
                    base_ticks: 0,
                };
                self.edges_seen = 0;
            }
            _ => {}
        }
    }
}

/// The timer, its IRQ 0 line, and system control port B.
#[derive(Clone, Debug)]
pub struct Pit<L = NoIrq> {
    channels: [Channel; 3],
    port_b: SystemControl,
    irq: L,
}

impl Default for Pit<NoIrq> {
    fn default() -> Self {
        Self::new(NoIrq)
    }
}

impl<L: IrqLine> Pit<L> {
    /// A PIT after reset, driving `irq` from channel 0. Channels 0 and 1
    /// have their gates tied high; channel 2's follows port B bit 0, low at
    /// reset.
    pub fn new(irq: L) -> Self {
        let mut channels: [Channel; 3] = Default::default();
        channels[0].gate = true;
        channels[1].gate = true;
        Self {
            channels,
            port_b: SystemControl::default(),
            irq,
        }
    }

    /// A guest read of PIT register `offset` (0-3); the control word
    /// register reads as nothing (0xFF, no device drives the bus).
    pub fn read_register(&mut self, offset: u8, now_ns: u64) -> u8 {
        match self.channels.get_mut(usize::from(offset)) {
            Some(c) => c.read(now_ns),
            None => 0xff,
        }
    }

    /// A guest write of PIT register `offset` (0-3).
    pub fn write_register(&mut self, offset: u8, value: u8, now_ns: u64) {
        // Report channel 0's edges up to now before its timing changes (a
        // count or a control word for it; a latch command changes nothing).
        if offset == 0 || (offset == 3 && value >> 6 == 0 && (value >> 4) & 3 != 0) {
            self.poll_irq(now_ns);
        }
        match offset {
            0..=2 => self.channels[usize::from(offset)].write(value, now_ns),
            3 => self.write_control(value, now_ns),
            _ => {}
        }
    }

    fn write_control(&mut self, value: u8, now_ns: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches
            // status, bits 1-3 pick the channels.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) != 0 {
                    if value & 0x20 == 0 {
                        c.latch_count(now_ns);
                    }
                    if value & 0x10 == 0 {
                        c.latch_status(now_ns);
                    }
                }
            }
            return;
        }
        let c = &mut self.channels[usize::from(select)];
        if (value >> 4) & 3 == 0 {
            c.latch_count(now_ns);
        } else {
            c.control(value);
        }
    }

    /// Channel 2's gate (port B bit 0).
    pub fn set_gate2(&mut self, high: bool, now_ns: u64) {
        self.channels[2].set_gate(high, now_ns);
    }

    /// Channel 2's gate as last set.
    pub fn gate2(&self) -> bool {
        self.channels[2].gate
    }

    /// Channel 2's OUT (port B bit 5).
    pub fn out2(&self, now_ns: u64) -> bool {
        self.channels[2].out(now_ns)
    }

    /// Channel `index`'s OUT pin (for tests and reports).
    pub fn out(&self, index: usize, now_ns: u64) -> Option<bool> {
        self.channels.get(index).map(|c| c.out(now_ns))
    }

    /// Pulses IRQ 0 once if channel 0's OUT rose since the last poll, and
    /// returns how many times it rose (more than one: ticks coalesced
    /// because the poll came late).
    pub fn poll_irq(&mut self, now_ns: u64) -> u64 {
        let c = &mut self.channels[0];
        let Some(d) = c.elapsed_ticks(now_ns) else {
            return 0;
        };
        let edges = c.edges(d);
        let new = edges.saturating_sub(c.edges_seen);
        c.edges_seen = edges;
        if new > 0 {
            self.irq.raise();
            self.irq.lower();
        }
        new
    }

    /// When channel 0's OUT next rises (the next IRQ 0), in the caller's
    /// nanoseconds; `None` when no edge is coming (not programmed, a
    /// one-shot already reported). A deadline at or before `now_ns` means
    /// an edge is due now: call [`Pit::poll_irq`].
    pub fn next_irq_deadline(&self, now_ns: u64) -> Option<u64> {
        let c = &self.channels[0];
        let Run::Running {
            since_ns,
            base_ticks,
        } = c.run
        else {
            return None;
        };
        let tick = c.edge_tick(c.edges_seen + 1)?;
        let deadline = since_ns.saturating_add(ns_for_ticks(tick.saturating_sub(base_ticks)));
        // An edge already passed but not yet polled is due now.
        Some(
            if c.edges(c.elapsed_ticks(now_ns).unwrap_or(0)) > c.edges_seen {
                deadline.min(now_ns)
            } else {
                deadline
            },
        )
    }

    /// Port B (0x61), read.
    pub fn read_port_b(&self, now_ns: u64) -> u8 {
        self.port_b.read(self.gate2(), self.out2(now_ns), now_ns)
    }

    /// Port B (0x61), written: bit 0 drives channel 2's gate.
    pub fn write_port_b(&mut self, value: u8, now_ns: u64) {
        self.port_b.write(value);
        self.set_gate2(self.port_b.gate2(), now_ns);
    }
}

impl<L: IrqLine> BusDevice for Pit<L> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        let port_b = access.base == u64::from(super::port61::PORT_B);
        let now = access.now_ns;
        read_bytes(access, data, |offset| {
            if port_b {
                self.read_port_b(now)
            } else {
                self.read_register((offset & 3) as u8, now)
            }
        });
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        let port_b = access.base == u64::from(super::port61::PORT_B);
        let now = access.now_ns;
        write_bytes(access, data, |offset, value| {
            if port_b {
                self.write_port_b(value, now);
            } else {
                self.write_register((offset & 3) as u8, value, now);
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::ProbeLine;
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn read_word(p: &mut Pit<impl IrqLine>, ch: u8, now: u64) -> u16 {
        let lo = p.read_register(ch, now);
        let hi = p.read_register(ch, now);
        u16::from_le_bytes([lo, hi])
    }

    fn latch_word(p: &mut Pit<impl IrqLine>, ch: u8, now: u64) -> u16 {
        p.write_register(3, ch << 6, now);
        read_word(p, ch, now)
    }

    /// Linux's periodic clockevent: mode 2, LSB then MSB, LATCH for HZ.
    fn periodic(p: &mut Pit<impl IrqLine>, count: u16, now: u64) {
        p.write_register(3, 0x34, now);
        p.write_register(0, count as u8, now);
        p.write_register(0, (count >> 8) as u8, now);
    }

    #[test]
    fn tick_conversions_round_trip() {
        assert_eq!(ticks_in(NS_PER_SEC), PIT_HZ);
        assert_eq!(ticks_in(838), 0);
        assert_eq!(ticks_in(839), 1);
        for t in [0, 1, 2, 4773, 65536, PIT_HZ, 10 * PIT_HZ + 7] {
            let ns = ns_for_ticks(t);
            assert_eq!(ticks_in(ns), t);
            assert!(ns == 0 || ticks_in(ns - 1) == t - 1);
        }
    }

    #[test]
    fn mode2_counts_down_and_reloads_and_irq0_follows() {
        let line = ProbeLine::default();
        let mut p = Pit::new(line.clone());
        // HZ=250: LATCH = (1193182 + 125) / 250 = 4773.
        let t0 = 5 * MS;
        periodic(&mut p, 4773, t0);
        assert_eq!(latch_word(&mut p, 0, t0), 4773);
        assert_eq!(latch_word(&mut p, 0, t0 + ns_for_ticks(100)), 4673);
        let first = t0 + ns_for_ticks(4773);
        assert_eq!(p.next_irq_deadline(t0), Some(first));
        assert_eq!(p.poll_irq(first - 1), 0);
        assert_eq!(line.rises(), 0);
        assert_eq!(p.poll_irq(first), 1);
        assert_eq!((line.rises(), line.high()), (1, false));
        assert_eq!(latch_word(&mut p, 0, first), 4773);
        assert_eq!(
            p.next_irq_deadline(first),
            Some(t0 + ns_for_ticks(2 * 4773))
        );
        // A late poll coalesces: three periods, one pulse.
        assert_eq!(p.poll_irq(t0 + ns_for_ticks(5 * 4773)), 4);
        assert_eq!(line.rises(), 2);
        // OUT is low for the one clock where the counter reads 1.
        let at_one = t0 + ns_for_ticks(5 * 4773 + 4772);
        assert_eq!(latch_word(&mut p, 0, at_one), 1);
        assert_eq!(p.out(0, at_one), Some(false));
        assert_eq!(p.out(0, at_one - 1000), Some(true));
    }

    #[test]
    fn edges_due_before_the_deadline_was_asked_are_due_now() {
        let mut p = Pit::default();
        periodic(&mut p, 1000, 0);
        let late = ns_for_ticks(2500);
        assert_eq!(p.next_irq_deadline(late), Some(ns_for_ticks(1000)));
        p.poll_irq(late);
        assert_eq!(p.next_irq_deadline(late), Some(ns_for_ticks(3000)));
    }

    #[test]
    fn mode4_and_mode0_are_one_shots() {
        let line = ProbeLine::default();
        let mut p = Pit::new(line.clone());
        // Linux's oneshot clockevent: mode 4.
        p.write_register(3, 0x38, 0);
        assert_eq!(p.next_irq_deadline(0), None);
        p.write_register(0, 0x10, 0);
        p.write_register(0, 0x00, 0);
        let strobe = ns_for_ticks(0x10);
        assert_eq!(p.out(0, strobe), Some(false));
        assert_eq!(p.out(0, strobe - 1), Some(true));
        assert_eq!(p.next_irq_deadline(0), Some(ns_for_ticks(0x11)));
        assert_eq!(p.poll_irq(ns_for_ticks(0x11)), 1);
        assert_eq!(p.next_irq_deadline(ns_for_ticks(0x11)), None);
        assert_eq!(p.poll_irq(10 * MS), 0);
        // Mode 0: OUT low from the control word to terminal count, then high.
        p.write_register(3, 0x30, 20 * MS);
        assert_eq!(p.out(0, 20 * MS), Some(false));
        p.write_register(0, 0xe8, 20 * MS);
        p.write_register(0, 0x03, 20 * MS);
        let tc = 20 * MS + ns_for_ticks(1000);
        assert_eq!(p.next_irq_deadline(20 * MS), Some(tc));
        assert_eq!(p.out(0, tc - 1), Some(false));
        assert_eq!(p.out(0, tc), Some(true));
        // The counter runs on through zero.
        assert_eq!(latch_word(&mut p, 0, tc + ns_for_ticks(1)), 0xffff);
        assert_eq!(p.poll_irq(tc), 1);
        assert_eq!(line.rises(), 2);
    }

    #[test]
    fn mode3_square_wave() {
        let mut p = Pit::default();
        p.write_register(3, 0x36, 0);
        p.write_register(0, 100, 0);
        p.write_register(0, 0, 0);
        assert_eq!(p.out(0, ns_for_ticks(49)), Some(true));
        assert_eq!(p.out(0, ns_for_ticks(50)), Some(false));
        assert_eq!(p.out(0, ns_for_ticks(100)), Some(true));
        assert_eq!(latch_word(&mut p, 0, ns_for_ticks(10)), 80);
        assert_eq!(p.next_irq_deadline(0), Some(ns_for_ticks(100)));
    }

    /// Linux's `pit_calibrate_tsc`: gate on, speaker off, channel 2 in mode
    /// 0 with a count, then spin until port B bit 5 (OUT2) rises.
    #[test]
    fn channel2_calibration_through_port_b() {
        let mut p = Pit::default();
        let t0 = 3 * MS;
        let b = p.read_port_b(t0);
        p.write_port_b((b & !0x02) | 0x01, t0);
        assert!(p.gate2());
        p.write_register(3, 0xb0, t0);
        let latch = (PIT_HZ / 20) as u16; // 50 ms
        p.write_register(2, latch as u8, t0);
        p.write_register(2, (latch >> 8) as u8, t0);
        let rise = t0 + ns_for_ticks(u64::from(latch));
        assert_eq!(p.read_port_b(rise - 1) & 0x20, 0);
        assert_eq!(p.read_port_b(rise) & 0x21, 0x21);
        // quick_pit_calibrate reads LSB, MSB pairs and watches the MSB fall.
        p.write_register(3, 0xb0, t0);
        p.write_register(2, 0xff, t0);
        p.write_register(2, 0xff, t0);
        let after = t0 + 2 * MS;
        let want = 0xffff - ticks_in(2 * MS) as u16;
        assert_eq!(read_word(&mut p, 2, after), want);
        // IRQ 0 is channel 0's alone.
        assert_eq!(p.next_irq_deadline(after), None);
    }

    #[test]
    fn gate_low_pauses_mode0_and_restarts_mode2() {
        let mut p = Pit::default();
        p.write_port_b(0x01, 0);
        p.write_register(3, 0xb0, 0);
        p.write_register(2, 0x00, 0);
        p.write_register(2, 0x10, 0); // 4096
        p.write_port_b(0x00, ns_for_ticks(96));
        assert_eq!(latch_word(&mut p, 2, 5 * MS), 4000);
        p.write_port_b(0x01, 5 * MS);
        assert_eq!(latch_word(&mut p, 2, 5 * MS + ns_for_ticks(1000)), 3000);
        // Mode 2: gate low holds OUT high; the rising gate reloads.
        p.write_register(3, 0xb4, 0);
        p.write_register(2, 100, 0);
        p.write_register(2, 0, 0);
        p.write_port_b(0x00, ns_for_ticks(30));
        assert!(p.out2(ns_for_ticks(99)));
        p.write_port_b(0x01, ns_for_ticks(200));
        assert_eq!(
            latch_word(&mut p, 2, ns_for_ticks(200) + ns_for_ticks(10)),
            90
        );
    }

    #[test]
    fn modes_1_and_5_start_on_a_rising_gate() {
        let mut p = Pit::default();
        // Mode 1 (hardware one-shot) on channel 2: waits for the gate.
        p.write_register(3, 0xb2, 0);
        p.write_register(2, 50, 0);
        p.write_register(2, 0, 0);
        assert!(p.out2(MS));
        assert_eq!(latch_word(&mut p, 2, MS), 50);
        p.write_port_b(0x01, MS);
        assert!(!p.out2(MS + ns_for_ticks(49)));
        assert!(p.out2(MS + ns_for_ticks(50)));
        // A low gate does not stop it; a new rise retriggers.
        p.write_port_b(0x00, MS + ns_for_ticks(10));
        assert_eq!(latch_word(&mut p, 2, MS + ns_for_ticks(20)), 30);
        p.write_port_b(0x01, 2 * MS);
        assert_eq!(latch_word(&mut p, 2, 2 * MS + ns_for_ticks(5)), 45);
        // Mode 5 (hardware strobe): one clock low at terminal count.
        p.write_register(3, 0xba, 3 * MS);
        p.write_register(2, 20, 3 * MS);
        p.write_register(2, 0, 3 * MS);
        p.write_port_b(0x00, 3 * MS);
        p.write_port_b(0x01, 4 * MS);
        assert!(p.out2(4 * MS + ns_for_ticks(19)));
        assert!(!p.out2(4 * MS + ns_for_ticks(20)));
        assert!(p.out2(4 * MS + ns_for_ticks(21)));
    }

    #[test]
    fn latch_freezes_the_count_until_read() {
        let mut p = Pit::default();
        periodic(&mut p, 0, 0); // 65536
        p.write_register(3, 0x00, ns_for_ticks(10));
        // A second latch before the read changes nothing.
        p.write_register(3, 0x00, ns_for_ticks(500));
        assert_eq!(read_word(&mut p, 0, ns_for_ticks(900)), 0xffff - 9);
        assert_eq!(
            read_word(&mut p, 0, ns_for_ticks(900)),
            0x10000u32.wrapping_sub(900) as u16
        );
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let mut p = Pit::default();
        p.write_register(3, 0x74, 0); // channel 1, lohi, mode 2
        // Null count until the count is written.
        p.write_register(3, 0xe4, 0); // read-back status of channel 1
        assert_eq!(p.read_register(1, 0), 0x40 | 0x80 | 0x30 | 0x04);
        p.write_register(1, 50, 0);
        p.write_register(1, 0, 0);
        p.write_register(3, 0xc4, ns_for_ticks(7)); // count and status
        assert_eq!(p.read_register(1, 0), 0x80 | 0x30 | 0x04);
        assert_eq!(read_word(&mut p, 1, ns_for_ticks(20)), 43);
    }

    #[test]
    fn byte_access_modes_and_bcd() {
        let mut p = Pit::default();
        // MSB only: count 0x0200.
        p.write_register(3, 0x20, 0);
        p.write_register(0, 0x02, 0);
        assert_eq!(p.read_register(0, ns_for_ticks(1)), 0x01);
        // LSB only, BCD: count 0x0050 = 50.
        p.write_register(3, 0x11, 0);
        p.write_register(0, 0x50, 0);
        assert_eq!(p.read_register(0, ns_for_ticks(11)), 0x39);
        // BCD 0 is 10000 and wraps there.
        p.write_register(3, 0x31, 0);
        p.write_register(0, 0, 0);
        p.write_register(0, 0, 0);
        assert_eq!(read_word(&mut p, 0, ns_for_ticks(1)), 0x9999);
        assert_eq!(p.read_register(3, 0), 0xff);
    }

    proptest! {
        /// In mode 2 the count is always in 1..=N and agrees with the
        /// elapsed clocks; polling exactly at each deadline yields one edge
        /// and a nanosecond earlier none.
        #[test]
        fn mode2_count_and_deadlines_agree_with_the_clock(
            n in 2u16..=u16::MAX, start in 0u64..1_000_000_000, steps in prop::collection::vec(0u64..50_000_000, 1..20),
        ) {
            let mut p = Pit::default();
            periodic(&mut p, n, start);
            let mut now = start;
            for s in steps {
                now += s;
                let c = latch_word(&mut p, 0, now);
                let d = ticks_in(now - start);
                prop_assert_eq!(u64::from(c), u64::from(n) - d % u64::from(n));
                p.poll_irq(now);
                let next = p.next_irq_deadline(now).unwrap();
                prop_assert!(next > now);
                prop_assert_eq!(p.poll_irq(next - 1), 0);
                prop_assert_eq!(p.poll_irq(next), 1);
                now = next;
            }
        }

        /// Mode 0 counts down from N through zero and OUT rises exactly
        /// when N clocks have passed, whatever the access mode.
        #[test]
        fn mode0_terminal_count(n in 1u16..=u16::MAX, ns in 0u64..200_000_000) {
            let mut p = Pit::default();
            p.write_register(3, 0x30, 0);
            p.write_register(0, n as u8, 0);
            p.write_register(0, (n >> 8) as u8, 0);
            let d = ticks_in(ns);
            prop_assert_eq!(latch_word(&mut p, 0, ns), (u64::from(n).wrapping_sub(d) & 0xffff) as u16);
            prop_assert_eq!(p.out(0, ns), Some(d >= u64::from(n)));
        }
    }
}
