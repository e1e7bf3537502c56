//! SVM facts that are pure data: exit codes, intercept bits, the VMCB
//! layout offsets, the permission-map geometry, and the decoding of an SVM
//! #VMEXIT into the vendor-neutral [`VmExit`].
//!
//! Follows the AMD APM vol. 2, "Secure Virtual Machine": "VMCB Layout",
//! "Intercept Operations" (instruction, exception, IOIO and MSR intercepts),
//! "I/O Permission Bitmap", "MSR Permissions Map", "Nested Paging" (#VMEXIT
//! exit information for nested page faults) and appendix "SVM Intercept
//! Exit Codes". The kernel's `svm` module does the hardware part and uses
//! these; keeping them here tests them on the host.

use crate::addr::GuestPhysAddr;
use crate::exit::{AccessKind, IoAccess, IoDir, NestedFault, VirtInsn, VmExit, pushes_error_code};

/// #VMEXIT codes (EXITCODE, VMCB offset 0x70).
pub mod code {
    /// First exception intercept (vector 0); vector n is `EXCP_BASE + n`.
    pub const EXCP_BASE: u64 = 0x40;
    /// MOV to CR0; CRn is `WRITE_CR0 + n`.
    pub const WRITE_CR0: u64 = 0x10;
    /// Physical interrupt.
    pub const INTR: u64 = 0x60;
    /// Physical NMI.
    pub const NMI: u64 = 0x61;
    /// A virtual interrupt (V_IRQ) became deliverable: the interrupt
    /// window.
    pub const VINTR: u64 = 0x64;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// INVLPGA.
    pub const INVLPGA: u64 = 0x7a;
    /// IN/OUT/INS/OUTS.
    pub const IOIO: u64 = 0x7b;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7c;
    /// Shutdown (triple fault).
    pub const SHUTDOWN: u64 = 0x7f;
    /// VMRUN.
    pub const VMRUN: u64 = 0x80;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// VMLOAD.
    pub const VMLOAD: u64 = 0x82;
    /// VMSAVE.
    pub const VMSAVE: u64 = 0x83;
    /// STGI.
    pub const STGI: u64 = 0x84;
    /// CLGI.
    pub const CLGI: u64 = 0x85;
    /// SKINIT.
    pub const SKINIT: u64 = 0x86;
    /// XSETBV.
    pub const XSETBV: u64 = 0x8d;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
    /// VMRUN refused the VMCB (invalid guest state). QEMU stores it as
    /// 0x0000_0000_FFFF_FFFF, hardware as all ones: compare the low 32 bits.
    pub const INVALID_LOW32: u32 = 0xffff_ffff;
}

/// Whether an EXITCODE is VMEXIT_INVALID (either width).
pub const fn is_invalid(exit_code: u64) -> bool {
    exit_code as u32 == code::INVALID_LOW32
}

/// Intercept bits of the VMCB control area.
pub mod intercept {
    /// Word at offset 0x0C.
    pub mod misc1 {
        /// Physical interrupts.
        pub const INTR: u32 = 1 << 0;
        /// Physical NMIs.
        pub const NMI: u32 = 1 << 1;
        /// Virtual interrupts (VINTR): the exit of the interrupt window.
        pub const VINTR: u32 = 1 << 4;
        /// CPUID.
        pub const CPUID: u32 = 1 << 18;
        /// HLT.
        pub const HLT: u32 = 1 << 24;
        /// INVLPGA.
        pub const INVLPGA: u32 = 1 << 26;
        /// I/O through the I/O permission map.
        pub const IOIO_PROT: u32 = 1 << 27;
        /// MSRs through the MSR permission map.
        pub const MSR_PROT: u32 = 1 << 28;
        /// Shutdown.
        pub const SHUTDOWN: u32 = 1 << 31;
    }
    /// Word at offset 0x10.
    pub mod misc2 {
        /// VMRUN (required: VMRUN refuses a VMCB without it).
        pub const VMRUN: u32 = 1 << 0;
        /// VMMCALL.
        pub const VMMCALL: u32 = 1 << 1;
        /// VMLOAD.
        pub const VMLOAD: u32 = 1 << 2;
        /// VMSAVE.
        pub const VMSAVE: u32 = 1 << 3;
        /// STGI.
        pub const STGI: u32 = 1 << 4;
        /// CLGI.
        pub const CLGI: u32 = 1 << 5;
        /// SKINIT.
        pub const SKINIT: u32 = 1 << 6;
        /// XSETBV.
        pub const XSETBV: u32 = 1 << 13;
    }
}

