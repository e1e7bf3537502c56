//! System control port B (0x61) of the PC/AT: the bits that tie the
//! 8254's channel 2 to the rest of the board. Linux's TSC calibration
//! (`pit_calibrate_tsc`, `quick_pit_calibrate`) opens the gate through bit
//! 0, keeps the speaker off with bit 1, and watches channel 2's output on
//! bit 5.
//!
//! ```text
//!  7     6      5     4        3      2      1        0
//! SERR IOCHK  OUT2  REFRESH  IOCHK  SERR   SPEAKER  GATE2
//!  ro   ro     ro    ro      enable enable  data     rw
//! ```
//!
//! Bits 0-3 are the guest's; 4 toggles every refresh period (15.085 us
//! on the AT, from the given clock); 5 is channel 2's OUT; 6 and 7 (error
//! status) read 0: there are no parity or channel errors to report. The
//! register lives with the PIT ([`super::pit::Pit`]), which answers this
//! port, because gate and output belong to its channel 2.

/// The port.
pub const PORT_B: u16 = 0x61;

/// The AT's DRAM refresh request period, in nanoseconds, which bit 4
/// toggles with.
pub const REFRESH_PERIOD_NS: u64 = 15_085;

const WRITABLE: u8 = 0x0f;

/// The register's guest-written bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemControl {
    bits: u8,
}

impl SystemControl {
    /// Stores a guest write; only bits 0-3 are writable.
    pub fn write(&mut self, value: u8) {
        self.bits = value & WRITABLE;
    }

    /// Bit 0: channel 2's gate.
    pub fn gate2(&self) -> bool {
        self.bits & 1 != 0
    }

    /// The register as read, given channel 2's gate and OUT and the clock.
    pub fn read(&self, gate2: bool, out2: bool, now_ns: u64) -> u8 {
        let refresh = (now_ns / REFRESH_PERIOD_NS) & 1 != 0;
        (self.bits & !1) | u8::from(gate2) | u8::from(refresh) << 4 | u8::from(out2) << 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_bits_stick_and_status_bits_follow_inputs() {
        let mut s = SystemControl::default();
        s.write(0xff);
        assert!(s.gate2());
        assert_eq!(s.read(true, false, 0), 0x0f);
        assert_eq!(s.read(true, true, 0), 0x2f);
        assert_eq!(s.read(true, false, REFRESH_PERIOD_NS), 0x1f);
        assert_eq!(s.read(true, false, 2 * REFRESH_PERIOD_NS), 0x0f);
        s.write(0x02);
        assert!(!s.gate2());
        assert_eq!(s.read(false, false, 0), 0x02);
    }
}
