//! The reclaimer against a model: random guest writes and reads (through a
//! simulated CPU with a TLB), writes racing a reclaim in the window between
//! the unmap and the flush, aging passes, reclaims toward every kind of
//! target, and fault-ins. After every step the guest's view of every page
//! equals the model's, and every host frame the VM holds is accounted for
//! (mapped or given back: "memory comes back").

#![cfg(not(loom))]

mod common;

use common::Watchdog;
use hvcore::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE_2M};
use hvcore::age::age_pass;
use hvcore::arena::HostArena;
use hvcore::flush::{FlushPolicy, TlbFlush};
use hvcore::generations::{ColdAfter, Generations};
use hvcore::npt::Npt;
use hvcore::pte::{EntryFormat, Level, Perms};
use hvcore::reclaim::{
    FaultIn, FlushedFrame, GuestFrames, PageState, ReclaimConfig, ReclaimTarget, Reclaimer,
};
use hvcore::store::PAGE_BYTES;
use hvcore::sync::Ordering;
use hvcore::table::{Mapper, PageSize, TableMemory, Tables};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

type F = Npt;
/// Longer than any case takes (a debug build runs one in well under a
/// second): past it the case is looping, and the watchdog aborts.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Guest pages: the first 2 MiB are mapped with one huge page at start,
/// the rest is faulted in 4 KiB at a time.
const PAGES: u64 = 1024;
const FRAME_BASE: u64 = 1 << 32;

/// The contents the model gives to value `v`: 0 is a zero page, even
/// values compress, odd ones do not.
fn contents(v: u64) -> Box<[u8; PAGE_BYTES]> {
    let mut p = Box::new([0u8; PAGE_BYTES]);
    if v == 0 {
        return p;
    }
    let mut x = v.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for (i, b) in p.iter_mut().enumerate() {
        if v.is_multiple_of(2) {
            *b = (v as u8).wrapping_add((i / 64) as u8);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    p
}

/// Host frames: 4 KiB pieces, some carved from 2 MiB runs.
#[derive(Default)]
struct Frames {
    data: HashMap<u64, Box<[u8; PAGE_BYTES]>>,
    next: u64,
    freed: u64,
    taken: u64,
    /// Frames the test refuses to hand out (overcommit).
    limit: Option<u64>,
}

impl Frames {
    fn take_run(&mut self, pages: u64) -> u64 {
        let base = FRAME_BASE + self.next * 4096;
        for i in 0..pages {
            self.data.insert(base + i * 4096, Box::new([0; PAGE_BYTES]));
        }
        self.next += pages;
        self.taken += pages;
        base
    }
    fn frame(&mut self, hpa: u64) -> &mut [u8; PAGE_BYTES] {
        self.data
            .get_mut(&hpa)
            .unwrap_or_else(|| panic!("access to freed or foreign frame {hpa:#x}"))
    }
}

struct FramesRef<'a>(&'a RefCell<Frames>);

impl GuestFrames for FramesRef<'_> {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        let mut f = self.0.borrow_mut();
        if f.limit.is_some_and(|l| f.data.len() as u64 >= l) {
            return None;
        }
        Some(HostPhysAddr::new(f.take_run(1)))
    }
    fn free_frame(&mut self, frame: HostPhysAddr) {
        let mut f = self.0.borrow_mut();
        assert!(
            f.data.remove(&frame.as_u64()).is_some(),
            "double free {frame:?}"
        );
        f.freed += 1;
    }
    fn read_frame(&mut self, frame: &FlushedFrame, out: &mut [u8; PAGE_BYTES]) {
        out.copy_from_slice(self.0.borrow_mut().frame(frame.frame().as_u64()));
    }
    fn write_frame(&mut self, frame: HostPhysAddr, data: &[u8; PAGE_BYTES]) {
        self.0
            .borrow_mut()
            .frame(frame.as_u64())
            .copy_from_slice(data);
    }
}

