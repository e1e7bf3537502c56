//! `workload`: a Linux program with a known working set, for Thermocline's
//! Linux guests (docs/guests.md, "The Linux workload").
//!
//! It fills a region with a checksum pattern, keeps a configurable part of
//! it hot (read, verified and rewritten every pass) and lets the rest go
//! cold, moves the hot part in phases, verifies every byte it ever wrote
//! (each hot page before every rewrite, every page at the end) and prints
//! its throughput and mismatch count. With `--report-hot-pfns` it reads
//! `/proc/self/pagemap` and prints the guest-physical frames of the hot part,
//! so the hypervisor's hot set can be scored against it.
//!
//! - [`options`]: the command line.
//! - [`pattern`]: the expected content of every page at every version.
//! - [`pagemap`]: decoding `/proc/self/pagemap` entries, coalescing frames.
//! - [`Workload`]: the region, the per-page versions, the passes.
//!
//! Everything is host-tested; the binary (`src/main.rs`) only wires it to
//! the clock, stdout and `/proc`.

pub mod options;
pub mod pagemap;
pub mod pattern;

use std::ops::Range;

/// Bytes per page (x86-64 base pages; the pattern's unit).
pub const PAGE_BYTES: usize = 4096;

/// One byte that did not hold what was last written there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Byte offset in the region.
    pub offset: u64,
    /// What the pattern says.
    pub expected: u8,
    /// What was read.
    pub found: u8,
}

/// How many mismatches are kept for the report (all are counted).
pub const MISMATCHES_KEPT: usize = 8;

/// The region, the version each page was last written with, and counters.
#[derive(Debug)]
pub struct Workload<'a> {
    region: &'a mut [u8],
    versions: Vec<u32>,
    seed: u64,
    /// Bytes that did not match, over the whole run.
    pub mismatch_bytes: u64,
    /// The first [`MISMATCHES_KEPT`] of them.
    pub first_mismatches: Vec<Mismatch>,
    /// Hot-page visits (each a verify and a rewrite of one page).
    pub hot_page_visits: u64,
}

impl<'a> Workload<'a> {
    /// Takes `region` (whole pages) and writes every page at version 0.
    ///
    /// # Panics
    /// If `region` is not a multiple of [`PAGE_BYTES`] long (the caller
    /// sizes it from whole MiB).
    pub fn new(region: &'a mut [u8], seed: u64) -> Self {
        assert!(region.len().is_multiple_of(PAGE_BYTES), "whole pages");
        let pages = region.len() / PAGE_BYTES;
        let mut w = Self {
            region,
            versions: vec![0; pages],
            seed,
            mismatch_bytes: 0,
            first_mismatches: Vec::new(),
            hot_page_visits: 0,
        };
        for page in 0..pages {
            pattern::fill(w.page_mut(page), seed, page as u64, 0);
        }
        w
    }

    /// Pages in the region.
    pub fn pages(&self) -> usize {
        self.versions.len()
    }

    /// The region (for its address, and for tests that corrupt it).
    pub fn region_mut(&mut self) -> &mut [u8] {
        self.region
    }

    /// The region's first byte, for `/proc/self/pagemap`.
    pub fn region_addr(&self) -> usize {
        self.region.as_ptr() as usize
    }

    fn page_mut(&mut self, page: usize) -> &mut [u8] {
        &mut self.region[page * PAGE_BYTES..(page + 1) * PAGE_BYTES]
    }

    fn check_page(&mut self, page: usize) {
        let version = self.versions[page];
        let (seed, base) = (self.seed, (page * PAGE_BYTES) as u64);
        let bytes = &self.region[page * PAGE_BYTES..(page + 1) * PAGE_BYTES];
        pattern::check(bytes, seed, page as u64, version, |at, expected, found| {
            self.mismatch_bytes += 1;
            if self.first_mismatches.len() < MISMATCHES_KEPT {
                self.first_mismatches.push(Mismatch {
                    offset: base + at as u64,
                    expected,
                    found,
                });
            }
        });
    }

    /// One hot pass over `pages` (page indices, may wrap): each page is
    /// verified against what was last written and rewritten at the next
    /// version.
    pub fn hot_pass(&mut self, pages: impl Iterator<Item = usize>) {
        for page in pages {
            self.check_page(page);
            let version = self.versions[page].wrapping_add(1);
            self.versions[page] = version;
            let seed = self.seed;
            pattern::fill(self.page_mut(page), seed, page as u64, version);
            self.hot_page_visits += 1;
        }
    }

    /// Verifies every page of the region; returns the mismatches found in
    /// this sweep.
    pub fn verify_all(&mut self) -> u64 {
        let before = self.mismatch_bytes;
        for page in 0..self.pages() {
            self.check_page(page);
        }
        self.mismatch_bytes - before
    }
}

/// The hot pages in phase `phase`: `hot_pages` consecutive pages starting
/// `phase * hot_pages` into the region, wrapping at its end, so successive
/// phases move the hot part through the whole region.
pub fn hot_window(total_pages: usize, hot_pages: usize, phase: u64) -> impl Iterator<Item = usize> {
    let start = if total_pages == 0 {
        0
    } else {
        ((phase as u128 * hot_pages as u128) % total_pages as u128) as usize
    };
    let hot = hot_pages.min(total_pages);
    (0..hot).map(move |i| (start + i) % total_pages)
}

