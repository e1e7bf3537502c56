//! Kernel glue of the page reclaimer (`hvcore::reclaim`): per-VM memory
//! management state, host frames for the reclaimer, the hook the nested
//! page fault path calls, the shootdown that completes a flush, and the
//! overcommit wait.
//!
//! Key types: [`VmMm`] (one VM's generation bookkeeping, reclaimer and
//! pass counters, behind one spin lock; the VM's memory holds it as its
//! `vm::memory::PageReclaimer`, so the fault path reaches it without a
//! global lookup), [`KernelFrames`] (the reclaimer's
//! `GuestFrames`: the frame allocator plus the VM's frame map),
//! [`Shootdown`].
//!
//! # Locks, and why a vCPU never waits on the aging thread to run
//! * The VM's writer lock (`vm::memory`, a spin lock): table structure and
//!   the frame map. Taken by vCPU fault paths and by [`reclaim_vm`].
//! * The VM's [`VmMm`] lock: generations and the reclaimer. Taken by the
//!   aging pass (without the writer lock), by [`reclaim_vm`] (inside the
//!   writer lock) and by the fault path inside the writer lock.
//!
//! The order is always writer, then `VmMm`. A vCPU takes neither to run
//! guest code; its fault path takes the writer lock, and `VmMm` only to
//! ask whether the page was reclaimed. The aging pass itself is a lockless
//! walk that writes the generations into the entries it ages; it holds
//! `VmMm` for one pass, for the sequence number it advances. The
//! reclaimer holds both locks across its flush; the flush waits only for
//! each CPU to take an interrupt (a vCPU in guest mode exits, one spinning
//! on the writer lock keeps interrupts on), never for a vCPU to re-enter the
//! guest, so it cannot deadlock with a fault that waits for the lock.
//!
//! Neighbours: `crate::aging` (the thread that drives passes and reclaim),
//! `crate::vm::memory` (holds each VM's [`VmMm`] as its `PageReclaimer`,
//! and calls [`wait_for_memory`] through `set_memory_wait`), `hvcore::{reclaim, store,
//! feedback, generations, report}`.

pub use crate::vm::timing;

use crate::mem::{self, phys};
use crate::vm::memory::{
    FaultOutcome, FrameTables, GuestFrame, GuestMemory, PageReclaimer, PhysTables,
};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::addr::{GuestPhysAddr, HostPhysAddr};
use hvcore::flush::TlbFlush;
use hvcore::frame::FrameSize;
use hvcore::generations::Generations;
use hvcore::pte::EntryFormat;
use hvcore::reclaim::{
    FaultError, FaultIn, FlushedFrame, GuestFrames, ReclaimConfig, ReclaimTarget, Reclaimer,
    Watermarks,
};
use hvcore::store::PAGE_BYTES;
use hvcore::table::{Mapper, Tables};

/// One VM's memory-management state.
#[derive(Debug)]
pub struct VmMm {
    /// The VM's name, for report lines.
    pub name: &'static str,
    /// The sequence bookkeeping; the generations themselves are tags in the
    /// VM's table entries, so every query takes the tables.
    pub gens: Generations,
    /// The reclaimer.
    pub rec: Reclaimer,
    /// What to reclaim toward after each pass (`None`: aging only).
    pub target: Option<ReclaimTarget>,
    /// Resident pages not young in the last pass, as the last pass counted
    /// them, less the pages reclaimed since: for [`cold_pages`], which has
    /// no tables to walk (the registry knows only each VM's `VmMm`).
    pub cold_pages: u64,
    /// Whether the console was told that `target` cannot be met
    /// (`crate::aging`, once per VM).
    pub target_unmet_said: bool,
}

/// Every managed VM's state, for the host-wide figures of the pressure
/// reclaimer ([`cold_pages`], whether any VM is managed); a VM's state goes
/// with its memory, which holds the only other reference. Never taken on a
/// fault.
static REGISTRY: spin::Mutex<Vec<Weak<spin::Mutex<VmMm>>>> = spin::Mutex::new(Vec::new());

/// Frames given back by reclaimers, and taken for fault-ins, host-wide.
pub static FRAMES_FREED: AtomicU64 = AtomicU64::new(0);
/// See [`FRAMES_FREED`].
pub static FRAMES_TAKEN: AtomicU64 = AtomicU64::new(0);

