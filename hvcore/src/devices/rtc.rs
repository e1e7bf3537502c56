//! The MC146818 real-time clock and CMOS RAM of the PC: an index port
//! (0x70, bit 7 of which is the NMI mask) and a data port (0x71) over 128
//! bytes, the first fourteen being the clock.
//!
//! ```text
//! 0x00 seconds   0x01 alarm s   0x02 minutes  0x03 alarm m   0x04 hours
//! 0x05 alarm h   0x06 weekday   0x07 day      0x08 month     0x09 year
//! 0x0A A: UIP | divider(6:4) | rate(3:0)      0x0B B: SET PIE AIE UIE SQWE DM 24h DSE
//! 0x0C C: IRQF PF AF UF (read-only, cleared by reading)       0x0D D: VRT
//! 0x0E-0x7F NVRAM; 0x32 the century (the PC convention, in BCD)
//! ```
//!
//! Follows the Motorola MC146818A data sheet: BCD or binary (B.DM) and 12
//! or 24 hour (B.24h, PM in bit 7 of the hour) formats, the SET bit that
//! stops updates while software writes the time (and clears UIE), the
//! update-in-progress bit, register C's flags and IRQF, and the periodic
//! rates of register A.
//!
//! Nothing ticks: the clock is the caller's monotonic `now_ns` plus the
//! Unix time it stood for when the device was made, plus whatever offset
//! the guest set. UIP reads 1 in the 244 us before each second boundary,
//! which is when the registers change, so a guest that sees UIP = 0 has
//! 244 us of stable registers (the data sheet's promise). Register C's
//! flags are brought up to date on every access and by
//! [`Rtc::poll_irq`]; [`Rtc::next_irq_deadline`] tells the kernel when the
//! next enabled event is due while IRQ 8 is low.
//!
//! Left out: daylight saving (DSE), the square-wave output, the divider
//! chain reset and test modes of register A's divider bits (the clock runs
//! whatever they say), and converting stored values when the guest flips
//! DM or 24h (the time is regenerated in the new format, which is what
//! such a guest then expects). A time the guest sets that is not a valid
//! date is ignored: the clock keeps its time.

use super::bus::{Access, BusDevice, BusEvent, read_bytes, write_bytes};
use super::{IrqLine, NS_PER_SEC, NoIrq};

/// The index port (the data port is the next one).
pub const RTC_PORT: u16 = 0x70;
/// The IRQ the RTC drives.
pub const RTC_IRQ: u8 = 8;
/// Bytes of CMOS RAM behind the index port, the clock included.
pub const CMOS_BYTES: usize = 128;
/// The CMOS byte that holds the century (BCD) on PCs.
pub const CENTURY_INDEX: u8 = 0x32;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

const A_UIP: u8 = 1 << 7;
const B_SET: u8 = 1 << 7;
const B_PIE: u8 = 1 << 6;
const B_AIE: u8 = 1 << 5;
const B_UIE: u8 = 1 << 4;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;
const C_IRQF: u8 = 1 << 7;
const C_PF: u8 = 1 << 6;
const C_AF: u8 = 1 << 5;
const C_UF: u8 = 1 << 4;
const D_VRT: u8 = 1 << 7;

/// How long before a second boundary UIP is set.
pub const UIP_LEAD_NS: u64 = 244_000;
/// The time base of the periodic interrupt.
const TIME_BASE_HZ: u64 = 32_768;
const SECONDS_PER_DAY: i64 = 86_400;

/// A broken-down civil time, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivilTime {
    /// Full year (e.g. 2026).
    pub year: i64,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59.
    pub second: u8,
    /// 0 (Sunday) to 6.
    pub weekday: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the usual
