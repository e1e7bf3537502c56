//! `smp`: a VM with several vCPUs (docs/guests.md, docs/hypercalls.md).
//!
//! Boot argument (RSI): bits 0-7 the mode, bits 8-15 the vCPU count N
//! (0 means 4; the VM must have been made with at least N vCPUs), bits
//! 16-31 (mode 0) milliseconds vCPU 0 sleeps (HLT + deadline) after the
//! others finished and before it checks their work, so the host can
//! reclaim the pages in between.
//!
//! | mode | what the vCPUs do | expected outcome |
//! |---|---|---|
//! | 0 | the full workout below | exit 0 |
//! | 1 | one vCPU: HLT with a deadline (wakes), then HLT with none | VM stopped: halted with nothing to wake it |
//! | 2 | vCPU 1 HLTs with no deadline, vCPU 0 with one a minute away, forever | waits until the host stops the VM |
//! | 3 | vCPU 1 calls EXIT(7) while vCPU 0 spins with no exits and vCPU 2 halts | VM stopped with code 7 by vCPU 1 |
//! | 4 | vCPU 1 reads outside RAM while vCPU 0 spins | VM stopped outside RAM by vCPU 1 |
//! | 5 | every vCPU spins (no exits) until the host writes [`RELEASE_GPA`] | exit 0 |
//! | 6 | three vCPUs: 1 wakes 2, then all HLT with no deadline, forever | VM stopped: halted with nothing to wake it |
//!
//! Mode 0: vCPU 0 checks that bad `VCPU_START`/`WAKE` arguments get the
//! documented errors, starts vCPUs 1..N, and waits with HLT + deadline until
//! all have finished. Every vCPU i writes pages 0-7 and reads pages 8-11 of
//! its region (`REGION_GPA + i * REGION_BYTES`, 32 pages; 12-31 untouched)
//! and adds 1 to a shared counter [`INCREMENTS`] times with a locked
//! instruction. Besides: vCPU 1 sleeps with `SET_TIMER` + HLT, then wakes
//! vCPU 2 with `WAKE`; vCPU 2 halts with no deadline until then; vCPU 3
//! prints with `rep outsb` (forward and with DF=1) and reads the UART's
//! line status with `rep insb`/`rep insw`. vCPU 0 exits 0 only if the
//! counter, every region and every role check out.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guests::{BootInfo, HypercallError, nr, println};

guests::entry!(main);

/// First vCPU region.
pub const REGION_GPA: u64 = 0x50_0000;
/// Bytes per vCPU region (32 pages).
pub const REGION_BYTES: u64 = 0x2_0000;
/// Pages of a region written, then read.
const WRITE_PAGES: u64 = 8;
const READ_PAGES: u64 = 4;
/// Stacks of vCPUs 1.. (16 KiB each, below the regions).
const STACK_GPA: u64 = 0x41_0000;
const STACK_BYTES: u64 = 0x4000;
/// Mode 5: the host writes a non-zero word here to release the vCPUs.
pub const RELEASE_GPA: u64 = 0x40_0000;
/// Locked increments per vCPU.
pub const INCREMENTS: u64 = 20_000;

static COUNTER: AtomicU64 = AtomicU64::new(0);
static FINISHED: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static WAKE_FLAG: AtomicU64 = AtomicU64::new(0);
static SLEPT: AtomicU64 = AtomicU64::new(0);
static WOKEN: AtomicU64 = AtomicU64::new(0);
static PRINTED: AtomicU64 = AtomicU64::new(0);
static PRINT_LOCK: AtomicBool = AtomicBool::new(false);
static MODE: AtomicU64 = AtomicU64::new(0);

// Entry of vCPUs 1..: RDI = the argument of VCPU_START (the index).
global_asm!(
    ".global smp_ap_start",
    "smp_ap_start:",
    "and rsp, -16",
    "call {main}",
    "2: hlt",
    "jmp 2b",
    main = sym ap_main,
);

unsafe extern "C" {
    fn smp_ap_start();
}

