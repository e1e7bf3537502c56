//! Guest-physical memory of one VM: host frames mapped through the
//! second-level tables (NPT or EPT, built with `hvcore::table`), filled in
//! lazily: a page of RAM is backed on the first nested page fault that
//! touches it (2 MiB at a time where the VM allows huge pages and a whole
//! 2 MiB frame is free, else 4 KiB).
//!
//! Key type: [`GuestMemory`]. It owns every frame it maps and every table
//! page (through the table manager); [`GuestMemory::check_isolation`]
//! proves from the tables themselves that no guest-physical address reaches
//! a frame the VM does not own.
//!
//! Locks: the writer (table structure and the frame list) is one spin lock
//! per VM, taken by the vCPU fault path and by loaders; walks (translation,
//! A/D inspection, the aging pass) are lockless (`hvcore::table` docs).

use crate::mem::{self, phys};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use hvcore::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};
use hvcore::frame::FrameSize;
use hvcore::guest_walk::GuestPhysRead;
use hvcore::pte::{EntryFormat, Level, Perms};
use hvcore::sync::AtomicU64;
use hvcore::table::{MapError, Mapper, PageSize, TableAlloc, TableMemory, Tables};

/// Table pages reached through the kernel's mapping of physical memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhysTables;

impl TableMemory for PhysTables {
    fn table(&self, table: HostPhysAddr) -> Option<&[AtomicU64]> {
        if !phys::is_page_aligned(table) {
            return None;
        }
        // SAFETY: the table manager only asks for pages it allocated from
        // the frame allocator through `FrameTables` (or read from entries it
        // wrote), which stay allocated while reachable (epoch-retired, see
        // `hvcore::table`); the mapping of physical memory covers them and
        // 512 atomics fill exactly one aligned 4 KiB page. All accesses are
        // atomic, so concurrent CPU A/D updates are fine.
        Some(unsafe { core::slice::from_raw_parts(phys::ptr::<AtomicU64>(table), 512) })
    }
}

/// Table pages from the kernel frame allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameTables;

impl TableAlloc for FrameTables {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        mem::alloc_frame(FrameSize::Size4K).ok()
    }
    fn free_table(&mut self, table: HostPhysAddr) {
        if let Err(e) = mem::free_frame(table, FrameSize::Size4K) {
            log::error!("vm: table page {table:?} not freed: {e}");
        }
    }
}

/// A frame mapped into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFrame {
    /// Host frame.
    pub hpa: HostPhysAddr,
    /// Its size.
    pub size: FrameSize,
}

impl GuestFrame {
    fn bytes(self) -> u64 {
        match self.size {
            FrameSize::Size4K => PAGE_SIZE_4K,
            FrameSize::Size2M => PAGE_SIZE_2M,
        }
    }
}

#[derive(Debug)]
struct Writer {
    mapper: Mapper<FrameTables>,
    /// Guest-physical start -> frame, for every mapped frame.
    frames: BTreeMap<u64, GuestFrame>,
}

/// What a nested page fault on this memory came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A frame was mapped; the guest may retry.
    Mapped(FrameSize),
    /// Another path mapped the page meanwhile; retry.
    AlreadyMapped,
    /// The address is not guest RAM.
    OutsideRam,
    /// No frame was free.
    OutOfMemory,
}

/// The reclaimer of one VM's memory as the fault path reaches it: a handle
/// the memory holds, installed by the memory-management layer
/// (`crate::reclaim`) when the VM is handed to it. Memory without one was
/// never reclaimed from.
pub trait PageReclaimer<F: EntryFormat>: Send + Sync + core::fmt::Debug {
    /// Called by the nested page fault path with the VM's writer lock held
    /// (`mapper`, `frames`), before it backs the page at `gpa`: brings back
    /// a page the reclaimer took. `None`: not a reclaimed page, the normal
    /// path goes on.
    fn fault_in(
        &self,
        tables: &Tables<F, PhysTables>,
        mapper: &mut Mapper<FrameTables>,
        frames: &mut BTreeMap<u64, GuestFrame>,
        gpa: GuestPhysAddr,
    ) -> Option<FaultOutcome>;
}

/// The overcommit wait: a fault of VM `name` at `gpa` found no free frame;
/// returns true once the fault may be retried, false when the VM should
/// stop (`give_up()` says its stop was requested, or nothing can free
/// memory).
pub type MemoryWait = fn(name: &str, gpa: GuestPhysAddr, give_up: &dyn Fn() -> bool) -> bool;

static MEMORY_WAIT: spin::Once<MemoryWait> = spin::Once::new();