/// Manages the VM whose memory is `memory`: every page already mapped
/// starts in the current generation (its age counts from now), and the
/// memory's fault path reaches the returned state as its reclaimer.
pub fn register<F: EntryFormat>(
    name: &'static str,
    memory: &GuestMemory<F>,
    target: Option<ReclaimTarget>,
) -> Arc<spin::Mutex<VmMm>> {
    let tables = memory.tables();
    let now = now_ms();
    let gens = Generations::new(now);
    gens.adopt(tables);
    let mut rec = Reclaimer::new(ReclaimConfig::default(), now);
    rec.set_clock(crate::time::now_ns);
    let mm = Arc::new(spin::Mutex::new(VmMm {
        name,
        gens,
        rec,
        target,
        cold_pages: 0,
        target_unmet_said: false,
    }));
    let installed = memory.set_reclaimer(mm.clone());
    debug_assert!(installed, "a VM is managed once");
    crate::vm::memory::set_memory_wait(wait_for_memory);
    let mut registry = REGISTRY.lock();
    registry.retain(|mm| mm.strong_count() > 0);
    registry.push(Arc::downgrade(&mm));
    mm
}

/// The state of every managed VM whose memory still exists.
fn managed() -> Vec<Arc<spin::Mutex<VmMm>>> {
    REGISTRY.lock().iter().filter_map(Weak::upgrade).collect()
}

/// Milliseconds since boot.
pub fn now_ms() -> u64 {
    crate::time::now_ns() / 1_000_000
}

/// The reclaimer's host frames: the frame allocator, and the VM's frame
/// map (guest-physical start -> frame) kept exact as pages go and come.
#[derive(Debug)]
pub struct KernelFrames<'a> {
    frames: &'a mut BTreeMap<u64, GuestFrame>,
    /// Host start -> guest start, built lazily for frees.
    by_host: Option<BTreeMap<u64, u64>>,
}

impl<'a> KernelFrames<'a> {
    /// Frames of the VM whose frame map is `frames`.
    pub fn new(frames: &'a mut BTreeMap<u64, GuestFrame>) -> Self {
        KernelFrames {
            frames,
            by_host: None,
        }
    }

    /// Records that `gpa` is now backed by the 4 KiB `frame`.
    pub fn note_mapped(&mut self, gpa: u64, frame: HostPhysAddr) {
        self.frames.insert(
            gpa,
            GuestFrame {
                hpa: frame,
                size: FrameSize::Size4K,
            },
        );
        if let Some(m) = &mut self.by_host {
            m.insert(frame.as_u64(), gpa);
        }
    }

    fn owner(&mut self, hpa: u64) -> Option<(u64, u64, GuestFrame)> {
        let frames = &*self.frames;
        let by_host = self.by_host.get_or_insert_with(|| {
            // Entry by entry: `collect` would sort one buffer of every
            // mapped frame (160 KiB for 40 MiB resident), an allocation
            // the heap cannot grow for when guests took every 2 MiB block.
            let mut m = BTreeMap::new();
            for (&g, f) in frames {
                m.insert(f.hpa.as_u64(), g);
            }
            m
        });
        let (&start, &gpa) = by_host.range(..=hpa).next_back()?;
        let f = *self.frames.get(&gpa)?;
        let bytes = match f.size {
            FrameSize::Size4K => 4096,
            FrameSize::Size2M => 2 << 20,
        };
        (hpa < start + bytes).then_some((start, gpa, f))
    }
}

