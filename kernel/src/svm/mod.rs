//! The AMD SVM backend: turns SVM on per CPU, builds a VMCB per vCPU with
//! nested paging, runs the guest with VMRUN and turns each #VMEXIT into the
//! vendor-neutral `hvcore::exit::VmExit` for the handlers in `crate::vm`.
//!
//! Follows the AMD APM vol. 2, "Secure Virtual Machine": "Enabling SVM"
//! (EFER.SVME, VM_HSAVE_PA), "VMRUN" and "#VMEXIT" (what is saved and
//! restored), "VMSAVE and VMLOAD" (the state VMRUN leaves alone: FS, GS, TR,
//! LDTR, KernelGsBase, STAR/LSTAR/CSTAR/SFMASK, SYSENTER), "Global Interrupt
//! Flag" and "Virtual Interrupt Masking" (how physical interrupts reach the
//! host while a guest runs), "TLB Control" and "Event Injection".
//!
//! What QEMU's model lacks and how this copes (TESTBEDS.md §2): no NRIP
//! save (handlers decode the instruction length, see `crate::vm`), no
//! decode assists, no clean bits (the VMCB clean field stays 0: everything
//! is reloaded), VMEXIT_INVALID stored as 0xFFFF_FFFF (compared on 32 bits).
//!
//! Key types: [`Svm`] (the extension, `crate::virt::Extension`),
//! [`SvmVcpu`] (implements `crate::virt::VirtCpu`), [`vmcb::Vmcb`].
//! Per-CPU state: the host save area and a host-state page for
//! VMSAVE/VMLOAD, indexed by CPU index. The kernel's per-CPU data lives
//! behind GS, which VMRUN does not switch: the VMSAVE/VMLOAD pair around
//! it is what keeps a guest's GS from becoming the host's.

pub mod vmcb;

use crate::hw;
use crate::mem::{self, phys};
use crate::virt::{EntryError, Extension, GuestRegs, VcpuSetup, VcpuStart, VirtCpu};
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use hvcore::addr::HostPhysAddr;
use hvcore::devices::inject::Interruptibility;
use hvcore::exit::VmExit;
use hvcore::frame::FrameSize;
use hvcore::guest_cpu::MSR_EFER;
use hvcore::guest_layout::{self as layout, BOOT_CPU_STATE};
use hvcore::guest_walk::GuestPaging;
use hvcore::svm::{
    self, EFER_SVME, EntryState, ExitState, IOPM_BYTES, MSR_VM_HSAVE_PA, MSRPM_BYTES, intercept,
};
use spin::Once;
use vmcb::{Segment, Vmcb};

/// Most CPUs (by CPU index) the per-CPU table holds.
const MAX_CPUS: usize = 256;

/// Per CPU: physical address of the host save area (0 = SVM off).
static HSAVE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: physical address of the host-state page for VMSAVE/VMLOAD.
static HOST_STATE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The permission maps every VM shares: every port and every MSR exits.
struct PermissionMaps {
    iopm: HostPhysAddr,
    msrpm: HostPhysAddr,
}
static MAPS: Once<Result<PermissionMaps, &'static str>> = Once::new();
/// ASIDs in use, one bit each (ASID 0 is the host's, bit 0 stays set).
static ASIDS_USED: spin::Mutex<[u64; MANAGED_ASIDS / 64]> =
    spin::Mutex::new([1; MANAGED_ASIDS / 64]);
/// ASIDs handed out one per vCPU; beyond, vCPUs share the last one.
const MANAGED_ASIDS: usize = 256;
/// The CPU's ASID count and NRIP save support, read when SVM is enabled.
static ASID_LIMIT: AtomicU32 = AtomicU32::new(0);
static HAS_NRIP: AtomicU32 = AtomicU32::new(0);
static HAS_FLUSH_BY_ASID: AtomicU32 = AtomicU32::new(0);

/// This CPU's slot in the per-CPU tables (not CPUID: under nested
/// virtualization every CPUID is an exit to the outer hypervisor).
fn this_cpu() -> usize {
    crate::smp::cpu_index()
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and `value` must be valid for it; the caller owns the
/// consequences (these are EFER and VM_HSAVE_PA, set up once per CPU).
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and value; WRMSR touches no memory.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags));
    }
}

