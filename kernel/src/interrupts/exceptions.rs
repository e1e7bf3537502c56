//! Readable reports of CPU exceptions.
//!
//! Without a registered handler, an exception is fatal: [`report`] prints the
//! vector, its name, the error code (decoded for #PF), RIP, CR2, CR3 and all
//! general-purpose registers, then leaves through the failure path shared with
//! the panic handler (`testing::fail_and_exit`). #BP (INT3) is the exception:
//! it is reported and execution resumes after the INT3.
//!
//! A #PF or #DF whose address (or stack pointer) lies in the guard below a
//! thread stack (`crate::mem::stacks`) adds a line naming the thread whose
//! stack overflowed. #PF stays on the current stack (no IST): an overflow
//! turns into #DF, which has its own stack, as Linux reports it; a #PF on
//! an IST stack would be clobbered by a nested #PF in its own handler.
//!
//! Reports use the lock-free console writer: the exception may have hit while
//! this CPU held the console lock.
//!
//! Follows: Intel SDM Vol. 3 "Exception and Interrupt Reference" (names,
//! error codes), "Page-Fault Error Code".

use super::InterruptFrame;
use crate::{console, hw};
use core::fmt::Write;

/// Names the thread whose stack guard an address lies in: `Some(None)` for
/// a guard of a free slot, `None` outside every guard.
pub type GuardLookup = fn(u64) -> Option<Option<&'static str>>;

/// The stack allocator's lookup and its stack size in bytes, installed by
/// `mem::stacks` (a layer above this report) when it maps its first stack.
static GUARD_LOOKUP: spin::Once<(GuardLookup, usize)> = spin::Once::new();

/// Lets the report name a stack overflow: `lookup` answers for guard pages,
/// `stack_bytes` is each thread stack's size. The first call wins.
pub fn set_guard_lookup(lookup: GuardLookup, stack_bytes: usize) {
    GUARD_LOOKUP.call_once(|| (lookup, stack_bytes));
}

/// Vector of #DF.
pub const DOUBLE_FAULT: usize = 8;
/// Vector of #GP.
pub const GENERAL_PROTECTION: usize = 13;
/// Vector of #PF.
pub const PAGE_FAULT: usize = 14;
/// Vector of #BP.
pub const BREAKPOINT: usize = 3;

/// Mnemonic and name of exception `vector` (0-31).
pub fn name(vector: usize) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        9 => ("#MF9", "coprocessor segment overrun"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        28 => ("#HV", "hypervisor injection"),
        29 => ("#VC", "VMM communication"),
        30 => ("#SX", "security exception"),
        _ => ("#??", "reserved"),
    }
}

/// Writes the meaning of a page-fault error code's bits.
fn decode_page_fault(w: &mut impl Write, code: u64) -> core::fmt::Result {
    let present = if code & 1 != 0 {
        "protection violation"
    } else {
        "not present"
    };
    let access = if code & (1 << 4) != 0 {
        "instruction fetch"
    } else if code & (1 << 1) != 0 {
        "write"
    } else {
        "read"
    };
    let mode = if code & (1 << 2) != 0 {
        "user"
    } else {
        "supervisor"
    };
    write!(w, " ({present}, {access}, {mode}")?;
    if code & (1 << 3) != 0 {
        write!(w, ", reserved bit set")?;
    }
    if code & (1 << 5) != 0 {
        write!(w, ", protection key")?;
    }
    if code & (1 << 6) != 0 {
        write!(w, ", shadow stack")?;
    }
    write!(w, ")")
}

/// Prints the full report of `frame` (best effort: console errors are ignored).
pub fn write_report(w: &mut impl Write, frame: &InterruptFrame) -> core::fmt::Result {
    let vector = (frame.vector & 0xFF) as usize;
    let (mnemonic, name) = name(vector);
    let cpu = crate::logger::cpu_id();
    writeln!(
        w,
        "[exception] {mnemonic} {name} (vector {vector}) on cpu{cpu}"
    )?;
    write!(w, "[exception] error code {:#x}", frame.error_code)?;
    if vector == PAGE_FAULT {
        decode_page_fault(w, frame.error_code)?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "[exception] RIP={:#018x} CS={:#x} RFLAGS={:#x} RSP={:#018x} SS={:#x}",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss
    )?;
    let cr2 = hw::read_cr2();
    writeln!(
        w,
        "[exception] CR2={cr2:#018x} CR3={:#018x}",
        hw::read_cr3()
    )?;
    // A thread that ran off its stack hits the guard below it: #PF at the
    // access, which becomes #DF when the CPU cannot push the #PF frame on
    // that same stack (CR2 and the interrupted RSP then point at the guard).
    if vector == PAGE_FAULT || vector == DOUBLE_FAULT {
        let hit = GUARD_LOOKUP
            .get()
            .and_then(|&(lookup, bytes)| Some((lookup(cr2).or_else(|| lookup(frame.rsp))?, bytes)));
        if let Some((name, stack_bytes)) = hit {
            writeln!(
                w,
                "[exception] stack overflow of thread {}: the access hit the unmapped guard below its {}-byte stack",
                name.unwrap_or("<none: a free stack slot>"),
                stack_bytes
            )?;
        }
    }
    let f = frame;
    writeln!(
        w,
        "[exception] RAX={:#018x} RBX={:#018x} RCX={:#018x} RDX={:#018x}",
        f.rax, f.rbx, f.rcx, f.rdx
    )?;
    writeln!(
        w,
        "[exception] RSI={:#018x} RDI={:#018x} RBP={:#018x} R8 ={:#018x}",
        f.rsi, f.rdi, f.rbp, f.r8
    )?;
    writeln!(
        w,
        "[exception] R9 ={:#018x} R10={:#018x} R11={:#018x} R12={:#018x}",
        f.r9, f.r10, f.r11, f.r12
    )?;
    writeln!(
        w,
        "[exception] R13={:#018x} R14={:#018x} R15={:#018x}",
        f.r13, f.r14, f.r15
    )
}

/// Handles an exception nobody registered a handler for.
pub fn report(frame: &mut InterruptFrame) {
    if frame.vector as usize == GENERAL_PROTECTION
        && let Some(resume) = hw::fixup_for(frame.rip)
    {
        frame.rip = resume;
        return;
    }
    let mut w = console::emergency_writer();
    // Console writes cannot fail; a report cut short is still printed as far
    // as it got.
    let _ = write_report(&mut w, frame);
    if frame.vector as usize == BREAKPOINT {
        let _ = writeln!(w, "[exception] breakpoint: resuming");
        return;
    }
    crate::testing::fail_and_exit("fatal CPU exception");
}
