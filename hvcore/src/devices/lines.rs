//! Interrupt lines shared between devices and the PIC when they live
//! apart (in different locks, or a device on another CPU than the vCPU
//! loop): each device owns an [`IrqPin`] and drives it; the vCPU loop
//! folds the pins into the PIC with [`IrqLevels::sync_into`] before it
//! asks for a pending vector.
//!
//! One atomic word holds the sixteen ISA lines' levels and a "rose since
//! the last sync" bit per line, so a pulse (the PIT raises and lowers IRQ
//! 0 in one call) still reaches an edge-triggered PIC input as an edge
//! even though the level is low again by the time the loop looks.

use core::ops::Deref;

use super::IrqLine;
use super::pic::DualPic;
use crate::sync::{AtomicU64, Ordering};

/// Number of ISA interrupt lines.
pub const ISA_IRQS: u8 = 16;
const RISE_SHIFT: u32 = 16;

/// The levels of IRQ 0-15 and their rises since the last sync.
#[derive(Debug)]
pub struct IrqLevels {
    /// Bits 0-15: level; bits 16-31: rose since the last sync.
    word: AtomicU64,
}

impl Default for IrqLevels {
    fn default() -> Self {
        Self::new()
    }
}

impl IrqLevels {
    /// All lines low.
    pub fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
        }
    }

    /// Drives line `irq` (0-15; others are ignored).
    pub fn set(&self, irq: u8, high: bool) {
        if irq >= ISA_IRQS {
            return;
        }
        let level = 1u64 << irq;
        if high {
            // Release: a device's state change before its interrupt is
            // visible to whoever sees the interrupt.
            self.word
                .fetch_or(level | (level << RISE_SHIFT), Ordering::Release);
        } else {
            self.word.fetch_and(!level, Ordering::Release);
        }
    }

    /// Line `irq`'s level now.
    pub fn level(&self, irq: u8) -> bool {
        irq < ISA_IRQS && self.word.load(Ordering::Acquire) & (1 << irq) != 0
    }

    /// Replays the lines into `pic`: a rise since the last sync becomes an
    /// edge even if the line is low again, then each input takes its
    /// current level.
    pub fn sync_into(&self, pic: &mut DualPic) {
        let word = self
            .word
            .fetch_and(!(0xffff << RISE_SHIFT), Ordering::AcqRel);
        for irq in 0..ISA_IRQS {
            // A rise is an edge whatever the PIC saw last: the line may
            // have dropped and come back between two syncs.
            if word & (1 << (u32::from(irq) + RISE_SHIFT)) != 0 {
                pic.set_irq(irq, false);
                pic.set_irq(irq, true);
            }
            pic.set_irq(irq, word & (1 << irq) != 0);
        }
    }
}

/// One device's line: IRQ `irq` of the [`IrqLevels`] behind `P` (an
/// `Arc<IrqLevels>` in the kernel, a reference in tests).
#[derive(Clone, Debug)]
pub struct IrqPin<P> {
    levels: P,
    irq: u8,
}

impl<P: Deref<Target = IrqLevels>> IrqPin<P> {
    /// The pin for `irq`.
    pub fn new(levels: P, irq: u8) -> Self {
        Self { levels, irq }
    }
}

impl<P: Deref<Target = IrqLevels>> IrqLine for IrqPin<P> {
    fn set_level(&mut self, high: bool) {
        self.levels.set(self.irq, high);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn linux_pic() -> DualPic {
        let mut p = DualPic::new();
        for (slave, base, icw3) in [(false, 0x30, 0x04), (true, 0x38, 0x02)] {
            p.write_port(slave, false, 0x11);
            p.write_port(slave, true, base);
            p.write_port(slave, true, icw3);
            p.write_port(slave, true, 0x01);
        }
        p.write_port(false, true, 0x00);
        p.write_port(true, true, 0x00);
        p
    }

    #[test]
    fn a_pulse_between_syncs_is_one_edge() {
        let levels = IrqLevels::new();
        let mut pin = IrqPin::new(&levels, 0);
        let mut pic = linux_pic();
        pin.raise();
        pin.lower();
        assert!(!levels.level(0));
        levels.sync_into(&mut pic);
        assert_eq!(pic.acknowledge(), 0x30);
        pic.write_port(false, false, 0x20);
        // Nothing new: no second edge.
        levels.sync_into(&mut pic);
        assert_eq!(pic.pending_vector(), None);
    }

    #[test]
    fn a_held_level_is_one_edge_and_stays_visible() {
        let levels = IrqLevels::new();
        let mut pin = IrqPin::new(&levels, 12);
        let mut pic = linux_pic();
        pin.raise();
        levels.sync_into(&mut pic);
        levels.sync_into(&mut pic);
        assert_eq!(pic.acknowledge(), 0x3c);
        pic.write_port(true, false, 0x20);
        pic.write_port(false, false, 0x20);
        levels.sync_into(&mut pic);
        assert_eq!(pic.pending_vector(), None);
        assert!(levels.level(12));
        levels.set(99, true); // ignored
        // Down and up again between two syncs: a new edge.
        pin.lower();
        pin.raise();
        levels.sync_into(&mut pic);
        assert_eq!(pic.pending_vector(), Some(0x3c));
    }
}
