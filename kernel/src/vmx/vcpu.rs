//! The VMX extension behind the vendor trait (`crate::virt::Extension`): a
//! vCPU in Thermocline's boot state (`hvcore::guest_layout`: 64-bit long
//! mode) on EPT with accessed/dirty flags, VPID, and exits decoded into the
//! shared `VmExit` so `vm::run_vcpu` handles them as it does for SVM.
//!
//! Controls come from the capability MSRs (the TRUE ones when offered):
//! HLT exits, and every port and MSR access through all-ones I/O and MSR
//! bitmaps; CPUID and the VMX instructions always do; host interrupts exit
//! (external-interrupt exiting), so a guest that never exits is still
//! preempted where the CPU has a timer; #UD is intercepted so the VM can report
//! virtualization instructions. Guest EFER is loaded and saved through the
//! VMCS. A TLB flush request becomes one INVEPT single-context for the VM's
//! EPTP before the next entry (required under nested KVM for cleared
//! accessed flags to be set again; TESTBEDS section 1).
//!
//! Neighbours: `super` (the instructions), `crate::virt` (the trait),
//! `crate::vm` (the exit handlers), `hvcore::vmx` (fields, controls, exit
//! decoding).

use core::arch::asm;

use hvcore::addr::HostPhysAddr;
use hvcore::ept::eptp;
use hvcore::exit::VmExit;
use hvcore::frame::FrameSize;
use hvcore::guest_cpu::CR4_GUEST_WRITABLE;
use hvcore::guest_layout::{self as layout, BOOT_CPU_STATE};
use hvcore::guest_walk::GuestPaging;
use hvcore::vmx::{self, ControlMsrs, ExitReason, adjust_controls, ctl, ept_cap, field, msr};

use super::{Entered, Vmcs, VmxError};
use crate::virt::{EntryError, Extension, GuestRegs, VcpuSetup, VirtCpu};
use crate::{hw, mem};

/// RFLAGS.IF, the interrupt-enable flag.
const RFLAGS_IF: u64 = 1 << 9;

/// The VMX extension.
#[derive(Debug)]
pub struct Vmx;

impl Extension for Vmx {
    type Format = hvcore::ept::Ept;
    type Vcpu = VmxVcpu;
    const NAME: &'static str = "VMX";

    fn enable_on_this_cpu() -> Result<(), &'static str> {
        super::enable_on_this_cpu().map_err(|e| match e {
            VmxError::NotSupported => "the CPU has no VMX",
            VmxError::DisabledByFirmware => {
                "VMX is disabled by firmware (IA32_FEATURE_CONTROL locked)"
            }
            VmxError::OutOfMemory => "no frame for the VMXON region",
            VmxError::Instruction(..) => "VMXON failed",
        })?;
        let cap = cap(msr::EPT_VPID_CAP);
        let needed = ept_cap::WALK_LENGTH_4
            | ept_cap::MEMORY_TYPE_WB
            | ept_cap::INVEPT
            | ept_cap::INVEPT_SINGLE_CONTEXT;
        if cap & needed != needed {
            return Err("the CPU lacks 4-level write-back EPT or single-context INVEPT");
        }
        Ok(())
    }

    fn create_vcpu(vm: VcpuSetup, regs: GuestRegs) -> Result<Self::Vcpu, &'static str> {
        // One VPID per VM, shared by its vCPUs: they run on one address
        // space, and a flush request reaches each of them through its own
        // INVEPT (`crate::vm`, "TLB flushes with several vCPUs").
        VmxVcpu::new(
            vm.table_root,
            regs,
            u16::try_from(vm.vm_id).unwrap_or(u16::MAX),
        )
    }
}

/// The I/O bitmaps A and B and the MSR bitmap, shared by every vCPU: all
/// ones, so every port and every MSR access exits (the VM emulates COM1, the
/// hypercall port and EFER; everything else is reported). Bitmaps rather
/// than unconditional I/O exiting so a port or MSR can be passed through by
/// clearing its bit.
struct Bitmaps {
    io_a: HostPhysAddr,
    io_b: HostPhysAddr,
    msr: HostPhysAddr,
}

