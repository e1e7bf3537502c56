//! All CPUs: start the application processors, per-CPU data, IPIs, running a
//! closure on other CPUs, TLB shootdown.
//!
//! Start-up ([`init`]): the CPUs come from the ACPI MADT (`hvcore::acpi`).
//! Each AP is started in turn with INIT, then two start-up IPIs (10 ms and
//! 200 us apart), into a real-mode trampoline copied to a free page below
//! 1 MiB (`mem::low_pages`). The trampoline loads a small GDT, enters
//! protected mode, enables PAE, loads a transition PML4 (the kernel's upper
//! entries plus an identity map of the first 2 MiB, so the trampoline keeps
//! running when paging turns on), sets EFER.LME/NXE and CR0.PG|WP, far-jumps
//! to 64-bit code, and jumps to [`ap_entry`] on a stack the boot CPU
//! allocated. `ap_entry` loads the kernel's CR3 and CR4, then gets its own
//! GDT/TSS (double-fault stack), the shared IDT, its APIC and tick, and its
//! scheduler; the boot CPU waits (bounded) for it to report online.
//!
//! Without a timer (the Bochs CPU core) or without a MADT there is one CPU and no
//! IPI is ever sent.
//!
//! Cross-CPU calls ([`run_on`], [`run_on_all`]): the caller queues a
//! reference to a stack-allocated request on each target, sends
//! [`CALL_VECTOR`], and waits until every target ran it (serving calls aimed
//! at itself meanwhile, so two CPUs calling each other cannot deadlock).
//! [`flush_tlb_all`] and [`flush_page_all`] are built on them.
//!
//! Follows: Intel SDM Vol. 3 "Multiple-Processor Management" (MP
//! initialization, INIT-SIPI-SIPI), "Initializing IA-32e Mode"; ACPI MADT.

pub mod apic;
pub mod percpu;

use crate::gdt::{CpuTables, IstStack};
use crate::mem::{self, phys};
use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use hvcore::acpi::{self, PhysRead};
use hvcore::addr::{HostPhysAddr, PAGE_SIZE_4K};
pub use percpu::{MAX_CPUS, is_ready};

/// Vector of the "run queued closures" IPI.
pub const CALL_VECTOR: u8 = 0xF1;
/// Stack of each AP's boot context (its idle thread).
const AP_STACK_BYTES: usize = 64 * 1024;

static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);
/// CR4 of the boot CPU, which every AP copies.
static BOOT_CR4: AtomicU64 = AtomicU64::new(0);

/// The index of the CPU executing this (0 = boot CPU).
pub fn cpu_index() -> usize {
    percpu::this_index()
}

/// Number of CPUs online.
pub fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::Acquire)
}

/// Whether CPU `index` is online.
pub fn is_online(index: usize) -> bool {
    index < MAX_CPUS && percpu::get(index).online.load(Ordering::Acquire)
}

/// The APIC ID of CPU `index`.
pub fn apic_id(index: usize) -> u32 {
    percpu::get(index).apic_id.load(Ordering::Relaxed)
}

/// Sends `vector` to CPU `index`.
pub fn send_ipi(index: usize, vector: u8) {
    apic::send_ipi(apic_id(index), vector);
}

fn logger_cpu_id() -> u32 {
    cpu_index() as u32
}

struct PhysMem;

impl PhysRead for PhysMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        // ACPI tables live below 4 GiB, which the mapping always covers.
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > 0x1_0000_0000 {
            return false;
        }
        // SAFETY: the range is inside the mapping of physical memory (first
        // 4 GiB); firmware tables are not Rust objects.
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys::to_virt(HostPhysAddr::new(addr)),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        true
    }
}

