//! VMX hardware glue: entering VMX operation, VMCS regions, typed
//! VMREAD/VMWRITE, VMLAUNCH/VMRESUME with the guest's registers, INVEPT.
//!
//! Everything that is data (field encodings and widths, control
//! computation, fixed bits, VMfail and error numbers, exit decoding) lives in
//! `hvcore::vmx` and is tested on the host; this module executes the
//! instructions. Follows the Intel SDM vol. 3C: "Enabling and Entering VMX
//! Operation", "VMX Instruction Reference" (VMXON, VMCLEAR, VMPTRLD, VMREAD,
//! VMWRITE, VMLAUNCH/VMRESUME, INVEPT), "Host-State Area" and "Loading Host
//! State" for what a VM exit restores.
//!
//! Key items: [`enable_on_this_cpu`], [`Vmcs`], [`read`]/[`write`] (typed
//! by `hvcore::vmx::VmcsField`: a 16-bit accessor on a 64-bit field does
//! not compile), [`enter`], [`invept_single_context`], [`VmxError`].
//!
//! What a VM exit leaves behind: GDTR and IDTR limits are 0xFFFF and the TR
//! limit 0x67 (the CPU does not load them); the kernel's tables fit inside.
//!
//! Neighbours: `crate::mem` (frames for VMXON and VMCS regions),
//! `crate::hw` (CPUID, RDMSR), `hvcore::vmx`.

pub mod vcpu;

use core::arch::asm;
use core::fmt;

use hvcore::addr::HostPhysAddr;
use hvcore::frame::FrameSize;
use hvcore::vmx::{
    self, CR4_VMXE, FeatureControlPlan, InstructionError, VmFail, VmOutcome, VmcsField, field, msr,
};

use crate::{hw, mem};

/// CR4.OSFXSR.
const CR4_OSFXSR: u64 = 1 << 9;

/// Why VMX could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    /// CPUID.1:ECX.VMX is clear.
    NotSupported,
    /// IA32_FEATURE_CONTROL is locked with VMX off (firmware setting).
    DisabledByFirmware,
    /// No frame for a VMXON or VMCS region.
    OutOfMemory,
    /// A VMX instruction failed.
    Instruction(&'static str, VmFail),
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSupported => write!(f, "the CPU has no VMX"),
            Self::DisabledByFirmware => {
                write!(
                    f,
                    "IA32_FEATURE_CONTROL is locked with VMX disabled (firmware setting)"
                )
            }
            Self::OutOfMemory => write!(f, "no frame for a VMX region"),
            Self::Instruction(what, fail) => write!(f, "{what}: {fail}"),
        }
    }
}

/// Reads RFLAGS right after a VMX instruction and turns it into a result,
/// fetching the error number from the current VMCS for VMfailValid.
fn outcome(rflags: u64) -> Result<(), VmFail> {
    match VmOutcome::from_rflags(rflags) {
        VmOutcome::Succeed => Ok(()),
        VmOutcome::FailInvalid => Err(VmFail::Invalid),
        VmOutcome::FailValid => {
            // A failing VMREAD here would report VMfailInvalid: keep 0.
            let number = read_raw(field::VM_INSTRUCTION_ERROR.encoding()).unwrap_or(0);
            Err(VmFail::Valid(InstructionError(number as u32)))
        }
    }
}

/// # Safety
/// The MSR must exist and the write must be valid for it.
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR and value (see `# Safety`).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem, nostack, preserves_flags));
    }
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 at CPL 0 has no side effect.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effect.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// IA32_VMX_* capability MSRs exist once CPUID says VMX.
fn cap(index: u32) -> u64 {
    // SAFETY: callers reach this only after `has_vmx()`; every IA32_VMX_*
    // MSR read here is architectural on VMX-capable CPUs.
    unsafe { hw::rdmsr(index) }
}

fn has_vmx() -> bool {
    hw::cpuid(1, 0).ecx & (1 << 5) != 0
}

