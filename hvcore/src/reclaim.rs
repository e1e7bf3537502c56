//! The page reclaimer: takes cold guest pages away from a VM and brings
//! them back, byte for byte, when the guest touches them again.
//!
//! Key types: [`Reclaimer`] (one per VM: page states, the
//! [`crate::store::PageStore`], the [`crate::feedback::Feedback`] loop),
//! [`GuestFrames`] (how it reads, writes, takes and frees host frames; the
//! kernel implements it), [`ReclaimTarget`], [`PageState`].
//! Neighbours: [`crate::generations`] yields the coldest pages first,
//! [`crate::table::Mapper`] unmaps and maps, [`crate::flush::TlbFlush`]
//! flushes, [`crate::report`] prints [`ReclaimStats`].
//!
//! # Page states
//! ```text
//!            reclaim: swap entry -> 0            flush, then read frame
//! Resident ------------------------------> InFlight --------------------+
//!    ^  ^        (A set in the swapped value:   |  zero       -> Zero      |
//!    |  |         remap at once, "rescued")      |  compresses -> Compressed|
//!    |  +---------------------------------------+  otherwise  -> Stored    |
//!    |            store full: remap frame             (raw)                 |
//!    +----------------- fault-in: zeros / decompress, then map -------------+
//! ```
//! A resident page may also keep a *clean copy* in the store (after a
//! fault-in, with [`ReclaimConfig::keep_clean_copies`]): if it is
//! reclaimed again and was not written meanwhile, its frame is dropped
//! without reading or compressing it.
//!
//! # The ordering that makes a lost write impossible
//! For each page of a batch, with the VM's writer lock held:
//! 1. **Unmap with one atomic exchange.** [`crate::table::Mapper::unmap`]
//!    replaces the leaf by a non-present entry with a single `swap(0)` and
//!    returns the final value, A and D included. From that instant the
//!    CPU can no longer set A or D in that entry: a page walk finds it
//!    not present and raises a nested page fault instead. A write whose D
//!    update happened before the exchange is in the returned D bit; the
//!    write's data went to the frame.
//! 2. **One TLB flush for the batch** ([`crate::flush::TlbFlush`]). Until it
//!    completes, a vCPU holding a translation cached *with D set* may still
//!    write the frame without touching the entry. A cached translation with
//!    D clear cannot be used to write: the CPU must set D first (Intel SDM
//!    "Accessed and Dirty Flags for EPT"; AMD APM "Nested Paging": D is set
//!    with a locked update of the entry in memory), finds the entry not
//!    present, and faults. After the flush no vCPU has any translation to
//!    the frame.
//! 3. **Only then is the frame read**: zero check, compression, store, and
//!    the frame is freed. Every write to the page completed before this
//!    read (it went through a translation the flush removed) or has not
//!    happened: it faults, and the fault path waits for the writer lock,
//!    which the reclaimer holds until the page is in its final state, then
//!    restores the page and lets the write proceed on the restored frame.
//!
//! **Clean drops** use the D bit: if the exchanged value has D clear and
//! the store holds a clean copy (the page was restored from it and mapped
//! with D clear), no write reached the frame since: a write through the
//! entry would have set D before the exchange (it is in the returned
//! value), and no translation with D set can exist without D set in the
//! entry first (the CPU caches D only after setting it in memory; only the
//! exchange clears D, the aging helper clears only A). So the frame equals
//! the copy and is freed unread. Reading D from a plain load *before* the
//! exchange would be wrong: a write may set D between the load and the
//! exchange. The loom models in `tests/loom_reclaim.rs` show both.
//!
//! An entry whose exchanged value has A set was accessed since the last
//! aging pass: the page is not cold any more and is mapped back at once
//! ("rescued"; the same frame, so stale TLB entries are harmless). If D was
//! set, its clean copy is dropped first, because the remapped entry starts
//! with D clear.
//!
//! # Locks
//! Every method takes `&mut self` and the VM's [`crate::table::Mapper`]:
//! the caller holds the VM's writer lock across a whole batch, the flush
//! included. The flush must therefore not wait for a vCPU to *re-enter* the
//! guest: it completes once every vCPU has been outside guest mode after
//! the request (a vCPU spinning on the writer lock in its fault path
//! qualifies), which is how the SVM and VMX backends implement it.
//!
//! # Huge pages
//! A huge leaf is split (same frames, same A/D) before one of its 4 KiB
//! parts is reclaimed; [`GuestFrames::free_frame`] then receives 4 KiB
//! parts of a huge host frame.

extern crate alloc;