/// Sets up the boot CPU's per-CPU data, then starts every other CPU the
/// MADT lists. Call on the boot CPU after `mem::init` and `time::init`.
pub fn init(rsdp_addr: Option<u64>, ap: ApEntry) {
    AP_ENTRY.call_once(|| ap);
    percpu::install(0, percpu::current_apic_id());
    crate::logger::set_cpu_id_source(logger_cpu_id);
    percpu::get(0).online.store(true, Ordering::Release);
    crate::interrupts::set_handler(CALL_VECTOR, on_call);
    BOOT_CR4.store(
        x86_64::registers::control::Cr4::read_raw(),
        Ordering::Relaxed,
    );

    if !crate::time::has_timer() {
        log::info!("no timer and no APIC use on this machine: one CPU");
        return;
    }
    let Some(rsdp) = rsdp_addr else {
        log::warn!("no ACPI RSDP from the loader: one CPU");
        return;
    };
    let mut ids = [u32::MAX; MAX_CPUS];
    let mut found = 0;
    let listed = acpi::find_madt(&PhysMem, rsdp).and_then(|madt| {
        acpi::madt_cpus(&PhysMem, madt, |c| {
            if found < MAX_CPUS {
                ids[found] = c.apic_id;
            }
            found += 1;
        })
    });
    if let Err(e) = listed {
        log::warn!("cannot read the MADT ({e:?}): one CPU");
        return;
    }
    if found > MAX_CPUS {
        log::warn!("the MADT lists {found} CPUs; driving the first {MAX_CPUS}");
    }
    let me = apic_id(0);
    let Some(low) = mem::low_pages() else {
        log::warn!("no free page below 1 MiB for the trampoline: one CPU");
        return;
    };
    let mut next = 1;
    for &id in ids.iter().take(found.min(MAX_CPUS)) {
        if id == me {
            continue;
        }
        if start_ap(low, next, id) {
            next += 1;
            CPU_COUNT.store(next, Ordering::Release);
        } else {
            log::warn!("the CPU with APIC ID {id} did not start");
        }
    }
}

/// One line for the banner: the CPUs and their APIC IDs.
#[derive(Clone, Copy, Debug)]
pub struct Describe;

impl core::fmt::Display for Describe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} online:", cpu_count())?;
        for i in (0..MAX_CPUS).filter(|&i| is_online(i)) {
            write!(f, " cpu{i}=apic{}", apic_id(i))?;
        }
        Ok(())
    }
}

// The AP trampoline. Position-independent: every address it uses is the
// copy's base (from CS in real mode, kept in EBX/RBX) plus an offset, and
// the boot CPU patches the absolute fields before each start. Fixed layout:
//
//   0    jmp to the code at 128
//   8    GDT: null, 32-bit code (0x08), 32-bit data (0x10), 64-bit code (0x18)
//   40   GDT pointer (limit, base: patched)
//   48   far pointer to the 32-bit code (offset: patched, selector 0x08)
//   56   far pointer to the 64-bit code (offset: patched, selector 0x18)
//   64   data: transition CR3, stack top, CPU index, kernel CR3, entry
//   128  code
core::arch::global_asm!(
    r#"
    .section .text.ap_trampoline, "ax"
    .global thermocline_ap_tramp_start
    .global thermocline_ap_tramp_end
    .global thermocline_ap_tramp_pm32
    .global thermocline_ap_tramp_lm64
    .code16
thermocline_ap_tramp_start:
    jmp 2f
    .org thermocline_ap_tramp_start + 8
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
    .word 31
    .long 0
    .org thermocline_ap_tramp_start + 48
    .long 0
    .word 0x08
    .org thermocline_ap_tramp_start + 56
    .long 0
    .word 0x18
    .org thermocline_ap_tramp_start + 64
    .quad 0, 0, 0, 0, 0
    .org thermocline_ap_tramp_start + 128
2:
    cli
    cld
    mov ax, cs
    mov ds, ax
    xor ebx, ebx
    mov bx, ax
    shl ebx, 4
    lgdt [40]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    // jmp far dword [48]: to the 32-bit code, selector 0x08.
    .byte 0x66, 0xFF, 0x2E
    .word 48
    .code32
thermocline_ap_tramp_pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, [ebx + 64]
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x900
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax
    // jmp far dword [ebx + 56]: to the 64-bit code, selector 0x18.
    .byte 0xFF, 0xAB
    .long 56
    .code64
thermocline_ap_tramp_lm64:
    mov ebx, ebx
    mov rsp, [rbx + 72]
    mov rdi, [rbx + 80]
    mov rsi, [rbx + 88]
    mov rax, [rbx + 96]
    jmp rax
thermocline_ap_tramp_end:
    .text
"#
);

/// Offsets of the trampoline's patched fields (see the layout above).
const TRAMP_GDT: u64 = 8;
const TRAMP_GDTR_BASE: u64 = 42;
const TRAMP_PM32_PTR: u64 = 48;
const TRAMP_LM64_PTR: u64 = 56;
const TRAMP_DATA: u64 = 64;