/// Why SVM cannot run here, or `Ok` once it is on for the calling CPU
/// (idempotent). Requires `mem::init`.
pub fn enable_on_this_cpu() -> Result<(), &'static str> {
    let cpu = this_cpu();
    if cpu >= MAX_CPUS {
        return Err("CPU index beyond the per-CPU table");
    }
    if HSAVE[cpu].load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    let info = crate::cpu::read();
    let Some(features) = info.features.svm else {
        return Err("CPUID reports no SVM");
    };
    if !features.usable() {
        return Err("SVM lacks nested paging or guest ASIDs, or firmware disabled it");
    }
    ASID_LIMIT.store(features.asids, Ordering::Release);
    HAS_NRIP.store(u32::from(features.nrip_save), Ordering::Release);
    HAS_FLUSH_BY_ASID.store(u32::from(features.flush_by_asid), Ordering::Release);
    permission_maps()?;
    let hsave =
        mem::alloc_frame(FrameSize::Size4K).map_err(|_| "no frame for the host save area")?;
    let Some(host_state) = Vmcb::new() else {
        let _ = mem::free_frame(hsave, FrameSize::Size4K);
        return Err("no frame for the host state page");
    };
    // SAFETY: the frame is ours; the CPU owns it from the WRMSR below on.
    unsafe { phys::zero(hsave, 4096) };
    enable_fxsr();
    // SAFETY: CPUID says SVM exists, so EFER.SVME may be set and
    // VM_HSAVE_PA exists; the save area is a page-aligned frame we own for
    // good (it is never freed while SVM is on).
    unsafe {
        let efer = hw::rdmsr(MSR_EFER);
        wrmsr(MSR_EFER, efer | EFER_SVME);
        wrmsr(MSR_VM_HSAVE_PA, hsave.as_u64());
    }
    HOST_STATE[cpu].store(host_state.pa().as_u64(), Ordering::Release);
    core::mem::forget(host_state);
    HSAVE[cpu].store(hsave.as_u64(), Ordering::Release);
    log::info!(
        "enabled on CPU {cpu} (ASIDs {}, NRIP save {})",
        features.asids,
        if features.nrip_save {
            "yes"
        } else {
            "no: decoding instruction lengths"
        }
    );
    Ok(())
}

fn permission_maps() -> Result<&'static PermissionMaps, &'static str> {
    MAPS.call_once(|| {
        // One 2 MiB frame holds both maps: they need 12 KiB and 8 KiB of
        // physically contiguous memory and the allocator hands out 4 KiB or
        // 2 MiB.
        let frame = mem::alloc_frame(FrameSize::Size2M)
            .map_err(|_| "no 2 MiB frame for the permission maps")?;
        let iopm = frame;
        let msrpm = HostPhysAddr::new(frame.as_u64() + IOPM_BYTES as u64 + 4096);
        // SAFETY: the frame is ours for good; all ones intercept every port
        // and every MSR.
        unsafe {
            core::ptr::write_bytes(phys::to_virt(iopm), 0xff, IOPM_BYTES);
            core::ptr::write_bytes(phys::to_virt(msrpm), 0xff, MSRPM_BYTES);
        }
        // The MSRs VMLOAD/VMSAVE switch around every VMRUN (APM "VMSAVE
        // and VMLOAD Instructions") are the guest's own while it runs:
        // reaching them directly is safe and spares Linux an exit per
        // context switch (`hvcore::guest_msr::CONTEXT_MSRS`).
        for msr in hvcore::guest_msr::CONTEXT_MSRS {
            if let Some((byte, bit)) = svm::msrpm_position(msr) {
                // SAFETY: `byte` < MSRPM_BYTES (msrpm_position's ranges),
                // inside the map written above, which nothing reads yet.
                unsafe { *phys::to_virt(msrpm).add(byte) &= !(0b11 << bit) };
            }
        }
        Ok(PermissionMaps { iopm, msrpm })
    })
    .as_ref()
    .map_err(|e| *e)
}