/// Enters VMX operation on the calling CPU: locks IA32_FEATURE_CONTROL with
/// VMX enabled if firmware left it unlocked, applies the CR0/CR4 fixed bits
/// (CR0.NE, CR4.VMXE), and executes VMXON with a fresh region. Idempotent:
/// CR4.VMXE set means this CPU already did it.
pub fn enable_on_this_cpu() -> Result<(), VmxError> {
    if !has_vmx() {
        return Err(VmxError::NotSupported);
    }
    if read_cr4() & CR4_VMXE != 0 {
        return Ok(());
    }
    match FeatureControlPlan::from_msr(cap(msr::FEATURE_CONTROL)) {
        FeatureControlPlan::Ready => {}
        FeatureControlPlan::Disabled => return Err(VmxError::DisabledByFirmware),
        // SAFETY: the MSR is unlocked (the plan says so); setting the lock
        // and "VMX outside SMX" is what firmware would have done.
        FeatureControlPlan::Write(value) => unsafe { wrmsr(msr::FEATURE_CONTROL, value) },
    }
    let cr0 = vmx::apply_fixed(read_cr0(), cap(msr::CR0_FIXED0), cap(msr::CR0_FIXED1));
    // CR4.OSFXSR too: the vCPUs switch the guests' x87/SSE state with
    // FXSAVE/FXRSTOR, which cover the XMM registers only with it.
    let cr4 = vmx::apply_fixed(
        read_cr4() | CR4_VMXE | CR4_OSFXSR,
        cap(msr::CR4_FIXED0),
        cap(msr::CR4_FIXED1),
    );
    // SAFETY: the fixed bits only add CR0.NE/PE/PG (already set in long
    // mode, NE changes x87 error reporting, which the kernel does not use),
    // CR4.VMXE, which enables the VMX instructions, and CR4.OSFXSR, which
    // lets FXSAVE/FXRSTOR and SSE use the XMM state (the kernel is
    // soft-float and executes no SSE instruction).
    unsafe {
        asm!("mov cr0, {}", in(reg) cr0, options(nomem, nostack, preserves_flags));
        asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack, preserves_flags));
    }
    // CR4.VMXE is the "VMX is on" flag of this function: clear it again
    // if VMXON does not happen, so a later call retries instead of
    // reporting success (VMX instructions outside VMX operation raise #UD).
    let undo_vmxe = || {
        // SAFETY: clears only CR4.VMXE, set above; nothing uses VMX yet.
        unsafe {
            asm!("mov cr4, {}", in(reg) read_cr4() & !CR4_VMXE, options(nomem, nostack, preserves_flags))
        };
    };
    let region = region().inspect_err(|_| undo_vmxe())?;
    let rflags: u64;
    // SAFETY: the region is a 4-KiB aligned frame this CPU owns for as long
    // as it stays in VMX operation (never freed), holding the VMCS revision
    // identifier; CR0/CR4 and IA32_FEATURE_CONTROL satisfy the VMXON checks.
    unsafe {
        asm!("vmxon [{}]", "pushfq", "pop {}", in(reg) &raw const region, lateout(reg) rflags);
    }
    match VmOutcome::from_rflags(rflags) {
        VmOutcome::Succeed => Ok(()),
        // There is no current VMCS to hold an error number yet.
        _ => {
            undo_vmxe();
            Err(VmxError::Instruction("VMXON", VmFail::Invalid))
        }
    }
}

/// A zeroed frame stamped with the VMCS revision identifier (the format of
/// VMXON regions and VMCS regions alike).
fn region() -> Result<u64, VmxError> {
    let frame = mem::alloc_frame(FrameSize::Size4K).map_err(|_| VmxError::OutOfMemory)?;
    let revision = vmx::vmcs_revision(cap(msr::BASIC));
    // SAFETY: the frame was just handed to us; nothing else references it.
    unsafe {
        mem::phys::zero(frame, 4096);
        mem::phys::write(frame, revision);
    }
    Ok(frame.as_u64())
}

/// A VMCS region in its own frame.
#[derive(Debug)]
pub struct Vmcs {
    pa: u64,
}

