//! Runtime for Thermocline's test guests: entry, serial console, hypercalls.
//!
//! Every guest is a flat binary loaded at GPA 0x10_0000 and entered in 64-bit
//! long mode as `hvcore::guest_layout` describes (docs/guests.md). A guest
//! binary names its main function with [`entry!`]; this library gives it a
//! 16550 console ([`println!`]), the hypercalls of `docs/hypercalls.md`
//! ([`hypercall`], [`exit`]) and a panic handler that prints and exits with
//! [`EXIT_PANIC`].
//!
//! Neighbours: `hvcore::hypercall` (the numbers), the kernel's UART model and
//! hypercall handler (the other side of both interfaces).
#![no_std]

use core::arch::asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicU8, Ordering};

pub use hvcore::guest_layout;
pub use hvcore::hypercall::{HypercallError, nr};

/// Exit code a guest reports when it panicked.
pub const EXIT_PANIC: u64 = 0xdead;

/// What the hypervisor passes at entry (RDI, RSI, RDX).
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Guest RAM is `[0, ram_bytes)`.
    pub ram_bytes: u64,
    /// Free-form argument chosen by whoever created the VM.
    pub arg: u64,
    /// The VM's id.
    pub vm_id: u64,
}

/// Declares the guest's main function, `fn(BootInfo) -> u64`; its return
/// value becomes the exit code given to the `EXIT` hypercall.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".pushsection .text.start, \"ax\"",
            ".global _start",
            "_start:",
            "and rsp, -16",
            "call {start}",
            "2: hlt",
            "jmp 2b",
            ".popsection",
            start = sym __guest_start,
        );

        extern "sysv64" fn __guest_start(ram_bytes: u64, arg: u64, vm_id: u64) -> ! {
            let code = $main($crate::BootInfo {
                ram_bytes,
                arg,
                vm_id,
            });
            $crate::exit(code)
        }
    };
}

const VENDOR_UNKNOWN: u8 = 0;
const VENDOR_AMD: u8 = 1;
const VENDOR_INTEL: u8 = 2;
static VENDOR: AtomicU8 = AtomicU8::new(VENDOR_UNKNOWN);

fn vendor() -> u8 {
    let v = VENDOR.load(Ordering::Relaxed);
    if v != VENDOR_UNKNOWN {
        return v;
    }
    let id = core::arch::x86_64::__cpuid(0);
    // "AuthenticAMD" and "HygonGenuine" use VMMCALL; everything else VMCALL.
    let v = if id.ebx == u32::from_le_bytes(*b"Auth") || id.ebx == u32::from_le_bytes(*b"Hygo") {
        VENDOR_AMD
    } else {
        VENDOR_INTEL
    };
    VENDOR.store(v, Ordering::Relaxed);
    v
}

/// Makes hypercall `number` with up to four arguments; returns RAX.
pub fn hypercall(number: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let mut rax = number;
    if vendor() == VENDOR_AMD {
        // SAFETY: VMMCALL transfers to the hypervisor, which by the ABI in
        // docs/hypercalls.md changes only RAX and resumes after the instruction.
        unsafe {
            asm!("vmmcall", inout("rax") rax, in("rdi") a0, in("rsi") a1, in("rdx") a2, in("rcx") a3, options(nostack));
        }
    } else {
        // SAFETY: as above, for VMCALL.
        unsafe {
            asm!("vmcall", inout("rax") rax, in("rdi") a0, in("rsi") a1, in("rdx") a2, in("rcx") a3, options(nostack));
        }
    }
    rax
}

/// Stops the VM with `code` (0 = success).
pub fn exit(code: u64) -> ! {
    hypercall(nr::EXIT, code, 0, 0, 0);
    // The hypervisor never resumes a guest after EXIT; if one did, halt.
    loop {
        // SAFETY: HLT only waits; with interrupts off it parks this vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Host monotonic time in nanoseconds.
pub fn time_ns() -> u64 {
    hypercall(nr::TIME_NS, 0, 0, 0, 0)
}

/// Tells the hypervisor the guest reached phase `tag`.
pub fn mark(tag: u64) {
    hypercall(nr::MARK, tag, 0, 0, 0);
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O has no memory effects in a guest; the hypervisor
    // emulates or ignores the port.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) };
    v
}

/// Writes a byte to an I/O port.
pub fn outb(port: u16, v: u8) {
    // SAFETY: as for `inb`.
    unsafe { asm!("out dx, al", in("al") v, in("dx") port, options(nomem, nostack)) };
}

/// Reads a dword from an I/O port.
pub fn ind(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `inb`.
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack)) };
    v
}

const COM1: u16 = 0x3f8;

/// The 16550 console at COM1.
#[derive(Debug)]
pub struct Serial;

impl Serial {
    fn put(b: u8) {
        // Wait for "transmitter holding register empty" like a real driver.
        while inb(COM1 + 5) & 0x20 == 0 {}
        outb(COM1, b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            Self::put(b);
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: core::fmt::Arguments<'_>) {
    let _ = Serial.write_fmt(args);
}

/// Prints to the guest's serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*)) };
}

/// Prints a line to the guest's serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Volatile 8-byte read of guest memory at `gpa` (identity mapped).
pub fn read_u64(gpa: u64) -> u64 {
    // SAFETY: the boot page tables identity-map every GPA below 512 GiB; an
    // address outside RAM faults into the hypervisor, which is the point of
    // the callers that use one.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

/// Volatile 8-byte write of guest memory at `gpa` (identity mapped).
pub fn write_u64(gpa: u64, v: u64) {
    // SAFETY: as for `read_u64`; callers write only their data region or
    // deliberately outside RAM.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, v) }
}

/// Guests have no heap. `hvcore` (shared for the ABI constants) links the
/// `alloc` crate for the hypervisor's page store, which makes every binary
/// that uses it name a global allocator; this one refuses every request, so
/// an allocation in a guest fails loudly instead of corrupting memory.
struct NoHeap;

// SAFETY: returning null is always a valid answer of `alloc` (it reports
// exhaustion); `dealloc` is never reached because nothing is ever allocated.
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _layout: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
}

#[global_allocator]
static NO_HEAP: NoHeap = NoHeap;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("guest panic: {info}");
    exit(EXIT_PANIC)
}
