//! Emulation of string I/O (INS/OUTS, with or without REP) for intercepted
//! ports: the element loop, the register updates, and the guest memory
//! accesses through the guest's own paging.
//!
//! Follows the Intel SDM vol. 2, "INS/INSB/INSW/INSD", "OUTS/OUTSB/OUTSW/
//! OUTSD" and "REP/REPE/REPZ/REPNE/REPNZ" (count in rCX, the direction flag,
//! the address size), and vol. 1 "Address-Size Attribute" (a 67 prefix in
//! 64-bit mode uses ESI/EDI/ECX and zero-extends their updates).
//!
//! What the emulation guarantees, so a guest cannot hurt the host through
//! it:
//! * at most `max_elements` elements per call ([`run`]); a longer REP returns
//!   [`Outcome::Continue`] with the registers updated, and the caller leaves
//!   RIP on the instruction so the guest executes it again (a new exit: the
//!   host can preempt or stop the guest in between);
//! * every memory operand goes through [`guest_walk`] and the VM's
//!   [`GuestPhysRead`]/[`GuestPhysWrite`]: an unmapped address or one
//!   outside RAM ends the instruction with [`Outcome::Fault`], registers
//!   reflecting the elements done, as the CPU leaves them on a fault.
//!
//! Key items: [`StringIoInsn`] (from `insn::decode`), [`Regs`], [`Ports`],
//! [`run`]. Neighbours: the kernel's `vm` module (the port models and the
//! guest memory), [`crate::insn`] (decoding).

use crate::addr::GuestPhysAddr;
use crate::guest_walk::{self, GuestPaging, GuestPhysRead, GuestPhysWrite};
pub use crate::insn::StringIoInsn;

/// RFLAGS.DF: elements go down in memory.
pub const RFLAGS_DF: u64 = 1 << 10;

/// The registers a string I/O instruction reads and updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// Source of OUTS.
    pub rsi: u64,
    /// Destination of INS.
    pub rdi: u64,
    /// REP count.
    pub rcx: u64,
    /// For DF.
    pub rflags: u64,
}

/// The port side of the transfer.
pub trait Ports {
    /// An IN of `size_bytes` from `port`.
    fn read(&mut self, port: u16, size_bytes: u8) -> u32;
    /// An OUT of `size_bytes` (the low bytes of `value`) to `port`.
    fn write(&mut self, port: u16, size_bytes: u8, value: u32);
}

/// How an emulated string instruction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All elements done: step over the instruction.
    Done {
        /// Elements transferred.
        elements: u64,
    },
    /// The per-call budget ran out with elements left: resume the guest on
    /// the same instruction.
    Continue {
        /// Elements transferred.
        elements: u64,
    },
    /// A memory operand could not be reached; the registers count the
    /// elements done before it.
    Fault {
        /// The guest-virtual address of the element.
        va: u64,
        /// The element was to be written (INS).
        write: bool,
        /// What was wrong with it.
        why: FaultKind,
        /// Elements transferred before it.
        elements: u64,
    },
}

/// Why a memory operand could not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The guest's page tables do not map it (or forbid the write).
    NotMapped,
    /// It maps to guest-physical memory outside RAM.
    OutsideRam {
        /// The guest-physical address.
        gpa: u64,
    },
}

impl FaultKind {
    /// A short description for report lines.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotMapped => "not mapped (or read-only) in the guest's page tables",
            Self::OutsideRam { .. } => "outside guest RAM",
        }
    }
}

/// Masks an address or count to the instruction's address size.
fn mask(insn: &StringIoInsn, v: u64) -> u64 {
    if insn.addr32 { v & 0xffff_ffff } else { v }
}

