//! Physical frame allocator core: 4 KiB and 2 MiB frames over a memory map.
//!
//! The allocator manages one contiguous span of host-physical memory (from the
//! lowest usable byte rounded down to 2 MiB to the highest rounded up), split
//! into 2 MiB *blocks* of 512 4 KiB *frames*. It keeps, in caller-provided
//! storage (the kernel carves it out of usable memory, host tests use a `Vec`):
//!
//! ```text
//!  free     1 bit / 4 KiB frame   1 = free now
//!  usable   1 bit / 4 KiB frame   1 = managed (inside a usable region, not removed)
//!  huge     1 bit / 2 MiB block   1 = handed out whole, as one 2 MiB frame
//!  partial  1 bit / 2 MiB block   1 = some but not all 512 frames free
//!  whole    1 bit / 2 MiB block   1 = all 512 frames free (can serve 2 MiB)
//!  count    16 bits / 2 MiB block number of free frames in the block
//! ```
//!
//! 4 KiB requests are served from `partial` blocks first, so whole blocks stay
//! whole for the 2 MiB requests that guests prefer (2 MiB second-level leaves
//! mean fewer table pages and cheaper aging walks). Both summary bitmaps carry
//! a search hint with the invariant "no bit set below the hint", so a search
//! starts there and never wraps; the lowest addresses are used first.
//!
//! Freeing checks every claim against the bitmaps, so a double free, a free of
//! a frame never handed out, or a free with the wrong size is an error
//! ([`FrameError`]) and leaves the state untouched. A 2 MiB frame can be split
//! into 512 4 KiB frames ([`FrameAllocator::split_2m`]) when the reclaimer
//! breaks up a huge guest page and frees its parts one by one.
//!
//! Concurrency: the allocator is a plain `&mut self` structure. The kernel
//! (`kernel/src/mem/`) wraps it in an interrupt-safe spin lock. A lock-free
//! design would have to keep the per-block count and both summary bitmaps
//! consistent with the frame bitmap without a lock, which needs multi-word
//! updates or a retry protocol that is hard to prove; one operation here takes
//! tens of nanoseconds, frame allocation is not on a guest's fast path, and a
//! short critical section under a lock is easy to reason about.
//!
//! Neighbours: [`crate::addr`] for [`HostPhysAddr`]; the kernel's `mem` module
//! feeds it the bootloader memory map and takes frames for the heap, table
//! pages and guest memory.

use crate::addr::{HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

/// Frames per 2 MiB block.
const FRAMES_PER_BLOCK: usize = 512;
/// 64-bit words of a frame bitmap per block.
const WORDS_PER_BLOCK: usize = FRAMES_PER_BLOCK / 64;
/// Block counts packed per storage word (16 bits each).
const COUNTS_PER_WORD: usize = 4;

/// A usable range of host-physical memory, as a memory map reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub start: HostPhysAddr,
    /// Length in bytes.
    pub len_bytes: u64,
}

/// The two frame sizes the allocator hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameSize {
    /// A 4 KiB frame.
    Size4K,
    /// A 2 MiB frame (2 MiB aligned).
    Size2M,
}

impl FrameSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => PAGE_SIZE_4K,
            Self::Size2M => PAGE_SIZE_2M,
        }
    }
}

/// Why an allocation or a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free frame of the requested size.
    OutOfFrames {
        /// The size that was asked for.
        size: FrameSize,
    },
    /// The address is not aligned to the frame size.
    Misaligned(HostPhysAddr),
    /// The allocator does not manage this frame (outside every usable region,
    /// or removed).
    NotManaged(HostPhysAddr),
    /// The frame is free already.
    DoubleFree(HostPhysAddr),
    /// A 4 KiB free of a frame that was handed out inside a 2 MiB frame.
    PartOfHugeFrame(HostPhysAddr),
    /// A 2 MiB free (or split) of a block that was not handed out as one
    /// 2 MiB frame.
    NotHugeFrame(HostPhysAddr),
    /// `remove_range` over a frame that is handed out.
    InUse(HostPhysAddr),
    /// The storage slice is smaller than [`Layout::storage_words`].
    StorageTooSmall {
        /// Words needed.
        needed_words: usize,
        /// Words given.
        given_words: usize,
    },
    /// No usable region holds a whole 4 KiB frame.
    NoUsableMemory,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfFrames { size } => write!(f, "out of {size:?} frames"),
            Self::Misaligned(a) => write!(f, "{a:?} is not aligned to its frame size"),
            Self::NotManaged(a) => write!(f, "{a:?} is not managed by the frame allocator"),
            Self::DoubleFree(a) => write!(f, "double free of {a:?}"),
            Self::PartOfHugeFrame(a) => write!(f, "{a:?} is part of a 2 MiB frame"),
            Self::NotHugeFrame(a) => write!(f, "{a:?} was not handed out as a 2 MiB frame"),
            Self::InUse(a) => write!(f, "{a:?} is handed out"),
            Self::StorageTooSmall {
                needed_words,
                given_words,
            } => write!(
                f,
                "frame allocator storage too small: {given_words} words given, {needed_words} needed"
            ),
            Self::NoUsableMemory => write!(f, "no usable memory"),
        }
    }
}

