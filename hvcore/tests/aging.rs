//! Aging pass tests: young pages found exactly, subtree skipping, huge pages
//! aging as a unit, and the flush policy under a nested-KVM-like TLB.

#![cfg(not(loom))]

mod common;

use common::SimCpu;
use hvcore::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE_2M};
use hvcore::age::{age_pass, age_range, test_young};
use hvcore::arena::HostArena;
use hvcore::ept::Ept;
use hvcore::flush::{CountingFlush, FlushPolicy, TlbFlush};
use hvcore::generations::{ColdAfter, EXACT_GENS, Generations};
use hvcore::npt::Npt;
use hvcore::pte::{EntryFormat, Level, Perms};
use hvcore::table::{Mapper, PageSize, Tables};

const GUEST: u64 = 64 << 20;

fn guest<F: EntryFormat>(arena: &HostArena, page: PageSize) -> Tables<F, &HostArena> {
    let mut alloc = arena;
    let tables = Tables::<F, _>::new(arena, &mut alloc).unwrap();
    let mut m = Mapper::new(&tables, arena);
    m.map(
        &tables,
        GuestPhysAddr::new(0),
        HostPhysAddr::new(1 << 32),
        GUEST,
        Perms::RW,
        page,
    )
    .unwrap();
    tables
}

fn young_pages_exactly<F: EntryFormat>() {
    let arena = HostArena::new(64);
    let tables = guest::<F>(&arena, PageSize::Size4K);
    let gens = Generations::new(0);
    let mut cpu = SimCpu::uncached();
    // Fresh leaves are not young; fresh tables are (A set on creation).
    let first = age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {
        panic!("nothing touched yet")
    });
    assert!(first.tables_entered > 0);
    // The tables whose A the first pass cleared are scanned once more.
    let settle = age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {
        panic!("nothing touched yet")
    });
    assert_eq!(settle.tables_rescanned, first.tables_entered);
    assert_eq!(settle.tables_entered, 0);
    let touched = [0u64, 1, 511, 512, 9000, 16383];
    for &p in &touched {
        assert!(cpu.access(&tables, p * 4096, p % 2 == 0));
    }
    let mut young = Vec::new();
    let stats = age_range(&tables, &gens, 0, u64::MAX, |gpa, level, _| {
        assert_eq!(level, Level::PAGE_4K);
        young.push(gpa / 4096)
    });
    young.sort();
    assert_eq!(young, touched);
    assert!(
        stats.subtrees_skipped >= 32 - 4,
        "untouched 2 MiB regions are skipped: {stats:?}"
    );
    // Nothing touched since: the pass reads only the root's line and the
    // one 1 GiB entry's table line.
    let rescan = age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {
        panic!("no access since the last pass")
    });
    assert_eq!(rescan.tables_rescanned, stats.tables_entered);
    let idle = age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {
        panic!("no access since the last pass")
    });
    assert_eq!((idle.young_pages, idle.tables_entered), (0, 0));
    assert_eq!(idle.leaf_entries_read, 0, "every leaf table skipped");
    assert!(
        stats.leaf_entries_read <= 4 * 512,
        "only the four touched 2 MiB regions were read: {stats:?}"
    );
    assert!(!test_young(&tables, 0, GUEST));
    assert!(cpu.access(&tables, 77 * 4096, false));
    assert!(test_young(&tables, 0, GUEST));
    assert!(!test_young(&tables, 78 * 4096, GUEST));
    let again = age_range(&tables, &gens, 0, u64::MAX, |gpa, _, _| {
        assert_eq!(gpa, 77 * 4096)
    });
    assert_eq!(again.young_pages, 1);
    assert!(again.flush_needed);
}

#[test]
fn ept_young_pages_exactly() {
    young_pages_exactly::<Ept>();
}

#[test]
fn npt_young_pages_exactly() {
    young_pages_exactly::<Npt>();
}