/// Installs the overcommit wait (the memory-management layer does, once it
/// manages a VM); until then a fault that finds no frame stops its VM.
pub fn set_memory_wait(wait: MemoryWait) {
    MEMORY_WAIT.call_once(|| wait);
}

/// Waits for memory as [`MemoryWait`] says; false when no wait is
/// installed (nothing reclaims, so nothing would ever free memory).
pub fn wait_for_memory(name: &str, gpa: GuestPhysAddr, give_up: &dyn Fn() -> bool) -> bool {
    MEMORY_WAIT
        .get()
        .is_some_and(|wait| wait(name, gpa, give_up))
}

/// Adds the time from its start to its drop (with the writer lock still
/// held) to `vm::timing::FAULT_HELD`.
struct FaultHeld(u64);

impl Drop for FaultHeld {
    fn drop(&mut self) {
        crate::vm::timing::FAULT_HELD.since(self.0);
    }
}

/// Summary of an isolation check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsolationReport {
    /// Present leaves examined.
    pub leaves: u64,
    /// 4 KiB pages they map.
    pub pages: u64,
    /// Frames the VM owns.
    pub frames: u64,
}

/// One VM's guest-physical memory.
#[derive(Debug)]
pub struct GuestMemory<F: EntryFormat> {
    ram_bytes: u64,
    huge_pages: bool,
    tables: Tables<F, PhysTables>,
    writer: spin::Mutex<Writer>,
    /// Faults waiting for the writer lock (the reclaimer lets them in
    /// between its batches).
    fault_waiters: core::sync::atomic::AtomicU32,
    /// The reclaimer, once the VM is managed.
    reclaimer: spin::Once<Arc<dyn PageReclaimer<F>>>,
}

impl<F: EntryFormat> GuestMemory<F> {
    /// Empty memory of `ram_bytes` (a multiple of 4 KiB); nothing is backed
    /// until touched.
    pub fn new(ram_bytes: u64, huge_pages: bool) -> Result<Self, MapError> {
        if !ram_bytes.is_multiple_of(PAGE_SIZE_4K) || ram_bytes == 0 {
            return Err(MapError::Unaligned);
        }
        let tables = Tables::new(PhysTables, &mut FrameTables)?;
        let mapper = Mapper::new(&tables, FrameTables);
        Ok(Self {
            ram_bytes,
            huge_pages,
            tables,
            writer: spin::Mutex::new(Writer {
                mapper,
                frames: BTreeMap::new(),
            }),
            fault_waiters: core::sync::atomic::AtomicU32::new(0),
            reclaimer: spin::Once::new(),
        })
    }

    /// Guest RAM is `[0, ram_bytes)`.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// The tables (root for the VMCB/VMCS, lockless walks for aging).
    pub fn tables(&self) -> &Tables<F, PhysTables> {
        &self.tables
    }

    /// Installs the reclaimer the fault path asks about reclaimed pages;
    /// false (and `reclaimer` dropped) when one is installed already.
    pub fn set_reclaimer(&self, reclaimer: Arc<dyn PageReclaimer<F>>) -> bool {
        let mut installed = false;
        self.reclaimer.call_once(|| {
            installed = true;
            reclaimer
        });
        installed
    }

    /// Runs `f` with the table writer and the frame map locked (the
    /// reclaimer's entry point; keep it short).
    pub fn with_writer<R>(
        &self,
        f: impl FnOnce(&mut Mapper<FrameTables>, &mut BTreeMap<u64, GuestFrame>) -> R,
    ) -> R {
        let mut w = self.writer.lock();
        let w = &mut *w;
        f(&mut w.mapper, &mut w.frames)
    }

    /// Whether a nested page fault waits for the writer lock now.
    pub fn faults_waiting(&self) -> bool {
        self.fault_waiters
            .load(core::sync::atomic::Ordering::Acquire)
            != 0
    }

    /// Frames currently mapped, and the bytes they hold.
    pub fn resident(&self) -> (u64, u64) {
        let w = self.writer.lock();
        (
            w.frames.len() as u64,
            w.frames.values().map(|f| f.bytes()).sum(),
        )
    }