/// An ASID of its own for a new vCPU, or `(shared, true)` when all are
/// taken: vCPUs on the shared ASID flush it at every VMRUN, so no stale
/// translation of another VM can survive into theirs.
fn alloc_asid() -> Result<(u32, bool), &'static str> {
    let limit = (ASID_LIMIT.load(Ordering::Acquire) as usize).min(MANAGED_ASIDS);
    if limit < 2 {
        return Err("the CPU offers no guest ASID");
    }
    let shared = limit - 1;
    let mut used = ASIDS_USED.lock();
    for asid in 1..shared {
        let (word, bit) = (asid / 64, asid % 64);
        if used[word] & (1 << bit) == 0 {
            used[word] |= 1 << bit;
            return Ok((asid as u32, false));
        }
    }
    Ok((shared as u32, true))
}

fn free_asid(asid: u32) {
    let asid = asid as usize;
    if asid != 0 && asid < MANAGED_ASIDS {
        ASIDS_USED.lock()[asid / 64] &= !(1 << (asid % 64));
    }
}

unsafe extern "sysv64" {
    /// Runs the guest once: see the assembly below.
    fn thermocline_svm_run(
        regs: *mut GuestRegs,
        guest_vmcb: u64,
        host_state: u64,
        fpu: *mut FpuState,
    );
}

/// A vCPU's x87/SSE register file in the FXSAVE format. VMRUN does not
/// switch it, so without this one VM would see another's XMM registers.
/// The kernel itself never uses the FPU (soft-float target), so only guest
/// state lives in the registers and the host has nothing to save.
#[derive(Debug)]
#[repr(C, align(16))]
pub struct FpuState([u8; 512]);

impl FpuState {
    /// The state after FNINIT with SSE defaults: FCW 0x37F, MXCSR 0x1F80.
    fn reset() -> Self {
        let mut area = [0u8; 512];
        area[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        area[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        Self(area)
    }
}

const CR4_OSFXSR: u64 = 1 << 9;

/// Sets CR4.OSFXSR so FXSAVE/FXRSTOR include the XMM registers.
fn enable_fxsr() {
    let cr4: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags))
    };
    if cr4 & CR4_OSFXSR == 0 {
        // SAFETY: OSFXSR only lets FXSAVE/FXRSTOR and SSE instructions
        // use the XMM state; the kernel executes no SSE instruction.
        unsafe {
            core::arch::asm!("mov cr4, {}", in(reg) cr4 | CR4_OSFXSR, options(nomem, nostack, preserves_flags));
        }
    }
}

// VMRUN with the host/guest state switch around it.
//
// 1. CLGI: no interrupt, NMI or SMI until STGI, so nothing runs on this CPU
//    with the guest's FS/GS/TR loaded.
// 2. VMSAVE the host's FS, GS, TR, LDTR, KernelGsBase, syscall MSRs; VMLOAD
//    the guest's; FXRSTOR the guest's x87/SSE registers (FXSAVE after).
// 3. STI: with V_INTR_MASKING, RFLAGS.IF at VMRUN decides whether physical
//    interrupts exit the guest; GIF=0 keeps them pending until step 6.
// 4. Load the guest GPRs (RAX, RSP, RIP, RFLAGS live in the VMCB), VMRUN.
// 5. After #VMEXIT (GIF=0, host RSP/RAX restored) store the guest GPRs,
//    VMSAVE the guest, VMLOAD the host.
// 6. CLI, STGI, then restore the caller's RFLAGS: an interrupt that made
//    the guest exit is taken there, by the host's handler.
core::arch::global_asm!(
    r#"
    .section .text.svm_run, "ax"
    .global thermocline_svm_run
    thermocline_svm_run:
        push rbp
        push rbx
        push r12
        push r13
        push r14
        push r15
        pushfq
        push rcx
        push rdx
        push rsi
        push rdi
        clgi
        fxrstor64 [rcx]
        mov rax, rdx
        vmsave rax
        mov rax, rsi
        vmload rax
        sti
        mov rbx, [rdi + 8]
        mov rcx, [rdi + 16]
        mov rdx, [rdi + 24]
        mov rsi, [rdi + 32]
        mov rbp, [rdi + 48]
        mov r8,  [rdi + 64]
        mov r9,  [rdi + 72]
        mov r10, [rdi + 80]
        mov r11, [rdi + 88]
        mov r12, [rdi + 96]
        mov r13, [rdi + 104]
        mov r14, [rdi + 112]
        mov r15, [rdi + 120]
        mov rdi, [rdi + 40]
        vmrun rax
        push rdi
        mov rdi, [rsp + 8]
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
        cli
        mov rax, [rsp + 24]
        fxsave64 [rax]
        mov rax, [rsp + 8]
        vmsave rax
        mov rax, [rsp + 16]
        vmload rax
        stgi
        add rsp, 32
        popfq
        pop r15
        pop r14
        pop r13
        pop r12
        pop rbx
        pop rbp
        ret
    .text
    "#
);

