//! Physical memory: the frame allocator over the bootloader's memory map, the
//! kernel heap, and typed access to physical memory.
//!
//! - [`init`] builds the [`hvcore::frame::FrameAllocator`] over the usable
//!   regions of the boot memory map. Its bitmaps live in usable memory that
//!   [`init`] takes for them (and removes from the pool). Frames below 1 MiB
//!   are kept out of the pool: the SMP trampoline ([`low_pages`]) and old
//!   firmware structures live there.
//! - [`alloc_frame`] / [`free_frame`]: frames for guests (2 MiB preferred),
//!   table pages and the heap, behind one interrupt-safe spin lock (see
//!   `hvcore::frame` for why a lock rather than a lock-free design).
//! - [`heap`]: the `#[global_allocator]`, growing in 2 MiB frames.
//! - [`stacks`]: kernel thread stacks, each with an unmapped guard below it.
//! - [`phys`]: host-physical address to pointer through the bootloader's
//!   mapping of all physical memory, and the table-memory implementation the
//!   aging core walks through.
//!
//! Neighbours: `smp` takes [`low_pages`] for its trampoline; guests and the
//! aging core take frames and table pages from here.

pub mod heap;
pub mod map;
pub mod phys;
pub mod stacks;

use crate::lock::IrqSpinLock;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::addr::{HostPhysAddr, PAGE_SIZE_4K};
use hvcore::frame::{FrameAllocator, Layout, MemRegion};

pub use hvcore::frame::{FrameError, FrameSize, FrameStats};

/// Everything below this stays out of the frame pool.
const LOW_MEMORY_END: u64 = 0x10_0000;
/// Pages of low memory the SMP trampoline needs (code + data, PML4, PDPT, PD).
pub const LOW_PAGES: u64 = 4;

static FRAMES: IrqSpinLock<Option<FrameAllocator<'static>>> = IrqSpinLock::new(None);
/// First of [`LOW_PAGES`] usable low pages, or 0 when there are none.
static LOW_PAGES_AT: AtomicU64 = AtomicU64::new(0);

/// The usable regions of the boot memory map, as the frame allocator sees them.
fn usable(regions: &MemoryRegions) -> impl Iterator<Item = MemRegion> + Clone + '_ {
    regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable && r.end > r.start)
        .map(|r| MemRegion {
            start: HostPhysAddr::new(r.start),
            len_bytes: r.end - r.start,
        })
}

/// Builds the frame allocator from the boot memory map and the mapping of
/// physical memory at `phys_offset`. Call once, on the boot CPU, before any
/// heap allocation.
pub fn init(regions: &MemoryRegions, phys_offset: u64) {
    phys::set_offset(phys_offset);
    let Some(layout) = Layout::for_regions(usable(regions)) else {
        panic!("mem: the boot memory map has no usable frame");
    };
    let storage_bytes = (layout.storage_words() as u64 * 8).next_multiple_of(PAGE_SIZE_4K);
    // The bitmaps go at the start of the first usable region above 1 MiB
    // that holds them.
    let storage_at = usable(regions)
        .filter_map(|r| {
            let start = r
                .start
                .as_u64()
                .max(LOW_MEMORY_END)
                .next_multiple_of(PAGE_SIZE_4K);
            let end = r.start.as_u64() + r.len_bytes;
            (end >= start && end - start >= storage_bytes).then_some(start)
        })
        .next()
        .unwrap_or_else(|| {
            panic!("mem: no usable region holds the {storage_bytes} bytes of frame bitmaps")
        });
    // SAFETY:
    // 1. `storage_at..+storage_bytes` is usable RAM by the memory map, so the
    //    bootloader put nothing there that we still use (kernel, stacks, page
    //    tables and boot info are in non-usable regions).
    // 2. The range is removed from the pool right below, before any frame is
    //    handed out, so nothing else ever gets a pointer into it.
    // 3. The mapping of physical memory is 8-byte aligned at page granularity.
    let storage: &'static mut [u64] = unsafe {
        core::slice::from_raw_parts_mut(
            phys::to_virt(HostPhysAddr::new(storage_at)).cast::<u64>(),
            layout.storage_words(),
        )
    };
    let mut fa = FrameAllocator::new(usable(regions), storage)
        .unwrap_or_else(|e| panic!("mem: frame allocator: {e}"));
    let keep_out = [(storage_at, storage_bytes), (0, LOW_MEMORY_END)];
    for (start, len) in keep_out {
        if let Err(e) = fa.remove_range(HostPhysAddr::new(start), len) {
            panic!("mem: cannot reserve {start:#x}+{len:#x}: {e}");
        }
    }
    // Low pages for the SMP trampoline: usable, below the EBDA, above the
    // real-mode interrupt table and BIOS data area.
    let low = usable(regions).find_map(|r| {
        let start = r.start.as_u64().max(0x1000).next_multiple_of(PAGE_SIZE_4K);
        let end = (r.start.as_u64() + r.len_bytes).min(0x9_F000);
        (end >= start && end - start >= LOW_PAGES * PAGE_SIZE_4K).then_some(start)
    });
    LOW_PAGES_AT.store(low.unwrap_or(0), Ordering::Release);
    let stats = fa.stats();
    *FRAMES.lock() = Some(fa);
    log::info!(
        "{} MiB in frames ({} whole 2 MiB blocks), bitmaps {} KiB at {storage_at:#x}, low pages {}",
        (stats.managed_frames * PAGE_SIZE_4K) >> 20,
        stats.whole_free_blocks,
        storage_bytes >> 10,
        match low {
            Some(_) => "found",
            None => "none (APs cannot start)",
        }
    );
}

