//! `evil`: one misbehaviour per run, chosen by the boot argument, so each
//! can be checked on its own. The hypervisor must survive every one of them,
//! report it in one line naming the VM, and stop or continue the VM as
//! `docs/guests.md` documents.
//!
//! Boot argument (RSI): bits 0-7 the scenario, bits 8-63 an optional
//! address (scenarios 1 and 2; 0 = just past the end of RAM).
//!
//! | # | scenario | expected outcome |
//! |---|----------|------------------|
//! | 1 | read outside RAM | VM stopped (nested page fault outside RAM) |
//! | 2 | write outside RAM | VM stopped |
//! | 3 | ports nobody emulates | reads give all ones, writes dropped; exit 0 |
//! | 4 | unknown MSRs, EFER.SVME | #GP injected each time; exit 0 |
//! | 5 | VMX/SVM instructions | #UD injected each time; exit 0 |
//! | 6 | triple fault | VM stopped (shutdown) |
//! | 7 | endless loop, no exits, interrupts off | runs until the host stops it |
//! | 8 | bad hypercall numbers/arguments | errors returned; exit 0 |
//! | 9 | leave a secret in XMM0 | exit 0 |
//! | 10 | read XMM0 | exit code = its low 64 bits: 0 unless another VM's state leaked |
//! | 12 | read 8 bytes at the address (bits 8-63) | exit code = the value read, or VM stopped outside RAM |
//! | 11 | set CR4.PGE (allowed), then CR4.OSXSAVE, XSETBV | #GP for OSXSAVE, #UD (or #GP) for XSETBV; exit 0 |
//! | 13 | `rep outsb` from an address the guest's tables do not map (512 GiB) | VM stopped (string I/O, not mapped) |
//! | 14 | `rep insb` into an address past RAM (mapped, bits 8-63 or RAM + 4 KiB) | VM stopped (string I/O, outside RAM) |
//! | 15 | `rep outsb` of 10000 bytes to an unemulated port | dropped in batches, registers as the CPU leaves them; exit 0 |
//! | 16 | `rep outsb` with an FS override | VM stopped (not emulated) |
//!
//! Scenarios that should continue exit with 0 when the guest saw what the
//! documentation promises and with 1 (after printing why) when it did not.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guests::{BootInfo, HypercallError, nr, println};

guests::entry!(main);

/// Bytes the exception handlers skip: set before each faulting instruction.
#[unsafe(no_mangle)]
static EVIL_SKIP_LEN: AtomicU64 = AtomicU64::new(0);
#[unsafe(no_mangle)]
static EVIL_UD_COUNT: AtomicU64 = AtomicU64::new(0);
#[unsafe(no_mangle)]
static EVIL_GP_COUNT: AtomicU64 = AtomicU64::new(0);

// #UD pushes no error code; #GP does. Both resume after the instruction.
global_asm!(
    ".global evil_ud_handler",
    "evil_ud_handler:",
    "push rax",
    "mov rax, qword ptr [rip + EVIL_SKIP_LEN]",
    "add qword ptr [rsp + 8], rax",
    "lock inc qword ptr [rip + EVIL_UD_COUNT]",
    "pop rax",
    "iretq",
    ".global evil_gp_handler",
    "evil_gp_handler:",
    "push rax",
    "mov rax, qword ptr [rip + EVIL_SKIP_LEN]",
    "add qword ptr [rsp + 16], rax",
    "lock inc qword ptr [rip + EVIL_GP_COUNT]",
    "pop rax",
    "add rsp, 8",
    "iretq",
);

unsafe extern "C" {
    fn evil_ud_handler();
    fn evil_gp_handler();
}

#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

fn gate(handler: u64) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (u64::from(guests::guest_layout::CODE_SELECTOR) << 16)
        | (0x8e << 40)
        | ((handler >> 16) & 0xffff) << 48;
    (low, handler >> 32)
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

