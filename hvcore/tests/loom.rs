//! Loom models of the lockless aging walk racing everything that changes
//! the tables under it. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p hvcore --release --target-dir target/loom -- loom`.
//!
//! The models use [`TinyFormat`] (NPT bits, 2 entries per table, 2 levels)
//! so that a whole walk, a whole map or unmap, and the simulated CPU are a
//! few dozen atomic operations, and they run the crate's real walk, aging
//! pass, mapper and epoch code (the atomics come from `hvcore::sync`).
//!
//! The deliberately broken aging helper (a non-atomic load + store) is
//! compiled with `--cfg hvcore_broken_aging`:
//! `RUSTFLAGS="--cfg loom --cfg hvcore_broken_aging" cargo test -p hvcore
//! --release --target-dir target/loom-broken -- loom_aging` makes
//! `loom_aging_never_loses_a_dirty_bit`, `loom_aging_vs_unmap_and_remap` and
//! `loom_aging_vs_split` fail, and of the retirement models
//! `loom_retire_vs_cpu_setting_a_and_d`, `loom_retire_vs_unmap_and_remap`,
//! `loom_pass_retiring_stale_tags_vs_cpu` and
//! `loom_pass_retiring_stale_tags_vs_unmap`.
#![cfg(loom)]

use hvcore::addr::{GuestPhysAddr, HostPhysAddr};
use hvcore::age::{ClearYoung, PassStats, Stamp, age_range, test_and_clear_young};
use hvcore::epoch::EpochDomain;
use hvcore::generations::{Generations, tag_of};
use hvcore::pte::{EntryFormat, Level, Perms, TinyFormat as T};
use hvcore::sync::{AtomicBool, AtomicU64, Ordering};
use hvcore::table::{Mapper, PageSize, TableAlloc, TableMemory, Tables};
use loom::sync::Arc;
use loom::thread;

const BASE: u64 = 0x10_0000;
const PAGES: usize = 4;
/// Written into every entry of a freed page: present, large, A and D set,
/// so any walker that acted on a freed page would change it or follow it.
const POISON: u64 = 0x0000_dead_0000_0fe7;

struct LoomMem {
    pages: Vec<Box<[AtomicU64]>>,
    freed: Vec<AtomicBool>,
}

impl LoomMem {
    fn new() -> Arc<Self> {
        Arc::new(LoomMem {
            pages: (0..PAGES)
                .map(|_| (0..T::ENTRIES).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            freed: (0..PAGES).map(|_| AtomicBool::new(false)).collect(),
        })
    }
    fn index(hpa: HostPhysAddr) -> usize {
        let i = (hpa.as_u64() - BASE) / 4096;
        assert!((i as usize) < PAGES, "walker followed a bogus link {hpa:?}");
        i as usize
    }
    fn poison_intact(&self) -> bool {
        (0..PAGES).all(|i| {
            !self.freed[i].load(Ordering::SeqCst)
                || self.pages[i]
                    .iter()
                    .all(|e| e.load(Ordering::SeqCst) == POISON)
        })
    }
}

#[derive(Clone)]
struct Mem(Arc<LoomMem>);

impl TableMemory for Mem {
    fn table(&self, table: HostPhysAddr) -> Option<&[AtomicU64]> {
        let i = LoomMem::index(table);
        assert!(
            !self.0.freed[i].load(Ordering::SeqCst),
            "a walker reached a freed table page"
        );
        Some(&self.0.pages[i])
    }
}

struct Alloc {
    mem: Arc<LoomMem>,
    free: Vec<usize>,
}

impl TableAlloc for Alloc {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        let i = self.free.pop()?;
        self.mem.freed[i].store(false, Ordering::SeqCst);
        Some(HostPhysAddr::new(BASE + i as u64 * 4096))
    }
    fn free_table(&mut self, table: HostPhysAddr) {
        let i = LoomMem::index(table);
        self.mem.freed[i].store(true, Ordering::SeqCst);
        for e in self.mem.pages[i].iter() {
            e.store(POISON, Ordering::SeqCst);
        }
    }
}

