//! `pattern`: a workload with a known access pattern, reporting its ground
//! truth so the hypervisor's hot/cold classification can be scored.
//!
//! The data region (`DATA_START_GPA` to the end of RAM) is split into pages.
//! Interval 0 touches every data page once (the cold set) plus the hot set;
//! every later interval touches only the hot set, over and over, until
//! `interval_ms` of host time has passed. Every `PHASE_INTERVALS` intervals
//! the hot set moves (a phase change). At the end of each interval the guest
//! reports, with `REPORT_TOUCHED`, a bitmap of exactly the data pages it
//! touched in that interval. Pages outside the data region (code, stack,
//! page tables, the bitmap itself) are not part of the ground truth.
//!
//! Boot argument (RSI): bits 0-15 number of intervals (0 = run forever),
//! bits 16-31 `interval_ms` (0 = 100), bits 32-47 hot pages (0 = 64),
//! bit 48 report work (below).
//! Hot pages are written (one word each), so they are accessed and dirty.
//!
//! **Work report** (bit 48, for the throughput benchmark,
//! `kernel/src/bin/bench_guest.rs`): after each interval's
//! `REPORT_TOUCHED`, the guest makes a `MARK` whose tag reports the
//! hot-page touches made so far, over all intervals
//! (`hvcore::hypercall::work_report`: `'W'` in bits 63-56, the count in
//! the low 56 bits). A touch is one read-modify-write of a hot page's first
//! word; the first interval's cold sweep is not counted (the hypervisor
//! takes rates from the first report on). Without bit 48 the guest makes
//! no `MARK`, as before.
#![no_std]
#![no_main]

use guests::guest_layout::DATA_START_GPA;
use guests::{BootInfo, nr, println};

guests::entry!(main);

const PAGE: u64 = 4096;
const PHASE_INTERVALS: u64 = 4;
/// Bitmap capacity: 1 GiB of data pages.
const MAX_PAGES: usize = 1 << 18;

static mut TOUCHED: [u64; MAX_PAGES / 64] = [0; MAX_PAGES / 64];

fn bitmap() -> &'static mut [u64; MAX_PAGES / 64] {
    // SAFETY: the guest has one vCPU and no interrupt handlers; `main` is the
    // only user and holds no other reference while it calls this.
    unsafe { &mut *core::ptr::addr_of_mut!(TOUCHED) }
}

fn touch(page: u64, first_pfn: u64, stamp: u64) {
    let gpa = (first_pfn + page) * PAGE;
    guests::write_u64(gpa, guests::read_u64(gpa).wrapping_add(stamp));
    bitmap()[(page / 64) as usize] |= 1 << (page % 64);
}

fn main(boot: BootInfo) -> u64 {
    let intervals = boot.arg & 0xffff;
    let interval_ms = match (boot.arg >> 16) & 0xffff {
        0 => 100,
        ms => ms,
    };
    let first_pfn = DATA_START_GPA / PAGE;
    let pages = ((boot.ram_bytes - DATA_START_GPA) / PAGE).min(MAX_PAGES as u64);
    let hot = match (boot.arg >> 32) & 0xffff {
        0 => 64,
        n => n,
    }
    .min(pages);
    let report_work = boot.arg & (1 << 48) != 0;
    // Hot-page touches made in the timed loops so far (the work count).
    let mut work = 0u64;
    println!(
        "pattern: {pages} data pages from pfn {first_pfn:#x}, hot {hot}, interval {interval_ms} ms, intervals {intervals}"
    );
    let mut interval = 0;
    while intervals == 0 || interval < intervals {
        let phase = interval / PHASE_INTERVALS;
        // Phases walk the hot set through the region in quarter steps.
        let hot_start = (phase * (pages / 4).max(1)) % (pages - hot + 1);
        if interval.is_multiple_of(PHASE_INTERVALS) {
            println!(
                "pattern: phase {phase} hot pages {hot_start}..{}",
                hot_start + hot
            );
        }
        if interval == 0 {
            for page in 0..pages {
                touch(page, first_pfn, 1);
            }
        }
        let end_ns = guests::time_ns() + interval_ms * 1_000_000;
        let mut sweeps = 0u64;
        loop {
            for page in hot_start..hot_start + hot {
                touch(page, first_pfn, 1);
            }
            sweeps += 1;
            work += hot;
            if guests::time_ns() >= end_ns {
                break;
            }
        }
        let words = (pages as usize).div_ceil(64);
        let rc = guests::hypercall(
            nr::REPORT_TOUCHED,
            interval,
            bitmap().as_ptr() as u64,
            first_pfn,
            pages,
        );
        if rc != 0 {
            println!("pattern: REPORT_TOUCHED failed: {rc:#x}");
            return 2;
        }
        bitmap()[..words].fill(0);
        if report_work {
            guests::mark(hvcore::hypercall::work_report::mark(work));
        }
        if interval.is_multiple_of(PHASE_INTERVALS) {
            println!("pattern: interval {interval} sweeps {sweeps}");
        }
        interval += 1;
    }
    println!("pattern: done after {interval} intervals");
    0
}
