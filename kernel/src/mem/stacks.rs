//! Kernel thread stacks with guard pages: every stack lies at the top of
//! its own slot of a virtual region, and the rest of the slot below it is
//! never mapped. A thread that runs off the bottom of its stack touches the
//! unmapped guard and takes a page fault (then a double fault, as the CPU
//! cannot push the #PF frame on the same stack), instead of writing
//! whatever lies below; the exception report asks [`guard_hit`] and names
//! the thread (`crate::interrupts::exceptions`).
//!
//! Layout: the region is one upper-half PML4 slot the boot loader left
//! empty, taken on the first [`ThreadStack::new`]. Slot `i` covers
//! `base + i * SLOT_BYTES ..+ SLOT_BYTES`: the lowest `SLOT_BYTES -
//! STACK_BYTES` bytes are the guard (so a frame that jumps far below the
//! stack still lands in it), the top [`STACK_BYTES`] the stack, mapped
//! read/write, no-execute, 4 KiB frame by frame.
//!
//! Slots are pooled: a thread's end gives its slot back with its frames
//! still mapped, and the next thread reuses it (zeroed). Nothing is ever
//! unmapped, so no CPU can hold a stale translation and no TLB shootdown
//! is needed. [`frames_held`] counts the frames the pool keeps, for memory
//! accounting.
//!
//! Linux does the same (`CONFIG_VMAP_STACK`: stacks in vmalloc space with
//! guard pages; `handle_stack_overflow` reports from the #DF handler).
//!
//! Locks: [`MAP_LOCK`] only while a slot is first mapped; claiming and
//! giving back a slot and [`guard_hit`] are lock-free (the latter runs in
//! exception handlers).

use super::{FrameSize, alloc_frame, map};
use crate::lock::IrqSpinLock;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use x86_64::VirtAddr;
use x86_64::structures::paging::{Mapper, Page, PageTableFlags, PhysFrame, Size4KiB};

/// Bytes of one thread stack (mapped).
pub const STACK_BYTES: usize = 256 * 1024;
/// Bytes of one slot: the stack and the guard below it.
pub const SLOT_BYTES: u64 = 512 * 1024;
/// Bytes of guard below each stack.
pub const GUARD_BYTES: u64 = SLOT_BYTES - STACK_BYTES as u64;
/// Threads alive at once, at most (the region spans 512 MiB of the 512 GiB
/// PML4 slot).
pub const MAX_STACKS: usize = 1024;

const WORDS: usize = MAX_STACKS / 64;

/// Start of the region (0: not taken yet).
static BASE: AtomicU64 = AtomicU64::new(0);
/// Slots held by a live thread.
static IN_USE: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];
/// Slots whose stack is mapped.
static MAPPED: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];
/// Each slot's thread name (pointer and length of a `&'static str`; null
/// when the slot is free), for the exception report.
static NAME_PTR: [AtomicPtr<u8>; MAX_STACKS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_STACKS];
static NAME_LEN: [AtomicUsize; MAX_STACKS] = [const { AtomicUsize::new(0) }; MAX_STACKS];
/// Frames mapped for stacks so far (never given back).
static FRAMES_HELD: AtomicU64 = AtomicU64::new(0);
/// Serialises changes to the kernel's page tables made here.
static MAP_LOCK: IrqSpinLock<()> = IrqSpinLock::new(());

/// Frames the stack pool holds (mapped once, kept for the next thread).
pub fn frames_held() -> u64 {
    FRAMES_HELD.load(Ordering::Relaxed)
}

/// The region's base, taking a free upper-half PML4 slot on first use.
fn region_base() -> Result<u64, &'static str> {
    let base = BASE.load(Ordering::Acquire);
    if base != 0 {
        return Ok(base);
    }
    let _held = MAP_LOCK.lock();
    let base = BASE.load(Ordering::Acquire);
    if base != 0 {
        return Ok(base);
    }
    // The lowest free one: `map::ScratchPage` takes the highest.
    let slot = map::with_tables(|t| (256..511).find(|&i| t.level_4_table()[i].is_unused()))
        .ok_or("no free upper-half PML4 slot for thread stacks")?;
    let base = 0xFFFF_0000_0000_0000u64 | ((slot as u64) << 39);
    BASE.store(base, Ordering::Release);
    // The exception report sits below this layer: tell it where guards are.
    crate::interrupts::exceptions::set_guard_lookup(guard_hit, STACK_BYTES);
    Ok(base)
}

