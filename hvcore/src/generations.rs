//! Generations: one byte per 4 KiB guest page, in the manner of Linux's
//! multi-gen LRU (`Documentation/mm/multigen_lru.rst`).
//!
//! Every aging pass is one *sequence number*. `max_seq` is the current pass;
//! `min_seq` the oldest generation still told apart. Each guest page's byte
//! holds the generation of the last pass that found it young (or the pass
//! during which it was mapped, if none has yet), so its age is
//! `max_seq - seq` passes, or `now_ms - pass_time_ms(seq)` milliseconds.
//! Huge pages age as a unit: a young 2 MiB leaf stamps all 512 bytes.
//!
//! # Encoding (everything aging needs in one byte per page)
//! * `0`: not mapped (no age).
//! * `1..=255`: `seq` with `seq % 255 + 1 == byte`, the unique such `seq` in
//!   `[min_seq, max_seq]`; the window is at most 255 wide by construction.
//!
//! When a new pass would widen the window past 255, the oldest
//! generations are merged into one ([`RENORMALISE_KEEP`] newest are kept):
//! one sweep over the bytes, at most once every ~64 passes, which is how
//! MGLRU advances `min_seq`. Ages are therefore exact up to
//! `RENORMALISE_KEEP` passes and saturate beyond: a page in the merged
//! generation is reported as that old, never younger than it is by more
//! than the merge.
//!
//! Stamping a young page is one byte store, nothing else, because it sits
//! in the aging pass's inner loop. Per-generation page counts (histogram,
//! coldest-first) are computed when asked, with one sweep over the bytes
//! (about 1 ms per 16 GiB of guest), which a reporter does once per report,
//! not once per pass. The per-VM state besides the bytes is one array of
//! 256 pass timestamps (2 KiB per guest, not per page).

use crate::addr::{GuestPhysAddr, PAGE_SIZE_4K};

/// Generations kept distinct when the window is renormalised.
pub const RENORMALISE_KEEP: u64 = 191;
/// Widest window the byte encoding can tell apart.
const WINDOW: u64 = 255;

/// When a page counts as cold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColdAfter {
    /// Not young in the last `n` passes (`max_seq - seq >= n`).
    Gens(u64),
    /// Not young for at least this many milliseconds.
    Millis(u64),
}

/// One row of the age histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgeBucket {
    /// The generation (sequence number).
    pub seq: u64,
    /// Passes since that generation (`max_seq - seq`).
    pub age_gens: u64,
    /// Milliseconds since that pass, at `now_ms`.
    pub age_ms: u64,
    /// 4 KiB pages in the generation.
    pub pages: u64,
}

/// A run of consecutive pages of one generation, yielded coldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColdRun {
    /// First page.
    pub gpa: GuestPhysAddr,
    /// Length in 4 KiB pages.
    pub pages: u64,
    /// Their generation.
    pub seq: u64,
}

/// The generation bytes of one guest and the sequence bookkeeping.
///
/// `S` is the byte storage: a `Vec<u8>` on the host, a slice of frames in
/// the kernel. Page `i` (guest-physical `i * 4096`) is byte `i`; pages past
/// the end of the storage are not tracked (and never panic).
#[derive(Debug)]
pub struct Generations<S> {
    bytes: S,
    max_seq: u64,
    min_seq: u64,
    pass_ms: [u64; 256],
    /// `encode(max_seq)`, cached for the stamping fast path.
    code: u8,
}

/// Byte `k` of the result is 0xff if bit `k` of `m8` (8 bits) is set, else 0.
#[inline(always)]
fn spread_bits(m8: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // Byte k keeps only bit k of the replicated mask: nonzero iff bit k set.
    let x = m8.wrapping_mul(0x0101_0101_0101_0101) & 0x8040_2010_0804_0201;
    // Per-byte "nonzero" into each byte's top bit, without carries between bytes.
    let nz = (((x & LOW7) + LOW7) | x) & !LOW7;
    (nz >> 7) * 0xff
}

