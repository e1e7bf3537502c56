//! Property tests of the table manager and the aging core against a plain
//! model: random sequences of map, unmap, split, collapse, protect,
//! simulated hardware accesses and aging passes. After every step the
//! core's answers (translations, errors, young pages, generations, hot and
//! cold pages, coldest-first order) must equal the model's. With many cases
//! this is also the fuzzing of the table manager with arbitrary operation
//! sequences (`PROPTEST_CASES=100000 cargo test -p hvcore --release --test
//! model` for a long run).

#![cfg(not(loom))]

mod common;

use common::SimCpu;
use hvcore::addr::{GuestPhysAddr, HostPhysAddr};
use hvcore::age::age_pass;
use hvcore::arena::HostArena;
use hvcore::ept::Ept;
use hvcore::flush::{CountingFlush, FlushPolicy};
use hvcore::generations::{ColdAfter, ColdRun, Generations};
use hvcore::npt::Npt;
use hvcore::pte::{EntryFormat, Perms};
use hvcore::table::{MapError, Mapper, PageSize, Tables};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Guest space of the model: 32 MiB = 16 regions of 2 MiB.
const SPACE_PAGES: u64 = 8192;
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
    Pass {
        dt_ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..SPACE_PAGES;
    prop_oneof![
        3 => (0..16u64, 1..=2u64, any::<bool>()).prop_map(|(r, n, huge)| Op::Map { page: r * 512, pages: n * 512, huge, scrambled: false }),
        3 => (page.clone(), 1..40u64, any::<bool>()).prop_map(|(page, pages, scrambled)| Op::Map { page, pages, huge: false, scrambled }),
        2 => (page.clone(), 1..700u64).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        1 => page.clone().prop_map(|page| Op::Split { page }),
        1 => page.clone().prop_map(|page| Op::Collapse { page }),
        1 => (page.clone(), 1..600u64, any::<bool>()).prop_map(|(page, pages, write)| Op::Protect { page, pages, write }),
        6 => (page.clone(), any::<bool>()).prop_map(|(page, write)| Op::Access { page, write }),
        2 => (page.clone(), 1..600u64).prop_map(|(page, pages)| Op::AccessRun { page, pages }),
        3 => (1..2000u64).prop_map(|dt_ms| Op::Pass { dt_ms }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Leaf {
    level: u8,
    frame: u64,
    write: bool,
    accessed: bool,
}

/// The plain model: leaves by first page, page generations, the clock.
#[derive(Default)]
struct Model {
    leaves: BTreeMap<u64, Leaf>,
    seq: BTreeMap<u64, u64>,
    max_seq: u64,
    now_ms: u64,
}

fn pages_of(level: u8) -> u64 {
    1 << (9 * (u32::from(level) - 1))
}

impl Model {
    fn leaf_of(&self, page: u64) -> Option<(u64, Leaf)> {
        let (&base, &leaf) = self.leaves.range(..=page).next_back()?;
        (page < base + pages_of(leaf.level)).then_some((base, leaf))
    }

    fn split(&mut self, base: u64) {
        let leaf = self.leaves.remove(&base).unwrap();
        let n = pages_of(leaf.level - 1);
        for i in 0..512 {
            let child = Leaf {
                level: leaf.level - 1,
                frame: leaf.frame + i * n,
                ..leaf
            };
            self.leaves.insert(base + i * n, child);
        }
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
                assert_eq!(t.level, leaf.level, "page {p:#x}");
                assert_eq!(t.perms.write, leaf.write, "page {p:#x}");
                assert_eq!(t.accessed, leaf.accessed, "A of page {p:#x}");
            }
            (r, w) => panic!("page {p:#x}: core {r:?}, model {w:?}"),
        }
    }
}

fn run<F: EntryFormat>(ops: Vec<Op>) {
    let arena = HostArena::new(256);
    let mut alloc = &arena;
    let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
    let mut mapper = Mapper::new(&tables, &arena);
    let mut gens = Generations::new(vec![0u8; SPACE_PAGES as usize], 0);
    let mut model = Model {
        max_seq: 1,
        ..Model::default()
    };
    let mut cpu = SimCpu::uncached();
    let mut flush = CountingFlush::default();
    for op in ops {
        match op {
            Op::Map {
                page,
                pages,
                huge,
                scrambled,
            } => {
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
                            let leaf = Leaf {
                                level,
                                frame: frame + p - page,
                                write: true,
                                accessed: false,
                            };
                            model.leaves.insert(p, leaf);
                            p += pages_of(level);
                        }
                        gens.note_mapped(GuestPhysAddr::new(page * 4096), pages * 4096);
                        for q in page..page + pages {
                            model.seq.insert(q, model.max_seq);
                        }
                    }
                }
                check_translations(&tables, &model, page..page + pages);
            }
            Op::Unmap { page, pages } => {
                let end = (page + pages).min(SPACE_PAGES);
                let mut removed = 0;
                mapper
                    .unmap(
                        &tables,
                        GuestPhysAddr::new(page * 4096),
                        (end - page) * 4096,
                        |_, l, _| removed += pages_of(l),
                    )
                    .unwrap();
                model.split_edges(page, end);
                let gone: Vec<u64> = model.leaves.range(page..end).map(|(&b, _)| b).collect();
                let mut model_removed = 0;
                for b in gone {
                    model_removed += pages_of(model.leaves.remove(&b).unwrap().level);
                }
                assert_eq!(removed, model_removed);
                gens.note_unmapped(GuestPhysAddr::new(page * 4096), (end - page) * 4096);
                for q in page..end {
                    model.seq.remove(&q);
                }
                mapper.tlb_flushed(&tables);
                check_translations(
                    &tables,
                    &model,
                    page.saturating_sub(1)..(end + 1).min(SPACE_PAGES),
                );
            }
            Op::Split { page } => {
                let res = mapper.split(&tables, GuestPhysAddr::new(page * 4096), 2);
                match model.leaf_of(page) {
                    Some((b, l)) if l.level == 2 => {
                        res.unwrap();
                        model.split(b);
                    }
                    _ => assert!(res.is_err()),
                }
                check_translations(&tables, &model, (page & !511)..(page & !511) + 512);
            }
            Op::Collapse { page } => {
                let base = page & !511;
                let res = mapper.collapse(&tables, GuestPhysAddr::new(base * 4096), 2);
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
                    model.leaves.insert(
                        base,
                        Leaf {
                            level: 2,
                            accessed,
                            ..kids[0]
                        },
                    );
                    mapper.tlb_flushed(&tables);
                }
                check_translations(&tables, &model, base..base + 512);
            }
            Op::Protect { page, pages, write } => {
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
                    &model,
                    page.saturating_sub(1)..(end + 1).min(SPACE_PAGES),
                );
            }
            Op::Access { page, write } => {
                let ok = cpu.access(&tables, page * 4096, write);
                let leaf = model.leaf_of(page);
                assert_eq!(ok, leaf.is_some_and(|(_, l)| l.write || !write));
                if ok {
                    model.leaves.get_mut(&leaf.unwrap().0).unwrap().accessed = true;
                }
            }
            Op::AccessRun { page, pages } => {
                for p in page..(page + pages).min(SPACE_PAGES) {
                    if cpu.access(&tables, p * 4096, false) {
                        let (b, _) = model.leaf_of(p).unwrap();
                        model.leaves.get_mut(&b).unwrap().accessed = true;
                    } else {
                        assert!(model.leaf_of(p).is_none());
                    }
                }
            }
            Op::Pass { dt_ms } => {
                model.now_ms += dt_ms;
                model.max_seq += 1;
                let s = age_pass(
                    &tables,
                    &mut gens,
                    model.now_ms,
                    &mut flush,
                    FlushPolicy::OncePerPass,
                );
                let mut young = 0;
                for (&b, l) in model.leaves.iter_mut() {
                    if l.accessed {
                        l.accessed = false;
                        young += pages_of(l.level);
                        for q in b..b + pages_of(l.level) {
                            model.seq.insert(q, model.max_seq);
                        }
                    }
                }
                assert_eq!(s.seq, model.max_seq);
                assert_eq!(s.young_pages, young);
                for p in 0..SPACE_PAGES {
                    let g = GuestPhysAddr::new(p * 4096);
                    let want = model.seq.get(&p).copied();
                    assert_eq!(gens.seq_of(g), want, "generation of page {p:#x}");
                    assert_eq!(
                        gens.is_hot(g, 2),
                        want.is_some_and(|s| s + 2 > model.max_seq)
                    );
                }
                // Coldest first: the model's cold pages sorted by generation
                // then address, as runs.
                let mut want: Vec<ColdRun> = Vec::new();
                let mut by_seq: Vec<(u64, u64)> = model
                    .seq
                    .iter()
                    .filter(|&(_, &s)| model.max_seq - s >= 2)
                    .map(|(&p, &s)| (s, p))
                    .collect();
                by_seq.sort();
                for (s, p) in by_seq {
                    match want.last_mut() {
                        Some(r) if r.seq == s && r.gpa.as_u64() / 4096 + r.pages == p => {
                            r.pages += 1
                        }
                        _ => want.push(ColdRun {
                            gpa: GuestPhysAddr::new(p * 4096),
                            pages: 1,
                            seq: s,
                        }),
                    }
                }
                let got: Vec<ColdRun> = gens.coldest(ColdAfter::Gens(2), model.now_ms).collect();
                assert_eq!(got, want);
            }
        }
    }
    check_translations(&tables, &model, 0..SPACE_PAGES);
    // Retired pages all come back once no walker is pinned.
    mapper.tlb_flushed(&tables);
    assert_eq!(mapper.retired_pages(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn npt_core_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run::<Npt>(ops);
    }

    #[test]
    fn ept_core_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run::<Ept>(ops);
    }
}
