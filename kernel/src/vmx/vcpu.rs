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
//! Events (SDM "Event Injection", "Information for VM Exits That Occur
//! During Event Delivery"): the vCPU keeps the one event of its next entry
//! ([`hvcore::vmx::EntryEvent`]: an exception, an external interrupt from
//! the PIC, or the event an exit interrupted, re-queued from the
//! IDT-vectoring information) and writes it at entry, since every exit
//! clears the injection field. Interrupt-window exiting is turned on and
//! off per entry. When the VM loop steps the guest over the instruction
//! that exited, its STI/MOV-SS shadow ends with it.
//!
//! A Linux vCPU (`VcpuStart::Linux64`) starts in the 64-bit boot state of
//! `hvcore::linux_boot` and differs from the project's own guests in what
//! it passes to the hardware: FS/GS base and SYSENTER (VMCS fields), PAT
//! (VMCS field with the load/save PAT controls), and KERNEL_GS_BASE,
//! STAR, LSTAR, CSTAR, SFMASK and TSC_AUX (a per-vCPU VM-entry MSR-load
//! area that is also its VM-exit MSR-store area, and a VM-exit MSR-load
//! area with the host's values), so SYSCALL and SWAPGS work without exits;
//! RDTSCP is enabled where offered. CR0 and CR4 bits the VMX fixed MSRs pin
//! are host-owned (guest/host masks, read shadows), so a guest write that
//! would change one exits instead of breaking the next entry; CR3 and
//! CR8 accesses do not touch the host (CR3 is the guest's under EPT, CR8
//! exits).
//!
//! Neighbours: `super` (the instructions), `crate::virt` (the trait),
//! `crate::vm` (the exit handlers), `hvcore::vmx` (fields, controls, exit
//! decoding).

use core::arch::asm;

use hvcore::addr::HostPhysAddr;
use hvcore::devices::inject::Interruptibility;
use hvcore::ept::eptp;
use hvcore::exit::VmExit;
use hvcore::frame::FrameSize;
use hvcore::guest_cpu::CR4_GUEST_WRITABLE;
use hvcore::guest_layout::{self as layout, BOOT_CPU_STATE};
use hvcore::guest_walk::GuestPaging;
use hvcore::vmx::{
    self, ControlMsrs, EntryEvent, ExitReason, GuestStateView, Segment, adjust_controls, ctl,
    ept_cap, field, interruptibility, msr,
};

use super::{Entered, Vmcs, VmxError};
use crate::virt::{EntryError, Extension, GuestRegs, VcpuSetup, VcpuStart, VirtCpu};
use crate::{hw, mem};

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
        VmxVcpu::new(vm, regs)
    }
}

/// The I/O bitmaps A and B and the MSR bitmaps, shared by every vCPU: all
/// ones, so every port and every MSR access exits (the VM emulates COM1, the
/// hypercall port and EFER; everything else is reported). Bitmaps rather
/// than unconditional I/O exiting so a port or MSR can be passed through by
/// clearing its bit. `msr_linux` passes [`LINUX_PASSED_MSRS`] (and TSC_AUX
/// where RDTSCP is on, [`TSC_AUX`]) and is used by Linux vCPUs only.
struct Bitmaps {
    io_a: HostPhysAddr,
    io_b: HostPhysAddr,
    msr: HostPhysAddr,
    msr_linux: HostPhysAddr,
}

/// MSRs a Linux vCPU reads and writes without exits, each switched per
/// vCPU by the hardware: the segment bases and SYSENTER MSRs are guest-state
/// fields of the VMCS, PAT has its own VMCS field (load/save PAT
/// controls), and [`SWITCHED_MSRS`] go through the MSR areas.
const LINUX_PASSED_MSRS: [u32; 11] = [
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x277,       // IA32_PAT
    0xc000_0081, // IA32_STAR
    0xc000_0082, // IA32_LSTAR
    0xc000_0083, // IA32_CSTAR
    0xc000_0084, // IA32_FMASK
    0xc000_0100, // IA32_FS_BASE
    0xc000_0101, // IA32_GS_BASE
    0xc000_0102, // IA32_KERNEL_GS_BASE
];

/// IA32_TSC_AUX (RDTSCP, RDPID).
const TSC_AUX: u32 = 0xc000_0103;