/// The first of [`LOW_PAGES`] free pages below 1 MiB (outside the frame
/// pool), for the SMP trampoline.
pub fn low_pages() -> Option<HostPhysAddr> {
    match LOW_PAGES_AT.load(Ordering::Acquire) {
        0 => None,
        at => Some(HostPhysAddr::new(at)),
    }
}

/// Hands out a frame of `size`. Its contents are whatever was there.
pub fn alloc_frame(size: FrameSize) -> Result<HostPhysAddr, FrameError> {
    match FRAMES.lock().as_mut() {
        Some(fa) => fa.alloc(size),
        None => Err(FrameError::OutOfFrames { size }),
    }
}

/// Whole 2 MiB blocks guest memory may not break: the kernel heap claims
/// a whole block for any request over 4 KiB, and guests that took every
/// block would turn the next such request (the reclaimer's reports, its
/// indexes) into a heap panic.
pub const GUEST_RESERVE_BLOCKS: u64 = 2;

/// Free frames guest memory may not take on top of the reserved blocks:
/// the heap's 4 KiB growth (the reclaimer's store among its users).
pub const GUEST_RESERVE_FRAMES: u64 = 256;

/// Frames a guest may still take given the pool's free frames and whole
/// free blocks (4 KiB frames come from partly used blocks first).
fn guest_available(free: u64, whole_blocks: u64) -> u64 {
    let floor = GUEST_RESERVE_BLOCKS * 512 + GUEST_RESERVE_FRAMES;
    let in_partial_blocks = free - whole_blocks * 512;
    if in_partial_blocks == 0 && whole_blocks <= GUEST_RESERVE_BLOCKS {
        return 0;
    }
    free.saturating_sub(floor)
}

/// Frames guest memory may still take (see [`alloc_guest_frame`]).
pub fn guest_free_frames() -> u64 {
    let s = frame_stats();
    guest_available(s.free_frames, s.whole_free_blocks)
}

/// A frame of `size` for guest memory: as [`alloc_frame`], but refused when
/// it would eat into the heap's reserve ([`GUEST_RESERVE_BLOCKS`],
/// [`GUEST_RESERVE_FRAMES`]); the faulting VM then waits for reclaim
/// (`crate::reclaim::wait_for_memory`) instead of the heap panicking later.
pub fn alloc_guest_frame(size: FrameSize) -> Result<HostPhysAddr, FrameError> {
    let mut guard = FRAMES.lock();
    let Some(fa) = guard.as_mut() else {
        return Err(FrameError::OutOfFrames { size });
    };
    let s = fa.stats();
    let ok = match size {
        FrameSize::Size4K => guest_available(s.free_frames, s.whole_free_blocks) > 0,
        FrameSize::Size2M => {
            s.whole_free_blocks > GUEST_RESERVE_BLOCKS
                && guest_available(s.free_frames, s.whole_free_blocks) >= 512
        }
    };
    if ok {
        fa.alloc(size)
    } else {
        Err(FrameError::OutOfFrames { size })
    }
}

/// Hands out a 2 MiB frame if one is whole, else a 4 KiB frame.
pub fn alloc_frame_prefer_2m() -> Result<(HostPhysAddr, FrameSize), FrameError> {
    let mut guard = FRAMES.lock();
    let fa = guard.as_mut().ok_or(FrameError::OutOfFrames {
        size: FrameSize::Size4K,
    })?;
    match fa.alloc_2m() {
        Ok(a) => Ok((a, FrameSize::Size2M)),
        Err(_) => fa.alloc_4k().map(|a| (a, FrameSize::Size4K)),
    }
}

/// Takes back a frame handed out by [`alloc_frame`]. A double free or a
/// foreign frame is refused with an error and changes nothing.
pub fn free_frame(addr: HostPhysAddr, size: FrameSize) -> Result<(), FrameError> {
    match FRAMES.lock().as_mut() {
        Some(fa) => fa.free(addr, size),
        None => Err(FrameError::NotManaged(addr)),
    }
}

/// Turns a handed-out 2 MiB frame into 512 handed-out 4 KiB frames.
pub fn split_frame_2m(addr: HostPhysAddr) -> Result<(), FrameError> {
    match FRAMES.lock().as_mut() {
        Some(fa) => fa.split_2m(addr),
        None => Err(FrameError::NotManaged(addr)),
    }
}

/// Free/used figures of the frame pool (all zero before [`init`]).
pub fn frame_stats() -> FrameStats {
    FRAMES.lock().as_ref().map_or(
        FrameStats {
            managed_frames: 0,
            free_frames: 0,
            used_frames: 0,
            whole_free_blocks: 0,
        },
        FrameAllocator::stats,
    )
}
