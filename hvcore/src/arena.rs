//! A heap-backed pool of table pages for host tests and benchmarks
//! (feature `std`, never in the kernel).
//!
//! Pages get fake host-physical addresses starting at [`ARENA_BASE`], in
//! allocation order, so a tree built by the [`crate::table::Mapper`] is laid
//! out in memory exactly as the mapper allocates it, as it would be from a
//! frame allocator handing out consecutive frames. Freed pages are poisoned
//! and kept out of reuse for [`HostArena::set_poison_freed`]-checking tests.

extern crate std;

use crate::addr::HostPhysAddr;
use crate::sync::{AtomicU64, Ordering};
use crate::table::{Table, TableAlloc, TableMemory};
use std::boxed::Box;
use std::sync::Mutex;
use std::vec::Vec;

/// Host-physical address of the arena's first page.
pub const ARENA_BASE: u64 = 0x10_0000_0000;
/// Value written into every entry of a freed page.
pub const POISON: u64 = 0xdead_0000_0000_0fff;

/// A fixed-capacity pool of [`Table`] pages.
#[derive(Debug)]
pub struct HostArena {
    pages: Box<[Table]>,
    free: Mutex<Vec<u32>>,
    next: AtomicU64,
    freed_total: AtomicU64,
}

impl HostArena {
    /// A pool of `capacity` pages (allocated up front, zero-filled lazily by
    /// the host OS).
    pub fn new(capacity: usize) -> Self {
        let mut pages = Vec::with_capacity(capacity);
        pages.resize_with(capacity, Table::new);
        HostArena {
            pages: pages.into_boxed_slice(),
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            freed_total: AtomicU64::new(0),
        }
    }

    /// Pages handed out and not freed.
    pub fn in_use(&self) -> u64 {
        self.next.load(Ordering::Relaxed) - self.free.lock().map(|f| f.len() as u64).unwrap_or(0)
    }

    /// Pages ever freed.
    pub fn freed_total(&self) -> u64 {
        self.freed_total.load(Ordering::Relaxed)
    }

    fn index(&self, hpa: HostPhysAddr) -> Option<usize> {
        let off = hpa.as_u64().checked_sub(ARENA_BASE)?;
        if !off.is_multiple_of(4096) {
            return None;
        }
        let i = usize::try_from(off / 4096).ok()?;
        (i < self.pages.len()).then_some(i)
    }
}

impl TableMemory for HostArena {
    #[inline(always)]
    fn table(&self, table: HostPhysAddr) -> Option<&[AtomicU64]> {
        let i = self.index(table)?;
        Some(&self.pages[i].entries[..])
    }
}

impl TableAlloc for &HostArena {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        let i = match self.free.lock().ok()?.pop() {
            Some(i) => u64::from(i),
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                if i >= self.pages.len() as u64 {
                    self.next.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
                i
            }
        };
        Some(HostPhysAddr::new(ARENA_BASE + i * 4096))
    }

    fn free_table(&mut self, table: HostPhysAddr) {
        let Some(i) = self.index(table) else {
            return;
        };
        for e in &self.pages[i].entries {
            e.store(POISON, Ordering::Relaxed);
        }
        self.freed_total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.free.lock() {
            f.push(i as u32);
        }
    }
}
