//! Intel VMX facts that are pure data: VMCS field encodings typed by width,
//! VMfail and the VM-instruction error numbers, control values computed from
//! the capability MSRs, CR0/CR4 fixed bits, and the decoding of a VM exit
//! into the vendor-neutral [`VmExit`].
//!
//! Follows the Intel SDM vol. 3C (and 3D appendices): "Conventions" (VMfail
//! in RFLAGS), "VM Instruction Error Numbers", appendix "Field Encoding in
//! VMCS", appendix "VMX Capability Reporting Facility" (allowed 0- and
//! 1-settings, the TRUE control MSRs, fixed CR0/CR4 bits), "VM-Exit
//! Information Fields", "Exit Qualification for I/O Instructions", "Exit
//! Qualification for EPT Violations" and appendix "VMX Basic Exit Reasons".
//! The kernel's `vmx` module does the hardware part (VMXON, VMREAD/VMWRITE,
//! VMLAUNCH) and uses these; keeping them here tests them on the host.
//!
//! Key types: [`Field16`], [`Field32`], [`Field64`], [`FieldNatural`] (a
//! field constant of the wrong width does not compile), [`VmFail`],
//! [`InstructionError`], [`ControlMsrs`], [`ExitReason`], [`RawExit`].

use core::fmt;

use crate::addr::GuestPhysAddr;
use crate::exit::{AccessKind, IoAccess, IoDir, NestedFault, VirtInsn, VmExit, pushes_error_code};
use crate::linux_boot::LinuxEntryState;

/// The width a VMCS field encoding declares in bits 14:13.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 16-bit field.
    W16,
    /// 64-bit field (full access).
    W64,
    /// 32-bit field.
    W32,
    /// Natural width: 64 bits on a 64-bit host.
    Natural,
}

impl Width {
    /// The width field of an encoding.
    pub const fn of(encoding: u32) -> Width {
        match (encoding >> 13) & 3 {
            0 => Width::W16,
            1 => Width::W64,
            2 => Width::W32,
            _ => Width::Natural,
        }
    }
}

/// A VMCS field accessor: its encoding and the Rust type of its value.
pub trait VmcsField: Copy {
    /// The value type: u16, u32 or u64.
    type Value: Copy + Into<u64>;
    /// The field's encoding (the VMREAD/VMWRITE operand).
    fn encoding(self) -> u32;
    /// Truncates a raw VMREAD result to the field's width.
    fn from_raw(raw: u64) -> Self::Value;
}

macro_rules! field_type {
    ($name:ident, $value:ty, $width:expr, $what:literal) => {
        #[doc = concat!("A ", $what, " VMCS field. Constructing one whose encoding declares")]
        /// another width fails at compile time in a `const`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(u32);

        impl $name {
            /// Checks the encoding's width (a panic here is a compile error
            /// when evaluated in a `const`).
            pub const fn new(encoding: u32) -> Self {
                assert!(
                    matches!(Width::of(encoding), w if w as u8 == $width as u8),
                    "VMCS field encoding has another width"
                );
                assert!(encoding & 1 == 0, "high-half (odd) encodings are not used");
                Self(encoding)
            }
        }

        impl VmcsField for $name {
            type Value = $value;
            fn encoding(self) -> u32 {
                self.0
            }
            fn from_raw(raw: u64) -> $value {
                // Truncation to the field's width is the point.
                raw as $value
            }
        }
    };
}

field_type!(Field16, u16, Width::W16, "16-bit");
field_type!(Field32, u32, Width::W32, "32-bit");
field_type!(Field64, u64, Width::W64, "64-bit");
field_type!(FieldNatural, u64, Width::Natural, "natural-width");

/// The VMCS fields Thermocline uses (SDM appendix "Field Encoding in VMCS").
pub mod field {
    use super::{Field16, Field32, Field64, FieldNatural};

    /// Virtual-processor identifier.
    pub const VPID: Field16 = Field16::new(0x0000);
    /// Guest ES selector.
    pub const GUEST_ES_SELECTOR: Field16 = Field16::new(0x0800);
    /// Guest CS selector.
    pub const GUEST_CS_SELECTOR: Field16 = Field16::new(0x0802);
    /// Guest SS selector.
    pub const GUEST_SS_SELECTOR: Field16 = Field16::new(0x0804);
    /// Guest DS selector.
    pub const GUEST_DS_SELECTOR: Field16 = Field16::new(0x0806);
    /// Guest FS selector.
    pub const GUEST_FS_SELECTOR: Field16 = Field16::new(0x0808);
    /// Guest GS selector.
    pub const GUEST_GS_SELECTOR: Field16 = Field16::new(0x080a);
    /// Guest LDTR selector.
    pub const GUEST_LDTR_SELECTOR: Field16 = Field16::new(0x080c);
    /// Guest TR selector.
    pub const GUEST_TR_SELECTOR: Field16 = Field16::new(0x080e);
    /// Host ES selector.
    pub const HOST_ES_SELECTOR: Field16 = Field16::new(0x0c00);
    /// Host CS selector.
    pub const HOST_CS_SELECTOR: Field16 = Field16::new(0x0c02);
    /// Host SS selector.
    pub const HOST_SS_SELECTOR: Field16 = Field16::new(0x0c04);
    /// Host DS selector.
    pub const HOST_DS_SELECTOR: Field16 = Field16::new(0x0c06);
    /// Host FS selector.
    pub const HOST_FS_SELECTOR: Field16 = Field16::new(0x0c08);
    /// Host GS selector.
    pub const HOST_GS_SELECTOR: Field16 = Field16::new(0x0c0a);
    /// Host TR selector.
    pub const HOST_TR_SELECTOR: Field16 = Field16::new(0x0c0c);

    /// I/O bitmap A (ports 0x0000-0x7fff).
    pub const IO_BITMAP_A: Field64 = Field64::new(0x2000);
    /// I/O bitmap B (ports 0x8000-0xffff).
    pub const IO_BITMAP_B: Field64 = Field64::new(0x2002);
    /// MSR bitmaps.
    pub const MSR_BITMAP: Field64 = Field64::new(0x2004);
    /// VM-exit MSR-store address.
    pub const EXIT_MSR_STORE_ADDR: Field64 = Field64::new(0x2006);
    /// VM-exit MSR-load address.
    pub const EXIT_MSR_LOAD_ADDR: Field64 = Field64::new(0x2008);
    /// VM-entry MSR-load address.
    pub const ENTRY_MSR_LOAD_ADDR: Field64 = Field64::new(0x200a);
    /// EPT pointer.
    pub const EPT_POINTER: Field64 = Field64::new(0x201a);
    /// Guest-physical address of an EPT violation or misconfiguration.
    pub const GUEST_PHYSICAL_ADDRESS: Field64 = Field64::new(0x2400);
    /// VMCS link pointer (all ones: none).
    pub const VMCS_LINK_POINTER: Field64 = Field64::new(0x2800);
    /// Guest IA32_DEBUGCTL.
    pub const GUEST_IA32_DEBUGCTL: Field64 = Field64::new(0x2802);
    /// Guest IA32_PAT.
    pub const GUEST_IA32_PAT: Field64 = Field64::new(0x2804);
    /// Guest IA32_EFER.
    pub const GUEST_IA32_EFER: Field64 = Field64::new(0x2806);
    /// Host IA32_PAT.
    pub const HOST_IA32_PAT: Field64 = Field64::new(0x2c00);
    /// Host IA32_EFER.
    pub const HOST_IA32_EFER: Field64 = Field64::new(0x2c02);

    /// Pin-based VM-execution controls.
    pub const PIN_BASED_CONTROLS: Field32 = Field32::new(0x4000);
    /// Primary processor-based VM-execution controls.
    pub const PRIMARY_PROC_CONTROLS: Field32 = Field32::new(0x4002);
    /// Exception bitmap.
    pub const EXCEPTION_BITMAP: Field32 = Field32::new(0x4004);
    /// CR3-target count.
    pub const CR3_TARGET_COUNT: Field32 = Field32::new(0x400a);
    /// VM-exit controls.
    pub const EXIT_CONTROLS: Field32 = Field32::new(0x400c);
    /// VM-exit MSR-store count.
    pub const EXIT_MSR_STORE_COUNT: Field32 = Field32::new(0x400e);
    /// VM-exit MSR-load count.
    pub const EXIT_MSR_LOAD_COUNT: Field32 = Field32::new(0x4010);
    /// VM-entry controls.
    pub const ENTRY_CONTROLS: Field32 = Field32::new(0x4012);
    /// VM-entry MSR-load count.
    pub const ENTRY_MSR_LOAD_COUNT: Field32 = Field32::new(0x4014);
    /// VM-entry interruption-information field.
    pub const ENTRY_INTERRUPTION_INFO: Field32 = Field32::new(0x4016);
    /// VM-entry exception error code.
    pub const ENTRY_EXCEPTION_ERROR_CODE: Field32 = Field32::new(0x4018);
    /// VM-entry instruction length (software exceptions and interrupts).
    pub const ENTRY_INSTRUCTION_LEN: Field32 = Field32::new(0x401a);
    /// Secondary processor-based VM-execution controls.
    pub const SECONDARY_PROC_CONTROLS: Field32 = Field32::new(0x401e);
    /// VM-instruction error (read-only).
    pub const VM_INSTRUCTION_ERROR: Field32 = Field32::new(0x4400);
    /// Exit reason (read-only).
    pub const EXIT_REASON: Field32 = Field32::new(0x4402);
    /// VM-exit interruption information (read-only).
    pub const EXIT_INTERRUPTION_INFO: Field32 = Field32::new(0x4404);
    /// VM-exit interruption error code (read-only).
    pub const EXIT_INTERRUPTION_ERROR_CODE: Field32 = Field32::new(0x4406);
    /// IDT-vectoring information: an event the exit interrupted (read-only).
    pub const IDT_VECTORING_INFO: Field32 = Field32::new(0x4408);
    /// IDT-vectoring error code (read-only).
    pub const IDT_VECTORING_ERROR_CODE: Field32 = Field32::new(0x440a);
    /// VM-exit instruction length (read-only).
    pub const EXIT_INSTRUCTION_LEN: Field32 = Field32::new(0x440c);
    /// Guest ES limit.
    pub const GUEST_ES_LIMIT: Field32 = Field32::new(0x4800);
    /// Guest CS limit.
    pub const GUEST_CS_LIMIT: Field32 = Field32::new(0x4802);
    /// Guest SS limit.
    pub const GUEST_SS_LIMIT: Field32 = Field32::new(0x4804);
    /// Guest DS limit.
    pub const GUEST_DS_LIMIT: Field32 = Field32::new(0x4806);
    /// Guest FS limit.
    pub const GUEST_FS_LIMIT: Field32 = Field32::new(0x4808);
    /// Guest GS limit.
    pub const GUEST_GS_LIMIT: Field32 = Field32::new(0x480a);
    /// Guest LDTR limit.
    pub const GUEST_LDTR_LIMIT: Field32 = Field32::new(0x480c);
    /// Guest TR limit.
    pub const GUEST_TR_LIMIT: Field32 = Field32::new(0x480e);
    /// Guest GDTR limit.
    pub const GUEST_GDTR_LIMIT: Field32 = Field32::new(0x4810);
    /// Guest IDTR limit.
    pub const GUEST_IDTR_LIMIT: Field32 = Field32::new(0x4812);
    /// Guest ES access rights.
    pub const GUEST_ES_AR: Field32 = Field32::new(0x4814);
    /// Guest CS access rights.
    pub const GUEST_CS_AR: Field32 = Field32::new(0x4816);
    /// Guest SS access rights.
    pub const GUEST_SS_AR: Field32 = Field32::new(0x4818);
    /// Guest DS access rights.
    pub const GUEST_DS_AR: Field32 = Field32::new(0x481a);
    /// Guest FS access rights.
    pub const GUEST_FS_AR: Field32 = Field32::new(0x481c);
    /// Guest GS access rights.
    pub const GUEST_GS_AR: Field32 = Field32::new(0x481e);
    /// Guest LDTR access rights.
    pub const GUEST_LDTR_AR: Field32 = Field32::new(0x4820);
    /// Guest TR access rights.
    pub const GUEST_TR_AR: Field32 = Field32::new(0x4822);
    /// Guest interruptibility state.
    pub const GUEST_INTERRUPTIBILITY: Field32 = Field32::new(0x4824);
    /// Guest activity state.
    pub const GUEST_ACTIVITY_STATE: Field32 = Field32::new(0x4826);
    /// Guest IA32_SYSENTER_CS.
    pub const GUEST_SYSENTER_CS: Field32 = Field32::new(0x482a);
    /// Host IA32_SYSENTER_CS.
    pub const HOST_SYSENTER_CS: Field32 = Field32::new(0x4c00);

