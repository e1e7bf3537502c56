//! Scenario `vmx_ept` (full-system Bochs; QEMU has no VMX): VMX with EPT
//! accessed/dirty flags, end to end, on a tiny unrestricted real-mode guest.
//!
//! The guest (at GPA 0x8000) reads the word at 0x9000, writes it to 0xA000,
//! executes VMCALL, then reads 0xC000 (unmapped at first) and executes
//! VMCALL again. The cases check, in order:
//! - VMXON after IA32_FEATURE_CONTROL and the CR0/CR4 fixed bits;
//! - EPT A set on exactly the pages touched (code, read, written), D only on
//!   the written one, nothing on the mapped but untouched 0xB000;
//! - after the host clears A/D and executes INVEPT single-context, the same
//!   guest code sets them again;
//! - a read of an unmapped GPA exits with an EPT violation naming 0xC000 as a
//!   read of a non-present page; mapping it (fault-in) lets the guest finish;
//! - negative: VMRESUME of a never-launched VMCS fails with VM-instruction
//!   error 5, and VMLAUNCH with invalid guest state (RFLAGS bit 1 clear)
//!   exits with reason 0x80000021 (printed with its qualification).
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use hvcore::addr::HostPhysAddr;
use hvcore::ept::{Ept, eptp};
use hvcore::exit::{AccessKind, VmExit};
use hvcore::frame::FrameSize;
use hvcore::pte::{EntryFormat, Level, Perms};
use hvcore::vmx::{
    self, CR0_PE_PG, ControlMsrs, ExitReason, InstructionError, VmFail, adjust_controls, ctl,
    ept_cap, field, msr,
};
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::vmx::{self as hw_vmx, Entered, Gprs, Vmcs};
use kernel::{hw, mem};
use spin::Mutex;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "vmx_ept",
    cases: &[
        TestCase {
            name: "vmxon",
            run: vmxon,
        },
        TestCase {
            name: "ept_ad_on_exactly_the_touched_pages",
            run: ad_on_touched_pages,
        },
        TestCase {
            name: "cleared_ad_come_back_after_invept",
            run: ad_after_invept,
        },
        TestCase {
            name: "ept_violation_then_fault_in",
            run: ept_violation_fault_in,
        },
        TestCase {
            name: "vmresume_unlaunched_fails_with_error_5",
            run: vmresume_unlaunched,
        },
        TestCase {
            name: "bad_guest_state_fails_entry",
            run: bad_guest_state,
        },
    ],
};

const CODE_GPA: u64 = 0x8000;
const READ_GPA: u64 = 0x9000;
const WRITE_GPA: u64 = 0xa000;
const UNTOUCHED_GPA: u64 = 0xb000;
const FAULT_GPA: u64 = 0xc000;
const VPID: u16 = 1;

/// mov ax,[0x9000]; mov [0xa000],ax; vmcall; mov ax,[0xc000]; vmcall; hlt
const GUEST_CODE: [u8; 16] = [
    0xa1, 0x00, 0x90, 0xa3, 0x00, 0xa0, 0x0f, 0x01, 0xc1, 0xa1, 0x00, 0xc0, 0x0f, 0x01, 0xc1, 0xf4,
];
const SECOND_PART: u64 = 9;

struct Setup {
    eptp: u64,
    /// Leaf table (EPT PT) covering GPA [0, 2 MiB).
    pt: HostPhysAddr,
    vmcs: Vmcs,
    gprs: Gprs,
    launched: bool,
}

static SETUP: Mutex<Option<Setup>> = Mutex::new(None);

fn frame() -> HostPhysAddr {
    let f = mem::alloc_frame(FrameSize::Size4K).expect("a free frame");
    // SAFETY: the frame was just handed to this scenario.
    unsafe { mem::phys::zero(f, 4096) };
    f
}

fn entry_at(table: HostPhysAddr, index: u64) -> HostPhysAddr {
    HostPhysAddr::new(table.as_u64() + index * 8)
}

fn read_entry(table: HostPhysAddr, index: u64) -> u64 {
    // SAFETY: EPT tables are frames this scenario owns.
    unsafe { mem::phys::read(entry_at(table, index)) }
}

