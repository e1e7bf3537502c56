//! A one-page window: maps a chosen frame at a fixed kernel virtual address,
//! so code can remap it and exercise the TLB (the shootdown test) or reach
//! a frame through an address of its own.
//!
//! The window lives in the highest upper-half PML4 slot the bootloader left
//! empty; its page-table pages come from the frame allocator and stay (a few
//! pages, reused by every window).

use super::{FrameSize, alloc_frame, phys};
use hvcore::addr::HostPhysAddr;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Page-table pages for the kernel's tables, from the frame allocator
/// (also used by `super::stacks`).
pub(super) struct Frames;

// SAFETY: every frame returned is a fresh 4 KiB frame from the frame
// allocator, owned by the page tables from now on.
unsafe impl FrameAllocator<Size4KiB> for Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let a = alloc_frame(FrameSize::Size4K).ok()?;
        PhysFrame::from_start_address(PhysAddr::new(a.as_u64())).ok()
    }
}

/// Runs `f` on the active kernel page tables (also used by `super::stacks`,
/// which serialises its own changes).
pub(super) fn with_tables<R>(f: impl FnOnce(&mut OffsetPageTable<'static>) -> R) -> R {
    let l4_phys = HostPhysAddr::new(crate::hw::read_cr3() & 0x000F_FFFF_FFFF_F000);
    // SAFETY: CR3 holds the active PML4, reached through the mapping of
    // physical memory; windows are created and changed by one caller at a
    // time (the `&self`/`&mut` use of `ScratchPage` is the test's), and the
    // stack pool changes only its own PML4 slot, under its own lock (two
    // users never write one table page).
    let l4: &'static mut PageTable = unsafe { &mut *phys::ptr::<PageTable>(l4_phys) };
    // SAFETY: all physical memory is mapped at `phys::offset()`.
    let mut tables = unsafe { OffsetPageTable::new(l4, VirtAddr::new(phys::offset())) };
    f(&mut tables)
}

/// A mapped one-page window.
#[derive(Debug)]
pub struct ScratchPage {
    page: Page<Size4KiB>,
}

impl ScratchPage {
    /// Maps `frame` (read/write, no execute) at the window's address.
    ///
    /// # Panics
    /// If no upper-half PML4 slot is free or page tables cannot be allocated.
    pub fn new(frame: HostPhysAddr) -> Self {
        let slot = with_tables(|t| {
            (256..511)
                .rev()
                .find(|&i| t.level_4_table()[i].is_unused())
                .expect("no free PML4 slot for the scratch window")
        });
        let vaddr = 0xFFFF_0000_0000_0000u64 | ((slot as u64) << 39);
        let this = Self {
            page: Page::containing_address(VirtAddr::new(vaddr)),
        };
        this.map(frame);
        this
    }

    fn map(&self, frame: HostPhysAddr) {
        let frame = PhysFrame::containing_address(PhysAddr::new(frame.as_u64()));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        with_tables(|t| {
            // SAFETY: the window's page is in a PML4 slot nothing else uses,
            // so mapping it aliases no Rust object; the frame is the caller's.
            let flush = unsafe { t.map_to(self.page, frame, flags, &mut Frames) }
                .expect("map the scratch window");
            flush.flush();
        });
    }

    /// The window's virtual address.
    pub fn vaddr(&self) -> u64 {
        self.page.start_address().as_u64()
    }

    /// Points the window at `frame` *without* flushing any TLB: the caller
    /// flushes (this CPU or all of them, e.g. `smp::flush_page_all`).
    pub fn remap(&self, frame: HostPhysAddr) {
        with_tables(|t| {
            if let Ok((_, flush)) = t.unmap(self.page) {
                flush.ignore();
            }
        });
        let frame = PhysFrame::containing_address(PhysAddr::new(frame.as_u64()));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        with_tables(|t| {
            // SAFETY: as in `map`.
            let flush = unsafe { t.map_to(self.page, frame, flags, &mut Frames) }
                .expect("remap the scratch window");
            flush.ignore();
        });
    }

    /// Reads the first word of the window.
    ///
    /// # Safety
    /// The mapped frame is memory the caller owns.
    pub unsafe fn read(&self) -> u64 {
        // SAFETY: the window is mapped to a frame the caller owns.
        unsafe { (self.vaddr() as *const u64).read_volatile() }
    }

    /// Unmaps the window on this CPU and flushes this CPU's entry (other
    /// CPUs must be flushed by the caller if they used it).
    pub fn unmap(self) {
        with_tables(|t| {
            if let Ok((_, flush)) = t.unmap(self.page) {
                flush.flush();
            }
        });
    }
}