    /// CR0 guest/host mask.
    pub const CR0_GUEST_HOST_MASK: FieldNatural = FieldNatural::new(0x6000);
    /// CR4 guest/host mask.
    pub const CR4_GUEST_HOST_MASK: FieldNatural = FieldNatural::new(0x6002);
    /// CR0 read shadow.
    pub const CR0_READ_SHADOW: FieldNatural = FieldNatural::new(0x6004);
    /// CR4 read shadow.
    pub const CR4_READ_SHADOW: FieldNatural = FieldNatural::new(0x6006);
    /// Exit qualification (read-only).
    pub const EXIT_QUALIFICATION: FieldNatural = FieldNatural::new(0x6400);
    /// Guest-linear address (read-only).
    pub const GUEST_LINEAR_ADDRESS: FieldNatural = FieldNatural::new(0x640a);
    /// Guest CR0.
    pub const GUEST_CR0: FieldNatural = FieldNatural::new(0x6800);
    /// Guest CR3.
    pub const GUEST_CR3: FieldNatural = FieldNatural::new(0x6802);
    /// Guest CR4.
    pub const GUEST_CR4: FieldNatural = FieldNatural::new(0x6804);
    /// Guest ES base.
    pub const GUEST_ES_BASE: FieldNatural = FieldNatural::new(0x6806);
    /// Guest CS base.
    pub const GUEST_CS_BASE: FieldNatural = FieldNatural::new(0x6808);
    /// Guest SS base.
    pub const GUEST_SS_BASE: FieldNatural = FieldNatural::new(0x680a);
    /// Guest DS base.
    pub const GUEST_DS_BASE: FieldNatural = FieldNatural::new(0x680c);
    /// Guest FS base.
    pub const GUEST_FS_BASE: FieldNatural = FieldNatural::new(0x680e);
    /// Guest GS base.
    pub const GUEST_GS_BASE: FieldNatural = FieldNatural::new(0x6810);
    /// Guest LDTR base.
    pub const GUEST_LDTR_BASE: FieldNatural = FieldNatural::new(0x6812);
    /// Guest TR base.
    pub const GUEST_TR_BASE: FieldNatural = FieldNatural::new(0x6814);
    /// Guest GDTR base.
    pub const GUEST_GDTR_BASE: FieldNatural = FieldNatural::new(0x6816);
    /// Guest IDTR base.
    pub const GUEST_IDTR_BASE: FieldNatural = FieldNatural::new(0x6818);
    /// Guest DR7.
    pub const GUEST_DR7: FieldNatural = FieldNatural::new(0x681a);
    /// Guest RSP.
    pub const GUEST_RSP: FieldNatural = FieldNatural::new(0x681c);
    /// Guest RIP.
    pub const GUEST_RIP: FieldNatural = FieldNatural::new(0x681e);
    /// Guest RFLAGS.
    pub const GUEST_RFLAGS: FieldNatural = FieldNatural::new(0x6820);
    /// Guest pending debug exceptions.
    pub const GUEST_PENDING_DEBUG: FieldNatural = FieldNatural::new(0x6822);
    /// Guest IA32_SYSENTER_ESP.
    pub const GUEST_SYSENTER_ESP: FieldNatural = FieldNatural::new(0x6824);
    /// Guest IA32_SYSENTER_EIP.
    pub const GUEST_SYSENTER_EIP: FieldNatural = FieldNatural::new(0x6826);
    /// Host CR0.
    pub const HOST_CR0: FieldNatural = FieldNatural::new(0x6c00);
    /// Host CR3.
    pub const HOST_CR3: FieldNatural = FieldNatural::new(0x6c02);
    /// Host CR4.
    pub const HOST_CR4: FieldNatural = FieldNatural::new(0x6c04);
    /// Host FS base.
    pub const HOST_FS_BASE: FieldNatural = FieldNatural::new(0x6c06);
    /// Host GS base.
    pub const HOST_GS_BASE: FieldNatural = FieldNatural::new(0x6c08);
    /// Host TR base.
    pub const HOST_TR_BASE: FieldNatural = FieldNatural::new(0x6c0a);
    /// Host GDTR base.
    pub const HOST_GDTR_BASE: FieldNatural = FieldNatural::new(0x6c0c);
    /// Host IDTR base.
    pub const HOST_IDTR_BASE: FieldNatural = FieldNatural::new(0x6c0e);
    /// Host IA32_SYSENTER_ESP.
    pub const HOST_SYSENTER_ESP: FieldNatural = FieldNatural::new(0x6c10);
    /// Host IA32_SYSENTER_EIP.
    pub const HOST_SYSENTER_EIP: FieldNatural = FieldNatural::new(0x6c12);
    /// Host RSP.
    pub const HOST_RSP: FieldNatural = FieldNatural::new(0x6c14);
    /// Host RIP.
    pub const HOST_RIP: FieldNatural = FieldNatural::new(0x6c16);
}

/// A VM-instruction error number (SDM "VM Instruction Error Numbers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstructionError(pub u32);

impl InstructionError {
    /// The SDM's description of the error number.
    pub const fn description(self) -> &'static str {
        match self.0 {
            1 => "VMCALL executed in VMX root operation",
            2 => "VMCLEAR with invalid physical address",
            3 => "VMCLEAR with VMXON pointer",
            4 => "VMLAUNCH with non-clear VMCS",
            5 => "VMRESUME with non-launched VMCS",
            6 => "VMRESUME after VMXOFF",
            7 => "VM entry with invalid control field(s)",
            8 => "VM entry with invalid host-state field(s)",
            9 => "VMPTRLD with invalid physical address",
            10 => "VMPTRLD with VMXON pointer",
            11 => "VMPTRLD with incorrect VMCS revision identifier",
            12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
            13 => "VMWRITE to read-only VMCS component",
            15 => "VMXON executed in VMX root operation",
            16 => "VM entry with invalid executive-VMCS pointer",
            17 => "VM entry with non-launched executive VMCS",
            18 => "VM entry with executive-VMCS pointer not VMXON pointer",
            19 => "VMCALL with non-clear VMCS",
            20 => "VMCALL with invalid VM-exit control fields",
            22 => "VMCALL with incorrect MSEG revision identifier",
            23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
            24 => "VMCALL with invalid SMM-monitor features",
            25 => "VM entry with invalid VM-execution control fields in executive VMCS",
            26 => "VM entry with events blocked by MOV SS",
            28 => "invalid operand to INVEPT/INVVPID",
            _ => "unknown VM-instruction error",
        }
    }
}

/// How a VMX instruction failed (SDM "Conventions": CF set is VMfailInvalid,
/// ZF set is VMfailValid with the error number in the current VMCS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// No current VMCS to hold an error number.
    Invalid,
    /// The error number from the current VMCS.
    Valid(InstructionError),
}

/// What RFLAGS says after a VMX instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// VMsucceed: CF and ZF clear.
    Succeed,
    /// VMfailInvalid: CF set.
    FailInvalid,
    /// VMfailValid: ZF set; read the VM-instruction error field.
    FailValid,
}

impl VmOutcome {
    /// Decodes RFLAGS right after a VMX instruction.
    pub const fn from_rflags(rflags: u64) -> Self {
        const CF: u64 = 1 << 0;
        const ZF: u64 = 1 << 6;
        if rflags & CF != 0 {
            Self::FailInvalid
        } else if rflags & ZF != 0 {
            Self::FailValid
        } else {
            Self::Succeed
        }
    }
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => write!(f, "VMfailInvalid (no current VMCS)"),
            Self::Valid(e) => write!(
                f,
                "VMfailValid: VM-instruction error {} ({})",
                e.0,
                e.description()
            ),
        }
    }
}