/// Byte offsets in the 4 KiB VMCB.
pub mod vmcb {
    /// CR read (15:0) / write (31:16) intercepts.
    pub const INTERCEPT_CR: usize = 0x000;
    /// Exception intercepts, one bit per vector.
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// See [`super::intercept::misc1`].
    pub const INTERCEPT_MISC1: usize = 0x00c;
    /// See [`super::intercept::misc2`].
    pub const INTERCEPT_MISC2: usize = 0x010;
    /// Physical address of the I/O permission map.
    pub const IOPM_BASE_PA: usize = 0x040;
    /// Physical address of the MSR permission map.
    pub const MSRPM_BASE_PA: usize = 0x048;
    /// Guest ASID (u32).
    pub const GUEST_ASID: usize = 0x058;
    /// TLB control (u8).
    pub const TLB_CONTROL: usize = 0x05c;
    /// Virtual interrupt control (V_TPR, V_IRQ, V_INTR_MASKING at bit 24).
    pub const VINTR: usize = 0x060;
    /// Interrupt shadow.
    pub const INTERRUPT_SHADOW: usize = 0x068;
    /// EXITCODE.
    pub const EXIT_CODE: usize = 0x070;
    /// EXITINFO1.
    pub const EXIT_INFO1: usize = 0x078;
    /// EXITINFO2.
    pub const EXIT_INFO2: usize = 0x080;
    /// EXITINTINFO.
    pub const EXIT_INT_INFO: usize = 0x088;
    /// Nested paging enable (bit 0).
    pub const NP_ENABLE: usize = 0x090;
    /// Event injection.
    pub const EVENT_INJ: usize = 0x0a8;
    /// Nested CR3.
    pub const N_CR3: usize = 0x0b0;
    /// VMCB clean bits.
    pub const CLEAN: usize = 0x0c0;
    /// Next RIP (with NRIP save).
    pub const NEXT_RIP: usize = 0x0c8;
    /// Guest ES; CS, SS, DS, FS, GS, GDTR, LDTR, IDTR, TR follow, 16 bytes each.
    pub const ES: usize = 0x400;
    /// Guest CS.
    pub const CS: usize = 0x410;
    /// Guest SS.
    pub const SS: usize = 0x420;
    /// Guest DS.
    pub const DS: usize = 0x430;
    /// Guest FS.
    pub const FS: usize = 0x440;
    /// Guest GS.
    pub const GS: usize = 0x450;
    /// Guest GDTR.
    pub const GDTR: usize = 0x460;
    /// Guest LDTR.
    pub const LDTR: usize = 0x470;
    /// Guest IDTR.
    pub const IDTR: usize = 0x480;
    /// Guest TR.
    pub const TR: usize = 0x490;
    /// Guest CPL (u8).
    pub const CPL: usize = 0x4cb;
    /// Guest EFER.
    pub const EFER: usize = 0x4d0;
    /// Guest CR4.
    pub const CR4: usize = 0x548;
    /// Guest CR3.
    pub const CR3: usize = 0x550;
    /// Guest CR0.
    pub const CR0: usize = 0x558;
    /// Guest DR7.
    pub const DR7: usize = 0x560;
    /// Guest DR6.
    pub const DR6: usize = 0x568;
    /// Guest RFLAGS.
    pub const RFLAGS: usize = 0x570;
    /// Guest RIP.
    pub const RIP: usize = 0x578;
    /// Guest RSP.
    pub const RSP: usize = 0x5d8;
    /// Guest RAX.
    pub const RAX: usize = 0x5f8;
    /// Guest CR2.
    pub const CR2: usize = 0x640;
    /// Guest PAT (used with nested paging).
    pub const G_PAT: usize = 0x668;
}

/// TLB_CONTROL values.
pub mod tlb_control {
    /// Flush nothing.
    pub const NOTHING: u8 = 0;
    /// Flush the whole TLB (every ASID).
    pub const FLUSH_ALL: u8 = 1;
    /// Flush this guest's ASID (needs FlushByAsid).
    pub const FLUSH_GUEST: u8 = 3;
}

