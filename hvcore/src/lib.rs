//! Thermocline's arch-independent core.
//!
//! Everything here is `no_std`, free of `unsafe`, and tested on the host with
//! `cargo test` (plus loom and property tests). The kernel binary is thin glue
//! that supplies hardware access through the traits defined here.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
// `core::hint::prefetch_write`: the aging pass prefetches the generation
// bytes of a leaf table before it stamps them (see `age`).
#![feature(hint_prefetch)]

pub mod acpi;
pub mod addr;
pub mod age;
#[cfg(all(feature = "std", not(loom)))]
pub mod arena;
pub mod cpu_features;
pub mod devices;
pub mod epoch;
pub mod ept;
pub mod exit;
pub mod feedback;
pub mod flush;
pub mod frame;
pub mod generations;
pub mod guest_cpu;
pub mod guest_layout;
pub mod guest_msr;
pub mod guest_walk;
pub mod hypercall;
pub mod insn;
pub mod linux_boot;
pub mod npt;
pub mod pte;
pub mod reclaim;
pub mod report;
pub mod store;
pub mod string_io;
pub mod svm;
pub mod sync;
pub mod table;
pub mod uart;
pub mod vmx;
pub mod walk;