/// Runs `f` with the console to itself, so lines of different vCPUs do not
/// interleave byte by byte.
fn locked<R>(f: impl FnOnce() -> R) -> R {
    while PRINT_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let r = f();
    PRINT_LOCK.store(false, Ordering::Release);
    r
}

fn fail(what: core::fmt::Arguments<'_>) {
    locked(|| println!("smp: FAILED: {what}"));
    FAILURES.fetch_add(1, Ordering::SeqCst);
}

fn halt() {
    // SAFETY: HLT exits to the hypervisor, which resumes after it.
    unsafe { asm!("hlt", options(nomem, nostack)) };
}

fn region(index: u64) -> u64 {
    REGION_GPA + index * REGION_BYTES
}

fn stamp(index: u64, page: u64) -> u64 {
    0x5a5a_0000_0000_0000 | (index << 16) | page
}

/// Writes pages 0-7 and reads pages 8-11 of the vCPU's region.
fn touch_region(index: u64) {
    let base = region(index);
    for page in 0..WRITE_PAGES {
        guests::write_u64(base + page * 4096, stamp(index, page));
        guests::write_u64(base + page * 4096 + 4088, stamp(index, page));
    }
    for page in WRITE_PAGES..WRITE_PAGES + READ_PAGES {
        let v = guests::read_u64(base + page * 4096);
        if v != 0 {
            fail(format_args!("vCPU {index}: read page {page} holds {v:#x}"));
        }
    }
}

fn region_ok(index: u64) -> bool {
    let base = region(index);
    (0..WRITE_PAGES).all(|page| {
        guests::read_u64(base + page * 4096) == stamp(index, page)
            && guests::read_u64(base + page * 4096 + 4088) == stamp(index, page)
    })
}

fn count() {
    for _ in 0..INCREMENTS {
        COUNTER.fetch_add(1, Ordering::SeqCst);
    }
}

/// vCPU 1: sleeps until a deadline 2 ms ahead, then wakes vCPU 2.
fn sleeper() {
    let deadline = guests::time_ns() + 2_000_000;
    guests::hypercall(nr::SET_TIMER, deadline, 0, 0, 0);
    // At least one HLT: when the host was slow (a refault) and the deadline
    // has passed already, it returns at once.
    let mut rounds = 0;
    loop {
        halt();
        rounds += 1;
        if guests::time_ns() >= deadline {
            break;
        }
    }
    SLEPT.store(rounds, Ordering::SeqCst);
    WAKE_FLAG.store(1, Ordering::SeqCst);
    if guests::hypercall(nr::WAKE, 2, 0, 0, 0) != 0 {
        fail(format_args!("WAKE of vCPU 2 refused"));
    }
}

/// vCPU 2: halts with no deadline until vCPU 1 sets the flag and wakes it.
fn waiter() {
    let mut rounds = 0;
    while WAKE_FLAG.load(Ordering::SeqCst) == 0 {
        halt();
        rounds += 1;
    }
    WOKEN.store(rounds.max(1), Ordering::SeqCst);
}

const FORWARD: &[u8] = b"smp: vCPU 3 prints through rep outsb\n";
const BACKWARD: &[u8] = b"\nbstuo per dna dts hguorht drawkcab stnirp 3 UPCv :pms";

