//! Thermocline's arch-independent core.
//!
//! Everything here is `no_std`, free of `unsafe`, and tested on the host with
//! `cargo test` (plus loom and property tests). The kernel binary is thin glue
//! that supplies hardware access through the traits defined here.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod addr;
pub mod cpu_features;
pub mod frame;
pub mod exit;
pub mod guest_layout;
pub mod guest_walk;
pub mod hypercall;
pub mod insn;
pub mod svm;
pub mod uart;