/// Capability MSR indices (SDM appendix "VMX Capability Reporting Facility").
pub mod msr {
    /// IA32_FEATURE_CONTROL.
    pub const FEATURE_CONTROL: u32 = 0x3a;
    /// IA32_VMX_BASIC.
    pub const BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS.
    pub const PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS.
    pub const PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_EXIT_CTLS.
    pub const EXIT_CTLS: u32 = 0x483;
    /// IA32_VMX_ENTRY_CTLS.
    pub const ENTRY_CTLS: u32 = 0x484;
    /// IA32_VMX_CR0_FIXED0.
    pub const CR0_FIXED0: u32 = 0x486;
    /// IA32_VMX_CR0_FIXED1.
    pub const CR0_FIXED1: u32 = 0x487;
    /// IA32_VMX_CR4_FIXED0.
    pub const CR4_FIXED0: u32 = 0x488;
    /// IA32_VMX_CR4_FIXED1.
    pub const CR4_FIXED1: u32 = 0x489;
    /// IA32_VMX_PROCBASED_CTLS2.
    pub const PROCBASED_CTLS2: u32 = 0x48b;
    /// IA32_VMX_EPT_VPID_CAP.
    pub const EPT_VPID_CAP: u32 = 0x48c;
    /// IA32_VMX_TRUE_PINBASED_CTLS.
    pub const TRUE_PINBASED_CTLS: u32 = 0x48d;
    /// IA32_VMX_TRUE_PROCBASED_CTLS.
    pub const TRUE_PROCBASED_CTLS: u32 = 0x48e;
    /// IA32_VMX_TRUE_EXIT_CTLS.
    pub const TRUE_EXIT_CTLS: u32 = 0x48f;
    /// IA32_VMX_TRUE_ENTRY_CTLS.
    pub const TRUE_ENTRY_CTLS: u32 = 0x490;
}

/// IA32_FEATURE_CONTROL bits.
pub mod feature_control {
    /// Lock: writes fault until reset.
    pub const LOCK: u64 = 1 << 0;
    /// VMXON allowed outside SMX operation.
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// What to do about IA32_FEATURE_CONTROL before VMXON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureControlPlan {
    /// Locked with VMX outside SMX enabled: nothing to do.
    Ready,
    /// Unlocked: write this value (enable and lock).
    Write(u64),
    /// Locked with VMX off: firmware forbids VMX until reset.
    Disabled,
}

impl FeatureControlPlan {
    /// Decides from the MSR's current value.
    pub const fn from_msr(value: u64) -> Self {
        use feature_control::{LOCK, VMX_OUTSIDE_SMX};
        if value & LOCK == 0 {
            Self::Write(value | LOCK | VMX_OUTSIDE_SMX)
        } else if value & VMX_OUTSIDE_SMX != 0 {
            Self::Ready
        } else {
            Self::Disabled
        }
    }
}

/// Applies IA32_VMX_CRx_FIXED0/FIXED1: bits set in FIXED0 must be 1, bits
/// clear in FIXED1 must be 0.
pub const fn apply_fixed(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// CR0.PE and CR0.PG, which an unrestricted guest may clear despite FIXED0.
pub const CR0_PE_PG: u64 = (1 << 0) | (1 << 31);
/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;

/// The four control capability MSRs to read: the TRUE ones when
/// IA32_VMX_BASIC bit 55 offers them (they allow clearing default-1 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlMsrs {
    /// Pin-based controls MSR.
    pub pin: u32,
    /// Primary processor-based controls MSR.
    pub proc: u32,
    /// VM-exit controls MSR.
    pub exit: u32,
    /// VM-entry controls MSR.
    pub entry: u32,
}

impl ControlMsrs {
    /// Picks the MSRs from IA32_VMX_BASIC.
    pub const fn from_basic(basic: u64) -> Self {
        if basic & (1 << 55) != 0 {
            Self {
                pin: msr::TRUE_PINBASED_CTLS,
                proc: msr::TRUE_PROCBASED_CTLS,
                exit: msr::TRUE_EXIT_CTLS,
                entry: msr::TRUE_ENTRY_CTLS,
            }
        } else {
            Self {
                pin: msr::PINBASED_CTLS,
                proc: msr::PROCBASED_CTLS,
                exit: msr::EXIT_CTLS,
                entry: msr::ENTRY_CTLS,
            }
        }
    }
}

/// The VMCS revision identifier from IA32_VMX_BASIC (bits 30:0).
pub const fn vmcs_revision(basic: u64) -> u32 {
    (basic & 0x7fff_ffff) as u32
}

/// A control the CPU cannot provide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingControls {
    /// Required bits whose allowed 1-setting is 0.
    pub missing: u32,
}

/// Computes a control field: `required` bits must be settable, `wanted`
/// bits are set where allowed, and the bits whose allowed 0-setting is 1
/// (low half of the capability MSR) are always set.
pub const fn adjust_controls(
    capability: u64,
    required: u32,
    wanted: u32,
) -> Result<u32, MissingControls> {
    let must_be_one = capability as u32;
    let may_be_one = (capability >> 32) as u32;
    let missing = required & !may_be_one;
    if missing != 0 {
        return Err(MissingControls { missing });
    }
    Ok(((required | wanted) & may_be_one) | must_be_one)
}

/// Control bits Thermocline uses (SDM "VM-Execution Control Fields",
/// "VM-Exit Control Fields", "VM-Entry Control Fields").
pub mod ctl {
    /// Pin-based: external-interrupt exiting.
    pub const PIN_EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    /// Pin-based: activate the VMX-preemption timer.
    pub const PIN_PREEMPTION_TIMER: u32 = 1 << 6;
    /// Primary: interrupt-window exiting.
    pub const PROC_INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    /// Primary: CR3-load exiting.
    pub const PROC_CR3_LOAD_EXITING: u32 = 1 << 15;
    /// Primary: CR3-store exiting.
    pub const PROC_CR3_STORE_EXITING: u32 = 1 << 16;
    /// Primary: CR8-load exiting.
    pub const PROC_CR8_LOAD_EXITING: u32 = 1 << 19;
    /// Primary: CR8-store exiting.
    pub const PROC_CR8_STORE_EXITING: u32 = 1 << 20;
    /// Primary: HLT exiting.
    pub const PROC_HLT_EXITING: u32 = 1 << 7;
    /// Primary: unconditional I/O exiting.
    pub const PROC_UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    /// Primary: use I/O bitmaps.
    pub const PROC_USE_IO_BITMAPS: u32 = 1 << 25;
    /// Primary: use MSR bitmaps.
    pub const PROC_USE_MSR_BITMAPS: u32 = 1 << 28;
    /// Primary: activate secondary controls.
    pub const PROC_SECONDARY_CONTROLS: u32 = 1 << 31;
    /// Secondary: enable EPT.
    pub const PROC2_ENABLE_EPT: u32 = 1 << 1;
    /// Secondary: enable RDTSCP (else RDTSCP raises #UD).
    pub const PROC2_ENABLE_RDTSCP: u32 = 1 << 3;
    /// Secondary: enable VPID.
    pub const PROC2_ENABLE_VPID: u32 = 1 << 5;
    /// Secondary: unrestricted guest.
    pub const PROC2_UNRESTRICTED_GUEST: u32 = 1 << 7;
    /// Exit: host address-space size (64-bit host).
    pub const EXIT_HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    /// Exit: save IA32_PAT.
    pub const EXIT_SAVE_PAT: u32 = 1 << 18;
    /// Exit: load IA32_PAT.
    pub const EXIT_LOAD_PAT: u32 = 1 << 19;
    /// Exit: save IA32_EFER.
    pub const EXIT_SAVE_EFER: u32 = 1 << 20;
    /// Exit: load IA32_EFER.
    pub const EXIT_LOAD_EFER: u32 = 1 << 21;
    /// Entry: IA-32e mode guest.
    pub const ENTRY_IA32E_MODE_GUEST: u32 = 1 << 9;
    /// Entry: load IA32_PAT.
    pub const ENTRY_LOAD_PAT: u32 = 1 << 14;
    /// Entry: load IA32_EFER.
    pub const ENTRY_LOAD_EFER: u32 = 1 << 15;
}

/// IA32_VMX_EPT_VPID_CAP bits the backend depends on.
pub mod ept_cap {
    /// Page-walk length of 4.
    pub const WALK_LENGTH_4: u64 = 1 << 6;
    /// Write-back EPT paging structures.
    pub const MEMORY_TYPE_WB: u64 = 1 << 14;
    /// Accessed and dirty flags for EPT.
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    /// INVEPT supported.
    pub const INVEPT: u64 = 1 << 20;
    /// Single-context INVEPT supported.
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
}

/// The exit-reason field: basic reason and the VM-entry-failure flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason(pub u32);

/// Basic exit reasons (SDM appendix "VMX Basic Exit Reasons").
pub mod reason {
    /// Exception or NMI.
    pub const EXCEPTION_OR_NMI: u16 = 0;
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    /// Triple fault.
    pub const TRIPLE_FAULT: u16 = 2;
    /// Interrupt window: the guest can take an external interrupt.
    pub const INTERRUPT_WINDOW: u16 = 7;
    /// CPUID.
    pub const CPUID: u16 = 10;
    /// HLT.
    pub const HLT: u16 = 12;
    /// VMCALL.
    pub const VMCALL: u16 = 18;
    /// VMCLEAR.
    pub const VMCLEAR: u16 = 19;
    /// VMLAUNCH.
    pub const VMLAUNCH: u16 = 20;
    /// VMPTRLD.
    pub const VMPTRLD: u16 = 21;
    /// VMPTRST.
    pub const VMPTRST: u16 = 22;
    /// VMREAD.
    pub const VMREAD: u16 = 23;
    /// VMRESUME.
    pub const VMRESUME: u16 = 24;
    /// VMWRITE.
    pub const VMWRITE: u16 = 25;
    /// VMXOFF.
    pub const VMXOFF: u16 = 26;
    /// VMXON.
    pub const VMXON: u16 = 27;
    /// Control-register access.
    pub const CR_ACCESS: u16 = 28;
    /// I/O instruction.
    pub const IO_INSTRUCTION: u16 = 30;
    /// RDMSR.
    pub const RDMSR: u16 = 31;
    /// WRMSR.
    pub const WRMSR: u16 = 32;
    /// VM-entry failure due to invalid guest state.
    pub const INVALID_GUEST_STATE: u16 = 33;
    /// VM-entry failure due to MSR loading.
    pub const MSR_LOADING: u16 = 34;
    /// EPT violation.
    pub const EPT_VIOLATION: u16 = 48;
    /// EPT misconfiguration.
    pub const EPT_MISCONFIG: u16 = 49;
    /// INVEPT.
    pub const INVEPT: u16 = 50;
    /// VMX-preemption timer expired.
    pub const PREEMPTION_TIMER: u16 = 52;
    /// INVVPID.
    pub const INVVPID: u16 = 53;
    /// XSETBV.
    pub const XSETBV: u16 = 55;
    /// VMFUNC.
    pub const VMFUNC: u16 = 59;
}