fn write_entry(table: HostPhysAddr, index: u64, value: u64) {
    // SAFETY: EPT tables are frames this scenario owns; the guest is not
    // running while the host edits them.
    unsafe { mem::phys::write(entry_at(table, index), value) }
}

fn map_page(pt: HostPhysAddr, gpa: u64) -> HostPhysAddr {
    let page = frame();
    write_entry(
        pt,
        gpa >> 12,
        Ept::make_leaf(page, Level::PAGE_4K, Perms::RWX),
    );
    page
}

/// (A, D) of the EPT leaf of `gpa`.
fn ad(pt: HostPhysAddr, gpa: u64) -> (bool, bool) {
    let e = read_entry(pt, gpa >> 12);
    (e & Ept::ACCESSED != 0, e & Ept::DIRTY != 0)
}

fn cap(index: u32) -> u64 {
    // SAFETY: VMX capability MSRs exist once VMXON succeeded.
    unsafe { hw::rdmsr(index) }
}

fn vmxon() {
    hw_vmx::enable_on_this_cpu().unwrap_or_else(|e| panic!("VMXON: {e}"));
    let fc = cap(msr::FEATURE_CONTROL);
    assert_eq!(
        fc & 5,
        5,
        "IA32_FEATURE_CONTROL locked with VMX outside SMX"
    );
    let ept = cap(msr::EPT_VPID_CAP);
    log::info!("IA32_VMX_EPT_VPID_CAP {ept:#x}, IA32_FEATURE_CONTROL {fc:#x}");
    assert_ne!(
        ept & ept_cap::ACCESSED_DIRTY,
        0,
        "the CPU offers EPT A/D flags"
    );
    assert_ne!(
        ept & ept_cap::INVEPT_SINGLE_CONTEXT,
        0,
        "single-context INVEPT"
    );
    // Idempotent: a second call finds VMX on.
    hw_vmx::enable_on_this_cpu().expect("second enable is a no-op");
}

/// Builds the EPT (0x8000 code, 0x9000, 0xA000, 0xB000 mapped; 0xC000 not),
/// the guest pages and a VMCS for the real-mode guest.
fn build() -> Setup {
    let pml4 = frame();
    let pdpt = frame();
    let pd = frame();
    let pt = frame();
    write_entry(pml4, 0, Ept::make_table(pdpt));
    write_entry(pdpt, 0, Ept::make_table(pd));
    write_entry(pd, 0, Ept::make_table(pt));
    // `make_table` pre-sets A on the upper levels; clear it so the test can
    // see the walker set it.
    for (table, index) in [(pml4, 0), (pdpt, 0), (pd, 0)] {
        write_entry(table, index, read_entry(table, index) & !Ept::ACCESSED);
    }
    let code = map_page(pt, CODE_GPA);
    let data = map_page(pt, READ_GPA);
    map_page(pt, WRITE_GPA);
    map_page(pt, UNTOUCHED_GPA);
    // SAFETY: fresh frames owned by this scenario.
    unsafe {
        mem::phys::bytes_mut(code, 4096)[..GUEST_CODE.len()].copy_from_slice(&GUEST_CODE);
        mem::phys::write(data, 0x1234u16);
    }
    let eptp = eptp(pml4, true);
    let vmcs = Vmcs::new().expect("VMCS region");
    vmcs.load().expect("VMPTRLD");
    write_controls(eptp);
    hw_vmx::write_host_state().unwrap_or_else(|e| panic!("host state: {e}"));
    write_guest_state(CODE_GPA);
    Setup {
        eptp,
        pt,
        vmcs,
        gprs: Gprs::default(),
        launched: false,
    }
}

