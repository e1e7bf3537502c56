//! The Bochs bed's own test kernel: checks the entry contract that
//! `tests/bochs/bed.py` promises (README.md there) and the CPU facts the VMX
//! backend relies on, before any Thermocline code is involved.
//!
//! Entered through `bootloader_api::entry_point!` like the real kernel, it
//! checks the `BootInfo` (version, memory map, physical-memory mapping, stack,
//! relocations), reports whether the TSC advances, then does what the VMX
//! backend will do first: IA32_FEATURE_CONTROL, CR0/CR4 fixed bits, VMXON,
//! the EPT/VPID/unrestricted-guest capabilities, VMXOFF (Intel SDM Vol. 3C,
//! "Enabling and Entering VMX Operation" and "VMX Capability Reporting
//! Facility"). It prints one line per check and exits through the
//! isa-debug-exit port (0x10 pass, 0x11 fail).
#![no_std]
#![no_main]

use core::arch::asm;
use core::fmt::{self, Write};

use bootloader_api::config::Mapping;
use bootloader_api::info::MemoryRegionKind;
use bootloader_api::{BootInfo, BootloaderConfig, entry_point};

static CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config
};
entry_point!(main, config = &CONFIG);

const COM1: u16 = 0x3f8;
const EXIT_PORT: u16 = 0xf4;

const IA32_FEATURE_CONTROL: u32 = 0x3a;
const IA32_VMX_BASIC: u32 = 0x480;
const IA32_VMX_CR0_FIXED0: u32 = 0x486;
const IA32_VMX_CR0_FIXED1: u32 = 0x487;
const IA32_VMX_CR4_FIXED0: u32 = 0x488;
const IA32_VMX_CR4_FIXED1: u32 = 0x489;
const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to the bed's COM1 and exit port; no memory is touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O to the bed's COM1; no memory is touched.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) };
    value
}

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // Wait for "transmit holding register empty" in the line status.
            while inb(COM1 + 5) & 0x20 == 0 {}
            outb(COM1, b);
        }
        Ok(())
    }
}

macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(Serial, $($t)*); }};
}

fn exit(code: u8) -> ! {
    outb(EXIT_PORT, code);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("selftest: panic: {info}");
    exit(0x11)
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads an architectural MSR that the CPU reports (CPUID checked
    // by the caller for the VMX ones); no memory is touched.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

/// # Safety
/// The write must be valid for the MSR and not break the running kernel.
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write is valid (see `# Safety`).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem, nostack));
    }
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

fn cr(n: u8) -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effects.
    unsafe {
        match n {
            0 => asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)),
            3 => asm!("mov {}, cr3", out(reg) v, options(nomem, nostack)),
            _ => asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)),
        }
    }
    v
}

/// Translates a virtual address through the live page tables, reading them
/// through the physical-memory mapping the bed promised.
fn translate(phys_offset: u64, va: u64) -> Option<u64> {
    let mut table = cr(3) & 0x000f_ffff_ffff_f000;
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let index = (va >> shift) & 511;
        // SAFETY: `table` is a page-table frame inside guest RAM, which the
        // bed maps in full at `phys_offset`; reading an entry is side-effect free.
        let entry =
            unsafe { core::ptr::read_volatile((phys_offset + table + index * 8) as *const u64) };
        if entry & 1 == 0 {
            return None;
        }
        let frame = entry & 0x000f_ffff_ffff_f000;
        if level > 0 && level < 3 && entry & 0x80 != 0 {
            return Some(frame + (va & ((1 << shift) - 1)));
        }
        table = frame;
    }
    Some(table + (va & 0xfff))
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut VMXON_REGION: Page = Page([0; 4096]);

/// Pointers in a static: the bed must have applied R_X86_64_RELATIVE for these to work.
static NAMES: [&str; 2] = ["relocated", "table"];