fn load_idt(limit: u16) {
    let idt = core::ptr::addr_of_mut!(IDT);
    for (vector, handler) in [
        (6usize, evil_ud_handler as *const () as usize),
        (13, evil_gp_handler as *const () as usize),
    ] {
        let (low, high) = gate(handler as u64);
        // SAFETY: one vCPU, no interrupts: nothing else touches the IDT.
        unsafe {
            (*idt).0[vector * 2] = low;
            (*idt).0[vector * 2 + 1] = high;
        }
    }
    let ptr = DescriptorPointer {
        limit,
        base: idt as u64,
    };
    // SAFETY: the IDT is a static that lives forever; its gates point at
    // handlers that return after the faulting instruction.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(nostack, readonly)) };
}

fn oob_address(boot: &BootInfo) -> u64 {
    match boot.arg >> 8 {
        0 => boot.ram_bytes + 0x1000,
        gpa => gpa,
    }
}

fn ports() -> u64 {
    let mut bad = 0;
    for port in [0x60u16, 0x71, 0xcfc, 0x1234, 0xfff0] {
        let b = guests::inb(port);
        let d = guests::ind(port);
        guests::outb(port, 0x5a);
        if b != 0xff || d != 0xffff_ffff {
            println!("evil: port {port:#x} read {b:#x}/{d:#x}, expected all ones");
            bad += 1;
        }
    }
    u64::from(bad != 0)
}

fn msrs() -> u64 {
    load_idt(0xfff);
    EVIL_SKIP_LEN.store(2, Ordering::SeqCst);
    for msr in [0xdead_0000u32, 0xc001_0117, 0x4b56_4d00, 0xffff_ffff] {
        let (lo, hi): (u32, u32);
        // SAFETY: an unknown MSR raises #GP, which the handler skips.
        unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
        let _ = (lo, hi);
        // SAFETY: as above.
        unsafe {
            asm!("wrmsr", in("ecx") msr, in("eax") 0x1234u32, in("edx") 0u32, options(nostack))
        };
    }
    // Turning on SVM inside the guest is refused with #GP as well.
    let (lo, hi): (u32, u32);
    // SAFETY: reading EFER is allowed and has no side effect.
    unsafe {
        asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") lo, out("edx") hi, options(nostack))
    };
    if lo & (1 << 12) != 0 {
        println!("evil: EFER reads {lo:#x} with SVME set");
        return 1;
    }
    // SAFETY: the write is refused with #GP, which the handler skips.
    unsafe {
        asm!("wrmsr", in("ecx") 0xc000_0080u32, in("eax") lo | (1 << 12), in("edx") hi, options(nostack))
    };
    let gps = EVIL_GP_COUNT.load(Ordering::SeqCst);
    if gps != 9 {
        println!("evil: {gps} #GP for 9 refused MSR accesses");
        return 1;
    }
    0
}

fn virt_instructions() -> u64 {
    load_idt(0xfff);
    let mut expected = 0;
    macro_rules! expect_ud {
        ($len:expr, $($insn:tt)*) => {
            EVIL_SKIP_LEN.store($len, Ordering::SeqCst);
            // SAFETY: the instruction raises #UD in a guest (the hypervisor
            // injects it); the handler resumes after it.
            unsafe { asm!($($insn)*, options(nostack)) };
            expected += 1;
        };
    }
    // SVM: VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA (rAX = 0).
    expect_ud!(3, ".byte 0x0f, 0x01, 0xd8", in("rax") 0u64);
    expect_ud!(3, ".byte 0x0f, 0x01, 0xda", in("rax") 0u64);
    expect_ud!(3, ".byte 0x0f, 0x01, 0xdb", in("rax") 0u64);
    expect_ud!(3, ".byte 0x0f, 0x01, 0xdc");
    expect_ud!(3, ".byte 0x0f, 0x01, 0xdd");
    expect_ud!(3, ".byte 0x0f, 0x01, 0xde", in("rax") 0u64);
    expect_ud!(3, ".byte 0x0f, 0x01, 0xdf", in("rax") 0u64, in("ecx") 0u32);
    // VMX: VMXON [rax], VMLAUNCH, VMRESUME, VMXOFF, VMPTRLD [rax].
    expect_ud!(5, ".byte 0xf3, 0x0f, 0xc7, 0x30, 0x90", in("rax") 0x8000u64);
    expect_ud!(3, ".byte 0x0f, 0x01, 0xc2");
    expect_ud!(3, ".byte 0x0f, 0x01, 0xc3");
    expect_ud!(3, ".byte 0x0f, 0x01, 0xc4");
    expect_ud!(3, ".byte 0x0f, 0xc7, 0x30", in("rax") 0x8000u64);
    let uds = EVIL_UD_COUNT.load(Ordering::SeqCst);
    if uds != expected {
        println!("evil: {uds} #UD for {expected} virtualization instructions");
        return 1;
    }
    0
}