use crate::addr::{GuestPhysAddr, HostPhysAddr};
use crate::feedback::{Feedback, FeedbackConfig};
use crate::flush::TlbFlush;
use crate::generations::{ColdAfter, Generations};
use crate::pte::{EntryFormat, Level, Perms};
use crate::store::{PAGE_BYTES, PageStore, StoreError, StoreStats, StoredKind};
use crate::table::{MapError, Mapper, PageSize, TableAlloc, TableMemory, Tables};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

/// Pages unmapped under one TLB flush, by default.
pub const BATCH_PAGES: usize = 64;
/// The largest batch [`Reclaimer::set_batch_pages`] allows. Each batch
/// holds the VM's writer lock throughout, so a vCPU's fault may wait for a
/// whole batch; a larger batch trades that wait for fewer flushes (each
/// one waits until every CPU took an interrupt: milliseconds under
/// emulation on a loaded host).
pub const MAX_BATCH_PAGES: usize = 256;

/// How the reclaimer reaches host frames. The kernel implements it over
/// its frame allocator and its map of physical memory.
pub trait GuestFrames {
    /// A free 4 KiB frame for a page coming back, or `None` when memory is
    /// exhausted (the VM is then paused: see the kernel's overcommit docs).
    fn alloc_frame(&mut self) -> Option<HostPhysAddr>;
    /// Takes back a 4 KiB frame (possibly part of a huge frame) no
    /// translation reaches any more.
    fn free_frame(&mut self, frame: HostPhysAddr);
    /// Takes back the 4 KiB `frame` that backed guest page `gfn` (the
    /// reclaimer knows both): lets an implementation find its bookkeeping
    /// by guest address instead of searching by host address.
    fn free_guest_frame(&mut self, gfn: u64, frame: HostPhysAddr) {
        let _ = gfn;
        self.free_frame(frame);
    }
    /// Copies the frame out. The [`FlushedFrame`] is the proof that reading
    /// it is sound: the reclaimer unmapped the frame and a TLB flush
    /// completed since, so no vCPU can write it any more (step 3 of the
    /// module docs).
    fn read_frame(&mut self, frame: &FlushedFrame, out: &mut [u8; PAGE_BYTES]);
    /// Fills the frame.
    fn write_frame(&mut self, frame: HostPhysAddr, data: &[u8; PAGE_BYTES]);
}

/// A frame that the reclaimer took out of the tables, after a TLB flush of
/// the guest completed: no translation reaches it and every write through
/// one has landed, so its contents are final until it is freed. Only the
/// reclaimer makes these, from the proof its batch's flush returns (step 2
/// of the module docs); [`GuestFrames::read_frame`] requires one.
#[derive(Debug)]
pub struct FlushedFrame {
    frame: HostPhysAddr,
}

impl FlushedFrame {
    /// The host frame.
    pub fn frame(&self) -> HostPhysAddr {
        self.frame
    }
}

/// Proof that a batch's TLB flush completed after its unmaps: returned by
/// [`flush_batch`] (step 2), needed to read the batch's frames (step 3).
#[derive(Debug)]
struct BatchFlushed(());

impl BatchFlushed {
    /// The proof for one frame the batch unmapped.
    fn frame(&self, frame: HostPhysAddr) -> FlushedFrame {
        FlushedFrame { frame }
    }
}

/// Step 2 of a batch: one flush for every page unmapped so far, and the
/// proof that it returned.
fn flush_batch<T: TlbFlush>(flush: &mut T) -> BatchFlushed {
    flush.flush_guest_tlb();
    BatchFlushed(())
}

/// Where a guest page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Mapped (or never touched): not the reclaimer's business.
    Resident,
    /// Unmapped, its frame not yet inspected (only seen under the lock
    /// when keeping the page failed).
    InFlight,
    /// Reclaimed, known to be all zeros.
    Zero,
    /// Reclaimed, kept compressed.
    Compressed,
    /// Reclaimed, kept uncompressed (it did not compress well).
    Stored,
}

/// Passes a page must have gone unused before a resident limit may take
/// it: the current and the previous one, as MGLRU never evicts from its two
/// youngest generations (`MIN_NR_GENS`). With one, a guest that missed a
/// single pass (its vCPU descheduled by the host for one interval, which
/// is routine under nested virtualization and on an emulator) looked
/// entirely cold and lost everything over its limit at once: measured in
/// `test_resident`, a guest whose every page is hot lost 664 of its 512
/// data pages (with 660 refaults) when a second QEMU shared the two host
/// cores.
pub const RESIDENT_LIMIT_MIN_GENS: u64 = 2;