    /// The writer lock, counted in [`Self::faults_waiting`] while it is
    /// awaited (the reclaimer lets such waiters in between its batches).
    /// Interrupts must be on: the reclaimer holds the lock across a
    /// shootdown that waits for every CPU to take an interrupt.
    fn lock_writer(&self) -> spin::MutexGuard<'_, Writer> {
        self.fault_waiters
            .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
        let w = self.writer.lock();
        self.fault_waiters
            .fetch_sub(1, core::sync::atomic::Ordering::AcqRel);
        w
    }

    /// Backs the page holding `gpa` if it is RAM and not backed yet.
    pub fn fault_in(&self, gpa: GuestPhysAddr) -> FaultOutcome {
        if gpa.as_u64() >= self.ram_bytes {
            return FaultOutcome::OutsideRam;
        }
        let t0 = crate::time::now_ns();
        let mut w = self.lock_writer();
        let _held = FaultHeld(crate::vm::timing::FAULT_WRITER_WAIT.since(t0));
        self.fault_in_locked(&mut w, gpa)
    }

    /// [`Self::fault_in`] with the writer lock held.
    fn fault_in_locked(&self, w: &mut Writer, gpa: GuestPhysAddr) -> FaultOutcome {
        if self.tables.translate(gpa).is_some() {
            return FaultOutcome::AlreadyMapped;
        }
        // A page the reclaimer took comes back with its contents.
        if let Some(outcome) = self
            .reclaimer
            .get()
            .and_then(|r| r.fault_in(&self.tables, &mut w.mapper, &mut w.frames, gpa))
        {
            return outcome;
        }
        let big = gpa.align_down(PAGE_SIZE_2M);
        if self.huge_pages
            && big.as_u64() + PAGE_SIZE_2M <= self.ram_bytes
            && let Ok(frame) = mem::alloc_guest_frame(FrameSize::Size2M)
        {
            match self.map_zeroed(w, big, frame, FrameSize::Size2M) {
                Ok(()) => return FaultOutcome::Mapped(FrameSize::Size2M),
                // Part of the 2 MiB range is mapped in 4 KiB pages: fall
                // back to one small page.
                Err(_) => {
                    let _ = mem::free_frame(frame, FrameSize::Size2M);
                }
            }
        }
        let t_alloc = crate::time::now_ns();
        let frame = mem::alloc_guest_frame(FrameSize::Size4K);
        crate::vm::timing::FRAME_ALLOC.since(t_alloc);
        let Ok(frame) = frame else {
            return FaultOutcome::OutOfMemory;
        };
        match self.map_zeroed(w, gpa.align_down(PAGE_SIZE_4K), frame, FrameSize::Size4K) {
            Ok(()) => FaultOutcome::Mapped(FrameSize::Size4K),
            Err(MapError::OutOfMemory) => {
                let _ = mem::free_frame(frame, FrameSize::Size4K);
                FaultOutcome::OutOfMemory
            }
            Err(_) => {
                let _ = mem::free_frame(frame, FrameSize::Size4K);
                FaultOutcome::AlreadyMapped
            }
        }
    }

    /// Runs `f` on the host address backing `gpa` with the writer lock
    /// held, so the reclaimer can neither unmap the page nor free its frame
    /// until `f` returns: a lockless translate-then-copy could read a page
    /// the reclaimer unmapped between two looks at the tables (zeros) or a
    /// frame it freed and the allocator handed out again (another page's
    /// bytes). A reclaimed page is brought back first; an untouched page
    /// is backed when `back` (a write), else `f` gets `None` (it reads as
    /// zeros). Interrupts must be on (see [`Self::lock_writer`]).
    fn with_page<R>(
        &self,
        gpa: GuestPhysAddr,
        back: bool,
        f: impl FnOnce(Option<HostPhysAddr>) -> R,
    ) -> Result<R, AccessError> {
        if gpa.as_u64() >= self.ram_bytes {
            return Err(AccessError::OutsideRam);
        }
        let mut w = self.lock_writer();
        if self.tables.translate(gpa).is_none() {
            let outcome = if back {
                Some(self.fault_in_locked(&mut w, gpa))
            } else {
                let w = &mut *w;
                self.reclaimer
                    .get()
                    .and_then(|r| r.fault_in(&self.tables, &mut w.mapper, &mut w.frames, gpa))
            };
            match outcome {
                None | Some(FaultOutcome::Mapped(_) | FaultOutcome::AlreadyMapped) => {}
                Some(FaultOutcome::OutsideRam) => return Err(AccessError::OutsideRam),
                Some(FaultOutcome::OutOfMemory) => return Err(AccessError::NoFrame { gpa }),
            }
        }
        Ok(f(self.tables.translate(gpa).map(|t| t.hpa)))
    }

    /// Reads `buf.len()` bytes at `gpa` (the range stays inside one 4 KiB
    /// page): the guest's bytes, with a reclaimed page brought back first
    /// ([`Self::with_page`]); a page never backed reads as zeros.
    pub fn read_bytes(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), AccessError> {
        let end = gpa
            .as_u64()
            .checked_add(buf.len() as u64)
            .ok_or(AccessError::OutsideRam)?;
        if end > self.ram_bytes {
            return Err(AccessError::OutsideRam);
        }
        self.with_page(gpa, false, |hpa| match hpa {
            // SAFETY: `hpa..+len` lies in one page of a frame this VM owns
            // (the caller keeps the range inside one 4 KiB page), and the
            // writer lock held by `with_page` keeps the reclaimer from
            // freeing it; the guest may write it concurrently: bytes, no
            // references.
            Some(hpa) => unsafe {
                core::ptr::copy_nonoverlapping(phys::to_virt(hpa), buf.as_mut_ptr(), buf.len());
            },
            None => buf.fill(0),
        })
    }

    /// Fetches up to `buf.len()` bytes at guest-virtual `va` through the
    /// guest's paging (`hvcore::guest_walk::fetch`, page tables and bytes
    /// read with [`Self::read_bytes`]); returns how many were read. A page
    /// that cannot come back for lack of a host frame pauses the caller as
    /// a nested page fault does (`wait_for_memory`, as VM `name`, giving up
    /// when `give_up()`), then the fetch is retried; `Err(gpa)` when the
    /// wait ended without memory: the VM must stop for it, never decode
    /// bytes that are not the guest's.
    pub fn fetch(
        &self,
        paging: hvcore::guest_walk::GuestPaging,
        va: u64,
        buf: &mut [u8],
        name: &str,
        give_up: &dyn Fn() -> bool,
    ) -> Result<usize, GuestPhysAddr> {
        loop {
            let read = NoFrameRead {
                memory: self,
                no_frame: core::cell::Cell::new(None),
            };
            let n = hvcore::guest_walk::fetch(&read, paging, va, buf);
            match read.no_frame.get() {
                None => return Ok(n),
                Some(gpa) if wait_for_memory(name, gpa, give_up) => {}
                Some(gpa) => return Err(gpa),
            }
        }
    }

    fn map_zeroed(
        &self,
        w: &mut Writer,
        gpa: GuestPhysAddr,
        frame: HostPhysAddr,
        size: FrameSize,
    ) -> Result<(), MapError> {
        let g = GuestFrame { hpa: frame, size };
        // SAFETY: the frame was just handed to this VM and is not mapped
        // anywhere yet: zeroing it exposes nothing and races with nobody.
        unsafe { phys::zero(frame, g.bytes()) };
        let max = match size {
            FrameSize::Size4K => PageSize::Size4K,
            FrameSize::Size2M => PageSize::Size2M,
        };
        w.mapper
            .map(&self.tables, gpa, frame, g.bytes(), Perms::RWX, max)?;
        w.frames.insert(gpa.as_u64(), g);
        Ok(())
    }

    /// Copies `bytes` into guest RAM at `gpa` (backing pages as needed,
    /// each page under the writer lock as [`Self::with_page`] says, its
    /// leaf given A and D as the CPU's own write would: the reclaimer drops
    /// a page whose D is clear when it holds a clean copy of it). Fails if
    /// any byte is outside RAM or no frame is free.
    pub fn write(&self, gpa: GuestPhysAddr, bytes: &[u8]) -> Result<(), &'static str> {
        let mut done = 0usize;
        while done < bytes.len() {
            let at = GuestPhysAddr::new(gpa.as_u64() + done as u64);
            if at.as_u64() >= self.ram_bytes {
                return Err("write past the end of guest RAM");
            }
            let n = ((PAGE_SIZE_4K - at.as_u64() % PAGE_SIZE_4K) as usize).min(bytes.len() - done);
            let copied = self.with_page(at, true, |hpa| {
                let Some(hpa) = hpa else { return false };
                self.tables.mark_accessed(at, F::ACCESSED | F::DIRTY);
                // SAFETY: `hpa..hpa + n` lies inside one frame this VM owns
                // (the copy stays within the 4 KiB page of `at`), kept by
                // the writer lock `with_page` holds; the guest may run
                // concurrently, which makes the contents racy but never
                // unsafe for the host (plain bytes, no references held).
                unsafe {
                    core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), phys::to_virt(hpa), n);
                }
                true
            });
            match copied {
                Ok(true) => {}
                Ok(false) | Err(AccessError::NoFrame { .. }) => {
                    return Err("no frame to back guest RAM");
                }
                Err(AccessError::OutsideRam) => return Err("write past the end of guest RAM"),
            }
            done += n;
        }
        Ok(())
    }

    /// Whether the 4 KiB page holding `gpa` is backed, with its leaf's A
    /// and D bits.
    pub fn accessed_dirty(&self, gpa: GuestPhysAddr) -> Option<(bool, bool)> {
        self.tables.translate(gpa).map(|t| (t.accessed, t.dirty))
    }

    /// Clears A and D on every leaf (tests; the aging thread uses its own
    /// walk). The caller must flush the guest's TLB before relying on it.
    pub fn clear_accessed_dirty(&self) {
        let mut walk = self.tables.walk(0, F::space_size(), Level::PAGE_4K, 0);
        while let Some(e) = walk.next() {
            if F::is_present(e.old) {
                walk.slot()
                    .fetch_and(!(F::ACCESSED | F::DIRTY), hvcore::sync::Ordering::AcqRel);
            }
        }
    }

    /// Walks every present leaf of the whole guest-physical space (every
    /// address the guest can name) and checks that it lies inside RAM and
    /// maps exactly the frame this VM owns for it, with no frame mapped
    /// twice.
    pub fn check_isolation(&self) -> Result<IsolationReport, String> {
        let w = self.writer.lock();
        let mut leaves = 0u64;
        let mut pages = 0u64;
        let mut problem = None;
        self.tables
            .for_each_leaf(0, F::space_size(), |gpa, level, entry| {
                if problem.is_some() {
                    return;
                }
                leaves += 1;
                let size = F::level_size(level);
                pages += size / PAGE_SIZE_4K;
                let hpa = F::addr(entry).as_u64();
                if gpa + size > self.ram_bytes {
                    problem = Some(format!(
                        "GPA {gpa:#x} (+{size:#x}) is mapped outside RAM (ends {:#x})",
                        self.ram_bytes
                    ));
                    return;
                }
                // The frame that owns this GPA: the one starting at or below it.
                let owner = w.frames.range(..=gpa).next_back();
                match owner {
                    Some((&start, f))
                        if gpa + size <= start + f.bytes()
                            && hpa == f.hpa.as_u64() + (gpa - start) => {}
                    _ => {
                        problem = Some(format!(
                            "GPA {gpa:#x} maps host {hpa:#x}, not a frame this VM owns there"
                        ))
                    }
                }
            });
        if let Some(p) = problem {
            return Err(p);
        }
        let owned_pages: u64 = w.frames.values().map(|f| f.bytes() / PAGE_SIZE_4K).sum();
        if owned_pages != pages {
            return Err(format!(
                "tables map {pages} pages but the VM owns {owned_pages}: a frame is mapped twice or lost"
            ));
        }
        Ok(IsolationReport {
            leaves,
            pages,
            frames: w.frames.len() as u64,
        })
    }
}