/// The span an allocator covers and the storage it needs for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// First byte of the span (2 MiB aligned).
    pub base: HostPhysAddr,
    /// Number of 2 MiB blocks in the span.
    pub blocks: usize,
}

impl Layout {
    /// The span that covers every whole 4 KiB frame of `regions`, or `None`
    /// when there is none.
    pub fn for_regions(regions: impl Iterator<Item = MemRegion>) -> Option<Self> {
        let mut lo = u64::MAX;
        let mut hi = 0u64;
        for r in regions {
            if let Some((s, e)) = frame_bounds(r) {
                lo = lo.min(s);
                hi = hi.max(e);
            }
        }
        if lo >= hi {
            return None;
        }
        let base = lo & !(PAGE_SIZE_2M - 1);
        let end = hi.div_ceil(PAGE_SIZE_2M) * PAGE_SIZE_2M;
        let blocks = usize::try_from((end - base) / PAGE_SIZE_2M).ok()?;
        Some(Self {
            base: HostPhysAddr::new(base),
            blocks,
        })
    }

    /// 64-bit words of storage the allocator needs for this span.
    pub const fn storage_words(&self) -> usize {
        let block_bit_words = self.blocks.div_ceil(64);
        2 * self.blocks * WORDS_PER_BLOCK
            + 3 * block_bit_words
            + self.blocks.div_ceil(COUNTS_PER_WORD)
    }
}

/// The frame-aligned `[start, end)` of a region, if it holds a whole frame.
fn frame_bounds(r: MemRegion) -> Option<(u64, u64)> {
    let start = r.start.as_u64().checked_add(PAGE_SIZE_4K - 1)? & !(PAGE_SIZE_4K - 1);
    let end = r.start.as_u64().saturating_add(r.len_bytes) & !(PAGE_SIZE_4K - 1);
    (start < end).then_some((start, end))
}

/// Sets bits `[from, to)` of a bitmap, a word at a time.
fn set_bits(words: &mut [u64], from: usize, to: usize) {
    let mut i = from;
    while i < to {
        let bit = i % 64;
        let n = (64 - bit).min(to - i);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        words[i / 64] |= mask;
        i += n;
    }
}

fn test_bit(words: &[u64], i: usize) -> bool {
    words[i / 64] & (1 << (i % 64)) != 0
}

fn set_bit(words: &mut [u64], i: usize) {
    words[i / 64] |= 1 << (i % 64);
}

fn clear_bit(words: &mut [u64], i: usize) {
    words[i / 64] &= !(1 << (i % 64));
}

/// A summary bitmap over blocks with a search hint: no bit is set in a word
/// below `hint`.
#[derive(Debug)]
struct Summary<'a> {
    bits: &'a mut [u64],
    hint: usize,
}

impl Summary<'_> {
    fn set(&mut self, block: usize) {
        set_bit(self.bits, block);
        self.hint = self.hint.min(block / 64);
    }

    fn clear(&mut self, block: usize) {
        clear_bit(self.bits, block);
    }

    /// The lowest block whose bit is set.
    fn first(&mut self) -> Option<usize> {
        while self.hint < self.bits.len() {
            let w = self.bits[self.hint];
            if w != 0 {
                return Some(self.hint * 64 + w.trailing_zeros() as usize);
            }
            self.hint += 1;
        }
        None
    }
}

/// Free/used figures, in 4 KiB frames unless named otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames the allocator manages.
    pub managed_frames: u64,
    /// Frames free now.
    pub free_frames: u64,
    /// Frames handed out now (as 4 KiB frames or inside 2 MiB frames).
    pub used_frames: u64,
    /// Blocks wholly free now (each can serve one 2 MiB request).
    pub whole_free_blocks: u64,
}