/// A vCPU: TLB of page -> (frame, dirty), page walks that set A/D.
#[derive(Default)]
struct Cpu {
    tlb: HashMap<u64, (u64, bool)>,
}

enum Access {
    Done,
    Fault,
}

impl Cpu {
    /// One whole-page write of `v` (or a read when `v` is None), as the CPU
    /// does it: through the TLB if the cached translation allows, else a
    /// walk that sets A (and D) with atomic ORs.
    fn access(
        &mut self,
        tables: &Tables<F, &HostArena>,
        frames: &RefCell<Frames>,
        page: u64,
        v: Option<u64>,
        model: &mut BTreeMap<u64, u64>,
    ) -> Access {
        let write = v.is_some();
        let hpa = match self.tlb.get(&page) {
            Some(&(hpa, dirty)) if dirty || !write => hpa,
            _ => match walk(tables, page * 4096, write) {
                Some(hpa) => {
                    self.tlb.insert(page, (hpa, write));
                    hpa
                }
                None => return Access::Fault,
            },
        };
        let mut f = frames.borrow_mut();
        let frame = f.frame(hpa);
        match v {
            Some(v) => {
                frame.copy_from_slice(&*contents(v));
                model.insert(page, v);
            }
            None => {
                let want = model.get(&page).copied().unwrap_or(0);
                assert!(
                    frame[..] == contents(want)[..],
                    "page {page}: guest reads stale or wrong bytes"
                );
            }
        }
        Access::Done
    }
}

fn walk(tables: &Tables<F, &HostArena>, gpa: u64, write: bool) -> Option<u64> {
    let mut table = tables.root();
    for level in Level::down_from(F::LEVELS) {
        let slot = &tables.mem().table(table)?[F::index(gpa, level)];
        let e = slot.load(Ordering::Acquire);
        if !F::is_present(e) {
            return None;
        }
        slot.fetch_or(F::ACCESSED, Ordering::AcqRel);
        if F::is_leaf(e, level) {
            if write {
                // The locked D update re-checks presence, as the CPU does.
                let now = slot.fetch_or(F::DIRTY, Ordering::AcqRel);
                if !F::is_present(now) {
                    slot.fetch_and(!F::DIRTY, Ordering::AcqRel);
                    return None;
                }
            }
            return Some(F::addr(e).as_u64() + (gpa & (F::level_size(level) - 1)));
        }
        table = F::addr(e);
    }
    None
}

/// The flush: first lets the racing writes scheduled for this window run
/// (through the TLB, or faulting), then empties the TLB.
struct RacyFlush<'a> {
    cpu: &'a RefCell<Cpu>,
    tables: &'a Tables<F, &'a HostArena>,
    frames: &'a RefCell<Frames>,
    model: &'a RefCell<BTreeMap<u64, u64>>,
    racing: Vec<(u64, u64)>,
    /// Racing writes that faulted: the vCPU waits for the lock.
    blocked: Vec<(u64, u64)>,
    flushes: u64,
}

impl TlbFlush for RacyFlush<'_> {
    fn flush_guest_tlb(&mut self) {
        for (page, v) in std::mem::take(&mut self.racing) {
            let mut model = self.model.borrow_mut();
            let mut cpu = self.cpu.borrow_mut();
            if let Access::Fault = cpu.access(self.tables, self.frames, page, Some(v), &mut model) {
                self.blocked.push((page, v));
            }
        }
        self.cpu.borrow_mut().tlb.clear();
        self.flushes += 1;
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(u64, u64),
    Read(u64),
    Age,
    /// An aging pass whose flush is skipped: translations stay cached
    /// while A is clear, so later writes bypass the entry.
    AgeNoFlush,
    /// Reclaim toward a target; racing writes happen before its flush.
    Reclaim(u8, Vec<(u64, u64)>),
    /// Reclaim one given page; racing writes happen before its flush.
    ReclaimOne(u64, Vec<(u64, u64)>),
}