static BITMAPS: spin::Once<Result<Bitmaps, &'static str>> = spin::Once::new();

fn bitmaps() -> Result<&'static Bitmaps, &'static str> {
    BITMAPS
        .call_once(|| {
            let page = || {
                let frame =
                    mem::alloc_frame(FrameSize::Size4K).map_err(|_| "no frame for a VMX bitmap")?;
                // SAFETY: the frame was just handed to us and is kept for good.
                unsafe { core::ptr::write_bytes(mem::phys::to_virt(frame), 0xff, 4096) };
                Ok(frame)
            };
            Ok(Bitmaps {
                io_a: page()?,
                io_b: page()?,
                msr: page()?,
            })
        })
        .as_ref()
        .map_err(|e| *e)
}

fn cap(index: u32) -> u64 {
    // SAFETY: only called once CPUID reported VMX; IA32_VMX_* are
    // architectural then.
    unsafe { hw::rdmsr(index) }
}

/// Access rights (VMCS layout): 64-bit code, flat data, busy 64-bit TSS,
/// and "unusable" for LDTR.
const AR_CODE64: u32 = 0xa09b;
const AR_DATA: u32 = 0xc093;
const AR_TSS64_BUSY: u32 = 0x8b;
const AR_UNUSABLE: u32 = 1 << 16;
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
const IA32_EFER: u32 = 0xc000_0080;
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);

/// An FXSAVE area (Intel SDM vol. 1, "FXSAVE": 512 bytes, 16-byte aligned).
#[derive(Debug)]
#[repr(C, align(16))]
struct FxArea([u8; 512]);