type Tree = Tables<T, Mem>;

/// A tree with `gpa 0..8 KiB` mapped as 4 KiB pages (a level-1 table), or
/// as one 8 KiB "huge" leaf, and the writer that owns it.
fn setup(huge: bool) -> (Arc<Tree>, Mapper<Alloc>, Arc<LoomMem>) {
    let mem = LoomMem::new();
    let mut alloc = Alloc {
        mem: mem.clone(),
        free: (0..PAGES).rev().collect(),
    };
    let tables = Tables::<T, _>::new(Mem(mem.clone()), &mut alloc).unwrap();
    let mut m = Mapper::new(&tables, alloc);
    let page = if huge {
        PageSize::Size2M
    } else {
        PageSize::Size4K
    };
    m.map(
        &tables,
        GuestPhysAddr::new(0),
        HostPhysAddr::new(0x40_0000),
        8192,
        Perms::RW,
        page,
    )
    .unwrap();
    (Arc::new(tables), m, mem)
}

/// The simulated CPU's walk: A on every level it passes, D on a written
/// leaf, each with a locked OR, top-down as the hardware does.
fn cpu_access(tables: &Tree, gpa: u64, write: bool) {
    let mut table = tables.root();
    for level in Level::down_from(T::LEVELS) {
        let slot = &tables.mem().table(table).unwrap()[T::index(gpa, level)];
        let e = slot.load(Ordering::Acquire);
        if !T::is_present(e) {
            return;
        }
        slot.fetch_or(T::ACCESSED, Ordering::AcqRel);
        if T::is_leaf(e, level) {
            if write {
                slot.fetch_or(T::DIRTY, Ordering::AcqRel);
            }
            return;
        }
        table = T::addr(e);
    }
}

fn leaf_entry(tables: &Tree, gpa: u64) -> (u64, u64) {
    let root = tables.mem().table(tables.root()).unwrap()[T::index(gpa, Level::PAGE_2M)]
        .load(Ordering::SeqCst);
    if T::is_table(root, Level::PAGE_2M) {
        let leaf = tables.mem().table(T::addr(root)).unwrap()[T::index(gpa, Level::PAGE_4K)]
            .load(Ordering::SeqCst);
        (root, leaf)
    } else {
        (root, root)
    }
}

/// The generations of the passes these models run: pass 2 (tag 3).
fn gens() -> Generations {
    let mut g = Generations::new(0);
    g.begin_pass(1);
    g
}

fn age(tables: &Tree) -> (PassStats, Vec<(u64, Level, u64)>) {
    let mut young = Vec::new();
    let stats = age_range(tables, &gens(), 0, u64::MAX, |gpa, level, e| {
        young.push((gpa, level, e))
    });
    (stats, young)
}

/// Exhaustive exploration (no preemption bound): all six models together
/// take a few seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    loom::model(f);
}

/// The CPU writes a young, clean page while a pass ages it: D must survive.
#[test]
fn loom_aging_never_loses_a_dirty_bit() {
    model(|| {
        let (tables, _m, _mem) = setup(false);
        cpu_access(&tables, 0, false);
        let t2 = tables.clone();
        let cpu = thread::spawn(move || cpu_access(&t2, 0, true));
        let (_, young) = age(&tables);
        cpu.join().unwrap();
        let (_, leaf) = leaf_entry(&tables, 0);
        assert!(
            leaf & T::DIRTY != 0,
            "the D bit the CPU set was lost: {leaf:#x}"
        );
        // The access before the pass is reported, or still recorded.
        assert!(!young.is_empty() || leaf & T::ACCESSED != 0);
    });
}