#[inline(always)]
fn encode(seq: u64) -> u8 {
    (seq % WINDOW) as u8 + 1
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> Generations<S> {
    /// Generations over `bytes` (any contents: cleared here), with the
    /// first generation (seq 1) starting at `now_ms`.
    pub fn new(mut bytes: S, now_ms: u64) -> Self {
        bytes.as_mut().fill(0);
        let mut g = Generations {
            bytes,
            max_seq: 1,
            min_seq: 1,
            pass_ms: [0; 256],
            code: encode(1),
        };
        g.pass_ms[1] = now_ms;
        g
    }

    /// The current generation.
    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    /// The oldest generation told apart.
    pub fn min_seq(&self) -> u64 {
        self.min_seq
    }

    /// Guest bytes tracked (from guest-physical 0).
    pub fn tracked_bytes(&self) -> u64 {
        self.bytes.as_ref().len() as u64 * 4096
    }

    /// When pass `seq` started, if it is in the window.
    pub fn pass_time_ms(&self, seq: u64) -> Option<u64> {
        (self.min_seq..=self.max_seq)
            .contains(&seq)
            .then(|| self.pass_ms[(seq % 256) as usize])
    }

    #[inline(always)]
    fn decode(&self, b: u8) -> Option<u64> {
        if b == 0 {
            return None;
        }
        let r = u64::from(b - 1);
        let base = self.min_seq % WINDOW;
        Some(self.min_seq + (r + WINDOW - base) % WINDOW)
    }

    /// Starts pass `max_seq + 1` at `now_ms` and returns its number.
    pub fn begin_pass(&mut self, now_ms: u64) -> u64 {
        if self.max_seq + 1 - self.min_seq >= WINDOW {
            self.renormalise(self.max_seq + 1 - RENORMALISE_KEEP);
        }
        self.max_seq += 1;
        self.code = encode(self.max_seq);
        self.pass_ms[(self.max_seq % 256) as usize] = now_ms;
        self.max_seq
    }

    /// Merges every generation older than `new_min` into `new_min`.
    fn renormalise(&mut self, new_min: u64) {
        let target = encode(new_min);
        let (min, bytes) = (self.min_seq, self.bytes.as_mut());
        let base = min % WINDOW;
        for b in bytes.iter_mut() {
            if *b == 0 {
                continue;
            }
            let seq = min + (u64::from(*b - 1) + WINDOW - base) % WINDOW;
            if seq < new_min {
                *b = target;
            }
        }
        self.min_seq = new_min;
    }

    fn set_range(&mut self, gpa: u64, size: u64, code: u8) {
        let bytes = self.bytes.as_mut();
        let first = usize::try_from(gpa / 4096)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let last = usize::try_from(gpa.saturating_add(size).div_ceil(4096))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        bytes[first..last].fill(code);
    }

    /// Pages per byte code, by one sweep.
    fn counts(&self) -> [u64; 256] {
        let mut counts = [0u64; 256];
        for &b in self.bytes.as_ref() {
            counts[usize::from(b)] += 1;
        }
        counts
    }

    /// Marks `[gpa, gpa + size)` young in the current pass.
    #[inline(always)]
    pub fn stamp(&mut self, gpa: u64, size: u64) {
        if size == 4096 {
            let code = self.code;
            if let Some(b) = usize::try_from(gpa / 4096)
                .ok()
                .and_then(|i| self.bytes.as_mut().get_mut(i))
            {
                *b = code;
            }
            return;
        }
        self.set_range(gpa, size, self.code);
    }

    /// Marks young the 4 KiB pages `gpa + k * 4096` for each bit `k` of
    /// `mask` (32 pages). Branch-free over the 32 bytes: at mid densities the
    /// bits are unpredictable, and a mispredicted branch costs more than
    /// rewriting a byte with its own value.
    #[inline(always)]
    pub fn stamp_mask(&mut self, gpa: u64, mask: u32) {
        let code = u64::from(self.code) * 0x0101_0101_0101_0101;
        let first = usize::try_from(gpa / 4096).unwrap_or(usize::MAX);
        let bytes = self.bytes.as_mut();
        if let Some(run) = bytes.get_mut(first..first.saturating_add(32)) {
            let (words, _) = run.as_chunks_mut::<8>();
            for (w, word) in words.iter_mut().enumerate() {
                let sel = spread_bits(u64::from(mask >> (8 * w)) & 0xff);
                let v = u64::from_ne_bytes(*word);
                *word = ((v & !sel) | (code & sel)).to_ne_bytes();
            }
        } else {
            let mut m = mask;
            while m != 0 {
                let k = m.trailing_zeros() as u64;
                m &= m - 1;
                self.stamp(gpa + k * 4096, 4096);
            }
        }
    }

    /// Asks the CPU to bring the bytes of pages `[gpa, gpa + size)` into
    /// its cache for writing, so that stamping them later hits the cache (a
    /// store that misses holds up the next locked instruction of the pass;
    /// a prefetch does not). A hint only: nothing is read or written.
    #[inline(always)]
    pub fn prefetch(&mut self, gpa: u64, size: u64) {
        let bytes = self.bytes.as_mut();
        let first = usize::try_from(gpa / 4096)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let last = usize::try_from(gpa.saturating_add(size).div_ceil(4096))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        for line in bytes[first..last].chunks_mut(64) {
            core::hint::prefetch_write(line.as_mut_ptr(), core::hint::Locality::L1);
        }
    }

    /// Starts tracking newly mapped pages; their age counts from now.
    pub fn note_mapped(&mut self, gpa: GuestPhysAddr, size: u64) {
        self.stamp(gpa.as_u64(), size);
    }

    /// Stops tracking unmapped (or reclaimed) pages.
    pub fn note_unmapped(&mut self, gpa: GuestPhysAddr, size: u64) {
        self.set_range(gpa.as_u64(), size, 0);
    }

    /// The generation of the page holding `gpa`, if it is tracked and mapped.
    pub fn seq_of(&self, gpa: GuestPhysAddr) -> Option<u64> {
        let i = usize::try_from(gpa.page_number()).ok()?;
        self.decode(*self.bytes.as_ref().get(i)?)
    }

    /// Scores the hot set against ground truth: `touched` is a bitmap of the
    /// pages from `first_pfn` on (bit `i` of word `i / 64`: page
    /// `first_pfn + i` was touched), as a guest reports it for one interval;
    /// a page counts as hot if a pass after `since_seq` found it young.
    pub fn score_hot_set(
        &self,
        first_pfn: u64,
        page_count: u64,
        touched: &[u64],
        since_seq: u64,
    ) -> HotSetScore {
        let mut score = HotSetScore::default();
        for i in 0..page_count {
            let was_touched = touched
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0);
            let gpa = GuestPhysAddr::new((first_pfn + i) * PAGE_SIZE_4K);
            let hot = self.seq_of(gpa).is_some_and(|s| s > since_seq);
            match (was_touched, hot) {
                (true, true) => score.true_hot += 1,
                (false, true) => score.false_hot += 1,
                (true, false) => score.missed += 1,
                (false, false) => {}
            }
        }
        score
    }

    /// Young within the last `k` passes (`k >= 1`: the current one counts).
    pub fn is_hot(&self, gpa: GuestPhysAddr, k: u64) -> bool {
        self.seq_of(gpa).is_some_and(|s| s + k > self.max_seq)
    }

    /// Whether a page of generation `seq` is cold by `after` at `now_ms`.
    pub fn seq_is_cold(&self, seq: u64, after: ColdAfter, now_ms: u64) -> bool {
        match after {
            ColdAfter::Gens(n) => self.max_seq - seq >= n,
            ColdAfter::Millis(t) => now_ms.saturating_sub(self.pass_ms[(seq % 256) as usize]) >= t,
        }
    }

    /// Whether the (mapped) page holding `gpa` is cold.
    pub fn is_cold(&self, gpa: GuestPhysAddr, after: ColdAfter, now_ms: u64) -> bool {
        self.seq_of(gpa)
            .is_some_and(|s| self.seq_is_cold(s, after, now_ms))
    }

    /// The age histogram, oldest generation first; empty generations are
    /// left out. Sweeps the bytes once.
    pub fn histogram(&self, now_ms: u64) -> impl Iterator<Item = AgeBucket> + '_ {
        let counts = self.counts();
        (self.min_seq..=self.max_seq).filter_map(move |seq| {
            let pages = counts[usize::from(encode(seq))];
            (pages > 0).then(|| AgeBucket {
                seq,
                age_gens: self.max_seq - seq,
                age_ms: now_ms.saturating_sub(self.pass_ms[(seq % 256) as usize]),
                pages,
            })
        })
    }

    /// Cold pages, coldest generation first, as runs of consecutive pages of
    /// one generation (for the reclaimer). Sweeps the bytes once, then once
    /// more per non-empty cold generation.
    pub fn coldest(&self, after: ColdAfter, now_ms: u64) -> ColdIter<'_, S> {
        ColdIter {
            counts: self.counts(),
            gens: self,
            after,
            now_ms,
            seq: self.min_seq,
            pos: 0,
        }
    }
}