/// Maps the stack of slot `i` (its top [`STACK_BYTES`]) with fresh frames.
fn map_slot(base: u64, i: usize) -> Result<(), &'static str> {
    let _held = MAP_LOCK.lock();
    let bottom = base + i as u64 * SLOT_BYTES + GUARD_BYTES;
    for off in (0..STACK_BYTES as u64).step_by(4096) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(bottom + off));
        if map::with_tables(|t| t.translate_page(page).is_ok()) {
            continue; // mapped by an earlier try that ran out of frames
        }
        let frame =
            alloc_frame(FrameSize::Size4K).map_err(|_| "no free frame for a thread stack")?;
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(frame.as_u64()));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        map::with_tables(|t| {
            // SAFETY: the page lies in the stack region, which nothing but
            // this module maps, in a slot claimed by the caller and not
            // mapped before; the frame was just handed out.
            unsafe { t.map_to(page, frame, flags, &mut map::Frames) }
                .map(|flush| flush.flush())
                .map_err(|_| "cannot map a thread stack page")
        })?;
        FRAMES_HELD.fetch_add(1, Ordering::Relaxed);
    }
    // After an error above the slot stays half mapped and not marked: the
    // next claim of it maps the rest.
    MAPPED[i / 64].fetch_or(1 << (i % 64), Ordering::AcqRel);
    Ok(())
}

/// One thread's stack; its slot goes back to the pool on drop.
#[derive(Debug)]
pub struct ThreadStack {
    slot: usize,
    bottom: u64,
}

impl ThreadStack {
    /// A zeroed stack for the thread `name`.
    ///
    /// # Errors
    /// When every slot is taken, or no frame or page-table page is left.
    pub fn new(name: &'static str) -> Result<Self, &'static str> {
        let base = region_base()?;
        let slot = (0..MAX_STACKS)
            .find(|&i| {
                let bit = 1u64 << (i % 64);
                IN_USE[i / 64].fetch_or(bit, Ordering::AcqRel) & bit == 0
            })
            .ok_or("every thread stack slot is in use")?;
        let stack = ThreadStack {
            slot,
            bottom: base + slot as u64 * SLOT_BYTES + GUARD_BYTES,
        };
        if MAPPED[slot / 64].load(Ordering::Acquire) & (1 << (slot % 64)) == 0 {
            map_slot(base, slot)?; // on error, `stack`'s drop frees the slot
        }
        // SAFETY: the slot's stack is mapped read/write and this value owns
        // it (claimed above); no thread runs on it.
        unsafe { core::ptr::write_bytes(stack.bottom as *mut u8, 0, STACK_BYTES) };
        NAME_LEN[slot].store(name.len(), Ordering::Relaxed);
        NAME_PTR[slot].store(name.as_ptr().cast_mut(), Ordering::Release);
        Ok(stack)
    }

    /// The lowest address of the stack (the guard ends here).
    pub fn bottom(&self) -> u64 {
        self.bottom
    }
}

impl core::ops::Deref for ThreadStack {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `bottom..+STACK_BYTES` is mapped for as long as `self`
        // lives (slots are never unmapped) and belongs to this stack.
        unsafe { core::slice::from_raw_parts(self.bottom as *const u8, STACK_BYTES) }
    }
}

impl core::ops::DerefMut for ThreadStack {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the slice unique.
        unsafe { core::slice::from_raw_parts_mut(self.bottom as *mut u8, STACK_BYTES) }
    }
}

impl Drop for ThreadStack {
    fn drop(&mut self) {
        NAME_PTR[self.slot].store(core::ptr::null_mut(), Ordering::Release);
        IN_USE[self.slot / 64].fetch_and(!(1 << (self.slot % 64)), Ordering::AcqRel);
    }
}

/// A fault address in the guard below a thread stack: the thread's name
/// (or `None` for a slot no thread holds). Lock-free, allocation-free: for
/// exception handlers.
pub fn guard_hit(addr: u64) -> Option<Option<&'static str>> {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 || addr < base || addr - base >= MAX_STACKS as u64 * SLOT_BYTES {
        return None;
    }
    let slot = ((addr - base) / SLOT_BYTES) as usize;
    if (addr - base) % SLOT_BYTES >= GUARD_BYTES {
        return None; // inside the stack itself
    }
    let ptr = NAME_PTR[slot].load(Ordering::Acquire);
    if ptr.is_null() {
        return Some(None);
    }
    let len = NAME_LEN[slot].load(Ordering::Acquire);
    if NAME_PTR[slot].load(Ordering::Acquire) != ptr {
        return Some(None); // the slot changed hands meanwhile
    }
    // SAFETY: `ptr` and `len` were stored together from a `&'static str`
    // (the length first, the pointer with Release) and the pointer did not
    // change around the read of the length.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
    Some(core::str::from_utf8(bytes).ok())
}