/// A writer unmaps the young page and maps another frame there, which the
/// guest then touches, while a pass ages it. A clear must land only on an
/// entry the pass examined: if the new mapping's A is clear at the end, the
/// pass must have reported that very mapping young.
#[test]
fn loom_aging_vs_unmap_and_remap() {
    model(|| {
        let (tables, mut m, _mem) = setup(false);
        cpu_access(&tables, 0, false);
        let t2 = tables.clone();
        let writer = thread::spawn(move || {
            m.unmap(&t2, GuestPhysAddr::new(0), 4096, |_, _, _| {})
                .unwrap();
            m.map(
                &t2,
                GuestPhysAddr::new(0),
                HostPhysAddr::new(0x80_0000),
                4096,
                Perms::RW,
                PageSize::Size4K,
            )
            .unwrap();
            cpu_access(&t2, 0, false);
        });
        let (_, young) = age(&tables);
        writer.join().unwrap();
        let (_, leaf) = leaf_entry(&tables, 0);
        assert_eq!(T::addr(leaf).as_u64(), 0x80_0000);
        let new_reported = young
            .iter()
            .any(|&(_, _, e)| T::addr(e).as_u64() == 0x80_0000);
        assert!(
            leaf & T::ACCESSED != 0 || new_reported,
            "A of the new mapping was cleared by a pass that never examined it; reported {young:x?}"
        );
    });
}

/// A writer splits a young huge leaf while a pass ages it. The pass must
/// never clear the A bit of the new non-leaf entry without scanning the
/// table under it, and the young huge page must not be forgotten.
#[test]
fn loom_aging_vs_split() {
    model(|| {
        let (tables, mut m, _mem) = setup(true);
        cpu_access(&tables, 0, false);
        let t2 = tables.clone();
        let writer = thread::spawn(move || {
            m.split(&t2, GuestPhysAddr::new(0), Level::PAGE_2M).unwrap();
        });
        let (stats, young) = age(&tables);
        writer.join().unwrap();
        let (root, leaf) = leaf_entry(&tables, 0);
        assert!(T::is_table(root, Level::PAGE_2M));
        if root & T::ACCESSED == 0 {
            assert_eq!(
                stats.tables_entered, 1,
                "parent A cleared without scanning its children"
            );
        }
        assert!(!young.is_empty() || (root & T::ACCESSED != 0 && leaf & T::ACCESSED != 0));
    });
}

/// A writer collapses a table of two young leaves (one dirty) into a huge
/// leaf while a pass ages them: the D bit survives the collapse, and the
/// accesses are either reported by the pass or still recorded in the new
/// leaf.
#[test]
fn loom_aging_vs_collapse() {
    model(|| {
        let (tables, mut m, _mem) = setup(false);
        cpu_access(&tables, 0, false);
        cpu_access(&tables, 4096, true);
        let t2 = tables.clone();
        let writer = thread::spawn(move || {
            m.collapse(&t2, GuestPhysAddr::new(0), Level::PAGE_2M)
                .unwrap();
            m
        });
        let (_, young) = age(&tables);
        let _m = writer.join().unwrap();
        let (root, leaf) = leaf_entry(&tables, 0);
        assert!(
            T::is_leaf(root, Level::PAGE_2M) && root == leaf,
            "collapsed into one huge leaf"
        );
        assert!(
            leaf & T::DIRTY != 0,
            "the D bit was lost in the collapse: {leaf:#x}"
        );
        assert!(
            !young.is_empty() || leaf & T::ACCESSED != 0,
            "accesses lost"
        );
    });
}

/// The CPU touches a page while a pass runs (no TLB here: every access
/// walks, setting A top-down one level at a time). The access must be
/// reported by that pass or the next one, even when the walk straddles the
/// pass (parent A set before the pass cleared it, leaf A after the pass read
/// the leaf): that is what the rescan mark on cleared parents is for. With
/// the mark disabled (the non-leaf case of `aged` reduced to clearing A),
/// loom finds the lost access.
#[test]
fn loom_access_during_pass_is_seen_by_this_or_next_pass() {
    model(|| {
        let (tables, _m, _mem) = setup(false);
        // Page 0 was touched before the pass, so the pass enters the table.
        cpu_access(&tables, 0, false);
        let t2 = tables.clone();
        let cpu = thread::spawn(move || cpu_access(&t2, 4096, false));
        let (_, during) = age(&tables);
        cpu.join().unwrap();
        let (_, after) = age(&tables);
        assert!(
            during.iter().chain(&after).any(|&(gpa, _, _)| gpa == 4096),
            "an access made during a pass was lost"
        );
    });
}

