//! In-emulator test scenarios and the console line protocol they speak.
//!
//! A scenario is a kernel binary (`kernel/src/bin/test_*.rs`) that calls
//! [`run_scenario`] with a static [`Scenario`]. The host harness (`tests/`: the QEMU and
//! the Bochs runners) parses these lines; keep them stable:
//!
//! ```text
//! [scenario] <scenario> cases=<N>          before the first case
//! [test] <case> ... ok                     after each case that returned
//! [test] <case> ... FAILED                 when a case panicked or faulted
//! [panic] at <file>:<line>:<col>: <msg>    the panic message (panic handler)
//! [exception] ...                          an exception report (several lines)
//! [summary] <scenario> passed=<P> failed=<F>   the last line before exiting
//! ```
//!
//! The run then leaves the emulator through `hw::exit`: success (QEMU status
//! 33) only when every case passed, failure (35) otherwise. A case fails by
//! panicking (`assert!`); the first failure ends the scenario, since there is
//! no unwinding.
//!
//! Neighbours: `panic` and `interrupts::exceptions` call [`fail_and_exit`];
//! [`aging`] holds the probes the aging scenarios share, [`guests`] the
//! guest cases both backends run, [`linux`] the Linux case both run,
//! [`overcommit`] the set-up of the
//! overcommit scenarios, [`smp`] that of the multi-vCPU ones (and their
//! cases both backends run).

pub mod aging;
pub mod evil;
pub mod guests;
pub mod linux;
pub mod overcommit;
pub mod smp;
pub mod vcpus;

use crate::console;
use crate::hw::{self, ExitCode};
use core::fmt::Write;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// One test case of a scenario.
#[derive(Debug)]
pub struct TestCase {
    /// Printed in the protocol lines; no spaces.
    pub name: &'static str,
    /// Runs the case; fails by panicking.
    pub run: fn(),
}

/// A scenario: its name and cases, in a `static` of the scenario binary.
#[derive(Debug)]
pub struct Scenario {
    /// Printed in the protocol lines; no spaces.
    pub name: &'static str,
    /// The cases, run in order.
    pub cases: &'static [TestCase],
}

/// The scenario being run, or null.
static SCENARIO: AtomicPtr<Scenario> = AtomicPtr::new(core::ptr::null_mut());
/// The case being run, or null between cases.
static CURRENT: AtomicPtr<TestCase> = AtomicPtr::new(core::ptr::null_mut());
/// Cases passed so far.
static PASSED: AtomicUsize = AtomicUsize::new(0);

/// Runs every case in order, printing one line per case, and leaves the
/// emulator with the success code when all passed.
pub fn run_scenario(scenario: &'static Scenario) -> ! {
    SCENARIO.store(core::ptr::from_ref(scenario).cast_mut(), Ordering::Release);
    let (name, cases) = (scenario.name, scenario.cases);
    crate::println!("[scenario] {name} cases={}", cases.len());
    for case in cases {
        CURRENT.store(core::ptr::from_ref(case).cast_mut(), Ordering::Release);
        (case.run)();
        CURRENT.store(core::ptr::null_mut(), Ordering::Release);
        PASSED.fetch_add(1, Ordering::AcqRel);
        crate::println!("[test] {} ... ok", case.name);
    }
    crate::println!(
        "[summary] {name} passed={} failed=0",
        PASSED.load(Ordering::Acquire)
    );
    hw::exit(ExitCode::Success)
}

/// The failure path of panics and fatal exceptions: names the failed case
/// (if a scenario is running), prints the summary and exits with the failure
/// code. Panic-free; uses the lock-free console.
pub fn fail_and_exit(reason: &str) -> ! {
    let mut w = console::emergency_writer();
    let case = CURRENT.load(Ordering::Acquire);
    let scenario = SCENARIO.load(Ordering::Acquire);
    // SAFETY: CURRENT and SCENARIO hold null or pointers made from 'static
    // references in `run_scenario`.
    let (case, scenario) = unsafe { (case.as_ref(), scenario.as_ref()) };
    // Console writes cannot fail; ignore the fmt::Result.
    if let Some(case) = case {
        let _ = writeln!(w, "[test] {} ... FAILED", case.name);
    }
    if let Some(scenario) = scenario {
        let _ = writeln!(
            w,
            "[summary] {} passed={} failed=1",
            scenario.name,
            PASSED.load(Ordering::Acquire)
        );
    } else {
        let _ = writeln!(w, "[fatal] {reason}: stopping");
    }
    hw::exit(ExitCode::Failure)
}
