//! Running guests, vendor-neutral: the vendor trait, the VM (memory,
//! devices, status), and the exit handlers written once for SVM and VMX.
//!
//! # The vendor trait
//! [`Extension`] is one virtualization extension (SVM here; VMX conforms
//! to it), chosen once at boot from CPUID ([`backend`]). It names the
//! second-level table format its VMs use and creates [`VirtCpu`]s. A
//! vCPU runs the guest until the next exit and returns it as the shared
//! `hvcore::exit::VmExit`; [`run_vcpu`] handles every exit the same way for
//! both vendors.
//!
//! # What a guest gets (docs/guests.md)
//! RAM `[0, ram_bytes)` faulted in on first touch, the boot state of
//! `hvcore::guest_layout`, a 16550 UART at COM1 whose lines are printed as
//! `[vm NAME] ...` (IN/OUT and INS/OUTS through `hvcore::string_io`), the
//! hypercalls of docs/hypercalls.md, and nothing else.
//!
//! # Several vCPUs
//! A VM made by [`Vm::new_smp`] may have up to `vcpus` vCPUs. The boot
//! vCPU runs from [`run_on_this_cpu`]; the guest starts the others with
//! `VCPU_START`, each on a kernel thread pinned to a CPU (`spawn_vcpu`,
//! spread over the CPUs, CPU 0 left to the aging thread when the others
//! are enough), in the boot control state with a fresh register file. The
//! VM is one unit: the first vCPU that stops (EXIT, a fault that stops the
//! VM, a host request) gives the VM its reason (`Vm::record_stop`) and
//! asks the others to stop: a vCPU in the guest is kicked out with an IPI
//! (physical interrupts exit the guest), a halted one is unparked. The boot
//! vCPU's thread joins the others, then reports the stop once, naming the
//! vCPU. Per-vCPU state the others touch lives in a `VcpuSlot`.
//!
//! HLT waits: the thread parks (`sched::park_until`) until a `WAKE`, the
//! vCPU's `SET_TIMER` deadline or a stop request. No interrupt is injected:
//! the guest loops on its own condition. When every live vCPU waits in HLT
//! with no deadline and no pending `WAKE`, nothing can ever end the waits
//! (only a running vCPU sends `WAKE`), and the VM stops with the halt
//! reason instead of hanging. The count is exact, not a heuristic: a vCPU
//! counts itself idle before its last check of its wake flag, and a `WAKE`
//! uncounts its target before the sender can itself become idle, so the
//! count equals the live vCPUs only when none is running or about to run.
//!
//! # TLB flushes with several vCPUs
//! Claim: when a flush request has been made ([`Vm::request_tlb_flush`])
//! and every CPU has then taken an interrupt (`reclaim::Shootdown`, the
//! reclaimer's flush, does exactly this with `smp::run_on_all`), no vCPU of
//! the VM runs guest code with a translation cached before the request.
//! 1. The request advances the VM's generation. Every vCPU keeps its own
//!    last-flushed generation (`VcpuSlot::seen_generation`); one shared
//!    value would let the first vCPU that sees a request hide it from the
//!    rest. A vCPU compares before every entry and, on a change, has the
//!    entry flush its translations: SVM sets TLB control to flush its ASID
//!    (an ASID per vCPU, or the shared last one that flushes at every
//!    entry), VMX does INVEPT single-context for the VM's EPTP (one VPID
//!    per VM, shared by its vCPUs; INVEPT drops the combined mappings of
//!    every VPID on that CPU). So each vCPU's own tag is flushed on its own
//!    CPU, whatever the sharing.
//! 2. The comparison and VMRUN/VM entry happen with interrupts off. A
//!    vCPU that compared before the request and has not entered yet holds
//!    the IPI pending, so the shootdown cannot complete; it enters, the
//!    pending interrupt makes it exit before any guest instruction, and it
//!    compares again before the next entry. A vCPU in the guest when the
//!    IPI comes exits; one parked in HLT or not started yet is not in the
//!    guest and compares before it enters.
//! 3. `run_on_all` interrupts every online CPU, and vCPU threads never
//!    leave the CPU they are pinned to, so every CPU a vCPU of the VM may
//!    run on is covered.
//!
//! Not covered by an emulator (QEMU flushes at every VMRUN): this argument
//! is checked in QEMU only as far as `test_svm_vcpus` shows each running
//! vCPU flushing for the new generation after a shootdown.
//!
//! # Misbehaviour (one line each, `vm NAME: ...`)
//! | guest does | hypervisor does |
//! |---|---|
//! | touches GPA outside RAM | reports it, VM stopped |
//! | port nobody emulates | IN reads all ones, OUT dropped, reported, continues |
//! | unknown MSR, EFER.SVME | #GP injected, reported, continues |
//! | VMX/SVM instruction | #UD injected, reported, continues |
//! | XSETBV, CR4.OSXSAVE (extended state is not offered) | #GP injected, reported, continues |
//! | triple fault | reported, VM stopped |
//! | HLT with no deadline while every other vCPU also waits with none (or there is no other) | VM stopped (nothing can wake it) |
//! | HLT otherwise | waits for `WAKE`, its deadline or a stop |
//! | string I/O on an unmapped, outside-RAM or FS/GS-relative address | reported, VM stopped |
//! | bad `VCPU_START`/`WAKE`/`SET_TIMER` | error in RAX, reported, continues |
//! | EXIT or a stopping fault on any vCPU | the whole VM stops, reported once naming the vCPU |
//! | never exits | preempted by host interrupts; stopped on request |
//! | bad hypercall | error in RAX, reported, continues |
//! | undecodable intercepted instruction | reported, VM stopped |
//!
//! Neighbours: `crate::svm` (the SVM extension), [`memory`] (NPT/EPT
//! backed RAM), [`images`] (the guest binaries), `hvcore::{exit, insn,
//! hypercall, uart, guest_walk, guest_layout}` (the pure logic).

pub mod images;
pub mod memory;

use alloc::boxed::Box;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use hvcore::addr::GuestPhysAddr;
use hvcore::cpu_features::Backend;
use hvcore::exit::{AccessKind, IoAccess, IoDir, VirtInsn, VmExit};
use hvcore::flush::TlbFlush;
use hvcore::guest_cpu;
use hvcore::guest_layout as layout;
use hvcore::guest_walk::{self, GuestPaging, GuestPhysRead, GuestPhysWrite};
use hvcore::hypercall::{self, Hypercall, HypercallError, HypercallRegs, VmShape};
use hvcore::insn::{self, Insn};
use hvcore::pte::EntryFormat;
use hvcore::string_io;
use hvcore::uart::{self, LineConsole};
use memory::{FaultOutcome, GuestMemory};
use x86_64::instructions::interrupts;

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

/// One virtualization extension, chosen once at boot.
pub trait Extension {
    /// The second-level table format of its VMs.
    type Format: EntryFormat;
    /// Its vCPUs.
    type Vcpu: VirtCpu;
    /// "SVM" or "VMX".
    const NAME: &'static str;
    /// Turns the extension on for the calling CPU (idempotent).
    fn enable_on_this_cpu() -> Result<(), &'static str>;
    /// A vCPU of `vm` in the boot control state (`hvcore::guest_layout`)
    /// with registers `regs`.
    fn create_vcpu_with(vm: &Vm<Self::Format>, regs: GuestRegs)
    -> Result<Self::Vcpu, &'static str>;
    /// A vCPU of `vm` in the boot state: the boot vCPU.
    fn create_vcpu(vm: &Vm<Self::Format>) -> Result<Self::Vcpu, &'static str> {
        Self::create_vcpu_with(vm, vm.boot_regs())
    }
}