impl GuestFrames for KernelFrames<'_> {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        let t0 = crate::time::now_ns();
        let f = mem::alloc_guest_frame(FrameSize::Size4K);
        timing::FRAME_ALLOC.since(t0);
        let f = f.ok()?;
        FRAMES_TAKEN.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    fn free_frame(&mut self, frame: HostPhysAddr) {
        let hpa = frame.as_u64();
        let Some((start, gpa, f)) = self.owner(hpa) else {
            // A frame taken for a fault-in that failed before mapping.
            if mem::free_frame(frame, FrameSize::Size4K).is_ok() {
                FRAMES_FREED.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        if f.size == FrameSize::Size2M {
            // The huge frame's leaf was split: split the allocation too,
            // and the frame map with it.
            if let Err(e) = mem::split_frame_2m(f.hpa) {
                log::error!("reclaim: 2 MiB frame {:?} not split: {e}", f.hpa);
                return;
            }
            for i in 0..512u64 {
                self.note_mapped(gpa + i * 4096, HostPhysAddr::new(start + i * 4096));
            }
        }
        let page_gpa = gpa + (hpa - start);
        self.frames.remove(&page_gpa);
        if let Some(m) = &mut self.by_host {
            m.remove(&hpa);
        }
        match mem::free_frame(frame, FrameSize::Size4K) {
            Ok(()) => {
                FRAMES_FREED.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::error!("reclaim: frame {frame:?} not freed: {e}"),
        }
    }

    fn free_guest_frame(&mut self, gfn: u64, frame: HostPhysAddr) {
        // The common case, a 4 KiB mapping: found by guest address, without
        // building the host-address index (one per batch, O(resident)).
        let gpa = gfn * 4096;
        let exact = self
            .frames
            .get(&gpa)
            .is_some_and(|f| f.size == FrameSize::Size4K && f.hpa == frame);
        if !exact {
            return self.free_frame(frame);
        }
        self.frames.remove(&gpa);
        if let Some(m) = &mut self.by_host {
            m.remove(&frame.as_u64());
        }
        match mem::free_frame(frame, FrameSize::Size4K) {
            Ok(()) => {
                FRAMES_FREED.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::error!("reclaim: frame {frame:?} not freed: {e}"),
        }
    }

    fn read_frame(&mut self, frame: &FlushedFrame, out: &mut [u8; PAGE_BYTES]) {
        // SAFETY: a `FlushedFrame` is a 4 KiB guest frame the reclaimer took
        // out of the tables, made only after the flush of every TLB of the
        // guest completed (hvcore::reclaim's order): it is RAM in the
        // physical-memory mapping, nobody writes it now, and the copy stays
        // within the page.
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys::to_virt(frame.frame()),
                out.as_mut_ptr(),
                PAGE_BYTES,
            );
        }
    }

    fn write_frame(&mut self, frame: HostPhysAddr, data: &[u8; PAGE_BYTES]) {
        // SAFETY: `frame` was just allocated for this fault-in and is not
        // mapped anywhere yet; the copy stays within the page.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), phys::to_virt(frame), PAGE_BYTES);
        }
    }
}

/// The flush the reclaimer needs: every vCPU of the VM drops its cached
/// translations before it touches guest memory again. The VM's flush
/// request makes each vCPU flush at its next entry; the cross-CPU call
/// returns once every CPU took the interrupt, which forces a vCPU in guest
/// mode out of it, so when `flush_guest_tlb` returns no vCPU runs with the
/// old translations.
pub struct Shootdown<'a> {
    /// Asks the VM's vCPUs to flush at their next entry.
    pub request: &'a dyn Fn(),
}

impl core::fmt::Debug for Shootdown<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Shootdown")
    }
}

impl TlbFlush for Shootdown<'_> {
    fn flush_guest_tlb(&mut self) {
        (self.request)();
        crate::smp::run_on_all(&|| {});
    }
}

/// The fault path's view of one VM's reclaimer (`vm::memory` calls it with
/// the VM's writer lock held: lock order writer, then `VmMm`).
impl<F: EntryFormat> PageReclaimer<F> for spin::Mutex<VmMm> {
    fn fault_in(
        &self,
        tables: &Tables<F, PhysTables>,
        mapper: &mut Mapper<FrameTables>,
        frames: &mut BTreeMap<u64, GuestFrame>,
        gpa: GuestPhysAddr,
    ) -> Option<FaultOutcome> {
        let mut mm = self.lock();
        let VmMm {
            gens, rec, name, ..
        } = &mut *mm;
        let mut kf = KernelFrames::new(frames);
        match rec.fault_in(tables, mapper, &mut kf, gens, gpa, now_ms()) {
            Ok(FaultIn::NotReclaimed) => None,
            Ok(FaultIn::Restored(_)) => {
                let page = gpa.align_down(4096);
                if let Some(t) = tables.translate(page) {
                    kf.note_mapped(page.as_u64(), t.hpa);
                }
                Some(FaultOutcome::Mapped(FrameSize::Size4K))
            }
            Err(FaultError::NoFrame) => Some(FaultOutcome::OutOfMemory),
            Err(e) => {
                crate::println!(
                    "vm {name}: page at GPA {:#x} cannot be brought back: {e}",
                    gpa.as_u64()
                );
                Some(FaultOutcome::OutOfMemory)
            }
        }
    }
}