/// What to reclaim toward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimTarget {
    /// Reclaim coldest pages first until at most this many 4 KiB pages are
    /// resident; pages young in the last [`RESIDENT_LIMIT_MIN_GENS`] passes
    /// are never taken, so the limit is soft for a guest whose whole memory
    /// is hot.
    ResidentLimit {
        /// Resident pages allowed.
        pages: u64,
    },
    /// Reclaim everything colder than this.
    ColderThan(ColdAfter),
    /// Reclaim everything colder than the feedback loop's threshold.
    Adaptive,
}

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimConfig {
    /// Keep a restored page's store entry as a clean copy (see the module
    /// docs), trading store bytes for cheap re-reclaim.
    pub keep_clean_copies: bool,
    /// The refault feedback loop.
    pub feedback: FeedbackConfig,
}

impl Default for ReclaimConfig {
    fn default() -> Self {
        ReclaimConfig {
            keep_clean_copies: true,
            feedback: FeedbackConfig::default(),
        }
    }
}

/// Counters of one VM's reclaimer (totals since it started, except where
/// said).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimStats {
    /// Pages reclaimed now (not resident, kept in the store).
    pub reclaimed_pages: u64,
    /// Pages ever reclaimed.
    pub reclaimed_total: u64,
    /// Frames given back to the host.
    pub frames_freed: u64,
    /// Frames taken for fault-ins.
    pub frames_taken: u64,
    /// Pages found accessed at unmap time and mapped back.
    pub rescued: u64,
    /// Pages dropped unread because D was clear and a clean copy existed.
    pub clean_drops: u64,
    /// Reclaimed pages brought back by a fault.
    pub refaults: u64,
    /// Huge leaves split before reclaim.
    pub huge_splits: u64,
    /// Pages kept resident because the store had no memory.
    pub store_full: u64,
    /// Pages kept resident because they do not compress and raw copies
    /// were off ([`Reclaimer::set_store_raw`]).
    pub kept_incompressible: u64,
    /// TLB flushes asked for.
    pub flushes: u64,
}

/// Where the reclaimer's time went, in nanoseconds of the clock given to
/// [`Reclaimer::set_clock`] (all zero without one). For the benchmarks and
/// the overcommit scenario's timing lines; never used for decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimTimes {
    /// Choosing candidates: the histogram and the coldest-first sweep of
    /// the generation bytes, per batch.
    pub select_ns: u64,
    /// Unmapping (and splitting, rescuing) the candidates of a batch.
    pub unmap_ns: u64,
    /// The batches' TLB flushes.
    pub flush_ns: u64,
    /// Reading each frame and putting it in the store (zero check,
    /// compression, checksum), and freeing its frame.
    pub store_ns: u64,
    /// Fault-ins: frame, decompression, mapping.
    pub fault_in_ns: u64,
}

/// What one call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Candidates looked at.
    pub candidates: u64,
    /// Pages reclaimed.
    pub reclaimed: u64,
    /// Of those, zero pages.
    pub zero: u64,
    /// Of those, compressed.
    pub compressed: u64,
    /// Of those, stored raw.
    pub raw: u64,
    /// Pages rescued (accessed since the last pass).
    pub rescued: u64,
    /// Candidates not mapped (nothing to do).
    pub not_mapped: u64,
    /// Pages left resident: they do not compress and raw copies were off.
    pub kept_incompressible: u64,
}

impl BatchStats {
    /// Frames the batch gave the host for good: frames freed, less one per
    /// page kept raw (its 4 KiB copy costs the heap a frame). Compressed
    /// copies are counted as free: a page goes compressed only when it
    /// shrinks by a quarter or more, and the sparse and zero pages that
    /// make up idle memory shrink to a few hundred bytes.
    pub fn net_frames(&self) -> u64 {
        self.reclaimed.saturating_sub(self.raw)
    }

    fn add(&mut self, o: BatchStats) {
        self.candidates += o.candidates;
        self.reclaimed += o.reclaimed;
        self.zero += o.zero;
        self.compressed += o.compressed;
        self.raw += o.raw;
        self.rescued += o.rescued;
        self.not_mapped += o.not_mapped;
        self.kept_incompressible += o.kept_incompressible;
    }
}

/// Host-wide free-frame watermarks of reclaim driven by host memory
/// pressure (overcommit): when the free frames fall under `low_frames`,
/// the coldest pages of any VM are reclaimed until `high_frames` are free
/// (or nothing more can be freed). The gap between the two makes each
/// round free a useful amount, so VMs waiting for memory get a run of
/// faults served instead of one frame each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// Reclaim starts below this many free frames.
    pub low_frames: u64,
    /// ... and goes on until this many are free.
    pub high_frames: u64,
}

impl Watermarks {
    /// Whether `free_frames` calls for a round of pressure reclaim.
    pub fn under_pressure(&self, free_frames: u64) -> bool {
        free_frames < self.low_frames
    }

    /// Whether a round that is under way has freed enough.
    pub fn satisfied(&self, free_frames: u64) -> bool {
        free_frames >= self.high_frames.max(self.low_frames)
    }
}