/// The SVM extension.
#[derive(Debug)]
pub struct Svm;

impl Extension for Svm {
    type Format = hvcore::npt::Npt;
    type Vcpu = crate::svm::SvmVcpu;
    const NAME: &'static str = "SVM";
    fn enable_on_this_cpu() -> Result<(), &'static str> {
        crate::svm::enable_on_this_cpu()
    }
    fn create_vcpu_with(
        vm: &Vm<Self::Format>,
        regs: GuestRegs,
    ) -> Result<Self::Vcpu, &'static str> {
        crate::svm::SvmVcpu::new(vm.memory.tables().root(), regs)
    }
}

static BACKEND: spin::Once<Option<Backend>> = spin::Once::new();

/// The backend this machine runs guests with, decided once from CPUID.
pub fn backend() -> Option<Backend> {
    *BACKEND.call_once(|| crate::cpu::read().features.backend())
}

/// What a VM is made of.
#[derive(Clone, Copy, Debug)]
pub struct VmConfig {
    /// Printed in every line about the VM.
    pub name: &'static str,
    /// The flat guest image, loaded at `layout::IMAGE_GPA`.
    pub image: &'static [u8],
    /// RAM size; a multiple of 4 KiB, at least `layout::MIN_RAM_BYTES`.
    pub ram_bytes: u64,
    /// Back RAM with 2 MiB pages where possible.
    pub huge_pages: bool,
    /// Passed to the guest in RSI.
    pub boot_arg: u64,
}

/// Why a VM stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest called EXIT.
    Exited(u64),
    /// The guest touched guest-physical memory outside its RAM.
    OutsideRam {
        /// The address.
        gpa: u64,
        /// How.
        access: AccessKind,
        /// Where.
        rip: u64,
    },
    /// Triple fault.
    TripleFault {
        /// RIP at the shutdown.
        rip: u64,
    },
    /// HLT with no way to wake up.
    Halted {
        /// RIP after the HLT.
        rip: u64,
    },
    /// An intercepted instruction could not be decoded to step over it.
    Undecodable {
        /// Its RIP.
        rip: u64,
    },
    /// String I/O whose memory operand the guest cannot reach.
    StringIo {
        /// RIP of the INS/OUTS.
        rip: u64,
        /// The guest-virtual address of the element (0 when `why` is
        /// not about an address).
        va: u64,
        /// What was wrong.
        why: &'static str,
    },
    /// The CPU refused to enter the guest.
    EntryFailed(EntryError),
    /// No frame for guest RAM.
    OutOfMemory {
        /// The address that needed one.
        gpa: u64,
    },
    /// An exit the hypervisor does not handle.
    Unhandled {
        /// The vendor-neutral exit.
        exit: VmExit,
        /// Its RIP.
        rip: u64,
    },
    /// The host asked the VM to stop.
    Killed,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Exited(code) => write!(f, "guest exited with code {code:#x}"),
            Self::OutsideRam { gpa, access, rip } => write!(
                f,
                "guest {} outside its RAM at GPA {gpa:#x} (RIP {rip:#x})",
                match access {
                    AccessKind::Read => "read",
                    AccessKind::Write => "wrote",
                    AccessKind::Execute => "executed",
                }
            ),
            Self::TripleFault { rip } => {
                write!(f, "guest triple-faulted (shutdown) at RIP {rip:#x}")
            }
            Self::Halted { rip } => {
                write!(f, "guest halted with nothing to wake it (RIP {rip:#x})")
            }
            Self::Undecodable { rip } => {
                write!(
                    f,
                    "cannot decode the intercepted instruction at RIP {rip:#x}"
                )
            }
            Self::StringIo { rip, va, why } => {
                write!(f, "string I/O at RIP {rip:#x}: guest address {va:#x} {why}")
            }
            Self::EntryFailed(e) => write!(f, "{e}"),
            Self::OutOfMemory { gpa } => write!(f, "no host frame for guest RAM at GPA {gpa:#x}"),
            Self::Unhandled { exit, rip } => write!(f, "unhandled exit {exit:?} at RIP {rip:#x}"),
            Self::Killed => write!(f, "stopped by the host"),
        }
    }
}

/// Something the guest told the hypervisor, for hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// `MARK tag`.
    Mark(u64),
    /// `REPORT_TOUCHED`: bit i of `bitmap` is page `first_pfn + i`.
    Touched {
        /// The guest's interval index.
        interval: u64,
        /// First page frame number.
        first_pfn: u64,
        /// Pages described.
        page_count: u64,
        /// The bitmap, as the guest wrote it.
        bitmap: Vec<u64>,
    },
    /// `CHECKSUM_RESULT`.
    Checksum {
        /// Pages verified.
        pages_checked: u64,
        /// Mismatched words.
        mismatches: u64,
    },
}

/// Called on guest events while the vCPU waits (the guest is stopped in
/// the exit); after it returns, the guest's TLB is flushed.
pub type Hook<F> = &'static (dyn Fn(&Vm<F>, &GuestEvent) + Sync);

/// Counters of one VM.
#[derive(Debug, Default)]
pub struct VmStats {
    /// Exits handled.
    pub exits: AtomicU64,
    /// Nested page faults that backed a page.
    pub faults_served: AtomicU64,
    /// Hypercalls made (good or bad).
    pub hypercalls: AtomicU64,
    /// Misbehaviours reported.
    pub reports: AtomicU64,
    /// HLTs that waited for a wake-up or a deadline.
    pub halts: AtomicU64,
    /// Elements moved by emulated string I/O.
    pub string_io_elements: AtomicU64,
}

/// Lines about one VM's misbehaviour printed before they are only counted.
const REPORT_LINES_MAX: u64 = 32;

static NEXT_VM_ID: AtomicU32 = AtomicU32::new(1);

/// A virtual machine.
pub struct Vm<F: EntryFormat> {
    /// Unique id (also passed to the guest in RDX).
    pub id: u32,
    /// What it was made from.
    pub config: VmConfig,
    /// Its RAM.
    pub memory: GuestMemory<F>,
    /// Counters.
    pub stats: VmStats,
    uart: spin::Mutex<LineConsole>,
    stop_requested: AtomicBool,
    tlb_generation: AtomicU64,
    hook: Option<Hook<F>>,
    stopped: spin::Mutex<Option<StopReason>>,
    checksum: spin::Mutex<Option<(u64, u64)>>,
    exit_work: spin::Once<ExitWork>,
    /// One per vCPU the VM may have; index 0 is the boot vCPU.
    vcpus: Box<[VcpuSlot]>,
    /// vCPUs whose run loop has not returned yet.
    live_vcpus: AtomicU32,
    /// vCPUs waiting in HLT that only a `WAKE` could end (`VcpuSlot::idle`):
    /// when they are all the live vCPUs, nothing can ever run again.
    idle_vcpus: AtomicU32,
    /// The first vCPU's reason to stop, and which vCPU: the VM's.
    first_stop: spin::Mutex<Option<(StopReason, u32)>>,
    /// The threads of the vCPUs other than the boot vCPU, joined by it.
    threads: spin::Mutex<Vec<crate::sched::JoinHandle>>,
    /// This VM as an `Arc`, for vCPU threads (only VMs made by
    /// [`Vm::new_smp`], which are the only ones that may start vCPUs).
    this: spin::Once<Weak<Self>>,
    /// Starts a vCPU thread; set by the boot vCPU for its vendor.
    spawner: spin::Once<Spawner<F>>,
}

