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
pub const ABI_VERSION: u64 = 2;

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
    /// Starts another vCPU of the VM (a paravirtual AP start): RDI = vCPU
    /// index (1 .. vCPU count), RSI = entry RIP, RDX = stack pointer,
    /// RCX = argument (the new vCPU's RDI). The vCPU starts in the boot
    /// vCPU's initial 64-bit state (same page tables) with every other
    /// register zero.
    pub const VCPU_START: u64 = 0x06;
    /// Wakes vCPU RDI from HLT, or makes its next HLT return at once.
    pub const WAKE: u64 = 0x07;
    /// Arms this vCPU's one-shot timer: RDI = deadline on the `TIME_NS`
    /// clock (0 disarms). A HLT returns once the deadline passed.
    pub const SET_TIMER: u64 = 0x08;
}

/// Largest page count one `REPORT_TOUCHED` may describe (1 GiB of 4 KiB
/// pages); bounds the bitmap the hypervisor reads.
pub const MAX_REPORT_PAGES: u64 = 1 << 18;

/// `MARK` tags that report work done (the `pattern` guest's, bit 48 of its
/// boot argument): `'W'` in bits 63-56, the count so far in bits 55-0.
/// Other guests' marks are small tags (1, 2), never in this range. One
/// definition for the guest that writes them and the kernel that reads
/// them.
pub mod work_report {
    /// Bits 63-56 of a work-report tag.
    pub const TAG: u64 = 0x57 << 56;
    /// The count's bits.
    pub const COUNT_MASK: u64 = (1 << 56) - 1;

    /// The tag that reports `count` (its low 56 bits).
    pub const fn mark(count: u64) -> u64 {
        TAG | (count & COUNT_MASK)
    }

    /// The count a `MARK` tag reports, or `None` for any other tag.
    pub const fn count(tag: u64) -> Option<u64> {
        if tag & !COUNT_MASK == TAG {
            Some(tag & COUNT_MASK)
        } else {
            None
        }
    }
}

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
    /// The vCPU named is running already.
    Busy = 4,
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
            -4 => Some(Self::Busy),
            _ => None,
        }
    }

    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::UnknownNumber => "unknown hypercall number",
            Self::InvalidArgument => "invalid argument",
            Self::BadAddress => "address outside guest RAM",
            Self::Busy => "vCPU already running",
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
    /// See [`nr::VCPU_START`]; the index is checked against the VM's vCPU
    /// count, RIP and stack against its RAM. Whether the vCPU runs already
    /// is for the caller to check.
    VcpuStart {
        /// vCPU index, `1 .. vcpus`.
        index: u32,
        /// Entry RIP (a guest-physical address inside RAM; the boot tables
        /// identity-map it).
        rip: u64,
        /// Initial RSP (inside RAM or its end).
        rsp: u64,
        /// Passed in RDI.
        arg: u64,
    },
    /// See [`nr::WAKE`].
    Wake {
        /// vCPU index, `0 .. vcpus`.
        index: u32,
    },
    /// See [`nr::SET_TIMER`].
    SetTimer {
        /// Deadline in `TIME_NS` nanoseconds; `None` disarms.
        deadline_ns: Option<u64>,
    },
}