unsafe extern "C" {
    static thermocline_ap_tramp_start: u8;
    static thermocline_ap_tramp_end: u8;
    static thermocline_ap_tramp_pm32: u8;
    static thermocline_ap_tramp_lm64: u8;
}

/// Offset of a trampoline symbol from its start.
fn tramp_offset(sym: *const u8) -> u64 {
    sym as u64 - (&raw const thermocline_ap_tramp_start) as u64
}

/// What an AP runs of the layers above this one (the scheduler), once its
/// CPU tables are loaded: `init` before it reports online, then `main`,
/// for good.
#[derive(Clone, Copy, Debug)]
pub struct ApEntry {
    /// Per-CPU setup that must be done before the CPU is online.
    pub init: fn(),
    /// The CPU's life after it reported online.
    pub main: fn() -> !,
}

static AP_ENTRY: spin::Once<ApEntry> = spin::Once::new();

/// Set by an AP once it runs its scheduler.
static AP_STARTED: AtomicBool = AtomicBool::new(false);

/// Starts the CPU with APIC ID `apic_id` as CPU `index`; whether it came up.
fn start_ap(low: HostPhysAddr, index: usize, apic_id: u32) -> bool {
    let base = low.as_u64();
    let start = &raw const thermocline_ap_tramp_start;
    let len = (&raw const thermocline_ap_tramp_end) as u64 - start as u64;
    assert!(len <= PAGE_SIZE_4K, "AP trampoline larger than a page");
    let pml4 = base + PAGE_SIZE_4K;
    let pdpt = base + 2 * PAGE_SIZE_4K;
    let pd = base + 3 * PAGE_SIZE_4K;
    let stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; AP_STACK_BYTES].into_boxed_slice());
    let stack_top = (stack.as_mut_ptr() as u64 + AP_STACK_BYTES as u64) & !0xF;
    let kernel_cr3 = crate::hw::read_cr3() & 0x000F_FFFF_FFFF_F000;
    // SAFETY:
    // 1. `low..low + 4 pages` is usable RAM below 1 MiB that `mem::init` kept
    //    out of the frame pool for this trampoline; only the boot CPU writes
    //    it, and no AP runs from it now (APs start one at a time and the
    //    previous one left it for its own stack before reporting online).
    // 2. The source is the trampoline's bytes in the kernel image.
    // 3. The kernel PML4 is read through the mapping of physical memory.
    unsafe {
        core::ptr::copy_nonoverlapping(start, phys::to_virt(low), len as usize);
        let put32 = |offset: u64, value: u64| {
            let at = phys::to_virt(HostPhysAddr::new(base + offset)).cast::<u32>();
            at.write_unaligned(value as u32);
        };
        put32(TRAMP_GDTR_BASE, base + TRAMP_GDT);
        put32(
            TRAMP_PM32_PTR,
            base + tramp_offset(&raw const thermocline_ap_tramp_pm32),
        );
        put32(
            TRAMP_LM64_PTR,
            base + tramp_offset(&raw const thermocline_ap_tramp_lm64),
        );
        let entry = ap_entry as *const () as u64;
        for (i, value) in [pml4, stack_top, index as u64, kernel_cr3, entry]
            .into_iter()
            .enumerate()
        {
            phys::write::<u64>(HostPhysAddr::new(base + TRAMP_DATA + 8 * i as u64), value);
        }
        // Transition tables: the kernel's PML4 with entry 0 replaced by an
        // identity map of the first 2 MiB (present, writable, 2 MiB page).
        core::ptr::copy_nonoverlapping(
            phys::to_virt(HostPhysAddr::new(kernel_cr3)),
            phys::to_virt(HostPhysAddr::new(pml4)),
            PAGE_SIZE_4K as usize,
        );
        phys::zero(HostPhysAddr::new(pdpt), PAGE_SIZE_4K);
        phys::zero(HostPhysAddr::new(pd), PAGE_SIZE_4K);
        phys::write::<u64>(HostPhysAddr::new(pml4), pdpt | 0b11);
        phys::write::<u64>(HostPhysAddr::new(pdpt), pd | 0b11);
        phys::write::<u64>(HostPhysAddr::new(pd), 0x83);
    }
    AP_STARTED.store(false, Ordering::Release);
    let page = (base / PAGE_SIZE_4K) as u8;
    let now = crate::time::now_ns;
    apic::send_init(apic_id);
    crate::time::spin_until(now() + 10_000_000);
    for _ in 0..2 {
        apic::send_startup(apic_id, page);
        let deadline = now() + 200_000;
        while now() < deadline {
            if AP_STARTED.load(Ordering::Acquire) {
                return true;
            }
        }
    }
    // Give a slow CPU (an emulator on a loaded host) up to 5 s to arrive.
    let deadline = now() + 5_000_000_000;
    while now() < deadline {
        if AP_STARTED.load(Ordering::Acquire) {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// First Rust code of an AP, on the stack the boot CPU gave it, with the
/// transition page tables still loaded.
extern "sysv64" fn ap_entry(index: u64, kernel_cr3: u64) -> ! {
    // SAFETY: the kernel's own page tables map everything the transition
    // tables did except the trampoline's identity map, which this code (in
    // the kernel image) no longer needs; CR4 is the boot CPU's, whose
    // features this CPU shares (same model).
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) kernel_cr3, options(nostack, preserves_flags));
        x86_64::registers::control::Cr4::write_raw(BOOT_CR4.load(Ordering::Relaxed));
    }
    let index = index as usize;
    apic::enable_this_cpu();
    percpu::install(index, apic::id());
    let df_stack: &'static mut IstStack = Box::leak(Box::new(IstStack::new()));
    let tables: &'static mut CpuTables = Box::leak(Box::new(CpuTables::new(df_stack)));
    tables.load();
    crate::interrupts::load_idt();
    let ap = AP_ENTRY.get().expect("set by init before any AP starts");
    (ap.init)();
    percpu::get(index).online.store(true, Ordering::Release);
    crate::time::start_tick_this_cpu();
    log::info!("cpu{index} online (APIC ID {})", apic::id());
    AP_STARTED.store(true, Ordering::Release);
    (ap.main)()
}

