//! Property tests of the table manager and the aging core against a plain
//! model: random sequences of map, unmap, split, collapse, protect,
//! simulated hardware accesses (A set on the leaf and its ancestors, as the
//! CPU walks), software accesses (`mark_accessed`), `adopt` and aging
//! passes, single or in long stretches with a few pages kept hot. After
//! every step the core's answers (translations, errors, young pages, every
//! page's generation, the histogram, hot and cold pages, coldest-first
//! order) must equal the model's.
//!
//! The model keeps no tags: it knows each leaf's last-young pass exactly
//! and the last pass that scanned each leaf table (which a collapse hands
//! to the huge leaf), and predicts `seq_of = that pass clamped to min_seq`.
//! The stretches run thousands of passes (past the 2047 tags and the 1024
//! passes between checks of a table) with tables skipped throughout,
//! tables scanned every pass beside a page that stays cold, and regions
//! left alone for longer than the exact window and then touched again, so
//! this is the test of the decode/retire invariant of
//! `hvcore::generations`. With many cases it is also the fuzzing of the
//! table manager with arbitrary operation sequences
//! (`PROPTEST_CASES=5000 cargo test -p hvcore --release --test model` for
//! a long run).

#![cfg(not(loom))]

mod common;

use common::SimCpu;
use hvcore::addr::{GuestPhysAddr, HostPhysAddr};
use hvcore::age::age_pass;
use hvcore::arena::HostArena;
use hvcore::ept::Ept;
use hvcore::flush::{CountingFlush, FlushPolicy};
use hvcore::generations::{ColdAfter, ColdRun, EXACT_GENS, Generations};
use hvcore::npt::Npt;
use hvcore::pte::{EntryFormat, Level, Perms};
use hvcore::table::{MapError, Mapper, PageSize, Tables};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Guest space of the model: 32 MiB = 16 regions of 2 MiB.
const SPACE_PAGES: u64 = 8192;
const REGIONS: usize = 16;
const HPA_OFFSET: u64 = 1 << 40;