#[test]
fn huge_pages_age_as_a_unit_and_gens_follow() {
    let arena = HostArena::new(16);
    let tables = guest::<Npt>(&arena, PageSize::Size2M);
    let mut gens = Generations::new(0);
    assert_eq!(gens.adopt(&tables), GUEST / 4096);
    let mut cpu = SimCpu::uncached();
    let mut flush = CountingFlush::default();
    for pass in 1..=5u64 {
        cpu.access(&tables, 3 * PAGE_SIZE_2M + 5, false);
        let s = age_pass(
            &tables,
            &mut gens,
            pass * 1000,
            &mut flush,
            FlushPolicy::OncePerPass,
        );
        assert_eq!(s.young_pages, 512);
        assert_eq!(flush.flushes, pass, "one flush per pass, not per entry");
    }
    let hot = GuestPhysAddr::new(3 * PAGE_SIZE_2M + 4096 * 17);
    assert!(gens.is_hot(&tables, hot, 1));
    assert!(gens.is_cold(&tables, GuestPhysAddr::new(0), ColdAfter::Gens(5), 0));
    assert!(!gens.is_cold(&tables, GuestPhysAddr::new(0), ColdAfter::Gens(6), 0));
    let first = gens
        .coldest(&tables, ColdAfter::Gens(1), 5000)
        .next()
        .unwrap();
    assert_eq!(
        (first.gpa.as_u64(), first.pages, first.seq),
        (0, 3 * 512, 1)
    );
    let hist: Vec<_> = gens
        .histogram(&tables, 5000)
        .map(|b| (b.seq, b.age_ms, b.pages))
        .collect();
    assert_eq!(hist, vec![(1, 5000, GUEST / 4096 - 512), (6, 0, 512)]);
    // An idle pass clears nothing and does not flush.
    let idle = age_pass(
        &tables,
        &mut gens,
        6000,
        &mut flush,
        FlushPolicy::OncePerPass,
    );
    assert_eq!(
        (idle.young_pages, idle.flushed, flush.flushes),
        (0, false, 5)
    );
}

/// The flush policy under nested KVM (TESTBEDS.md §1): the simulated CPU
/// sets A only when it misses in its TLB, and keeps translations until the
/// guest's TLB is flushed. A page touched in every interval must stay hot.
/// This test fails if the pass stops flushing (e.g. the flush call in
/// `age_pass` is removed or the default policy changes).
#[test]
fn flush_policy_keeps_touched_pages_hot_under_nested_kvm() {
    fn run(policy: FlushPolicy) -> (bool, u64) {
        let arena = HostArena::new(64);
        let tables = guest::<Ept>(&arena, PageSize::Size4K);
        let mut gens = Generations::new(0);
        gens.adopt(&tables);
        let mut cpu = SimCpu::cached();
        let mut hot_every_pass = true;
        let mut flushes = 0;
        for pass in 1..=6u64 {
            // The guest touches its working set in every interval.
            for p in 100..110 {
                assert!(cpu.access(&tables, p * 4096, false));
            }
            let s = age_pass(&tables, &mut gens, pass * 1000, &mut cpu, policy);
            flushes += u64::from(s.flushed);
            hot_every_pass &=
                (100..110).all(|p| gens.is_hot(&tables, GuestPhysAddr::new(p * 4096), 1));
        }
        (hot_every_pass, flushes)
    }
    assert_eq!(FlushPolicy::default(), FlushPolicy::OncePerPass);
    assert_eq!(
        run(FlushPolicy::default()),
        (true, 6),
        "hot in every pass, one flush per pass"
    );
    // Without the flush the TLB keeps serving the pages and A never comes
    // back: the working set looks cold from the second pass on.
    assert_eq!(run(FlushPolicy::Never), (false, 0));
}

#[test]
fn counting_flush_counts() {
    fn flush_twice(mut t: impl TlbFlush) {
        t.flush_guest_tlb();
        t.flush_guest_tlb();
    }
    let mut f = CountingFlush::default();
    flush_twice(&mut f);
    assert_eq!(f.flushes, 2);
}