/// The TLB control for the next VMRUN: a requested flush (after an aging
/// pass, a table change, or a vCPU's first run) flushes this guest's ASID
/// where the CPU can, else the whole TLB; never nothing.
pub const fn tlb_control_for(flush_requested: bool, flush_by_asid: bool) -> u8 {
    match (flush_requested, flush_by_asid) {
        (false, _) => tlb_control::NOTHING,
        (true, true) => tlb_control::FLUSH_GUEST,
        (true, false) => tlb_control::FLUSH_ALL,
    }
}

/// EFER.SVME.
pub const EFER_SVME: u64 = 1 << 12;
/// MSR VM_HSAVE_PA: the host save area.
pub const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// Size of the MSR permission map: 2 bits per MSR for three 8 K-MSR ranges.
pub const MSRPM_BYTES: usize = 8192;
/// Size of the I/O permission map: one bit per port plus one spare page.
pub const IOPM_BYTES: usize = 12288;

/// Where the read-intercept bit of `msr` lies in the MSR permission map:
/// `(byte, bit)`; the write bit is `bit + 1`. `None` for MSRs outside the
/// three mapped ranges (those always exit).
pub const fn msrpm_position(msr: u32) -> Option<(usize, u8)> {
    let (base, offset) = match msr {
        0x0000_0000..=0x0000_1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (0x800, msr - 0xc000_0000),
        0xc001_0000..=0xc001_1fff => (0x1000, msr - 0xc001_0000),
        _ => return None,
    };
    let bit = offset as usize * 2;
    Some((base + bit / 8, (bit % 8) as u8))
}

/// Where the bit of `port` lies in the I/O permission map: `(byte, bit)`.
pub const fn iopm_position(port: u16) -> (usize, u8) {
    (port as usize / 8, (port % 8) as u8)
}

/// EVENTINJ for a hardware exception with an optional error code.
pub const fn event_inject_exception(vector: u8, error_code: Option<u32>) -> u64 {
    // Vector 7:0, type 3 (exception) in 10:8, EV bit 11, V bit 31,
    // error code in 63:32.
    let mut v = vector as u64 | (3 << 8) | (1 << 31);
    if let Some(e) = error_code {
        v |= (1 << 11) | ((e as u64) << 32);
    }
    v
}

/// EVENTINJ for an external interrupt (type 0) with `vector`.
pub const fn event_inject_interrupt(vector: u8) -> u64 {
    vector as u64 | (1 << 31)
}

/// Bits of the VMCB's virtual-interrupt word (offset 0x60), APM
/// "Virtual Interrupt Control".
pub mod vintr {
    /// V_IRQ: a virtual interrupt is pending. With the VINTR intercept the
    /// guest exits as soon as it could take it, which is how this
    /// hypervisor asks for the interrupt window; nothing is delivered
    /// through it.
    pub const V_IRQ: u64 = 1 << 8;
    /// V_INTR_PRIO, bits 19:16, at 15 so no TPR can hold the request back.
    pub const V_INTR_PRIO_MAX: u64 = 0xf << 16;
    /// V_IGN_TPR: the request ignores the guest's TPR.
    pub const V_IGN_TPR: u64 = 1 << 20;
    /// V_INTR_MASKING: the guest's RFLAGS.IF masks only virtual
    /// interrupts; physical ones follow the host's IF.
    pub const V_INTR_MASKING: u64 = 1 << 24;
    /// The bits that ask for the window.
    pub const WINDOW_REQUEST: u64 = V_IRQ | V_INTR_PRIO_MAX | V_IGN_TPR;
}

/// The guest-state fields VMRUN checks for consistency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryState {
    /// Guest EFER.
    pub efer: u64,
    /// Guest CR0.
    pub cr0: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest CR4.
    pub cr4: u64,
    /// Guest DR6.
    pub dr6: u64,
    /// Guest DR7.
    pub dr7: u64,
    /// Guest CS attributes (VMCB segment attribute format).
    pub cs_attrib: u16,
    /// Guest ASID.
    pub asid: u32,
    /// Intercept word at 0x10 (VMRUN must be intercepted).
    pub intercept_misc2: u32,
}