fn write_controls(eptp: u64) {
    let msrs = ControlMsrs::from_basic(cap(msr::BASIC));
    let pin = adjust_controls(cap(msrs.pin), 0, 0).expect("pin-based controls");
    let proc = adjust_controls(
        cap(msrs.proc),
        ctl::PROC_SECONDARY_CONTROLS | ctl::PROC_HLT_EXITING,
        0,
    )
    .expect("primary controls");
    let proc2 = adjust_controls(
        cap(msr::PROCBASED_CTLS2),
        ctl::PROC2_ENABLE_EPT | ctl::PROC2_UNRESTRICTED_GUEST | ctl::PROC2_ENABLE_VPID,
        0,
    )
    .expect("EPT, VPID and unrestricted guest");
    let exit = adjust_controls(cap(msrs.exit), ctl::EXIT_HOST_ADDRESS_SPACE_SIZE, 0)
        .expect("exit controls");
    let entry = adjust_controls(cap(msrs.entry), 0, 0).expect("entry controls");
    let w = |r: Result<(), VmFail>| r.unwrap_or_else(|e| panic!("VMWRITE: {e}"));
    w(hw_vmx::write(field::PIN_BASED_CONTROLS, pin));
    w(hw_vmx::write(field::PRIMARY_PROC_CONTROLS, proc));
    w(hw_vmx::write(field::SECONDARY_PROC_CONTROLS, proc2));
    w(hw_vmx::write(field::EXIT_CONTROLS, exit));
    w(hw_vmx::write(field::ENTRY_CONTROLS, entry));
    w(hw_vmx::write(field::EXCEPTION_BITMAP, 0));
    w(hw_vmx::write(field::CR3_TARGET_COUNT, 0));
    w(hw_vmx::write(field::EXIT_MSR_STORE_COUNT, 0));
    w(hw_vmx::write(field::EXIT_MSR_LOAD_COUNT, 0));
    w(hw_vmx::write(field::ENTRY_MSR_LOAD_COUNT, 0));
    w(hw_vmx::write(field::ENTRY_INTERRUPTION_INFO, 0));
    w(hw_vmx::write(field::EPT_POINTER, eptp));
    w(hw_vmx::write(field::VPID, VPID));
    // The guest owns CR0 except the bits VMX pins; it sees CR4.VMXE clear.
    w(hw_vmx::write(field::CR0_GUEST_HOST_MASK, 0));
    w(hw_vmx::write(field::CR4_GUEST_HOST_MASK, vmx::CR4_VMXE));
    w(hw_vmx::write(field::CR4_READ_SHADOW, 0));
    w(hw_vmx::write(field::VMCS_LINK_POINTER, u64::MAX));
}

/// Real mode at `rip`, flat 64 KiB segments at base 0 (unrestricted guest
/// lifts the CR0.PE/PG fixed bits; CR0.NE and CR4.VMXE stay).
fn write_guest_state(rip: u64) {
    let cr0 = vmx::apply_fixed(
        0x10,
        cap(msr::CR0_FIXED0) & !CR0_PE_PG,
        cap(msr::CR0_FIXED1),
    );
    let cr4 = vmx::apply_fixed(0, cap(msr::CR4_FIXED0), cap(msr::CR4_FIXED1));
    let w = |r: Result<(), VmFail>| r.unwrap_or_else(|e| panic!("VMWRITE: {e}"));
    w(hw_vmx::write(field::GUEST_CR0, cr0));
    w(hw_vmx::write(field::GUEST_CR3, 0));
    w(hw_vmx::write(field::GUEST_CR4, cr4));
    w(hw_vmx::write(field::CR0_READ_SHADOW, cr0));
    let segs = [
        (
            field::GUEST_ES_SELECTOR,
            field::GUEST_ES_BASE,
            field::GUEST_ES_LIMIT,
            field::GUEST_ES_AR,
            0x93,
        ),
        (
            field::GUEST_CS_SELECTOR,
            field::GUEST_CS_BASE,
            field::GUEST_CS_LIMIT,
            field::GUEST_CS_AR,
            0x9b,
        ),
        (
            field::GUEST_SS_SELECTOR,
            field::GUEST_SS_BASE,
            field::GUEST_SS_LIMIT,
            field::GUEST_SS_AR,
            0x93,
        ),
        (
            field::GUEST_DS_SELECTOR,
            field::GUEST_DS_BASE,
            field::GUEST_DS_LIMIT,
            field::GUEST_DS_AR,
            0x93,
        ),
        (
            field::GUEST_FS_SELECTOR,
            field::GUEST_FS_BASE,
            field::GUEST_FS_LIMIT,
            field::GUEST_FS_AR,
            0x93,
        ),
        (
            field::GUEST_GS_SELECTOR,
            field::GUEST_GS_BASE,
            field::GUEST_GS_LIMIT,
            field::GUEST_GS_AR,
            0x93,
        ),
    ];
    for (sel, base, limit, ar, rights) in segs {
        w(hw_vmx::write(sel, 0));
        w(hw_vmx::write(base, 0));
        w(hw_vmx::write(limit, 0xffff));
        w(hw_vmx::write(ar, rights));
    }
    // LDTR unusable (bit 16); TR a busy 32-bit TSS, as VM entry demands.
    w(hw_vmx::write(field::GUEST_LDTR_SELECTOR, 0));
    w(hw_vmx::write(field::GUEST_LDTR_BASE, 0));
    w(hw_vmx::write(field::GUEST_LDTR_LIMIT, 0));
    w(hw_vmx::write(field::GUEST_LDTR_AR, 1 << 16));
    w(hw_vmx::write(field::GUEST_TR_SELECTOR, 0));
    w(hw_vmx::write(field::GUEST_TR_BASE, 0));
    w(hw_vmx::write(field::GUEST_TR_LIMIT, 0xffff));
    w(hw_vmx::write(field::GUEST_TR_AR, 0x8b));
    w(hw_vmx::write(field::GUEST_GDTR_BASE, 0));
    w(hw_vmx::write(field::GUEST_GDTR_LIMIT, 0xffff));
    w(hw_vmx::write(field::GUEST_IDTR_BASE, 0));
    w(hw_vmx::write(field::GUEST_IDTR_LIMIT, 0xffff));
    w(hw_vmx::write(field::GUEST_DR7, 0x400));
    w(hw_vmx::write(field::GUEST_RSP, 0));
    w(hw_vmx::write(field::GUEST_RIP, rip));
    w(hw_vmx::write(field::GUEST_RFLAGS, 0x2));
    w(hw_vmx::write(field::GUEST_PENDING_DEBUG, 0));
    w(hw_vmx::write(field::GUEST_IA32_DEBUGCTL, 0));
    w(hw_vmx::write(field::GUEST_INTERRUPTIBILITY, 0));
    w(hw_vmx::write(field::GUEST_ACTIVITY_STATE, 0));
    w(hw_vmx::write(field::GUEST_SYSENTER_CS, 0));
    w(hw_vmx::write(field::GUEST_SYSENTER_ESP, 0));
    w(hw_vmx::write(field::GUEST_SYSENTER_EIP, 0));
}

