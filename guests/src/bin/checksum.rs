//! `checksum`: writes known data over the data region, lets the hypervisor
//! do what it likes with the memory, rewrites part of it, then re-reads
//! everything and reports mismatches.
//!
//! Every 8-byte word holds a hash of its address and the seed of the round
//! that last wrote it. Sequence, per round `r` (1-based):
//! fill (round 1 only) -> `MARK 1` -> rewrite every third page with seed `r`
//! -> `MARK 2` -> verify all -> `CHECKSUM_RESULT(pages, mismatches)`.
//! The marks let a test act on memory (reclaim, clear bits) at known points.
//!
//! Boot argument (RSI): bits 0-31 the number of rounds (0 = 1); bit 32
//! *sparse*: only the first word of each 256 bytes holds a hash, the others
//! must read zero (data that compresses, as mostly idle memory does).
//! Exit code: 0 when no word mismatched, 1 otherwise.
#![no_std]
#![no_main]

use guests::guest_layout::DATA_START_GPA;
use guests::{BootInfo, nr, println};

guests::entry!(main);

const PAGE: u64 = 4096;

// The words written, shared with the host benchmark of the reclaimer.
#[path = "../checksum_data.rs"]
mod checksum_data;
use checksum_data::word;

fn seed_of(page: u64, rounds_done: u64) -> u64 {
    if rounds_done > 0 && page.is_multiple_of(3) {
        rounds_done
    } else {
        0
    }
}

fn fill_page(page_gpa: u64, seed: u64, sparse: bool) {
    for gpa in (page_gpa..page_gpa + PAGE).step_by(8) {
        guests::write_u64(gpa, word(gpa, seed, sparse));
    }
}

fn main(boot: BootInfo) -> u64 {
    let rounds = (boot.arg & 0xffff_ffff).max(1);
    let sparse = boot.arg & (1 << 32) != 0;
    let pages = (boot.ram_bytes - DATA_START_GPA) / PAGE;
    println!("checksum: {pages} pages, {rounds} rounds");
    for page in 0..pages {
        fill_page(DATA_START_GPA + page * PAGE, seed_of(page, 0), sparse);
    }
    let mut total_mismatches = 0;
    for round in 1..=rounds {
        guests::mark(1);
        for page in (0..pages).filter(|p| p.is_multiple_of(3)) {
            fill_page(DATA_START_GPA + page * PAGE, seed_of(page, round), sparse);
        }
        guests::mark(2);
        let mut mismatches = 0u64;
        for page in 0..pages {
            let page_gpa = DATA_START_GPA + page * PAGE;
            let seed = seed_of(page, round);
            for gpa in (page_gpa..page_gpa + PAGE).step_by(8) {
                let got = guests::read_u64(gpa);
                if got != word(gpa, seed, sparse) {
                    if mismatches < 4 {
                        println!(
                            "checksum: mismatch at {gpa:#x}: {got:#x} != {:#x}",
                            word(gpa, seed, sparse)
                        );
                    }
                    mismatches += 1;
                }
            }
        }
        guests::hypercall(nr::CHECKSUM_RESULT, pages, mismatches, 0, 0);
        println!("checksum: round {round}: {pages} pages verified, {mismatches} mismatches");
        total_mismatches += mismatches;
    }
    u64::from(total_mismatches != 0)
}