/// Free frames below which reclaim is driven by host memory pressure, and
/// up to which it then goes: just above the frames guests may not take
/// (`mem::GUEST_RESERVE_BLOCKS`, `mem::GUEST_RESERVE_FRAMES`), else guests
/// would stop at the reserve before pressure is felt. A round leaves the
/// guests 512 frames (2 MiB) to fault into.
pub const WATERMARKS: Watermarks = Watermarks {
    low_frames: GUEST_FLOOR_FRAMES + 256,
    high_frames: GUEST_FLOOR_FRAMES + 512,
};

/// Free frames guests never take (`mem::alloc_guest_frame`).
pub const GUEST_FLOOR_FRAMES: u64 = mem::GUEST_RESERVE_BLOCKS * 512 + mem::GUEST_RESERVE_FRAMES;

/// Frames guests must be able to take again before a paused VM resumes:
/// a run of faults, not one that pauses again at once.
pub const RESUME_FRAMES: u64 = 64;

/// VMs paused for memory now.
pub static PAUSED_NOW: AtomicU64 = AtomicU64::new(0);
/// The tickets of the faults waiting for memory now, in pause order.
static WAITING: spin::Mutex<Vec<u64>> = spin::Mutex::new(Vec::new());
static NEXT_TICKET: AtomicU64 = AtomicU64::new(0);
/// Pauses for memory since boot.
pub static PAUSES: AtomicU64 = AtomicU64::new(0);

/// Pages the pressure reclaimer may try: resident pages of every
/// registered VM that were not young in its last pass, less those
/// reclaimed since ([`VmMm::cold_pages`]; whether reclaiming them frees
/// frames depends on how they compress).
pub fn cold_pages() -> u64 {
    managed().iter().map(|mm| mm.lock().cold_pages).sum()
}

/// What reclaim under pressure achieved since a vCPU paused for memory:
/// the figures that say why it still waits.
struct PressureSince {
    frames_freed: u64,
    kept_incompressible: u64,
}

impl PressureSince {
    fn now() -> Self {
        PressureSince {
            frames_freed: FRAMES_FREED.load(Ordering::Relaxed),
            kept_incompressible: kept_incompressible(),
        }
    }

    /// Why the memory did not come back, in words with the figures:
    /// the cold pages (not young in the last pass), the frames reclaim
    /// freed since, and the cold pages it tried and left resident
    /// because they do not compress. Under pressure a page that does not
    /// compress stays resident (docs/ARCHITECTURE.md, "Overcommit"): a
    /// raw copy would cost the heap the frame it frees, so memory of
    /// dense data cannot shrink, and the wait lasts until a VM stops.
    fn why(&self) -> alloc::string::String {
        let cold = cold_pages();
        let freed = FRAMES_FREED
            .load(Ordering::Relaxed)
            .saturating_sub(self.frames_freed);
        let kept = kept_incompressible().saturating_sub(self.kept_incompressible);
        let verdict = if cold == 0 {
            "every resident page was young in the last pass: the VMs' hot sets exceed the host"
        } else if kept > 0 {
            "the cold pages do not compress, and under pressure such a page stays resident (a raw copy would cost the heap the frame it frees): the VMs' memory cannot shrink: memory comes back only when a VM stops"
        } else {
            "reclaim under pressure has not freed enough from them yet"
        };
        alloc::format!(
            "{cold} pages of the VMs not young in their last pass; since the pause, reclaim under pressure freed {freed} frames and found {kept} cold pages incompressible (tries); {verdict}"
        )
    }
}

/// Pages the pressure reclaimer left resident because they do not
/// compress, over every managed VM, since each was registered (a page
/// tried again counts again).
fn kept_incompressible() -> u64 {
    managed()
        .iter()
        .map(|mm| mm.lock().rec.stats().kept_incompressible)
        .sum()
}

/// How often a VM paused for memory says it still waits.
pub const PAUSED_STATUS_EVERY_MS: u64 = 10_000;