/// Enters the guest and decodes the exit.
fn run(s: &mut Setup) -> (ExitReason, VmExit) {
    // SAFETY: the VMCS is current, with host state of this CPU, accepted
    // controls and an EPT that maps only the scenario's own frames.
    match unsafe { hw_vmx::enter(&mut s.gprs, s.launched) } {
        Entered::Exited => {}
        Entered::Failed(e) => panic!("VM entry: {e}"),
    }
    s.launched = true;
    let raw = hw_vmx::raw_exit(&s.gprs).expect("exit fields");
    let reason = ExitReason(raw.reason);
    log::info!(
        "VM exit: reason {:#x} ({}), qualification {:#x}, GPA {:#x}, guest RIP {:#x}",
        raw.reason,
        reason.name(),
        raw.qualification,
        raw.guest_physical,
        raw.guest_rip
    );
    (reason, vmx::decode_exit(&raw))
}

fn expect_ad_pattern(s: &Setup, when: &str) {
    let got = [CODE_GPA, READ_GPA, WRITE_GPA, UNTOUCHED_GPA].map(|g| ad(s.pt, g));
    log::info!("{when}: EPT (A, D) of 0x8000/0x9000/0xA000/0xB000 = {got:?}");
    assert_eq!(
        got,
        [(true, false), (true, false), (true, true), (false, false)],
        "A on the code, read and written pages, D on the written page only"
    );
}

fn ad_on_touched_pages() {
    let mut s = build();
    let (reason, exit) = run(&mut s);
    assert_eq!(
        exit,
        VmExit::Hypercall,
        "the guest reached its VMCALL ({})",
        reason.name()
    );
    let written = map_page_lookup(&s, WRITE_GPA);
    assert_eq!(written, 0x1234, "the guest copied the word");
    expect_ad_pattern(&s, "first run");
    *SETUP.lock() = Some(s);
}