/// A writer unlinks a table (unmap of its whole range), flushes and tries to
/// free it while a pass walks through it. The page may be freed only when
/// the walker is gone: no walker reaches a freed page, no write lands in
/// one, and once the walker is done the page does go back.
#[test]
fn loom_unlink_vs_walker() {
    model(|| {
        let (tables, mut m, mem) = setup(false);
        cpu_access(&tables, 4096, true);
        let t2 = tables.clone();
        let writer = thread::spawn(move || {
            m.unmap(&t2, GuestPhysAddr::new(0), 8192, |_, _, _| {})
                .unwrap();
            m.tlb_flushed(&t2);
            m
        });
        let _ = age(&tables);
        let mut m = writer.join().unwrap();
        assert!(mem.poison_intact(), "a write landed in a freed table page");
        m.reclaim(&tables);
        assert_eq!(
            m.retired_pages(),
            0,
            "the page must go back once the walker is gone"
        );
    });
}

/// The same race with the grace period left out (the table is freed right
/// after it is unlinked): loom must find the walker touching the freed
/// page. This shows the model above can fail.
#[test]
#[should_panic(expected = "freed table page")]
fn loom_unlink_without_grace_period_is_caught() {
    model(|| {
        let (tables, m, mem) = setup(false);
        cpu_access(&tables, 4096, true);
        let t2 = tables.clone();
        let mut alloc = Alloc {
            mem: mem.clone(),
            free: Vec::new(),
        };
        drop(m);
        let writer = thread::spawn(move || {
            let root = &t2.mem().table(t2.root()).unwrap()[0];
            let old = root.swap(0, Ordering::AcqRel);
            for e in t2.mem().table(T::addr(old)).unwrap().iter() {
                e.swap(0, Ordering::AcqRel);
            }
            alloc.free_table(T::addr(old));
        });
        let _ = age(&tables);
        writer.join().unwrap();
        assert!(mem.poison_intact(), "a write landed in a freed table page");
    });
}

/// The epoch protocol alone: a walker pins and follows a link; the writer
/// clears the link, retires the target and frees it only if quiescent.
#[test]
fn loom_epoch_grace_period() {
    model(|| {
        let domain = Arc::new(EpochDomain::new());
        let link = Arc::new(AtomicU64::new(1));
        let freed = Arc::new(AtomicBool::new(false));
        let (d2, l2, f2) = (domain.clone(), link.clone(), freed.clone());
        let walker = thread::spawn(move || {
            let _g = d2.pin();
            if l2.load(Ordering::Acquire) == 1 {
                assert!(!f2.load(Ordering::Relaxed), "read a freed page");
            }
        });
        link.store(0, Ordering::Release);
        let r = domain.retire_epoch();
        if domain.is_quiescent(r) {
            freed.store(true, Ordering::Relaxed);
        }
        walker.join().unwrap();
    });
}

/// More walkers than slots: two walkers share the one slot of a domain
/// while the writer unlinks, retires and frees if quiescent. Whatever the
/// order of the joins, the epoch reads, the merges and the retirement, a
/// walker that can still reach the page keeps it allocated; once both have
/// left, the slot is empty again and the retirement quiescent.
#[test]
fn loom_epoch_walkers_share_a_slot() {
    // Three threads of a dozen atomic steps each: bounded like the
    // reclaim models (every interleaving with up to three preemptions).
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let domain = Arc::new(EpochDomain::<1>::with_slots());
        let link = Arc::new(AtomicU64::new(1));
        let freed = Arc::new(AtomicBool::new(false));
        let walkers: Vec<_> = (0..2)
            .map(|_| {
                let (d, l, f) = (domain.clone(), link.clone(), freed.clone());
                thread::spawn(move || {
                    let _g = d.pin();
                    if l.load(Ordering::Acquire) == 1 {
                        assert!(!f.load(Ordering::Relaxed), "read a freed page");
                    }
                })
            })
            .collect();
        link.store(0, Ordering::Release);
        let r = domain.retire_epoch();
        if domain.is_quiescent(r) {
            freed.store(true, Ordering::Relaxed);
        }
        for w in walkers {
            w.join().unwrap();
        }
        assert!(domain.is_quiescent(r), "the slot did not empty");
    });
}

