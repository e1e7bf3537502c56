//! The interrupt descriptor table and one entry path for all 256 vectors.
//!
//! Every vector has a small assembly stub (`stubs.S` in spirit, written with
//! `global_asm!` below) that pushes a uniform frame: a dummy error code where
//! the CPU pushes none, the vector number, then all fifteen general-purpose
//! registers. A common routine calls [`dispatch`] with a pointer to that
//! [`InterruptFrame`]; on return it restores the registers from the frame and
//! executes IRETQ, so a handler may change any register or the return RIP.
//!
//! Dispatch: a handler registered with [`set_handler`] wins; otherwise a CPU
//! exception (vectors 0-31) goes to `exceptions::report`, which prints a
//! full report and leaves the emulator with the failure code (except #BP,
//! which is reported and resumed), and any other vector is logged as
//! unexpected and ignored.
//!
//! Stack at entry to [`dispatch`] (lowest address first):
//!
//! ```text
//!   r15 r14 r13 r12 r11 r10 r9 r8 rbp rdi rsi rdx rcx rbx rax   pushed by isr_common
//!   vector error_code                                           pushed by the stub
//!   rip cs rflags rsp ss                                        pushed by the CPU
//! ```
//!
//! In 64-bit mode the CPU aligns RSP to 16 bytes before pushing its 5-word
//! frame; the stub adds 2 words and isr_common 15, 22 words (176 bytes) in
//! all, so RSP is 16-byte aligned at the CALL, as the System V ABI requires.
//! The kernel target has no SSE, so no vector or x87 state needs saving.
//!
//! Follows: Intel SDM Vol. 3 "Interrupt and Exception Handling" (IDT gate
//! descriptors in 64-bit mode, stack frame, IST).

pub mod exceptions;

use crate::gdt::DOUBLE_FAULT_IST_INDEX;
use core::sync::atomic::{AtomicPtr, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, Segment};
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

/// Registers saved on entry to any interrupt or exception.
#[repr(C)]
#[derive(Clone, Debug, Default)]
pub struct InterruptFrame {
    /// Saved R15 (the general-purpose registers follow in the reverse of the
    /// order isr_common pushes them).
    pub r15: u64,
    /// Saved R14.
    pub r14: u64,
    /// Saved R13.
    pub r13: u64,
    /// Saved R12.
    pub r12: u64,
    /// Saved R11.
    pub r11: u64,
    /// Saved R10.
    pub r10: u64,
    /// Saved R9.
    pub r9: u64,
    /// Saved R8.
    pub r8: u64,
    /// Saved RBP.
    pub rbp: u64,
    /// Saved RDI.
    pub rdi: u64,
    /// Saved RSI.
    pub rsi: u64,
    /// Saved RDX.
    pub rdx: u64,
    /// Saved RCX.
    pub rcx: u64,
    /// Saved RBX.
    pub rbx: u64,
    /// Saved RAX.
    pub rax: u64,
    /// The vector number (0-255).
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    /// Where the interrupted code resumes (for faults: the faulting instruction).
    pub rip: u64,
    /// Code segment of the interrupted code.
    pub cs: u64,
    /// RFLAGS of the interrupted code.
    pub rflags: u64,
    /// Stack pointer of the interrupted code.
    pub rsp: u64,
    /// Stack segment of the interrupted code.
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<InterruptFrame>() == 22 * 8);

/// A handler for one vector. It runs with interrupts disabled (all gates are
/// interrupt gates) and may modify the frame, which IRETQ then restores.
pub type Handler = fn(&mut InterruptFrame);

/// Registered handlers, `fn(&mut InterruptFrame)` cast to pointers; null = none.
static HANDLERS: [AtomicPtr<()>; 256] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 256];

/// Registers `handler` for `vector`, replacing any earlier one. Vectors 0-31
/// are CPU exceptions: registering one overrides the fatal report (e.g. #NM).
/// Device interrupts must send their own EOI.
pub fn set_handler(vector: u8, handler: Handler) {
    HANDLERS[usize::from(vector)].store(handler as *mut (), Ordering::Release);
}

/// Removes the handler of `vector`.
pub fn clear_handler(vector: u8) {
    HANDLERS[usize::from(vector)].store(core::ptr::null_mut(), Ordering::Release);
}

