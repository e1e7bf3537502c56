//! The `log` facade on the serial console.
//!
//! Each record is one line: `[LEVEL cpuN] target: message` (the target is left
//! out for the kernel crate itself). The CPU number comes from a function the
//! platform layer installs with [`set_cpu_id_source`] once per-CPU data exists;
//! until then every line says `cpu0`.
//!
//! The level is `Info` by default (`Trace` with the `trace` argument in a
//! later configuration); test kernels use [`set_level`].
//!
//! Neighbours: `console` (output), `crate::init` (installs the logger).

use core::sync::atomic::{AtomicPtr, Ordering};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// The logger type; one static instance.
#[derive(Debug)]
struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

fn boot_cpu_id() -> u32 {
    0
}

/// Where the CPU number comes from: `fn() -> u32`, stored as a pointer.
static CPU_ID_SOURCE: AtomicPtr<()> = AtomicPtr::new(boot_cpu_id as *mut ());

/// Installs the function that names the current CPU in log lines.
pub fn set_cpu_id_source(source: fn() -> u32) {
    CPU_ID_SOURCE.store(source as *mut (), Ordering::Release);
}

/// The number of the CPU executing this, as the installed source says.
pub fn cpu_id() -> u32 {
    let ptr = CPU_ID_SOURCE.load(Ordering::Acquire);
    // SAFETY: CPU_ID_SOURCE only ever holds a `fn() -> u32` cast to a pointer
    // (its initialiser and `set_cpu_id_source`).
    let source: fn() -> u32 = unsafe { core::mem::transmute::<*mut (), fn() -> u32>(ptr) };
    source()
}

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let cpu = cpu_id();
        let target = record.target();
        if target == "kernel" || target.is_empty() {
            crate::println!("[{level} cpu{cpu}] {}", record.args());
        } else {
            let target = target.strip_prefix("kernel::").unwrap_or(target);
            crate::println!("[{level} cpu{cpu}] {target}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at `Info`. Idempotent.
pub fn init() {
    // A second call finds the logger installed; that is fine.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

/// Changes the maximum level printed.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}