impl Vmcs {
    /// Allocates and stamps a VMCS region, then VMCLEARs it (launch state
    /// "clear"). Needs VMX operation ([`enable_on_this_cpu`]).
    pub fn new() -> Result<Self, VmxError> {
        let vmcs = Self { pa: region()? };
        vmcs.clear()
            .map_err(|e| VmxError::Instruction("VMCLEAR", e))?;
        Ok(vmcs)
    }

    /// The region's physical address.
    pub fn phys(&self) -> HostPhysAddr {
        HostPhysAddr::new(self.pa)
    }

    /// VMCLEAR: flushes the VMCS to memory, makes it not current and its
    /// launch state clear (the next entry must be a launch).
    pub fn clear(&self) -> Result<(), VmFail> {
        let rflags: u64;
        // SAFETY: the operand is this VMCS region's address, a frame owned
        // by `self`.
        unsafe {
            asm!("vmclear [{}]", "pushfq", "pop {}", in(reg) &raw const self.pa, lateout(reg) rflags)
        };
        outcome(rflags)
    }

    /// VMPTRLD: makes this VMCS current on this CPU.
    pub fn load(&self) -> Result<(), VmFail> {
        let rflags: u64;
        // SAFETY: the operand is this VMCS region's address, stamped with
        // the revision identifier by `region`.
        unsafe {
            asm!("vmptrld [{}]", "pushfq", "pop {}", in(reg) &raw const self.pa, lateout(reg) rflags)
        };
        outcome(rflags)
    }
}

fn read_raw(encoding: u32) -> Result<u64, VmFail> {
    let value: u64;
    let rflags: u64;
    // SAFETY: VMREAD of the current VMCS touches no memory we own; failures
    // are reported in RFLAGS.
    unsafe {
        asm!("vmread {}, {}", "pushfq", "pop {}", lateout(reg) value, in(reg) u64::from(encoding),
             lateout(reg) rflags, options(nomem));
    }
    match VmOutcome::from_rflags(rflags) {
        VmOutcome::Succeed => Ok(value),
        VmOutcome::FailInvalid => Err(VmFail::Invalid),
        // Reading the error field itself failing: report it without recursing.
        VmOutcome::FailValid if encoding == field::VM_INSTRUCTION_ERROR.encoding() => {
            Err(VmFail::Invalid)
        }
        VmOutcome::FailValid => outcome(rflags).map(|()| 0),
    }
}

/// VMREAD of a field of the current VMCS, as the field's width.
pub fn read<F: VmcsField>(f: F) -> Result<F::Value, VmFail> {
    read_raw(f.encoding()).map(F::from_raw)
}

/// VMWRITE of a field of the current VMCS.
pub fn write<F: VmcsField>(f: F, value: F::Value) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: VMWRITE to the current VMCS changes guest/host/control state
    // that takes effect only at the next VM entry, which the caller
    // prepares; no memory we own is touched.
    unsafe {
        asm!("vmwrite {}, {}", "pushfq", "pop {}", in(reg) u64::from(f.encoding()),
             in(reg) value.into(), lateout(reg) rflags, options(nomem));
    }
    outcome(rflags)
}

/// VMWRITE, naming the field on failure (for long setup sequences).
pub fn write_checked<F: VmcsField>(f: F, value: F::Value) -> Result<(), VmxError> {
    write(f, value).map_err(|e| VmxError::Instruction("VMWRITE", e))
}

/// INVEPT single-context: drops every cached translation derived from
/// `eptp`, so the next guest access walks the EPT again and sets the
/// accessed flags that an aging pass cleared (under nested KVM, L0 sets
/// them only while it handles a fault, which needs this flush).
pub fn invept_single_context(eptp: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [eptp, 0];
    let rflags: u64;
    // SAFETY: the descriptor lives on the stack for the instruction; type 1
    // (single-context) only invalidates TLB entries.
    unsafe {
        asm!("invept {}, [{}]", "pushfq", "pop {}", in(reg) 1u64, in(reg) &raw const descriptor,
             lateout(reg) rflags);
    }
    outcome(rflags)
}

/// The guest's registers across [`enter`]: the vendor-neutral register
/// file itself (`vm::GuestRegs`, the layout both vendors' stubs address by
/// offset). The stub loads and saves only the general-purpose slots; guest
/// RSP, RIP and RFLAGS live in the VMCS, and the caller moves them.
pub type Gprs = crate::virt::GuestRegs;