/// What the pressure reclaimer knows of one VM when it picks where the
/// next batch comes from ([`pick_victim`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VictimCandidate {
    /// How long ago (ms) the oldest generation holding a resident page
    /// that was not young in the last pass was young: the age of the VM's
    /// coldest reclaimable page. `None`: nothing to reclaim (stopped, or
    /// every page young).
    pub coldest_age_ms: Option<u64>,
    /// A recent batch of this VM freed no frame for good
    /// ([`BatchStats::net_frames`]: all rescued, incompressible or the
    /// store full): passed over for a while, so a VM whose memory cannot
    /// shrink does not cost every round a batch of work for nothing.
    pub barren: bool,
}

/// The VM the next pressure batch comes from: the one holding the coldest
/// reclaimable page, so the coldest pages of any VM go first whichever VM
/// they belong to; ties go to the lower index. `None` when no VM that is
/// not barren has a reclaimable page.
pub fn pick_victim(candidates: &[VictimCandidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.barren)
        .filter_map(|(i, c)| c.coldest_age_ms.map(|age| (i, age)))
        .fold(None, |best: Option<(usize, u64)>, (i, age)| match best {
            Some((_, b)) if b >= age => best,
            _ => Some((i, age)),
        })
        .map(|(i, _)| i)
}

/// What one round of pressure reclaim did ([`pressure_round`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PressureRound {
    /// Batches taken.
    pub batches: u64,
    /// Pages reclaimed.
    pub reclaimed: u64,
    /// Frames given back for good ([`BatchStats::net_frames`]).
    pub net_frames: u64,
    /// The VMs whose batch freed nothing for good in this round (the
    /// caller passes them over for a while: [`VictimCandidate::barren`]).
    pub went_barren: Vec<usize>,
    /// Whether the high watermark was reached (else nothing more could be
    /// freed: every VM barren or without reclaimable pages).
    pub satisfied: bool,
}

/// One round of reclaim driven by host memory pressure over VMs
/// `0..vms`: until `free_frames()` satisfies `wm`, survey every VM
/// (`survey(i)`, fresh before each batch: pages age and VMs stop while the
/// round runs), take one batch from [`pick_victim`]'s choice
/// (`reclaim(i)`), and pass a VM over for the rest of the round once one of
/// its batches freed nothing for good. The caller checks
/// [`Watermarks::under_pressure`] before starting a round.
pub fn pressure_round(
    wm: Watermarks,
    vms: usize,
    mut free_frames: impl FnMut() -> u64,
    mut survey: impl FnMut(usize) -> VictimCandidate,
    mut reclaim: impl FnMut(usize) -> BatchStats,
) -> PressureRound {
    let mut round = PressureRound::default();
    let mut candidates = alloc::vec![VictimCandidate::default(); vms];
    loop {
        if wm.satisfied(free_frames()) {
            round.satisfied = true;
            return round;
        }
        for (i, c) in candidates.iter_mut().enumerate() {
            let barren = round.went_barren.contains(&i);
            *c = survey(i);
            c.barren |= barren;
        }
        let Some(victim) = pick_victim(&candidates) else {
            return round;
        };
        let b = reclaim(victim);
        round.batches += 1;
        round.reclaimed += b.reclaimed;
        round.net_frames += b.net_frames();
        if b.net_frames() == 0 {
            round.went_barren.push(victim);
        }
    }
}

/// What a fault-in did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultIn {
    /// The page was never reclaimed: the caller's first-touch path applies.
    NotReclaimed,
    /// The page is back (mapped 4 KiB); retry the access.
    Restored(PageState),
}

/// Why a fault-in failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// No free frame: the VM must wait for memory (overcommit).
    NoFrame,
    /// The store lost or corrupted the page: the VM cannot continue
    /// correctly and must be stopped with this error.
    Store(StoreError),
    /// Mapping the restored page failed (table pages exhausted).
    Map(MapError),
}

impl core::fmt::Display for FaultError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FaultError::NoFrame => write!(f, "no free host frame to bring the page back"),
            FaultError::Store(e) => write!(f, "{e}"),
            FaultError::Map(e) => write!(f, "mapping the restored page failed: {e:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Record {
    perms: Perms,
    /// The generation the page was last young in, when reclaimed.
    young_seq: u64,
    /// The pass during which it was reclaimed.
    reclaimed_seq: u64,
    /// The frame still holding the contents (in flight), if any.
    frame: Option<HostPhysAddr>,
    kind: Option<StoredKind>,
}