impl ExitReason {
    /// Bits 15:0.
    pub const fn basic(self) -> u16 {
        self.0 as u16
    }

    /// Whether the exit was caused by an instruction whose length the CPU
    /// reports (SDM "VM-Exit Instruction Length"): the handler may step
    /// over it with RIP + length.
    pub const fn reports_instruction_len(self) -> bool {
        !self.entry_failed()
            && matches!(
                self.basic(),
                reason::CPUID | reason::HLT | reason::VMCALL | reason::VMCLEAR
                    ..=reason::VMXON
                        | reason::CR_ACCESS
                        | reason::IO_INSTRUCTION
                        | reason::RDMSR
                        | reason::WRMSR
                        | reason::INVEPT
                        | reason::INVVPID
                        | reason::XSETBV
                        | reason::VMFUNC
            )
    }

    /// Bit 31: the VM entry failed (the guest never ran).
    pub const fn entry_failed(self) -> bool {
        self.0 & (1 << 31) != 0
    }

    /// A short name of the basic reason, for reports.
    pub const fn name(self) -> &'static str {
        match self.basic() {
            reason::EXCEPTION_OR_NMI => "exception or NMI",
            reason::EXTERNAL_INTERRUPT => "external interrupt",
            reason::TRIPLE_FAULT => "triple fault",
            reason::INTERRUPT_WINDOW => "interrupt window",
            reason::CPUID => "CPUID",
            reason::HLT => "HLT",
            reason::VMCALL => "VMCALL",
            reason::CR_ACCESS => "control-register access",
            reason::IO_INSTRUCTION => "I/O instruction",
            reason::RDMSR => "RDMSR",
            reason::WRMSR => "WRMSR",
            reason::INVALID_GUEST_STATE => "VM-entry failure: invalid guest state",
            reason::MSR_LOADING => "VM-entry failure: MSR loading",
            reason::EPT_VIOLATION => "EPT violation",
            reason::EPT_MISCONFIG => "EPT misconfiguration",
            reason::PREEMPTION_TIMER => "VMX-preemption timer expired",
            reason::VMCLEAR..=reason::VMXON | reason::INVEPT | reason::INVVPID | reason::VMFUNC => {
                "VMX instruction"
            }
            _ => "other",
        }
    }
}

/// The VMCS fields and guest registers a VM exit is decoded from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawExit {
    /// Exit reason field.
    pub reason: u32,
    /// Exit qualification.
    pub qualification: u64,
    /// Guest-physical address (EPT violations and misconfigurations).
    pub guest_physical: u64,
    /// VM-exit interruption information.
    pub interruption_info: u32,
    /// VM-exit interruption error code.
    pub interruption_error: u32,
    /// Guest RIP at the exit.
    pub guest_rip: u64,
    /// VM-exit instruction length.
    pub instruction_len: u32,
    /// Guest RAX.
    pub rax: u64,
    /// Guest RCX.
    pub rcx: u64,
    /// Guest RDX.
    pub rdx: u64,
}

/// The VM-entry interruption information that delivers hardware exception
/// `vector` (type 3), with its error code when the vector pushes one (SDM
/// "VM-Entry Controls for Event Injection").
pub const fn inject_exception_info(vector: u8, has_error_code: bool) -> u32 {
    const VALID: u32 = 1 << 31;
    const HARDWARE_EXCEPTION: u32 = 3 << 8;
    const DELIVER_ERROR_CODE: u32 = 1 << 11;
    VALID
        | HARDWARE_EXCEPTION
        | (vector as u32)
        | if has_error_code && pushes_error_code(vector) {
            DELIVER_ERROR_CODE
        } else {
            0
        }
}

/// Decodes a VM exit into the vendor-neutral [`VmExit`]. Entry failures
/// (bit 31) and reasons without a neutral meaning come back as
/// [`VmExit::Unknown`] with the raw reason, the qualification and the
/// guest-physical address.
pub fn decode_exit(raw: &RawExit) -> VmExit {
    let why = ExitReason(raw.reason);
    let unknown = VmExit::Unknown {
        code: u64::from(raw.reason),
        info1: raw.qualification,
        info2: raw.guest_physical,
    };
    if why.entry_failed() {
        return unknown;
    }
    let q = raw.qualification;
    match why.basic() {
        reason::EXCEPTION_OR_NMI => {
            const VALID: u32 = 1 << 31;
            const ERROR_CODE_VALID: u32 = 1 << 11;
            let info = raw.interruption_info;
            // Type 2 is NMI, which has no neutral meaning yet.
            if info & VALID == 0 || (info >> 8) & 7 == 2 {
                return unknown;
            }
            let vector = info as u8;
            let error_code = (info & ERROR_CODE_VALID != 0 && pushes_error_code(vector))
                .then_some(raw.interruption_error);
            VmExit::Exception { vector, error_code }
        }
        reason::EXTERNAL_INTERRUPT => VmExit::ExternalInterrupt,
        reason::TRIPLE_FAULT => VmExit::Shutdown,
        reason::INTERRUPT_WINDOW => VmExit::InterruptWindow,
        reason::CPUID => VmExit::Cpuid,
        reason::HLT => VmExit::Hlt,
        reason::VMCALL => VmExit::Hypercall,
        reason::IO_INSTRUCTION => VmExit::Io(IoAccess {
            port: (q >> 16) as u16,
            size_bytes: (q & 7) as u8 + 1,
            dir: if q & (1 << 3) != 0 {
                IoDir::In
            } else {
                IoDir::Out
            },
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            next_rip: Some(raw.guest_rip.wrapping_add(u64::from(raw.instruction_len))),
        }),
        reason::RDMSR => VmExit::MsrRead {
            msr: raw.rcx as u32,
        },
        reason::WRMSR => VmExit::MsrWrite {
            msr: raw.rcx as u32,
            value: (raw.rdx << 32) | (raw.rax & 0xffff_ffff),
        },
        // Qualification bits 3:0 the register, 5:4 the access type (0: MOV
        // to CR; MOV from CR, CLTS and LMSW have no neutral meaning yet).
        reason::CR_ACCESS if (q >> 4) & 3 == 0 => VmExit::CrWrite {
            cr: (q & 0xf) as u8,
        },
        reason::XSETBV => VmExit::Xsetbv {
            xcr: raw.rcx as u32,
            value: (raw.rdx << 32) | (raw.rax & 0xffff_ffff),
        },
        reason::EPT_VIOLATION => {
            VmExit::NestedPageFault(decode_ept_violation(q, raw.guest_physical))
        }
        reason::VMCLEAR => VmExit::VirtInstruction(VirtInsn::Vmclear),
        reason::VMLAUNCH => VmExit::VirtInstruction(VirtInsn::Vmlaunch),
        reason::VMPTRLD => VmExit::VirtInstruction(VirtInsn::Vmptrld),
        reason::VMPTRST => VmExit::VirtInstruction(VirtInsn::Vmptrst),
        reason::VMREAD => VmExit::VirtInstruction(VirtInsn::Vmread),
        reason::VMRESUME => VmExit::VirtInstruction(VirtInsn::Vmresume),
        reason::VMWRITE => VmExit::VirtInstruction(VirtInsn::Vmwrite),
        reason::VMXOFF => VmExit::VirtInstruction(VirtInsn::Vmxoff),
        reason::VMXON => VmExit::VirtInstruction(VirtInsn::Vmxon),
        reason::INVEPT => VmExit::VirtInstruction(VirtInsn::Invept),
        reason::INVVPID => VmExit::VirtInstruction(VirtInsn::Invvpid),
        reason::VMFUNC => VmExit::VirtInstruction(VirtInsn::Vmfunc),
        _ => unknown,
    }
}

/// Decodes an EPT-violation exit qualification (SDM "Exit Qualification
/// for EPT Violations"):
///
/// ```text
///  bit 0  read     bit 3  entry allowed read      bit 7  linear address valid
///  bit 1  write    bit 4  entry allowed write     bit 8  access to the final
///  bit 2  fetch    bit 5  entry allowed fetch            translation (not a
///                                                        guest page-walk)
/// ```
pub fn decode_ept_violation(qualification: u64, gpa: u64) -> NestedFault {
    let q = qualification;
    let access = if q & (1 << 1) != 0 {
        AccessKind::Write
    } else if q & (1 << 2) != 0 {
        AccessKind::Execute
    } else {
        AccessKind::Read
    };
    NestedFault {
        gpa: GuestPhysAddr::new(gpa),
        access,
        present: q & (0b111 << 3) != 0,
        in_guest_walk: q & (1 << 7) != 0 && q & (1 << 8) == 0,
    }
}

/// An event for the VM-entry interruption-information field, with the error
/// code and instruction length that go with it (SDM "VM-Entry Controls for
/// Event Injection"):
///
/// ```text
///  bits 7:0  vector     bits 10:8  type: 0 external interrupt, 2 NMI,
///  bit 11    deliver error code        3 hardware exception, 4 software
///  bit 31    valid                     interrupt, 5 privileged software
///                                      exception, 6 software exception
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryEvent {
    /// The interruption-information value (valid bit set).
    pub info: u32,
    /// The error code, used when `info` says to deliver one.
    pub error_code: u32,
    /// The instruction length, used for the software types (4, 5, 6).
    pub instruction_len: u32,
}

