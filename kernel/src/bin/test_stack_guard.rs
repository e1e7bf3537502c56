//! Scenario `stack_guard`: kernel thread stacks have an unmapped guard below
//! them (`kernel::mem::stacks`). The first case checks the layout and that
//! a stack slot is reused; the second runs a thread that recurses until it
//! overflows its stack. The harness expects the exception report to name
//! that thread (`stack overflow of thread recurser`), the second case
//! FAILED and the failure exit: the overflow stops at the guard instead of
//! writing whatever lies below the stack.
#![no_std]
#![no_main]

use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::mem::stacks;
use kernel::testing::{Scenario, TestCase, run_scenario};

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "stack_guard",
    cases: &[
        TestCase {
            name: "a_thread_stack_has_a_guard_below_it",
            run: guard_layout,
        },
        TestCase {
            name: "thread_stack_overflow",
            run: overflow_in_a_thread,
        },
    ],
};

/// The CPU the threads run on: the last one (not the case's own when there
/// are several).
fn cpu() -> usize {
    kernel::smp::cpu_count() - 1
}

/// The bottom of the stack holding address `at`: slots are aligned to
/// their size (the region starts at a PML4 slot).
fn stack_bottom(at: u64) -> u64 {
    at - at % stacks::SLOT_BYTES + stacks::GUARD_BYTES
}

fn guard_layout() {
    static LOCAL_AT: AtomicU64 = AtomicU64::new(0);
    let probe = || {
        let local = core::hint::black_box(0u64);
        LOCAL_AT.store(&local as *const u64 as u64, Ordering::Relaxed);
    };
    kernel::sched::spawn_on(cpu(), "probe", probe).join();
    let at = LOCAL_AT.load(Ordering::Relaxed);
    // A local lies in the stack, not in a guard.
    assert_eq!(stacks::guard_hit(at), None, "local at {at:#x}");
    let bottom = stack_bottom(at);
    assert!(
        (bottom..bottom + stacks::STACK_BYTES as u64).contains(&at),
        "local at {at:#x}, stack from {bottom:#x}"
    );
    // Right below the stack (and the whole slot below it) is the guard.
    // The ended thread is dropped at its CPU's next switch: wait for that,
    // then its slot is free and names no thread.
    kernel::sched::sleep_until(kernel::time::now_ns() + 50_000_000);
    assert_eq!(stacks::guard_hit(bottom - 8), Some(None));
    assert_eq!(stacks::guard_hit(bottom - stacks::GUARD_BYTES), Some(None));
    // A thread started after another ended gets a pooled stack: no new
    // frames, and the stack is zeroed again.
    let held = stacks::frames_held();
    kernel::sched::spawn_on(cpu(), "probe", probe).join();
    assert_eq!(
        stacks::frames_held(),
        held,
        "the ended thread's stack is reused"
    );
    // While a thread runs, its guard names it.
    static GUARD_NAME_OK: AtomicU64 = AtomicU64::new(0);
    kernel::sched::spawn_on(cpu(), "namer", || {
        let local = core::hint::black_box(0u64);
        let at = &local as *const u64 as u64;
        if stacks::guard_hit(stack_bottom(at) - 1) == Some(Some("namer")) {
            GUARD_NAME_OK.store(1, Ordering::Relaxed);
        }
    })
    .join();
    assert_eq!(
        GUARD_NAME_OK.load(Ordering::Relaxed),
        1,
        "the guard names the thread"
    );
}

fn overflow_in_a_thread() {
    kernel::sched::spawn_on(cpu(), "recurser", || {
        core::hint::black_box(recurse(1));
    })
    .join();
    panic!("the recursion returned: the stack did not overflow");
}

#[expect(unconditional_recursion, reason = "overflowing the stack is the point")]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    recurse(frame[0] + 1) + frame[63]
}