fn bad_hypercalls(boot: &BootInfo) -> u64 {
    let cases = [
        ((0x1234, 0, 0, 0, 0), HypercallError::UnknownNumber),
        ((u64::MAX, 1, 2, 3, 4), HypercallError::UnknownNumber),
        (
            (nr::REPORT_TOUCHED, 0, boot.ram_bytes, 0, 64),
            HypercallError::BadAddress,
        ),
        (
            (nr::REPORT_TOUCHED, 0, u64::MAX - 3, 0, 64),
            HypercallError::BadAddress,
        ),
        (
            (nr::REPORT_TOUCHED, 0, 0x8000, 0, 0),
            HypercallError::InvalidArgument,
        ),
        (
            (nr::REPORT_TOUCHED, 0, 0x8000, u64::MAX, 8),
            HypercallError::InvalidArgument,
        ),
    ];
    let mut bad = 0;
    for ((n, a, b, c, d), want) in cases {
        let rax = guests::hypercall(n, a, b, c, d);
        if HypercallError::from_rax(rax) != Some(want) {
            println!("evil: hypercall {n:#x} returned {rax:#x}, expected {want:?}");
            bad += 1;
        }
    }
    u64::from(bad != 0)
}

/// What scenario 9 leaves in XMM0 for scenario 10 (in another VM) to miss.
const SECRET: u64 = 0x5ec2_e75e_c2e7_5ec2;

fn xmm_secret() -> u64 {
    // SAFETY: MOVQ xmm0, rax (66 48 0F 6E C0); SSE is on (CR4.OSFXSR) and
    // the guest target never uses XMM registers itself.
    unsafe {
        asm!(".byte 0x66, 0x48, 0x0f, 0x6e, 0xc0", in("rax") SECRET, options(nomem, nostack))
    };
    0
}

fn xsetbv() -> u64 {
    load_idt(0xfff);
    // An offered CR4 bit (PGE) goes through the emulated MOV.
    let cr4: u64;
    // SAFETY: sets CR4.PGE of this guest, which only affects its TLB.
    unsafe {
        asm!("mov {t}, cr4", "bts {t}, 7", "mov cr4, {t}", "mov {t}, cr4", t = out(reg) cr4, options(nomem, nostack));
    }
    if cr4 & (1 << 7) == 0 {
        println!("evil: CR4.PGE did not stick: {cr4:#x}");
        return 1;
    }
    // XSETBV needs CR4.OSXSAVE; the hypervisor refuses to set it (#GP),
    // and XSETBV itself then raises #UD, or #GP where it exits.
    EVIL_SKIP_LEN.store(4, Ordering::SeqCst);
    // SAFETY: MOV rax, cr4 / BTS / MOV cr4, rax: the MOV to CR4 (0F 22 E0,
    // 3 bytes, plus the 1-byte skip fudge below) is refused with #GP, which
    // the handler skips.
    unsafe {
        asm!(
            "mov rax, cr4",
            "bts rax, 18",
            ".byte 0x0f, 0x22, 0xe0, 0x90",
            out("rax") _,
            options(nomem, nostack)
        );
    }
    EVIL_SKIP_LEN.store(3, Ordering::SeqCst);
    // SAFETY: XSETBV (0F 01 D1) with XCR0 = x87|SSE|AVX: refused with #UD
    // or #GP, which the handlers skip.
    unsafe {
        asm!(".byte 0x0f, 0x01, 0xd1", in("ecx") 0u32, in("eax") 7u32, in("edx") 0u32, options(nostack));
    }
    let (gps, uds) = (
        EVIL_GP_COUNT.load(Ordering::SeqCst),
        EVIL_UD_COUNT.load(Ordering::SeqCst),
    );
    if gps + uds != 2 || gps < 1 {
        println!("evil: {gps} #GP and {uds} #UD for a refused CR4.OSXSAVE and XSETBV");
        return 1;
    }
    0
}