/// The CPU sets A top-down, one locked write per level. A walk that set the
/// upper entries' A before a pass cleared them and the leaf's A after the
/// pass had read the leaf leaves the leaf young under parents whose A is
/// clear. The next pass must still find it (the parents it cleared are
/// marked for one more scan), or the access is lost for good when the guest
/// does not touch that region again.
fn walk_straddling_a_pass_is_not_lost<F: EntryFormat>() {
    let arena = HostArena::new(64);
    let tables = guest::<F>(&arena, PageSize::Size4K);
    let gens = Generations::new(0);
    let gpa = 3 * PAGE_SIZE_2M + 5 * 4096;
    // Two passes: tables start with A set, then the marks of the first pass.
    age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {});
    age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {});
    let mut path = Vec::new();
    let mut w = tables.walk(gpa, gpa + 1, Level::PAGE_4K, 0);
    while w.next().is_some() {
        path.push(w.slot());
    }
    let (leaf, upper) = path.split_last().unwrap();
    for slot in upper {
        slot.fetch_or(F::ACCESSED, std::sync::atomic::Ordering::AcqRel);
    }
    let during = age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {});
    assert_eq!(during.young_pages, 0);
    leaf.fetch_or(F::ACCESSED, std::sync::atomic::Ordering::AcqRel);
    let mut young = Vec::new();
    age_range(&tables, &gens, 0, u64::MAX, |g, _, _| young.push(g));
    assert_eq!(young, vec![gpa], "the straddling access was lost");
    // Once seen and with no new access, the region is skipped again.
    let quiet = age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {});
    let idle = age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {});
    assert_eq!(
        (quiet.young_pages, idle.young_pages, idle.leaf_entries_read),
        (0, 0, 0)
    );
}

#[test]
fn ept_walk_straddling_a_pass_is_not_lost() {
    walk_straddling_a_pass_is_not_lost::<Ept>();
}

#[test]
fn npt_walk_straddling_a_pass_is_not_lost() {
    walk_straddling_a_pass_is_not_lost::<Npt>();
}

/// Ages `[start, end)` (any page boundaries, so runs end in partial chunks)
/// over tables whose densities differ, so the pass switches between its
/// sparse and dense chunk scans: exactly the touched pages inside the range
/// are young, and the next full pass finds exactly the others.
fn partial_range_and_mixed_densities<F: EntryFormat>(
    percent_per_table: &[u64],
    seed: u64,
    start_page: u64,
    len_pages: u64,
) {
    let arena = HostArena::new(64);
    let tables = guest::<F>(&arena, PageSize::Size4K);
    let gens = Generations::new(0);
    let mut cpu = SimCpu::uncached();
    // Settle: fresh tables have A set and are scanned twice.
    age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {});
    age_range(&tables, &gens, 0, u64::MAX, |_, _, _| {});
    let mut rng = seed | 1;
    let mut touched = Vec::new();
    for page in 0..GUEST / 4096 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let percent = percent_per_table[(page / 512) as usize % percent_per_table.len()];
        if rng % 100 < percent {
            assert!(cpu.access(&tables, page * 4096, page % 3 == 0));
            touched.push(page);
        }
    }
    let (start, end) = (start_page * 4096, (start_page + len_pages) * 4096);
    let mut young = Vec::new();
    let stats = age_range(&tables, &gens, start, end, |gpa, level, _| {
        assert_eq!(level, Level::PAGE_4K);
        young.push(gpa / 4096);
    });
    let inside: Vec<u64> = touched
        .iter()
        .copied()
        .filter(|p| (start_page..start_page + len_pages).contains(p))
        .collect();
    assert_eq!(young, inside);
    assert_eq!(stats.young_pages, inside.len() as u64);
    let mut rest = Vec::new();
    age_range(&tables, &gens, 0, u64::MAX, |gpa, _, _| {
        rest.push(gpa / 4096)
    });
    let outside: Vec<u64> = touched
        .iter()
        .copied()
        .filter(|p| !(start_page..start_page + len_pages).contains(p))
        .collect();
    assert_eq!(rest, outside);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    #[test]
    fn npt_partial_range_and_mixed_densities(
        percents in proptest::collection::vec(proptest::sample::select(vec![0u64, 1, 3, 10, 50, 90, 100]), 1..8),
        seed in proptest::prelude::any::<u64>(),
        start_page in 0u64..16384,
        len_pages in 1u64..16384,
    ) {
        partial_range_and_mixed_densities::<Npt>(&percents, seed, start_page, len_pages.min(16384 - start_page));
    }

    #[test]
    fn ept_partial_range_and_mixed_densities(
        percents in proptest::collection::vec(proptest::sample::select(vec![0u64, 1, 3, 10, 50, 90, 100]), 1..8),
        seed in proptest::prelude::any::<u64>(),
        start_page in 0u64..16384,
        len_pages in 1u64..16384,
    ) {
        partial_range_and_mixed_densities::<Ept>(&percents, seed, start_page, len_pages.min(16384 - start_page));
    }
}