impl<F: EntryFormat> GuestPhysRead for GuestMemory<F> {
    /// [`GuestMemory::read_bytes`]; `None` outside RAM and when a
    /// reclaimed page cannot come back for lack of a frame (never zeros in
    /// its place).
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        self.read_bytes(gpa, buf).ok()
    }
}

/// Why the hypervisor's own access to guest RAM failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// The address is not guest RAM.
    OutsideRam,
    /// The page at `gpa` was reclaimed (or never backed, for a write) and
    /// no host frame is free to hold it.
    NoFrame {
        /// The page's address.
        gpa: GuestPhysAddr,
    },
}

/// [`GuestMemory::read_bytes`] as a `GuestPhysRead` for the guest-page
/// walk, remembering a page that could not come back.
struct NoFrameRead<'a, F: EntryFormat> {
    memory: &'a GuestMemory<F>,
    no_frame: core::cell::Cell<Option<GuestPhysAddr>>,
}

impl<F: EntryFormat> GuestPhysRead for NoFrameRead<'_, F> {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        match self.memory.read_bytes(gpa, buf) {
            Ok(()) => Some(()),
            Err(AccessError::NoFrame { gpa }) => {
                self.no_frame.set(Some(gpa));
                None
            }
            Err(AccessError::OutsideRam) => None,
        }
    }
}

impl<F: EntryFormat> Drop for GuestMemory<F> {
    fn drop(&mut self) {
        let w = self.writer.get_mut();
        // The whole space, so every table below the root is unlinked too.
        let _ = w.mapper.unmap(
            &self.tables,
            GuestPhysAddr::new(0),
            F::space_size(),
            |_, _, _| {},
        );
        for f in w.frames.values() {
            if let Err(e) = mem::free_frame(f.hpa, f.size) {
                log::error!("vm: frame {:?} not freed: {e}", f.hpa);
            }
        }
        w.frames.clear();
        // Nothing runs the VM any more: every retired table page may go.
        let _ = w.mapper.tlb_flushed(&self.tables);
        let root = self.tables.root();
        FrameTables.free_table(root);
    }
}