/// Starts vCPU `index` of the VM on a new thread with `regs`.
type Spawner<F> = fn(&Arc<Vm<F>>, u32, GuestRegs) -> crate::sched::JoinHandle;

/// Most vCPUs one VM may have.
pub const MAX_VCPUS: u32 = 64;

const SLOT_FREE: u8 = 0;
const SLOT_RUNNING: u8 = 1;
const SLOT_DONE: u8 = 2;

/// One vCPU of a VM, as the other vCPUs and the host see it.
#[derive(Debug, Default)]
struct VcpuSlot {
    /// `SLOT_FREE` until started, `SLOT_RUNNING`, then `SLOT_DONE`.
    state: AtomicU8,
    /// The CPU its thread is pinned to.
    cpu: AtomicUsize,
    /// A `WAKE` that no HLT consumed yet.
    wake: AtomicBool,
    /// In HLT with no deadline and no pending `WAKE`, counted in
    /// `Vm::idle_vcpus`. Cleared by the vCPU when it leaves the wait, or by
    /// the `WAKE` that ends it (whoever clears it uncounts it).
    idle: AtomicBool,
    /// The armed `SET_TIMER` deadline (`TIME_NS` clock), 0 when none.
    deadline_ns: AtomicU64,
    /// Its thread, to unpark it from HLT.
    thread: spin::Mutex<Option<Arc<crate::sched::Thread>>>,
    /// The VM's TLB generation this vCPU last flushed for (each vCPU has
    /// its own: one shared value would let the first vCPU to see a request
    /// hide it from the others).
    seen_generation: AtomicU64,
}

/// Periodic work a vCPU runs after each exit, with no lock held: the
/// aging pass and reclaim where no timer lets a thread run them
/// (`crate::aging::on_exits`).
pub type ExitWork = Box<dyn Fn() + Send + Sync>;

impl<F: EntryFormat> fmt::Debug for Vm<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<F: EntryFormat> Vm<F> {
    /// Builds a VM with one vCPU: its memory, the boot tables and the
    /// image in it.
    pub fn new(config: VmConfig, hook: Option<Hook<F>>) -> Result<Box<Self>, &'static str> {
        Self::with_vcpus(config, 1, hook)
    }

    /// Builds a VM that may have up to `vcpus` vCPUs: the boot vCPU runs
    /// from [`run_on_this_cpu`], the others start when the guest asks
    /// (`VCPU_START`), each on a thread of its own.
    pub fn new_smp(
        config: VmConfig,
        vcpus: u32,
        hook: Option<Hook<F>>,
    ) -> Result<Arc<Self>, &'static str> {
        let vm: Arc<Self> = Arc::from(Self::with_vcpus(config, vcpus, hook)?);
        vm.this.call_once(|| Arc::downgrade(&vm));
        Ok(vm)
    }

    fn with_vcpus(
        config: VmConfig,
        vcpus: u32,
        hook: Option<Hook<F>>,
    ) -> Result<Box<Self>, &'static str> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err("a VM has 1 to 64 vCPUs");
        }
        if config.image.is_empty() {
            return Err(
                "the guest image is empty (build the guests with `cargo xtask build-guests`)",
            );
        }
        if config.image.len() as u64 > layout::IMAGE_MAX_BYTES {
            return Err("the guest image is larger than the layout allows");
        }
        if config.ram_bytes < layout::MIN_RAM_BYTES || !config.ram_bytes.is_multiple_of(4096) {
            return Err("guest RAM must be a multiple of 4 KiB and at least 5 MiB");
        }
        let memory = GuestMemory::new(config.ram_bytes, config.huge_pages)
            .map_err(|_| "no memory for the guest's tables")?;
        for (gpa, value) in layout::boot_table_words() {
            memory.write(gpa, &value.to_le_bytes())?;
        }
        memory.write(GuestPhysAddr::new(layout::IMAGE_GPA), config.image)?;
        Ok(Box::new(Self {
            id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
            config,
            memory,
            stats: VmStats::default(),
            uart: spin::Mutex::new(LineConsole::new()),
            stop_requested: AtomicBool::new(false),
            tlb_generation: AtomicU64::new(0),
            hook,
            stopped: spin::Mutex::new(None),
            checksum: spin::Mutex::new(None),
            exit_work: spin::Once::new(),
            vcpus: (0..vcpus).map(|_| VcpuSlot::default()).collect(),
            live_vcpus: AtomicU32::new(0),
            idle_vcpus: AtomicU32::new(0),
            first_stop: spin::Mutex::new(None),
            threads: spin::Mutex::new(Vec::new()),
            this: spin::Once::new(),
            spawner: spin::Once::new(),
        }))
    }

    /// The name lines about this VM carry.
    pub fn name(&self) -> &'static str {
        self.config.name
    }

    /// Registers at the first entry.
    pub fn boot_regs(&self) -> GuestRegs {
        GuestRegs {
            rip: layout::IMAGE_GPA,
            rsp: layout::STACK_TOP_GPA,
            rdi: self.config.ram_bytes,
            rsi: self.config.boot_arg,
            rdx: u64::from(self.id),
            rflags: layout::BOOT_CPU_STATE.rflags,
            ..GuestRegs::default()
        }
    }

    /// How many vCPUs the VM may have.
    pub fn vcpu_count(&self) -> u32 {
        self.vcpus.len() as u32
    }

    /// Asks the VM's vCPUs to stop at their next exit: a vCPU in the guest
    /// is kicked out of it with an IPI, a halted one is woken.
    pub fn request_stop(&self) {
        self.stop_requested.store(true, Ordering::Release);
        self.kick_all();
    }

    /// vCPUs running now (started, run loop not returned).
    pub fn running_vcpus(&self) -> u32 {
        self.live_vcpus.load(Ordering::Acquire)
    }

    /// The TLB generation [`Self::request_tlb_flush`] advances.
    pub fn tlb_generation(&self) -> u64 {
        self.tlb_generation.load(Ordering::Acquire)
    }

    /// For each running vCPU, the TLB generation it last flushed for
    /// (before its latest entry into the guest).
    pub fn vcpu_flush_generations(&self) -> Vec<(u32, u64)> {
        self.vcpus
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.load(Ordering::Acquire) == SLOT_RUNNING)
            .map(|(i, s)| (i as u32, s.seen_generation.load(Ordering::Acquire)))
            .collect()
    }

    /// Whether the VM is stopping.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::Acquire)
    }

    /// Makes every running vCPU look at the VM's state soon: unparks it
    /// (HLT) and interrupts its CPU (the guest exits on a physical
    /// interrupt).
    fn kick_all(&self) {
        let me = crate::smp::cpu_index();
        for slot in self.vcpus.iter() {
            if slot.state.load(Ordering::Acquire) != SLOT_RUNNING {
                continue;
            }
            // Not under the slot's lock: unpark takes a run-queue lock.
            let thread = slot.thread.lock().clone();
            if let Some(thread) = thread {
                thread.unpark();
            }
            let cpu = slot.cpu.load(Ordering::Acquire);
            if cpu != me && crate::smp::is_online(cpu) {
                crate::smp::send_ipi(cpu, crate::sched::RESCHED_VECTOR);
            }
        }
    }

    /// Records why vCPU `index` stopped; the first reason is the VM's. Every
    /// other vCPU leaves at its next exit.
    fn record_stop(&self, reason: StopReason, index: u32) {
        {
            let mut first = self.first_stop.lock();
            if first.is_none() {
                *first = Some((reason, index));
            }
        }
        self.request_stop();
    }

    /// Asks every vCPU to flush the guest's TLB before its next entry
    /// (after an aging pass cleared accessed bits, or the tables changed).
    pub fn request_tlb_flush(&self) {
        self.tlb_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Installs `work`, which every vCPU of the VM runs after each exit it
    /// handled; false (and `work` dropped) when some is installed already.
    pub fn set_exit_work(&self, work: ExitWork) -> bool {
        let mut installed = false;
        self.exit_work.call_once(|| {
            installed = true;
            work
        });
        installed
    }

    /// Why the VM stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.stopped.lock()
    }

    /// The last `CHECKSUM_RESULT`: (pages checked, mismatches).
    pub fn checksum_result(&self) -> Option<(u64, u64)> {
        *self.checksum.lock()
    }

    /// Prints one line about the guest's misbehaviour on vCPU `index`
    /// (rate-limited); the vCPU is named when the VM has several.
    fn report_from(&self, index: u32, args: fmt::Arguments<'_>) {
        let n = self.stats.reports.fetch_add(1, Ordering::Relaxed);
        if n < REPORT_LINES_MAX {
            if self.vcpus.len() > 1 {
                crate::println!("vm {}: vCPU {index}: {args}", self.name());
            } else {
                crate::println!("vm {}: {args}", self.name());
            }
        } else if n == REPORT_LINES_MAX {
            crate::println!(
                "vm {}: more misbehaviour, counted but not printed",
                self.name()
            );
        }
    }

    fn uart_line(&self, line: &[u8]) {
        let text = core::str::from_utf8(line).unwrap_or("<invalid UTF-8>");
        crate::println!("[vm {}] {text}", self.name());
    }
}