impl FxArea {
    /// The x87/SSE state after reset: FCW 0x37F, MXCSR 0x1F80, all else 0.
    fn reset() -> Self {
        let mut area = [0u8; 512];
        area[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        area[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        Self(area)
    }
}

/// One VMX vCPU: its VMCS and the registers the VMCS does not hold.
#[derive(Debug)]
pub struct VmxVcpu {
    vmcs: Vmcs,
    /// The CPU that created it: the VMCS holds that CPU's host state.
    cpu: usize,
    eptp: u64,
    regs: GuestRegs,
    launched: bool,
    flush_on_entry: bool,
    next_rip: Option<u64>,
    /// The guest's x87/SSE registers: VM entry and exit do not switch
    /// them, so without this one VM would read another's XMM registers.
    fpu: FxArea,
    /// An event whose delivery the exit interrupted (IDT-vectoring info),
    /// with its error code and instruction length, to deliver again at the
    /// next entry.
    reinject: Option<(u32, u32, u32)>,
}

fn w<F: vmx::VmcsField>(f: F, value: F::Value) -> Result<(), &'static str> {
    super::write(f, value).map_err(|_| "VMWRITE refused a VMCS field")
}

impl VmxVcpu {
    /// A vCPU in the boot state of `hvcore::guest_layout` on the EPT rooted
    /// at `ept_root`, tagged with `vpid` (non-zero).
    pub fn new(
        ept_root: HostPhysAddr,
        boot_regs: GuestRegs,
        vpid: u16,
    ) -> Result<Self, &'static str> {
        let ad = cap(msr::EPT_VPID_CAP) & ept_cap::ACCESSED_DIRTY != 0;
        let eptp = eptp(ept_root, ad);
        let vmcs = Vmcs::new().map_err(|_| "no VMCS")?;
        vmcs.load().map_err(|_| "VMPTRLD failed")?;
        let msrs = ControlMsrs::from_basic(cap(msr::BASIC));
        let pin = adjust_controls(cap(msrs.pin), ctl::PIN_EXTERNAL_INTERRUPT_EXITING, 0)
            .map_err(|_| "external-interrupt exiting is not offered")?;
        let proc = adjust_controls(
            cap(msrs.proc),
            ctl::PROC_SECONDARY_CONTROLS
                | ctl::PROC_HLT_EXITING
                | ctl::PROC_USE_IO_BITMAPS
                | ctl::PROC_USE_MSR_BITMAPS,
            0,
        )
        .map_err(|_| "the primary controls Thermocline needs are not offered")?;
        let proc2 = adjust_controls(
            cap(msr::PROCBASED_CTLS2),
            ctl::PROC2_ENABLE_EPT | ctl::PROC2_ENABLE_VPID,
            0,
        )
        .map_err(|_| "EPT or VPID is not offered")?;
        let exit = adjust_controls(
            cap(msrs.exit),
            ctl::EXIT_HOST_ADDRESS_SPACE_SIZE | ctl::EXIT_SAVE_EFER | ctl::EXIT_LOAD_EFER,
            0,
        )
        .map_err(|_| "the VM-exit controls Thermocline needs are not offered")?;
        let entry = adjust_controls(
            cap(msrs.entry),
            ctl::ENTRY_IA32E_MODE_GUEST | ctl::ENTRY_LOAD_EFER,
            0,
        )
        .map_err(|_| "the VM-entry controls Thermocline needs are not offered")?;
        w(field::PIN_BASED_CONTROLS, pin)?;
        w(field::PRIMARY_PROC_CONTROLS, proc)?;
        w(field::SECONDARY_PROC_CONTROLS, proc2)?;
        w(field::EXIT_CONTROLS, exit)?;
        w(field::ENTRY_CONTROLS, entry)?;
        w(field::EXCEPTION_BITMAP, 1 << 6)?;
        w(field::CR3_TARGET_COUNT, 0)?;
        w(field::EXIT_MSR_STORE_COUNT, 0)?;
        w(field::EXIT_MSR_LOAD_COUNT, 0)?;
        w(field::ENTRY_MSR_LOAD_COUNT, 0)?;
        w(field::ENTRY_INTERRUPTION_INFO, 0)?;
        let maps = bitmaps()?;
        w(field::IO_BITMAP_A, maps.io_a.as_u64())?;
        w(field::IO_BITMAP_B, maps.io_b.as_u64())?;
        w(field::MSR_BITMAP, maps.msr.as_u64())?;
        w(field::EPT_POINTER, eptp)?;
        w(field::VPID, vpid.max(1))?;
        w(field::VMCS_LINK_POINTER, u64::MAX)?;
        // SAFETY: IA32_EFER exists on every 64-bit CPU.
        w(field::HOST_IA32_EFER, unsafe { hw::rdmsr(IA32_EFER) })?;
        super::write_host_state().map_err(|_| "cannot write the host state")?;