#[derive(Clone, Debug)]
enum Op {
    Map {
        page: u64,
        pages: u64,
        huge: bool,
        scrambled: bool,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
    Split {
        page: u64,
    },
    Collapse {
        page: u64,
    },
    Protect {
        page: u64,
        pages: u64,
        write: bool,
    },
    Access {
        page: u64,
        write: bool,
    },
    AccessRun {
        page: u64,
        pages: u64,
    },
    /// The hypervisor's own access (`Tables::mark_accessed`).
    Mark {
        page: u64,
    },
    /// `Generations::adopt`: every present entry takes the current pass.
    Adopt,
    Pass {
        dt_ms: u64,
    },
    /// `passes` passes 10 ms apart; before the first and then every
    /// `every` passes, the CPU reads `hot`; before the first only, it reads
    /// the pages `once` (offsets in the first hot page's region), which
    /// then age beside a table that keeps being scanned; and before each
    /// pass, with `sweep` > 0, the page `sweep` pages on from the last one
    /// swept in that region, so that at any pass some page in it has
    /// every age up to a few hundred passes (whenever the table is
    /// checked, pages just inside and just outside the exact window are
    /// there).
    Idle {
        passes: u64,
        hot: Vec<u64>,
        every: u64,
        once: Vec<u64>,
        sweep: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Anywhere, or in two small clusters (the first region; the edge of
    // the second and third), so that ops often meet the same tables.
    let page = prop_oneof![0..SPACE_PAGES, 0..48u64, 1000..1060u64];
    // Stretches around the edges that matter: the exact window (255), a
    // turn of table checks (1024), a wrap of the tags (2047), and beyond.
    let passes = prop_oneof![
        4 => 1..40u64,
        2 => 250..262u64,
        1 => 1018..1030u64,
        1 => 2040..2060u64,
        1 => 2100..3300u64,
    ];
    // Hot pages read every pass keep their table scanned every pass; every
    // ~255 or ~1024 passes, the scans come just around a page's
    // retirement age or a table's turn to be checked.
    let every = prop_oneof![
        3 => Just(1u64),
        1 => 2..5u64,
        2 => 250..260u64,
        1 => 1020..1030u64,
    ];
    prop_oneof![
        3 => (0..16u64, 1..=2u64, any::<bool>()).prop_map(|(r, n, huge)| Op::Map { page: r * 512, pages: n * 512, huge, scrambled: false }),
        3 => (page.clone(), 1..40u64, any::<bool>()).prop_map(|(page, pages, scrambled)| Op::Map { page, pages, huge: false, scrambled }),
        2 => (page.clone(), 1..700u64).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        1 => page.clone().prop_map(|page| Op::Split { page }),
        1 => page.clone().prop_map(|page| Op::Collapse { page }),
        1 => (page.clone(), 1..600u64, any::<bool>()).prop_map(|(page, pages, write)| Op::Protect { page, pages, write }),
        6 => (page.clone(), any::<bool>()).prop_map(|(page, write)| Op::Access { page, write }),
        2 => (page.clone(), 1..600u64).prop_map(|(page, pages)| Op::AccessRun { page, pages }),
        1 => page.clone().prop_map(|page| Op::Mark { page }),
        1 => Just(Op::Adopt),
        3 => (1..2000u64).prop_map(|dt_ms| Op::Pass { dt_ms }),
        3 => (
            passes,
            proptest::collection::vec(page, 0..3),
            every,
            proptest::collection::vec(0..512u64, 0..3),
            prop_oneof![Just(0u64), Just(1), 2..9u64],
        )
            .prop_map(|(passes, hot, every, once, sweep)| Op::Idle { passes, hot, every, once, sweep }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Leaf {
    level: u8,
    frame: u64,
    write: bool,
    accessed: bool,
    /// The last pass that found it young (`None`: never, or not since it
    /// was mapped).
    seq: Option<u64>,
}

/// A non-leaf entry: its A bit, the rescan mark the pass leaves in it, and
/// the last pass that scanned the table below it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Upper {
    accessed: bool,
    rescan: bool,
    seq: Option<u64>,
}

impl Upper {
    /// A new table entry: A set, never scanned.
    fn new() -> Self {
        Upper {
            accessed: true,
            ..Upper::default()
        }
    }

    /// What the pass does with the entry when it reaches it: whether it
    /// scans the table below.
    fn visit(&mut self, seq: u64) -> bool {
        if self.accessed {
            self.accessed = false;
            self.rescan = true;
        } else if self.rescan {
            self.rescan = false;
        } else {
            return false;
        }
        self.seq = Some(seq);
        true
    }
}

/// The plain model: leaves by first page, the non-leaf entries above them
/// (the first root entry and its table's first entry cover the whole model
/// space; one entry per 2 MiB region below that), the clock.
#[derive(Default)]
struct Model {
    leaves: BTreeMap<u64, Leaf>,
    /// Root entry 0 and the entry of its table that covers the first GiB
    /// (created by the first map, never removed: no unmap covers 1 GiB).
    top: Option<[Upper; 2]>,
    /// Per region, the entry pointing at its leaf table, if it is one.
    tables: [Option<Upper>; REGIONS],
    max_seq: u64,
    now_ms: u64,
}

fn pages_of(level: u8) -> u64 {
    1 << (9 * (u32::from(level) - 1))
}

fn region(page: u64) -> usize {
    (page / 512) as usize
}

impl Model {
    fn leaf_of(&self, page: u64) -> Option<(u64, Leaf)> {
        let (&base, &leaf) = self.leaves.range(..=page).next_back()?;
        (page < base + pages_of(leaf.level)).then_some((base, leaf))
    }

    fn min_seq(&self) -> u64 {
        self.max_seq.saturating_sub(EXACT_GENS).max(1)
    }

    /// The generation the core must report for `leaf`.
    fn seq(&self, leaf: &Leaf) -> u64 {
        if leaf.accessed {
            self.max_seq
        } else {
            leaf.seq.map_or(self.min_seq(), |s| s.max(self.min_seq()))
        }
    }

    /// Splits a huge leaf: the new table entry (A set, as every new table
    /// entry) and the children carry the leaf's generation and A.
    fn split(&mut self, base: u64) {
        let leaf = self.leaves.remove(&base).unwrap();
        assert_eq!(leaf.level, 2, "the model has no 1 GiB leaves");
        for i in 0..512 {
            let child = Leaf {
                level: 1,
                frame: leaf.frame + i,
                ..leaf
            };
            self.leaves.insert(base + i, child);
        }
        self.tables[region(base)] = Some(Upper {
            seq: leaf.seq,
            ..Upper::new()
        });
    }

    /// Splits huge leaves that straddle an edge of `[page, end)`.
    fn split_edges(&mut self, page: u64, end: u64) {
        for edge in [page, end - 1] {
            while let Some((b, l)) = self.leaf_of(edge) {
                let e = b + pages_of(l.level);
                if l.level == 1 || (b >= page && e <= end) {
                    break;
                }
                self.split(b);
            }
        }
    }

    /// The CPU's walk for an access to `page`: A on every entry it goes
    /// through (before it finds the leaf missing or read-only), A on the
    /// leaf if the access is allowed.
    fn cpu_access(&mut self, page: u64, write: bool) -> bool {
        let Some(top) = self.top.as_mut() else {
            return false;
        };
        for u in top.iter_mut() {
            u.accessed = true;
        }
        if let Some(t) = self.tables[region(page)].as_mut() {
            t.accessed = true;
        }
        match self.leaf_of(page) {
            Some((b, l)) if l.write || !write => {
                self.leaves.get_mut(&b).unwrap().accessed = true;
                true
            }
            _ => false,
        }
    }

    /// `Tables::mark_accessed`: A on the leaf, then on its ancestors; no
    /// write at all when nothing maps `page`.
    fn mark(&mut self, page: u64) -> bool {
        let Some((b, _)) = self.leaf_of(page) else {
            return false;
        };
        self.leaves.get_mut(&b).unwrap().accessed = true;
        for u in self.top.as_mut().unwrap().iter_mut() {
            u.accessed = true;
        }
        if let Some(t) = self.tables[region(page)].as_mut() {
            t.accessed = true;
        }
        true
    }

    /// One aging pass: scans a table only if its entry had A or the
    /// rescan mark; young leaves of scanned tables take the pass. Returns
    /// the young 4 KiB pages.
    fn pass(&mut self, dt_ms: u64) -> u64 {
        self.now_ms += dt_ms;
        self.max_seq += 1;
        let seq = self.max_seq;
        let Some(top) = self.top.as_mut() else {
            return 0;
        };
        if !top[0].visit(seq) || !top[1].visit(seq) {
            return 0;
        }
        let mut young = 0;
        for r in 0..REGIONS {
            let first = r as u64 * 512;
            let scan = match self.tables[r].as_mut() {
                Some(t) => t.visit(seq),
                // A huge leaf (or nothing) in the scanned table above.
                None => true,
            };
            if !scan {
                continue;
            }
            for (_, l) in self.leaves.range_mut(first..first + 512) {
                if l.accessed {
                    l.accessed = false;
                    l.seq = Some(seq);
                    young += pages_of(l.level);
                }
            }
        }
        young
    }

    /// `Generations::adopt`: every present entry takes the current pass.
    fn adopt(&mut self) -> u64 {
        let seq = Some(self.max_seq);
        for u in self.top.iter_mut().flatten() {
            u.seq = seq;
        }
        for t in self.tables.iter_mut().flatten() {
            t.seq = seq;
        }
        let mut pages = 0;
        for l in self.leaves.values_mut() {
            l.seq = seq;
            pages += pages_of(l.level);
        }
        pages
    }
}

fn check_translations<F: EntryFormat>(
    tables: &Tables<F, &HostArena>,
    model: &Model,
    pages: impl Iterator<Item = u64>,
) {
    for p in pages {
        let real = tables.translate(GuestPhysAddr::new(p * 4096));
        let want = model.leaf_of(p);
        match (real, want) {
            (None, None) => {}
            (Some(t), Some((base, leaf))) => {
                assert_eq!(
                    t.hpa.as_u64(),
                    (leaf.frame + p - base) * 4096,
                    "page {p:#x}"
                );
                assert_eq!(t.level.get(), leaf.level, "page {p:#x}");
                assert_eq!(t.perms.write, leaf.write, "page {p:#x}");
                assert_eq!(t.accessed, leaf.accessed, "A of page {p:#x}");
            }
            (r, w) => panic!("page {p:#x}: core {r:?}, model {w:?}"),
        }
    }
}

/// The generation of every leaf that starts in pages `[start, end)` (one
/// decoding walk) equals the model's.
fn check_ages_in<F: EntryFormat>(
    tables: &Tables<F, &HostArena>,
    gens: &Generations,
    model: &Model,
    start: u64,
    end: u64,
) {
    let mut got = Vec::new();
    gens.for_each_page_seq(tables, start * 4096, end * 4096, |gpa, pages, seq| {
        if gpa / 4096 >= start {
            got.push((gpa / 4096, pages, seq));
        }
    });
    let want: Vec<(u64, u64, u64)> = model
        .leaves
        .range(start..end)
        .map(|(&b, l)| (b, pages_of(l.level), model.seq(l)))
        .collect();
    if got != want {
        let diff: Vec<_> = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g != w)
            .take(8)
            .collect();
        panic!(
            "generations at pass {} (min {}): {} leaves in the core, {} in the model; first differences (page, pages, seq) core vs model: {diff:?}",
            model.max_seq,
            model.min_seq(),
            got.len(),
            want.len()
        );
    }
}

/// Every page's generation (one decoding walk, leaf by leaf, and single
/// lookups of a spread of pages) and the histogram equal the model's.
fn check_ages<F: EntryFormat>(tables: &Tables<F, &HostArena>, gens: &Generations, model: &Model) {
    assert_eq!(gens.max_seq(), model.max_seq);
    assert_eq!(gens.min_seq(), model.min_seq());
    check_ages_in(tables, gens, model, 0, SPACE_PAGES);
    for p in (0..SPACE_PAGES).step_by(61) {
        let g = GuestPhysAddr::new(p * 4096);
        let want = model.leaf_of(p).map(|(_, l)| model.seq(&l));
        assert_eq!(gens.seq_of(tables, g), want, "generation of page {p:#x}");
        assert_eq!(
            gens.is_hot(tables, g, 2),
            want.is_some_and(|s| s + 2 > model.max_seq),
            "page {p:#x}"
        );
    }
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for l in model.leaves.values() {
        *counts.entry(model.seq(l)).or_default() += pages_of(l.level);
    }
    let hist: Vec<(u64, u64)> = gens
        .histogram(tables, model.now_ms)
        .map(|b| {
            assert_eq!(b.age_gens, model.max_seq - b.seq);
            (b.seq, b.pages)
        })
        .collect();
    assert_eq!(hist, counts.into_iter().collect::<Vec<_>>(), "histogram");
}

/// Coldest first: the model's cold pages sorted by generation then
/// address, as runs.
fn check_coldest<F: EntryFormat>(
    tables: &Tables<F, &HostArena>,
    gens: &Generations,
    model: &Model,
) {
    let mut by_seq: Vec<(u64, u64)> = Vec::new();
    for (&b, l) in &model.leaves {
        let s = model.seq(l);
        if model.max_seq - s >= 2 {
            by_seq.extend((b..b + pages_of(l.level)).map(|p| (s, p)));
        }
    }
    by_seq.sort();
    let mut want: Vec<ColdRun> = Vec::new();
    for (s, p) in by_seq {
        match want.last_mut() {
            Some(r) if r.seq == s && r.gpa.as_u64() / 4096 + r.pages == p => r.pages += 1,
            _ => want.push(ColdRun {
                gpa: GuestPhysAddr::new(p * 4096),
                pages: 1,
                seq: s,
            }),
        }
    }
    let got: Vec<ColdRun> = gens
        .coldest(tables, ColdAfter::Gens(2), model.now_ms)
        .collect();
    assert_eq!(got, want);
}

/// Passes (with their stats) and accesses, core and model side by side.
struct Guest<'a, F: EntryFormat> {
    tables: &'a Tables<F, &'a HostArena>,
    gens: Generations,
    model: Model,
    cpu: SimCpu,
    flush: CountingFlush,
}

impl<F: EntryFormat> Guest<'_, F> {
    fn access(&mut self, page: u64, write: bool) {
        let ok = self.cpu.access(self.tables, page * 4096, write);
        assert_eq!(
            ok,
            self.model.cpu_access(page, write),
            "access to {page:#x}"
        );
    }

    fn pass(&mut self, dt_ms: u64) {
        let young = self.model.pass(dt_ms);
        let s = age_pass(
            self.tables,
            &mut self.gens,
            self.model.now_ms,
            &mut self.flush,
            FlushPolicy::OncePerPass,
        );
        assert_eq!(s.seq, self.model.max_seq);
        assert_eq!(s.young_pages, young, "young pages in pass {}", s.seq);
    }
}

fn run<F: EntryFormat>(ops: Vec<Op>) {
    let arena = HostArena::new(256);
    let mut alloc = &arena;
    let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
    let mut mapper = Mapper::new(&tables, &arena);
    let mut g = Guest {
        tables: &tables,
        gens: Generations::new(0),
        model: Model {
            max_seq: 1,
            ..Model::default()
        },
        cpu: SimCpu::uncached(),
        flush: CountingFlush::default(),
    };
    for op in ops {
        match op {
            Op::Map {
                page,
                pages,
                huge,
                scrambled,
            } => {
                let model = &mut g.model;
                let pages = pages.min(SPACE_PAGES - page);
                let frame = if scrambled { page + 0x1001 } else { page } + HPA_OFFSET / 4096;
                let max = if huge {
                    PageSize::Size2M
                } else {
                    PageSize::Size4K
                };
                let res = mapper.map(
                    &tables,
                    GuestPhysAddr::new(page * 4096),
                    HostPhysAddr::new(frame * 4096),
                    pages * 4096,
                    Perms::RW,
                    max,
                );
                let clash = (page..page + pages).find(|&p| model.leaf_of(p).is_some());
                match clash {
                    Some(_) => assert!(matches!(res, Err(MapError::AlreadyMapped(_))), "{res:?}"),
                    None => {
                        res.unwrap();
                        model.top.get_or_insert([Upper::new(); 2]);
                        let mut p = page;
                        while p < page + pages {
                            let level = if huge
                                && p.is_multiple_of(512)
                                && (frame + p - page).is_multiple_of(512)
                                && p + 512 <= page + pages
                            {
                                2
                            } else {
                                1
                            };
                            let t = &mut model.tables[region(p)];
                            if level == 2 {
                                // Replaces an empty leaf table, if any.
                                *t = None;
                            } else if t.is_none() {
                                *t = Some(Upper::new());
                            }
                            // New leaves start old and not accessed.
                            let leaf = Leaf {
                                level,
                                frame: frame + p - page,
                                write: true,
                                accessed: false,
                                seq: None,
                            };
                            model.leaves.insert(p, leaf);
                            p += pages_of(level);
                        }
                    }
                }
                check_translations(&tables, &g.model, page..page + pages);
            }
            Op::Unmap { page, pages } => {
                let model = &mut g.model;
                let end = (page + pages).min(SPACE_PAGES);
                let mut removed = 0;
                mapper
                    .unmap(
                        &tables,
                        GuestPhysAddr::new(page * 4096),
                        (end - page) * 4096,
                        |_, l, _| removed += pages_of(l.get()),
                    )
                    .unwrap();
                model.split_edges(page, end);
                let gone: Vec<u64> = model.leaves.range(page..end).map(|(&b, _)| b).collect();
                let mut model_removed = 0;
                for b in gone {
                    model_removed += pages_of(model.leaves.remove(&b).unwrap().level);
                }
                // Leaf tables entirely inside the range are unlinked.
                for r in region(page)..REGIONS {
                    let first = r as u64 * 512;
                    if first >= page && first + 512 <= end {
                        model.tables[r] = None;
                    }
                }
                assert_eq!(removed, model_removed);
                mapper.tlb_flushed(&tables);
                check_translations(
                    &tables,
                    &g.model,
                    page.saturating_sub(1)..(end + 1).min(SPACE_PAGES),
                );
            }
            Op::Split { page } => {
                let res = mapper.split(&tables, GuestPhysAddr::new(page * 4096), Level::PAGE_2M);
                match g.model.leaf_of(page) {
                    Some((b, l)) if l.level == 2 => {
                        res.unwrap();
                        g.model.split(b);
                    }
                    _ => assert!(res.is_err()),
                }
                check_translations(&tables, &g.model, (page & !511)..(page & !511) + 512);
            }
            Op::Collapse { page } => {
                let model = &mut g.model;
                let base = page & !511;
                let res = mapper.collapse(&tables, GuestPhysAddr::new(base * 4096), Level::PAGE_2M);
                let kids: Vec<Leaf> = (0..512)
                    .filter_map(|i| model.leaves.get(&(base + i)).copied())
                    .collect();
                let ok = kids.len() == 512
                    && kids[0].frame.is_multiple_of(512)
                    && kids.iter().enumerate().all(|(i, k)| {
                        k.level == 1
                            && k.frame == kids[0].frame + i as u64
                            && k.write == kids[0].write
                    });
                assert_eq!(res.is_ok(), ok, "{res:?}");
                if ok {
                    let accessed = kids.iter().any(|k| k.accessed);
                    for i in 0..512 {
                        model.leaves.remove(&(base + i));
                    }
                    // The huge leaf takes the generation of its table
                    // entry: the last pass that scanned the table.
                    let table = model.tables[region(base)].take().unwrap();
                    model.leaves.insert(
                        base,
                        Leaf {
                            level: 2,
                            accessed,
                            seq: table.seq,
                            ..kids[0]
                        },
                    );
                    if accessed {
                        for u in model.top.as_mut().unwrap().iter_mut() {
                            u.accessed = true;
                        }
                    }
                    mapper.tlb_flushed(&tables);
                }
                check_translations(&tables, &g.model, base..base + 512);
            }
            Op::Protect { page, pages, write } => {
                let model = &mut g.model;
                let end = (page + pages).min(SPACE_PAGES);
                let perms = if write { Perms::RW } else { Perms::R };
                mapper
                    .protect(
                        &tables,
                        GuestPhysAddr::new(page * 4096),
                        (end - page) * 4096,
                        perms,
                    )
                    .unwrap();
                model.split_edges(page, end);
                for (_, l) in model.leaves.range_mut(page..end) {
                    l.write = write;
                }
                check_translations(
                    &tables,
                    &g.model,
                    page.saturating_sub(1)..(end + 1).min(SPACE_PAGES),
                );
            }
            Op::Access { page, write } => g.access(page, write),
            Op::AccessRun { page, pages } => {
                for p in page..(page + pages).min(SPACE_PAGES) {
                    g.access(p, false);
                }
            }
            Op::Mark { page } => {
                let ok = tables.mark_accessed(GuestPhysAddr::new(page * 4096), F::ACCESSED);
                assert_eq!(ok, g.model.mark(page), "mark_accessed({page:#x})");
            }
            Op::Adopt => {
                assert_eq!(g.gens.adopt(&tables), g.model.adopt());
            }
            Op::Pass { dt_ms } => {
                g.pass(dt_ms);
                check_coldest(&tables, &g.gens, &g.model);
            }
            Op::Idle {
                passes,
                hot,
                every,
                once,
                sweep,
            } => {
                let once: Vec<u64> = hot
                    .first()
                    .map(|&h| once.iter().map(|&d| (h & !511) | ((h + d) & 511)).collect())
                    .unwrap_or_default();
                for &p in &once {
                    g.access(p, false);
                }
                for i in 0..passes {
                    if i % every == 0 {
                        for &p in &hot {
                            g.access(p, false);
                        }
                    }
                    if let Some(&h) = hot.first()
                        && sweep > 0
                    {
                        g.access((h & !511) | ((h + i * sweep) & 511), false);
                    }
                    g.pass(10);
                    // The hot pages' regions every pass (the tables being
                    // scanned, checked and retired); all pages now and then.
                    for &p in &hot {
                        let first = p & !511;
                        check_ages_in(&tables, &g.gens, &g.model, first, first + 512);
                        let want = g.model.leaf_of(p).map(|(_, l)| g.model.seq(&l));
                        let got = g.gens.seq_of(&tables, GuestPhysAddr::new(p * 4096));
                        assert_eq!(got, want, "page {p:#x}, pass {}", g.model.max_seq);
                    }
                    if i % 61 == 60 {
                        check_ages(&tables, &g.gens, &g.model);
                    }
                }
                check_coldest(&tables, &g.gens, &g.model);
            }
        }
        check_ages(&tables, &g.gens, &g.model);
    }
    check_translations(&tables, &g.model, 0..SPACE_PAGES);
    // Retired pages all come back once no walker is pinned.
    mapper.tlb_flushed(&tables);
    assert_eq!(mapper.retired_pages(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn npt_core_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run::<Npt>(ops);
    }

    #[test]
    fn ept_core_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run::<Ept>(ops);
    }
}