const _: () = {
    assert!(core::mem::offset_of!(GuestRegs, rbx) == 8);
    assert!(core::mem::offset_of!(GuestRegs, rdi) == 40);
    assert!(core::mem::offset_of!(GuestRegs, rbp) == 48);
    assert!(core::mem::offset_of!(GuestRegs, r8) == 64);
    assert!(core::mem::offset_of!(GuestRegs, r15) == 120);
};

/// Segment attributes: 64-bit code, flat data, busy 64-bit TSS, LDT.
const ATTR_CODE64: u16 = 0xa9b;
const ATTR_DATA: u16 = 0xc93;
const ATTR_TSS64_BUSY: u16 = 0x08b;
const ATTR_LDT: u16 = 0x082;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// Power-on PAT.
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
/// Exceptions the hypervisor intercepts: #UD, to name VMX/SVM instructions
/// in its report before reflecting the exception.
const INTERCEPTED_EXCEPTIONS: u32 = 1 << 6;

/// One SVM vCPU: its VMCB and its general-purpose registers.
#[derive(Debug)]
pub struct SvmVcpu {
    vmcb: Vmcb,
    regs: GuestRegs,
    fpu: Box<FpuState>,
    nrip: bool,
    flush_on_entry: bool,
    /// Its ASID.
    asid: u32,
    /// On the shared ASID: flush at every entry.
    flush_always: bool,
    /// An event whose delivery an exit interrupted (EXITINTINFO), to inject
    /// again on the next entry.
    reinject: Option<u64>,
}

impl SvmVcpu {
    /// A vCPU in Thermocline's boot state (`hvcore::guest_layout`) running
    /// on nested page tables rooted at `npt_root`. The VMCB is checked
    /// before the first VMRUN only by the CPU; see [`Self::entry_state`].
    pub fn new(
        npt_root: HostPhysAddr,
        start: VcpuStart,
        boot_regs: GuestRegs,
    ) -> Result<Self, &'static str> {
        let maps = permission_maps()?;
        let (asid, shared_asid) = alloc_asid()?;
        let mut v = Vmcb::new().ok_or("no frame for a VMCB")?;
        v.set(vmcb::INTERCEPT_EXCEPTIONS, INTERCEPTED_EXCEPTIONS);
        // CR4 writes, to keep OSXSAVE off: QEMU's model ignores the XSETBV
        // intercept, so refusing OSXSAVE is what keeps XCR0 the host's.
        v.set(vmcb::INTERCEPT_CR, 1 << (16 + 4));
        {
            use intercept::misc1 as m1;
            use intercept::misc2 as m2;
            v.set(
                vmcb::INTERCEPT_MISC1,
                m1::INTR
                    | m1::NMI
                    | m1::CPUID
                    | m1::HLT
                    | m1::INVLPGA
                    | m1::IOIO_PROT
                    | m1::MSR_PROT
                    | m1::SHUTDOWN,
            );
            v.set(
                vmcb::INTERCEPT_MISC2,
                m2::VMRUN
                    | m2::VMMCALL
                    | m2::VMLOAD
                    | m2::VMSAVE
                    | m2::STGI
                    | m2::CLGI
                    | m2::SKINIT
                    | m2::XSETBV,
            );
        }
        v.set(vmcb::IOPM_BASE_PA, maps.iopm.as_u64());
        v.set(vmcb::MSRPM_BASE_PA, maps.msrpm.as_u64());
        v.set(vmcb::GUEST_ASID, asid);
        v.set(vmcb::VINTR, svm::vintr::V_INTR_MASKING);
        v.set(vmcb::NP_ENABLE, 1);
        v.set(vmcb::N_CR3, hvcore::npt::ncr3(npt_root));
        v.set(vmcb::CLEAN, 0);