/// A stale generation tag (not young for the window) that a table check
/// retires; any nonzero tag under an old parent is stale.
const STALE_TAG: u64 = 5;

/// The leaf slot of page `gpa` in the level-1 table.
fn leaf_slot(tables: &Tree, gpa: u64) -> &AtomicU64 {
    let root = tables.mem().table(tables.root()).unwrap()[T::index(gpa, Level::PAGE_2M)]
        .load(Ordering::SeqCst);
    &tables.mem().table(T::addr(root)).unwrap()[T::index(gpa, Level::PAGE_4K)]
}

/// Gives both 4 KiB leaves the stale tag (their parent keeps tag 0: old).
fn stale_tags(tables: &Tree) {
    for gpa in [0, 4096] {
        let slot = leaf_slot(tables, gpa);
        let v = slot.load(Ordering::SeqCst);
        slot.store(T::with_gen_tag(v, STALE_TAG), Ordering::SeqCst);
    }
}

/// A table check retires a stale leaf (the helper in its `Retire` mode, on
/// the snapshot it examined) while the CPU writes the page, setting A and
/// then D. D and A must survive whatever the order; an access that came
/// before the retirement was decided (the CPU finished before the snapshot
/// was re-checked) must leave the entry unretired; and the entry ends
/// retired exactly when the helper says it retired it.
#[test]
fn loom_retire_vs_cpu_setting_a_and_d() {
    model(|| {
        let (tables, _m, _mem) = setup(false);
        stale_tags(&tables);
        let done = Arc::new(AtomicBool::new(false));
        let (t2, d2) = (tables.clone(), done.clone());
        let cpu = thread::spawn(move || {
            cpu_access(&t2, 0, true);
            d2.store(true, Ordering::SeqCst);
        });
        let slot = leaf_slot(&tables, 0);
        let snapshot = slot.load(Ordering::Acquire);
        let young_before = done.load(Ordering::SeqCst);
        let r = test_and_clear_young::<T>(slot, snapshot, Level::PAGE_4K, Stamp::Retire);
        cpu.join().unwrap();
        let leaf = slot.load(Ordering::SeqCst);
        assert_eq!(
            leaf & (T::ACCESSED | T::DIRTY),
            T::ACCESSED | T::DIRTY,
            "the CPU's A or D was lost: {leaf:#x} ({r:?})"
        );
        assert_eq!(T::addr(leaf).as_u64(), 0x40_0000);
        if young_before {
            assert!(
                !matches!(r, ClearYoung::Retired { .. }),
                "a young entry was retired"
            );
        }
        assert_eq!(
            T::gen_tag(leaf) == 0,
            matches!(r, ClearYoung::Retired { .. }),
            "tag {} after {r:?}",
            T::gen_tag(leaf)
        );
        // The other leaf was not touched.
        assert_eq!(
            T::gen_tag(leaf_slot(&tables, 4096).load(Ordering::SeqCst)),
            STALE_TAG
        );
    });
}