/// The MSRs no VMCS field holds that a Linux vCPU owns while it runs: the
/// VM-entry MSR-load area loads them, the VM-exit MSR-store area (the same
/// page) keeps the guest's values, the VM-exit MSR-load area puts the
/// host's back. TSC_AUX comes last and only where RDTSCP is enabled.
const SWITCHED_MSRS: [(u32, &str); 6] = [
    (0xc000_0081, "IA32_STAR"),
    (0xc000_0082, "IA32_LSTAR"),
    (0xc000_0083, "IA32_CSTAR"),
    (0xc000_0084, "IA32_FMASK"),
    (0xc000_0102, "IA32_KERNEL_GS_BASE"),
    (TSC_AUX, "IA32_TSC_AUX"),
];

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
            let msr_linux = page()?;
            // SAFETY: the frame was just filled by `page` and is not yet
            // shared; nothing else refers to it.
            let map = unsafe { &mut *mem::phys::to_virt(msr_linux).cast::<[u8; 4096]>() };
            for index in LINUX_PASSED_MSRS {
                // Every index is in the bitmap's low or high range.
                vmx::pass_through_msr(map, index);
            }
            if rdtscp_offered() {
                vmx::pass_through_msr(map, TSC_AUX);
            }
            Ok(Bitmaps {
                io_a: page()?,
                io_b: page()?,
                msr: page()?,
                msr_linux,
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

/// Whether Linux vCPUs get RDTSCP (and RDPID): the secondary control is
/// offered and the host has the instruction, so IA32_TSC_AUX exists to be
/// switched. Without it both raise #UD in the guest.
fn rdtscp_offered() -> bool {
    cap(msr::PROCBASED_CTLS2) >> 32 & u64::from(ctl::PROC2_ENABLE_RDTSCP) != 0
        && hw::cpuid(0x8000_0001, 0).edx & (1 << 27) != 0
}

/// Access rights (VMCS layout): 64-bit code, flat data, busy 64-bit TSS,
/// and "unusable" for LDTR.
const AR_CODE64: u32 = 0xa09b;
const AR_DATA: u32 = 0xc093;
const AR_TSS64_BUSY: u32 = 0x8b;
const AR_UNUSABLE: u32 = 1 << 16;
const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
const IA32_EFER: u32 = 0xc000_0080;
const IA32_PAT: u32 = 0x277;
const EFER_LME_LMA: u64 = (1 << 8) | (1 << 10);
const RFLAGS_IF: u64 = 1 << 9;

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

/// A Linux vCPU's MSR areas: `guest` is its VM-entry MSR-load and VM-exit
/// MSR-store area (so the guest's values stay in it between runs), `host`
/// its VM-exit MSR-load area. `count` entries of [`SWITCHED_MSRS`] each.
#[derive(Debug)]
struct MsrAreas {
    guest: HostPhysAddr,
    host: HostPhysAddr,
    count: usize,
}

impl MsrAreas {
    /// Fills both areas: the guest's MSRs start at 0 (their reset value),
    /// the host's are what this CPU holds now.
    fn new(count: usize) -> Result<Self, &'static str> {
        let frame = || mem::alloc_frame(FrameSize::Size4K).map_err(|_| "no frame for an MSR area");
        let (guest, host) = (frame()?, frame()?);
        for (i, (index, _)) in SWITCHED_MSRS.iter().take(count).enumerate() {
            let at = |area: HostPhysAddr| HostPhysAddr::new(area.as_u64() + 16 * i as u64);
            // SAFETY: both frames were just handed to us and hold `count`
            // (at most 6) 16-byte entries; every MSR listed exists on a
            // 64-bit CPU (TSC_AUX only counted when RDTSCP is there).
            unsafe {
                mem::phys::write(at(guest), vmx::msr_area_entry(*index, 0));
                mem::phys::write(at(host), vmx::msr_area_entry(*index, hw::rdmsr(*index)));
            }
        }
        Ok(Self { guest, host, count })
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
    /// The event to inject at the next entry: an exception or interrupt
    /// the VM queued, or the event an exit interrupted (IDT-vectoring
    /// info), delivered again.
    event: Option<EntryEvent>,
    /// The primary processor-based controls as built, without
    /// interrupt-window exiting.
    proc_controls: u32,
    /// Whether the CPU offers interrupt-window exiting.
    window_offered: bool,
    /// Interrupt-window exiting wanted for the next entry.
    window: bool,
    /// Interrupt-window exiting as the VMCS holds it.
    window_in_vmcs: bool,
    /// Guest RIP and interruptibility state at the last exit: a RIP moved
    /// since means the VM stepped over the exiting instruction.
    exit_rip: u64,
    exit_interruptibility: u32,
    /// A Linux vCPU's MSR areas (entries referenced by the VMCS).
    msr_areas: Option<MsrAreas>,
}

fn w<F: vmx::VmcsField>(f: F, value: F::Value) -> Result<(), &'static str> {
    super::write(f, value).map_err(|_| "VMWRITE refused a VMCS field")
}

/// The VMCS fields of one segment register.
type SegmentFields = (vmx::Field16, vmx::FieldNatural, vmx::Field32, vmx::Field32);

const CS: SegmentFields = (
    field::GUEST_CS_SELECTOR,
    field::GUEST_CS_BASE,
    field::GUEST_CS_LIMIT,
    field::GUEST_CS_AR,
);
const SS: SegmentFields = (
    field::GUEST_SS_SELECTOR,
    field::GUEST_SS_BASE,
    field::GUEST_SS_LIMIT,
    field::GUEST_SS_AR,
);
const DATA: [SegmentFields; 4] = [
    (
        field::GUEST_DS_SELECTOR,
        field::GUEST_DS_BASE,
        field::GUEST_DS_LIMIT,
        field::GUEST_DS_AR,
    ),
    (
        field::GUEST_ES_SELECTOR,
        field::GUEST_ES_BASE,
        field::GUEST_ES_LIMIT,
        field::GUEST_ES_AR,
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
const TR: SegmentFields = (
    field::GUEST_TR_SELECTOR,
    field::GUEST_TR_BASE,
    field::GUEST_TR_LIMIT,
    field::GUEST_TR_AR,
);
const LDTR: SegmentFields = (
    field::GUEST_LDTR_SELECTOR,
    field::GUEST_LDTR_BASE,
    field::GUEST_LDTR_LIMIT,
    field::GUEST_LDTR_AR,
);

fn write_segment((sel, base, limit, ar): SegmentFields, s: Segment) -> Result<(), &'static str> {
    w(sel, s.selector)?;
    w(base, s.base)?;
    w(limit, s.limit)?;
    w(ar, s.access_rights)
}

fn read_segment((sel, base, limit, ar): SegmentFields) -> Segment {
    Segment {
        selector: super::read(sel).unwrap_or(0),
        base: super::read(base).unwrap_or(0),
        limit: super::read(limit).unwrap_or(0),
        access_rights: super::read(ar).unwrap_or(0),
    }
}

/// The guest state of the current VMCS as the software checks read it.
fn guest_state_view() -> GuestStateView {
    let r = |f| super::read(f).unwrap_or(0);
    GuestStateView {
        entry_controls: super::read(field::ENTRY_CONTROLS).unwrap_or(0),
        cr0: r(field::GUEST_CR0),
        cr4: r(field::GUEST_CR4),
        efer: super::read(field::GUEST_IA32_EFER).unwrap_or(0),
        cr0_fixed: (cap(msr::CR0_FIXED0), cap(msr::CR0_FIXED1)),
        cr4_fixed: (cap(msr::CR4_FIXED0), cap(msr::CR4_FIXED1)),
        cs: read_segment(CS),
        ss: read_segment(SS),
        data: DATA.map(read_segment),
        tr: read_segment(TR),
        ldtr: read_segment(LDTR),
        rip: r(field::GUEST_RIP),
        rflags: r(field::GUEST_RFLAGS),
        interruptibility: super::read(field::GUEST_INTERRUPTIBILITY).unwrap_or(0),
        activity: super::read(field::GUEST_ACTIVITY_STATE).unwrap_or(0),
        entry_event: super::read(field::ENTRY_INTERRUPTION_INFO).unwrap_or(0),
    }
}

/// The controls of one vCPU, from the capability MSRs.
struct Controls {
    pin: u32,
    proc: u32,
    proc2: u32,
    exit: u32,
    entry: u32,
    window_offered: bool,
}

impl Controls {
    fn for_start(linux: bool) -> Result<Self, &'static str> {
        let msrs = ControlMsrs::from_basic(cap(msr::BASIC));
        let proc_cap = cap(msrs.proc);
        let window_offered = proc_cap >> 32 & u64::from(ctl::PROC_INTERRUPT_WINDOW_EXITING) != 0;
        if linux && !window_offered {
            return Err("interrupt-window exiting is not offered");
        }
        let pin = adjust_controls(cap(msrs.pin), ctl::PIN_EXTERNAL_INTERRUPT_EXITING, 0)
            .map_err(|_| "external-interrupt exiting is not offered")?;
        // CR8 exits where offered: without a TPR shadow a guest MOV to CR8
        // would set the host's task priority.
        let proc = adjust_controls(
            proc_cap,
            ctl::PROC_SECONDARY_CONTROLS
                | ctl::PROC_HLT_EXITING
                | ctl::PROC_USE_IO_BITMAPS
                | ctl::PROC_USE_MSR_BITMAPS,
            if linux {
                ctl::PROC_CR8_LOAD_EXITING | ctl::PROC_CR8_STORE_EXITING
            } else {
                0
            },
        )
        .map_err(|_| "the primary controls Thermocline needs are not offered")?;
        if linux && proc & (ctl::PROC_CR3_LOAD_EXITING | ctl::PROC_CR3_STORE_EXITING) != 0 {
            // Linux switches CR3 on every context switch; the VM loop does
            // not emulate MOV CR3.
            return Err("CR3-load/store exiting cannot be turned off (no TRUE control MSRs)");
        }
        let rdtscp = if linux && rdtscp_offered() {
            ctl::PROC2_ENABLE_RDTSCP
        } else {
            0
        };
        let proc2 = adjust_controls(
            cap(msr::PROCBASED_CTLS2),
            ctl::PROC2_ENABLE_EPT | ctl::PROC2_ENABLE_VPID | rdtscp,
            0,
        )
        .map_err(|_| "EPT or VPID is not offered")?;
        let pat = |exit_or_entry| if linux { exit_or_entry } else { 0 };
        let exit = adjust_controls(
            cap(msrs.exit),
            ctl::EXIT_HOST_ADDRESS_SPACE_SIZE
                | ctl::EXIT_SAVE_EFER
                | ctl::EXIT_LOAD_EFER
                | pat(ctl::EXIT_SAVE_PAT | ctl::EXIT_LOAD_PAT),
            0,
        )
        .map_err(|_| "the VM-exit controls Thermocline needs are not offered")?;
        let entry = adjust_controls(
            cap(msrs.entry),
            ctl::ENTRY_IA32E_MODE_GUEST | ctl::ENTRY_LOAD_EFER | pat(ctl::ENTRY_LOAD_PAT),
            0,
        )
        .map_err(|_| "the VM-entry controls Thermocline needs are not offered")?;
        Ok(Self {
            pin,
            proc,
            proc2,
            exit,
            entry,
            window_offered,
        })
    }
}

impl VmxVcpu {
    /// A vCPU of the VM `setup` (its EPT root, its id as the VPID) in the
    /// state `setup.start` names, with registers `boot_regs` (a Linux
    /// vCPU takes RIP, RSP, RSI and RFLAGS from its entry state instead).
    pub fn new(setup: VcpuSetup, boot_regs: GuestRegs) -> Result<Self, &'static str> {
        let linux = match setup.start {
            VcpuStart::Layout => None,
            VcpuStart::Linux64(entry) => Some(entry),
        };
        let ad = cap(msr::EPT_VPID_CAP) & ept_cap::ACCESSED_DIRTY != 0;
        let eptp = eptp(setup.table_root, ad);
        let controls = Controls::for_start(linux.is_some())?;
        let msr_areas = match linux {
            Some(_) => Some(MsrAreas::new(
                if controls.proc2 & ctl::PROC2_ENABLE_RDTSCP != 0 {
                    SWITCHED_MSRS.len()
                } else {
                    SWITCHED_MSRS.len() - 1
                },
            )?),
            None => None,
        };
        let vmcs = Vmcs::new().map_err(|_| "no VMCS")?;
        vmcs.load().map_err(|_| "VMPTRLD failed")?;
        w(field::PIN_BASED_CONTROLS, controls.pin)?;
        w(field::PRIMARY_PROC_CONTROLS, controls.proc)?;
        w(field::SECONDARY_PROC_CONTROLS, controls.proc2)?;
        w(field::EXIT_CONTROLS, controls.exit)?;
        w(field::ENTRY_CONTROLS, controls.entry)?;
        w(field::EXCEPTION_BITMAP, 1 << 6)?;
        w(field::CR3_TARGET_COUNT, 0)?;
        let areas_len = msr_areas.as_ref().map_or(0, |a| a.count as u32);
        w(field::EXIT_MSR_STORE_COUNT, areas_len)?;
        w(field::EXIT_MSR_LOAD_COUNT, areas_len)?;
        w(field::ENTRY_MSR_LOAD_COUNT, areas_len)?;
        if let Some(areas) = &msr_areas {
            w(field::ENTRY_MSR_LOAD_ADDR, areas.guest.as_u64())?;
            w(field::EXIT_MSR_STORE_ADDR, areas.guest.as_u64())?;
            w(field::EXIT_MSR_LOAD_ADDR, areas.host.as_u64())?;
        }
        w(field::ENTRY_INTERRUPTION_INFO, 0)?;
        let maps = bitmaps()?;
        w(field::IO_BITMAP_A, maps.io_a.as_u64())?;
        w(field::IO_BITMAP_B, maps.io_b.as_u64())?;
        w(
            field::MSR_BITMAP,
            if linux.is_some() {
                maps.msr_linux.as_u64()
            } else {
                maps.msr.as_u64()
            },
        )?;
        w(field::EPT_POINTER, eptp)?;
        // One VPID per VM, shared by its vCPUs: they run on one address
        // space, and a flush request reaches each of them through its own
        // INVEPT (`crate::vm`, "TLB flushes with several vCPUs").
        w(
            field::VPID,
            u16::try_from(setup.vm_id).unwrap_or(u16::MAX).max(1),
        )?;
        w(field::VMCS_LINK_POINTER, u64::MAX)?;
        // SAFETY: IA32_EFER and IA32_PAT exist on every 64-bit CPU.
        let (host_efer, host_pat) = unsafe { (hw::rdmsr(IA32_EFER), hw::rdmsr(IA32_PAT)) };
        w(field::HOST_IA32_EFER, host_efer)?;
        w(field::HOST_IA32_PAT, host_pat)?;
        super::write_host_state().map_err(|_| "cannot write the host state")?;
        w(field::GUEST_IA32_PAT, DEFAULT_PAT)?;
        w(field::GUEST_IA32_DEBUGCTL, 0)?;
        w(field::GUEST_IDTR_BASE, 0)?;
        w(field::GUEST_IDTR_LIMIT, 0)?;
        w(field::GUEST_DR7, 0x400)?;
        w(field::GUEST_PENDING_DEBUG, 0)?;
        w(field::GUEST_INTERRUPTIBILITY, 0)?;
        w(field::GUEST_ACTIVITY_STATE, 0)?;
        w(field::GUEST_SYSENTER_CS, 0)?;
        w(field::GUEST_SYSENTER_ESP, 0)?;
        w(field::GUEST_SYSENTER_EIP, 0)?;
        let regs = match linux {
            None => {
                write_layout_guest_state()?;
                // The project's own guests start with RFLAGS.IF set. With
                // external-interrupt exiting a host interrupt exits the guest
                // whatever the guest's IF (SDM "VM-Execution Controls",
                // pin-based); a guest that wants interrupts injected sets up
                // its IDT and clears or sets IF itself. But full-system Bochs
                // 2.7 loads the guest's RFLAGS on VM entry before it marks the
                // CPU as in VMX non-root operation, so with IF clear it masks
                // external interrupts for the whole stay in the guest: a guest
                // spinning without exits was never preempted and its CPU hung
                // (measured: `vmx_vcpus` flush and EXIT cases, both CPUs
                // spinning in the guest 29 emulated seconds after the test's
                // 10 s deadline).
                let mut regs = boot_regs;
                regs.rflags |= RFLAGS_IF;
                regs
            }
            Some(entry) => {
                // Linux's 64-bit entry wants interrupts off (boot.rst); it
                // turns them on itself, and its vCPU has a CPU to itself.
                write_linux64_guest_state(&entry, controls.entry)?;
                GuestRegs {
                    rip: entry.rip,
                    rsp: entry.rsp,
                    rsi: entry.rsi,
                    rflags: entry.rflags,
                    ..GuestRegs::default()
                }
            }
        };
        Ok(Self {
            vmcs,
            cpu: crate::smp::cpu_index(),
            eptp,
            regs,
            launched: false,
            flush_on_entry: true,
            next_rip: None,
            fpu: FxArea::reset(),
            event: None,
            proc_controls: controls.proc,
            window_offered: controls.window_offered,
            window: false,
            window_in_vmcs: false,
            exit_rip: regs.rip,
            exit_interruptibility: 0,
            msr_areas,
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

    /// The names of the VM-entry MSR-load entries, for a failed entry's
    /// qualification.
    fn msr_load_list(&self) -> &'static [(u32, &'static str)] {
        match &self.msr_areas {
            Some(areas) => &SWITCHED_MSRS[..areas.count],
            None => &[],
        }
    }

    fn enter_once(&mut self) -> Result<VmExit, EntryError> {
        let setup = |why| EntryError::Setup(why);
        self.vmcs.load().map_err(|_| setup("VMPTRLD failed"))?;
        w(field::GUEST_RIP, self.regs.rip).map_err(setup)?;
        w(field::GUEST_RSP, self.regs.rsp).map_err(setup)?;
        w(field::GUEST_RFLAGS, self.regs.rflags).map_err(setup)?;
        if self.regs.rip != self.exit_rip
            && self.exit_interruptibility & interruptibility::SHADOW != 0
        {
            self.exit_interruptibility = vmx::after_instruction_skipped(self.exit_interruptibility);
            w(field::GUEST_INTERRUPTIBILITY, self.exit_interruptibility).map_err(setup)?;
        }
        let window = self.window && self.window_offered;
        if window != self.window_in_vmcs {
            let proc = if window {
                self.proc_controls | ctl::PROC_INTERRUPT_WINDOW_EXITING
            } else {
                self.proc_controls
            };
            w(field::PRIMARY_PROC_CONTROLS, proc).map_err(setup)?;
            self.window_in_vmcs = window;
        }
        // Every exit clears the injection field's valid bit: write the
        // event at each entry that has one.
        if let Some(event) = self.event.take() {
            w(field::ENTRY_INTERRUPTION_INFO, event.info).map_err(setup)?;
            w(field::ENTRY_EXCEPTION_ERROR_CODE, event.error_code).map_err(setup)?;
            w(field::ENTRY_INSTRUCTION_LEN, event.instruction_len).map_err(setup)?;
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
        // state, controls computed from the capability MSRs, MSR areas this
        // vCPU owns, and an EPT whose leaves are the VM's own frames
        // (`vm::memory`); `launched` tracks the VMCS launch state.
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
            // The guest never ran: name the broken check from the
            // qualification and the software checks, for the VM's one
            // stop line (`vm` prints the error).
            let named = vmx::describe_entry_failure(
                raw.reason,
                raw.qualification,
                vmx::check_guest_state(&guest_state_view()),
                self.msr_load_list(),
            );
            return Err(EntryError::InvalidState {
                code: u64::from(raw.reason),
                reason: named,
            });
        }
        self.launched = true;
        self.regs.rip = raw.guest_rip;
        self.regs.rsp = super::read(field::GUEST_RSP).unwrap_or(self.regs.rsp);
        self.regs.rflags = super::read(field::GUEST_RFLAGS).unwrap_or(self.regs.rflags);
        self.exit_rip = raw.guest_rip;
        self.exit_interruptibility = super::read(field::GUEST_INTERRUPTIBILITY).unwrap_or(0);
        self.next_rip = why
            .reports_instruction_len()
            .then(|| raw.guest_rip.wrapping_add(u64::from(raw.instruction_len)));
        let vectoring = super::read(field::IDT_VECTORING_INFO).unwrap_or(0);
        let code = super::read(field::IDT_VECTORING_ERROR_CODE).unwrap_or(0);
        self.event = EntryEvent::from_idt_vectoring(vectoring, code, raw.instruction_len);
        Ok(vmx::decode_exit(&raw))
    }
}

/// The boot control state of `hvcore::guest_layout` (64-bit long mode),
/// with the bits VMX pins (CR0.NE, CR4.VMXE); the guest reads CR4 without
/// VMXE through the shadow.
fn write_layout_guest_state() -> Result<(), &'static str> {
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
    let data = Segment {
        selector: layout::DATA_SELECTOR,
        base: 0,
        limit: 0xffff_ffff,
        access_rights: AR_DATA,
    };
    write_segment(SS, data)?;
    for fields in DATA {
        write_segment(fields, data)?;
    }
    write_segment(
        CS,
        Segment {
            selector: layout::CODE_SELECTOR,
            base: 0,
            limit: 0xffff_ffff,
            access_rights: AR_CODE64,
        },
    )?;
    write_segment(
        LDTR,
        Segment {
            access_rights: AR_UNUSABLE,
            ..Segment::default()
        },
    )?;
    write_segment(
        TR,
        Segment {
            selector: 0,
            base: 0,
            limit: 0x67,
            access_rights: AR_TSS64_BUSY,
        },
    )?;
    w(field::GUEST_GDTR_BASE, layout::GDT_GPA)?;
    w(field::GUEST_GDTR_LIMIT, (layout::GDT.len() * 8 - 1) as u32)
}