        let flat = |selector, attrib| Segment {
            selector,
            attrib,
            limit: 0xffff_ffff,
            base: 0,
        };
        v.set(vmcb::CS, flat(layout::CODE_SELECTOR, ATTR_CODE64));
        for seg in [vmcb::DS, vmcb::ES, vmcb::SS, vmcb::FS, vmcb::GS] {
            v.set(seg, flat(layout::DATA_SELECTOR, ATTR_DATA));
        }
        v.set(
            vmcb::GDTR,
            Segment {
                limit: (layout::GDT.len() * 8 - 1) as u32,
                base: layout::GDT_GPA,
                ..Segment::default()
            },
        );
        v.set(vmcb::IDTR, Segment::default());
        v.set(
            vmcb::TR,
            Segment {
                attrib: ATTR_TSS64_BUSY,
                limit: 0x67,
                ..Segment::default()
            },
        );
        v.set(
            vmcb::LDTR,
            Segment {
                attrib: ATTR_LDT,
                ..Segment::default()
            },
        );
        v.set(vmcb::CPL, 0);
        v.set(vmcb::EFER, BOOT_CPU_STATE.efer | EFER_SVME);
        v.set(vmcb::CR0, BOOT_CPU_STATE.cr0);
        v.set(vmcb::CR3, BOOT_CPU_STATE.cr3);
        v.set(vmcb::CR4, BOOT_CPU_STATE.cr4);
        v.set(vmcb::DR6, 0xffff_0ff0);
        v.set(vmcb::DR7, 0x400);
        v.set(vmcb::G_PAT, DEFAULT_PAT);
        let mut regs = boot_regs;
        if let VcpuStart::Linux64(entry) = start {
            linux64_start(&mut v, &entry);
            regs = GuestRegs {
                rip: entry.rip,
                rsi: entry.rsi,
                rsp: entry.rsp,
                rflags: entry.rflags,
                ..GuestRegs::default()
            };
        }
        Ok(Self {
            vmcb: v,
            regs,
            fpu: Box::new(FpuState::reset()),
            nrip: HAS_NRIP.load(Ordering::Acquire) != 0,
            flush_on_entry: true,
            asid,
            flush_always: shared_asid,
            reinject: None,
        })
    }

    /// The guest-state fields VMRUN checks, for a readable refusal.
    pub fn entry_state(&self) -> EntryState {
        EntryState {
            efer: self.vmcb.get(vmcb::EFER),
            cr0: self.vmcb.get(vmcb::CR0),
            cr3: self.vmcb.get(vmcb::CR3),
            cr4: self.vmcb.get(vmcb::CR4),
            dr6: self.vmcb.get(vmcb::DR6),
            dr7: self.vmcb.get(vmcb::DR7),
            cs_attrib: self.vmcb.get(vmcb::CS).attrib,
            asid: self.vmcb.get(vmcb::GUEST_ASID),
            intercept_misc2: self.vmcb.get(vmcb::INTERCEPT_MISC2),
        }
    }

    /// Direct VMCB access, for negative tests that spoil guest state on
    /// purpose.
    pub fn vmcb_mut(&mut self) -> &mut Vmcb {
        &mut self.vmcb
    }
}