/// One VM's reclaimer. See the module docs.
#[derive(Debug)]
pub struct Reclaimer {
    config: ReclaimConfig,
    records: BTreeMap<u64, Record>,
    clean_copies: BTreeSet<u64>,
    store: PageStore,
    feedback: Feedback,
    stats: ReclaimStats,
    /// One page of scratch on the heap (kernel stacks are small).
    page: Box<[u8; PAGE_BYTES]>,
    /// Whether pages that do not compress are kept raw (else left
    /// resident).
    store_raw: bool,
    /// Pages per batch (one flush each).
    batch_pages: usize,
    /// The pages of the batch in flight: (gfn, frame, exchanged entry);
    /// on the heap, [`MAX_BATCH_PAGES`] entries would be 6 KiB of stack.
    in_flight: Vec<(u64, HostPhysAddr, u64)>,
    /// Nanosecond clock for [`ReclaimTimes`], if one was given.
    clock: Option<fn() -> u64>,
    times: ReclaimTimes,
}

fn state_of(kind: StoredKind) -> PageState {
    match kind {
        StoredKind::Zero => PageState::Zero,
        StoredKind::Compressed => PageState::Compressed,
        StoredKind::Raw => PageState::Stored,
    }
}

impl Reclaimer {
    /// A reclaimer with nothing reclaimed, at `now_ms`.
    pub fn new(config: ReclaimConfig, now_ms: u64) -> Self {
        Reclaimer {
            config,
            records: BTreeMap::new(),
            clean_copies: BTreeSet::new(),
            store: PageStore::new(),
            feedback: Feedback::new(config.feedback, now_ms),
            stats: ReclaimStats::default(),
            page: Box::new([0; PAGE_BYTES]),
            store_raw: true,
            batch_pages: BATCH_PAGES,
            in_flight: Vec::with_capacity(MAX_BATCH_PAGES),
            clock: None,
            times: ReclaimTimes::default(),
        }
    }

    /// Pages per batch from now on (one TLB flush each), within
    /// `1..=MAX_BATCH_PAGES` ([`BATCH_PAGES`] by default).
    pub fn set_batch_pages(&mut self, pages: usize) {
        self.batch_pages = pages.clamp(1, MAX_BATCH_PAGES);
    }

    /// Pages per batch.
    pub fn batch_pages(&self) -> usize {
        self.batch_pages
    }

    /// Whether pages that do not compress are kept in the store raw (the
    /// default) or left resident. Pressure-driven reclaim turns raw copies
    /// off: a raw copy costs the heap a frame for the frame it frees.
    pub fn set_store_raw(&mut self, raw_ok: bool) {
        self.store_raw = raw_ok;
    }