struct Checks {
    failed: u32,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool, detail: fmt::Arguments<'_>) {
        say!(
            "selftest: {what}: {} ({detail})",
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            self.failed += 1;
        }
    }
}

fn main(info: &'static mut BootInfo) -> ! {
    let mut c = Checks { failed: 0 };
    let v = &info.api_version;
    c.check(
        "api version",
        v.version_major() == 0 && v.version_minor() == 11,
        format_args!(
            "{}.{}.{}",
            v.version_major(),
            v.version_minor(),
            v.version_patch()
        ),
    );

    let usable: u64 = info
        .memory_regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| r.end - r.start)
        .sum();
    let sorted = info
        .memory_regions
        .windows(2)
        .all(|w| w[0].end <= w[1].start);
    c.check(
        "memory map",
        !info.memory_regions.is_empty() && sorted && usable >= 64 << 20,
        format_args!(
            "{} regions, {} MiB usable",
            info.memory_regions.len(),
            usable >> 20
        ),
    );

    let rsp: u64;
    // SAFETY: reads the stack pointer only.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    let stack = info.kernel_stack_bottom..info.kernel_stack_bottom + info.kernel_stack_len;
    c.check(
        "stack",
        stack.contains(&rsp),
        format_args!("rsp {rsp:#x} in {stack:#x?}"),
    );

    let image = info.kernel_image_offset;
    let name_addr = NAMES[0].as_ptr() as u64;
    c.check(
        "relocations",
        NAMES[0] == "relocated" && NAMES[1] == "table" && name_addr > image,
        format_args!("image at {image:#x}, string at {name_addr:#x}"),
    );

    let Some(phys_offset) = info.physical_memory_offset.into_option() else {
        c.check("physical memory mapping", false, format_args!("none"));
        exit(0x11)
    };
    let code_pa = translate(phys_offset, main as *const () as u64);
    c.check(
        "physical memory mapping",
        code_pa.is_some(),
        format_args!("offset {phys_offset:#x}, main at physical {code_pa:x?}"),
    );
    let file_ok = code_pa.is_some() && {
        // SAFETY: the kernel file lies in guest RAM, mapped at `phys_offset`.
        let magic =
            unsafe { core::ptr::read_volatile((phys_offset + info.kernel_addr) as *const [u8; 4]) };
        magic == *b"\x7fELF"
    };
    c.check(
        "kernel file",
        file_ok,
        format_args!(
            "{} bytes at physical {:#x}",
            info.kernel_len, info.kernel_addr
        ),
    );

    // Spin a while and see whether time moves (TESTBEDS: the TSC is frozen here).
    let t0 = rdtsc();
    for i in 0..1_000_000u32 {
        core::hint::black_box(i);
    }
    let t1 = rdtsc();
    say!(
        "selftest: tsc: {} ({t0} -> {t1})",
        if t1 > t0 { "advances" } else { "frozen" }
    );

    vmx(&mut c, phys_offset);

    if c.failed == 0 {
        say!("selftest: all checks passed");
        exit(0x10)
    }
    say!("selftest: {} checks failed", c.failed);
    exit(0x11)
}