/// The guest `cargo xtask run --guest NAME` chose (the build-time variable
/// `THERMOCLINE_GUEST`); `pattern` when none was: it runs until QEMU is
/// quit, with a known access pattern, so the live aging report shows the
/// product.
pub const SELECTED_GUEST: &str = match option_env!("THERMOCLINE_GUEST") {
    Some(name) => name,
    None => "pattern",
};

/// RAM of the VM that [`run_selected_guest`] starts.
const SELECTED_RAM_BYTES: u64 = 64 << 20;

/// Runs [`SELECTED_GUEST`] the way `cargo xtask run` shows it: on a vCPU
/// thread pinned to the last CPU, waiting until it stops. `evil` runs each
/// of its scenarios that ends by itself, one VM each.
pub fn run_selected_guest() {
    let Some(image) = images::by_name(SELECTED_GUEST) else {
        crate::println!("vm: no guest called {SELECTED_GUEST}");
        return;
    };
    let backend = backend();
    if backend.is_none() {
        crate::println!("vm: no usable virtualization extension: no guest runs");
        return;
    }
    let boot_args: Vec<u64> = if image.name == "evil" {
        vec![1, 2 | ((256 << 30) << 8), 3, 4, 5, 6, 8]
    } else {
        vec![0]
    };
    let cpu = crate::smp::cpu_count() - 1;
    for boot_arg in boot_args {
        let config = VmConfig {
            name: image.name,
            image: image.bytes,
            ram_bytes: SELECTED_RAM_BYTES,
            huge_pages: true,
            boot_arg,
        };
        if image.name == "smp" {
            run_selected_smp(config, cpu, backend);
            continue;
        }
        if backend == Some(Backend::Vmx) {
            run_selected_on_vmx(config, cpu);
            continue;
        }
        let vm = match Vm::<hvcore::npt::Npt>::new(config, None) {
            Ok(vm) => vm,
            Err(why) => {
                crate::println!("vm {}: not created: {why}", image.name);
                return;
            }
        };
        crate::println!(
            "vm {}: starting on CPU {cpu} ({} MiB RAM, boot argument {boot_arg:#x})",
            vm.name(),
            SELECTED_RAM_BYTES >> 20
        );
        // The aging thread reports on the guest while it runs, and
        // reclaims toward `cargo xtask run --reclaim-target`.
        crate::aging::run_selected::<Svm>(vm, cpu);
    }
}

/// vCPUs of the `smp` guest that `cargo xtask run --guest smp` shows.
const SELECTED_SMP_VCPUS: u32 = 4;

/// `cargo xtask run --guest smp`: the guest with
/// [`SELECTED_SMP_VCPUS`] vCPUs, its boot vCPU on CPU `cpu` (no aging
/// thread: the run shows the vCPUs, not the aging report).
fn run_selected_smp(config: VmConfig, cpu: usize, backend: Option<Backend>) {
    let name = config.name;
    let handle = if backend == Some(Backend::Vmx) {
        Vm::<hvcore::ept::Ept>::new_smp(config, SELECTED_SMP_VCPUS, None)
            .map(|vm| spawn_on::<crate::vmx::vcpu::Vmx>(cpu, vm))
    } else {
        Vm::<hvcore::npt::Npt>::new_smp(config, SELECTED_SMP_VCPUS, None)
            .map(|vm| spawn_on::<Svm>(cpu, vm))
    };
    match handle {
        Ok(handle) => {
            crate::println!(
                "vm {name}: starting with {SELECTED_SMP_VCPUS} vCPUs, the boot vCPU on CPU {cpu}"
            );
            handle.join();
        }
        Err(why) => crate::println!("vm {name}: not created: {why}"),
    }
}

/// VMX (EPT) runs of [`run_selected_guest`], with the same aging and
/// reclaim as on SVM (`crate::aging::run_selected`: a thread where there is
/// a timer, VM exits where there is none).
fn run_selected_on_vmx(config: VmConfig, cpu: usize) {
    let name = config.name;
    let vm = match Vm::<hvcore::ept::Ept>::new(config, None) {
        Ok(vm) => vm,
        Err(why) => {
            crate::println!("vm {name}: not created: {why}");
            return;
        }
    };
    crate::println!(
        "vm {name}: starting on CPU {cpu} with VMX/EPT ({} MiB RAM)",
        SELECTED_RAM_BYTES >> 20
    );
    crate::aging::run_selected::<crate::vmx::vcpu::Vmx>(vm, cpu);
}

/// The aging pass's flush (`hvcore::flush`): every vCPU of the VM flushes
/// the guest's translations before its next entry (SVM: TLB control on
/// VMRUN; VMX: INVEPT).
impl<F: EntryFormat> TlbFlush for &Vm<F> {
    fn flush_guest_tlb(&mut self) {
        self.request_tlb_flush();
    }
}

/// Runs `vm` on a new kernel thread pinned to `cpu` (its vCPU thread);
/// join the handle to wait until the VM stops.
pub fn spawn_on<E: Extension>(cpu: usize, vm: Arc<Vm<E::Format>>) -> crate::sched::JoinHandle {
    crate::sched::spawn_on(cpu, "vcpu", move || {
        run_on_this_cpu::<E>(&vm);
    })
}

/// Creates the boot vCPU of `vm` on this CPU and runs it until the VM
/// stops; with several vCPUs, waits until every vCPU thread has returned.
/// Returns the VM's reason (the first vCPU's), which is also printed once
/// and kept in the VM.
pub fn run_on_this_cpu<E: Extension>(vm: &Vm<E::Format>) -> StopReason {
    vm.spawner.call_once(|| spawn_vcpu::<E>);
    let reason = match E::enable_on_this_cpu().and_then(|()| E::create_vcpu(vm)) {
        Ok(mut vcpu) => run_vcpu_as(vm, &mut vcpu, 0),
        Err(why) => StopReason::EntryFailed(EntryError::Setup(why)),
    };
    vm.record_stop(reason, 0);
    // No vCPU starts once the VM is stopping (`start_vcpu` checks under
    // the same lock), so the list only shrinks here.
    loop {
        let next = vm.threads.lock().pop();
        match next {
            Some(handle) => handle.join(),
            None => break,
        }
    }
    let (reason, index) = vm.first_stop.lock().unwrap_or((reason, 0));
    finish_as(vm, reason, index)
}