    /// Gives the reclaimer a nanosecond clock: from now on it splits its
    /// time into [`ReclaimTimes`].
    pub fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = Some(clock);
    }

    /// Where the time went since the clock was set.
    pub fn times(&self) -> ReclaimTimes {
        self.times
    }

    fn now_ns(&self) -> u64 {
        self.clock.map_or(0, |c| c())
    }

    /// Counters.
    pub fn stats(&self) -> ReclaimStats {
        self.stats
    }

    /// What the store holds (reclaimed pages and clean copies).
    pub fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Resident pages with a clean copy in the store.
    pub fn clean_copies(&self) -> u64 {
        self.clean_copies.len() as u64
    }

    /// The feedback loop.
    pub fn feedback(&self) -> &Feedback {
        &self.feedback
    }

    /// The feedback loop, to end a pass with ([`Feedback::end_pass`]).
    pub fn feedback_mut(&mut self) -> &mut Feedback {
        &mut self.feedback
    }

    /// Where the page holding `gpa` is.
    pub fn state(&self, gpa: GuestPhysAddr) -> PageState {
        match self.records.get(&gpa.page_number()) {
            None => PageState::Resident,
            Some(Record { frame: Some(_), .. }) => PageState::InFlight,
            Some(Record { kind: Some(k), .. }) => state_of(*k),
            Some(_) => PageState::InFlight,
        }
    }

    /// Damages the stored copy of the page holding `gpa`: fault injection
    /// for tests of the corrupt-store path.
    #[doc(hidden)]
    pub fn corrupt_for_test(&mut self, gpa: GuestPhysAddr) -> bool {
        self.store.corrupt_for_test(gpa.page_number())
    }

    /// Drops every clean copy (memory pressure): their pages stay resident
    /// and are compressed again if reclaimed. Returns how many went.
    pub fn drop_clean_copies(&mut self) -> u64 {
        let n = self.clean_copies.len() as u64;
        while let Some(gfn) = self.clean_copies.pop_first() {
            self.store.remove(gfn);
        }
        n
    }

    /// Reclaims the 4 KiB pages at `gpas` (page-aligned guest-physical
    /// addresses), in batches of [`Self::batch_pages`] under one flush each, in
    /// the order of the module docs. The caller holds the VM's writer lock.
    pub fn reclaim_pages<F, M, A, G, T>(
        &mut self,
        tables: &Tables<F, M>,
        mapper: &mut Mapper<A>,
        frames: &mut G,
        flush: &mut T,
        gens: &mut Generations,
        gpas: &[u64],
    ) -> BatchStats
    where
        F: EntryFormat,
        M: TableMemory,
        A: TableAlloc,
        G: GuestFrames,
        T: TlbFlush,
    {
        let mut total = BatchStats::default();
        for chunk in gpas.chunks(self.batch_pages) {
            total.add(self.reclaim_batch(tables, mapper, frames, flush, gens, chunk));
        }
        total
    }

    fn reclaim_batch<F, M, A, G, T>(
        &mut self,
        tables: &Tables<F, M>,
        mapper: &mut Mapper<A>,
        frames: &mut G,
        flush: &mut T,
        gens: &mut Generations,
        gpas: &[u64],
    ) -> BatchStats
    where
        F: EntryFormat,
        M: TableMemory,
        A: TableAlloc,
        G: GuestFrames,
        T: TlbFlush,
    {
        let mut b = BatchStats::default();
        let t_unmap = self.now_ns();
        // (gfn, frame, exchanged entry) of the pages now in flight.
        let mut in_flight = core::mem::take(&mut self.in_flight);
        in_flight.clear();
        for &gpa in gpas.iter().take(self.batch_pages) {
            b.candidates += 1;
            let gpa = gpa & !0xfff;
            let gfn = gpa / 4096;
            if self.records.contains_key(&gfn) {
                continue;
            }
            // Split huge leaves down to 4 KiB first.
            while let Some(t) = tables.translate(GuestPhysAddr::new(gpa)) {
                if t.level == Level::PAGE_4K
                    || mapper
                        .split(tables, GuestPhysAddr::new(gpa), t.level)
                        .is_err()
                {
                    break;
                }
                self.stats.huge_splits += 1;
            }
            if tables
                .translate(GuestPhysAddr::new(gpa))
                .is_none_or(|t| t.level != Level::PAGE_4K)
            {
                b.not_mapped += 1;
                continue;
            }
            // Its generation, for the refault feedback, read while the
            // entry is still there (the tag goes with it).
            let young_seq = gens
                .seq_of(tables, GuestPhysAddr::new(gpa))
                .unwrap_or(gens.max_seq());
            // Deliberately broken twin (`--cfg hvcore_broken_reclaim_dbit`,
            // for the loom models only): A and D taken from a snapshot read
            // before the exchange instead of from the exchanged value.
            #[cfg(hvcore_broken_reclaim_dbit)]
            let before = tables.translate(GuestPhysAddr::new(gpa)).map_or(0, |t| {
                (if t.accessed { F::ACCESSED } else { 0 }) | (if t.dirty { F::DIRTY } else { 0 })
            });
            // Step 1: the one atomic exchange (swap to non-present).
            let mut old = None;
            if mapper
                .unmap(tables, GuestPhysAddr::new(gpa), 4096, |_, _, e| {
                    old = Some(e)
                })
                .is_err()
            {
                continue;
            }
            let Some(old) = old.filter(|&e| F::is_present(e)) else {
                b.not_mapped += 1;
                continue;
            };
            #[cfg(hvcore_broken_reclaim_dbit)]
            let old = (old & !(F::ACCESSED | F::DIRTY)) | before;
            let frame = F::addr(old);
            let perms = F::perms(old);
            if old & F::DIRTY != 0 && self.clean_copies.remove(&gfn) {
                self.store.remove(gfn);
            }
            if old & F::ACCESSED != 0
                && mapper
                    .map(
                        tables,
                        GuestPhysAddr::new(gpa),
                        frame,
                        4096,
                        perms,
                        PageSize::Size4K,
                    )
                    .is_ok()
            {
                // Accessed since the last pass: not cold. Same frame, so a
                // stale translation still points at the right bytes.
                b.rescued += 1;
                self.stats.rescued += 1;
                tables.mark_accessed(GuestPhysAddr::new(gpa), F::ACCESSED);
                continue;
            }
            self.records.insert(
                gfn,
                Record {
                    perms,
                    young_seq,
                    reclaimed_seq: gens.max_seq(),
                    frame: Some(frame),
                    kind: None,
                },
            );
            in_flight.push((gfn, frame, old));
        }
        let t_flush = self.now_ns();
        self.times.unmap_ns += t_flush.saturating_sub(t_unmap);
        if in_flight.is_empty() {
            self.in_flight = in_flight;
            return b;
        }
        // Deliberately broken twin (`--cfg hvcore_broken_reclaim_order`,
        // for the loom models only): the frames are read before the flush,
        // with a forged proof.
        #[cfg(hvcore_broken_reclaim_order)]
        self.inspect(
            tables,
            mapper,
            frames,
            &in_flight,
            &BatchFlushed(()),
            &mut b,
        );
        // Step 2: one flush for the whole batch.
        let flushed = flush_batch(flush);
        #[cfg(hvcore_broken_reclaim_order)]
        drop(flushed);
        self.stats.flushes += 1;
        mapper.tlb_flushed(tables);
        let t_store = self.now_ns();
        self.times.flush_ns += t_store.saturating_sub(t_flush);
        // Step 3: only now look at the frames.
        #[cfg(not(hvcore_broken_reclaim_order))]
        self.inspect(tables, mapper, frames, &in_flight, &flushed, &mut b);
        self.times.store_ns += self.now_ns().saturating_sub(t_store);
        self.in_flight = in_flight;
        b
    }

    /// Step 3 of a batch, after `flushed`: reads each in-flight frame (or
    /// drops it when D was clear and a clean copy exists), stores it and
    /// frees the frame.
    fn inspect<F, M, A, G>(
        &mut self,
        tables: &Tables<F, M>,
        mapper: &mut Mapper<A>,
        frames: &mut G,
        in_flight: &[(u64, HostPhysAddr, u64)],
        flushed: &BatchFlushed,
        b: &mut BatchStats,
    ) where
        F: EntryFormat,
        M: TableMemory,
        A: TableAlloc,
        G: GuestFrames,
    {
        for &(gfn, frame, old) in in_flight {
            let clean = old & F::DIRTY == 0 && self.clean_copies.remove(&gfn);
            let kind = if clean {
                self.stats.clean_drops += 1;
                self.store.kind(gfn).ok_or(StoreError::Missing(gfn))
            } else {
                frames.read_frame(&flushed.frame(frame), &mut self.page);
                self.store.put_as(gfn, &self.page, self.store_raw)
            };
            let kind = match kind {
                Ok(kind) => kind,
                Err(e) => {
                    // The store is full, or the page does not compress and
                    // raw copies are off: put the frame back (its contents
                    // are intact: nobody can have written it since the
                    // flush).
                    if e == StoreError::Incompressible {
                        self.stats.kept_incompressible += 1;
                        b.kept_incompressible += 1;
                    } else {
                        self.stats.store_full += 1;
                    }
                    self.restore_in_flight(tables, mapper, gfn);
                    continue;
                }
            };
            frames.free_guest_frame(gfn, frame);
            self.stats.frames_freed += 1;
            self.stats.reclaimed_pages += 1;
            self.stats.reclaimed_total += 1;
            b.reclaimed += 1;
            match kind {
                StoredKind::Zero => b.zero += 1,
                StoredKind::Compressed => b.compressed += 1,
                StoredKind::Raw => b.raw += 1,
            }
            if let Some(r) = self.records.get_mut(&gfn) {
                r.frame = None;
                r.kind = Some(kind);
            }
        }
    }

    /// Maps an in-flight page's own frame back (nothing was copied).
    fn restore_in_flight<F, M, A>(
        &mut self,
        tables: &Tables<F, M>,
        mapper: &mut Mapper<A>,
        gfn: u64,
    ) -> bool
    where
        F: EntryFormat,
        M: TableMemory,
        A: TableAlloc,
    {
        let Some(&Record {
            perms,
            frame: Some(frame),
            ..
        }) = self.records.get(&gfn)
        else {
            return false;
        };
        let gpa = GuestPhysAddr::new(gfn * 4096);
        if mapper
            .map(tables, gpa, frame, 4096, perms, PageSize::Size4K)
            .is_err()
        {
            // Stays in flight; the fault path retries the mapping.
            return false;
        }
        self.records.remove(&gfn);
        tables.mark_accessed(gpa, F::ACCESSED);
        true
    }

    /// Picks cold pages coldest first from `gens` and reclaims them toward
    /// `target`, at most `max_pages` of them.
    #[expect(
        clippy::too_many_arguments,
        reason = "the reclaimer's collaborators, all needed"
    )]
    pub fn reclaim_toward<F, M, A, G, T>(
        &mut self,
        tables: &Tables<F, M>,
        mapper: &mut Mapper<A>,
        frames: &mut G,
        flush: &mut T,
        gens: &mut Generations,
        target: ReclaimTarget,
        now_ms: u64,
        max_pages: u64,
    ) -> BatchStats
    where
        F: EntryFormat,
        M: TableMemory,
        A: TableAlloc,
        G: GuestFrames,
        T: TlbFlush,
    {
        let mut total = BatchStats::default();
        let after = match target {
            ReclaimTarget::ResidentLimit { .. } => ColdAfter::Gens(RESIDENT_LIMIT_MIN_GENS),
            ReclaimTarget::ColderThan(a) => a,
            ReclaimTarget::Adaptive => ColdAfter::Gens(self.feedback.threshold_gens()),
        };
        let mut batch = [0u64; MAX_BATCH_PAGES];
        loop {
            let t_select = self.now_ns();
            // The histogram is a walk of the tables: only a resident limit
            // needs it.
            let want = match target {
                ReclaimTarget::ResidentLimit { pages } => gens
                    .histogram(tables, now_ms)
                    .map(|b| b.pages)
                    .sum::<u64>()
                    .saturating_sub(pages),
                _ => u64::MAX,
            }
            .min(max_pages.saturating_sub(total.reclaimed));
            if want == 0 {
                break;
            }
            let cap = usize::try_from(want)
                .unwrap_or(self.batch_pages)
                .min(self.batch_pages);
            let mut n = 0;
            'fill: for run in gens.coldest(tables, after, now_ms) {
                for i in 0..run.pages {
                    if n == cap {
                        break 'fill;
                    }
                    batch[n] = run.gpa.as_u64() + i * 4096;
                    n += 1;
                }
            }
            self.times.select_ns += self.now_ns().saturating_sub(t_select);
            if n == 0 {
                break;
            }
            let b = self.reclaim_batch(tables, mapper, frames, flush, gens, &batch[..n]);
            total.add(b);
            if b.reclaimed == 0 && b.rescued == 0 && b.not_mapped == 0 {
                break; // no progress possible (store full, or all in flight)
            }
        }
        total
    }

    /// Brings back a reclaimed page on a nested page fault at `gpa`: a frame
    /// is taken, filled (zeros, decompressed or copied) and only then mapped
    /// (4 KiB, the page's old rights), so the guest never sees a partly
    /// filled page. The caller holds the VM's writer lock.
    pub fn fault_in<F, M, A, G>(
        &mut self,
        tables: &Tables<F, M>,
        mapper: &mut Mapper<A>,
        frames: &mut G,
        gens: &mut Generations,
        gpa: GuestPhysAddr,
        now_ms: u64,
    ) -> Result<FaultIn, FaultError>
    where
        F: EntryFormat,
        M: TableMemory,
        A: TableAlloc,
        G: GuestFrames,
    {
        let t0 = self.now_ns();
        let r = self.fault_in_timed(tables, mapper, frames, gens, gpa, now_ms);
        self.times.fault_in_ns += self.now_ns().saturating_sub(t0);
        r
    }

    fn fault_in_timed<F, M, A, G>(
        &mut self,
        tables: &Tables<F, M>,
        mapper: &mut Mapper<A>,
        frames: &mut G,
        gens: &mut Generations,
        gpa: GuestPhysAddr,
        now_ms: u64,
    ) -> Result<FaultIn, FaultError>
    where
        F: EntryFormat,
        M: TableMemory,
        A: TableAlloc,
        G: GuestFrames,
    {
        let gfn = gpa.page_number();
        let Some(&rec) = self.records.get(&gfn) else {
            return Ok(FaultIn::NotReclaimed);
        };
        let page_gpa = GuestPhysAddr::new(gfn * 4096);
        if rec.frame.is_some() {
            return if self.restore_in_flight(tables, mapper, gfn) {
                Ok(FaultIn::Restored(PageState::InFlight))
            } else {
                Err(FaultError::Map(MapError::OutOfMemory))
            };
        }
        let frame = frames.alloc_frame().ok_or(FaultError::NoFrame)?;
        let kind = match self.store.get(gfn, &mut self.page) {
            Ok(k) => k,
            Err(e) => {
                frames.free_frame(frame);
                return Err(FaultError::Store(e));
            }
        };
        frames.write_frame(frame, &self.page);
        if let Err(e) = mapper.map(tables, page_gpa, frame, 4096, rec.perms, PageSize::Size4K) {
            frames.free_frame(frame);
            return Err(FaultError::Map(e));
        }
        self.records.remove(&gfn);
        if self.config.keep_clean_copies {
            self.clean_copies.insert(gfn);
        } else {
            self.store.remove(gfn);
        }
        self.stats.frames_taken += 1;
        self.stats.refaults += 1;
        self.stats.reclaimed_pages -= 1;
        let max = gens.max_seq();
        self.feedback.refault(
            now_ms,
            max.saturating_sub(rec.reclaimed_seq),
            max.saturating_sub(rec.young_seq),
        );
        // Faulted in for an access: young, as the access would make it.
        tables.mark_accessed(page_gpa, F::ACCESSED);
        Ok(FaultIn::Restored(state_of(kind)))
    }
}