fn op() -> impl Strategy<Value = Op> {
    let page = prop_oneof![0..16u64, 500..530u64, 0..PAGES];
    let value = prop_oneof![Just(0u64), 1..6u64];
    let racing = proptest::collection::vec((page.clone(), value.clone()), 0..3);
    prop_oneof![
        4 => (page.clone(), value).prop_map(|(p, v)| Op::Write(p, v)),
        3 => page.clone().prop_map(Op::Read),
        2 => Just(Op::Age),
        1 => Just(Op::AgeNoFlush),
        2 => (0..4u8, racing.clone()).prop_map(|(t, r)| Op::Reclaim(t, r)),
        2 => (page, racing).prop_map(|(p, r)| Op::ReclaimOne(p, r)),
    ]
}

struct Vm<'a> {
    tables: &'a Tables<F, &'a HostArena>,
    mapper: Mapper<&'a HostArena>,
    gens: Generations,
    rec: Reclaimer,
    frames: &'a RefCell<Frames>,
    cpu: &'a RefCell<Cpu>,
    model: &'a RefCell<BTreeMap<u64, u64>>,
    now_ms: u64,
}

impl Vm<'_> {
    /// The vCPU's fault path: bring a reclaimed page back, or back a
    /// never-touched page with a fresh zeroed frame.
    fn fault(&mut self, page: u64) {
        let gpa = GuestPhysAddr::new(page * 4096);
        let r = self.rec.fault_in(
            self.tables,
            &mut self.mapper,
            &mut FramesRef(self.frames),
            &mut self.gens,
            gpa,
            self.now_ms,
        );
        match r.expect("fault-in failed") {
            FaultIn::Restored(_) => {}
            FaultIn::NotReclaimed => {
                let hpa = self.frames.borrow_mut().take_run(1);
                self.mapper
                    .map(
                        self.tables,
                        gpa,
                        HostPhysAddr::new(hpa),
                        4096,
                        Perms::RW,
                        PageSize::Size4K,
                    )
                    .expect("first-touch map");
                // New entries start old; the access retried next sets A,
                // which makes the page young in the next pass.
            }
        }
    }

    fn access(&mut self, page: u64, v: Option<u64>) {
        for _ in 0..3 {
            let r = self.cpu.borrow_mut().access(
                self.tables,
                self.frames,
                page,
                v,
                &mut self.model.borrow_mut(),
            );
            match r {
                Access::Done => return,
                Access::Fault => self.fault(page),
            }
        }
        panic!("page {page} still faults after fault-in");
    }

    fn reclaim(
        &mut self,
        racing: Vec<(u64, u64)>,
        what: impl FnOnce(&mut Self, &mut RacyFlush<'_>),
    ) {
        let mut flush = RacyFlush {
            cpu: self.cpu,
            tables: self.tables,
            frames: self.frames,
            model: self.model,
            racing,
            blocked: Vec::new(),
            flushes: 0,
        };
        what(self, &mut flush);
        // Racing writes that never met a flush happen now; those that
        // faulted proceed after the reclaimer dropped the lock.
        let late: Vec<_> = flush
            .racing
            .drain(..)
            .chain(flush.blocked.drain(..))
            .collect();
        for (page, v) in late {
            self.access(page, Some(v));
        }
    }

    fn check_all(&mut self) {
        for page in 0..PAGES {
            self.access(page, None);
        }
    }

    /// Every frame the VM holds is mapped exactly once.
    fn check_frames(&self) {
        let mut mapped = 0u64;
        self.tables.for_each_leaf(0, u64::MAX, |_, level, _| {
            mapped += F::level_size(level) / 4096;
        });
        let f = self.frames.borrow();
        assert_eq!(f.data.len() as u64, mapped, "frames held vs pages mapped");
        assert_eq!(f.taken - f.freed, mapped);
        let resident: u64 = self
            .gens
            .histogram(self.tables, self.now_ms)
            .map(|b| b.pages)
            .sum();
        assert_eq!(
            resident, mapped,
            "generations track exactly the mapped pages"
        );
    }
}