const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
/// EFER bits that are reserved (must be zero): 1-7, 9, and 16 and up.
const EFER_MBZ: u64 =
    !((1 << 0) | (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15));
const CS_L: u16 = 1 << 9;
const CS_D: u16 = 1 << 10;

/// The first reason VMRUN would refuse `s` with VMEXIT_INVALID, following
/// the APM's "Canonicalization and Consistency Checks" for VMRUN (the
/// subset Thermocline's guests can get wrong), or `None` when it passes.
/// Used to turn a bare VMEXIT_INVALID into a message that names the field.
pub fn entry_state_problem(s: &EntryState) -> Option<&'static str> {
    let long_paging = s.efer & EFER_LME != 0 && s.cr0 & CR0_PG != 0;
    if s.efer & EFER_SVME == 0 {
        Some("EFER.SVME is clear in the guest state")
    } else if s.efer & EFER_MBZ != 0 {
        Some("a reserved EFER bit is set")
    } else if s.cr0 & CR0_CD == 0 && s.cr0 & CR0_NW != 0 {
        Some("CR0.NW is set while CR0.CD is clear")
    } else if s.cr0 >> 32 != 0 {
        Some("CR0 bits 63:32 are not zero")
    } else if long_paging && s.cr3 >> 52 != 0 {
        Some("CR3 has reserved bits set (63:52)")
    } else if s.cr4 >> 32 != 0 {
        Some("CR4 bits 63:32 are not zero")
    } else if s.dr6 >> 32 != 0 || s.dr7 >> 32 != 0 {
        Some("DR6 or DR7 bits 63:32 are not zero")
    } else if long_paging && s.cr4 & CR4_PAE == 0 {
        Some("EFER.LME and CR0.PG are set but CR4.PAE is clear")
    } else if long_paging && s.cr0 & CR0_PE == 0 {
        Some("EFER.LME and CR0.PG are set but CR0.PE is clear")
    } else if long_paging && s.cs_attrib & CS_L != 0 && s.cs_attrib & CS_D != 0 {
        Some("CS.L and CS.D are both set in long mode")
    } else if s.intercept_misc2 & intercept::misc2::VMRUN == 0 {
        Some("the VMRUN intercept is not set")
    } else if s.asid == 0 {
        Some("the guest ASID is 0 (the host's)")
    } else {
        None
    }
}

/// The exit state [`decode_exit`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitState {
    /// EXITCODE.
    pub code: u64,
    /// EXITINFO1.
    pub info1: u64,
    /// EXITINFO2.
    pub info2: u64,
    /// Guest RCX (the MSR index).
    pub rcx: u64,
    /// Guest RAX (low half of a WRMSR value).
    pub rax: u64,
    /// Guest RDX (high half of a WRMSR value).
    pub rdx: u64,
}