/// vCPU 3: string I/O on the UART.
fn string_io() {
    locked(|| {
        // SAFETY: REP OUTSB reads FORWARD.len() bytes at RSI (a static)
        // and writes them to COM1; the hypervisor emulates it.
        unsafe {
            asm!("rep outsb", in("dx") 0x3f8u16, inout("rsi") FORWARD.as_ptr() => _,
                inout("rcx") FORWARD.len() => _, options(nostack, readonly));
        }
        // With DF=1 the bytes go out from the last one down: the reversed
        // text prints forward.
        // SAFETY: as above, from the last byte of BACKWARD down to its
        // first; DF is cleared again before Rust code runs.
        unsafe {
            asm!("std", "rep outsb", "cld", in("dx") 0x3f8u16,
                inout("rsi") BACKWARD.as_ptr().add(BACKWARD.len() - 1) => _,
                inout("rcx") BACKWARD.len() => _, options(nostack, readonly));
        }
    });
    // LSR (COM1 + 5) reads "transmitter empty" (0x60) every time.
    let mut bytes = [0u8; 16];
    // SAFETY: REP INSB writes 16 bytes at RDI, the local buffer.
    unsafe {
        asm!("rep insb", in("dx") 0x3fdu16, inout("rdi") bytes.as_mut_ptr() => _,
            inout("rcx") bytes.len() => _, options(nostack));
    }
    let mut words = [0xffffu16; 4];
    // SAFETY: with DF=1, REP INSW writes 4 words from the last element of
    // the local buffer down; DF is cleared again right after.
    unsafe {
        asm!("std", "rep insw", "cld", in("dx") 0x3fdu16,
            inout("rdi") words.as_mut_ptr().add(3) => _,
            inout("rcx") 4usize => _, options(nostack));
    }
    if bytes.iter().any(|&b| b != 0x60) || words.iter().any(|&w| w != 0x60) {
        fail(format_args!("rep ins read {bytes:x?} / {words:x?}"));
    } else {
        PRINTED.store(1, Ordering::SeqCst);
    }
}

extern "sysv64" fn ap_main(index: u64) {
    match MODE.load(Ordering::SeqCst) {
        2 => loop {
            halt();
        },
        6 => {
            if index == 1 {
                // Ends vCPU 2's wait (or leaves a pending WAKE for it): the
                // VM must not stop while a WAKE is on its way.
                while guests::hypercall(nr::WAKE, 2, 0, 0, 0) != 0 {
                    core::hint::spin_loop();
                }
            }
            loop {
                halt();
            }
        }
        3 => {
            if index == 1 {
                guests::exit(7);
            }
            loop {
                halt();
            }
        }
        4 => {
            let v = guests::read_u64(256 << 30);
            fail(format_args!("vCPU {index} read {v:#x} outside RAM"));
            return;
        }
        5 => {
            spin_until_released();
            FINISHED.fetch_add(1, Ordering::SeqCst);
            return;
        }
        _ => {}
    }
    touch_region(index);
    count();
    match index {
        1 => sleeper(),
        2 => waiter(),
        3 => string_io(),
        _ => {}
    }
    FINISHED.fetch_add(1, Ordering::SeqCst);
    guests::hypercall(nr::WAKE, 0, 0, 0, 0);
}

fn spin_until_released() {
    while guests::read_u64(RELEASE_GPA) == 0 {
        core::hint::spin_loop();
    }
}

fn start(index: u64) -> u64 {
    let stack_top = STACK_GPA + index * STACK_BYTES;
    guests::hypercall(
        nr::VCPU_START,
        index,
        smp_ap_start as *const () as u64,
        stack_top,
        index,
    )
}

fn expect_error(what: &str, rax: u64, want: HypercallError) {
    if HypercallError::from_rax(rax) != Some(want) {
        fail(format_args!("{what} returned {rax:#x}, expected {want:?}"));
    }
}

/// Bad arguments, each refused with the documented error.
fn bad_starts(boot: &BootInfo, n: u64) {
    let entry = smp_ap_start as *const () as u64;
    let call = |i, rip, rsp| guests::hypercall(nr::VCPU_START, i, rip, rsp, 0);
    expect_error(
        "VCPU_START of vCPU 0",
        call(0, entry, STACK_GPA + STACK_BYTES),
        HypercallError::InvalidArgument,
    );
    expect_error(
        "VCPU_START past the vCPU count",
        call(64, entry, STACK_GPA + STACK_BYTES),
        HypercallError::InvalidArgument,
    );
    expect_error(
        "VCPU_START with RIP outside RAM",
        call(1, boot.ram_bytes, STACK_GPA + STACK_BYTES),
        HypercallError::BadAddress,
    );
    expect_error(
        "VCPU_START with RSP outside RAM",
        call(1, entry, boot.ram_bytes + 8),
        HypercallError::BadAddress,
    );
    expect_error(
        "WAKE of a vCPU not started",
        guests::hypercall(nr::WAKE, n - 1, 0, 0, 0),
        HypercallError::InvalidArgument,
    );
}

