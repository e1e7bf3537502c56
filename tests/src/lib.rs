//! Host-side harness: boots Thermocline images in QEMU or full-system Bochs
//! and judges their serial console.
//!
//! - [`bochs`]: the full-system Bochs bed (VMX with EPT, several CPUs): its
//!   configuration, and a runner with the same verdicts as [`runner`].
//! - [`qemu`]: the QEMU command line (accelerator choice, firmware, devices),
//!   shared by `cargo xtask run` and the tests so both boot the same machine.
//! - [`runner`]: runs one image to its end with a deadline, collecting the
//!   console with timestamps, and classifies the result as [`runner::Outcome`].
//! - [`qmp`]: why QEMU shut down (a triple fault or a quit: both exit 0),
//!   from its QMP monitor, for `cargo xtask run`.
//! - [`checks`]: console checks of scenarios that both beds run.
//! - [`protocol`]: parses the console line protocol that test kernels speak
//!   (`kernel/src/testing/mod.rs`), for both runners.
//!
//! The integration tests in `tests/qemu.rs` are one `#[test]` per scenario
//! kernel; `cargo xtask test` builds the images and runs them.

pub mod bochs;
pub mod checks;
pub mod protocol;
pub mod qemu;
pub mod qmp;
pub mod runner;
