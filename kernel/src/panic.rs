//! The panic handler: print where and why, then leave with the failure code.
//!
//! It must not panic itself and must not wait for a lock the panicking code
//! may hold, so it writes through the lock-free console. A panic while
//! panicking (a `Display` impl that panics, say) prints a fixed line and exits
//! at once.
//!
//! Neighbours: `testing::fail_and_exit` (shared with fatal exceptions).

use crate::{console, hw};
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut w = console::emergency_writer();
    if PANICKING.swap(true, Ordering::AcqRel) {
        let _ = w.write_str("[panic] panic while panicking: stopping\n");
        hw::exit(hw::ExitCode::Failure);
    }
    // Console writes cannot fail; the results are ignored.
    let _ = write!(w, "[panic] ");
    if let Some(location) = info.location() {
        let _ = write!(
            w,
            "at {}:{}:{}: ",
            location.file(),
            location.line(),
            location.column()
        );
    }
    let _ = writeln!(w, "{}", info.message());
    crate::testing::fail_and_exit("panic")
}