fn main(boot: BootInfo) -> u64 {
    let mode = boot.arg & 0xff;
    let n = match (boot.arg >> 8) & 0xff {
        0 => 4,
        n => n,
    };
    MODE.store(mode, Ordering::SeqCst);
    match mode {
        1 => {
            // 50 ms: far more than the two exits between here and the HLT
            // take, so the HLT does wait.
            guests::hypercall(nr::SET_TIMER, guests::time_ns() + 50_000_000, 0, 0, 0);
            halt();
            println!("smp: woke from a HLT with a deadline");
            // Nothing can wake this one: the VM stops.
            halt();
            println!("smp: woke from a HLT that nothing could end");
            return 1;
        }
        2 => {
            start(1);
            loop {
                // A deadline keeps this vCPU able to wake: the VM waits.
                guests::hypercall(nr::SET_TIMER, guests::time_ns() + 60_000_000_000, 0, 0, 0);
                halt();
            }
        }
        3 => {
            start(2);
            start(1);
            loop {
                core::hint::spin_loop();
            }
        }
        4 => {
            start(1);
            loop {
                core::hint::spin_loop();
            }
        }
        6 => {
            start(2);
            start(1);
            loop {
                halt();
            }
        }
        5 => {
            for i in 1..n {
                if start(i) != 0 {
                    return 2;
                }
            }
            spin_until_released();
            while FINISHED.load(Ordering::SeqCst) < n - 1 {
                core::hint::spin_loop();
            }
            return 0;
        }
        _ => {}
    }
    if n < 4 {
        println!("smp: mode 0 needs 4 vCPUs or more, got {n}");
        return 2;
    }
    locked(|| println!("smp: starting {} more vCPUs", n - 1));
    bad_starts(&boot, n);
    for i in 1..n {
        let rax = start(i);
        if rax != 0 {
            println!("smp: VCPU_START {i} returned {rax:#x}");
            return 2;
        }
    }
    expect_error(
        "a second VCPU_START of vCPU 1",
        start(1),
        HypercallError::Busy,
    );
    touch_region(0);
    count();
    // Wait for the others, sleeping in 1 ms steps (they also wake us).
    let mut naps = 0u64;
    while FINISHED.load(Ordering::SeqCst) < n - 1 {
        guests::hypercall(nr::SET_TIMER, guests::time_ns() + 1_000_000, 0, 0, 0);
        halt();
        naps += 1;
    }
    let settle_ns = ((boot.arg >> 16) & 0xffff) * 1_000_000;
    let settled = guests::time_ns() + settle_ns;
    guests::hypercall(nr::SET_TIMER, settled, 0, 0, 0);
    while guests::time_ns() < settled {
        halt();
    }
    let counter = COUNTER.load(Ordering::SeqCst);
    if counter != n * INCREMENTS {
        fail(format_args!(
            "counter {counter}, expected {}",
            n * INCREMENTS
        ));
    }
    for i in 0..n {
        if !region_ok(i) {
            fail(format_args!("region of vCPU {i} does not hold its stamps"));
        }
    }
    if SLEPT.load(Ordering::SeqCst) == 0 {
        fail(format_args!("vCPU 1 did not sleep"));
    }
    if WOKEN.load(Ordering::SeqCst) == 0 {
        fail(format_args!("vCPU 2 was not woken"));
    }
    if PRINTED.load(Ordering::SeqCst) == 0 {
        fail(format_args!("vCPU 3 string I/O"));
    }
    let failures = FAILURES.load(Ordering::SeqCst);
    locked(|| {
        println!(
            "smp: {n} vCPUs, counter {counter}, vCPU 1 slept {} HLTs, vCPU 0 napped {naps} times, {failures} failures",
            SLEPT.load(Ordering::SeqCst)
        );
    });
    u64::from(failures != 0)
}