/// Linux's 64-bit boot protocol state (boot.rst, "64-bit Boot Protocol"):
/// long mode with the loader's identity map, CS a 64-bit code descriptor
/// and the data segments flat, both from the loader's GDT (the hidden parts
/// are what loading those selectors from that GDT would give).
fn linux64_start(v: &mut Vmcb, entry: &hvcore::linux_boot::LinuxEntryState) {
    let flat = |selector, attrib| Segment {
        selector,
        attrib,
        limit: 0xffff_ffff,
        base: 0,
    };
    v.set(vmcb::CS, flat(entry.code_selector, ATTR_CODE64));
    for seg in [vmcb::DS, vmcb::ES, vmcb::SS, vmcb::FS, vmcb::GS] {
        v.set(seg, flat(entry.data_selector, ATTR_DATA));
    }
    v.set(
        vmcb::GDTR,
        Segment {
            limit: u32::from(entry.gdt_limit),
            base: entry.gdt_base,
            ..Segment::default()
        },
    );
    v.set(vmcb::EFER, entry.efer | EFER_SVME);
    v.set(vmcb::CR0, entry.cr0);
    v.set(vmcb::CR3, entry.cr3);
    v.set(vmcb::CR4, entry.cr4);
}

impl Drop for SvmVcpu {
    fn drop(&mut self) {
        // The next owner of the ASID flushes it at its first entry.
        if !self.flush_always {
            free_asid(self.asid);
        }
    }
}

impl VirtCpu for SvmVcpu {
    fn run(&mut self) -> Result<VmExit, EntryError> {
        let cpu = this_cpu();
        let host_state = HOST_STATE.get(cpu).map_or(0, |h| h.load(Ordering::Acquire));
        if host_state == 0 {
            return Err(EntryError::Setup("SVM is not enabled on this CPU"));
        }
        let v = &mut self.vmcb;
        v.set(vmcb::RAX, self.regs.rax);
        v.set(vmcb::RSP, self.regs.rsp);
        v.set(vmcb::RIP, self.regs.rip);
        v.set(vmcb::RFLAGS, self.regs.rflags);
        if let Some(event) = self.reinject.take()
            && v.get(vmcb::EVENT_INJ) & (1 << 31) == 0
        {
            v.set(vmcb::EVENT_INJ, event);
        }
        let flush = core::mem::take(&mut self.flush_on_entry) || self.flush_always;
        v.set(
            vmcb::TLB_CONTROL,
            svm::tlb_control_for(flush, HAS_FLUSH_BY_ASID.load(Ordering::Relaxed) != 0),
        );
        // SAFETY:
        // 1. The VMCB is a zeroed-then-initialised page we own, with valid
        //    permission maps and nested CR3; VMRUN checks the rest and
        //    reports bad state as VMEXIT_INVALID instead of running.
        // 2. `host_state` is this CPU's host-state page and SVM is enabled
        //    on this CPU (HSAVE set); the stub restores every callee-saved
        //    register, RSP and RFLAGS, and the host FS/GS/TR state.
        // 3. `regs` is a valid, exclusive GuestRegs for the stub's stores;
        //    `fpu` a 16-byte aligned FXSAVE area holding a state FXSAVE
        //    wrote (or the valid reset state), and CR4.OSFXSR is set on
        //    every CPU where SVM is enabled.
        unsafe { thermocline_svm_run(&mut self.regs, v.pa().as_u64(), host_state, &mut *self.fpu) };
        self.regs.rax = v.get(vmcb::RAX);
        self.regs.rsp = v.get(vmcb::RSP);
        self.regs.rip = v.get(vmcb::RIP);
        self.regs.rflags = v.get(vmcb::RFLAGS);
        let code = v.get(vmcb::EXIT_CODE);
        if svm::is_invalid(code) {
            // Nothing ran: the flush still has to happen on the next try.
            self.flush_on_entry |= flush;
            return Err(EntryError::InvalidState {
                code,
                reason: svm::entry_state_problem(&self.entry_state()),
            });
        }
        // An event this entry injected was either delivered or comes back
        // in EXITINTINFO; either way the field must not inject it twice.
        v.set(vmcb::EVENT_INJ, 0);
        let int_info = v.get(vmcb::EXIT_INT_INFO);
        if int_info & (1 << 31) != 0 {
            self.reinject = Some(int_info);
        }
        Ok(svm::decode_exit(&ExitState {
            code,
            info1: v.get(vmcb::EXIT_INFO1),
            info2: v.get(vmcb::EXIT_INFO2),
            rcx: self.regs.rcx,
            rax: self.regs.rax,
            rdx: self.regs.rdx,
        }))
    }

    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    fn paging(&self) -> GuestPaging {
        GuestPaging {
            cr0: self.vmcb.get(vmcb::CR0),
            cr3: self.vmcb.get(vmcb::CR3),
            cr4: self.vmcb.get(vmcb::CR4),
            efer: self.vmcb.get(vmcb::EFER),
        }
    }