/// Fills the host-state area from the running CPU (SDM "Host-State
/// Area"): control registers, selectors, bases. HOST_RSP and HOST_RIP are
/// written by [`enter`] itself.
pub fn write_host_state() -> Result<(), VmxError> {
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: reads selectors and the descriptor-table registers into
    // locals; no other state changes.
    unsafe {
        asm!("mov {:x}, cs", "mov {:x}, ss", "mov {:x}, ds", "mov {:x}, es",
             out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, options(nomem, nostack, preserves_flags));
        asm!("mov {:x}, fs", "mov {:x}, gs", "str {:x}",
             out(reg) fs, out(reg) gs, out(reg) tr, options(nomem, nostack, preserves_flags));
        asm!("sgdt [{}]", "sidt [{}]", in(reg) gdtr.as_mut_ptr(), in(reg) idtr.as_mut_ptr(),
             options(nostack, preserves_flags));
    }
    let gdt_base = u64::from_le_bytes(gdtr[2..10].try_into().unwrap_or_default());
    let idt_base = u64::from_le_bytes(idtr[2..10].try_into().unwrap_or_default());
    // The 16-byte TSS descriptor holds the TR base in pieces.
    let desc_at = gdt_base + u64::from(tr & !7);
    // SAFETY: the descriptor lies inside the live GDT, which the kernel
    // keeps mapped and never frees.
    let (lo, hi) = unsafe {
        (
            core::ptr::read_volatile(desc_at as *const u64),
            core::ptr::read_volatile((desc_at + 8) as *const u64),
        )
    };
    let tr_base =
        ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32);
    // RPL and TI must be 0 in host selectors.
    let sel = |s: u16| s & !7;
    write_checked(field::HOST_CS_SELECTOR, sel(cs))?;
    write_checked(field::HOST_SS_SELECTOR, sel(ss))?;
    write_checked(field::HOST_DS_SELECTOR, sel(ds))?;
    write_checked(field::HOST_ES_SELECTOR, sel(es))?;
    write_checked(field::HOST_FS_SELECTOR, sel(fs))?;
    write_checked(field::HOST_GS_SELECTOR, sel(gs))?;
    write_checked(field::HOST_TR_SELECTOR, sel(tr))?;
    write_checked(field::HOST_CR0, read_cr0())?;
    write_checked(field::HOST_CR3, hw::read_cr3())?;
    write_checked(field::HOST_CR4, read_cr4())?;
    // SAFETY: IA32_FS_BASE/IA32_GS_BASE exist on every 64-bit CPU.
    let (fs_base, gs_base) = unsafe { (hw::rdmsr(0xc000_0100), hw::rdmsr(0xc000_0101)) };
    write_checked(field::HOST_FS_BASE, fs_base)?;
    write_checked(field::HOST_GS_BASE, gs_base)?;
    write_checked(field::HOST_TR_BASE, tr_base)?;
    write_checked(field::HOST_GDTR_BASE, gdt_base)?;
    write_checked(field::HOST_IDTR_BASE, idt_base)?;
    // SYSENTER is unused by the kernel; zero is canonical.
    write_checked(field::HOST_SYSENTER_CS, 0)?;
    write_checked(field::HOST_SYSENTER_ESP, 0)?;
    write_checked(field::HOST_SYSENTER_EIP, 0)?;
    Ok(())
}

/// How [`enter`] came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entered {
    /// The guest ran (or its entry failed late) and a VM exit brought us
    /// back: read the exit reason.
    Exited,
    /// VMLAUNCH/VMRESUME itself failed; the guest never ran.
    Failed(VmFail),
}