/// Pages of the hot part: `percent` of `total_pages`, at least one page when
/// `percent` is not zero.
pub fn hot_pages(total_pages: usize, percent: u32) -> usize {
    if percent == 0 {
        return 0;
    }
    ((total_pages as u128 * u128::from(percent) / 100) as usize).clamp(1, total_pages)
}

/// The phase a run is in after `done` of `total` units (passes or seconds),
/// with `phases` phases: equal shares, the last one ending the run.
pub fn phase_of(done: u64, total: u64, phases: u32) -> u64 {
    if total == 0 {
        return 0;
    }
    (u128::from(done) * u128::from(phases) / u128::from(total)).min(u128::from(phases) - 1) as u64
}

/// The page range of a page-aligned region of `len` bytes inside `buf`:
/// where `buf` (over-allocated by one page) has its first page boundary.
pub fn page_aligned(buf: &mut [u8], len: usize) -> Option<&mut [u8]> {
    let skip = buf.as_ptr().align_offset(PAGE_BYTES);
    buf.get_mut(skip..skip.checked_add(len)?)
}

/// Region offsets of a window of pages, for reports.
pub fn window_range(total_pages: usize, hot_pages: usize, phase: u64) -> Range<usize> {
    let start = hot_window(total_pages, hot_pages, phase)
        .next()
        .unwrap_or(0);
    start..start + hot_pages.min(total_pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(pages: usize) -> Vec<u8> {
        vec![0u8; pages * PAGE_BYTES + PAGE_BYTES]
    }

    #[test]
    fn a_clean_run_has_no_mismatches() {
        let mut buf = region(64);
        let mem = page_aligned(&mut buf, 64 * PAGE_BYTES).unwrap();
        assert_eq!(mem.as_ptr() as usize % PAGE_BYTES, 0);
        let mut w = Workload::new(mem, 7);
        let hot = hot_pages(64, 25);
        assert_eq!(hot, 16);
        for pass in 0..20 {
            w.hot_pass(hot_window(64, hot, phase_of(pass, 20, 4)));
        }
        assert_eq!(w.verify_all(), 0);
        assert_eq!(w.mismatch_bytes, 0);
        assert_eq!(w.hot_page_visits, 20 * 16);
    }

    #[test]
    fn a_flipped_cold_byte_is_found_at_the_end() {
        let mut buf = region(32);
        let mem = page_aligned(&mut buf, 32 * PAGE_BYTES).unwrap();
        let mut w = Workload::new(mem, 1);
        w.hot_pass(hot_window(32, 4, 0));
        let victim = 20 * PAGE_BYTES + 123;
        w.region_mut()[victim] ^= 0x10;
        assert_eq!(w.verify_all(), 1);
        let m = w.first_mismatches[0];
        assert_eq!(m.offset, victim as u64);
        assert_eq!(m.found, m.expected ^ 0x10);
    }

    #[test]
    fn a_flipped_hot_byte_is_found_before_the_rewrite() {
        let mut buf = region(8);
        let mem = page_aligned(&mut buf, 8 * PAGE_BYTES).unwrap();
        let mut w = Workload::new(mem, 3);
        w.hot_pass(0..2);
        w.region_mut()[PAGE_BYTES + 4095] ^= 0xff;
        // The next pass rewrites the page, so only the check before the
        // rewrite can see the flip.
        w.hot_pass(0..2);
        assert_eq!(w.mismatch_bytes, 1);
        assert_eq!(w.first_mismatches[0].offset, (2 * PAGE_BYTES - 1) as u64);
        assert_eq!(w.verify_all(), 0, "rewritten since");
    }

    #[test]
    fn a_stale_page_is_a_mismatch() {
        // A page that lost its last write (e.g. a hypervisor restoring an
        // old copy) holds the previous version's pattern: every word differs.
        let mut buf = region(4);
        let mem = page_aligned(&mut buf, 4 * PAGE_BYTES).unwrap();
        let mut w = Workload::new(mem, 9);
        let old: Vec<u8> = w.region_mut()[..PAGE_BYTES].to_vec();
        w.hot_pass(0..1);
        w.region_mut()[..PAGE_BYTES].copy_from_slice(&old);
        assert!(w.verify_all() > PAGE_BYTES as u64 / 2);
        assert!(w.first_mismatches.len() == MISMATCHES_KEPT);
    }

    #[test]
    fn phases_move_the_hot_window_over_the_region() {
        let total = 100;
        let hot = hot_pages(total, 10);
        assert_eq!(hot, 10);
        let mut seen = vec![false; total];
        for phase in 0..10 {
            for p in hot_window(total, hot, phase) {
                seen[p] = true;
            }
        }
        assert!(
            seen.iter().all(|&s| s),
            "ten phases of 10% cover everything"
        );
        let w: Vec<usize> = hot_window(10, 4, 2).collect();
        assert_eq!(w, vec![8, 9, 0, 1], "wraps at the end");
        assert_eq!(phase_of(0, 10, 4), 0);
        assert_eq!(phase_of(9, 10, 4), 3);
        assert_eq!(phase_of(10, 10, 4), 3, "the end belongs to the last phase");
        assert_eq!(hot_pages(1000, 0), 0);
        assert_eq!(hot_pages(10, 1), 1, "at least a page");
        assert_eq!(hot_pages(10, 100), 10);
        assert_eq!(window_range(10, 4, 2), 8..12);
    }
}
