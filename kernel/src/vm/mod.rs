//! Running guests, vendor-neutral: the VM (memory, devices, status), its
//! vCPU threads, and the exit handlers written once for SVM and VMX.
//!
//! # A VM typed by its vendor
//! [`Vm<E>`](Vm) names its virtualization extension `E` (the trait in
//! `crate::virt`; `crate::svm::Svm` and `crate::vmx::vcpu::Vmx` implement
//! it, and `crate::launch` picks one at boot from CPUID). The vendor is
//! fixed where the VM is made and never passed again: its tables are
//! `E::Format`'s, its vCPUs `E::Vcpu`s. A VM is always shared as an
//! `Arc` ([`Vm::new`], [`Vm::new_smp`]): the vCPU threads and the aging
//! thread each hold it. A vCPU runs the guest until the next exit and
//! returns it as the shared `hvcore::exit::VmExit`; [`run_vcpu`] handles
//! every exit the same way for both vendors.
//!
//! Files: `vcpu.rs` (threads, the run loop, HLT, the stop as a unit),
//! `exits.rs` (the handlers), `ports.rs` (port I/O through the port bus of
//! [`devices`]), `hypercalls.rs`, [`memory`] (NPT/EPT-backed RAM),
//! [`images`] (the guest binaries), [`timing`] (phase times of faults,
//! passes and reclaim).
//!
//! # What a guest gets (docs/guests.md)
//! RAM `[0, ram_bytes)` faulted in on first touch, the boot state of
//! `hvcore::guest_layout`, the devices of [`devices`] on its port bus (a
//! 16550 UART at COM1 whose lines are printed as `[vm NAME] ...`; IN/OUT
//! and INS/OUTS through `hvcore::string_io`), the hypercalls of
//! docs/hypercalls.md, and nothing else.
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
//! Neighbours: below, `crate::virt` (the vendor trait) and the platform
//! (`sched`, `smp`, `time`, `mem`); above, `crate::reclaim` and
//! `crate::aging`, which reach a VM's memory through the handles of
//! [`memory`] (`PageReclaimer`, `set_memory_wait`) and its exits through
//! [`Vm::set_exit_work`]; `hvcore::{exit, insn, hypercall, uart, devices, guest_msr,
//! guest_cpu, guest_walk, guest_layout}` (the pure logic).

pub mod devices;
mod exits;
mod hypercalls;
pub mod images;
pub mod memory;
mod ports;
pub mod timing;
mod vcpu;

pub use crate::virt::{EntryError, Extension, GuestRegs, VcpuSetup, VcpuStart, VirtCpu};
pub use vcpu::{finish, run_on_this_cpu, run_vcpu, spawn_on};

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use hvcore::addr::GuestPhysAddr;
use hvcore::exit::{AccessKind, VmExit};
use hvcore::flush::TlbFlush;
use hvcore::guest_layout as layout;
use memory::GuestMemory;

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
    /// The guest asked for a system reset (i8042 command 0xFE: Linux's
    /// `reboot -f`, or its reboot after a panic with `panic=-1`).
    ResetRequested {
        /// RIP of the OUT.
        rip: u64,
    },
    /// HLT with interrupts disabled on a PC: nothing can wake it (Linux's
    /// `poweroff -f` with no ACPI ends so, "reboot: System halted").
    PoweredOff {
        /// RIP after the HLT.
        rip: u64,
    },
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
            Self::ResetRequested { rip } => write!(
                f,
                "guest asked for a reset through the i8042 (reboot) at RIP {rip:#x}"
            ),
            Self::PoweredOff { rip } => write!(
                f,
                "guest halted with interrupts off (power off without ACPI) at RIP {rip:#x}"
            ),
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
pub type Hook<E> = &'static (dyn Fn(&Vm<E>, &GuestEvent) + Sync);

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
    /// External interrupts injected (a PC's PIC vectors).
    pub interrupts_injected: AtomicU64,
    /// Interrupt-window exits (the guest could not take one at once).
    pub window_exits: AtomicU64,
}

/// Lines about one VM's misbehaviour printed before they are only counted.
const REPORT_LINES_MAX: u64 = 32;

static NEXT_VM_ID: AtomicU32 = AtomicU32::new(1);

/// The VM whose serial port the console's input goes to (0: none): the
/// Linux VM made last.
static CONSOLE_OWNER: AtomicU32 = AtomicU32::new(0);