    fn next_rip(&self) -> Option<u64> {
        self.nrip
            .then(|| self.vmcb.get(vmcb::NEXT_RIP))
            .filter(|&r| r != 0)
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.reinject = None;
        self.vmcb.set(
            vmcb::EVENT_INJ,
            svm::event_inject_exception(vector, error_code),
        );
    }

    fn interruptibility(&self, pending_vector: Option<u8>) -> Interruptibility {
        Interruptibility {
            pending_vector,
            interrupts_enabled: self.regs.rflags & RFLAGS_IF != 0,
            shadow: self.vmcb.get(vmcb::INTERRUPT_SHADOW) & 1 != 0,
            event_in_flight: self.reinject.is_some()
                || self.vmcb.get(vmcb::EVENT_INJ) & (1 << 31) != 0,
        }
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.vmcb
            .set(vmcb::EVENT_INJ, svm::event_inject_interrupt(vector));
    }

    fn set_interrupt_window(&mut self, on: bool) {
        // APM "Virtual Interrupt Control": a pending V_IRQ with the VINTR
        // intercept exits the guest at the first instruction boundary where
        // RFLAGS.IF is 1 and no interrupt shadow holds, the interrupt window.
        let vintr = self.vmcb.get(vmcb::VINTR);
        let misc1 = self.vmcb.get(vmcb::INTERCEPT_MISC1);
        if on {
            self.vmcb
                .set(vmcb::VINTR, vintr | svm::vintr::WINDOW_REQUEST);
            self.vmcb
                .set(vmcb::INTERCEPT_MISC1, misc1 | intercept::misc1::VINTR);
        } else {
            self.vmcb
                .set(vmcb::VINTR, vintr & !svm::vintr::WINDOW_REQUEST);
            self.vmcb
                .set(vmcb::INTERCEPT_MISC1, misc1 & !intercept::misc1::VINTR);
        }
    }

    fn flush_tlb_on_entry(&mut self) {
        self.flush_on_entry = true;
    }

    fn set_guest_cr4(&mut self, value: u64) -> bool {
        self.vmcb.set(vmcb::CR4, value);
        true
    }

    fn guest_efer(&self) -> u64 {
        // The guest runs with SVME set (VMRUN requires it); it never sees it.
        self.vmcb.get(vmcb::EFER) & !EFER_SVME
    }

    fn set_guest_efer(&mut self, value: u64) -> bool {
        // Only SCE (0) and NXE (11) may change; LME/LMA stay as booted and
        // SVME cannot be turned on by the guest.
        const CHANGEABLE: u64 = (1 << 0) | (1 << 11);
        let now = self.guest_efer();
        if (value ^ now) & !CHANGEABLE != 0 {
            return false;
        }
        self.vmcb.set(vmcb::EFER, value | EFER_SVME);
        true
    }
}

/// The SVM extension.
#[derive(Debug)]
pub struct Svm;

impl Extension for Svm {
    type Format = hvcore::npt::Npt;
    type Vcpu = SvmVcpu;
    const NAME: &'static str = "SVM";
    fn enable_on_this_cpu() -> Result<(), &'static str> {
        enable_on_this_cpu()
    }
    fn create_vcpu(vm: VcpuSetup, regs: GuestRegs) -> Result<Self::Vcpu, &'static str> {
        SvmVcpu::new(vm.table_root, vm.start, regs)
    }
}