/// Linux's 64-bit entry state (`hvcore::linux_boot`, boot.rst "64-bit Boot
/// Protocol"): segments from the plan's GDT, CR0/CR4 with the fixed bits
/// and the host owning those (read shadows hold what Linux was given),
/// EFER through the VMCS, the plan's CR3 and GDTR, no IDT.
fn write_linux64_guest_state(
    entry: &hvcore::linux_boot::LinuxEntryState,
    entry_controls: u32,
) -> Result<(), &'static str> {
    let cr0_fixed = (cap(msr::CR0_FIXED0), cap(msr::CR0_FIXED1));
    let cr4_fixed = (cap(msr::CR4_FIXED0), cap(msr::CR4_FIXED1));
    let s = vmx::linux64_guest_state(
        entry,
        &hvcore::linux_boot::GDT,
        entry_controls,
        cr0_fixed,
        cr4_fixed,
    )?;
    w(field::GUEST_CR0, s.cr0)?;
    w(field::GUEST_CR3, entry.cr3)?;
    w(field::GUEST_CR4, s.cr4)?;
    w(
        field::CR0_GUEST_HOST_MASK,
        vmx::host_owned_cr_bits(cr0_fixed.0, cr0_fixed.1),
    )?;
    w(field::CR0_READ_SHADOW, entry.cr0)?;
    w(
        field::CR4_GUEST_HOST_MASK,
        !CR4_GUEST_WRITABLE | vmx::host_owned_cr_bits(cr4_fixed.0, cr4_fixed.1),
    )?;
    w(field::CR4_READ_SHADOW, entry.cr4)?;
    w(field::GUEST_IA32_EFER, entry.efer)?;
    write_segment(CS, s.cs)?;
    write_segment(SS, s.ss)?;
    for (fields, segment) in DATA.into_iter().zip(s.data) {
        write_segment(fields, segment)?;
    }
    write_segment(TR, s.tr)?;
    write_segment(LDTR, s.ldtr)?;
    w(field::GUEST_GDTR_BASE, entry.gdt_base)?;
    w(field::GUEST_GDTR_LIMIT, u32::from(entry.gdt_limit))
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
        // The exception the handler raises replaces a re-queued event:
        // instruction exits, where handlers raise exceptions, are not
        // taken during event delivery, so nothing is lost in practice.
        self.event = Some(EntryEvent::exception(vector, error_code));
    }

    fn interruptibility(&self, pending_vector: Option<u8>) -> Interruptibility {
        Interruptibility {
            pending_vector,
            interrupts_enabled: self.regs.rflags & RFLAGS_IF != 0,
            // The shadow covers the instruction at the exit RIP only.
            shadow: self.regs.rip == self.exit_rip
                && self.exit_interruptibility & interruptibility::SHADOW != 0,
            event_in_flight: self.event.is_some(),
        }
    }

    fn inject_interrupt(&mut self, vector: u8) {
        if let Some(queued) = self.event {
            // `decide` never injects over a queued event; keep the queued
            // one (the PIC has it in service) and say so.
            log::warn!(
                "VMX: interrupt {vector:#x} injected over queued event {:#x}; kept the queued one",
                queued.info
            );
            return;
        }
        self.event = Some(EntryEvent::external_interrupt(vector));
    }

    fn set_interrupt_window(&mut self, on: bool) {
        self.window = on;
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