fn run(ops: Vec<Op>, keep_clean_copies: bool) -> hvcore::reclaim::ReclaimStats {
    let arena = HostArena::new(64);
    let mut alloc = &arena;
    let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
    let frames = RefCell::new(Frames::default());
    let cpu = RefCell::new(Cpu::default());
    let model = RefCell::new(BTreeMap::new());
    let mut mapper = Mapper::new(&tables, &arena);
    let huge = frames.borrow_mut().take_run(512);
    mapper
        .map(
            &tables,
            GuestPhysAddr::new(0),
            HostPhysAddr::new(huge),
            PAGE_SIZE_2M,
            Perms::RW,
            PageSize::Size2M,
        )
        .unwrap();
    let gens = Generations::new(0);
    // The guest's first pages count their age from now.
    assert_eq!(gens.adopt(&tables), 512);
    let config = ReclaimConfig {
        keep_clean_copies,
        ..ReclaimConfig::default()
    };
    let mut vm = Vm {
        tables: &tables,
        mapper,
        gens,
        rec: Reclaimer::new(config, 0),
        frames: &frames,
        cpu: &cpu,
        model: &model,
        now_ms: 0,
    };
    for op in ops {
        vm.now_ms += 10;
        match op {
            Op::Write(p, v) => vm.access(p, Some(v)),
            Op::Read(p) => vm.access(p, None),
            Op::AgeNoFlush => {
                let mut none = hvcore::flush::CountingFlush::default();
                age_pass(
                    &tables,
                    &mut vm.gens,
                    vm.now_ms,
                    &mut none,
                    FlushPolicy::Never,
                );
            }
            Op::Age => {
                let mut flush = RacyFlush {
                    cpu: &cpu,
                    tables: &tables,
                    frames: &frames,
                    model: &model,
                    racing: Vec::new(),
                    blocked: Vec::new(),
                    flushes: 0,
                };
                age_pass(
                    &tables,
                    &mut vm.gens,
                    vm.now_ms,
                    &mut flush,
                    FlushPolicy::OncePerPass,
                );
            }
            Op::Reclaim(t, racing) => {
                let target = match t {
                    0 => ReclaimTarget::ResidentLimit { pages: 100 },
                    1 => ReclaimTarget::ColderThan(ColdAfter::Gens(1)),
                    2 => ReclaimTarget::ColderThan(ColdAfter::Millis(30)),
                    _ => ReclaimTarget::Adaptive,
                };
                vm.reclaim(racing, |vm, flush| {
                    vm.rec.reclaim_toward(
                        vm.tables,
                        &mut vm.mapper,
                        &mut FramesRef(vm.frames),
                        flush,
                        &mut vm.gens,
                        target,
                        vm.now_ms,
                        u64::MAX,
                    );
                });
            }
            Op::ReclaimOne(p, racing) => {
                vm.reclaim(racing, |vm, flush| {
                    vm.rec.reclaim_pages(
                        vm.tables,
                        &mut vm.mapper,
                        &mut FramesRef(vm.frames),
                        flush,
                        &mut vm.gens,
                        &[p * 4096],
                    );
                });
            }
        }
        vm.check_frames();
        let s = vm.rec.stats();
        assert_eq!(s.frames_freed - s.frames_taken, s.reclaimed_pages);
    }
    let stats = vm.rec.stats();
    vm.check_all();
    vm.check_frames();
    stats
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn reclaimed_pages_always_read_back_as_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let _dog = Watchdog::new(format!("case {ops:?}"), LIMIT);
        run(ops, true);
    }

    #[test]
    fn without_clean_copies_too(ops in proptest::collection::vec(op(), 1..60)) {
        let _dog = Watchdog::new(format!("case {ops:?}"), LIMIT);
        run(ops, false);
    }
}