/// A cross-CPU call request; lives on the caller's stack until every target
/// ran it.
struct CallRequest<'a> {
    f: &'a (dyn Fn() + Sync),
    pending: AtomicUsize,
}

/// A pointer to a [`CallRequest`] in a target's queue.
#[derive(Debug)]
pub(crate) struct CallRef(*const CallRequest<'static>);

// SAFETY: the request is `Sync` (a `Sync` closure and an atomic) and stays
// alive until `pending` reaches zero, after the last target used it.
unsafe impl Send for CallRef {}

/// Runs the calls queued for this CPU.
fn serve_calls() {
    loop {
        let next = percpu::this().calls.lock().pop_front();
        let Some(CallRef(req)) = next else {
            return;
        };
        // SAFETY: the caller keeps the request alive until `pending` is 0,
        // which happens only after this decrement.
        let req = unsafe { &*req };
        (req.f)();
        req.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn on_call(_frame: &mut crate::interrupts::InterruptFrame) {
    apic::eoi();
    serve_calls();
}

fn call_on(targets: impl Iterator<Item = usize> + Clone, f: &(dyn Fn() + Sync)) {
    let me = cpu_index();
    let others = targets.clone().filter(|&c| c != me && is_online(c));
    let req = CallRequest {
        f,
        pending: AtomicUsize::new(others.clone().count()),
    };
    let ptr = (&raw const req).cast::<CallRequest<'static>>();
    for c in others.clone() {
        percpu::get(c).calls.lock().push_back(CallRef(ptr));
        send_ipi(c, CALL_VECTOR);
    }
    if targets.clone().any(|c| c == me) {
        f();
    }
    while req.pending.load(Ordering::Acquire) != 0 {
        serve_calls();
        core::hint::spin_loop();
    }
}

/// Runs `f` on CPU `cpu` and waits for it (runs it here if `cpu` is this one).
pub fn run_on(cpu: usize, f: &(dyn Fn() + Sync)) {
    call_on(core::iter::once(cpu), f);
}

/// Runs `f` on every online CPU, this one included, and waits for all.
pub fn run_on_all(f: &(dyn Fn() + Sync)) {
    call_on(0..cpu_count(), f);
}

/// Flushes every CPU's TLB (non-global entries), waiting for all.
pub fn flush_tlb_all() {
    run_on_all(&|| x86_64::instructions::tlb::flush_all());
}

/// Invalidates the page at `vaddr` on every CPU, waiting for all.
pub fn flush_page_all(vaddr: u64) {
    run_on_all(&|| x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(vaddr)));
}