/// Moves one element between guest memory at `va` and `bytes`, page by page
/// (an element may straddle two pages). Every part is translated and
/// checked before any byte is written, so a faulting INS writes nothing.
fn access<M: GuestPhysRead + GuestPhysWrite>(
    mem: &M,
    paging: GuestPaging,
    va: u64,
    bytes: &mut [u8],
    write: bool,
) -> Result<(), FaultKind> {
    // At most two parts: an element is at most 4 bytes.
    let mut parts = [(GuestPhysAddr::new(0), 0usize, 0usize); 2];
    let mut count = 0;
    let mut done = 0;
    while done < bytes.len() {
        let at = va.wrapping_add(done as u64);
        let gpa = if write {
            guest_walk::translate_write(mem, paging, at)
        } else {
            guest_walk::translate(mem, paging, at)
        }
        .ok_or(FaultKind::NotMapped)?;
        let n = ((4096 - (at & 0xfff)) as usize).min(bytes.len() - done);
        let mut probe = [0u8; 4];
        mem.read(gpa, &mut probe[..n])
            .ok_or(FaultKind::OutsideRam { gpa: gpa.as_u64() })?;
        if !write {
            bytes[done..done + n].copy_from_slice(&probe[..n]);
        }
        parts[count] = (gpa, done, n);
        count += 1;
        done += n;
    }
    if write {
        for &(gpa, from, n) in &parts[..count] {
            mem.write(gpa, &bytes[from..from + n])
                .ok_or(FaultKind::OutsideRam { gpa: gpa.as_u64() })?;
        }
    }
    Ok(())
}