/// The word at `gpa` through the EPT leaf.
fn map_page_lookup(s: &Setup, gpa: u64) -> u16 {
    let leaf = read_entry(s.pt, gpa >> 12);
    let frame = HostPhysAddr::new(leaf & 0x000f_ffff_ffff_f000);
    // SAFETY: a guest page frame owned by this scenario; the guest is stopped.
    unsafe { mem::phys::read(frame) }
}

fn ad_after_invept() {
    let mut guard = SETUP.lock();
    let s = guard.as_mut().expect("the previous case set up the guest");
    for gpa in [CODE_GPA, READ_GPA, WRITE_GPA, UNTOUCHED_GPA] {
        let e = read_entry(s.pt, gpa >> 12);
        write_entry(s.pt, gpa >> 12, e & !(Ept::ACCESSED | Ept::DIRTY));
    }
    assert_eq!(ad(s.pt, CODE_GPA), (false, false));
    hw_vmx::invept_single_context(s.eptp).unwrap_or_else(|e| panic!("INVEPT: {e}"));
    hw_vmx::write(field::GUEST_RIP, CODE_GPA).expect("rewind the guest");
    let (_, exit) = run(s);
    assert_eq!(exit, VmExit::Hypercall);
    expect_ad_pattern(s, "after INVEPT and a second run");
}

fn ept_violation_fault_in() {
    let mut guard = SETUP.lock();
    let s = guard.as_mut().expect("the guest is set up");
    hw_vmx::write(field::GUEST_RIP, CODE_GPA + SECOND_PART).expect("skip to the second part");
    let (reason, exit) = run(s);
    let VmExit::NestedPageFault(fault) = exit else {
        panic!(
            "expected an EPT violation, got {} ({exit:?})",
            reason.name()
        )
    };
    assert_eq!(fault.gpa.as_u64(), FAULT_GPA);
    assert_eq!(fault.access, AccessKind::Read);
    assert!(!fault.present && !fault.in_guest_walk, "{fault:?}");
    map_page(s.pt, FAULT_GPA);
    let (_, exit) = run(s);
    assert_eq!(
        exit,
        VmExit::Hypercall,
        "the guest finished after the fault-in"
    );
    assert_eq!(
        ad(s.pt, FAULT_GPA),
        (true, false),
        "the faulted-in page is accessed, clean"
    );
}

fn vmresume_unlaunched() {
    let vmcs = Vmcs::new().expect("VMCS");
    vmcs.load().expect("VMPTRLD");
    let mut gprs = Gprs::default();
    // SAFETY: VMRESUME of a clear VMCS fails before any state is used.
    let got = unsafe { hw_vmx::enter(&mut gprs, true) };
    log::info!("VMRESUME of a clear VMCS: {got:?}");
    assert_eq!(got, Entered::Failed(VmFail::Valid(InstructionError(5))));
    // Back to the scenario's VMCS for the next case.
    let guard = SETUP.lock();
    guard
        .as_ref()
        .expect("set up")
        .vmcs
        .load()
        .expect("VMPTRLD");
}

fn bad_guest_state() {
    let mut guard = SETUP.lock();
    let s = guard.as_mut().expect("the guest is set up");
    // A fresh launch of the same VMCS, with RFLAGS bit 1 (reserved, must be 1) clear.
    s.vmcs.clear().expect("VMCLEAR");
    s.vmcs.load().expect("VMPTRLD");
    s.launched = false;
    hw_vmx::write(field::GUEST_RIP, CODE_GPA).expect("rip");
    hw_vmx::write(field::GUEST_RFLAGS, 0).expect("bad rflags");
    // SAFETY: as in `run`; the entry is refused by the CPU's guest-state checks.
    let got = unsafe { hw_vmx::enter(&mut s.gprs, false) };
    assert_eq!(
        got,
        Entered::Exited,
        "an invalid guest state is a failed entry, not VMfail"
    );
    let reason = hw_vmx::read(field::EXIT_REASON).expect("exit reason");
    let qualification = hw_vmx::read(field::EXIT_QUALIFICATION).expect("qualification");
    log::info!(
        "VM entry with RFLAGS=0: exit reason {reason:#x} ({}), qualification {qualification:#x}",
        ExitReason(reason).name()
    );
    assert!(ExitReason(reason).entry_failed());
    assert_eq!(ExitReason(reason).basic(), vmx::reason::INVALID_GUEST_STATE);
}