/// A guest writes distinct data everywhere, sleeps, and is reclaimed down
/// to nothing: every frame comes back, the store holds zero pages without
/// data, and everything reads back after fault-in.
#[test]
fn memory_comes_back_and_returns_byte_for_byte() {
    let mut ops = Vec::new();
    for p in 0..PAGES {
        ops.push(Op::Write(p, p % 7));
    }
    ops.extend([Op::Age, Op::Age, Op::Age, Op::Reclaim(1, Vec::new())]);
    let s = run(ops, true);
    assert_eq!(
        s.reclaimed_total, PAGES,
        "a sleeping guest is reclaimed entirely"
    );
    assert_eq!(s.frames_freed, PAGES);
    assert_eq!(s.huge_splits, 1);
}

/// A resident limit never takes a page young in the last two passes: a
/// guest that missed one pass keeps everything; one more pass without a
/// touch and it is reclaimed down to the limit.
#[test]
fn resident_limit_spares_a_guest_that_missed_one_pass() {
    let write_all = || (0..PAGES).map(|p| Op::Write(p, p % 5 + 1));
    // Pass 1 finds every page young; pass 2 finds none (the guest did not
    // run in that interval).
    let mut ops: Vec<Op> = write_all().collect();
    ops.extend([Op::Age, Op::Age, Op::Reclaim(0, Vec::new())]);
    assert_eq!(run(ops, true).reclaimed_total, 0, "one missed pass");
    let mut ops: Vec<Op> = write_all().collect();
    ops.extend([Op::Age, Op::Age, Op::Age, Op::Reclaim(0, Vec::new())]);
    assert_eq!(
        run(ops, true).reclaimed_total,
        PAGES - 100,
        "two missed passes: down to the limit of 100"
    );
}