/// Turns an SVM #VMEXIT into the vendor-neutral exit. VMEXIT_INVALID is not
/// an exit of a running guest: the caller checks [`is_invalid`] first.
pub fn decode_exit(s: &ExitState) -> VmExit {
    match s.code {
        code::CPUID => VmExit::Cpuid,
        code::HLT => VmExit::Hlt,
        code::VMMCALL => VmExit::Hypercall,
        code::SHUTDOWN => VmExit::Shutdown,
        code::INTR | code::NMI => VmExit::ExternalInterrupt,
        code::VINTR => VmExit::InterruptWindow,
        code::MSR if s.info1 == 0 => VmExit::MsrRead { msr: s.rcx as u32 },
        code::MSR if s.info1 == 1 => VmExit::MsrWrite {
            msr: s.rcx as u32,
            value: (s.rdx << 32) | (s.rax & 0xffff_ffff),
        },
        code::IOIO => {
            let i = s.info1;
            let size_bytes = if i & (1 << 4) != 0 {
                1
            } else if i & (1 << 5) != 0 {
                2
            } else {
                4
            };
            VmExit::Io(IoAccess {
                port: (i >> 16) as u16,
                size_bytes,
                dir: if i & 1 != 0 { IoDir::In } else { IoDir::Out },
                string: i & (1 << 2) != 0,
                rep: i & (1 << 3) != 0,
                next_rip: Some(s.info2),
            })
        }
        code::NPF => {
            let i = s.info1;
            let access = if i & (1 << 4) != 0 {
                AccessKind::Execute
            } else if i & (1 << 1) != 0 {
                AccessKind::Write
            } else {
                AccessKind::Read
            };
            VmExit::NestedPageFault(NestedFault {
                gpa: GuestPhysAddr::new(s.info2),
                access,
                present: i & 1 != 0,
                in_guest_walk: i & (1 << 33) != 0,
            })
        }
        code::VMRUN => VmExit::VirtInstruction(VirtInsn::Vmrun),
        code::VMLOAD => VmExit::VirtInstruction(VirtInsn::Vmload),
        code::VMSAVE => VmExit::VirtInstruction(VirtInsn::Vmsave),
        code::STGI => VmExit::VirtInstruction(VirtInsn::Stgi),
        code::CLGI => VmExit::VirtInstruction(VirtInsn::Clgi),
        code::SKINIT => VmExit::VirtInstruction(VirtInsn::Skinit),
        code::INVLPGA => VmExit::VirtInstruction(VirtInsn::Invlpga),
        c if (code::WRITE_CR0..code::WRITE_CR0 + 16).contains(&c) => VmExit::CrWrite {
            cr: (c - code::WRITE_CR0) as u8,
        },
        code::XSETBV => VmExit::Xsetbv {
            xcr: s.rcx as u32,
            value: (s.rdx << 32) | (s.rax & 0xffff_ffff),
        },
        c if (code::EXCP_BASE..code::EXCP_BASE + 32).contains(&c) => {
            let vector = (c - code::EXCP_BASE) as u8;
            VmExit::Exception {
                vector,
                error_code: pushes_error_code(vector).then_some(s.info1 as u32),
            }
        }
        _ => VmExit::Unknown {
            code: s.code,
            info1: s.info1,
            info2: s.info2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: u64, info1: u64, info2: u64) -> VmExit {
        decode_exit(&ExitState {
            code,
            info1,
            info2,
            rcx: 0xc000_0080,
            rax: 0xffff_ffff_0000_0d01,
            rdx: 0x1,
        })
    }

    fn good_entry() -> EntryState {
        EntryState {
            efer: EFER_SVME | EFER_LME | (1 << 10) | (1 << 11),
            cr0: CR0_PE | CR0_PG | (1 << 16),
            cr3: 0x1000,
            cr4: CR4_PAE,
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            cs_attrib: 0xa9b,
            asid: 1,
            intercept_misc2: intercept::misc2::VMRUN,
        }
    }

    #[test]
    fn entry_checks_name_the_bad_field() {
        assert_eq!(entry_state_problem(&good_entry()), None);
        type Spoiler = fn(&mut EntryState);
        let cases: [(Spoiler, &str); 8] = [
            (|s| s.efer &= !EFER_SVME, "SVME"),
            (|s| s.efer |= 1 << 3, "reserved EFER"),
            (|s| s.cr0 = (s.cr0 & !CR0_CD) | CR0_NW, "CR0.NW"),
            (|s| s.cr4 &= !CR4_PAE, "PAE"),
            (|s| s.cs_attrib |= CS_D, "CS.L and CS.D"),
            (|s| s.intercept_misc2 = 0, "VMRUN intercept"),
            (|s| s.asid = 0, "ASID is 0"),
            (|s| s.dr7 |= 1 << 40, "DR6 or DR7"),
        ];
        for (spoil, needle) in cases {
            let mut s = good_entry();
            spoil(&mut s);
            let msg = entry_state_problem(&s).expect("must be refused");
            assert!(msg.contains(needle), "{msg} should mention {needle}");
        }
    }

    #[test]
    fn a_requested_flush_always_flushes() {
        for by_asid in [false, true] {
            assert_ne!(tlb_control_for(true, by_asid), tlb_control::NOTHING);
            assert_eq!(tlb_control_for(false, by_asid), tlb_control::NOTHING);
        }
        assert_eq!(tlb_control_for(true, true), tlb_control::FLUSH_GUEST);
    }

    #[test]
    fn invalid_is_recognised_in_both_widths() {
        assert!(is_invalid(0x0000_0000_ffff_ffff));
        assert!(is_invalid(u64::MAX));
        assert!(!is_invalid(code::NPF));
    }

    #[test]
    fn io_exit_info_decodes() {
        // IN al, dx from port 0x3fd: TYPE=1, SZ8, port in 31:16.
        let e = exit(code::IOIO, (0x3fd << 16) | (1 << 4) | 1, 0x10_0042);
        assert_eq!(
            e,
            VmExit::Io(IoAccess {
                port: 0x3fd,
                size_bytes: 1,
                dir: IoDir::In,
                string: false,
                rep: false,
                next_rip: Some(0x10_0042)
            })
        );
        // REP OUTSW to 0x80.
        let e = exit(code::IOIO, (0x80 << 16) | (1 << 5) | (1 << 3) | (1 << 2), 0);
        let VmExit::Io(io) = e else { panic!() };
        assert_eq!(
            (io.size_bytes, io.dir, io.string, io.rep),
            (2, IoDir::Out, true, true)
        );
    }

    #[test]
    fn npf_exit_info_decodes() {
        // Write to a not-present page, final translation (bit 32).
        let e = exit(code::NPF, (1 << 32) | 0b110, 0x40_1238);
        assert_eq!(
            e,
            VmExit::NestedPageFault(NestedFault {
                gpa: GuestPhysAddr::new(0x40_1238),
                access: AccessKind::Write,
                present: false,
                in_guest_walk: false
            })
        );
        // Instruction fetch during a guest page-table walk, present entry.
        let VmExit::NestedPageFault(f) = exit(code::NPF, (1 << 33) | (1 << 4) | 1, 0x1000) else {
            panic!()
        };
        assert_eq!(
            (f.access, f.present, f.in_guest_walk),
            (AccessKind::Execute, true, true)
        );
    }

    #[test]
    fn msr_and_misc_exits_decode() {
        assert_eq!(exit(code::MSR, 0, 0), VmExit::MsrRead { msr: 0xc000_0080 });
        assert_eq!(
            exit(code::MSR, 1, 0),
            VmExit::MsrWrite {
                msr: 0xc000_0080,
                value: 0x1_0000_0d01
            }
        );
        assert_eq!(
            exit(code::EXCP_BASE + 13, 0x18, 0),
            VmExit::Exception {
                vector: 13,
                error_code: Some(0x18)
            }
        );
        assert_eq!(
            exit(code::EXCP_BASE + 6, 0x18, 0),
            VmExit::Exception {
                vector: 6,
                error_code: None
            }
        );
        assert_eq!(
            exit(code::VMRUN, 0, 0),
            VmExit::VirtInstruction(VirtInsn::Vmrun)
        );
        assert_eq!(exit(code::WRITE_CR0 + 4, 0, 0), VmExit::CrWrite { cr: 4 });
        assert_eq!(
            exit(code::XSETBV, 0, 0),
            VmExit::Xsetbv {
                xcr: 0xc000_0080,
                value: 0x1_0000_0d01
            }
        );
        assert_eq!(
            exit(0x8b, 1, 2),
            VmExit::Unknown {
                code: 0x8b,
                info1: 1,
                info2: 2
            }
        );
    }

    #[test]
    fn permission_map_positions() {
        assert_eq!(msrpm_position(0), Some((0, 0)));
        assert_eq!(msrpm_position(0x1fff), Some((0x7ff, 6)));
        assert_eq!(
            msrpm_position(crate::guest_cpu::MSR_EFER),
            Some((0x800 + 0x80 * 2 / 8, 0))
        );
        assert_eq!(
            msrpm_position(MSR_VM_HSAVE_PA),
            Some((0x1000 + 0x117 * 2 / 8, 6))
        );
        assert_eq!(msrpm_position(0x4000_0000), None);
        let (byte, _) = msrpm_position(0xc001_1fff).unwrap();
        assert!(byte < MSRPM_BYTES);
        assert_eq!(iopm_position(0x3f8), (0x7f, 0));
        assert_eq!(iopm_position(0xffff).0, 8191);
    }

    #[test]
    fn event_injection_format() {
        assert_eq!(event_inject_exception(6, None), 0x8000_0306);
        assert_eq!(event_inject_exception(13, Some(0)), 0x8000_0b0d);
        assert_eq!(event_inject_exception(14, Some(2)) >> 32, 2);
        assert_eq!(event_inject_interrupt(0x30), 0x8000_0030);
        assert_eq!(exit(code::VINTR, 0, 0), VmExit::InterruptWindow);
    }
}