/// `cmdline` with `tsc_early_khz=KHZ` appended, unless it sets it or the
/// frequency is unknown (0). Linux takes the TSC frequency from CPUID only
/// on Intel CPUs (`native_calibrate_tsc`); elsewhere it calibrates against
/// the PIT, which under an emulator or a loaded host fails or errs ("tsc:
/// Unable to calibrate against PIT", TSC marked unstable, jiffies as the
/// clocksource). The hypervisor knows the frequency, and the guest's TSC
/// is the host's, so the guest clock then follows the host's.
fn with_tsc_khz(cmdline: &[u8], khz: u64) -> alloc::borrow::Cow<'_, [u8]> {
    /// Longer command lines are left alone: no kernel takes them
    /// (`cmdline_size` is 2047 on x86), and the plan refuses them by name.
    const APPEND_MAX_BYTES: usize = 4096;
    let given = cmdline
        .split(|&b| b == b' ')
        .any(|w| w.starts_with(b"tsc_early_khz="));
    if given || khz == 0 || cmdline.len() > APPEND_MAX_BYTES {
        return alloc::borrow::Cow::Borrowed(cmdline);
    }
    let mut out = cmdline.to_vec();
    if !out.is_empty() {
        out.push(b' ');
    }
    out.extend_from_slice(alloc::format!("tsc_early_khz={khz}").as_bytes());
    alloc::borrow::Cow::Owned(out)
}

/// Why a Linux VM was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxVmError {
    /// The image, initrd, command line or RAM size (`hvcore::linux_boot`).
    Boot(hvcore::linux_boot::LinuxBootError),
    /// The hypervisor could not set it up.
    Setup(&'static str),
}

impl fmt::Display for LinuxVmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Boot(e) => write!(f, "{e}"),
            Self::Setup(why) => f.write_str(why),
        }
    }
}

/// A virtual machine.
pub struct Vm<E: Extension> {
    /// Unique id (also passed to the guest in RDX).
    pub id: u32,
    /// What it was made from.
    pub config: VmConfig,
    /// Its RAM.
    pub memory: GuestMemory<E::Format>,
    /// Counters.
    pub stats: VmStats,
    /// The devices, on one bus.
    devices: spin::Mutex<devices::Devices>,
    /// Linux's entry state, for a Linux VM (its vCPU starts in long mode).
    linux: Option<hvcore::linux_boot::LinuxEntryState>,
    /// Unknown MSRs already reported (one line each).
    unknown_msrs: spin::Mutex<alloc::collections::BTreeSet<u32>>,
    stop_requested: AtomicBool,
    tlb_generation: AtomicU64,
    hook: Option<Hook<E>>,
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
}

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
    /// Its emulated MSRs (`hvcore::guest_msr`).
    msrs: spin::Mutex<hvcore::guest_msr::MsrState>,
}

/// Periodic work a vCPU runs after each exit, with no lock held: the
/// aging pass and reclaim where no timer lets a thread run them
/// (`crate::aging::on_exits`).
pub type ExitWork = Box<dyn Fn() + Send + Sync>;