// The entry stub. In: RDI = &mut Gprs, RSI = 0 for VMLAUNCH, 1 for
// VMRESUME. Out: RAX = 0 after a VM exit, else RFLAGS of the failed
// instruction. Keeps RFLAGS, the callee-saved registers and the Gprs
// pointer on the stack, points HOST_RSP at them and HOST_RIP at the exit
// path, so a VM exit lands at `2:` with RSP as it was at entry. A VM exit
// clears RFLAGS (IF included); the final POPFQ gives the caller its own
// back, so a pending host interrupt is taken right after an exit.
core::arch::global_asm!(
    r#"
    .section .text.thermocline_vmx_enter, "ax"
    .global thermocline_vmx_enter
    thermocline_vmx_enter:
        pushfq
        push rbp
        push rbx
        push r12
        push r13
        push r14
        push r15
        push rdi
        mov rax, 0x6c14
        vmwrite rax, rsp
        lea rcx, [rip + 2f]
        mov rax, 0x6c16
        vmwrite rax, rcx
        test esi, esi
        mov rax, [rdi + 0]
        mov rbx, [rdi + 8]
        mov rcx, [rdi + 16]
        mov rdx, [rdi + 24]
        mov rsi, [rdi + 32]
        mov rbp, [rdi + 48]
        mov r8, [rdi + 64]
        mov r9, [rdi + 72]
        mov r10, [rdi + 80]
        mov r11, [rdi + 88]
        mov r12, [rdi + 96]
        mov r13, [rdi + 104]
        mov r14, [rdi + 112]
        mov r15, [rdi + 120]
        mov rdi, [rdi + 40]
        jnz 1f
        vmlaunch
        jmp 3f
    1:
        vmresume
    3:
        pushfq
        pop rax
        pop rdi
        jmp 4f
    2:
        xchg rdi, [rsp]
        mov [rdi + 0], rax
        mov [rdi + 8], rbx
        mov [rdi + 16], rcx
        mov [rdi + 24], rdx
        mov [rdi + 32], rsi
        mov [rdi + 48], rbp
        mov [rdi + 64], r8
        mov [rdi + 72], r9
        mov [rdi + 80], r10
        mov [rdi + 88], r11
        mov [rdi + 96], r12
        mov [rdi + 104], r13
        mov [rdi + 112], r14
        mov [rdi + 120], r15
        pop rax
        mov [rdi + 40], rax
        xor eax, eax
    4:
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        popfq
        ret
    .text
    "#
);

unsafe extern "C" {
    fn thermocline_vmx_enter(gprs: *mut Gprs, resume: u64) -> u64;
}

/// Runs the guest of the current VMCS until its next VM exit.
///
/// # Safety
/// The current VMCS must hold a complete host state ([`write_host_state`])
/// of this CPU, controls the CPU accepts, and a guest whose EPT maps only
/// memory the guest may own; `resume` must match the VMCS launch state (the
/// CPU checks that and fails the instruction otherwise).
pub unsafe fn enter(gprs: &mut Gprs, resume: bool) -> Entered {
    // SAFETY: the stub keeps the callee-saved registers and the stack as
    // the C ABI requires (HOST_RSP returns it to the same RSP); the caller
    // vouches for the VMCS (see `# Safety`).
    let ret = unsafe { thermocline_vmx_enter(gprs, u64::from(resume)) };
    if ret == 0 {
        Entered::Exited
    } else {
        Entered::Failed(match outcome(ret) {
            Err(fail) => fail,
            // RFLAGS said success yet the stub returned: treat as invalid.
            Ok(()) => VmFail::Invalid,
        })
    }
}

/// Reads the exit information of the current VMCS into the form
/// `hvcore::vmx::decode_exit` takes.
pub fn raw_exit(gprs: &Gprs) -> Result<vmx::RawExit, VmFail> {
    Ok(vmx::RawExit {
        reason: read(field::EXIT_REASON)?,
        qualification: read(field::EXIT_QUALIFICATION)?,
        guest_physical: read(field::GUEST_PHYSICAL_ADDRESS)?,
        interruption_info: read(field::EXIT_INTERRUPTION_INFO)?,
        interruption_error: read(field::EXIT_INTERRUPTION_ERROR_CODE)?,
        guest_rip: read(field::GUEST_RIP)?,
        instruction_len: read(field::EXIT_INSTRUCTION_LEN)?,
        rax: gprs.rax,
        rcx: gprs.rcx,
        rdx: gprs.rdx,
    })
}
