//! The kernel's smallest hardware layer: port I/O, leaving the emulator, and
//! the few privileged instructions the early kernel needs.
//!
//! Everything here is `unsafe` at the bottom and exposes a narrow interface so
//! the rest of the kernel states *why* an access is sound in one place.
//!
//! Exit protocol (QEMU's `isa-debug-exit` device; full-system Bochs has no
//! such device and its runner ends a run at the console's summary line
//! instead, the kernel halting here): a 32-bit write of `code` to port [`EXIT_PORT`] ends the
//! emulator; QEMU then exits with status `(code << 1) | 1`, so
//! [`ExitCode::Success`] (0x10) becomes 33 and [`ExitCode::Failure`] (0x11)
//! becomes 35. Both codes are odd after the shift and distinct from a QEMU
//! error (1) or a triple fault with `--no-reboot` (0).
//!
//! Neighbours: `console` writes COM1 through `uart_16550` and falls back to
//! [`com1_write_byte`]; `panic` and `interrupts` leave through [`exit`].
//! Follows: Intel SDM Vol. 1 "Input/Output" (IN/OUT), Vol. 2 CPUID, RDMSR.

use core::arch::asm;

/// I/O port of the exit device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const EXIT_PORT: u16 = 0xF4;
/// COM1 base port.
pub const COM1: u16 = 0x3F8;
/// The second serial port (the log while a guest owns COM1).
pub const COM2: u16 = 0x2F8;

/// How the kernel leaves the emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Every test case passed (QEMU status 33).
    Success = 0x10,
    /// A test case failed, the kernel panicked or took a fatal exception (QEMU status 35).
    Failure = 0x11,
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must belong to a device whose reaction to this write cannot break
/// memory safety (e.g. not a DMA controller programmed with arbitrary addresses).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device; OUT touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reading the port must have no memory-unsafe side effect.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the device; IN touches no memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller vouches for the device; OUT touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Leaves the emulator with `code`. Panic-free: it runs from the panic handler.
///
/// Without an exit device (real hardware, or a QEMU started without it) the
/// write is ignored and the CPU halts forever with interrupts off.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xF4 is the exit device or nothing; writing it ends the
    // emulator or is ignored, and touches no memory.
    unsafe { outl(EXIT_PORT, code as u32) };
    halt_forever()
}

/// Stops this CPU for good: interrupts off, then HLT in a loop (an NMI or SMI
/// can still wake HLT, hence the loop).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI and HLT only change this CPU's interrupt flag and state.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Masks every line of both legacy 8259 PICs.
///
/// Firmware may leave them unmasked with their vectors on 0x08-0x0F, which
/// overlap CPU exceptions (a timer tick would look like a double fault). The
/// platform layer uses the local APIC instead.
pub fn mask_legacy_pic() {
    // SAFETY: 0x21 and 0xA1 are the PICs' interrupt mask registers; masking
    // lines only suppresses interrupts.
    unsafe {
        outb(0x21, 0xFF);
        outb(0xA1, 0xFF);
    }
}

/// Reads register `index` (0-0x7F) of the host's CMOS clock/NVRAM. NMIs
/// stay enabled (bit 7 of the index clear).
pub fn cmos_read(index: u8) -> u8 {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: the CMOS index and data ports of every PC; selecting a
        // register and reading it changes nothing but the index latch,
        // which only this function uses (with interrupts off, so no other
        // code on this CPU interleaves).
        unsafe {
            outb(0x70, index & 0x7f);
            inb(0x71)
        }
    })
}

/// Sends one byte on COM1 without a lock, waiting a bounded time for the
/// transmitter. Used where the console lock may be held (panic, exceptions)
/// and as the fallback when the UART did not pass `uart_16550`'s presence check.
pub fn com1_write_byte(byte: u8) {
    /// Line status register: transmitter holding register empty.
    const LSR_THR_EMPTY: u8 = 1 << 5;
    // Bounded: a missing or stuck UART must not hang a panic report.
    for _ in 0..100_000 {
        // SAFETY: COM1's line status register; reading it has no side effect
        // besides clearing error bits.
        if unsafe { inb(COM1 + 5) } & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: COM1's transmit register; the write sends one byte.
    unsafe { outb(COM1, byte) };
}

/// The result of one CPUID leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Executes CPUID with `leaf` and `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU (CPUID or another MSR says so); reading an
/// absent MSR raises #GP.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CR2: the linear address of the last page fault.
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 at CPL 0 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// CR3: the current page-table root and PCID bits.
pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 at CPL 0 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

// RDMSR that survives a missing MSR: `thermocline_rdmsr_safe(msr, out)`
// returns 0 and stores the value, or returns 1 when RDMSR raised #GP. The #GP
// path finds the faulting RIP equal to `thermocline_rdmsr_insn` (see
// `fixup_for`) and resumes at `thermocline_rdmsr_fixup` instead of reporting a
// fatal exception (the exception-table idea, for one instruction).
core::arch::global_asm!(
    r#"
    .section .text.rdmsr_safe, "ax"
    .global thermocline_rdmsr_safe
    thermocline_rdmsr_safe:
        mov ecx, edi
    .global thermocline_rdmsr_insn
    thermocline_rdmsr_insn:
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov [rsi], rax
        xor eax, eax
        ret
    .global thermocline_rdmsr_fixup
    thermocline_rdmsr_fixup:
        mov eax, 1
        ret
    .text
    "#
);

unsafe extern "C" {
    fn thermocline_rdmsr_safe(msr: u32, out: *mut u64) -> u32;
    fn thermocline_rdmsr_insn();
    fn thermocline_rdmsr_fixup();
}

/// Reads an MSR, or returns `None` when the CPU raised #GP for it (the MSR
/// does not exist, e.g. an emulator that does not model it). Needs the IDT
/// loaded (`crate::init`); before that a #GP would triple-fault.
pub fn rdmsr_safe(msr: u32) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the routine writes only `value`; a #GP inside it is turned into
    // a return of 1 by the fixup in the exception path.
    let faulted = unsafe { thermocline_rdmsr_safe(msr, &mut value) };
    (faulted == 0).then_some(value)
}

/// Where to resume after a fault at `rip`, if `rip` is an instruction that
/// expects to fault (only [`rdmsr_safe`]'s RDMSR).
pub fn fixup_for(rip: u64) -> Option<u64> {
    let insn = thermocline_rdmsr_insn as *const () as u64;
    let fixup = thermocline_rdmsr_fixup as *const () as u64;
    (rip == insn).then_some(fixup)
}