/// A writer unmaps the stale page, maps another frame there, the CPU reads
/// it and a pass stamps it young, all while a table check retires the old
/// entry it examined. The retirement must land on that entry or nowhere:
/// the new mapping ends exactly as the writer's pass left it (never
/// retired, never given back the old frame).
#[test]
fn loom_retire_vs_unmap_and_remap() {
    model(|| {
        let (tables, mut m, _mem) = setup(false);
        stale_tags(&tables);
        let slot = leaf_slot(&tables, 0);
        let snapshot = slot.load(Ordering::Acquire);
        let t2 = tables.clone();
        let writer = thread::spawn(move || {
            m.unmap(&t2, GuestPhysAddr::new(0), 4096, |_, _, _| {})
                .unwrap();
            m.map(
                &t2,
                GuestPhysAddr::new(0),
                HostPhysAddr::new(0x80_0000),
                4096,
                Perms::RW,
                PageSize::Size4K,
            )
            .unwrap();
            cpu_access(&t2, 0, false);
            let slot = leaf_slot(&t2, 0);
            let now = slot.load(Ordering::Acquire);
            let r = test_and_clear_young::<T>(slot, now, Level::PAGE_4K, Stamp::Young(tag_of(2)));
            assert!(matches!(r, ClearYoung::Cleared { .. }), "{r:?}");
            T::with_gen_tag(now & !T::ACCESSED, tag_of(2))
        });
        let r = test_and_clear_young::<T>(slot, snapshot, Level::PAGE_4K, Stamp::Retire);
        let stamped = writer.join().unwrap();
        let leaf = slot.load(Ordering::SeqCst);
        assert_eq!(
            leaf, stamped,
            "the retirement of the old entry landed on the new one ({r:?})"
        );
        assert!(
            matches!(r, ClearYoung::Retired { .. } | ClearYoung::Changed(_)),
            "{r:?}"
        );
    });
}

/// A pass enters a table whose parent is old, so it checks the table and
/// retires its stale tags, while the CPU writes page 0. Page 1 (untouched)
/// ends retired; page 0 keeps D and ends young: either A is still set (the
/// next pass finds it) or this pass reported it and stamped it with its
/// tag. Never A clear with tag 0 (an access lost to a retirement).
#[test]
fn loom_pass_retiring_stale_tags_vs_cpu() {
    model(|| {
        let (tables, _m, _mem) = setup(false);
        stale_tags(&tables);
        let t2 = tables.clone();
        let cpu = thread::spawn(move || cpu_access(&t2, 0, true));
        let (stats, young) = age(&tables);
        cpu.join().unwrap();
        assert_eq!(
            stats.tables_checked, 1,
            "an old parent: the table is checked"
        );
        let leaf0 = leaf_slot(&tables, 0).load(Ordering::SeqCst);
        let leaf1 = leaf_slot(&tables, 4096).load(Ordering::SeqCst);
        assert!(leaf0 & T::DIRTY != 0, "D lost: {leaf0:#x}");
        let reported = young.iter().any(|&(gpa, _, _)| gpa == 0);
        assert!(
            leaf0 & T::ACCESSED != 0 || (reported && T::gen_tag(leaf0) == tag_of(2)),
            "page 0 was young and ends old: {leaf0:#x}, reported {young:x?}"
        );
        assert_eq!(
            T::gen_tag(leaf1),
            0,
            "the stale page was not retired: {leaf1:#x}"
        );
        assert_eq!(leaf1 & (T::ACCESSED | T::DIRTY), 0);
    });
}

/// A pass checks a table with stale tags while a writer unmaps page 1 (and
/// the guest writes page 0 beforehand). Whatever the order, the unmapped
/// entry stays empty (a retirement never writes an entry back), and page 0
/// keeps its D bit.
#[test]
fn loom_pass_retiring_stale_tags_vs_unmap() {
    model(|| {
        let (tables, mut m, _mem) = setup(false);
        stale_tags(&tables);
        cpu_access(&tables, 0, true);
        let t2 = tables.clone();
        let writer = thread::spawn(move || {
            m.unmap(&t2, GuestPhysAddr::new(4096), 4096, |_, _, _| {})
                .unwrap();
            m
        });
        let _ = age(&tables);
        let _m = writer.join().unwrap();
        let leaf0 = leaf_slot(&tables, 0).load(Ordering::SeqCst);
        let leaf1 = leaf_slot(&tables, 4096).load(Ordering::SeqCst);
        assert_eq!(
            leaf1, 0,
            "a retirement wrote the unmapped entry back: {leaf1:#x}"
        );
        assert!(leaf0 & T::DIRTY != 0, "D lost: {leaf0:#x}");
    });
}
