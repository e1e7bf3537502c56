//! The guest-to-hypervisor call ABI, shared by the hypervisor and the test
//! guests (`guests/`), documented for people in `docs/hypercalls.md`.
//!
//! A guest calls with `VMMCALL` (AMD) or `VMCALL` (Intel): the number in RAX,
//! up to four arguments in RDI, RSI, RDX, RCX. On return RAX holds a status:
//! zero or a positive value on success, a negative [`HypercallError`] code
//! otherwise; every other register is preserved. Unknown numbers and bad
//! arguments are answered with an error, never with a fault: a guest cannot
//! hurt the hypervisor through this interface.
//!
//! Key types: [`Hypercall`] (a decoded, validated call), [`HypercallError`].
//! Neighbours: the kernel's `vm` module performs the calls; guest memory
//! accesses for pointer arguments are checked by the caller through
//! [`GuestRange`].

use crate::addr::{GuestPhysAddr, PAGE_SIZE_4K};

/// ABI version returned by [`nr::VERSION`].
pub const ABI_VERSION: u64 = 1;

/// Hypercall numbers (RAX).
pub mod nr {
    /// Returns [`super::ABI_VERSION`].
    pub const VERSION: u64 = 0x00;
    /// Stops the VM; RDI = exit code (0 means success). Does not return.
    pub const EXIT: u64 = 0x01;
    /// Reports the pages touched in one interval: RDI = interval index,
    /// RSI = GPA of a bitmap (bit i = page `first_pfn + i` touched),
    /// RDX = first page frame number, RCX = number of pages.
    pub const REPORT_TOUCHED: u64 = 0x02;
    /// Reports a verification result: RDI = pages checked, RSI = mismatches.
    pub const CHECKSUM_RESULT: u64 = 0x03;
    /// A phase marker for tests: RDI = tag. The hypervisor may act on it
    /// (for example clear accessed bits) before the guest resumes.
    pub const MARK: u64 = 0x04;
    /// Returns the host's monotonic time in nanoseconds.
    pub const TIME_NS: u64 = 0x05;
}

/// Largest page count one `REPORT_TOUCHED` may describe (1 GiB of 4 KiB
/// pages); bounds the bitmap the hypervisor reads.
pub const MAX_REPORT_PAGES: u64 = 1 << 18;

/// Why a hypercall failed; RAX carries the negated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum HypercallError {
    /// The number is not defined.
    UnknownNumber = 1,
    /// An argument is out of range.
    InvalidArgument = 2,
    /// A pointer argument names memory outside the guest's RAM.
    BadAddress = 3,
}

impl HypercallError {
    /// The value placed in RAX.
    pub const fn to_rax(self) -> u64 {
        (-(self as i64)) as u64
    }

    /// Decodes a RAX value returned to a guest, if it is an error.
    pub const fn from_rax(rax: u64) -> Option<Self> {
        match rax as i64 {
            -1 => Some(Self::UnknownNumber),
            -2 => Some(Self::InvalidArgument),
            -3 => Some(Self::BadAddress),
            _ => None,
        }
    }

    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::UnknownNumber => "unknown hypercall number",
            Self::InvalidArgument => "invalid argument",
            Self::BadAddress => "address outside guest RAM",
        }
    }
}

/// A range of guest-physical memory a hypercall wants to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// First byte.
    pub start: GuestPhysAddr,
    /// Length in bytes (never zero).
    pub len_bytes: u64,
}

impl GuestRange {
    /// Whether the whole range lies below `ram_bytes` (guest RAM is
    /// `[0, ram_bytes)`).
    pub fn within_ram(&self, ram_bytes: u64) -> bool {
        match self.start.as_u64().checked_add(self.len_bytes) {
            Some(end) => end <= ram_bytes,
            None => false,
        }
    }
}

/// A decoded and argument-checked hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// See [`nr::VERSION`].
    Version,
    /// See [`nr::EXIT`].
    Exit {
        /// The guest's exit code.
        code: u64,
    },
    /// See [`nr::REPORT_TOUCHED`].
    ReportTouched {
        /// Interval index chosen by the guest.
        interval: u64,
        /// Where the bitmap lies (already checked to be inside RAM).
        bitmap: GuestRange,
        /// Page frame number of bit 0.
        first_pfn: u64,
        /// Number of pages (bits) described.
        page_count: u64,
    },
    /// See [`nr::CHECKSUM_RESULT`].
    ChecksumResult {
        /// Pages the guest verified.
        pages_checked: u64,
        /// Words that did not match.
        mismatches: u64,
    },
    /// See [`nr::MARK`].
    Mark {
        /// The guest's tag.
        tag: u64,
    },
    /// See [`nr::TIME_NS`].
    TimeNs,
}

/// The registers a hypercall reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallRegs {
    /// Number.
    pub rax: u64,
    /// Argument 0.
    pub rdi: u64,
    /// Argument 1.
    pub rsi: u64,
    /// Argument 2.
    pub rdx: u64,
    /// Argument 3.
    pub rcx: u64,
}