        // Guest: the boot state, with the bits VMX pins (CR0.NE, CR4.VMXE);
        // the guest reads CR4 without VMXE through the shadow.
        let cr0 = vmx::apply_fixed(
            BOOT_CPU_STATE.cr0,
            cap(msr::CR0_FIXED0),
            cap(msr::CR0_FIXED1),
        );
        let cr4 = vmx::apply_fixed(
            BOOT_CPU_STATE.cr4,
            cap(msr::CR4_FIXED0),
            cap(msr::CR4_FIXED1),
        );
        w(field::GUEST_CR0, cr0)?;
        w(field::GUEST_CR3, BOOT_CPU_STATE.cr3)?;
        w(field::GUEST_CR4, cr4)?;
        w(field::CR0_GUEST_HOST_MASK, 0)?;
        // The host owns every CR4 bit a guest may not change (VMXE among
        // them): a MOV to CR4 that would change one exits, and `vm` checks
        // it as it does for SVM (`set_guest_cr4`).
        w(
            field::CR4_GUEST_HOST_MASK,
            !CR4_GUEST_WRITABLE | vmx::CR4_VMXE,
        )?;
        w(field::CR4_READ_SHADOW, BOOT_CPU_STATE.cr4)?;
        w(field::GUEST_IA32_EFER, BOOT_CPU_STATE.efer)?;
        w(field::GUEST_IA32_PAT, DEFAULT_PAT)?;
        w(field::GUEST_IA32_DEBUGCTL, 0)?;
        let data = [
            (
                field::GUEST_ES_SELECTOR,
                field::GUEST_ES_BASE,
                field::GUEST_ES_LIMIT,
                field::GUEST_ES_AR,
            ),
            (
                field::GUEST_SS_SELECTOR,
                field::GUEST_SS_BASE,
                field::GUEST_SS_LIMIT,
                field::GUEST_SS_AR,
            ),
            (
                field::GUEST_DS_SELECTOR,
                field::GUEST_DS_BASE,
                field::GUEST_DS_LIMIT,
                field::GUEST_DS_AR,
            ),
            (
                field::GUEST_FS_SELECTOR,
                field::GUEST_FS_BASE,
                field::GUEST_FS_LIMIT,
                field::GUEST_FS_AR,
            ),
            (
                field::GUEST_GS_SELECTOR,
                field::GUEST_GS_BASE,
                field::GUEST_GS_LIMIT,
                field::GUEST_GS_AR,
            ),
        ];
        for (sel, base, limit, ar) in data {
            w(sel, layout::DATA_SELECTOR)?;
            w(base, 0)?;
            w(limit, 0xffff_ffff)?;
            w(ar, AR_DATA)?;
        }
        w(field::GUEST_CS_SELECTOR, layout::CODE_SELECTOR)?;
        w(field::GUEST_CS_BASE, 0)?;
        w(field::GUEST_CS_LIMIT, 0xffff_ffff)?;
        w(field::GUEST_CS_AR, AR_CODE64)?;
        w(field::GUEST_LDTR_SELECTOR, 0)?;
        w(field::GUEST_LDTR_BASE, 0)?;
        w(field::GUEST_LDTR_LIMIT, 0)?;
        w(field::GUEST_LDTR_AR, AR_UNUSABLE)?;
        w(field::GUEST_TR_SELECTOR, 0)?;
        w(field::GUEST_TR_BASE, 0)?;
        w(field::GUEST_TR_LIMIT, 0x67)?;
        w(field::GUEST_TR_AR, AR_TSS64_BUSY)?;
        w(field::GUEST_GDTR_BASE, layout::GDT_GPA)?;
        w(field::GUEST_GDTR_LIMIT, (layout::GDT.len() * 8 - 1) as u32)?;
        w(field::GUEST_IDTR_BASE, 0)?;
        w(field::GUEST_IDTR_LIMIT, 0)?;
        w(field::GUEST_DR7, 0x400)?;
        w(field::GUEST_PENDING_DEBUG, 0)?;
        w(field::GUEST_INTERRUPTIBILITY, 0)?;
        w(field::GUEST_ACTIVITY_STATE, 0)?;
        w(field::GUEST_SYSENTER_CS, 0)?;
        w(field::GUEST_SYSENTER_ESP, 0)?;
        w(field::GUEST_SYSENTER_EIP, 0)?;
        // The guest starts with RFLAGS.IF set. With external-interrupt
        // exiting a host interrupt exits the guest whatever the guest's IF
        // (SDM "VM-Execution Controls", pin-based), and no interrupt is ever
        // injected into these guests, so IF changes nothing they can run
        // into; but full-system Bochs 2.7 loads the guest's RFLAGS on VM
        // entry before it marks the CPU as in VMX non-root operation, so
        // with IF clear it masks external interrupts for the whole stay in
        // the guest: a guest spinning without exits was never preempted and
        // its CPU hung (measured: `vmx_vcpus` flush and EXIT cases, both
        // CPUs spinning in the guest 29 emulated seconds after the test's
        // 10 s deadline).
        let mut regs = boot_regs;
        regs.rflags |= RFLAGS_IF;
        Ok(Self {
            vmcs,
            cpu: crate::smp::cpu_index(),
            eptp,
            regs,
            launched: false,
            flush_on_entry: true,
            next_rip: None,
            fpu: FxArea::reset(),
            reinject: None,
        })
    }