/// `age_pass` stamps exactly the young pages whichever way the pass reports
/// them: per page (scattered tables) or per chunk (dense tables), switching
/// between tables of different densities.
#[test]
fn age_pass_stamps_exactly_the_young_pages_at_every_density() {
    let arena = HostArena::new(64);
    let tables = guest::<Npt>(&arena, PageSize::Size4K);
    let mut cpu = SimCpu::uncached();
    let pages = GUEST / 4096;
    let mut gens = Generations::new(0);
    let mut flush = CountingFlush::default();
    // Settle the fresh tables (A set on creation, then the rescan mark).
    age_pass(&tables, &mut gens, 1, &mut flush, FlushPolicy::OncePerPass);
    age_pass(&tables, &mut gens, 2, &mut flush, FlushPolicy::OncePerPass);
    // Per 2 MiB table: all, most, 10 %, 1 % or none of its pages touched.
    let percent = [100u64, 90, 10, 1, 100, 0, 50, 100, 3, 100, 100, 20];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut touched = vec![false; pages as usize];
    for page in 0..pages {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng % 100 < percent[(page / 512) as usize % percent.len()] {
            assert!(cpu.access(&tables, page * 4096, false));
            touched[page as usize] = true;
        }
    }
    let s = age_pass(&tables, &mut gens, 3, &mut flush, FlushPolicy::OncePerPass);
    assert_eq!(s.young_pages, touched.iter().filter(|&&t| t).count() as u64);
    for page in 0..pages {
        let seq = gens.seq_of(&tables, GuestPhysAddr::new(page * 4096));
        let want = if touched[page as usize] {
            s.seq
        } else {
            gens.min_seq()
        };
        assert_eq!(seq, Some(want), "page {page}");
    }
}

/// The retirement schedule over thousands of passes (past the 2047 tags,
/// several turns of table checks). Region 0: page 0 is read before every
/// pass (its table is scanned by every pass), page 1 once before the first
/// pass and never again, pages 2..302 in turn, one per pass (so whenever
/// the table is checked, some page is just inside and some just outside
/// the exact window), the rest never. Region 1: page 512 once before the
/// first pass, then the region is left alone (its table skipped) until
/// page 513 is read before pass 4000. After every pass every page's
/// generation must be its last-young pass clamped to `min_seq`: a page
/// touched once saturates at `min_seq` and never reads young again, which
/// fails if stale tags are not retired before they wrap (or are retired
/// early), whichever table holds them.
fn ages_stay_exact_over_thousands_of_passes<F: EntryFormat>() {
    const PASSES: u64 = 5000;
    let arena = HostArena::new(16);
    let mut alloc = &arena;
    let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
    let mut m = Mapper::new(&tables, &arena);
    m.map(
        &tables,
        GuestPhysAddr::new(0),
        HostPhysAddr::new(1 << 32),
        2 * PAGE_SIZE_2M,
        Perms::RW,
        PageSize::Size4K,
    )
    .unwrap();
    let mut gens = Generations::new(0);
    let mut flush = CountingFlush::default();
    let mut cpu = SimCpu::uncached();
    // The last pass that found each page young (0: never).
    let mut last = [0u64; 1024];
    let (mut retired, mut checked) = (0, 0);
    for i in 0..PASSES {
        let seq = gens.max_seq() + 1;
        let mut touch = vec![0, 2 + i % 300];
        if i == 0 {
            touch.extend([1, 512]);
        }
        if i == 3999 {
            touch.push(513);
        }
        for p in touch {
            assert!(cpu.access(&tables, p * 4096, false));
            last[p as usize] = seq;
        }
        let s = age_pass(
            &tables,
            &mut gens,
            i * 10,
            &mut flush,
            FlushPolicy::OncePerPass,
        );
        assert_eq!(s.seq, seq);
        (retired, checked) = (retired + s.retired, checked + s.tables_checked);
        let min = gens.min_seq();
        let mut seen = 0;
        gens.for_each_page_seq(&tables, 0, 2 * PAGE_SIZE_2M, |gpa, pages, got| {
            assert_eq!(pages, 1);
            let p = (gpa / 4096) as usize;
            assert_eq!(got, last[p].max(min), "page {p} after pass {seq}");
            seen += 1;
        });
        assert_eq!(seen, 1024);
        // Page 1, young in pass 2: exact for 255 passes, then the merged
        // oldest generation, never young again.
        let one = gens.seq_of(&tables, GuestPhysAddr::new(4096)).unwrap();
        let want = if seq - 2 <= EXACT_GENS { 2 } else { min };
        assert_eq!(one, want, "page 1 after pass {seq}");
        assert_eq!(gens.is_hot(&tables, GuestPhysAddr::new(4096), 2), seq <= 3);
    }
    // Each check of region 0 (one per turn, 1024 passes) finds the ~45
    // swept pages between 255 and 299 passes old, and retires them.
    assert!(retired >= 3 * 40, "stale pages retired: {retired}");
    assert!(checked >= 2 * PASSES / 1024, "{checked} tables checked");
    // Every page has a generation in the window: the histogram covers them.
    let hist: u64 = gens.histogram(&tables, PASSES * 10).map(|b| b.pages).sum();
    assert_eq!(hist, 1024);
}