impl Hypercall {
    /// Decodes and validates a call from a guest whose RAM is
    /// `[0, ram_bytes)`.
    pub fn decode(regs: &HypercallRegs, ram_bytes: u64) -> Result<Self, HypercallError> {
        match regs.rax {
            nr::VERSION => Ok(Self::Version),
            nr::EXIT => Ok(Self::Exit { code: regs.rdi }),
            nr::REPORT_TOUCHED => {
                let page_count = regs.rcx;
                if page_count == 0 || page_count > MAX_REPORT_PAGES {
                    return Err(HypercallError::InvalidArgument);
                }
                let ram_pages = ram_bytes / PAGE_SIZE_4K;
                match regs.rdx.checked_add(page_count) {
                    Some(end) if end <= ram_pages => {}
                    _ => return Err(HypercallError::InvalidArgument),
                }
                let bitmap = GuestRange {
                    start: GuestPhysAddr::new(regs.rsi),
                    len_bytes: page_count.div_ceil(8),
                };
                if !bitmap.within_ram(ram_bytes) {
                    return Err(HypercallError::BadAddress);
                }
                Ok(Self::ReportTouched {
                    interval: regs.rdi,
                    bitmap,
                    first_pfn: regs.rdx,
                    page_count,
                })
            }
            nr::CHECKSUM_RESULT => Ok(Self::ChecksumResult {
                pages_checked: regs.rdi,
                mismatches: regs.rsi,
            }),
            nr::MARK => Ok(Self::Mark { tag: regs.rdi }),
            nr::TIME_NS => Ok(Self::TimeNs),
            _ => Err(HypercallError::UnknownNumber),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 16 << 20;

    fn regs(rax: u64, rdi: u64, rsi: u64, rdx: u64, rcx: u64) -> HypercallRegs {
        HypercallRegs {
            rax,
            rdi,
            rsi,
            rdx,
            rcx,
        }
    }

    #[test]
    fn error_codes_round_trip() {
        for e in [
            HypercallError::UnknownNumber,
            HypercallError::InvalidArgument,
            HypercallError::BadAddress,
        ] {
            assert!((e.to_rax() as i64) < 0);
            assert_eq!(HypercallError::from_rax(e.to_rax()), Some(e));
        }
        assert_eq!(HypercallError::from_rax(0), None);
        assert_eq!(HypercallError::from_rax(ABI_VERSION), None);
    }

    #[test]
    fn unknown_numbers_are_refused() {
        for n in [6, 0xff, u64::MAX, 1 << 63] {
            assert_eq!(
                Hypercall::decode(&regs(n, 0, 0, 0, 0), RAM),
                Err(HypercallError::UnknownNumber)
            );
        }
    }

    #[test]
    fn report_touched_checks_its_bitmap_and_range() {
        let ok = Hypercall::decode(&regs(nr::REPORT_TOUCHED, 3, 0x8000, 1024, 100), RAM);
        assert_eq!(
            ok,
            Ok(Hypercall::ReportTouched {
                interval: 3,
                bitmap: GuestRange {
                    start: GuestPhysAddr::new(0x8000),
                    len_bytes: 13
                },
                first_pfn: 1024,
                page_count: 100
            })
        );
        // Bitmap ends past RAM, or wraps around.
        assert_eq!(
            Hypercall::decode(&regs(nr::REPORT_TOUCHED, 0, RAM - 4, 0, 100), RAM),
            Err(HypercallError::BadAddress)
        );
        assert_eq!(
            Hypercall::decode(&regs(nr::REPORT_TOUCHED, 0, u64::MAX - 2, 0, 100), RAM),
            Err(HypercallError::BadAddress)
        );
        // Zero, too many, or pages past RAM.
        for (first, count) in [
            (0, 0),
            (0, MAX_REPORT_PAGES + 1),
            (4000, 200),
            (u64::MAX, 2),
        ] {
            assert_eq!(
                Hypercall::decode(&regs(nr::REPORT_TOUCHED, 0, 0x8000, first, count), RAM),
                Err(HypercallError::InvalidArgument),
                "first {first} count {count}"
            );
        }
        // Exactly up to the end of RAM is fine.
        assert!(Hypercall::decode(&regs(nr::REPORT_TOUCHED, 0, RAM - 1, 4088, 8), RAM).is_ok());
    }

    #[test]
    fn simple_calls_decode() {
        assert_eq!(
            Hypercall::decode(&regs(nr::EXIT, 7, 0, 0, 0), RAM),
            Ok(Hypercall::Exit { code: 7 })
        );
        assert_eq!(
            Hypercall::decode(&regs(nr::MARK, 2, 0, 0, 0), RAM),
            Ok(Hypercall::Mark { tag: 2 })
        );
        assert_eq!(
            Hypercall::decode(&regs(nr::VERSION, 0, 0, 0, 0), RAM),
            Ok(Hypercall::Version)
        );
    }
}