/// Interruption-information bits and types.
pub mod event {
    /// Bit 31: valid.
    pub const VALID: u32 = 1 << 31;
    /// Bit 11: deliver an error code.
    pub const DELIVER_ERROR_CODE: u32 = 1 << 11;
    /// Bits 10:8: the type.
    pub const TYPE_MASK: u32 = 7 << 8;
    /// Type 0: external interrupt.
    pub const TYPE_EXTERNAL_INTERRUPT: u32 = 0;
    /// Type 3: hardware exception.
    pub const TYPE_HARDWARE_EXCEPTION: u32 = 3 << 8;
    /// Type 4: software interrupt (INT n).
    pub const TYPE_SOFTWARE_INTERRUPT: u32 = 4 << 8;
    /// Type 5: privileged software exception (INT1).
    pub const TYPE_PRIVILEGED_SOFTWARE_EXCEPTION: u32 = 5 << 8;
    /// Type 6: software exception (INT3, INTO).
    pub const TYPE_SOFTWARE_EXCEPTION: u32 = 6 << 8;
}

impl EntryEvent {
    /// External interrupt `vector` (what the PIC acknowledged).
    pub const fn external_interrupt(vector: u8) -> Self {
        Self {
            info: event::VALID | event::TYPE_EXTERNAL_INTERRUPT | vector as u32,
            error_code: 0,
            instruction_len: 0,
        }
    }

    /// Hardware exception `vector`, with `error_code` where the vector
    /// pushes one.
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        Self {
            info: inject_exception_info(vector, error_code.is_some()),
            error_code: match error_code {
                Some(code) => code,
                None => 0,
            },
            instruction_len: 0,
        }
    }

    /// The event a VM exit interrupted, from the exit's IDT-vectoring
    /// information and error code and the exit's instruction length (SDM
    /// "Information for VM Exits That Occur During Event Delivery"): `None`
    /// when nothing was being delivered. The IDT-vectoring layout is the
    /// injection layout except bit 12 (undefined there, reserved here),
    /// so only the vector, type, error-code and valid bits are kept. A
    /// software interrupt or exception is delivered again with the length
    /// of the instruction that raised it; the others ignore the length.
    pub const fn from_idt_vectoring(
        info: u32,
        error_code: u32,
        instruction_len: u32,
    ) -> Option<Self> {
        if info & event::VALID == 0 {
            return None;
        }
        let kept = info & (event::VALID | event::DELIVER_ERROR_CODE | event::TYPE_MASK | 0xff);
        let software = matches!(
            kept & event::TYPE_MASK,
            event::TYPE_SOFTWARE_INTERRUPT
                | event::TYPE_PRIVILEGED_SOFTWARE_EXCEPTION
                | event::TYPE_SOFTWARE_EXCEPTION
        );
        Some(Self {
            info: kept,
            error_code: if kept & event::DELIVER_ERROR_CODE != 0 {
                error_code
            } else {
                0
            },
            instruction_len: if software { instruction_len } else { 0 },
        })
    }

    /// Whether this is an external interrupt.
    pub const fn is_external_interrupt(self) -> bool {
        self.info & event::TYPE_MASK == event::TYPE_EXTERNAL_INTERRUPT
    }
}

/// Guest interruptibility-state bits (SDM "Guest Non-Register State").
pub mod interruptibility {
    /// Blocking by STI.
    pub const BLOCKING_BY_STI: u32 = 1 << 0;
    /// Blocking by MOV SS or POP SS.
    pub const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
    /// The one-instruction shadow of either.
    pub const SHADOW: u32 = BLOCKING_BY_STI | BLOCKING_BY_MOV_SS;
}

/// The interruptibility state after the hypervisor stepped the guest over
/// the instruction that exited: an STI or MOV SS shadow covers only that
/// instruction, so it ends (an entry that injects an external interrupt
/// with a shadow still set fails its checks).
pub const fn after_instruction_skipped(state: u32) -> u32 {
    state & !interruptibility::SHADOW
}

/// VMCS access rights of a GDT code or data descriptor (SDM "Guest
/// Register State": bits 7:0 are descriptor bits 47:40 (type, S, DPL, P),
/// bits 15:12 are descriptor bits 55:52 (AVL, L, D/B, G)).
pub const fn segment_access_rights(descriptor: u64) -> u32 {
    (((descriptor >> 40) & 0xff) | (((descriptor >> 52) & 0xf) << 12)) as u32
}

/// The byte-granular limit of a GDT descriptor (its 20-bit limit, scaled
/// by 4 KiB with the fill when G is set), as the VMCS limit field holds it.
pub const fn segment_limit(descriptor: u64) -> u32 {
    let raw = ((descriptor & 0xffff) | ((descriptor >> 32) & 0xf_0000)) as u32;
    if descriptor & (1 << 55) != 0 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The base of a GDT code or data descriptor.
pub const fn segment_base(descriptor: u64) -> u32 {
    (((descriptor >> 16) & 0xff_ffff) | (((descriptor >> 56) & 0xff) << 24)) as u32
}

/// Where an MSR's read and write exits sit in the 4-KiB MSR bitmap, as
/// bit numbers (SDM "MSR-Bitmap Address": read bitmaps for MSRs
/// 0-0x1FFF and 0xC000_0000-0xC000_1FFF at bytes 0 and 1024, write
/// bitmaps at 2048 and 3072). `None` for MSRs outside both ranges, which
/// always exit.
pub const fn msr_bitmap_bits(msr: u32) -> Option<(usize, usize)> {
    let (offset, low) = match msr {
        0..=0x1fff => (0, msr),
        0xc000_0000..=0xc000_1fff => (1024 * 8, msr - 0xc000_0000),
        _ => return None,
    };
    let read = offset + low as usize;
    Some((read, read + 2048 * 8))
}

/// Clears the read and write exit bits of `msr` in `bitmap`: the guest
/// then reads and writes the hardware MSR, so only an MSR the VMCS or an
/// MSR area switches per vCPU may be passed. `false` for an MSR outside
/// the bitmap's ranges.
pub fn pass_through_msr(bitmap: &mut [u8; 4096], msr: u32) -> bool {
    let Some((read, write)) = msr_bitmap_bits(msr) else {
        return false;
    };
    for bit in [read, write] {
        bitmap[bit / 8] &= !(1 << (bit % 8));
    }
    true
}

/// One entry of a VM-entry MSR-load, VM-exit MSR-store or VM-exit MSR-load
/// area (SDM "VM-Exit Controls for MSRs": 16 bytes, the index in bits
/// 31:0, bits 63:32 reserved, the value in bits 127:64).
pub const fn msr_area_entry(index: u32, value: u64) -> [u64; 2] {
    [index as u64, value]
}

/// The control-register bits the host must own under VMX: those the fixed
/// MSRs pin to 1 (`fixed0`) or to 0 (clear in `fixed1`). With them in the
/// guest/host mask, a guest MOV to CR that would change one exits (and is
/// refused) instead of leaving a value the next entry rejects; the guest
/// reads the read shadow for them.
pub const fn host_owned_cr_bits(fixed0: u64, fixed1: u64) -> u64 {
    fixed0 | !fixed1
}

/// One segment as the VMCS holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base.
    pub base: u64,
    /// Byte-granular limit.
    pub limit: u32,
    /// Access rights (bit 16: unusable).
    pub access_rights: u32,
}

/// The guest state and controls the software checks read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStateView {
    /// The VM-entry controls.
    pub entry_controls: u32,
    /// Guest CR0.
    pub cr0: u64,
    /// Guest CR4.
    pub cr4: u64,
    /// Guest IA32_EFER (loaded: the load-EFER entry control is assumed).
    pub efer: u64,
    /// IA32_VMX_CR0_FIXED0 and FIXED1.
    pub cr0_fixed: (u64, u64),
    /// IA32_VMX_CR4_FIXED0 and FIXED1.
    pub cr4_fixed: (u64, u64),
    /// CS.
    pub cs: Segment,
    /// SS.
    pub ss: Segment,
    /// DS, ES, FS, GS.
    pub data: [Segment; 4],
    /// TR.
    pub tr: Segment,
    /// LDTR.
    pub ldtr: Segment,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// Interruptibility state.
    pub interruptibility: u32,
    /// Activity state.
    pub activity: u32,
    /// The VM-entry interruption information.
    pub entry_event: u32,
}

const AR_UNUSABLE: u32 = 1 << 16;

const fn canonical(va: u64) -> bool {
    ((va as i64) << 16 >> 16) as u64 == va
}

const fn limit_matches_granularity(s: Segment) -> bool {
    let g = s.access_rights & (1 << 15) != 0;
    (s.limit & 0xfff == 0xfff || !g) && (s.limit >> 20 == 0 || g)
}