/// The CPU for vCPU `index` of a VM of `vcpus` whose boot vCPU runs on
/// `boot_cpu`, among `cpus`: spread over the CPUs from the boot vCPU's on,
/// leaving CPU 0 (the aging thread's) out when the others are enough.
fn cpu_for_vcpu(index: u32, vcpus: u32, boot_cpu: usize, cpus: usize) -> usize {
    let first = usize::from(cpus > vcpus as usize);
    let pool = (cpus - first).max(1);
    let at = boot_cpu.saturating_sub(first);
    first + (at + index as usize) % pool
}

/// A [`Spawner`]: vCPU `index` of `vm` on a thread pinned to its CPU.
fn spawn_vcpu<E: Extension>(
    vm: &Arc<Vm<E::Format>>,
    index: u32,
    regs: GuestRegs,
) -> crate::sched::JoinHandle {
    let boot_cpu = vm.vcpus[0].cpu.load(Ordering::Acquire);
    let cpu = cpu_for_vcpu(index, vm.vcpu_count(), boot_cpu, crate::smp::cpu_count());
    vm.vcpus[index as usize].cpu.store(cpu, Ordering::Release);
    let vm = vm.clone();
    crate::sched::spawn_on(cpu, "vcpu", move || {
        let reason = match E::enable_on_this_cpu().and_then(|()| E::create_vcpu_with(&vm, regs)) {
            Ok(mut vcpu) => run_vcpu_as(&vm, &mut vcpu, index),
            Err(why) => {
                vm.live_vcpus.fetch_sub(1, Ordering::AcqRel);
                vm.vcpus[index as usize]
                    .state
                    .store(SLOT_DONE, Ordering::Release);
                StopReason::EntryFailed(EntryError::Setup(why))
            }
        };
        vm.record_stop(reason, index);
    })
}

/// Records and prints the stop of a one-vCPU VM.
pub fn finish<F: EntryFormat>(vm: &Vm<F>, reason: StopReason) -> StopReason {
    finish_as(vm, reason, 0)
}

/// Records and prints the VM's stop, which vCPU `index` caused.
fn finish_as<F: EntryFormat>(vm: &Vm<F>, reason: StopReason, index: u32) -> StopReason {
    vm.uart.lock().flush(&mut |line: &[u8]| vm.uart_line(line));
    *vm.stopped.lock() = Some(reason);
    let action = match reason {
        StopReason::Exited(0) => "",
        _ => ": VM stopped",
    };
    if vm.vcpus.len() > 1 {
        crate::println!("vm {}: vCPU {index}: {reason}{action}", vm.name());
    } else {
        crate::println!("vm {}: {reason}{action}", vm.name());
    }
    reason
}

enum Next {
    Resume,
    Stop(StopReason),
}

/// Runs `vcpu` as the boot vCPU of `vm` until it stops, handling every
/// exit.
pub fn run_vcpu<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V) -> StopReason {
    run_vcpu_as(vm, vcpu, 0)
}

/// Runs `vcpu` as vCPU `index` of `vm` until it or the VM stops.
fn run_vcpu_as<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, index: u32) -> StopReason {
    let slot = &vm.vcpus[index as usize];
    slot.cpu.store(crate::smp::cpu_index(), Ordering::Release);
    if crate::sched::is_running() {
        *slot.thread.lock() = Some(crate::sched::current());
    }
    if index == 0 {
        // Other vCPUs count from `start_vcpu` on, before their thread runs,
        // so a HLT right after VCPU_START still knows they will run.
        slot.state.store(SLOT_RUNNING, Ordering::Release);
        vm.live_vcpus.fetch_add(1, Ordering::AcqRel);
    }
    let reason = vcpu_loop(vm, vcpu, index);
    vm.live_vcpus.fetch_sub(1, Ordering::AcqRel);
    slot.state.store(SLOT_DONE, Ordering::Release);
    *slot.thread.lock() = None;
    reason
}

fn vcpu_loop<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, index: u32) -> StopReason {
    let seen = &vm.vcpus[index as usize].seen_generation;
    // A new vCPU flushes at its first entry anyway (SVM: a fresh ASID or
    // the shared one's flush; VMX: INVEPT before the first entry).
    seen.store(vm.tlb_generation.load(Ordering::Acquire), Ordering::Release);
    loop {
        if vm.stop_requested() {
            return StopReason::Killed;
        }
        // From the flush check to VMRUN/VM entry with interrupts off: a
        // shootdown IPI (`reclaim::Shootdown`) that arrives after the
        // check stays pending and makes the guest exit at once, so the
        // shootdown cannot complete while this vCPU enters with stale
        // translations (see "TLB flushes with several vCPUs").
        let entered = interrupts::without_interrupts(|| {
            let generation = vm.tlb_generation.load(Ordering::Acquire);
            if generation != seen.load(Ordering::Relaxed) {
                seen.store(generation, Ordering::Release);
                vcpu.flush_tlb_on_entry();
            }
            vcpu.run()
        });
        let exit = match entered {
            Ok(exit) => exit,
            Err(e) => return StopReason::EntryFailed(e),
        };
        vm.stats.exits.fetch_add(1, Ordering::Relaxed);
        match handle_exit(vm, vcpu, exit, index) {
            Next::Resume => {}
            Next::Stop(reason) => return reason,
        }
        // Before the flush check, so a pass's flush request is seen at
        // this very entry.
        if let Some(work) = vm.exit_work.get() {
            work();
        }
    }
}

