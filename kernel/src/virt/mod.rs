//! The vendor trait: what the VM layer needs of a virtualization extension
//! (SVM in `crate::svm`, VMX in `crate::vmx`), and the register file and
//! entry errors both vendors share.
//!
//! [`Extension`] is one extension, chosen once at boot; it names the
//! second-level table format of its VMs and creates [`VirtCpu`]s. A vCPU
//! runs the guest until the next exit and returns it as the shared
//! `hvcore::exit::VmExit`, which `crate::vm` handles once for both vendors.

use core::fmt;
use hvcore::addr::HostPhysAddr;
use hvcore::exit::VmExit;
use hvcore::guest_walk::GuestPaging;
use hvcore::pte::EntryFormat;

/// Guest general-purpose registers plus RIP and RFLAGS. The layout is
/// fixed: the vendors' entry stubs address it by offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestRegs {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// RSP.
    pub rsp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}

impl GuestRegs {
    /// General-purpose register `n` in the SDM's numbering (0 = RAX,
    /// 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI,
    /// 8-15 = R8-R15), as instruction encodings name them.
    pub fn gpr(&self, n: u8) -> u64 {
        match n & 15 {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            4 => self.rsp,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            _ => self.r15,
        }
    }
}

/// Why a vCPU could not enter the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The CPU refused the guest state (VMEXIT_INVALID, VM-entry failure).
    InvalidState {
        /// Raw exit code / reason as the CPU reported it.
        code: u64,
        /// The offending field, when software checks can name it.
        reason: Option<&'static str>,
    },
    /// The hypervisor is not set up for it (extension off on this CPU...).
    Setup(&'static str),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidState { code, reason } => write!(
                f,
                "the CPU refused the guest state (exit code {code:#x}): {}",
                reason.unwrap_or("no software check names the field")
            ),
            Self::Setup(why) => write!(f, "cannot enter the guest: {why}"),
        }
    }
}

/// One vCPU of some vendor.
pub trait VirtCpu {
    /// Runs the guest until its next exit.
    fn run(&mut self) -> Result<VmExit, EntryError>;
    /// The registers; changes take effect at the next [`Self::run`].
    fn regs(&mut self) -> &mut GuestRegs;
    /// The guest's paging controls, to read memory by virtual address.
    fn paging(&self) -> GuestPaging;
    /// RIP after the intercepted instruction, when the CPU reports it.
    fn next_rip(&self) -> Option<u64>;
    /// Delivers an exception to the guest at the next entry.
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// RFLAGS.IF, the STI/MOV-SS interrupt shadow and whether an event is
    /// already queued for the next entry, with the PIC's `pending_vector`,
    /// as `hvcore::devices::inject::decide` needs them.
    fn interruptibility(
        &self,
        pending_vector: Option<u8>,
    ) -> hvcore::devices::inject::Interruptibility;
    /// Queues external interrupt `vector` for the next entry. A queued
    /// injection the CPU could not complete (IDT-vectoring info / EXITINTINFO
    /// valid at the exit) is re-queued by the vendor itself on the next entry.
    fn inject_interrupt(&mut self, vector: u8);
    /// Asks for (`true`) or cancels an exit as soon as the guest can take an
    /// external interrupt ([`VmExit::InterruptWindow`]).
    fn set_interrupt_window(&mut self, on: bool);
    /// Flushes the guest's TLB at the next entry (after an aging pass).
    fn flush_tlb_on_entry(&mut self);
    /// EFER as the guest sees it.
    fn guest_efer(&self) -> u64;
    /// A guest write to EFER; `false` refuses it (the caller injects #GP).
    fn set_guest_efer(&mut self, value: u64) -> bool;
    /// Installs a guest CR4 the handler has checked; `false` when this
    /// vendor does not take CR4 writes through exits.
    fn set_guest_cr4(&mut self, _value: u64) -> bool {
        false
    }
}

/// What a vendor needs of a VM to make one of its vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuSetup {
    /// The root of the VM's second-level tables (NPT or EPT).
    pub table_root: HostPhysAddr,
    /// The VM's id (VMX tags its translations with it as the VPID).
    pub vm_id: u32,
    /// The state the vCPU starts in.
    pub start: VcpuStart,
}

/// How a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuStart {
    /// The project's own guests: the boot control state of `hvcore::guest_layout`.
    Layout,
    /// Linux's 64-bit boot protocol: long mode with paging, the loader's GDT
    /// and identity map (`hvcore::linux_boot::LinuxEntryState`).
    Linux64(hvcore::linux_boot::LinuxEntryState),
}

/// One virtualization extension, chosen once at boot. A VM is typed by
/// its extension (`crate::vm::Vm<E>`), so the vendor is fixed where the VM
/// is made and never passed again.
pub trait Extension: Sized + Send + Sync + 'static {
    /// The second-level table format of its VMs.
    type Format: EntryFormat;
    /// Its vCPUs.
    type Vcpu: VirtCpu;
    /// "SVM" or "VMX".
    const NAME: &'static str;
    /// Turns the extension on for the calling CPU (idempotent).
    fn enable_on_this_cpu() -> Result<(), &'static str>;
    /// A vCPU of the VM `vm` in the boot control state
    /// (`hvcore::guest_layout`) with registers `regs`.
    fn create_vcpu(vm: VcpuSetup, regs: GuestRegs) -> Result<Self::Vcpu, &'static str>;
}