/// The first of the SDM's guest-state checks ("Checks on the Guest State
/// Area": control registers, segment registers, RIP and RFLAGS,
/// non-register state) that `s` breaks, by name; `Ok` when none of those
/// checked here. A subset: the checks a 64-bit guest set up by this
/// hypervisor can break, so an entry that fails with "invalid guest state"
/// (exit reason 33) names its field.
pub fn check_guest_state(s: &GuestStateView) -> Result<(), &'static str> {
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    const RFLAGS_IF: u64 = 1 << 9;
    let ia32e = s.entry_controls & ctl::ENTRY_IA32E_MODE_GUEST != 0;
    let (f0, f1) = s.cr0_fixed;
    if s.cr0 & f0 != f0 || s.cr0 & !f1 != 0 {
        return Err("guest CR0 breaks the VMX fixed bits (IA32_VMX_CR0_FIXED0/1)");
    }
    let (f0, f1) = s.cr4_fixed;
    if s.cr4 & f0 != f0 || s.cr4 & !f1 != 0 {
        return Err("guest CR4 breaks the VMX fixed bits (IA32_VMX_CR4_FIXED0/1)");
    }
    if ia32e && (s.cr0 & CR0_PG == 0 || s.cr4 & CR4_PAE == 0) {
        return Err("IA-32e mode guest without CR0.PG and CR4.PAE");
    }
    if (s.efer & EFER_LMA != 0) != ia32e {
        return Err("guest EFER.LMA differs from the IA-32e mode guest entry control");
    }
    if s.cr0 & CR0_PG != 0 && (s.efer & EFER_LME != 0) != (s.efer & EFER_LMA != 0) {
        return Err("guest EFER.LME differs from EFER.LMA with paging on");
    }
    let cs = s.cs.access_rights;
    if !matches!(cs & 0xf, 9 | 11 | 13 | 15) || cs & (1 << 4) == 0 || cs & (1 << 7) == 0 {
        return Err("CS is not a present, accessed code segment");
    }
    if ia32e && cs & (1 << 13) != 0 && cs & (1 << 14) != 0 {
        return Err("CS has both L and D/B set in an IA-32e mode guest");
    }
    if !limit_matches_granularity(s.cs) {
        return Err("CS limit disagrees with its granularity bit");
    }
    let ss = s.ss.access_rights;
    if ss & AR_UNUSABLE == 0 {
        if !matches!(ss & 0xf, 3 | 7) || ss & (1 << 4) == 0 || ss & (1 << 7) == 0 {
            return Err("SS is usable but not a present, writable, accessed data segment");
        }
        if !limit_matches_granularity(s.ss) {
            return Err("SS limit disagrees with its granularity bit");
        }
    }
    if s.ss.selector & 3 != s.cs.selector & 3 {
        return Err("SS.RPL differs from CS.RPL");
    }
    if (ss >> 5) & 3 != u32::from(s.ss.selector & 3) {
        return Err("SS.DPL differs from SS.RPL");
    }
    for d in s.data {
        let ar = d.access_rights;
        if ar & AR_UNUSABLE != 0 {
            continue;
        }
        if ar & 1 == 0 || ar & (1 << 4) == 0 || ar & (1 << 7) == 0 || (ar & 8 != 0 && ar & 2 == 0) {
            return Err("a usable DS/ES/FS/GS is not a present, accessed, readable segment");
        }
        if !limit_matches_granularity(d) {
            return Err("a DS/ES/FS/GS limit disagrees with its granularity bit");
        }
    }
    let tr = s.tr.access_rights;
    let tr_type_ok = if ia32e {
        tr & 0xf == 11
    } else {
        matches!(tr & 0xf, 3 | 11)
    };
    if tr & AR_UNUSABLE != 0 || !tr_type_ok || tr & (1 << 4) != 0 || tr & (1 << 7) == 0 {
        return Err("TR is not a usable, present, busy TSS (64-bit in IA-32e mode)");
    }
    if s.tr.selector & 4 != 0 || !limit_matches_granularity(s.tr) {
        return Err("TR selector has TI set or its limit disagrees with G");
    }
    let ldtr = s.ldtr.access_rights;
    if ldtr & AR_UNUSABLE == 0 && (ldtr & 0xf != 2 || ldtr & (1 << 4) != 0 || ldtr & (1 << 7) == 0)
    {
        return Err("LDTR is usable but not a present LDT descriptor");
    }
    if ia32e && cs & (1 << 13) != 0 && !canonical(s.rip) {
        return Err("RIP is not canonical in 64-bit mode");
    }
    const RFLAGS_RESERVED_ZERO: u64 = !0x3f_ffff | (1 << 15) | (1 << 5) | (1 << 3);
    if s.rflags & 2 == 0 || s.rflags & RFLAGS_RESERVED_ZERO != 0 {
        return Err("RFLAGS has bit 1 clear or a reserved bit set");
    }
    if ia32e && s.rflags & (1 << 17) != 0 {
        return Err("RFLAGS.VM is set in an IA-32e mode guest");
    }
    let state = s.interruptibility;
    if state & !0x1f != 0 {
        return Err("interruptibility state has reserved bits set");
    }
    if state & interruptibility::SHADOW == interruptibility::SHADOW {
        return Err("interruptibility state has both STI and MOV-SS blocking");
    }
    if state & interruptibility::BLOCKING_BY_STI != 0 && s.rflags & RFLAGS_IF == 0 {
        return Err("blocking by STI with RFLAGS.IF clear");
    }
    if s.entry_event & event::VALID != 0
        && s.entry_event & event::TYPE_MASK == event::TYPE_EXTERNAL_INTERRUPT
        && state & interruptibility::SHADOW != 0
    {
        return Err("an external interrupt is injected inside an STI or MOV-SS shadow");
    }
    if s.activity != 0 {
        return Err("activity state is not active");
    }
    Ok(())
}

/// The VMCS guest state for Linux's 64-bit entry (`LinuxEntryState`, the
/// plan's GDT `gdt`): CS and the data segments from their descriptors, a
/// busy 64-bit TSS at selector 0 for TR and an unusable LDTR (Linux loads
/// its own before using either; the entry checks want a usable TR), CR0
/// and CR4 with the VMX fixed bits added, and the IA-32e mode guest entry
/// control in `entry_controls`. The caller writes CR3, GDTR, IDTR and the
/// registers from `entry` as they are. Errors name a selector that is not
/// in `gdt`.
pub fn linux64_guest_state(
    entry: &LinuxEntryState,
    gdt: &[u64],
    entry_controls: u32,
    cr0_fixed: (u64, u64),
    cr4_fixed: (u64, u64),
) -> Result<GuestStateView, &'static str> {
    let segment = |selector: u16| -> Result<Segment, &'static str> {
        let descriptor = *gdt
            .get(usize::from(selector >> 3))
            .ok_or("a boot selector lies outside the boot GDT")?;
        Ok(Segment {
            selector,
            base: u64::from(segment_base(descriptor)),
            limit: segment_limit(descriptor),
            access_rights: segment_access_rights(descriptor),
        })
    };
    let data = segment(entry.data_selector)?;
    Ok(GuestStateView {
        entry_controls: entry_controls | ctl::ENTRY_IA32E_MODE_GUEST,
        cr0: apply_fixed(entry.cr0, cr0_fixed.0, cr0_fixed.1),
        cr4: apply_fixed(entry.cr4, cr4_fixed.0, cr4_fixed.1),
        efer: entry.efer,
        cr0_fixed,
        cr4_fixed,
        cs: segment(entry.code_selector)?,
        ss: data,
        data: [data; 4],
        tr: Segment {
            selector: 0,
            base: 0,
            limit: 0x67,
            access_rights: 0x8b,
        },
        ldtr: Segment {
            access_rights: AR_UNUSABLE,
            ..Segment::default()
        },
        rip: entry.rip,
        rflags: entry.rflags,
        interruptibility: 0,
        activity: 0,
        entry_event: 0,
    })
}