/// 10000 bytes of the image to port 0x80 in one REP OUTSB: the hypervisor
/// moves them in batches (the guest re-executes the instruction between),
/// and the registers end as the CPU leaves them.
fn long_rep_outsb() -> u64 {
    const BYTES: u64 = 10_000;
    let start = guests::guest_layout::IMAGE_GPA;
    let (rsi, rcx): (u64, u64);
    // SAFETY: reads BYTES bytes from the image and the RAM after it (all
    // inside RAM) and writes them to a port nobody emulates.
    unsafe {
        asm!("rep outsb", in("dx") 0x80u16, inout("rsi") start => rsi, inout("rcx") BYTES => rcx,
            options(nostack, readonly));
    }
    if rsi != start + BYTES || rcx != 0 {
        println!("evil: after rep outsb RSI {rsi:#x} RCX {rcx:#x}");
        return 1;
    }
    0
}

fn read_xmm0() -> u64 {
    let v: u64;
    // SAFETY: MOVQ rax, xmm0 (66 48 0F 7E C0): reads a register only.
    unsafe { asm!(".byte 0x66, 0x48, 0x0f, 0x7e, 0xc0", out("rax") v, options(nomem, nostack)) };
    println!("evil: xmm0 holds {v:#x} at start");
    v
}

fn main(boot: BootInfo) -> u64 {
    let scenario = boot.arg & 0xff;
    println!("evil: scenario {scenario}");
    match scenario {
        1 => {
            let gpa = oob_address(&boot);
            println!("evil: reading {gpa:#x}");
            let v = guests::read_u64(gpa);
            println!("evil: read {gpa:#x} gave {v:#x} and the VM goes on");
            1
        }
        2 => {
            let gpa = oob_address(&boot);
            println!("evil: writing {gpa:#x}");
            guests::write_u64(gpa, 0x0bad_c0de);
            println!("evil: write to {gpa:#x} went through and the VM goes on");
            1
        }
        3 => ports(),
        4 => msrs(),
        5 => virt_instructions(),
        6 => {
            load_idt(0);
            // SAFETY: with an empty IDT the breakpoint cannot be delivered:
            // #GP, then #DF, then shutdown. That is the scenario.
            unsafe { asm!("int3", options(nostack)) };
            println!("evil: survived a triple fault");
            1
        }
        7 => loop {
            // SAFETY: masks interrupts in the guest only; the host still
            // preempts it (physical interrupts exit).
            unsafe { asm!("cli", options(nomem, nostack)) };
            core::hint::spin_loop();
        },
        8 => bad_hypercalls(&boot),
        9 => xmm_secret(),
        10 => read_xmm0(),
        11 => xsetbv(),
        12 => guests::read_u64(boot.arg >> 8),
        13 => {
            // SAFETY: the hypervisor emulates the instruction and stops the
            // VM at the unmapped source; nothing in this guest is touched.
            unsafe {
                asm!("rep outsb", in("dx") 0x3f8u16, in("rsi") 512u64 << 30, in("rcx") 4u64,
                    options(nostack, readonly));
            }
            println!("evil: rep outsb from an unmapped address went on");
            1
        }
        14 => {
            let gpa = oob_address(&boot);
            // SAFETY: as above: the destination is outside RAM, the VM stops.
            unsafe {
                asm!("rep insb", in("dx") 0x3fdu16, in("rdi") gpa, in("rcx") 4u64,
                    options(nostack));
            }
            println!("evil: rep insb to {gpa:#x} went on");
            1
        }
        15 => long_rep_outsb(),
        16 => {
            // SAFETY: FS-relative REP OUTSB of 4 bytes at FS:0x100000 (the
            // image); the hypervisor refuses to emulate it and stops the VM.
            unsafe {
                asm!(".byte 0x64, 0xf3, 0x6e", in("dx") 0x3f8u16, in("rsi") 0x10_0000u64,
                    in("rcx") 4u64, options(nostack, readonly));
            }
            println!("evil: FS-relative rep outsb went on");
            1
        }
        _ => {
            println!("evil: unknown scenario {scenario}");
            1
        }
    }
}