    /// The EPT pointer this vCPU runs on.
    pub fn eptp(&self) -> u64 {
        self.eptp
    }

    /// Makes this vCPU's VMCS current, for negative tests that spoil guest
    /// state on purpose with `super::write` (single-threaded tests only:
    /// another vCPU on this CPU may load its own VMCS at any time).
    pub fn load(&self) -> Result<(), VmxError> {
        self.vmcs
            .load()
            .map_err(|e| VmxError::Instruction("VMPTRLD", e))
    }

    fn enter_once(&mut self) -> Result<VmExit, EntryError> {
        let setup = |why| EntryError::Setup(why);
        self.vmcs.load().map_err(|_| setup("VMPTRLD failed"))?;
        w(field::GUEST_RIP, self.regs.rip).map_err(setup)?;
        w(field::GUEST_RSP, self.regs.rsp).map_err(setup)?;
        w(field::GUEST_RFLAGS, self.regs.rflags).map_err(setup)?;
        if let Some((info, error_code, len)) = self.reinject.take()
            && super::read(field::ENTRY_INTERRUPTION_INFO).unwrap_or(0) & (1 << 31) == 0
        {
            w(field::ENTRY_INTERRUPTION_INFO, info).map_err(setup)?;
            w(field::ENTRY_EXCEPTION_ERROR_CODE, error_code).map_err(setup)?;
            // Software interrupts and exceptions (INT n, INT3, INTO) are
            // delivered again with their instruction length.
            w(field::ENTRY_INSTRUCTION_LEN, len).map_err(setup)?;
        }
        if core::mem::take(&mut self.flush_on_entry) {
            super::invept_single_context(self.eptp).map_err(|_| setup("INVEPT failed"))?;
        }
        // SAFETY: the area is 16-byte aligned and holds a state FXSAVE wrote
        // (or the reset state); the kernel is soft-float, so the x87/SSE
        // registers hold nothing of the host's until the FXSAVE below, and
        // interrupts are off (`with_vmcs`).
        unsafe { asm!("fxrstor64 [{}]", in(reg) self.fpu.0.as_ptr(), options(nostack, readonly)) };
        // SAFETY: the VMCS is current, built by `new` with this CPU's host
        // state, controls computed from the capability MSRs and an EPT whose
        // leaves are the VM's own frames (`vm::memory`); `launched` tracks
        // the VMCS launch state.
        let entered = unsafe { super::enter(&mut self.regs, self.launched) };
        // SAFETY: as above; keeps the guest's x87/SSE state with this vCPU,
        // so no other VM on this CPU ever sees it.
        unsafe { asm!("fxsave64 [{}]", in(reg) self.fpu.0.as_mut_ptr(), options(nostack)) };
        if let Entered::Failed(fail) = entered {
            return Err(EntryError::InvalidState {
                code: match fail {
                    vmx::VmFail::Valid(e) => u64::from(e.0),
                    vmx::VmFail::Invalid => u64::MAX,
                },
                reason: Some(match fail {
                    vmx::VmFail::Valid(e) => e.description(),
                    vmx::VmFail::Invalid => "VMfailInvalid (no current VMCS)",
                }),
            });
        }
        let raw =
            super::raw_exit(&self.regs).map_err(|_| setup("VMREAD of the exit fields failed"))?;
        let why = ExitReason(raw.reason);
        if why.entry_failed() {
            // The qualification says more for MSR-loading failures (which
            // entry) and is 0 or a VMCS-link reason for guest state.
            log::warn!(
                "VM entry failed: exit reason {:#x} ({}), qualification {:#x}",
                raw.reason,
                why.name(),
                raw.qualification
            );
            return Err(EntryError::InvalidState {
                code: u64::from(raw.reason),
                reason: Some(why.name()),
            });
        }
        self.launched = true;
        self.regs.rip = raw.guest_rip;
        self.regs.rsp = super::read(field::GUEST_RSP).unwrap_or(self.regs.rsp);
        self.regs.rflags = super::read(field::GUEST_RFLAGS).unwrap_or(self.regs.rflags);
        self.next_rip = why
            .reports_instruction_len()
            .then(|| raw.guest_rip.wrapping_add(u64::from(raw.instruction_len)));
        let vectoring = super::read(field::IDT_VECTORING_INFO).unwrap_or(0);
        if vectoring & (1 << 31) != 0 {
            let code = super::read(field::IDT_VECTORING_ERROR_CODE).unwrap_or(0);
            self.reinject = Some((vectoring & !(1 << 12), code, raw.instruction_len));
        }
        Ok(vmx::decode_exit(&raw))
    }
}