fn handle_exit<F: EntryFormat, V: VirtCpu>(
    vm: &Vm<F>,
    vcpu: &mut V,
    exit: VmExit,
    index: u32,
) -> Next {
    let rip = vcpu.regs().rip;
    match exit {
        VmExit::Cpuid => {
            cpuid(vcpu.regs());
            skip(vm, vcpu, Insn::Cpuid)
        }
        VmExit::MsrRead { msr } => {
            if msr == hvcore::svm::MSR_EFER {
                let v = vcpu.guest_efer();
                let r = vcpu.regs();
                r.rax = v & 0xffff_ffff;
                r.rdx = v >> 32;
            } else {
                vm.report_from(index, format_args!(
                    "guest read unknown MSR {msr:#x} at RIP {rip:#x}: #GP injected, VM continues"
                ));
                vcpu.inject_exception(13, Some(0));
                return Next::Resume;
            }
            skip(vm, vcpu, Insn::Rdmsr)
        }
        VmExit::MsrWrite { msr, value } => {
            let ok = msr == hvcore::svm::MSR_EFER && vcpu.set_guest_efer(value);
            if !ok {
                vm.report_from(index, format_args!(
                    "guest wrote {value:#x} to MSR {msr:#x} at RIP {rip:#x}: refused, #GP injected, VM continues"
                ));
                vcpu.inject_exception(13, Some(0));
                return Next::Resume;
            }
            skip(vm, vcpu, Insn::Wrmsr)
        }
        VmExit::Io(io) => port_io(vm, vcpu, io, index),
        VmExit::Hlt => halt(vm, vcpu, index),
        VmExit::Hypercall => hypercall(vm, vcpu, index),
        VmExit::NestedPageFault(fault) => match vm.memory.fault_in(fault.gpa) {
            FaultOutcome::Mapped(_) => {
                // Mapped for the access the guest retries now: young, as
                // that access will make it. A new entry starts old, and
                // until the guest's retry sets A, a pass run on this exit
                // (the exit-driven aging of the Bochs bed) would offer
                // the page to the reclaimer as its coldest.
                vm.memory.tables().mark_accessed(fault.gpa, F::ACCESSED);
                vm.stats.faults_served.fetch_add(1, Ordering::Relaxed);
                Next::Resume
            }
            FaultOutcome::AlreadyMapped if !fault.present => Next::Resume,
            FaultOutcome::AlreadyMapped => Next::Stop(StopReason::Unhandled { exit, rip }),
            FaultOutcome::OutsideRam => Next::Stop(StopReason::OutsideRam {
                gpa: fault.gpa.as_u64(),
                access: fault.access,
                rip,
            }),
            // Overcommit: wait for the reclaimer to free memory.
            FaultOutcome::OutOfMemory
                if crate::reclaim::wait_for_memory(vm.name(), fault.gpa, &|| {
                    vm.stop_requested()
                }) =>
            {
                Next::Resume
            }
            FaultOutcome::OutOfMemory => Next::Stop(StopReason::OutOfMemory {
                gpa: fault.gpa.as_u64(),
            }),
        },
        VmExit::Shutdown => Next::Stop(StopReason::TripleFault { rip }),
        // The host took the interrupt when the vCPU re-enabled them.
        VmExit::ExternalInterrupt => Next::Resume,
        VmExit::Exception { vector: 6, .. } => {
            let mut bytes = [0u8; insn::MAX_INSN_LEN];
            let n = guest_walk::fetch(&vm.memory, vcpu.paging(), rip, &mut bytes);
            match insn::decode(&bytes[..n]) {
                Some(insn::Decoded {
                    insn: Insn::Virt(v),
                    ..
                }) => report_virt(vm, v, rip, index),
                _ => vm.report_from(index, format_args!(
                    "guest executed an invalid opcode {:02x?} at RIP {rip:#x}: #UD injected, VM continues",
                    &bytes[..n.min(4)]
                )),
            }
            vcpu.inject_exception(6, None);
            Next::Resume
        }
        VmExit::Exception { vector, error_code } => {
            vcpu.inject_exception(vector, error_code);
            Next::Resume
        }
        VmExit::VirtInstruction(v) => {
            report_virt(vm, v, rip, index);
            vcpu.inject_exception(6, None);
            Next::Resume
        }
        VmExit::CrWrite { cr } => cr_write(vm, vcpu, cr, index),
        VmExit::Xsetbv { xcr, value } => {
            vm.report_from(index, format_args!(
                "guest wrote {value:#x} to XCR{xcr} at RIP {rip:#x}: extended state is not offered, #GP injected, VM continues"
            ));
            vcpu.inject_exception(13, Some(0));
            Next::Resume
        }
        VmExit::Unknown { .. } => Next::Stop(StopReason::Unhandled { exit, rip }),
    }
}

/// MOV to CR4 (the only control register intercepted): decode the source
/// register, keep to the offered bits (`hvcore::svm::cr4_write`), flush the
/// guest's TLB as the architecture does on CR4 changes.
fn cr_write<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, cr: u8, index: u32) -> Next {
    let rip = vcpu.regs().rip;
    let mut bytes = [0u8; insn::MAX_INSN_LEN];
    let n = guest_walk::fetch(&vm.memory, vcpu.paging(), rip, &mut bytes);
    let Some(insn::Decoded {
        insn: Insn::MovToCr { cr: got, gpr },
        len,
    }) = insn::decode(&bytes[..n])
    else {
        return Next::Stop(StopReason::Undecodable { rip });
    };
    if got != cr || cr != 4 {
        return Next::Stop(StopReason::Unhandled {
            exit: VmExit::CrWrite { cr },
            rip,
        });
    }
    let value = vcpu.regs().gpr(gpr);
    let long_mode = vcpu.guest_efer() & (1 << 10) != 0;
    match hvcore::svm::cr4_write(value, long_mode) {
        Ok(cr4) if vcpu.set_guest_cr4(cr4) => {
            vcpu.flush_tlb_on_entry();
            let r = vcpu.regs();
            r.rip = r.rip.wrapping_add(len as u64);
        }
        Ok(_) => {
            return Next::Stop(StopReason::Unhandled {
                exit: VmExit::CrWrite { cr },
                rip,
            });
        }
        Err(why) => {
            vm.report_from(index, format_args!(
                "guest wrote {value:#x} to CR4 at RIP {rip:#x}: {why}, #GP injected, VM continues"
            ));
            vcpu.inject_exception(13, Some(0));
        }
    }
    Next::Resume
}

fn report_virt<F: EntryFormat>(vm: &Vm<F>, v: VirtInsn, rip: u64, index: u32) {
    vm.report_from(
        index,
        format_args!(
            "guest executed {} ({} instruction) at RIP {rip:#x}: #UD injected, VM continues",
            v.name(),
            v.family()
        ),
    );
}

/// Steps over the intercepted instruction: NRIP when the CPU gives it,
/// else the decoded length of the bytes at RIP, which must be `expect`.
fn skip<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, expect: Insn) -> Next {
    if let Some(next) = vcpu.next_rip() {
        vcpu.regs().rip = next;
        return Next::Resume;
    }
    let rip = vcpu.regs().rip;
    let mut bytes = [0u8; insn::MAX_INSN_LEN];
    let n = guest_walk::fetch(&vm.memory, vcpu.paging(), rip, &mut bytes);
    let same = |got: Insn| {
        got == expect
            || (expect == Insn::Vmmcall && got == Insn::Vmcall)
            || (expect == Insn::Vmcall && got == Insn::Vmmcall)
    };
    match insn::decode(&bytes[..n]) {
        Some(d) if same(d.insn) => {
            vcpu.regs().rip = rip.wrapping_add(d.len as u64);
            Next::Resume
        }
        _ => Next::Stop(StopReason::Undecodable { rip }),
    }
}

/// CPUID as the guest sees it: `hvcore::guest_cpu::guest_view` of the
/// host's answer.
fn cpuid(regs: &mut GuestRegs) {
    let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
    let host = if guest_cpu::uses_host(leaf) {
        let r = crate::hw::cpuid(leaf, subleaf);
        guest_cpu::Cpuid {
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        }
    } else {
        guest_cpu::Cpuid::default()
    };
    let r = guest_cpu::guest_view(leaf, subleaf, host);
    regs.rax = u64::from(r.eax);
    regs.rbx = u64::from(r.ebx);
    regs.rcx = u64::from(r.ecx);
    regs.rdx = u64::from(r.edx);
}

fn port_io<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, io: IoAccess, index: u32) -> Next {
    if io.string {
        return string_io(vm, vcpu, io, index);
    }
    let rip = vcpu.regs().rip;
    let mask = size_mask(io.size_bytes);
    let regs = vcpu.regs();
    match io.dir {
        IoDir::Out => port_write(vm, io.port, io.size_bytes, regs.rax as u32, rip, index),
        IoDir::In => {
            let value = u64::from(port_read(vm, io.port, io.size_bytes, rip, index));
            regs.rax = (regs.rax & !mask) | value;
        }
    }
    match io.next_rip {
        Some(next) => {
            vcpu.regs().rip = next;
            Next::Resume
        }
        None => skip(vm, vcpu, Insn::PortIo),
    }
}