impl<E: Extension> fmt::Debug for Vm<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<E: Extension> Vm<E> {
    /// Builds a VM with one vCPU: its memory, the boot tables and the
    /// image in it.
    pub fn new(config: VmConfig, hook: Option<Hook<E>>) -> Result<Arc<Self>, &'static str> {
        Self::new_smp(config, 1, hook)
    }

    /// Builds a VM that may have up to `vcpus` vCPUs: the boot vCPU runs
    /// from [`run_on_this_cpu`], the others start when the guest asks
    /// (`VCPU_START`), each on a thread of its own that holds the VM.
    pub fn new_smp(
        config: VmConfig,
        vcpus: u32,
        hook: Option<Hook<E>>,
    ) -> Result<Arc<Self>, &'static str> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err("a VM has 1 to 64 vCPUs");
        }
        if config.image.is_empty() {
            return Err("the guest image is empty (build the guests with `cargo xtask images`)");
        }
        if config.image.len() as u64 > layout::IMAGE_MAX_BYTES {
            return Err("the guest image is larger than the layout allows");
        }
        if config.ram_bytes < layout::MIN_RAM_BYTES || !config.ram_bytes.is_multiple_of(4096) {
            return Err("guest RAM must be a multiple of 4 KiB and at least 5 MiB");
        }
        let devices = devices::Devices::for_layout(config.name)
            .map_err(|_| "the VM's devices claim one port twice")?;
        let memory = GuestMemory::new(config.ram_bytes, config.huge_pages)
            .map_err(|_| "no memory for the guest's tables")?;
        for (gpa, value) in layout::boot_table_words() {
            memory.write(gpa, &value.to_le_bytes())?;
        }
        memory.write(GuestPhysAddr::new(layout::IMAGE_GPA), config.image)?;
        Ok(Self::assemble(config, vcpus, hook, memory, devices, None))
    }

    /// Builds a Linux VM of one vCPU on a PC (`devices::Devices::for_pc`)
    /// from `boot` (`hvcore::linux_boot`): checks the image, initrd and
    /// command line, places them, copies them into guest RAM; the vCPU
    /// starts at the kernel's 64-bit entry. A bad input is an error naming
    /// it, before any guest memory is made.
    pub fn new_linux(
        name: &'static str,
        boot: &hvcore::linux_boot::LinuxBootConfig<'_>,
        huge_pages: bool,
        hook: Option<Hook<E>>,
    ) -> Result<Arc<Self>, LinuxVmError> {
        let cmdline = with_tsc_khz(boot.cmdline, crate::time::tsc_hz() / 1000);
        let boot = &hvcore::linux_boot::LinuxBootConfig {
            cmdline: &cmdline,
            ..*boot
        };
        let plan = hvcore::linux_boot::LinuxBoot::plan(boot).map_err(LinuxVmError::Boot)?;
        let devices = devices::Devices::for_pc(devices::host_unix_seconds(), now_ns())
            .map_err(|_| LinuxVmError::Setup("the PC's devices claim one port twice"))?;
        let memory = GuestMemory::new(boot.ram_bytes, huge_pages)
            .map_err(|_| LinuxVmError::Setup("no memory for the guest's tables"))?;
        for w in plan.writes() {
            memory.write(w.gpa, w.bytes).map_err(LinuxVmError::Setup)?;
        }
        let config = VmConfig {
            name,
            image: &[],
            ram_bytes: boot.ram_bytes,
            huge_pages,
            boot_arg: 0,
        };
        let vm = Self::assemble(config, 1, hook, memory, devices, Some(*plan.entry()));
        CONSOLE_OWNER.store(vm.id, Ordering::Release);
        Ok(vm)
    }

    fn assemble(
        config: VmConfig,
        vcpus: u32,
        hook: Option<Hook<E>>,
        memory: GuestMemory<E::Format>,
        devices: devices::Devices,
        linux: Option<hvcore::linux_boot::LinuxEntryState>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
            config,
            memory,
            stats: VmStats::default(),
            devices: spin::Mutex::new(devices),
            linux,
            unknown_msrs: spin::Mutex::new(alloc::collections::BTreeSet::new()),
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
        })
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

    /// What its vendor needs to make a vCPU of it.
    pub fn vcpu_setup(&self) -> VcpuSetup {
        VcpuSetup {
            table_root: self.memory.tables().root(),
            vm_id: self.id,
            start: match self.linux {
                Some(entry) => VcpuStart::Linux64(entry),
                None => VcpuStart::Layout,
            },
        }
    }

    /// A vCPU of this VM in the boot state (the boot vCPU), to run with
    /// [`run_vcpu`].
    pub fn create_boot_vcpu(&self) -> Result<E::Vcpu, &'static str> {
        E::create_vcpu(self.vcpu_setup(), self.boot_regs())
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
    /// A line about this VM, always printed.
    fn log(&self, args: fmt::Arguments<'_>) {
        crate::println!("vm {}: {args}", self.name());
    }

    /// Whether this VM's serial port takes the console's input.
    fn owns_console(&self) -> bool {
        CONSOLE_OWNER.load(Ordering::Acquire) == self.id
    }

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
}

/// The aging pass's flush (`hvcore::flush`): every vCPU of the VM flushes
/// the guest's translations before its next entry (SVM: TLB control on
/// VMRUN; VMX: INVEPT).
impl<E: Extension> TlbFlush for &Vm<E> {
    fn flush_guest_tlb(&mut self) {
        self.request_tlb_flush();
    }
}

/// Host monotonic time for the TIME_NS hypercall.
pub fn now_ns() -> u64 {
    crate::time::now_ns()
}