/// What a VM is, for argument checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmShape {
    /// Guest RAM is `[0, ram_bytes)`.
    pub ram_bytes: u64,
    /// The VM may have vCPUs `0 .. vcpus` (vCPU 0 boots).
    pub vcpus: u32,
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
    /// `[0, ram_bytes)` and that has one vCPU.
    pub fn decode(regs: &HypercallRegs, ram_bytes: u64) -> Result<Self, HypercallError> {
        Self::decode_for(
            regs,
            VmShape {
                ram_bytes,
                vcpus: 1,
            },
        )
    }

    /// Decodes and validates a call from a guest of shape `vm`.
    pub fn decode_for(regs: &HypercallRegs, vm: VmShape) -> Result<Self, HypercallError> {
        let ram_bytes = vm.ram_bytes;
        let vcpu_index = |raw: u64, first: u32| match u32::try_from(raw) {
            Ok(i) if i >= first && i < vm.vcpus => Ok(i),
            _ => Err(HypercallError::InvalidArgument),
        };
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
            nr::VCPU_START => {
                let index = vcpu_index(regs.rdi, 1)?;
                // The entry must hold at least one byte of code; the stack
                // pointer may be RAM's end (the first push goes below it).
                let (rip, rsp) = (regs.rsi, regs.rdx);
                if rip >= ram_bytes || rsp > ram_bytes || rsp < 8 {
                    return Err(HypercallError::BadAddress);
                }
                Ok(Self::VcpuStart {
                    index,
                    rip,
                    rsp,
                    arg: regs.rcx,
                })
            }
            nr::WAKE => Ok(Self::Wake {
                index: vcpu_index(regs.rdi, 0)?,
            }),
            nr::SET_TIMER => Ok(Self::SetTimer {
                deadline_ns: (regs.rdi != 0).then_some(regs.rdi),
            }),
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
            HypercallError::Busy,
        ] {
            assert!((e.to_rax() as i64) < 0);
            assert_eq!(HypercallError::from_rax(e.to_rax()), Some(e));
        }
        assert_eq!(HypercallError::from_rax(0), None);
        assert_eq!(HypercallError::from_rax(ABI_VERSION), None);
    }

    #[test]
    fn unknown_numbers_are_refused() {
        for n in [9, 0xff, u64::MAX, 1 << 63] {
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

    const SMP: VmShape = VmShape {
        ram_bytes: RAM,
        vcpus: 4,
    };

    #[test]
    fn vcpu_start_checks_index_entry_and_stack() {
        let call = |i, rip, rsp| Hypercall::decode_for(&regs(nr::VCPU_START, i, rip, rsp, 7), SMP);
        assert_eq!(
            call(3, 0x10_0000, 0x80_0000),
            Ok(Hypercall::VcpuStart {
                index: 3,
                rip: 0x10_0000,
                rsp: 0x80_0000,
                arg: 7
            })
        );
        // vCPU 0 is the boot vCPU; 4 is past the count; huge indexes do
        // not wrap into range.
        for i in [0, 4, 1 << 32, u64::MAX] {
            assert_eq!(
                call(i, 0x10_0000, 0x80_0000),
                Err(HypercallError::InvalidArgument),
                "index {i}"
            );
        }
        // Entry or stack outside RAM; the stack may start at RAM's end.
        for (rip, rsp) in [
            (RAM, 0x8000),
            (u64::MAX, 0x8000),
            (0x10_0000, RAM + 8),
            (0x10_0000, 0),
        ] {
            assert_eq!(
                call(1, rip, rsp),
                Err(HypercallError::BadAddress),
                "rip {rip:#x} rsp {rsp:#x}"
            );
        }
        assert!(call(1, RAM - 1, RAM).is_ok());
        // A one-vCPU VM starts nothing.
        assert_eq!(
            Hypercall::decode(&regs(nr::VCPU_START, 1, 0x10_0000, 0x8000, 0), RAM),
            Err(HypercallError::InvalidArgument)
        );
    }

    #[test]
    fn wake_and_timer_decode() {
        assert_eq!(
            Hypercall::decode_for(&regs(nr::WAKE, 0, 0, 0, 0), SMP),
            Ok(Hypercall::Wake { index: 0 })
        );
        assert_eq!(
            Hypercall::decode_for(&regs(nr::WAKE, 4, 0, 0, 0), SMP),
            Err(HypercallError::InvalidArgument)
        );
        assert_eq!(
            Hypercall::decode_for(&regs(nr::SET_TIMER, 0, 0, 0, 0), SMP),
            Ok(Hypercall::SetTimer { deadline_ns: None })
        );
        assert_eq!(
            Hypercall::decode_for(&regs(nr::SET_TIMER, 12345, 0, 0, 0), SMP),
            Ok(Hypercall::SetTimer {
                deadline_ns: Some(12345)
            })
        );
    }

    #[test]
    fn work_reports_round_trip_and_other_marks_are_not_work() {
        assert_eq!(work_report::count(work_report::mark(12345)), Some(12345));
        assert_eq!(
            work_report::count(work_report::mark(u64::MAX)),
            Some(work_report::COUNT_MASK)
        );
        assert_eq!(work_report::count(1), None);
        assert_eq!(work_report::count(2), None);
        assert_eq!(work_report::count(work_report::TAG | (1 << 63)), None);
    }
}