fn size_mask(size_bytes: u8) -> u64 {
    match size_bytes {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

fn is_uart(port: u16) -> bool {
    (uart::COM1..uart::COM1 + uart::PORTS).contains(&port)
}

/// An OUT of `size_bytes` to `port` (the UART takes the low byte).
fn port_write<F: EntryFormat>(
    vm: &Vm<F>,
    port: u16,
    size_bytes: u8,
    value: u32,
    rip: u64,
    index: u32,
) {
    if is_uart(port) {
        vm.uart
            .lock()
            .write(port - uart::COM1, value as u8, &mut |line: &[u8]| {
                vm.uart_line(line)
            });
    } else {
        vm.report_from(index, format_args!(
            "guest wrote {:#x} to unemulated port {port:#x} at RIP {rip:#x}: dropped, VM continues",
            u64::from(value) & size_mask(size_bytes),
        ));
    }
}

/// An IN of `size_bytes` from `port`: the UART's register, all ones for a
/// port nobody emulates.
fn port_read<F: EntryFormat>(vm: &Vm<F>, port: u16, size_bytes: u8, rip: u64, index: u32) -> u32 {
    if is_uart(port) {
        return u32::from(vm.uart.lock().read(port - uart::COM1));
    }
    vm.report_from(index, format_args!(
        "guest read unemulated port {port:#x} ({size_bytes} bytes) at RIP {rip:#x}: all ones returned, VM continues"
    ));
    size_mask(size_bytes) as u32
}

/// Elements one exit moves at most; a longer REP resumes the guest on the
/// same instruction, which exits again (the host stays responsive).
const STRING_IO_BATCH: u64 = 4096;

/// INS/OUTS (`hvcore::string_io`): decode the instruction to learn the
/// address size and REP, move the elements through the guest's paging,
/// step over it when done.
fn string_io<F: EntryFormat, V: VirtCpu>(
    vm: &Vm<F>,
    vcpu: &mut V,
    io: IoAccess,
    index: u32,
) -> Next {
    let rip = vcpu.regs().rip;
    let mut bytes = [0u8; insn::MAX_INSN_LEN];
    let n = guest_walk::fetch(&vm.memory, vcpu.paging(), rip, &mut bytes);
    let decoded = match insn::decode(&bytes[..n]) {
        Some(insn::Decoded {
            insn: Insn::StringIo(s),
            len,
        }) if s.out == (io.dir == IoDir::Out) && s.size_bytes == io.size_bytes => (s, len),
        _ => return Next::Stop(StopReason::Undecodable { rip }),
    };
    let (op, len) = decoded;
    if op.fs_gs {
        return Next::Stop(StopReason::StringIo {
            rip,
            va: 0,
            why: "is FS/GS-relative: segment overrides are not emulated",
        });
    }
    let paging = vcpu.paging();
    let r = vcpu.regs();
    let mut sregs = string_io::Regs {
        rsi: r.rsi,
        rdi: r.rdi,
        rcx: r.rcx,
        rflags: r.rflags,
    };
    let mut ports = VmPorts { vm, rip, index };
    let outcome = string_io::run(
        &op,
        io.port,
        &mut sregs,
        paging,
        &GuestRam(&vm.memory),
        &mut ports,
        STRING_IO_BATCH,
    );
    let r = vcpu.regs();
    (r.rsi, r.rdi, r.rcx) = (sregs.rsi, sregs.rdi, sregs.rcx);
    match outcome {
        string_io::Outcome::Done { elements } => {
            vm.stats
                .string_io_elements
                .fetch_add(elements, Ordering::Relaxed);
            r.rip = rip.wrapping_add(len as u64);
            Next::Resume
        }
        string_io::Outcome::Continue { elements } => {
            vm.stats
                .string_io_elements
                .fetch_add(elements, Ordering::Relaxed);
            Next::Resume
        }
        string_io::Outcome::Fault { va, why, .. } => Next::Stop(StopReason::StringIo {
            rip,
            va,
            why: why.describe(),
        }),
    }
}

/// The port side of emulated string I/O: the same models as IN/OUT.
struct VmPorts<'a, F: EntryFormat> {
    vm: &'a Vm<F>,
    rip: u64,
    index: u32,
}

impl<F: EntryFormat> string_io::Ports for VmPorts<'_, F> {
    fn read(&mut self, port: u16, size_bytes: u8) -> u32 {
        port_read(self.vm, port, size_bytes, self.rip, self.index)
    }
    fn write(&mut self, port: u16, size_bytes: u8, value: u32) {
        port_write(self.vm, port, size_bytes, value, self.rip, self.index);
    }
}

/// Guest RAM for the hypervisor's own accesses on the guest's behalf
/// (string I/O). A page that is mapped is copied with interrupts off: the
/// reclaimer unmaps, then shoots down (waiting for this CPU to take an
/// interrupt), and only then reads and frees the frame, so the frame
/// cannot go away mid-copy and a write lands before the reclaimer reads.
/// The leaf gets A (and D for a write) first, and its ancestors A, as the
/// CPU's own access would set them (`hvcore::table::Tables::mark_accessed`):
/// the reclaimer drops a page whose D is clear when it holds a clean copy,
/// so a write with D left clear would be lost, and the aging pass counts
/// the page young. A page
/// that is not mapped is backed (or brought back) with interrupts on,
/// since that takes the VM's writer lock, which the reclaimer holds across
/// its shootdown.
struct GuestRam<'a, F: EntryFormat>(&'a GuestMemory<F>);

impl<F: EntryFormat> GuestPhysRead for GuestRam<'_, F> {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        let mapped = interrupts::without_interrupts(|| {
            self.0
                .tables()
                .mark_accessed(gpa, F::ACCESSED)
                .then(|| self.0.read(gpa, &mut *buf))
        });
        // Not mapped: never-backed pages read as zeros, reclaimed ones
        // come back first.
        mapped.unwrap_or_else(|| self.0.read(gpa, buf))
    }
}

impl<F: EntryFormat> GuestPhysWrite for GuestRam<'_, F> {
    fn write(&self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        // A page reclaimed between the fault-in and the copy is faulted
        // in again; a few rounds make that race practically impossible to
        // lose, and losing it fails the access, never the host.
        for _ in 0..4 {
            let done = interrupts::without_interrupts(|| {
                self.0
                    .tables()
                    .mark_accessed(gpa, F::ACCESSED | F::DIRTY)
                    .then(|| self.0.write(gpa, buf).is_ok())
            });
            match done {
                Some(true) => return Some(()),
                Some(false) => return None,
                None => match self.0.fault_in(gpa) {
                    FaultOutcome::Mapped(_) | FaultOutcome::AlreadyMapped => {}
                    FaultOutcome::OutsideRam | FaultOutcome::OutOfMemory => return None,
                },
            }
        }
        None
    }
}

