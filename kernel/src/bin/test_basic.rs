//! Scenario `basic`: the foundation works. Console and logger, CPU tables,
//! the interrupt path (handler registration, register save/restore), the
//! #GP fixup of `rdmsr_safe`, #BP resuming, and the physical-memory mapping.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::interrupts::{self, InterruptFrame};
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "basic",
    cases: &[
        TestCase {
            name: "logger_levels",
            run: logger_levels,
        },
        TestCase {
            name: "gdt_and_tss_loaded",
            run: gdt_and_tss_loaded,
        },
        TestCase {
            name: "idt_covers_256_vectors",
            run: idt_covers_256_vectors,
        },
        TestCase {
            name: "registered_handler_sees_and_changes_registers",
            run: registered_handler,
        },
        TestCase {
            name: "breakpoint_is_reported_and_resumes",
            run: breakpoint_resumes,
        },
        TestCase {
            name: "rdmsr_safe_survives_unknown_msr",
            run: rdmsr_safe,
        },
        TestCase {
            name: "physical_memory_is_mapped",
            run: physical_memory_is_mapped,
        },
        TestCase {
            name: "banner_decodes_cpu",
            run: banner_decodes_cpu,
        },
    ],
};

fn logger_levels() {
    log::error!("logger check: error");
    log::warn!("logger check: warn");
    log::info!("logger check: info");
    log::debug!("logger check: debug (filtered at the default level)");
    assert_eq!(log::max_level(), log::LevelFilter::Info);
}

fn gdt_and_tss_loaded() {
    let (cs, ss, tr): (u16, u16, u16);
    // SAFETY: reading segment registers and the task register has no side effect.
    unsafe {
        asm!("mov {0:x}, cs", "mov {1:x}, ss", "str {2:x}", out(reg) cs, out(reg) ss, out(reg) tr, options(nomem, nostack));
    }
    assert_eq!(cs, 0x08, "kernel code is the GDT's first descriptor");
    assert_eq!(ss, 0x10, "kernel data is the second");
    assert_eq!(tr, 0x18, "the TSS follows");
}

fn idt_covers_256_vectors() {
    let idtr = x86_64::instructions::tables::sidt();
    assert_eq!(idtr.limit, 256 * 16 - 1);
}

static SEEN_VECTOR: AtomicU64 = AtomicU64::new(0);

fn add_one_handler(frame: &mut InterruptFrame) {
    SEEN_VECTOR.store(frame.vector, Ordering::SeqCst);
    frame.rax = frame.rsi + 1;
}

fn registered_handler() {
    interrupts::set_handler(0x40, add_one_handler);
    let (rax, r12, r15): (u64, u64, u64);
    // SAFETY: vector 0x40 has the handler just registered; it changes only RAX
    // in the saved frame, which this asm declares as an output.
    unsafe {
        asm!(
            "int 0x40",
            inout("rax") 0u64 => rax,
            in("rsi") 41u64,
            inout("r12") 0x1212u64 => r12,
            inout("r15") 0x1515u64 => r15,
        );
    }
    interrupts::clear_handler(0x40);
    assert_eq!(SEEN_VECTOR.load(Ordering::SeqCst), 0x40);
    assert_eq!(
        rax, 42,
        "the handler's change to RAX came back through IRETQ"
    );
    assert_eq!((r12, r15), (0x1212, 0x1515), "other registers are restored");
}

fn breakpoint_resumes() {
    x86_64::instructions::interrupts::int3();
}

fn rdmsr_safe() {
    const IA32_APIC_BASE: u32 = 0x1B;
    let apic_base = kernel::hw::rdmsr_safe(IA32_APIC_BASE).expect("IA32_APIC_BASE exists");
    assert_ne!(apic_base & (1 << 8), 0, "this is the bootstrap processor");
    // No CPU implements an MSR at this address: hardware (and the Bochs core)
    // raise #GP, which the fixup turns into `None`. QEMU 7.2's TCG reads
    // unknown MSRs as 0 without faulting, so 0 is accepted too.
    let unknown = kernel::hw::rdmsr_safe(0xC0DE_1234);
    log::info!("RDMSR of an unknown MSR: {unknown:?} (None = #GP caught)");
    assert!(matches!(unknown, None | Some(0)), "got {unknown:?}");
}

fn physical_memory_is_mapped() {
    let info = kernel::boot_info().expect("init stored the boot info");
    let offset = info
        .physical_memory_offset
        .into_option()
        .expect("BOOTLOADER_CONFIG asks for the physical memory mapping");
    // Read the live PML4 through the mapping: the entry that maps the
    // physical-memory window itself must be present.
    let pml4_phys = kernel::hw::read_cr3() & 0x000F_FFFF_FFFF_F000;
    let pml4 = (offset + pml4_phys) as *const u64;
    let index = ((offset >> 39) & 0x1FF) as usize;
    // SAFETY: `offset + pml4_phys` lies in the bootloader's mapping of all
    // physical memory; the PML4 is 512 aligned u64 entries.
    let entry = unsafe { pml4.add(index).read_volatile() };
    assert_ne!(
        entry & 1,
        0,
        "PML4[{index}] maps the physical-memory window"
    );
}

fn banner_decodes_cpu() {
    let info = kernel::banner::print();
    let vendor = kernel::cpu::text(&info.cpuid.vendor_id);
    assert_eq!(
        vendor.len(),
        12,
        "CPUID leaf 0 names a 12-byte vendor: {vendor}"
    );
    assert_eq!(info.features.svm.is_some(), info.cpuid.has_svm());
    assert_eq!(
        info.unreadable_msr, None,
        "every advertised MSR was readable"
    );
}