/// Every state of the page state machine is reached, and a page written
/// during the reclaim window is never dropped with stale contents.
#[test]
fn states_and_the_racing_write() {
    let arena = HostArena::new(64);
    let mut alloc = &arena;
    let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
    let frames = RefCell::new(Frames::default());
    let cpu = RefCell::new(Cpu::default());
    let model = RefCell::new(BTreeMap::new());
    let mapper = Mapper::new(&tables, &arena);
    let mut vm = Vm {
        tables: &tables,
        mapper,
        gens: Generations::new(0),
        rec: Reclaimer::new(ReclaimConfig::default(), 0),
        frames: &frames,
        cpu: &cpu,
        model: &model,
        now_ms: 0,
    };
    vm.access(1, Some(0));
    vm.access(2, Some(2));
    vm.access(3, Some(3));
    vm.access(4, Some(4));
    let mut flush = RacyFlush {
        cpu: &cpu,
        tables: &tables,
        frames: &frames,
        model: &model,
        racing: Vec::new(),
        blocked: Vec::new(),
        flushes: 0,
    };
    // Age without flushing: page 4's dirty translation stays cached (as
    // after any access between a pass and its flush), its entry has A clear.
    age_pass(&tables, &mut vm.gens, 10, &mut flush, FlushPolicy::Never);
    assert!(cpu.borrow().tlb.get(&4).is_some_and(|&(_, dirty)| dirty));
    // Page 4 is written again through its cached dirty translation in the
    // window between the exchange and the flush.
    vm.reclaim(vec![(4, 6)], |vm, flush| {
        let b = vm.rec.reclaim_pages(
            vm.tables,
            &mut vm.mapper,
            &mut FramesRef(vm.frames),
            flush,
            &mut vm.gens,
            &[4096, 2 * 4096, 3 * 4096, 4 * 4096],
        );
        assert_eq!(b.reclaimed, 4);
        assert_eq!(flush.flushes, 1, "one flush per batch");
        assert!(
            flush.blocked.is_empty(),
            "the write went through the cached translation"
        );
    });
    let st = |vm: &Vm<'_>, p: u64| vm.rec.state(GuestPhysAddr::new(p * 4096));
    assert_eq!(st(&vm, 1), PageState::Zero);
    assert_eq!(st(&vm, 2), PageState::Compressed);
    assert_eq!(st(&vm, 3), PageState::Stored);
    assert_eq!(st(&vm, 4), PageState::Compressed);
    assert_eq!(model.borrow()[&4], 6);
    vm.access(4, None); // faults, restores 6, not the stale 4
    assert_eq!(st(&vm, 4), PageState::Resident);
    // Restored with D clear and a clean copy: dropped unread next time.
    age_pass(
        &tables,
        &mut vm.gens,
        15,
        &mut flush,
        FlushPolicy::OncePerPass,
    );
    vm.reclaim(Vec::new(), |vm, flush| {
        vm.rec.reclaim_pages(
            vm.tables,
            &mut vm.mapper,
            &mut FramesRef(vm.frames),
            flush,
            &mut vm.gens,
            &[4 * 4096],
        );
    });
    assert_eq!(vm.rec.stats().clean_drops, 1);
    vm.access(4, None);
    // Now a write lands on the restored page before the next reclaim: D is
    // set, the copy is stale and must not be used.
    vm.access(4, Some(2));
    vm.cpu.borrow_mut().tlb.clear();
    age_pass(
        &tables,
        &mut vm.gens,
        20,
        &mut flush,
        FlushPolicy::OncePerPass,
    );
    vm.reclaim(Vec::new(), |vm, flush| {
        vm.rec.reclaim_pages(
            vm.tables,
            &mut vm.mapper,
            &mut FramesRef(vm.frames),
            flush,
            &mut vm.gens,
            &[4 * 4096],
        );
    });
    assert_eq!(vm.rec.stats().clean_drops, 1);
    vm.check_all();
    // A page touched since the last pass is rescued, not reclaimed.
    vm.access(3, None);
    vm.reclaim(Vec::new(), |vm, flush| {
        let b = vm.rec.reclaim_pages(
            vm.tables,
            &mut vm.mapper,
            &mut FramesRef(vm.frames),
            flush,
            &mut vm.gens,
            &[3 * 4096],
        );
        assert_eq!(b.rescued, 1);
    });
    assert_eq!(st(&vm, 3), PageState::Resident);
    vm.check_frames();
}

/// Fault-in without a free frame is an error the caller turns into a pause
/// (overcommit), and succeeds once memory is back; a corrupt store entry is
/// an error, not a panic.
#[test]
fn no_frame_and_corrupt_store_are_errors() {
    let arena = HostArena::new(64);
    let mut alloc = &arena;
    let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
    let frames = RefCell::new(Frames::default());
    let cpu = RefCell::new(Cpu::default());
    let model = RefCell::new(BTreeMap::new());
    let mut vm = Vm {
        tables: &tables,
        mapper: Mapper::new(&tables, &arena),
        gens: Generations::new(0),
        rec: Reclaimer::new(ReclaimConfig::default(), 0),
        frames: &frames,
        cpu: &cpu,
        model: &model,
        now_ms: 0,
    };
    vm.access(7, Some(3));
    vm.access(8, Some(4));
    age_pass(
        &tables,
        &mut vm.gens,
        10,
        &mut hvcore::flush::CountingFlush::default(),
        FlushPolicy::OncePerPass,
    );
    vm.reclaim(Vec::new(), |vm, flush| {
        vm.rec.reclaim_pages(
            vm.tables,
            &mut vm.mapper,
            &mut FramesRef(vm.frames),
            flush,
            &mut vm.gens,
            &[7 * 4096],
        );
    });
    frames.borrow_mut().limit = Some(0);
    let gpa = GuestPhysAddr::new(7 * 4096);
    let r = vm.rec.fault_in(
        &tables,
        &mut vm.mapper,
        &mut FramesRef(&frames),
        &mut vm.gens,
        gpa,
        0,
    );
    assert_eq!(r, Err(hvcore::reclaim::FaultError::NoFrame));
    assert_eq!(vm.rec.state(gpa), PageState::Stored);
    frames.borrow_mut().limit = None;
    vm.access(7, None);
    vm.reclaim(Vec::new(), |vm, flush| {
        vm.rec.drop_clean_copies();
        vm.rec.reclaim_pages(
            vm.tables,
            &mut vm.mapper,
            &mut FramesRef(vm.frames),
            flush,
            &mut vm.gens,
            &[8 * 4096],
        );
    });
    let gpa8 = GuestPhysAddr::new(8 * 4096);
    assert_eq!(vm.rec.state(gpa8), PageState::Compressed);
    assert!(vm.rec.corrupt_for_test(gpa8));
    let taken = frames.borrow().data.len();
    let r = vm.rec.fault_in(
        &tables,
        &mut vm.mapper,
        &mut FramesRef(&frames),
        &mut vm.gens,
        gpa8,
        0,
    );
    assert_eq!(
        r,
        Err(hvcore::reclaim::FaultError::Store(
            hvcore::store::StoreError::Corrupt(8)
        ))
    );
    assert_eq!(
        frames.borrow().data.len(),
        taken,
        "the frame taken for it went back"
    );
    assert!(tables.translate(gpa8).is_none(), "nothing wrong was mapped");
    vm.check_frames();
}