/// Called by `isr_common` for every interrupt and exception.
extern "C" fn dispatch(frame: &mut InterruptFrame) {
    let vector = (frame.vector & 0xFF) as usize;
    let ptr = HANDLERS[vector].load(Ordering::Acquire);
    if !ptr.is_null() {
        // SAFETY: HANDLERS only ever holds null or a `Handler` cast to a
        // pointer (`set_handler`).
        let handler = unsafe { core::mem::transmute::<*mut (), Handler>(ptr) };
        handler(frame);
    } else if vector < 32 {
        exceptions::report(frame);
    } else {
        log::warn!(
            "unexpected interrupt: vector {vector:#x} at RIP {:#x}, ignored",
            frame.rip
        );
    }
}

// Entry stubs: one per vector, generated with `.irp`. Vectors 8, 10-14, 17,
// 21, 29 and 30 get an error code from the CPU; the others push a zero so the
// frame is uniform. `thermocline_isr_stub_table` lists each stub's offset from
// the table itself, by vector: offsets need no load-time relocation in the
// position-independent kernel.
core::arch::global_asm!(
    r#"
    .section .text.isr, "ax"
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255
    .balign 16
    isr_stub_\vec:
    .if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
        push 0
    .endif
        push \vec
        jmp {common}
    .endr

    .section .rodata.isr, "a"
    .balign 4
    .global thermocline_isr_stub_table
    thermocline_isr_stub_table:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255
        .long isr_stub_\vec - thermocline_isr_stub_table
    .endr
    .text
    "#,
    common = sym isr_common,
);

/// The common part of every stub: save registers, call [`dispatch`], restore.
#[unsafe(naked)]
extern "C" fn isr_common() {
    core::arch::naked_asm!(
        "push rax",
        "push rbx",
        "push rcx",
        "push rdx",
        "push rsi",
        "push rdi",
        "push rbp",
        "push r8",
        "push r9",
        "push r10",
        "push r11",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        // The ABI wants DF clear on calls; the interrupted code may have set it.
        "cld",
        "mov rdi, rsp",
        "call {dispatch}",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop r11",
        "pop r10",
        "pop r9",
        "pop r8",
        "pop rbp",
        "pop rdi",
        "pop rsi",
        "pop rdx",
        "pop rcx",
        "pop rbx",
        "pop rax",
        // Drop the vector and error code.
        "add rsp, 16",
        "iretq",
        dispatch = sym dispatch,
    );
}

unsafe extern "C" {
    /// Offsets of the 256 entry stubs from this table, by vector (defined in
    /// `global_asm!` above).
    static thermocline_isr_stub_table: [i32; 256];
}

/// One 64-bit IDT gate descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Gate {
    offset_low: u16,
    selector: u16,
    /// Bits 2:0: IST slot + 1, or 0 for "stay on the current stack".
    ist: u8,
    /// Present, DPL 0, type 0xE (64-bit interrupt gate: IF cleared on entry).
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

impl Gate {
    fn interrupt_gate(handler: u64, code_selector: u16, ist_slot: Option<u16>) -> Self {
        Self {
            offset_low: handler as u16,
            selector: code_selector,
            ist: ist_slot.map_or(0, |slot| (slot + 1) as u8),
            type_attr: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

/// Builds the IDT (once) and loads it on this CPU. Needs the GDT loaded first:
/// the gates name the current code segment. Application processors call this
/// too; the table is shared, IST slots refer to each CPU's own TSS.
pub fn load_idt() {
    let idt = IDT.call_once(|| {
        let cs = <CS as Segment>::get_reg().0;
        // SAFETY: the table is initialised data emitted by global_asm! above.
        let stubs = unsafe { &thermocline_isr_stub_table };
        let base = stubs.as_ptr() as u64;
        let mut gates = [Gate::default(); 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            let ist = (vector == exceptions::DOUBLE_FAULT).then_some(DOUBLE_FAULT_IST_INDEX);
            let stub = base.wrapping_add_signed(i64::from(stubs[vector]));
            *gate = Gate::interrupt_gate(stub, cs, ist);
        }
        Idt(gates)
    });
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT is 'static and every gate points at a stub that saves
    // state and calls `dispatch`; its IST slot exists in every CPU's TSS.
    unsafe { lidt(&pointer) };
}