/// Runs `insn` on `port`: at most `max_elements` elements (at least one is
/// attempted when any is due), updating `regs` as the CPU would.
pub fn run<M: GuestPhysRead + GuestPhysWrite>(
    insn: &StringIoInsn,
    port: u16,
    regs: &mut Regs,
    paging: GuestPaging,
    mem: &M,
    ports: &mut impl Ports,
    max_elements: u64,
) -> Outcome {
    let size = u64::from(insn.size_bytes);
    let step = if regs.rflags & RFLAGS_DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let mut left = if insn.rep { mask(insn, regs.rcx) } else { 1 };
    let mut elements = 0;
    while left > 0 {
        if elements == max_elements.max(1) {
            return Outcome::Continue { elements };
        }
        let mut bytes = [0u8; 4];
        let element = &mut bytes[..usize::from(insn.size_bytes)];
        let (va, result) = if insn.out {
            let va = mask(insn, regs.rsi);
            let r = access(mem, paging, va, element, false);
            if r.is_ok() {
                ports.write(port, insn.size_bytes, u32::from_le_bytes(bytes));
            }
            (va, r)
        } else {
            let va = mask(insn, regs.rdi);
            let value = ports.read(port, insn.size_bytes);
            element.copy_from_slice(&value.to_le_bytes()[..usize::from(insn.size_bytes)]);
            (va, access(mem, paging, va, element, true))
        };
        if let Err(why) = result {
            return Outcome::Fault {
                va,
                write: !insn.out,
                why,
                elements,
            };
        }
        if insn.out {
            regs.rsi = mask(insn, regs.rsi.wrapping_add(step));
        } else {
            regs.rdi = mask(insn, regs.rdi.wrapping_add(step));
        }
        left -= 1;
        if insn.rep {
            regs.rcx = mask(insn, regs.rcx.wrapping_sub(1));
        }
        elements += 1;
    }
    Outcome::Done { elements }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_layout::{BOOT_CPU_STATE, boot_table_words};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::vec::Vec;

    /// Sparse guest RAM `[0, ram)` with the boot tables in it.
    struct Mem(RefCell<HashMap<u64, u8>>, u64);

    impl GuestPhysRead for Mem {
        fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
            let g = gpa.as_u64();
            assert_eq!(
                g / 4096,
                (g + buf.len() as u64 - 1) / 4096,
                "crosses a page"
            );
            if g + buf.len() as u64 > self.1 {
                return None;
            }
            let m = self.0.borrow();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *m.get(&(g + i as u64)).unwrap_or(&0);
            }
            Some(())
        }
    }

    impl GuestPhysWrite for Mem {
        fn write(&self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
            let g = gpa.as_u64();
            assert_eq!(
                g / 4096,
                (g + buf.len() as u64 - 1) / 4096,
                "crosses a page"
            );
            if g + buf.len() as u64 > self.1 {
                return None;
            }
            let mut m = self.0.borrow_mut();
            for (i, b) in buf.iter().enumerate() {
                m.insert(g + i as u64, *b);
            }
            Some(())
        }
    }

    const RAM: u64 = 0x80_0000;

    fn mem() -> Mem {
        let mut m = HashMap::new();
        for (gpa, v) in boot_table_words() {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                m.insert(gpa.as_u64() + i as u64, *b);
            }
        }
        Mem(RefCell::new(m), RAM)
    }

    fn paging() -> GuestPaging {
        GuestPaging {
            cr0: BOOT_CPU_STATE.cr0,
            cr3: BOOT_CPU_STATE.cr3,
            cr4: BOOT_CPU_STATE.cr4,
            efer: BOOT_CPU_STATE.efer,
        }
    }

    /// Records OUTs; INs return an incrementing counter.
    #[derive(Default)]
    struct Log {
        outs: Vec<(u16, u8, u32)>,
        next_in: u32,
    }

    impl Ports for Log {
        fn read(&mut self, _port: u16, size_bytes: u8) -> u32 {
            self.next_in += 1;
            self.next_in
                & if size_bytes == 4 {
                    u32::MAX
                } else {
                    (1 << (8 * size_bytes)) - 1
                }
        }
        fn write(&mut self, port: u16, size_bytes: u8, value: u32) {
            self.outs.push((port, size_bytes, value));
        }
    }

    fn insn(out: bool, size_bytes: u8, rep: bool) -> StringIoInsn {
        StringIoInsn {
            out,
            size_bytes,
            rep,
            addr32: false,
            fs_gs: false,
        }
    }

    fn put(m: &Mem, gpa: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            m.0.borrow_mut().insert(gpa + i as u64, *b);
        }
    }

    #[test]
    fn rep_outsb_forward_and_backward() {
        let m = mem();
        put(&m, 0x40_0000, b"hello");
        let mut log = Log::default();
        let mut r = Regs {
            rsi: 0x40_0000,
            rcx: 5,
            rflags: 2,
            ..Regs::default()
        };
        let out = run(
            &insn(true, 1, true),
            0x3f8,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        assert_eq!(out, Outcome::Done { elements: 5 });
        let text: Vec<u8> = log.outs.iter().map(|o| o.2 as u8).collect();
        assert_eq!(text, b"hello");
        assert_eq!((r.rsi, r.rcx), (0x40_0005, 0));
        // DF=1: from the last byte down.
        let mut log = Log::default();
        let mut r = Regs {
            rsi: 0x40_0004,
            rcx: 5,
            rflags: 2 | RFLAGS_DF,
            ..Regs::default()
        };
        run(
            &insn(true, 1, true),
            0x3f8,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        let text: Vec<u8> = log.outs.iter().map(|o| o.2 as u8).collect();
        assert_eq!(text, b"olleh");
        assert_eq!((r.rsi, r.rcx), (0x3f_ffff, 0));
    }

    #[test]
    fn words_and_dwords_straddle_pages() {
        let m = mem();
        put(&m, 0x40_0ffe, &[1, 2, 3, 4, 5, 6]);
        let mut log = Log::default();
        let mut r = Regs {
            rsi: 0x40_0ffe,
            rcx: 3,
            rflags: 2,
            ..Regs::default()
        };
        run(
            &insn(true, 2, true),
            0x80,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        assert_eq!(
            log.outs,
            [(0x80, 2, 0x0201), (0x80, 2, 0x0403), (0x80, 2, 0x0605)]
        );
        // INSD backward writes each dword below the last.
        let mut r = Regs {
            rdi: 0x40_2ffe,
            rcx: 2,
            rflags: 2 | RFLAGS_DF,
            ..Regs::default()
        };
        let out = run(
            &insn(false, 4, true),
            0x80,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        assert_eq!(out, Outcome::Done { elements: 2 });
        let mut got = [0u8; 8];
        for (i, b) in got.iter_mut().enumerate() {
            *b = *m.0.borrow().get(&(0x40_2ffa + i as u64)).unwrap_or(&0);
        }
        assert_eq!(got, [2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(r.rdi, 0x40_2ff6);
    }

    #[test]
    fn without_rep_one_element_and_rcx_untouched() {
        let m = mem();
        let mut log = Log::default();
        let mut r = Regs {
            rdi: 0x40_0000,
            rcx: 77,
            rflags: 2,
            ..Regs::default()
        };
        let out = run(
            &insn(false, 1, false),
            0x3fd,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        assert_eq!(out, Outcome::Done { elements: 1 });
        assert_eq!((r.rdi, r.rcx), (0x40_0001, 77));
        // REP with rCX = 0 does nothing.
        let mut r = Regs {
            rdi: 0x40_0000,
            rflags: 2,
            ..Regs::default()
        };
        let out = run(
            &insn(false, 1, true),
            0x3fd,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        assert_eq!(out, Outcome::Done { elements: 0 });
        assert_eq!(r.rdi, 0x40_0000);
    }

    #[test]
    fn long_reps_continue_in_batches() {
        let m = mem();
        let mut log = Log::default();
        let mut r = Regs {
            rsi: 0x40_0000,
            rcx: 10,
            rflags: 2,
            ..Regs::default()
        };
        let i = insn(true, 1, true);
        assert_eq!(
            run(&i, 0x80, &mut r, paging(), &m, &mut log, 4),
            Outcome::Continue { elements: 4 }
        );
        assert_eq!((r.rsi, r.rcx), (0x40_0004, 6));
        assert_eq!(
            run(&i, 0x80, &mut r, paging(), &m, &mut log, 4),
            Outcome::Continue { elements: 4 }
        );
        assert_eq!(
            run(&i, 0x80, &mut r, paging(), &m, &mut log, 4),
            Outcome::Done { elements: 2 }
        );
        assert_eq!((r.rsi, r.rcx, log.outs.len()), (0x40_000a, 0, 10));
    }

    #[test]
    fn address_size_32_wraps_and_zero_extends() {
        let m = mem();
        let mut log = Log::default();
        let mut i = insn(true, 1, true);
        i.addr32 = true;
        // Upper halves are ignored and cleared.
        let mut r = Regs {
            rsi: 0xffff_ffff_0040_0000,
            rcx: 0xdead_0000_0000_0002,
            rflags: 2,
            ..Regs::default()
        };
        assert_eq!(
            run(&i, 0x80, &mut r, paging(), &m, &mut log, 64),
            Outcome::Done { elements: 2 }
        );
        assert_eq!((r.rsi, r.rcx), (0x40_0002, 0));
    }

    #[test]
    fn bad_addresses_fault_with_progress_kept() {
        let m = mem();
        let mut log = Log::default();
        // Crosses the end of RAM after two bytes.
        let mut r = Regs {
            rsi: RAM - 2,
            rcx: 4,
            rflags: 2,
            ..Regs::default()
        };
        let out = run(
            &insn(true, 1, true),
            0x80,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        assert_eq!(
            out,
            Outcome::Fault {
                va: RAM,
                write: false,
                why: FaultKind::OutsideRam { gpa: RAM },
                elements: 2
            }
        );
        assert_eq!((r.rsi, r.rcx, log.outs.len()), (RAM, 2, 2));
        // Beyond what the boot tables map (512 GiB), and a non-canonical
        // address: not mapped; INS writes nothing.
        for va in [512 << 30, 0x8000_0000_0000_0000] {
            let mut r = Regs {
                rdi: va,
                rcx: 1,
                rflags: 2,
                ..Regs::default()
            };
            let out = run(
                &insn(false, 4, true),
                0x80,
                &mut r,
                paging(),
                &m,
                &mut log,
                64,
            );
            assert_eq!(
                out,
                Outcome::Fault {
                    va,
                    write: true,
                    why: FaultKind::NotMapped,
                    elements: 0
                }
            );
            assert_eq!(r.rcx, 1);
        }
        // An element straddling the end of RAM is not half-written.
        let mut r = Regs {
            rdi: RAM - 2,
            rflags: 2,
            ..Regs::default()
        };
        let out = run(
            &insn(false, 4, false),
            0x80,
            &mut r,
            paging(),
            &m,
            &mut log,
            64,
        );
        assert!(matches!(out, Outcome::Fault { elements: 0, .. }));
    }
}
