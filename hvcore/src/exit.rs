//! The vendor-neutral VM exit: what a vCPU stopped for, decoded once by the
//! vendor backend (`svm` here, VMX in its own module) so that the handlers
//! in the kernel's `vm` module are written once for both.
//!
//! Key types: [`VmExit`], [`NestedFault`], [`IoAccess`], [`VirtInsn`].
//! Neighbours: [`crate::svm`] decodes SVM exit codes into these;
//! [`crate::insn`] decodes the instruction bytes a handler must skip.

use crate::addr::GuestPhysAddr;

/// How the guest touched memory in a nested page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A data read (or a guest page-table read).
    Read,
    /// A data write (guest page-table A/D updates count as writes).
    Write,
    /// An instruction fetch.
    Execute,
}

impl AccessKind {
    /// Lower-case name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Execute => "execute",
        }
    }
}

/// A fault in the second-level translation (NPT or EPT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedFault {
    /// The faulting guest-physical address (exact, not page-aligned).
    pub gpa: GuestPhysAddr,
    /// What the guest tried.
    pub access: AccessKind,
    /// The mapping existed but forbade the access (a protection fault), as
    /// opposed to no mapping at all.
    pub present: bool,
    /// The fault happened while the CPU walked the guest's own page tables.
    pub in_guest_walk: bool,
}

/// Direction of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDir {
    /// IN: the guest reads.
    In,
    /// OUT: the guest writes.
    Out,
}

/// A port access the guest made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    /// Port number.
    pub port: u16,
    /// Operand size: 1, 2 or 4 bytes.
    pub size_bytes: u8,
    /// Direction.
    pub dir: IoDir,
    /// INS/OUTS (string form).
    pub string: bool,
    /// With a REP prefix.
    pub rep: bool,
    /// RIP of the next instruction, when the CPU reports it (SVM always
    /// does for I/O intercepts).
    pub next_rip: Option<u64>,
}

/// A virtualization instruction the guest executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtInsn {
    /// SVM VMRUN.
    Vmrun,
    /// SVM VMLOAD.
    Vmload,
    /// SVM VMSAVE.
    Vmsave,
    /// SVM STGI.
    Stgi,
    /// SVM CLGI.
    Clgi,
    /// SVM SKINIT.
    Skinit,
    /// SVM INVLPGA.
    Invlpga,
    /// VMX VMXON.
    Vmxon,
    /// VMX VMXOFF.
    Vmxoff,
    /// VMX VMLAUNCH.
    Vmlaunch,
    /// VMX VMRESUME.
    Vmresume,
    /// VMX VMPTRLD.
    Vmptrld,
    /// VMX VMPTRST.
    Vmptrst,
    /// VMX VMCLEAR.
    Vmclear,
    /// VMX VMREAD.
    Vmread,
    /// VMX VMWRITE.
    Vmwrite,
    /// VMX INVEPT.
    Invept,
    /// VMX INVVPID.
    Invvpid,
    /// VMX VMFUNC.
    Vmfunc,
}

impl VirtInsn {
    /// The mnemonic.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Vmrun => "VMRUN",
            Self::Vmload => "VMLOAD",
            Self::Vmsave => "VMSAVE",
            Self::Stgi => "STGI",
            Self::Clgi => "CLGI",
            Self::Skinit => "SKINIT",
            Self::Invlpga => "INVLPGA",
            Self::Vmxon => "VMXON",
            Self::Vmxoff => "VMXOFF",
            Self::Vmlaunch => "VMLAUNCH",
            Self::Vmresume => "VMRESUME",
            Self::Vmptrld => "VMPTRLD",
            Self::Vmptrst => "VMPTRST",
            Self::Vmclear => "VMCLEAR",
            Self::Vmread => "VMREAD",
            Self::Vmwrite => "VMWRITE",
            Self::Invept => "INVEPT",
            Self::Invvpid => "INVVPID",
            Self::Vmfunc => "VMFUNC",
        }
    }

    /// Which extension the instruction belongs to.
    pub const fn family(self) -> &'static str {
        match self {
            Self::Vmrun
            | Self::Vmload
            | Self::Vmsave
            | Self::Stgi
            | Self::Clgi
            | Self::Skinit
            | Self::Invlpga => "SVM",
            _ => "VMX",
        }
    }
}

/// Why a vCPU left the guest, in vendor-neutral terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// CPUID; leaf and subleaf are in RAX and RCX.
    Cpuid,
    /// RDMSR of `msr`.
    MsrRead {
        /// MSR index (ECX).
        msr: u32,
    },
    /// WRMSR of `value` to `msr`.
    MsrWrite {
        /// MSR index (ECX).
        msr: u32,
        /// EDX:EAX.
        value: u64,
    },
    /// IN/OUT/INS/OUTS.
    Io(IoAccess),
    /// HLT.
    Hlt,
    /// VMMCALL or VMCALL: a hypercall (docs/hypercalls.md).
    Hypercall,
    /// A nested page fault / EPT violation.
    NestedPageFault(NestedFault),
    /// The guest triple-faulted (SVM shutdown, VMX triple fault).
    Shutdown,
    /// A physical interrupt arrived while the guest ran.
    ExternalInterrupt,
    /// The guest can take an external interrupt now: the exit that
    /// `VirtCpu::set_interrupt_window(true)` asked for (VMX interrupt-window
    /// exiting, SVM's VINTR intercept).
    InterruptWindow,
    /// An intercepted exception in the guest.
    Exception {
        /// Vector (0-31).
        vector: u8,
        /// The error code, for vectors that push one.
        error_code: Option<u32>,
    },
    /// A virtualization instruction that exits by itself (SVM instructions
    /// under SVM, VMX instructions under VMX).
    VirtInstruction(VirtInsn),
    /// MOV to a control register the hypervisor intercepts (CR4).
    CrWrite {
        /// Which control register.
        cr: u8,
    },
    /// XSETBV: the guest wants to change an extended control register.
    Xsetbv {
        /// Which XCR (ECX).
        xcr: u32,
        /// EDX:EAX.
        value: u64,
    },
    /// Anything else: the raw vendor code and qualifications, for the report.
    Unknown {
        /// Vendor exit code / basic exit reason.
        code: u64,
        /// First qualification (EXITINFO1 / exit qualification).
        info1: u64,
        /// Second qualification (EXITINFO2 / guest-physical address).
        info2: u64,
    },
}

/// Exception vectors that push an error code (Intel SDM / AMD APM tables
/// of exceptions and interrupts).
pub const fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}