/// How a hot set compares with ground truth ([`Generations::score_hot_set`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotSetScore {
    /// Touched and found hot.
    pub true_hot: u64,
    /// Found hot but not touched.
    pub false_hot: u64,
    /// Touched but not found hot.
    pub missed: u64,
}

/// Iterator of [`Generations::coldest`].
#[derive(Debug)]
pub struct ColdIter<'g, S> {
    counts: [u64; 256],
    gens: &'g Generations<S>,
    after: ColdAfter,
    now_ms: u64,
    seq: u64,
    pos: usize,
}

impl<S: AsRef<[u8]> + AsMut<[u8]>> Iterator for ColdIter<'_, S> {
    type Item = ColdRun;

    fn next(&mut self) -> Option<ColdRun> {
        let bytes = self.gens.bytes.as_ref();
        while self.seq <= self.gens.max_seq
            && self.gens.seq_is_cold(self.seq, self.after, self.now_ms)
        {
            let code = encode(self.seq);
            if self.counts[usize::from(code)] > 0
                && let Some(off) = bytes[self.pos..].iter().position(|&b| b == code)
            {
                let start = self.pos + off;
                let len = bytes[start..]
                    .iter()
                    .position(|&b| b != code)
                    .unwrap_or(bytes.len() - start);
                self.pos = start + len;
                return Some(ColdRun {
                    gpa: GuestPhysAddr::new(start as u64 * 4096),
                    pages: len as u64,
                    seq: self.seq,
                });
            }
            self.seq += 1;
            self.pos = 0;
        }
        None
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn score_hot_set_counts_each_outcome() {
        let mut g = Generations::new(vec![0u8; 64], 0);
        g.note_mapped(GuestPhysAddr::new(0), 64 * 4096);
        let seq = g.begin_pass(1); // pages 8..12 young in this pass
        g.stamp(8 * 4096, 4 * 4096);
        // Ground truth from pfn 8: pages 8, 9 and 14 touched.
        let touched = [0b100_0011u64];
        let score = g.score_hot_set(8, 8, &touched, seq - 1);
        assert_eq!(
            score,
            HotSetScore {
                true_hot: 2,
                false_hot: 2,
                missed: 1
            }
        );
        // Nothing is hot since the pass itself.
        assert_eq!(g.score_hot_set(8, 8, &touched, seq).true_hot, 0);
    }

    #[test]
    fn spread_bits_is_exact() {
        for m in 0..256u64 {
            let want = (0..8).fold(0u64, |w, k| w | (((m >> k) & 1) * 0xff) << (8 * k));
            assert_eq!(spread_bits(m), want, "mask {m:#x}");
        }
    }

    #[test]
    fn stamp_mask_equals_stamping_each_page() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for case in 0..200u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mask = seed as u32;
            // Near the end of the storage too (the per-page fallback).
            let page = (seed >> 32) % 100;
            let mut a = Generations::new(vec![0u8; 100], 0);
            let mut b = Generations::new(vec![0u8; 100], 0);
            a.note_mapped(GuestPhysAddr::new(0), 50 * 4096);
            b.note_mapped(GuestPhysAddr::new(0), 50 * 4096);
            for _ in 0..=case % 3 {
                a.begin_pass(1);
                b.begin_pass(1);
            }
            a.stamp_mask(page * 4096, mask);
            for k in 0..32 {
                if mask >> k & 1 != 0 {
                    b.stamp((page + k) * 4096, 4096);
                }
            }
            assert_eq!(a.bytes, b.bytes, "mask {mask:#x} at page {page}");
        }
    }

    #[test]
    fn window_renormalises_and_counts_stay_exact() {
        let mut g = Generations::new(vec![0u8; 64], 0);
        g.note_mapped(GuestPhysAddr::new(0), 64 * 4096);
        for pass in 1..=650u64 {
            g.begin_pass(pass * 10);
            // Page 0 is young every pass, page 1 every 100th, the rest never.
            g.stamp(0, 4096);
            if pass % 100 == 0 {
                g.stamp(4096, 4096);
            }
            assert!(g.max_seq() - g.min_seq() < WINDOW);
            let total: u64 = g.histogram(0).map(|b| b.pages).sum();
            assert_eq!(total, 64);
        }
        assert_eq!(g.seq_of(GuestPhysAddr::new(0)), Some(g.max_seq()));
        assert_eq!(g.seq_of(GuestPhysAddr::new(4096)), Some(601));
        assert_eq!(g.seq_of(GuestPhysAddr::new(8192)), Some(g.min_seq()));
        assert!(g.is_hot(GuestPhysAddr::new(0), 1));
        assert!(!g.is_hot(GuestPhysAddr::new(4096), 1));
        assert!(g.is_cold(GuestPhysAddr::new(8192), ColdAfter::Gens(100), 0));
        assert!(g.is_cold(GuestPhysAddr::new(4096), ColdAfter::Millis(5), 6020));
        assert!(!g.is_cold(GuestPhysAddr::new(4096), ColdAfter::Millis(5), 6004));
        let runs: Vec<_> = g.coldest(ColdAfter::Gens(1), 0).collect();
        assert_eq!(
            runs[0],
            ColdRun {
                gpa: GuestPhysAddr::new(8192),
                pages: 62,
                seq: g.min_seq()
            }
        );
        assert_eq!(runs[1].seq, 601);
        assert_eq!(runs.len(), 2);
        g.note_unmapped(GuestPhysAddr::new(8192), 62 * 4096);
        assert_eq!(g.seq_of(GuestPhysAddr::new(8192)), None);
        assert_eq!(g.histogram(0).map(|b| b.pages).sum::<u64>(), 2);
        // Out-of-range addresses are ignored, not a panic.
        g.stamp(1 << 40, 1 << 21);
        assert_eq!(g.seq_of(GuestPhysAddr::new(1 << 40)), None);
    }
}