/// era-of-400-years arithmetic, with March as the first month so the leap
/// day ends the year).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl CivilTime {
    /// The civil time of Unix second `unix_s`.
    pub fn from_unix(unix_s: i64) -> Self {
        let days = unix_s.div_euclid(SECONDS_PER_DAY);
        let secs = unix_s.rem_euclid(SECONDS_PER_DAY);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
            weekday: (days + 4).rem_euclid(7) as u8,
        }
    }

    /// Unix seconds of this time, or `None` when a field is out of range
    /// (the weekday is not checked: the chip does not either).
    pub fn to_unix(&self) -> Option<i64> {
        let valid = (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        valid.then(|| {
            days_from_civil(self.year, self.month, self.day) * SECONDS_PER_DAY
                + i64::from(self.hour) * 3600
                + i64::from(self.minute) * 60
                + i64::from(self.second)
        })
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0f)
}

/// The clock and CMOS RAM, driving IRQ 8 through `L`.
#[derive(Clone, Debug)]
pub struct Rtc<L = NoIrq> {
    index: u8,
    nmi_disabled: bool,
    cmos: [u8; CMOS_BYTES],
    /// Unix nanoseconds at `base_ns` of the caller's clock.
    base_unix_ns: i128,
    base_ns: u64,
    /// What the guest added by setting the time.
    offset_ns: i128,
    /// Register C's flags are computed up to here.
    checked_ns: u64,
    irq: L,
    irq_level: bool,
}

impl<L: IrqLine> Rtc<L> {
    /// An RTC whose clock reads `unix_s` at the caller's `now_ns`, in the
    /// state a PC BIOS leaves it: 32.768 kHz divider with a 1024 Hz rate,
    /// BCD, 24-hour, no interrupts enabled, RAM valid.
    pub fn new(unix_s: u64, now_ns: u64, irq: L) -> Self {
        let mut cmos = [0; CMOS_BYTES];
        cmos[usize::from(REG_A)] = 0x26;
        cmos[usize::from(REG_B)] = B_24H;
        Self {
            index: 0,
            nmi_disabled: false,
            cmos,
            base_unix_ns: i128::from(unix_s) * i128::from(NS_PER_SEC),
            base_ns: now_ns,
            offset_ns: 0,
            checked_ns: now_ns,
            irq,
            irq_level: false,
        }
    }

    fn unix_ns(&self, now_ns: u64) -> i128 {
        self.base_unix_ns + i128::from(now_ns) - i128::from(self.base_ns) + self.offset_ns
    }

    /// The guest's clock in Unix seconds at `now_ns`.
    pub fn unix_seconds(&self, now_ns: u64) -> i64 {
        self.unix_ns(now_ns).div_euclid(i128::from(NS_PER_SEC)) as i64
    }