#[test]
fn npt_ages_stay_exact_over_thousands_of_passes() {
    ages_stay_exact_over_thousands_of_passes::<Npt>();
}

#[test]
fn ept_ages_stay_exact_over_thousands_of_passes() {
    ages_stay_exact_over_thousands_of_passes::<Ept>();
}

/// The hot-set score against ground truth, on real tables: 4 KiB pages in
/// the first 2 MiB, one huge page in the second (counted page by page),
/// nothing mapped in the third. A page is hot when a pass after
/// `since_seq` found it young.
#[test]
fn hot_set_score_counts_pages_of_every_size() {
    let arena = HostArena::new(16);
    let mut alloc = &arena;
    let tables = Tables::<Npt, _>::new(&arena, &mut alloc).unwrap();
    let mut m = Mapper::new(&tables, &arena);
    for (gpa, size) in [(0, PageSize::Size4K), (PAGE_SIZE_2M, PageSize::Size2M)] {
        m.map(
            &tables,
            GuestPhysAddr::new(gpa),
            HostPhysAddr::new((1 << 32) + gpa),
            PAGE_SIZE_2M,
            Perms::RW,
            size,
        )
        .unwrap();
    }
    let mut gens = Generations::new(0);
    let mut flush = CountingFlush::default();
    let mut cpu = SimCpu::uncached();
    // Young in pass 2 (before `since`): pages 0..10; in pass 3: 5..20 and
    // the huge page.
    for p in 0..10 {
        assert!(cpu.access(&tables, p * 4096, false));
    }
    age_pass(&tables, &mut gens, 10, &mut flush, FlushPolicy::OncePerPass);
    let since = gens.max_seq();
    for p in 5..20 {
        assert!(cpu.access(&tables, p * 4096, false));
    }
    assert!(cpu.access(&tables, PAGE_SIZE_2M + 4096, true));
    age_pass(&tables, &mut gens, 20, &mut flush, FlushPolicy::OncePerPass);
    // Ground truth over pages 0..1536: 0..15, 600..700 and 1000..1030
    // touched (1024..1030 lie in the unmapped third region: never hot).
    let mut touched = vec![0u64; 1536 / 64];
    let mut set = |p: u64| touched[(p / 64) as usize] |= 1 << (p % 64);
    for p in (0..15).chain(1000..1030).chain(600..700) {
        set(p);
    }
    let s = gens.score_hot_set(&tables, 0, 1536, &touched, since);
    // Hot: 5..20 (15 pages) and the huge page 512..1024 (512 pages).
    // Touched and hot: 5..15 (10) and 600..700 (100) and 1000..1024 (24).
    assert_eq!(s.true_hot, 10 + 100 + 24);
    assert_eq!(s.false_hot, 15 + 512 - 10 - 100 - 24);
    // Touched, not hot: 0..5 (young before `since`) and 1024..1030
    // (unmapped).
    assert_eq!(s.missed, 5 + 6);
    // From an earlier `since`, pages 0..5 are hot too.
    let s = gens.score_hot_set(&tables, 0, 1536, &touched, since - 1);
    assert_eq!((s.true_hot, s.missed), (10 + 100 + 24 + 5, 6));
}
