//! Atomics shim: `core::sync::atomic` normally, `loom::sync::atomic` when the
//! crate is built with `--cfg loom`.
//!
//! Every atomic that the lockless walk, the aging helper or the epoch domain
//! touches comes from here, so that the loom models explore the very code the
//! kernel runs (not a copy). Loom's atomics cannot be built in `const`
//! context and are bigger than 8 bytes, so items that need either (the
//! 4 KiB [`crate::table::Table`] and its layout checks) exist only when
//! `cfg(not(loom))`.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