/// A page accessed since the last pass (A set) is young now and never
/// offered as cold: with a target in milliseconds the current generation
/// itself is cold once the last pass is old enough, and a round that
/// offered A-set pages rescued the same page again and again, each batch
/// counting the rescue as progress (a round that never ends aborts the
/// test binary through the watchdog).
#[test]
fn a_rescued_page_is_not_taken_again_in_the_same_round() {
    fn round(target: ReclaimTarget) -> (u64, u64, bool) {
        let arena = HostArena::new(16);
        let mut alloc = &arena;
        let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
        let frames = RefCell::new(Frames::default());
        let mut mapper = Mapper::new(&tables, &arena);
        let hpa = frames.borrow_mut().take_run(4);
        mapper
            .map(
                &tables,
                GuestPhysAddr::new(0),
                HostPhysAddr::new(hpa),
                4 * 4096,
                Perms::RW,
                PageSize::Size4K,
            )
            .unwrap();
        let mut gens = Generations::new(0);
        let mut flush = hvcore::flush::CountingFlush::default();
        age_pass(&tables, &mut gens, 0, &mut flush, FlushPolicy::OncePerPass);
        // Page 1 is accessed after the pass; the others are not.
        assert!(walk(&tables, 4096, false).is_some());
        let mut rec = Reclaimer::new(ReclaimConfig::default(), 0);
        let b = rec.reclaim_toward(
            &tables,
            &mut mapper,
            &mut FramesRef(&frames),
            &mut flush,
            &mut gens,
            target,
            1000,
            u64::MAX,
        );
        let mapped = tables.translate(GuestPhysAddr::new(4096)).is_some();
        (b.reclaimed, b.rescued, mapped)
    }
    for target in [
        ReclaimTarget::ColderThan(ColdAfter::Millis(30)),
        ReclaimTarget::ColderThan(ColdAfter::Gens(0)),
    ] {
        let dog = Watchdog::new(format!("reclaim round {target:?}"), LIMIT);
        let got = round(target);
        drop(dog);
        // Pages 0, 2 and 3 go; page 1, accessed since the last pass, is
        // young now whatever the threshold: never offered, so never
        // rescued, and the round ends.
        let (reclaimed, rescued, mapped) = got;
        assert_eq!(rescued, 0, "{target:?}: {got:?}");
        assert!(mapped, "{target:?}: {got:?}");
        assert_eq!(reclaimed + u64::from(mapped), 4, "{target:?}: {got:?}");
    }
}