/// The allocator. See the module documentation for the layout and policy.
#[derive(Debug)]
pub struct FrameAllocator<'a> {
    layout: Layout,
    free: &'a mut [u64],
    usable: &'a mut [u64],
    huge: &'a mut [u64],
    counts: &'a mut [u64],
    partial: Summary<'a>,
    whole: Summary<'a>,
    managed_frames: u64,
    free_frames: u64,
    whole_free_blocks: u64,
}

impl<'a> FrameAllocator<'a> {
    /// Builds an allocator over `regions` (all frames free), keeping its
    /// bitmaps in `storage`, which must hold at least
    /// `Layout::for_regions(regions).storage_words()` words. Regions may
    /// overlap and be unaligned; only whole 4 KiB frames inside them count.
    pub fn new(
        regions: impl Iterator<Item = MemRegion> + Clone,
        storage: &'a mut [u64],
    ) -> Result<Self, FrameError> {
        let layout = Layout::for_regions(regions.clone()).ok_or(FrameError::NoUsableMemory)?;
        let needed_words = layout.storage_words();
        if storage.len() < needed_words {
            return Err(FrameError::StorageTooSmall {
                needed_words,
                given_words: storage.len(),
            });
        }
        let storage = &mut storage[..needed_words];
        storage.fill(0);
        let frame_words = layout.blocks * WORDS_PER_BLOCK;
        let block_bit_words = layout.blocks.div_ceil(64);
        let (free, rest) = storage.split_at_mut(frame_words);
        let (usable, rest) = rest.split_at_mut(frame_words);
        let (huge, rest) = rest.split_at_mut(block_bit_words);
        let (partial, rest) = rest.split_at_mut(block_bit_words);
        let (whole, counts) = rest.split_at_mut(block_bit_words);

        for r in regions {
            if let Some((s, e)) = frame_bounds(r) {
                let from = ((s - layout.base.as_u64()) / PAGE_SIZE_4K) as usize;
                let to = ((e - layout.base.as_u64()) / PAGE_SIZE_4K) as usize;
                set_bits(usable, from, to);
            }
        }
        free.copy_from_slice(usable);

        let mut this = Self {
            layout,
            free,
            usable,
            huge,
            counts,
            partial: Summary {
                bits: partial,
                hint: 0,
            },
            whole: Summary {
                bits: whole,
                hint: 0,
            },
            managed_frames: 0,
            free_frames: 0,
            whole_free_blocks: 0,
        };
        for block in 0..layout.blocks {
            let words = &this.free[block * WORDS_PER_BLOCK..(block + 1) * WORDS_PER_BLOCK];
            let n: u32 = words.iter().map(|w| w.count_ones()).sum();
            this.managed_frames += u64::from(n);
            this.free_frames += u64::from(n);
            this.set_count(block, 0, n as u16);
        }
        Ok(this)
    }

    /// The span covered and its storage needs.
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    /// Current free/used figures.
    pub fn stats(&self) -> FrameStats {
        FrameStats {
            managed_frames: self.managed_frames,
            free_frames: self.free_frames,
            used_frames: self.managed_frames - self.free_frames,
            whole_free_blocks: self.whole_free_blocks,
        }
    }

    /// Hands out a frame of `size`.
    pub fn alloc(&mut self, size: FrameSize) -> Result<HostPhysAddr, FrameError> {
        match size {
            FrameSize::Size4K => self.alloc_4k(),
            FrameSize::Size2M => self.alloc_2m(),
        }
    }

    /// Takes back a frame of `size` handed out by [`Self::alloc`].
    pub fn free(&mut self, addr: HostPhysAddr, size: FrameSize) -> Result<(), FrameError> {
        match size {
            FrameSize::Size4K => self.free_4k(addr),
            FrameSize::Size2M => self.free_2m(addr),
        }
    }