/// HLT: step over it, then wait (the thread parks) until a `WAKE` from
/// another vCPU, the armed deadline, or a stop request. When this wait has
/// no deadline and every other live vCPU is in such a wait too, nothing
/// can ever wake any of them: the VM stops (module docs, "HLT waits").
fn halt<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, index: u32) -> Next {
    if let Next::Stop(reason) = skip(vm, vcpu, Insn::Hlt) {
        return Next::Stop(reason);
    }
    let rip = vcpu.regs().rip;
    let slot = &vm.vcpus[index as usize];
    let mut waited = false;
    let outcome = loop {
        if slot.wake.swap(false, Ordering::AcqRel) || vm.stop_requested() {
            break Next::Resume;
        }
        let deadline_ns = slot.deadline_ns.load(Ordering::Acquire);
        if deadline_ns != 0 && now_ns() >= deadline_ns {
            // One-shot: it fired.
            let _ = slot.deadline_ns.compare_exchange(
                deadline_ns,
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            break Next::Resume;
        }
        if deadline_ns == 0 && !slot.idle.load(Ordering::Acquire) {
            // Counted, then flagged (so an uncount never precedes its
            // count), then the wake flag is read again: a WAKE either came
            // before (seen here) or uncounts this vCPU itself.
            let idle = vm.idle_vcpus.fetch_add(1, Ordering::AcqRel) + 1;
            slot.idle.store(true, Ordering::Release);
            if slot.wake.load(Ordering::Acquire) {
                continue;
            }
            if idle >= vm.live_vcpus.load(Ordering::Acquire) {
                break Next::Stop(StopReason::Halted { rip });
            }
        }
        waited = true;
        if !crate::sched::is_running() {
            core::hint::spin_loop();
        } else if deadline_ns != 0 {
            crate::sched::park_until(deadline_ns);
        } else {
            crate::sched::park();
        }
    };
    leave_idle(vm, slot);
    if waited {
        vm.stats.halts.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

/// Uncounts `slot` from the VM's idle vCPUs if it is counted (by the vCPU
/// leaving its wait, or by the `WAKE` that ends it: whoever clears the
/// flag first). Only the vCPU itself sets the flag, after counting itself.
fn leave_idle<F: EntryFormat>(vm: &Vm<F>, slot: &VcpuSlot) {
    if slot.idle.swap(false, Ordering::AcqRel) {
        vm.idle_vcpus.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `VCPU_START`: claims the slot, then starts the vCPU's thread (refused
/// once the VM is stopping, under the lock the boot vCPU drains the
/// threads with).
fn start_vcpu<F: EntryFormat>(
    vm: &Vm<F>,
    index: u32,
    rip: u64,
    rsp: u64,
    arg: u64,
) -> Result<u64, HypercallError> {
    let (Some(this), Some(spawn)) = (vm.this.get().and_then(Weak::upgrade), vm.spawner.get())
    else {
        return Err(HypercallError::InvalidArgument);
    };
    let mut threads = vm.threads.lock();
    if vm.stop_requested() {
        return Err(HypercallError::Busy);
    }
    let slot = &vm.vcpus[index as usize];
    if slot
        .state
        .compare_exchange(SLOT_FREE, SLOT_RUNNING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(HypercallError::Busy);
    }
    vm.live_vcpus.fetch_add(1, Ordering::AcqRel);
    let regs = GuestRegs {
        rip,
        rsp,
        rdi: arg,
        rflags: layout::BOOT_CPU_STATE.rflags,
        ..GuestRegs::default()
    };
    threads.push(spawn(&this, index, regs));
    Ok(0)
}

fn hypercall<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, index: u32) -> Next {
    vm.stats.hypercalls.fetch_add(1, Ordering::Relaxed);
    let r = *vcpu.regs();
    let call = HypercallRegs {
        rax: r.rax,
        rdi: r.rdi,
        rsi: r.rsi,
        rdx: r.rdx,
        rcx: r.rcx,
    };
    let shape = VmShape {
        ram_bytes: vm.config.ram_bytes,
        vcpus: vm.vcpu_count(),
    };
    let result: Result<u64, HypercallError> = match Hypercall::decode_for(&call, shape) {
        Ok(Hypercall::Version) => Ok(hypercall::ABI_VERSION),
        Ok(Hypercall::Exit { code }) => return Next::Stop(StopReason::Exited(code)),
        Ok(Hypercall::TimeNs) => Ok(crate::vm::now_ns()),
        Ok(Hypercall::VcpuStart {
            index: target,
            rip,
            rsp,
            arg,
        }) => start_vcpu(vm, target, rip, rsp, arg),
        Ok(Hypercall::Wake { index: target }) => {
            let slot = &vm.vcpus[target as usize];
            if slot.state.load(Ordering::Acquire) == SLOT_RUNNING {
                slot.wake.store(true, Ordering::Release);
                // Before this vCPU can itself go idle: the count must never
                // take a vCPU about to run for one that waits forever.
                leave_idle(vm, slot);
                // Not under the slot's lock: unpark takes a run-queue lock.
                let thread = slot.thread.lock().clone();
                if let Some(thread) = thread {
                    thread.unpark();
                }
                Ok(0)
            } else {
                Err(HypercallError::InvalidArgument)
            }
        }
        Ok(Hypercall::SetTimer { deadline_ns }) => {
            vm.vcpus[index as usize]
                .deadline_ns
                .store(deadline_ns.unwrap_or(0), Ordering::Release);
            Ok(0)
        }
        Ok(Hypercall::Mark { tag }) => {
            event(vm, vcpu, &GuestEvent::Mark(tag));
            Ok(0)
        }
        Ok(Hypercall::ChecksumResult {
            pages_checked,
            mismatches,
        }) => {
            *vm.checksum.lock() = Some((pages_checked, mismatches));
            crate::println!(
                "vm {}: checksum result: {pages_checked} pages checked, {mismatches} mismatches",
                vm.name()
            );
            event(
                vm,
                vcpu,
                &GuestEvent::Checksum {
                    pages_checked,
                    mismatches,
                },
            );
            Ok(0)
        }
        Ok(Hypercall::ReportTouched {
            interval,
            bitmap,
            first_pfn,
            page_count,
        }) => {
            let mut words = vec![0u64; page_count.div_ceil(64) as usize];
            read_guest_words(&vm.memory, bitmap.start, page_count.div_ceil(8), &mut words);
            event(
                vm,
                vcpu,
                &GuestEvent::Touched {
                    interval,
                    first_pfn,
                    page_count,
                    bitmap: words,
                },
            );
            Ok(0)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        vm.report_from(index, format_args!(
            "bad hypercall {:#x} (args {:#x} {:#x} {:#x} {:#x}) at RIP {:#x}: {}, error returned, VM continues",
            r.rax,
            r.rdi,
            r.rsi,
            r.rdx,
            r.rcx,
            r.rip,
            e.name()
        ));
    }
    vcpu.regs().rax = match result {
        Ok(v) => v,
        Err(e) => e.to_rax(),
    };
    skip(vm, vcpu, Insn::Vmmcall)
}

/// Reads `len_bytes` of guest RAM at `gpa` into `words` (little endian).
fn read_guest_words<F: EntryFormat>(
    mem: &GuestMemory<F>,
    gpa: GuestPhysAddr,
    len_bytes: u64,
    words: &mut [u64],
) {
    let mut done = 0u64;
    while done < len_bytes {
        let at = gpa.as_u64() + done;
        let n = (4096 - at % 4096).min(len_bytes - done).min(8 - done % 8);
        let mut buf = [0u8; 8];
        if mem
            .read(GuestPhysAddr::new(at), &mut buf[..n as usize])
            .is_none()
        {
            return;
        }
        let word = &mut words[(done / 8) as usize];
        for (i, b) in buf[..n as usize].iter().enumerate() {
            *word |= u64::from(*b) << (8 * ((done % 8) as usize + i));
        }
        done += n;
    }
}

fn event<F: EntryFormat, V: VirtCpu>(vm: &Vm<F>, vcpu: &mut V, e: &GuestEvent) {
    if let Some(hook) = vm.hook {
        hook(vm, e);
        // The hook may have cleared accessed bits: every vCPU flushes.
        vm.request_tlb_flush();
        vcpu.flush_tlb_on_entry();
    }
}

/// Host monotonic time for the TIME_NS hypercall.
pub fn now_ns() -> u64 {
    crate::time::now_ns()
}