fn vmx(c: &mut Checks, phys_offset: u64) {
    let ecx: u32;
    // SAFETY: CPUID leaf 1 only reads identification registers; RBX is
    // preserved by hand because LLVM reserves it.
    unsafe {
        asm!("push rbx", "cpuid", "pop rbx", inout("eax") 1u32 => _, out("ecx") ecx,
             out("edx") _, options(nomem));
    }
    c.check(
        "cpuid vmx",
        ecx & (1 << 5) != 0,
        format_args!("cpuid.1:ecx {ecx:#x}"),
    );
    if ecx & (1 << 5) == 0 {
        return;
    }

    let fc = rdmsr(IA32_FEATURE_CONTROL);
    if fc & 1 == 0 {
        // SAFETY: lock the MSR with "VMX outside SMX" enabled, as firmware would.
        unsafe { wrmsr(IA32_FEATURE_CONTROL, fc | 5) };
    }
    let fc2 = rdmsr(IA32_FEATURE_CONTROL);
    c.check(
        "feature control",
        fc2 & 5 == 5,
        format_args!("{fc:#x} -> {fc2:#x}"),
    );

    let basic = rdmsr(IA32_VMX_BASIC);
    let revision = (basic & 0x7fff_ffff) as u32;
    let (cr0, cr4) = (cr(0), cr(4));
    let new_cr0 = (cr0 | rdmsr(IA32_VMX_CR0_FIXED0)) & rdmsr(IA32_VMX_CR0_FIXED1);
    let new_cr4 = ((cr4 | rdmsr(IA32_VMX_CR4_FIXED0)) & rdmsr(IA32_VMX_CR4_FIXED1)) | (1 << 13);
    // SAFETY: the new values only add the bits VMX requires (NE, VMXE) to
    // the running long-mode configuration.
    unsafe {
        asm!("mov cr0, {}", in(reg) new_cr0, options(nostack));
        asm!("mov cr4, {}", in(reg) new_cr4, options(nostack));
    }
    say!(
        "selftest: vmx basic {basic:#x}; cr0 {cr0:#x} -> {new_cr0:#x}; cr4 {cr4:#x} -> {new_cr4:#x}"
    );

    let region = &raw mut VMXON_REGION;
    // SAFETY: the VMXON region is used by this single-threaded check only.
    unsafe { region.cast::<u32>().write(revision) };
    let Some(region_pa) = translate(phys_offset, region as u64) else {
        c.check(
            "vmxon",
            false,
            format_args!("cannot translate the VMXON region"),
        );
        return;
    };
    let rflags: u64;
    // SAFETY: VMXON with a 4-KiB aligned region holding the VMCS revision
    // identifier, CR0/CR4 fixed bits applied and IA32_FEATURE_CONTROL locked
    // with VMX enabled (SDM "Enabling and Entering VMX Operation").
    unsafe {
        asm!("vmxon [{}]", "pushfq", "pop {}", in(reg) &raw const region_pa, lateout(reg) rflags);
    }
    let ok = rflags & 0x41 == 0;
    c.check(
        "vmxon",
        ok,
        format_args!("region at {region_pa:#x}, rflags {rflags:#x}"),
    );
    if !ok {
        return;
    }

    // The capability MSRs, for golden data in host tests (hvcore::vmx).
    for msr in 0x480..=0x491u32 {
        say!("selftest: vmx msr {msr:#x} = {:#018x}", rdmsr(msr));
    }
    let ctls2 = rdmsr(IA32_VMX_PROCBASED_CTLS2) >> 32;
    let ept = ctls2 & (1 << 1) != 0;
    let vpid = ctls2 & (1 << 5) != 0;
    let unrestricted = ctls2 & (1 << 7) != 0;
    c.check(
        "secondary controls",
        ept && vpid && unrestricted,
        format_args!(
            "allowed-1 {ctls2:#x}: ept {ept}, vpid {vpid}, unrestricted guest {unrestricted}"
        ),
    );
    let cap = rdmsr(IA32_VMX_EPT_VPID_CAP);
    let ad = cap & (1 << 21) != 0;
    let wb = cap & (1 << 14) != 0;
    let walk4 = cap & (1 << 6) != 0;
    let invept = cap & (1 << 20) != 0 && cap & (1 << 25) != 0;
    c.check(
        "ept capabilities",
        ad && wb && walk4 && invept,
        format_args!(
            "{cap:#x}: A/D {ad}, write-back {wb}, 4-level {walk4}, invept single-context {invept}"
        ),
    );

    // SAFETY: leaves VMX operation entered above; no VMCS is current.
    unsafe { asm!("vmxoff", options(nostack)) };
    say!("selftest: vmxoff done");
}