    /// Hands out a 4 KiB frame, from a partly used block when there is one.
    pub fn alloc_4k(&mut self) -> Result<HostPhysAddr, FrameError> {
        let block = match self.partial.first() {
            Some(b) => b,
            None => self.whole.first().ok_or(FrameError::OutOfFrames {
                size: FrameSize::Size4K,
            })?,
        };
        let first_word = block * WORDS_PER_BLOCK;
        // The summaries promise a free frame in this block.
        let (i, w) = self.free[first_word..first_word + WORDS_PER_BLOCK]
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| (first_word + i, *w))
            .ok_or(FrameError::OutOfFrames {
                size: FrameSize::Size4K,
            })?;
        let bit = w.trailing_zeros() as usize;
        self.free[i] = w & !(1 << bit);
        let old = self.count(block);
        self.set_count(block, old, old - 1);
        self.free_frames -= 1;
        Ok(self.frame_addr(i * 64 + bit))
    }

    /// Hands out a 2 MiB frame (2 MiB aligned), if a whole block is free.
    pub fn alloc_2m(&mut self) -> Result<HostPhysAddr, FrameError> {
        let block = self.whole.first().ok_or(FrameError::OutOfFrames {
            size: FrameSize::Size2M,
        })?;
        let first_word = block * WORDS_PER_BLOCK;
        self.free[first_word..first_word + WORDS_PER_BLOCK].fill(0);
        self.set_count(block, FRAMES_PER_BLOCK as u16, 0);
        set_bit(self.huge, block);
        self.free_frames -= FRAMES_PER_BLOCK as u64;
        Ok(self.frame_addr(block * FRAMES_PER_BLOCK))
    }

    /// Takes back a 4 KiB frame handed out by [`Self::alloc_4k`] (or split
    /// out of a 2 MiB frame by [`Self::split_2m`]).
    pub fn free_4k(&mut self, addr: HostPhysAddr) -> Result<(), FrameError> {
        let frame = self.managed_frame(addr, PAGE_SIZE_4K)?;
        let block = frame / FRAMES_PER_BLOCK;
        if test_bit(self.huge, block) {
            return Err(FrameError::PartOfHugeFrame(addr));
        }
        if test_bit(self.free, frame) {
            return Err(FrameError::DoubleFree(addr));
        }
        set_bit(self.free, frame);
        let old = self.count(block);
        self.set_count(block, old, old + 1);
        self.free_frames += 1;
        Ok(())
    }

    /// Takes back a 2 MiB frame handed out by [`Self::alloc_2m`].
    pub fn free_2m(&mut self, addr: HostPhysAddr) -> Result<(), FrameError> {
        let block = self.huge_block(addr)?;
        let first_word = block * WORDS_PER_BLOCK;
        self.free[first_word..first_word + WORDS_PER_BLOCK].fill(u64::MAX);
        clear_bit(self.huge, block);
        self.set_count(block, 0, FRAMES_PER_BLOCK as u16);
        self.free_frames += FRAMES_PER_BLOCK as u64;
        Ok(())
    }

    /// Turns a handed-out 2 MiB frame into 512 handed-out 4 KiB frames, each
    /// to be freed on its own with [`Self::free_4k`].
    pub fn split_2m(&mut self, addr: HostPhysAddr) -> Result<(), FrameError> {
        let block = self.huge_block(addr)?;
        clear_bit(self.huge, block);
        Ok(())
    }

    /// Whether `addr`'s 4 KiB frame is managed and handed out now.
    pub fn is_allocated(&self, addr: HostPhysAddr) -> bool {
        self.managed_frame(addr.align_down(PAGE_SIZE_4K), PAGE_SIZE_4K)
            .is_ok_and(|f| !test_bit(self.free, f))
    }

    /// Stops managing the free frames that overlap `[start, start + len_bytes)`
    /// (for memory the kernel takes for itself: the allocator's own storage,
    /// the SMP trampoline). Frames not managed are skipped. Fails without
    /// changing anything if one of the frames is handed out.
    pub fn remove_range(&mut self, start: HostPhysAddr, len_bytes: u64) -> Result<(), FrameError> {
        let base = self.layout.base.as_u64();
        let span_end = base + self.layout.blocks as u64 * PAGE_SIZE_2M;
        let lo = start.as_u64().max(base) & !(PAGE_SIZE_4K - 1);
        let hi = start.as_u64().saturating_add(len_bytes).min(span_end);
        if lo >= hi {
            return Ok(());
        }
        let from = ((lo - base) / PAGE_SIZE_4K) as usize;
        let to = (hi - base).div_ceil(PAGE_SIZE_4K) as usize;
        if let Some(f) = (from..to).find(|&f| test_bit(self.usable, f) && !test_bit(self.free, f)) {
            return Err(FrameError::InUse(self.frame_addr(f)));
        }
        for f in from..to {
            if test_bit(self.usable, f) {
                clear_bit(self.usable, f);
                clear_bit(self.free, f);
                let block = f / FRAMES_PER_BLOCK;
                let old = self.count(block);
                self.set_count(block, old, old - 1);
                self.free_frames -= 1;
                self.managed_frames -= 1;
            }
        }
        Ok(())
    }

    fn frame_addr(&self, frame: usize) -> HostPhysAddr {
        HostPhysAddr::new(self.layout.base.as_u64() + frame as u64 * PAGE_SIZE_4K)
    }

    /// The index of `addr`'s frame if it is aligned to `align` and managed.
    fn managed_frame(&self, addr: HostPhysAddr, align: u64) -> Result<usize, FrameError> {
        if !addr.is_aligned(align) {
            return Err(FrameError::Misaligned(addr));
        }
        let offset = addr
            .as_u64()
            .checked_sub(self.layout.base.as_u64())
            .ok_or(FrameError::NotManaged(addr))?;
        let frame =
            usize::try_from(offset / PAGE_SIZE_4K).map_err(|_| FrameError::NotManaged(addr))?;
        if frame >= self.layout.blocks * FRAMES_PER_BLOCK || !test_bit(self.usable, frame) {
            return Err(FrameError::NotManaged(addr));
        }
        Ok(frame)
    }

    /// The block of a 2 MiB frame handed out whole.
    fn huge_block(&self, addr: HostPhysAddr) -> Result<usize, FrameError> {
        let block = self.managed_frame(addr, PAGE_SIZE_2M)? / FRAMES_PER_BLOCK;
        if test_bit(self.huge, block) {
            Ok(block)
        } else if self.count(block) == FRAMES_PER_BLOCK as u16 {
            Err(FrameError::DoubleFree(addr))
        } else {
            Err(FrameError::NotHugeFrame(addr))
        }
    }

    fn count(&self, block: usize) -> u16 {
        let shift = (block % COUNTS_PER_WORD) * 16;
        (self.counts[block / COUNTS_PER_WORD] >> shift) as u16
    }

    /// Stores a block's new free count and moves it between the summaries.
    fn set_count(&mut self, block: usize, old: u16, new: u16) {
        let shift = (block % COUNTS_PER_WORD) * 16;
        let w = &mut self.counts[block / COUNTS_PER_WORD];
        *w = (*w & !(0xffff << shift)) | (u64::from(new) << shift);
        let full = FRAMES_PER_BLOCK as u16;
        let (was_whole, is_whole) = (old == full, new == full);
        let (was_partial, is_partial) = (old > 0 && old < full, new > 0 && new < full);
        if was_whole != is_whole {
            if is_whole {
                self.whole.set(block);
                self.whole_free_blocks += 1;
            } else {
                self.whole.clear(block);
                self.whole_free_blocks -= 1;
            }
        }
        if was_partial != is_partial {
            if is_partial {
                self.partial.set(block);
            } else {
                self.partial.clear(block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::vec;
    use std::vec::Vec;

    fn region(start: u64, len: u64) -> MemRegion {
        MemRegion {
            start: HostPhysAddr::new(start),
            len_bytes: len,
        }
    }

    fn storage_for(regions: &[MemRegion]) -> Vec<u64> {
        let layout = Layout::for_regions(regions.iter().copied()).unwrap();
        vec![0; layout.storage_words()]
    }

    #[test]
    fn counts_unaligned_regions() {
        // 0x1800..0x5000 holds frames 0x2000, 0x3000, 0x4000.
        let regions = [region(0x1800, 0x3800), region(0x40_0000, PAGE_SIZE_2M)];
        let mut st = storage_for(&regions);
        let fa = FrameAllocator::new(regions.iter().copied(), &mut st).unwrap();
        assert_eq!(fa.layout().base, HostPhysAddr::new(0));
        assert_eq!(fa.layout().blocks, 3);
        let s = fa.stats();
        assert_eq!(s.managed_frames, 3 + 512);
        assert_eq!(s.free_frames, 3 + 512);
        assert_eq!(s.whole_free_blocks, 1);
    }

    #[test]
    fn prefers_partial_blocks_for_4k() {
        let regions = [region(0x1000, 0x1000), region(0x20_0000, 2 * PAGE_SIZE_2M)];
        let mut st = storage_for(&regions);
        let mut fa = FrameAllocator::new(regions.iter().copied(), &mut st).unwrap();
        assert_eq!(fa.alloc_4k(), Ok(HostPhysAddr::new(0x1000)));
        // Block 0 is now empty; the next 4 KiB frame breaks block 1, and the
        // one after that stays in block 1 rather than breaking block 2.
        assert_eq!(fa.alloc_4k(), Ok(HostPhysAddr::new(0x20_0000)));
        assert_eq!(fa.alloc_4k(), Ok(HostPhysAddr::new(0x20_1000)));
        assert_eq!(fa.alloc_2m(), Ok(HostPhysAddr::new(0x40_0000)));
        assert_eq!(
            fa.alloc_2m(),
            Err(FrameError::OutOfFrames {
                size: FrameSize::Size2M
            })
        );
        assert_eq!(fa.stats().used_frames, 3 + 512);
    }

    #[test]
    fn refuses_bad_frees() {
        let regions = [region(0x20_0000, 2 * PAGE_SIZE_2M)];
        let mut st = storage_for(&regions);
        let mut fa = FrameAllocator::new(regions.iter().copied(), &mut st).unwrap();
        let small = fa.alloc_4k().unwrap();
        let big = fa.alloc_2m().unwrap();
        let before = fa.stats();
        assert_eq!(
            fa.free_4k(HostPhysAddr::new(0x1000)),
            Err(FrameError::NotManaged(HostPhysAddr::new(0x1000)))
        );
        assert_eq!(
            fa.free_4k(HostPhysAddr::new(0x7000_0000)),
            Err(FrameError::NotManaged(HostPhysAddr::new(0x7000_0000)))
        );
        let odd = HostPhysAddr::new(small.as_u64() + 8);
        assert_eq!(fa.free_4k(odd), Err(FrameError::Misaligned(odd)));
        let unused = HostPhysAddr::new(small.as_u64() + PAGE_SIZE_4K);
        assert_eq!(fa.free_4k(unused), Err(FrameError::DoubleFree(unused)));
        assert_eq!(fa.free_4k(big), Err(FrameError::PartOfHugeFrame(big)));
        assert_eq!(fa.free_2m(small), Err(FrameError::NotHugeFrame(small)));
        assert_eq!(fa.stats(), before);
        fa.free_2m(big).unwrap();
        assert_eq!(fa.free_2m(big), Err(FrameError::DoubleFree(big)));
        fa.free_4k(small).unwrap();
        assert_eq!(fa.free_4k(small), Err(FrameError::DoubleFree(small)));
        assert_eq!(fa.stats().free_frames, 1024);
        assert_eq!(fa.stats().whole_free_blocks, 2);
    }

    #[test]
    fn split_then_free_parts() {
        let regions = [region(0, PAGE_SIZE_2M)];
        let mut st = storage_for(&regions);
        let mut fa = FrameAllocator::new(regions.iter().copied(), &mut st).unwrap();
        let big = fa.alloc_2m().unwrap();
        fa.split_2m(big).unwrap();
        assert_eq!(fa.split_2m(big), Err(FrameError::NotHugeFrame(big)));
        assert_eq!(fa.free_2m(big), Err(FrameError::NotHugeFrame(big)));
        for i in 0..512 {
            fa.free_4k(HostPhysAddr::new(i * PAGE_SIZE_4K)).unwrap();
        }
        assert_eq!(fa.stats().whole_free_blocks, 1);
        assert_eq!(fa.alloc_2m(), Ok(big));
    }

    #[test]
    fn remove_range_refuses_used_frames() {
        let regions = [region(0, PAGE_SIZE_2M)];
        let mut st = storage_for(&regions);
        let mut fa = FrameAllocator::new(regions.iter().copied(), &mut st).unwrap();
        let a = fa.alloc_4k().unwrap();
        assert_eq!(
            fa.remove_range(HostPhysAddr::new(0), 0x3000),
            Err(FrameError::InUse(a))
        );
        assert_eq!(fa.stats().managed_frames, 512);
        fa.free_4k(a).unwrap();
        fa.remove_range(HostPhysAddr::new(0x800), 0x1000).unwrap();
        assert_eq!(fa.stats().managed_frames, 510);
        assert_eq!(
            fa.free_4k(HostPhysAddr::new(0x1000)),
            Err(FrameError::NotManaged(HostPhysAddr::new(0x1000)))
        );
        assert_eq!(fa.alloc_4k(), Ok(HostPhysAddr::new(0x2000)));
        assert_eq!(
            fa.alloc_2m(),
            Err(FrameError::OutOfFrames {
                size: FrameSize::Size2M
            })
        );
    }

    #[test]
    fn storage_too_small_and_empty() {
        let regions = [region(0, PAGE_SIZE_2M)];
        let mut st = vec![0u64; 3];
        assert!(matches!(
            FrameAllocator::new(regions.iter().copied(), &mut st),
            Err(FrameError::StorageTooSmall { .. })
        ));
        assert_eq!(
            FrameAllocator::new([region(0x10, 0x100)].into_iter(), &mut st).err(),
            Some(FrameError::NoUsableMemory)
        );
    }

    /// The model: which 4 KiB frames are managed, and what is handed out.
    #[derive(Debug, Default)]
    struct Model {
        managed: BTreeSet<u64>,
        handed: BTreeMap<u64, FrameSize>,
        /// 4 KiB frames handed out, by frame address (2 MiB frames expanded).
        busy: BTreeSet<u64>,
        /// Free managed frames per 2 MiB block number.
        block_free: BTreeMap<u64, u64>,
    }

    impl Model {
        fn manage(&mut self, f: u64) {
            if self.managed.insert(f) {
                *self.block_free.entry(f / PAGE_SIZE_2M).or_default() += 1;
            }
        }
        fn unmanage(&mut self, f: u64) {
            assert!(!self.busy.contains(&f));
            if self.managed.remove(&f) {
                *self.block_free.get_mut(&(f / PAGE_SIZE_2M)).unwrap() -= 1;
            }
        }
        fn take(&mut self, addr: u64, size: FrameSize) {
            for i in 0..size.bytes() / PAGE_SIZE_4K {
                let f = addr + i * PAGE_SIZE_4K;
                assert!(
                    self.managed.contains(&f),
                    "handed out unmanaged frame {f:#x}"
                );
                assert!(self.busy.insert(f), "frame {f:#x} handed out twice");
                *self.block_free.get_mut(&(f / PAGE_SIZE_2M)).unwrap() -= 1;
            }
            self.handed.insert(addr, size);
        }
        fn release(&mut self, addr: u64, size: FrameSize) {
            assert_eq!(self.handed.remove(&addr), Some(size));
            for i in 0..size.bytes() / PAGE_SIZE_4K {
                let f = addr + i * PAGE_SIZE_4K;
                assert!(self.busy.remove(&f));
                *self.block_free.get_mut(&(f / PAGE_SIZE_2M)).unwrap() += 1;
            }
        }
        fn whole_free_blocks(&self) -> u64 {
            self.block_free.values().filter(|n| **n == 512).count() as u64
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(FrameSize),
        /// Free the n-th handed-out frame (mod count).
        Free(usize),
        /// Split the n-th handed-out 2 MiB frame, if any.
        Split(usize),
        /// Free an arbitrary address with an arbitrary size.
        FreeAny(u64, FrameSize),
        /// Free the n-th handed-out frame (mod count), or the 2 MiB block
        /// holding it, with a size that may be wrong.
        FreeNear(usize, FrameSize, bool),
        /// Remove an arbitrary range.
        Remove(u64, u64),
    }

    use proptest::prelude::*;

    fn size() -> impl Strategy<Value = FrameSize> {
        prop_oneof![Just(FrameSize::Size4K), Just(FrameSize::Size2M)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => size().prop_map(Op::Alloc),
            5 => any::<usize>().prop_map(Op::Free),
            1 => any::<usize>().prop_map(Op::Split),
            2 => (0u64..0x140_0000, size(), prop_oneof![Just(0x7ffu64), Just(0xfff), Just(0x1f_ffff)])
                .prop_map(|(a, s, mask)| Op::FreeAny(a & !mask, s)),
            2 => (any::<usize>(), size(), any::<bool>()).prop_map(|(n, s, block)| Op::FreeNear(n, s, block)),
            1 => (0u64..0x140_0000, 0u64..0x4000).prop_map(|(a, l)| Op::Remove(a, l)),
        ]
    }

    fn regions() -> impl Strategy<Value = Vec<MemRegion>> {
        // Up to 10 MiB of address space, so 2 MiB blocks are both whole and
        // broken by region edges.
        prop::collection::vec((0u64..0xa0_0000, 0u64..0x50_0000), 1..5)
            .prop_map(|v| v.into_iter().map(|(s, l)| region(s, l)).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn matches_model(regions in regions(), ops in prop::collection::vec(op(), 1..300)) {
            let Some(layout) = Layout::for_regions(regions.iter().copied()) else {
                return Ok(());
            };
            let mut st = vec![0u64; layout.storage_words()];
            let mut fa = FrameAllocator::new(regions.iter().copied(), &mut st).unwrap();
            let mut m = Model::default();
            for r in &regions {
                if let Some((s, e)) = frame_bounds(*r) {
                    for f in (s..e).step_by(PAGE_SIZE_4K as usize) {
                        m.manage(f);
                    }
                }
            }
            for op in ops {
                let op = match op {
                    Op::FreeNear(n, size, block) if !m.handed.is_empty() => {
                        let a = *m.handed.keys().nth(n % m.handed.len()).unwrap();
                        Op::FreeAny(if block { a & !(PAGE_SIZE_2M - 1) } else { a }, size)
                    }
                    Op::FreeNear(..) => continue,
                    op => op,
                };
                match op {
                    Op::Alloc(size) => match fa.alloc(size) {
                        Ok(a) => {
                            prop_assert!(a.is_aligned(size.bytes()));
                            m.take(a.as_u64(), size);
                        }
                        Err(e) => {
                            prop_assert_eq!(e, FrameError::OutOfFrames { size });
                            match size {
                                FrameSize::Size4K => prop_assert_eq!(m.busy.len(), m.managed.len()),
                                FrameSize::Size2M => prop_assert_eq!(m.whole_free_blocks(), 0),
                            }
                        }
                    },
                    Op::Free(n) if !m.handed.is_empty() => {
                        let (&a, &size) = m.handed.iter().nth(n % m.handed.len()).unwrap();
                        prop_assert_eq!(fa.free(HostPhysAddr::new(a), size), Ok(()));
                        m.release(a, size);
                    }
                    Op::Free(_) => {}
                    Op::Split(n) => {
                        let huge: Vec<u64> = m.handed.iter()
                            .filter(|(_, s)| **s == FrameSize::Size2M).map(|(a, _)| *a).collect();
                        if !huge.is_empty() {
                            let a = huge[n % huge.len()];
                            prop_assert_eq!(fa.split_2m(HostPhysAddr::new(a)), Ok(()));
                            m.handed.remove(&a);
                            for i in 0..512 {
                                m.handed.insert(a + i * PAGE_SIZE_4K, FrameSize::Size4K);
                            }
                        }
                    }
                    Op::FreeNear(..) => unreachable!("turned into FreeAny above"),
                    Op::FreeAny(a, size) => {
                        let legit = m.handed.get(&a) == Some(&size);
                        let before = fa.stats();
                        let r = fa.free(HostPhysAddr::new(a), size);
                        prop_assert_eq!(r.is_ok(), legit, "{:?} {:#x} {:?}", r, a, size);
                        if legit {
                            m.release(a, size);
                        } else {
                            prop_assert_eq!(fa.stats(), before);
                        }
                    }
                    Op::Remove(a, l) => {
                        let lo = a & !(PAGE_SIZE_4K - 1);
                        let frames: Vec<u64> = (lo..a + l).step_by(PAGE_SIZE_4K as usize)
                            .filter(|f| m.managed.contains(f)).collect();
                        let in_use = frames.iter().any(|f| m.busy.contains(f));
                        let r = fa.remove_range(HostPhysAddr::new(a), l);
                        prop_assert_eq!(r.is_err(), in_use);
                        if !in_use {
                            for f in frames {
                                m.unmanage(f);
                            }
                        }
                    }
                }
                let s = fa.stats();
                prop_assert_eq!(s.managed_frames, m.managed.len() as u64);
                prop_assert_eq!(s.used_frames, m.busy.len() as u64);
                prop_assert_eq!(s.whole_free_blocks, m.whole_free_blocks());
            }
            // Give everything back: all managed frames are free again.
            let handed: Vec<(u64, FrameSize)> = m.handed.iter().map(|(a, s)| (*a, *s)).collect();
            for (a, size) in handed {
                prop_assert_eq!(fa.free(HostPhysAddr::new(a), size), Ok(()));
                m.release(a, size);
            }
            let s = fa.stats();
            prop_assert_eq!(s.free_frames, s.managed_frames);
            prop_assert_eq!(s.whole_free_blocks, m.whole_free_blocks());
            // And every one of them can be handed out exactly once more.
            let mut seen = BTreeSet::new();
            while let Ok(a) = fa.alloc_4k() {
                prop_assert!(m.managed.contains(&a.as_u64()));
                prop_assert!(seen.insert(a.as_u64()));
            }
            prop_assert_eq!(seen.len(), m.managed.len());
        }
    }
}