/// The overcommit wait: a fault of VM `name` at `gpa` found no free frame
/// (the reserve of `mem::alloc_guest_frame` reached). Prints the pause
/// (`vm NAME: paused: no free host frame for GPA 0x... (free F, reserved
/// K, cold pages R)` and a `TCR event` line), waits while the aging
/// thread reclaims under pressure, and returns true once
/// [`RESUME_FRAMES`] frames can be taken again (`vm NAME: resumed after N
/// ms`); when several VMs wait, the one that paused last resumes first.
/// There is no time limit: a VM whose memory cannot come back (the
/// hot sets of the VMs exceed the host) stays paused while the others run,
/// until memory frees up or `give_up()` (its stop was requested) says to
/// stop waiting: then false (`vm NAME: stopped while paused for memory`).
/// False at once when no VM is managed, or without a timer (the Bochs CPU core:
/// reclaim runs on the waiting vCPU's own exits): nothing would ever free
/// memory.
/// Called without any lock held.
pub fn wait_for_memory(name: &str, gpa: GuestPhysAddr, give_up: &dyn Fn() -> bool) -> bool {
    if managed().is_empty() {
        return false; // no reclaimer runs: nothing will free memory
    }
    let t0 = now_ms();
    let free = mem::frame_stats().free_frames;
    crate::println!(
        "vm {name}: paused: no free host frame for GPA {:#x} (free {free}, reserved {GUEST_FLOOR_FRAMES}, cold pages {})",
        gpa.as_u64(),
        cold_pages()
    );
    crate::println!(
        "{}",
        hvcore::report::Record::Event(hvcore::report::EventLine {
            vm: name.into(),
            t_ms: t0,
            what: hvcore::report::EventKind::Paused,
            detail: alloc::format!("no_free_frame_for_fault_at_{:#x}", gpa.as_u64()),
        })
    );
    if !crate::time::has_timer() {
        // Cooperative scheduling (the Bochs CPU core): the reclaim runs on this
        // very vCPU's exits, so nothing could free memory while it waits.
        crate::println!(
            "vm {name}: stopped while paused for memory (0 ms): no timer, nothing reclaims while this vCPU waits"
        );
        crate::println!(
            "{}",
            hvcore::report::Record::Event(hvcore::report::EventLine {
                vm: name.into(),
                t_ms: now_ms(),
                what: hvcore::report::EventKind::Stopped,
                detail: "no_timer_to_reclaim".into(),
            })
        );
        return false;
    }
    let since = PressureSince::now();
    PAUSES.fetch_add(1, Ordering::Relaxed);
    PAUSED_NOW.fetch_add(1, Ordering::AcqRel);
    let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
    WAITING.lock().push(ticket);
    let mut status_at = t0 + PAUSED_STATUS_EVERY_MS;
    let resumed = loop {
        // A VM paused on memory it may never get back would otherwise say
        // one line and then nothing for as long as it waits.
        if now_ms() >= status_at {
            status_at += PAUSED_STATUS_EVERY_MS;
            crate::println!(
                "vm {name}: still paused after {} s: {} free guest frames, {RESUME_FRAMES} needed to resume; {}",
                (now_ms() - t0) / 1000,
                mem::guest_free_frames(),
                since.why()
            );
        }
        // The VM paused last goes first: when the hot sets exceed the
        // host, the VM that ran out first (the one whose demand could not
        // be met) keeps waiting while frames reclaimed from cold memory
        // let the others run on and finish, instead of every VM taking
        // turns at too few frames.
        let newest = WAITING.lock().last() == Some(&ticket);
        if newest && mem::guest_free_frames() >= RESUME_FRAMES {
            break true;
        }
        if give_up() {
            break false;
        }
        crate::sched::sleep_until(crate::time::now_ns() + 5_000_000);
    };
    WAITING.lock().retain(|&t| t != ticket);
    PAUSED_NOW.fetch_sub(1, Ordering::AcqRel);
    let waited_ms = now_ms() - t0;
    if resumed {
        crate::println!("vm {name}: resumed after {waited_ms} ms");
    } else {
        crate::println!(
            "vm {name}: stopped while paused for memory ({waited_ms} ms): {}",
            since.why()
        );
    }
    let (what, detail) = if resumed {
        (hvcore::report::EventKind::Resumed, "memory_freed")
    } else {
        (hvcore::report::EventKind::Stopped, "stopped_while_paused")
    };
    crate::println!(
        "{}",
        hvcore::report::Record::Event(hvcore::report::EventLine {
            vm: name.into(),
            t_ms: now_ms(),
            what,
            detail: detail.into(),
        })
    );
    resumed
}