    /// The NMI mask the guest last wrote with the index (bit 7 of 0x70).
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// Sets a CMOS RAM byte (what firmware would have stored: memory
    /// sizes, equipment); the clock's registers are not settable here.
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        if index > REG_D && usize::from(index) < CMOS_BYTES {
            self.cmos[usize::from(index)] = value;
        }
    }

    fn b(&self) -> u8 {
        self.cmos[usize::from(REG_B)]
    }

    fn binary(&self) -> bool {
        self.b() & B_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() { v } else { to_bcd(v) }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() { v } else { from_bcd(v) }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.b() & B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = if hour.is_multiple_of(12) {
            12
        } else {
            hour % 12
        };
        self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.b() & B_24H != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & 0x7f) % 12;
        if v & 0x80 != 0 { h + 12 } else { h }
    }

    /// Writes the clock at `unix_s` into the time registers.
    fn store_time(&mut self, unix_s: i64) {
        let t = CivilTime::from_unix(unix_s);
        let year = t.year.rem_euclid(100) as u8;
        let century = t.year.div_euclid(100).rem_euclid(100) as u8;
        let regs = [
            (SECONDS, self.encode(t.second)),
            (MINUTES, self.encode(t.minute)),
            (HOURS, self.encode_hour(t.hour)),
            (WEEKDAY, self.encode(t.weekday + 1)),
            (DAY, self.encode(t.day)),
            (MONTH, self.encode(t.month)),
            (YEAR, self.encode(year)),
            // The century byte is BCD by convention, whatever DM says.
            (CENTURY_INDEX, to_bcd(century)),
        ];
        for (i, v) in regs {
            self.cmos[usize::from(i)] = v;
        }
    }

    /// The time the registers hold, when they form a valid date.
    fn stored_time(&self) -> Option<i64> {
        let r = |i: u8| self.cmos[usize::from(i)];
        let year = i64::from(from_bcd(r(CENTURY_INDEX))) * 100 + i64::from(self.decode(r(YEAR)));
        CivilTime {
            year,
            month: self.decode(r(MONTH)),
            day: self.decode(r(DAY)),
            hour: self.decode_hour(r(HOURS)),
            minute: self.decode(r(MINUTES)),
            second: self.decode(r(SECONDS)),
            weekday: 0,
        }
        .to_unix()
    }

    /// Makes the registers the clock's time from `now_ns` on (second
    /// boundary now).
    fn apply_stored_time(&mut self, now_ns: u64) {
        if let Some(unix_s) = self.stored_time() {
            let want = i128::from(unix_s) * i128::from(NS_PER_SEC);
            self.offset_ns += want - self.unix_ns(now_ns);
        }
        // Events before the new time are not the new time's.
        self.checked_ns = now_ns;
    }

    fn updating(&self) -> bool {
        self.b() & B_SET == 0
    }

    fn uip(&self, now_ns: u64) -> bool {
        let frac = self.unix_ns(now_ns).rem_euclid(i128::from(NS_PER_SEC));
        self.updating() && frac >= i128::from(NS_PER_SEC - UIP_LEAD_NS)
    }

    /// The periodic interrupt's period in 32.768 kHz clocks (register A's
    /// rate: 0 off, 1 and 2 the same as 8 and 9, else 2^(rate-1)).
    fn periodic_clocks(&self) -> Option<u64> {
        match self.cmos[usize::from(REG_A)] & 0x0f {
            0 => None,
            r @ (1 | 2) => Some(1 << (r + 6)),
            r => Some(1 << (r - 1)),
        }
    }

    fn periodic_index(&self, now_ns: u64, clocks: u64) -> u128 {
        u128::from(now_ns) * u128::from(TIME_BASE_HZ) / u128::from(NS_PER_SEC) / u128::from(clocks)
    }

    /// Whether the alarm registers match second `unix_s` (only the time of
    /// day counts, so this needs no calendar).
    fn alarm_matches(&self, unix_s: i64) -> bool {
        let of_day = unix_s.rem_euclid(SECONDS_PER_DAY);
        let pairs = [
            (self.cmos[0x01], self.encode((of_day % 60) as u8)),
            (self.cmos[0x03], self.encode((of_day / 60 % 60) as u8)),
            (self.cmos[0x05], self.encode_hour((of_day / 3600) as u8)),
        ];
        // An alarm byte of 0xC0-0xFF matches every value.
        pairs
            .iter()
            .all(|&(alarm, now)| alarm & 0xc0 == 0xc0 || alarm == now)
    }

    /// Brings register C's flags up to `now_ns` and the line with them.
    fn advance(&mut self, now_ns: u64) {
        let from = self.checked_ns;
        if now_ns > from {
            let mut flags = 0;
            let passed = |c: u64| self.periodic_index(now_ns, c) > self.periodic_index(from, c);
            if self.periodic_clocks().is_some_and(passed) {
                flags |= C_PF;
            }
            if self.updating() {
                let (s0, s1) = (self.unix_seconds(from), self.unix_seconds(now_ns));
                if s1 > s0 {
                    flags |= C_UF;
                    // Alarms repeat within a day: look at the last day's
                    // boundaries at most.
                    let first = (s0 + 1).max(s1 - SECONDS_PER_DAY + 1);
                    if (first..=s1).any(|s| self.alarm_matches(s)) {
                        flags |= C_AF;
                    }
                }
            }
            self.cmos[usize::from(REG_C)] |= flags;
            self.checked_ns = now_ns;
        }
        let c = self.cmos[usize::from(REG_C)];
        let enabled = self.b() & (B_PIE | B_AIE | B_UIE);
        // B's enables PIE, AIE, UIE are the same bits as C's PF, AF, UF.
        if c & enabled & (C_PF | C_AF | C_UF) != 0 {
            self.cmos[usize::from(REG_C)] |= C_IRQF;
        }
        self.set_line(self.cmos[usize::from(REG_C)] & C_IRQF != 0);
    }

    fn set_line(&mut self, level: bool) {
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// A write to the index port: bits 6:0 select the byte, bit 7 masks NMI.
    pub fn write_index(&mut self, value: u8) {
        self.nmi_disabled = value & 0x80 != 0;
        self.index = value & 0x7f;
    }

    /// A read of the data port at the selected index.
    pub fn read_data(&mut self, now_ns: u64) -> u8 {
        self.advance(now_ns);
        let i = self.index;
        match i {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY_INDEX => {
                if self.updating() {
                    self.store_time(self.unix_seconds(now_ns));
                }
                self.cmos[usize::from(i)]
            }
            REG_A => {
                let a = self.cmos[usize::from(REG_A)] & !A_UIP;
                if self.uip(now_ns) { a | A_UIP } else { a }
            }
            REG_C => {
                let c = self.cmos[usize::from(REG_C)];
                self.cmos[usize::from(REG_C)] = 0;
                self.set_line(false);
                c
            }
            REG_D => D_VRT,
            _ => self.cmos[usize::from(i)],
        }
    }

    /// A write of the data port at the selected index.
    pub fn write_data(&mut self, value: u8, now_ns: u64) {
        self.advance(now_ns);
        let i = self.index;
        match i {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY_INDEX => {
                // Running: take the current time, change one field, and run
                // from the result. Stopped (SET): just store.
                let running = self.updating();
                if running {
                    self.store_time(self.unix_seconds(now_ns));
                }
                self.cmos[usize::from(i)] = value;
                if running {
                    self.apply_stored_time(now_ns);
                }
            }
            REG_A => self.cmos[usize::from(REG_A)] = value & !A_UIP,
            REG_B => self.write_b(value, now_ns),
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(i)] = value,
        }
        self.advance(now_ns);
    }

    fn write_b(&mut self, value: u8, now_ns: u64) {
        let old = self.b();
        let mut value = value;
        if value & B_SET != 0 {
            // SET freezes the registers at the current time and clears UIE.
            if old & B_SET == 0 {
                self.store_time(self.unix_seconds(now_ns));
            }
            value &= !B_UIE;
        }
        self.cmos[usize::from(REG_B)] = value;
        if old & B_SET != 0 && value & B_SET == 0 {
            self.apply_stored_time(now_ns);
        }
    }

    /// Brings the interrupt flags up to `now_ns` (the kernel's timer for
    /// [`Rtc::next_irq_deadline`] fired); returns IRQ 8's level.
    pub fn poll_irq(&mut self, now_ns: u64) -> bool {
        self.advance(now_ns);
        self.irq_level
    }

    /// When the next enabled event is due, while IRQ 8 is low (once it is
    /// high nothing changes until the guest reads register C). Alarms are
    /// checked at each second boundary, so AIE wakes the kernel once a
    /// second.
    pub fn next_irq_deadline(&self, now_ns: u64) -> Option<u64> {
        if self.irq_level {
            return None;
        }
        let b = self.b();
        let mut next: Option<u64> = None;
        if let Some(clocks) = self.periodic_clocks().filter(|_| b & B_PIE != 0) {
            let k = self.periodic_index(now_ns, clocks) + 1;
            let ns = (k * u128::from(clocks) * u128::from(NS_PER_SEC))
                .div_ceil(u128::from(TIME_BASE_HZ));
            next = u64::try_from(ns).ok();
        }
        if b & (B_UIE | B_AIE) != 0 && self.updating() {
            let frac = self.unix_ns(now_ns).rem_euclid(i128::from(NS_PER_SEC));
            let to_boundary = (i128::from(NS_PER_SEC) - frac) as u64;
            let at = now_ns.saturating_add(to_boundary);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// IRQ 8's level.
    pub fn irq_level(&self) -> bool {
        self.irq_level
    }
}

impl<L: IrqLine> BusDevice for Rtc<L> {
    fn read(&mut self, access: Access, data: &mut [u8]) {
        let now = access.now_ns;
        // The index register is write-only.
        read_bytes(access, data, |offset| {
            if offset == 1 {
                self.read_data(now)
            } else {
                0xff
            }
        });
    }

    fn write(&mut self, access: Access, data: &[u8]) -> Option<BusEvent> {
        let now = access.now_ns;
        // `outw 0x70` writes the index and then the data, as two byte
        // cycles would.
        write_bytes(access, data, |offset, value| {
            if offset == 1 {
                self.write_data(value, now);
            } else {
                self.write_index(value);
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
    /// 2026-12-08 03:30:15 UTC, a Tuesday.
    const T0: u64 = 1_796_700_615;

    fn read(r: &mut Rtc<impl IrqLine>, i: u8, now: u64) -> u8 {
        r.write_index(i);
        r.read_data(now)
    }

    fn write(r: &mut Rtc<impl IrqLine>, i: u8, v: u8, now: u64) {
        r.write_index(i);
        r.write_data(v, now);
    }

    #[test]
    fn civil_time_round_trips_known_dates() {
        let t = CivilTime::from_unix(T0 as i64);
        assert_eq!(
            (
                t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday
            ),
            (2026, 12, 8, 3, 30, 15, 2)
        );
        assert_eq!(CivilTime::from_unix(0).weekday, 4);
        let leap = CivilTime {
            year: 2024,
            month: 2,
            day: 29,
            hour: 0,
            minute: 0,
            second: 0,
            weekday: 0,
        };
        assert_eq!(leap.to_unix(), Some(1_709_164_800));
        assert_eq!(CivilTime { year: 2023, ..leap }.to_unix(), None);
        assert_eq!(CivilTime { month: 13, ..leap }.to_unix(), None);
        assert_eq!(CivilTime { hour: 24, ..leap }.to_unix(), None);
    }

    #[test]
    fn bcd_24h_time_as_linux_reads_it() {
        let mut r = Rtc::new(T0, 5 * MS, ProbeLine::default());
        let now = 5 * MS + 100 * MS;
        assert_eq!(read(&mut r, REG_A, now) & A_UIP, 0);
        let got: [u8; 8] = [
            SECONDS,
            MINUTES,
            HOURS,
            WEEKDAY,
            DAY,
            MONTH,
            YEAR,
            CENTURY_INDEX,
        ]
        .map(|i| read(&mut r, i, now));
        assert_eq!(got, [0x15, 0x30, 0x03, 0x03, 0x08, 0x12, 0x26, 0x20]);
        assert_eq!(read(&mut r, REG_D, now), D_VRT);
        // The clock moves with the given time.
        assert_eq!(read(&mut r, SECONDS, 5 * MS + 61 * NS_PER_SEC), 0x16);
        assert_eq!(read(&mut r, MINUTES, 5 * MS + 61 * NS_PER_SEC), 0x31);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let afternoon = T0 + 12 * 3600; // 15:30:15
        let mut r = Rtc::new(afternoon, 0, NoIrq);
        write(&mut r, REG_B, B_BINARY, 0);
        assert_eq!(read(&mut r, HOURS, 0), 0x80 | 3);
        assert_eq!(read(&mut r, SECONDS, 0), 15);
        write(&mut r, REG_B, 0, 0);
        assert_eq!(read(&mut r, HOURS, 0), 0x83);
        let midnight = T0 - 3 * 3600 - 30 * 60 - 15;
        let mut r = Rtc::new(midnight, 0, NoIrq);
        write(&mut r, REG_B, 0, 0);
        assert_eq!(read(&mut r, HOURS, 0), 0x12);
    }

    #[test]
    fn uip_is_set_just_before_each_second() {
        let mut r = Rtc::new(T0, 0, NoIrq);
        let before = NS_PER_SEC - UIP_LEAD_NS;
        assert_eq!(read(&mut r, REG_A, before - 1) & A_UIP, 0);
        assert_eq!(read(&mut r, REG_A, before), A_UIP | 0x26);
        assert_eq!(read(&mut r, SECONDS, NS_PER_SEC - 1), 0x15);
        assert_eq!(read(&mut r, REG_A, NS_PER_SEC) & A_UIP, 0);
        assert_eq!(read(&mut r, SECONDS, NS_PER_SEC), 0x16);
    }

    #[test]
    fn set_bit_freezes_and_the_written_time_runs_from_its_release() {
        let mut r = Rtc::new(T0, 0, NoIrq);
        // hwclock --systohc: SET, write the fields, release SET.
        write(&mut r, REG_B, B_SET | B_24H | B_UIE, 0);
        assert_eq!(read(&mut r, REG_B, 0), B_SET | B_24H);
        assert_eq!(read(&mut r, REG_A, NS_PER_SEC - 1) & A_UIP, 0);
        for (i, v) in [
            (YEAR, 0x30),
            (MONTH, 0x01),
            (DAY, 0x02),
            (HOURS, 0x04),
            (MINUTES, 0x05),
            (SECONDS, 0x06),
        ] {
            write(&mut r, i, v, 2 * NS_PER_SEC);
        }
        assert_eq!(read(&mut r, SECONDS, 9 * NS_PER_SEC), 0x06);
        write(&mut r, REG_B, B_24H, 10 * NS_PER_SEC);
        let t = CivilTime::from_unix(r.unix_seconds(10 * NS_PER_SEC));
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2030, 1, 2, 4, 5, 6)
        );
        assert_eq!(read(&mut r, SECONDS, 12 * NS_PER_SEC), 0x08);
        // An impossible date is ignored.
        write(&mut r, REG_B, B_SET | B_24H, 20 * NS_PER_SEC);
        write(&mut r, MONTH, 0x13, 20 * NS_PER_SEC);
        write(&mut r, REG_B, B_24H, 20 * NS_PER_SEC);
        assert_eq!(read(&mut r, MONTH, 20 * NS_PER_SEC), 0x01);
        // A field written while running moves the clock.
        write(&mut r, YEAR, 0x31, 30 * NS_PER_SEC);
        assert_eq!(
            CivilTime::from_unix(r.unix_seconds(30 * NS_PER_SEC)).year,
            2031
        );
    }

    #[test]
    fn nvram_index_and_nmi_bit() {
        let mut r = Rtc::new(T0, 0, NoIrq);
        write(&mut r, 0x80 | 0x40, 0xa5, 0);
        assert!(r.nmi_disabled());
        assert_eq!(read(&mut r, 0x40, 0), 0xa5);
        assert!(!r.nmi_disabled());
        write(&mut r, REG_D, 0, 0);
        assert_eq!(read(&mut r, REG_D, 0), D_VRT);
        r.set_nvram(0x15, 0x80);
        r.set_nvram(REG_B, 0xff);
        assert_eq!(read(&mut r, 0x15, 0), 0x80);
        assert_eq!(read(&mut r, REG_B, 0), B_24H);
        let mut b = [0u8; 1];
        let at = |offset| Access {
            space: super::super::bus::Space::Port,
            base: u64::from(RTC_PORT),
            offset,
            now_ns: 0,
        };
        r.write(at(0), &[0x15]);
        r.read(at(1), &mut b);
        assert_eq!(b[0], 0x80);
        r.read(at(0), &mut b);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn update_interrupt_raises_irq8_until_c_is_read() {
        let line = ProbeLine::default();
        let mut r = Rtc::new(T0, 0, line.clone());
        assert_eq!(r.next_irq_deadline(0), None);
        write(&mut r, REG_B, B_24H | B_UIE, 300 * MS);
        assert_eq!(r.next_irq_deadline(300 * MS), Some(NS_PER_SEC));
        assert!(!r.poll_irq(NS_PER_SEC - 1));
        assert!(r.poll_irq(NS_PER_SEC));
        assert_eq!(r.next_irq_deadline(NS_PER_SEC), None);
        // PF runs at the BIOS rate too, without PIE.
        assert_eq!(read(&mut r, REG_C, NS_PER_SEC + 5), C_IRQF | C_PF | C_UF);
        assert!(!line.high());
        assert_eq!(read(&mut r, REG_C, NS_PER_SEC + 6), 0);
        assert_eq!(line.rises(), 1);
    }

    #[test]
    fn flags_set_without_enables_and_do_not_interrupt() {
        let line = ProbeLine::default();
        let mut r = Rtc::new(T0, 0, line.clone());
        // The BIOS rate (1024 Hz) runs PF whether or not PIE is set.
        assert_eq!(read(&mut r, REG_C, 3 * NS_PER_SEC), C_PF | C_UF);
        assert_eq!(line.rises(), 0);
    }

    #[test]
    fn periodic_interrupt_at_the_programmed_rate() {
        let line = ProbeLine::default();
        let mut r = Rtc::new(T0, 0, line.clone());
        write(&mut r, REG_A, 0x2f, 0); // 2 Hz
        write(&mut r, REG_B, B_24H | B_PIE, 0);
        assert_eq!(r.next_irq_deadline(0), Some(NS_PER_SEC / 2));
        assert!(!r.poll_irq(NS_PER_SEC / 2 - 1));
        assert!(r.poll_irq(NS_PER_SEC / 2));
        assert_eq!(
            read(&mut r, REG_C, NS_PER_SEC / 2) & (C_IRQF | C_PF),
            C_IRQF | C_PF
        );
        write(&mut r, REG_A, 0x23, 0); // 8192 Hz
        assert_eq!(
            r.next_irq_deadline(NS_PER_SEC / 2),
            Some(NS_PER_SEC / 2 + 122_071)
        );
    }

    #[test]
    fn alarm_with_dont_care_fields() {
        let line = ProbeLine::default();
        let mut r = Rtc::new(T0, 0, line.clone());
        // Every minute at second 20.
        write(&mut r, 0x01, 0x20, 0);
        write(&mut r, 0x03, 0xc0, 0);
        write(&mut r, 0x05, 0xff, 0);
        write(&mut r, REG_B, B_24H | B_AIE, 0);
        assert!(!r.poll_irq(4 * NS_PER_SEC)); // 03:30:19
        assert!(r.poll_irq(5 * NS_PER_SEC)); // 03:30:20
        assert_eq!(
            read(&mut r, REG_C, 5 * NS_PER_SEC),
            C_IRQF | C_AF | C_UF | C_PF
        );
        assert!(!r.poll_irq(64 * NS_PER_SEC));
        assert!(r.poll_irq(65 * NS_PER_SEC));
    }

    proptest! {
        /// Whatever the format, the registers read back the clock's time,
        /// and writing them back under SET changes nothing.
        #[test]
        fn registers_encode_the_clock(unix_s in 0u64..4_102_444_800, b in 0u8..4) {
            let format = (b & 1) << 2 | (b & 2);
            let mut r = Rtc::new(unix_s, 0, NoIrq);
            write(&mut r, REG_B, format, 0);
            let regs: Vec<(u8, u8)> = [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY_INDEX]
                .iter().map(|&i| (i, read(&mut r, i, 0))).collect();
            let t = CivilTime::from_unix(unix_s as i64);
            let dec = |v: u8| if format & B_BINARY != 0 { v } else { from_bcd(v) };
            prop_assert_eq!(dec(regs[0].1), t.second);
            prop_assert_eq!(dec(regs[4].1), t.day);
            prop_assert_eq!(i64::from(from_bcd(regs[7].1)) * 100 + i64::from(dec(regs[6].1)), t.year);
            write(&mut r, REG_B, format | B_SET, 0);
            for &(i, v) in &regs {
                write(&mut r, i, v, 0);
            }
            write(&mut r, REG_B, format, 0);
            prop_assert_eq!(r.unix_seconds(0), unix_s as i64);
        }
    }
}