/// Which check a failed VM entry broke (SDM "VM-Entry Failures During or
/// After Loading Guest State"): for "invalid guest state" (reason 33) the
/// qualification names the PDPTE, NMI-injection and VMCS-link cases and is
/// 0 otherwise, when `guest_check` (this module's [`check_guest_state`]
/// over the VMCS) names the field if it can; for "MSR loading" (reason 34)
/// the qualification is the 1-based entry of the VM-entry MSR-load area,
/// named from `msr_load_list`. `None` for other reasons.
pub fn describe_entry_failure(
    reason: u32,
    qualification: u64,
    guest_check: Result<(), &'static str>,
    msr_load_list: &[(u32, &'static str)],
) -> Option<&'static str> {
    let why = ExitReason(reason);
    if !why.entry_failed() {
        return None;
    }
    Some(match (why.basic(), qualification) {
        (reason::INVALID_GUEST_STATE, 2) => "loading the guest's PDPTEs failed",
        (reason::INVALID_GUEST_STATE, 3) => "NMI injection blocked by the guest state",
        (reason::INVALID_GUEST_STATE, 4) => "invalid VMCS link pointer",
        (reason::INVALID_GUEST_STATE, _) => match guest_check {
            Err(field) => field,
            Ok(()) => "invalid guest state that the software checks do not name",
        },
        (reason::MSR_LOADING, n) => msr_load_list
            .get((n as usize).wrapping_sub(1))
            .map_or("an MSR-load entry outside the list", |(_, name)| name),
        _ => why.name(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_widths_come_from_the_encoding() {
        assert_eq!(Width::of(field::VPID.encoding()), Width::W16);
        assert_eq!(Width::of(field::EPT_POINTER.encoding()), Width::W64);
        assert_eq!(Width::of(field::EXIT_REASON.encoding()), Width::W32);
        assert_eq!(Width::of(field::GUEST_RIP.encoding()), Width::Natural);
        assert_eq!(<Field16 as VmcsField>::from_raw(0x1_2345), 0x2345);
        assert_eq!(<Field32 as VmcsField>::from_raw(0x1_0000_0002), 2);
    }

    #[test]
    #[should_panic(expected = "another width")]
    fn a_wrong_width_is_refused() {
        // In a `const` this is a compile error; at run time it panics.
        let _ = Field16::new(field::GUEST_RIP.encoding());
    }

    #[test]
    fn vmfail_from_rflags() {
        assert_eq!(VmOutcome::from_rflags(0x2), VmOutcome::Succeed);
        assert_eq!(VmOutcome::from_rflags(0x3), VmOutcome::FailInvalid);
        assert_eq!(VmOutcome::from_rflags(0x42), VmOutcome::FailValid);
    }

    #[test]
    fn vmfail_names_the_error_number() {
        let text = format!("{}", VmFail::Valid(InstructionError(5)));
        assert_eq!(
            text,
            "VMfailValid: VM-instruction error 5 (VMRESUME with non-launched VMCS)"
        );
        assert_eq!(
            InstructionError(7).description(),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(
            InstructionError(99).description(),
            "unknown VM-instruction error"
        );
    }

    #[test]
    fn feature_control_plan() {
        assert_eq!(
            FeatureControlPlan::from_msr(0),
            FeatureControlPlan::Write(5)
        );
        assert_eq!(FeatureControlPlan::from_msr(5), FeatureControlPlan::Ready);
        assert_eq!(
            FeatureControlPlan::from_msr(1),
            FeatureControlPlan::Disabled
        );
    }

    #[test]
    fn true_control_msrs_when_offered() {
        assert_eq!(
            ControlMsrs::from_basic(1 << 55).pin,
            msr::TRUE_PINBASED_CTLS
        );
        assert_eq!(ControlMsrs::from_basic(0).entry, msr::ENTRY_CTLS);
        // The Bochs CPU core's IA32_VMX_BASIC (Cannon Lake model).
        let basic = 0x00d8_1000_0000_002b;
        assert_eq!(vmcs_revision(basic), 0x2b);
        assert_eq!(
            ControlMsrs::from_basic(basic).proc,
            msr::TRUE_PROCBASED_CTLS
        );
    }

    #[test]
    fn controls_respect_both_settings() {
        // Bits 1 and 2 must be 1; bits 0..=7 may be 1.
        let cap = (0xffu64 << 32) | 0b110;
        assert_eq!(adjust_controls(cap, 1 << 7, 0), Ok((1 << 7) | 0b110));
        // A wanted bit that cannot be set is dropped, a required one is an error.
        assert_eq!(adjust_controls(cap, 0, 1 << 9), Ok(0b110));
        assert_eq!(
            adjust_controls(cap, 1 << 9, 0),
            Err(MissingControls { missing: 1 << 9 })
        );
    }

    #[test]
    fn fixed_bits() {
        // Bochs CPU core: CR0 fixed0 0x80000021 (PE, NE, PG), fixed1 all ones.
        assert_eq!(apply_fixed(0x8001_0011, 0x8000_0021, u64::MAX), 0x8001_0031);
        assert_eq!(apply_fixed(0x30, 0x8000_0021 & !CR0_PE_PG, u64::MAX), 0x30);
        assert_eq!(apply_fixed(0xff, 0, 0x0f), 0x0f);
    }

    #[test]
    fn decodes_exits() {
        let vmcall = RawExit {
            reason: 18,
            ..RawExit::default()
        };
        assert_eq!(decode_exit(&vmcall), VmExit::Hypercall);
        let out = RawExit {
            reason: 30,
            qualification: (0x3f8 << 16),
            guest_rip: 0x100,
            instruction_len: 1,
            ..RawExit::default()
        };
        assert_eq!(
            decode_exit(&out),
            VmExit::Io(IoAccess {
                port: 0x3f8,
                size_bytes: 1,
                dir: IoDir::Out,
                string: false,
                rep: false,
                next_rip: Some(0x101)
            })
        );
        let inw = RawExit {
            reason: 30,
            qualification: (0x60 << 16) | (1 << 3) | 1,
            ..RawExit::default()
        };
        assert!(matches!(
            decode_exit(&inw),
            VmExit::Io(IoAccess {
                size_bytes: 2,
                dir: IoDir::In,
                ..
            })
        ));
        let wrmsr = RawExit {
            reason: 32,
            rcx: 0x277,
            rax: 0xffff_ffff_0000_0006,
            rdx: 7,
            ..RawExit::default()
        };
        assert_eq!(
            decode_exit(&wrmsr),
            VmExit::MsrWrite {
                msr: 0x277,
                value: (7 << 32) | 6
            }
        );
        let gp = RawExit {
            reason: 0,
            interruption_info: (1 << 31) | (1 << 11) | (3 << 8) | 13,
            interruption_error: 0x18,
            ..RawExit::default()
        };
        assert_eq!(
            decode_exit(&gp),
            VmExit::Exception {
                vector: 13,
                error_code: Some(0x18)
            }
        );
        let failed = RawExit {
            reason: (1 << 31) | 33,
            qualification: 0,
            ..RawExit::default()
        };
        assert!(ExitReason(failed.reason).entry_failed());
        assert_eq!(
            ExitReason(failed.reason).name(),
            "VM-entry failure: invalid guest state"
        );
        assert!(matches!(
            decode_exit(&failed),
            VmExit::Unknown {
                code: 0x8000_0021,
                ..
            }
        ));
    }

    #[test]
    fn instruction_lengths_and_injection() {
        assert!(ExitReason(18).reports_instruction_len());
        assert!(ExitReason(30).reports_instruction_len());
        assert!(ExitReason(55).reports_instruction_len());
        // MOV CR4, RAX: CR 4, access type 0, register 0 in bits 11:8.
        let mov_cr4 = RawExit {
            reason: 28,
            qualification: 4,
            ..RawExit::default()
        };
        assert_eq!(decode_exit(&mov_cr4), VmExit::CrWrite { cr: 4 });
        let lmsw = RawExit {
            reason: 28,
            qualification: (3 << 4),
            ..RawExit::default()
        };
        assert!(matches!(
            decode_exit(&lmsw),
            VmExit::Unknown { code: 28, .. }
        ));
        let xsetbv = RawExit {
            reason: 55,
            rcx: 0,
            rax: 7,
            rdx: 0,
            ..RawExit::default()
        };
        assert_eq!(decode_exit(&xsetbv), VmExit::Xsetbv { xcr: 0, value: 7 });
        assert!(
            !ExitReason(48).reports_instruction_len(),
            "EPT violations re-execute"
        );
        assert!(!ExitReason((1 << 31) | 33).reports_instruction_len());
        assert_eq!(inject_exception_info(13, true), 0x8000_0b0d);
        assert_eq!(
            inject_exception_info(6, true),
            0x8000_0306,
            "#UD has no error code"
        );
    }

    /// IA32_VMX_* as the Bochs CPU core's Cannon Lake model reported them
    /// (printed by the selftest kernel of the CPU-core bed, since removed).
    mod bed {
        pub const BASIC: u64 = 0x00d8_1000_0000_002b;
        pub const PINBASED: u64 = 0x0000_007f_0000_0016;
        pub const PROCBASED: u64 = 0xfff9_fffe_0401_e172;
        pub const PROCBASED2: u64 = 0x0255_7cff_0000_0000;
        pub const TRUE_PROCBASED: u64 = 0xfff9_fffe_0400_6172;
        pub const TRUE_EXIT: u64 = 0x407f_ffff_0003_6dfb;
        pub const TRUE_ENTRY: u64 = 0x0000_ffff_0000_11fb;
        pub const CR0_FIXED0: u64 = 0x8000_0021;
        pub const CR4_FIXED0: u64 = 0x2000;
        pub const CR4_FIXED1: u64 = 0x0037_2fff;
        pub const EPT_VPID_CAP: u64 = 0x0000_0f01_0673_4141;
    }

    #[test]
    fn the_bed_cpu_accepts_thermocline_controls() {
        assert_eq!(
            ControlMsrs::from_basic(bed::BASIC).proc,
            msr::TRUE_PROCBASED_CTLS
        );
        let pin = adjust_controls(bed::PINBASED, ctl::PIN_EXTERNAL_INTERRUPT_EXITING, 0);
        assert_eq!(pin, Ok(0x17));
        let wanted = ctl::PROC_SECONDARY_CONTROLS
            | ctl::PROC_HLT_EXITING
            | ctl::PROC_USE_IO_BITMAPS
            | ctl::PROC_USE_MSR_BITMAPS;
        let with_true = adjust_controls(bed::TRUE_PROCBASED, wanted, 0).expect("offered");
        let without = adjust_controls(bed::PROCBASED, wanted, 0).expect("offered");
        // CR3-load/store exiting (bits 15, 16) are default-1: only the TRUE
        // MSR lets the hypervisor leave them off.
        const CR3_EXITING: u32 = (1 << 15) | (1 << 16);
        assert_eq!(with_true & CR3_EXITING, 0);
        assert_eq!(without & CR3_EXITING, CR3_EXITING);
        assert_eq!(with_true & wanted, wanted);
        let proc2 = ctl::PROC2_ENABLE_EPT | ctl::PROC2_ENABLE_VPID | ctl::PROC2_UNRESTRICTED_GUEST;
        assert_eq!(adjust_controls(bed::PROCBASED2, proc2, 0), Ok(proc2));
        let exit = ctl::EXIT_HOST_ADDRESS_SPACE_SIZE | ctl::EXIT_SAVE_EFER | ctl::EXIT_LOAD_EFER;
        assert_eq!(
            adjust_controls(bed::TRUE_EXIT, exit, 0).map(|v| v & exit),
            Ok(exit)
        );
        let entry = ctl::ENTRY_IA32E_MODE_GUEST | ctl::ENTRY_LOAD_EFER;
        assert_eq!(
            adjust_controls(bed::TRUE_ENTRY, entry, 0).map(|v| v & entry),
            Ok(entry)
        );
        // The guest CR4 must carry VMXE; the host CR0 gains NE.
        assert_eq!(apply_fixed(0x620, bed::CR4_FIXED0, bed::CR4_FIXED1), 0x2620);
        assert_eq!(
            apply_fixed(0x8001_0011, bed::CR0_FIXED0, u64::MAX),
            0x8001_0031
        );
        let needed = ept_cap::WALK_LENGTH_4
            | ept_cap::MEMORY_TYPE_WB
            | ept_cap::ACCESSED_DIRTY
            | ept_cap::INVEPT
            | ept_cap::INVEPT_SINGLE_CONTEXT;
        assert_eq!(bed::EPT_VPID_CAP & needed, needed);
    }

    #[test]
    fn decodes_ept_violations() {
        // A read of an unmapped page, as the Bochs CPU core reports it (measured).
        let f = decode_ept_violation(0x781, 0xc000);
        assert_eq!(f.gpa, GuestPhysAddr::new(0xc000));
        assert_eq!(f.access, AccessKind::Read);
        assert!(!f.present && !f.in_guest_walk);
        // A write to a read-only mapping during a guest page walk.
        let w = decode_ept_violation((1 << 1) | (1 << 3) | (1 << 7), 0x5000);
        assert_eq!(w.access, AccessKind::Write);
        assert!(w.present && w.in_guest_walk);
        assert_eq!(decode_ept_violation(1 << 2, 0).access, AccessKind::Execute);
    }
    #[test]
    fn interrupt_window_exit_decodes() {
        let raw = RawExit {
            reason: u32::from(reason::INTERRUPT_WINDOW),
            ..RawExit::default()
        };
        assert_eq!(decode_exit(&raw), VmExit::InterruptWindow);
        assert_eq!(ExitReason(7).name(), "interrupt window");
        assert!(!ExitReason(7).reports_instruction_len());
    }

    #[test]
    fn external_interrupt_injection_info() {
        let e = EntryEvent::external_interrupt(0x30);
        assert_eq!(e.info, 0x8000_0030);
        assert!(e.is_external_interrupt());
        let pf = EntryEvent::exception(14, Some(0x6));
        assert_eq!((pf.info, pf.error_code), (0x8000_0b0e, 6));
        assert!(!pf.is_external_interrupt());
        let ud = EntryEvent::exception(6, None);
        assert_eq!((ud.info, ud.error_code), (0x8000_0306, 0));
    }

    #[test]
    fn idt_vectoring_becomes_the_next_injection() {
        assert_eq!(EntryEvent::from_idt_vectoring(0x30, 0, 0), None);
        // An external interrupt whose delivery hit an EPT violation: bit 12
        // (undefined in IDT-vectoring info) is dropped, no length, no code.
        let irq = EntryEvent::from_idt_vectoring(0x8000_1030, 0xdead, 3).unwrap();
        assert_eq!(irq, EntryEvent::external_interrupt(0x30));
        // A page fault keeps its error code.
        let pf = EntryEvent::from_idt_vectoring(0x8000_0b0e, 2, 0).unwrap();
        assert_eq!(pf, EntryEvent::exception(14, Some(2)));
        // INT 0x80 is delivered again with the length of its instruction.
        let int80 = EntryEvent::from_idt_vectoring(0x8000_0480, 0x77, 2).unwrap();
        assert_eq!(
            int80,
            EntryEvent {
                info: 0x8000_0480,
                error_code: 0,
                instruction_len: 2
            }
        );
        // INT3 (software exception) likewise; reserved bits 30:13 go.
        let int3 = EntryEvent::from_idt_vectoring(0xc000_0603, 0, 1).unwrap();
        assert_eq!((int3.info, int3.instruction_len), (0x8000_0603, 1));
    }

    #[test]
    fn stepping_over_an_instruction_ends_the_shadow() {
        assert_eq!(after_instruction_skipped(0b1011), 0b1000);
        assert_eq!(after_instruction_skipped(0), 0);
    }

    #[test]
    fn linux_boot_descriptors_as_vmcs_segments() {
        let code = crate::linux_boot::GDT[2];
        let data = crate::linux_boot::GDT[3];
        assert_eq!(segment_access_rights(code), 0xa09b);
        assert_eq!(segment_access_rights(data), 0xc093);
        assert_eq!(segment_limit(code), 0xffff_ffff);
        assert_eq!(segment_base(code), 0);
        // A byte-granular descriptor with a base in both pieces.
        let small: u64 = 0x0000_9312_3456_0fff;
        assert_eq!(segment_limit(small), 0xfff);
        assert_eq!(segment_base(small), 0x0012_3456);
        assert_eq!(segment_base(small | (0xab << 56)), 0xab12_3456);
    }

    #[test]
    fn msr_bitmap_positions() {
        assert_eq!(msr_bitmap_bits(0x277), Some((0x277, 0x4000 + 0x277)));
        assert_eq!(
            msr_bitmap_bits(0xc000_0082),
            Some((0x2000 + 0x82, 0x6000 + 0x82))
        );
        assert_eq!(msr_bitmap_bits(0x2000), None);
        assert_eq!(msr_bitmap_bits(0x4000_0000), None);
        let mut map = [0xffu8; 4096];
        assert!(!pass_through_msr(&mut map, 0x4b56_4d00));
        assert!(map.iter().all(|b| *b == 0xff));
    }

    proptest::proptest! {
        #[test]
        fn pass_through_clears_exactly_two_bits(msr in proptest::prop_oneof![0u32..0x2000, 0xc000_0000u32..0xc000_2000]) {
            let mut map = [0xffu8; 4096];
            proptest::prop_assert!(pass_through_msr(&mut map, msr));
            let cleared: u32 = map.iter().map(|b| b.count_zeros()).sum();
            proptest::prop_assert_eq!(cleared, 2);
            let (read, write) = msr_bitmap_bits(msr).unwrap();
            proptest::prop_assert_eq!(map[read / 8] & (1 << (read % 8)), 0);
            proptest::prop_assert_eq!(map[write / 8] & (1 << (write % 8)), 0);
        }
    }

    #[test]
    fn host_owns_the_fixed_cr_bits() {
        // Bochs bed: CR0 fixed0 PE|NE|PG, fixed1 all 32 bits; CR4 fixed0 VMXE.
        let cr0 = host_owned_cr_bits(0x8000_0021, 0xffff_ffff);
        assert_eq!(cr0 & 0xffff_ffff, 0x8000_0021);
        assert_eq!(cr0 >> 32, 0xffff_ffff);
        let cr4 = host_owned_cr_bits(0x2000, 0x0037_2fff);
        assert_eq!(cr4 & CR4_VMXE, CR4_VMXE);
        // PAE, PGE, OSFXSR... stay the guest's; LA57 (12), not offered, is the host's.
        assert_eq!(cr4 & 0xfff, 0);
        assert_ne!(cr4 & (1 << 12), 0);
    }

    const BOCHS_CR0_FIXED: (u64, u64) = (0x8000_0021, 0xffff_ffff);
    const BOCHS_CR4_FIXED: (u64, u64) = (0x2000, 0x0037_2fff);

    fn linux_entry() -> LinuxEntryState {
        LinuxEntryState {
            rip: 0x10_0200,
            rsi: 0x7000,
            rsp: 0x8000,
            rflags: 2,
            cr0: 0x8000_0031,
            cr3: 0x2000,
            cr4: 1 << 5,
            efer: (1 << 8) | (1 << 10),
            gdt_base: crate::linux_boot::GDT_GPA,
            gdt_limit: 31,
            code_selector: 0x10,
            data_selector: 0x18,
        }
    }

    fn linux_view() -> GuestStateView {
        linux64_guest_state(
            &linux_entry(),
            &crate::linux_boot::GDT,
            ctl::ENTRY_LOAD_EFER,
            BOCHS_CR0_FIXED,
            BOCHS_CR4_FIXED,
        )
        .unwrap()
    }

    #[test]
    fn linux64_state_passes_the_guest_state_checks() {
        let v = linux_view();
        assert_eq!(check_guest_state(&v), Ok(()));
        assert_eq!(v.cs.access_rights, 0xa09b);
        assert_eq!((v.ss.selector, v.data[0].selector), (0x18, 0x18));
        assert_ne!(v.entry_controls & ctl::ENTRY_IA32E_MODE_GUEST, 0);
        assert_ne!(v.cr4 & CR4_VMXE, 0);
        let bad_selector = LinuxEntryState {
            code_selector: 0x28,
            ..linux_entry()
        };
        assert_eq!(
            linux64_guest_state(
                &bad_selector,
                &crate::linux_boot::GDT,
                0,
                BOCHS_CR0_FIXED,
                BOCHS_CR4_FIXED
            ),
            Err("a boot selector lies outside the boot GDT")
        );
    }

    #[test]
    fn each_broken_check_is_named() {
        let ok = linux_view();
        let named = |v: GuestStateView| check_guest_state(&v).unwrap_err();
        assert!(
            named(GuestStateView {
                cr0: ok.cr0 & !(1 << 5),
                ..ok
            })
            .contains("CR0")
        );
        assert!(
            named(GuestStateView {
                cr4: ok.cr4 & !CR4_VMXE,
                ..ok
            })
            .contains("CR4")
        );
        assert!(named(GuestStateView { efer: 1 << 8, ..ok }).contains("LMA"));
        let mut cs = ok.cs;
        cs.access_rights |= 1 << 14;
        assert!(named(GuestStateView { cs, ..ok }).contains("L and D/B"));
        let mut tr = ok.tr;
        tr.access_rights = AR_UNUSABLE;
        assert!(named(GuestStateView { tr, ..ok }).contains("TR"));
        assert!(named(GuestStateView { rflags: 0, ..ok }).contains("RFLAGS"));
        assert!(
            named(GuestStateView {
                interruptibility: interruptibility::BLOCKING_BY_STI,
                ..ok
            })
            .contains("RFLAGS.IF clear")
        );
        assert!(
            named(GuestStateView {
                rflags: 0x202,
                interruptibility: interruptibility::BLOCKING_BY_STI,
                entry_event: EntryEvent::external_interrupt(0x20).info,
                ..ok
            })
            .contains("shadow")
        );
        // An exception may be injected in a shadow.
        assert_eq!(
            check_guest_state(&GuestStateView {
                rflags: 0x202,
                interruptibility: interruptibility::BLOCKING_BY_MOV_SS,
                entry_event: EntryEvent::exception(13, Some(0)).info,
                ..ok
            }),
            Ok(())
        );
        let mut ss = ok.ss;
        ss.selector |= 3;
        assert!(named(GuestStateView { ss, ..ok }).contains("RPL"));
        assert!(named(GuestStateView { rip: 1 << 50, ..ok }).contains("canonical"));
    }

    #[test]
    fn failed_entries_name_their_check() {
        let list = [(0xc000_0081, "IA32_STAR"), (0xc000_0082, "IA32_LSTAR")];
        let failed = |basic: u16| (1 << 31) | u32::from(basic);
        assert_eq!(
            describe_entry_failure(u32::from(reason::HLT), 0, Ok(()), &list),
            None
        );
        assert_eq!(
            describe_entry_failure(
                failed(reason::INVALID_GUEST_STATE),
                0,
                Err("TR is bad"),
                &list
            ),
            Some("TR is bad")
        );
        assert_eq!(
            describe_entry_failure(
                failed(reason::INVALID_GUEST_STATE),
                4,
                Err("TR is bad"),
                &list
            ),
            Some("invalid VMCS link pointer")
        );
        assert_eq!(
            describe_entry_failure(failed(reason::MSR_LOADING), 2, Ok(()), &list),
            Some("IA32_LSTAR")
        );
        assert_eq!(
            describe_entry_failure(failed(reason::MSR_LOADING), 0, Ok(()), &list),
            Some("an MSR-load entry outside the list")
        );
        assert_eq!(
            describe_entry_failure(failed(reason::MSR_LOADING), 3, Ok(()), &list),
            Some("an MSR-load entry outside the list")
        );
    }
}