/// Runs `f` with interrupts off: between a VMPTRLD and the last VMREAD or
/// VMWRITE that relies on it, no other thread may run on this CPU and load
/// another VMCS. A host interrupt that arrives while the guest runs exits
/// it (external-interrupt exiting) and is taken when `f` returns.
fn with_vmcs<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(f)
}

impl VirtCpu for VmxVcpu {
    fn run(&mut self) -> Result<VmExit, EntryError> {
        self.next_rip = None;
        if crate::smp::cpu_index() != self.cpu {
            return Err(EntryError::Setup(
                "a VMX vCPU runs only on the CPU that created it (its VMCS holds that CPU's host state)",
            ));
        }
        with_vmcs(|| self.enter_once())
    }

    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn paging(&self) -> GuestPaging {
        with_vmcs(|| {
            // A failed load leaves zeros, which the guest walker refuses.
            let _ = self.vmcs.load();
            let r = |f| super::read(f).unwrap_or(0);
            GuestPaging {
                cr0: r(field::GUEST_CR0),
                cr3: r(field::GUEST_CR3),
                cr4: r(field::GUEST_CR4),
                efer: super::read(field::GUEST_IA32_EFER).unwrap_or(BOOT_CPU_STATE.efer),
            }
        })
    }

    fn next_rip(&self) -> Option<u64> {
        self.next_rip
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.reinject = None;
        let info = vmx::inject_exception_info(vector, error_code.is_some());
        with_vmcs(|| {
            // A failure here surfaces as a refused entry on the next run.
            let _ = self.vmcs.load();
            let _ = super::write(field::ENTRY_INTERRUPTION_INFO, info);
            let _ = super::write(field::ENTRY_EXCEPTION_ERROR_CODE, error_code.unwrap_or(0));
        });
    }

    fn flush_tlb_on_entry(&mut self) {
        self.flush_on_entry = true;
    }

    fn set_guest_cr4(&mut self, value: u64) -> bool {
        // The guest reads `value` (the shadow); the CPU runs with VMXE and
        // the other fixed bits added.
        let cr4 = vmx::apply_fixed(value, cap(msr::CR4_FIXED0), cap(msr::CR4_FIXED1));
        with_vmcs(|| {
            self.vmcs.load().is_ok()
                && super::write(field::GUEST_CR4, cr4).is_ok()
                && super::write(field::CR4_READ_SHADOW, value).is_ok()
        })
    }

    fn guest_efer(&self) -> u64 {
        with_vmcs(|| {
            let _ = self.vmcs.load();
            super::read(field::GUEST_IA32_EFER).unwrap_or(BOOT_CPU_STATE.efer)
        })
    }

    fn set_guest_efer(&mut self, value: u64) -> bool {
        // Only SCE (0) and NXE (11) may change; LME/LMA stay as booted.
        const CHANGEABLE: u64 = (1 << 0) | (1 << 11);
        let now = self.guest_efer();
        if (value ^ now) & !CHANGEABLE != 0 || value & EFER_LME_LMA != EFER_LME_LMA {
            return false;
        }
        with_vmcs(|| {
            self.vmcs.load().is_ok() && super::write(field::GUEST_IA32_EFER, value).is_ok()
        })
    }
}
