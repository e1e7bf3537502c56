//! The kernel heap: `talc` over frames from the frame allocator.
//!
//! Why talc: it is a maintained `no_std` allocator (dlmalloc-style with
//! binning, near-constant time in practice) whose `Source` hook lets the heap
//! claim any number of disjoint memory spans when it runs out. That is what a
//! heap growing from physical frames needs: each frame (4 KiB for a small
//! request, a whole 2 MiB block for a larger one) becomes a new span through
//! the mapping of physical memory, with no reserved virtual range to manage.
//! `linked_list_allocator` only grows a heap contiguously; a buddy allocator
//! would waste up to half of each odd-sized block.
//!
//! Locking: talc sits behind an [`IrqSpinLock`], so an allocation is never
//! preempted half-way (a preempted holder would make every other thread on
//! its CPU spin). Interrupt handlers must still not allocate: a handler that
//! interrupts a thread allocating on the same CPU cannot happen (interrupts
//! are off inside the lock), but keeping handlers allocation-free keeps the
//! tick short.
//!
//! Failure: an allocation the heap cannot serve panics with the request's
//! size and alignment, the heap's size and the free frames, instead of
//! returning null into code that cannot handle it. Requests larger than a
//! 2 MiB frame cannot be served (spans are not contiguous); big buffers such
//! as guest memory come from frames directly.

use super::{FrameSize, alloc_frame, phys};
use crate::lock::IrqSpinLock;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::addr::{PAGE_SIZE_2M, PAGE_SIZE_4K};
use talc::DefaultBinning;
use talc::base::Talc;
use talc::base::binning::Binning;
use talc::source::Source;

/// Bytes of frames the heap has claimed.
static HEAP_BYTES: AtomicU64 = AtomicU64::new(0);

/// Grows the heap by one frame per call.
#[derive(Debug)]
pub struct FrameSource;

// SAFETY: `acquire` touches only the frame allocator (its own lock, never the
// heap) and the `talc` it is given; it never allocates.
unsafe impl Source for FrameSource {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        // Room for the request at its alignment plus talc's metadata (its bin
        // table on the first claim, tags on later ones).
        let need = (layout.size() + layout.align() + talc::min_first_heap_size::<B>()) as u64;
        if need > PAGE_SIZE_2M {
            return Err(());
        }
        // A 4 KiB frame (from a partly used block first) for a small
        // request; a whole 2 MiB block for a larger one, or for a small one
        // when no single frame is left. Small requests leave whole blocks
        // alone: under memory pressure they are the only room for large
        // requests (`super::GUEST_RESERVE_BLOCKS` keeps guests off them).
        let small = if need <= PAGE_SIZE_4K {
            alloc_frame(FrameSize::Size4K).ok()
        } else {
            None
        };
        let (frame, bytes) = match small {
            Some(f) => (f, PAGE_SIZE_4K),
            None => match alloc_frame(FrameSize::Size2M) {
                Ok(f) => (f, PAGE_SIZE_2M),
                Err(_) => return Err(()),
            },
        };
        // SAFETY: the frame was just handed out to the heap and nothing else
        // refers to it; the mapping of physical memory covers it.
        let claimed = unsafe { talc.claim(phys::to_virt(frame), bytes as usize) };
        match claimed {
            Some(_) => {
                HEAP_BYTES.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            None => Err(()),
        }
    }
}

/// The kernel's global allocator.
#[derive(Debug)]
pub struct KernelHeap {
    talc: IrqSpinLock<Talc<FrameSource, DefaultBinning>>,
}

impl KernelHeap {
    /// An empty heap; it claims frames on first use.
    pub const fn new() -> Self {
        Self {
            talc: IrqSpinLock::new(Talc::new(FrameSource)),
        }
    }
}

impl Default for KernelHeap {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: talc upholds the GlobalAlloc contract for the spans it was given;
// the lock serialises every access to it.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: GlobalAlloc callers never pass a zero-sized layout.
        let ptr = unsafe { self.talc.lock().allocate(layout) };
        match ptr {
            Some(p) => p.as_ptr(),
            None => {
                // The lock is released: the panic path may print freely.
                let frames = super::frame_stats();
                panic!(
                    "kernel heap: cannot allocate {} bytes (align {}): heap holds {} KiB, {} free frames ({} whole 2 MiB blocks); requests over 2 MiB are not supported",
                    layout.size(),
                    layout.align(),
                    HEAP_BYTES.load(Ordering::Relaxed) >> 10,
                    frames.free_frames,
                    frames.whole_free_blocks
                )
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a pointer this allocator returned for
        // `layout`.
        unsafe { self.talc.lock().deallocate(ptr, layout) }
    }
}

/// Bytes of frames the heap has claimed so far.
pub fn heap_bytes() -> u64 {
    HEAP_BYTES.load(Ordering::Relaxed)
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap::new();
