//! The VMCB with typed fields: every field is a [`Field<T>`] constant whose
//! type is the field's width, so reading EXITCODE as a `u32` or writing a
//! `u64` into the ASID does not compile.
//!
//! Offsets come from `hvcore::svm::vmcb` (AMD APM vol. 2, "VMCB Layout").
//! A [`Vmcb`] owns one 4 KiB frame reached through the kernel's mapping of
//! physical memory; the CPU reads and writes the same frame during VMRUN and
//! #VMEXIT, so every access is volatile.

use crate::mem::{self, phys};
use core::marker::PhantomData;
use hvcore::addr::HostPhysAddr;
use hvcore::frame::FrameSize;
use hvcore::svm::vmcb as off;

/// A VMCB field of type `T` at a fixed offset.
#[derive(Debug)]
pub struct Field<T> {
    offset: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Field<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Field<T> {}

impl<T> Field<T> {
    const fn at(offset: usize) -> Self {
        assert!(
            offset.is_multiple_of(core::mem::size_of::<u16>()) || core::mem::size_of::<T>() == 1
        );
        Self {
            offset,
            _t: PhantomData,
        }
    }
}

/// A segment register in the VMCB's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes: type 3:0, S 4, DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11.
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

const _: () = assert!(core::mem::size_of::<Segment>() == 16);

/// Intercepts of CR reads (15:0) and writes (31:16).
pub const INTERCEPT_CR: Field<u32> = Field::at(off::INTERCEPT_CR);
/// Exception intercepts, one bit per vector.
pub const INTERCEPT_EXCEPTIONS: Field<u32> = Field::at(off::INTERCEPT_EXCEPTIONS);
/// Instruction intercepts, word 3 (`hvcore::svm::intercept::misc1`).
pub const INTERCEPT_MISC1: Field<u32> = Field::at(off::INTERCEPT_MISC1);
/// Instruction intercepts, word 4 (`hvcore::svm::intercept::misc2`).
pub const INTERCEPT_MISC2: Field<u32> = Field::at(off::INTERCEPT_MISC2);
/// I/O permission map.
pub const IOPM_BASE_PA: Field<u64> = Field::at(off::IOPM_BASE_PA);
/// MSR permission map.
pub const MSRPM_BASE_PA: Field<u64> = Field::at(off::MSRPM_BASE_PA);
/// Guest ASID.
pub const GUEST_ASID: Field<u32> = Field::at(off::GUEST_ASID);
/// TLB control.
pub const TLB_CONTROL: Field<u8> = Field::at(off::TLB_CONTROL);
/// Virtual interrupt control.
pub const VINTR: Field<u64> = Field::at(off::VINTR);
/// Interrupt shadow (bit 0) of the guest.
pub const INTERRUPT_SHADOW: Field<u64> = Field::at(off::INTERRUPT_SHADOW);
/// EXITCODE.
pub const EXIT_CODE: Field<u64> = Field::at(off::EXIT_CODE);
/// EXITINFO1.
pub const EXIT_INFO1: Field<u64> = Field::at(off::EXIT_INFO1);
/// EXITINFO2.
pub const EXIT_INFO2: Field<u64> = Field::at(off::EXIT_INFO2);
/// EXITINTINFO.
pub const EXIT_INT_INFO: Field<u64> = Field::at(off::EXIT_INT_INFO);
/// Nested paging enable.
pub const NP_ENABLE: Field<u64> = Field::at(off::NP_ENABLE);
/// Event injection.
pub const EVENT_INJ: Field<u64> = Field::at(off::EVENT_INJ);
/// Nested CR3.
pub const N_CR3: Field<u64> = Field::at(off::N_CR3);
/// Clean bits.
pub const CLEAN: Field<u32> = Field::at(off::CLEAN);
/// Next RIP (NRIP save).
pub const NEXT_RIP: Field<u64> = Field::at(off::NEXT_RIP);
/// Guest ES.
pub const ES: Field<Segment> = Field::at(off::ES);
/// Guest CS.
pub const CS: Field<Segment> = Field::at(off::CS);
/// Guest SS.
pub const SS: Field<Segment> = Field::at(off::SS);
/// Guest DS.
pub const DS: Field<Segment> = Field::at(off::DS);
/// Guest FS.
pub const FS: Field<Segment> = Field::at(off::FS);
/// Guest GS.
pub const GS: Field<Segment> = Field::at(off::GS);
/// Guest GDTR (base and limit used).
pub const GDTR: Field<Segment> = Field::at(off::GDTR);
/// Guest LDTR.
pub const LDTR: Field<Segment> = Field::at(off::LDTR);
/// Guest IDTR (base and limit used).
pub const IDTR: Field<Segment> = Field::at(off::IDTR);
/// Guest TR.
pub const TR: Field<Segment> = Field::at(off::TR);
/// Guest CPL.
pub const CPL: Field<u8> = Field::at(off::CPL);
/// Guest EFER.
pub const EFER: Field<u64> = Field::at(off::EFER);
/// Guest CR4.
pub const CR4: Field<u64> = Field::at(off::CR4);
/// Guest CR3.
pub const CR3: Field<u64> = Field::at(off::CR3);
/// Guest CR0.
pub const CR0: Field<u64> = Field::at(off::CR0);
/// Guest DR7.
pub const DR7: Field<u64> = Field::at(off::DR7);
/// Guest DR6.
pub const DR6: Field<u64> = Field::at(off::DR6);
/// Guest RFLAGS.
pub const RFLAGS: Field<u64> = Field::at(off::RFLAGS);
/// Guest RIP.
pub const RIP: Field<u64> = Field::at(off::RIP);
/// Guest RSP.
pub const RSP: Field<u64> = Field::at(off::RSP);
/// Guest RAX.
pub const RAX: Field<u64> = Field::at(off::RAX);
/// Guest CR2.
pub const CR2: Field<u64> = Field::at(off::CR2);
/// Guest PAT.
pub const G_PAT: Field<u64> = Field::at(off::G_PAT);

/// One VMCB (or a host-state area used with VMSAVE/VMLOAD): a zeroed 4 KiB
/// frame this value owns until it is dropped.
#[derive(Debug)]
pub struct Vmcb {
    frame: HostPhysAddr,
}

impl Vmcb {
    /// A zeroed VMCB, or `None` when no frame is free.
    pub fn new() -> Option<Self> {
        let frame = mem::alloc_frame(FrameSize::Size4K).ok()?;
        // SAFETY: the frame was just handed to us and nothing else refers to it.
        unsafe { phys::zero(frame, 4096) };
        Some(Self { frame })
    }

    /// The physical address VMRUN/VMSAVE/VMLOAD take.
    pub fn pa(&self) -> HostPhysAddr {
        self.frame
    }

    /// Reads a field.
    pub fn get<T: Copy>(&self, field: Field<T>) -> T {
        let at = HostPhysAddr::new(self.frame.as_u64() + field.offset as u64);
        // SAFETY: the frame is ours for our lifetime; the offset is inside
        // the 4 KiB VMCB (the offsets are APM constants) and aligned for T
        // (checked by `phys::read`). The CPU writes the VMCB only while
        // VMRUN executes on this vCPU, never concurrently with this read.
        unsafe { phys::read(at) }
    }

    /// Writes a field.
    pub fn set<T: Copy>(&mut self, field: Field<T>, value: T) {
        let at = HostPhysAddr::new(self.frame.as_u64() + field.offset as u64);
        // SAFETY: as for `get`; `&mut self` makes us the only writer.
        unsafe { phys::write(at, value) }
    }
}

impl Drop for Vmcb {
    fn drop(&mut self) {
        if let Err(e) = mem::free_frame(self.frame, FrameSize::Size4K) {
            log::error!("svm: VMCB frame {:?} not freed: {e}", self.frame);
        }
    }
}
