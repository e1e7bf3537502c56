//! The report format: every record survives format -> parse unchanged
//! (property test), prefixes and unknown fields are tolerated, malformed
//! lines are errors (never panics), and the generation helpers build the
//! cells and ranges the heatmap and the range lines show.

#![cfg(not(loom))]

use hvcore::addr::{GuestPhysAddr, HostPhysAddr};
use hvcore::age::age_pass;
use hvcore::arena::HostArena;
use hvcore::flush::{CountingFlush, FlushPolicy};
use hvcore::generations::Generations;
use hvcore::npt::Npt;
use hvcore::pte::{EntryFormat, Perms};
use hvcore::report::*;
use hvcore::table::{Mapper, PageSize, Tables};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_.-]{1,12}"
}

fn ranges() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0..1u64 << 40, 0..1u64 << 30), 0..6)
        .prop_map(|v| v.into_iter().map(|(a, l)| (a, a + l)).collect())
}

fn record() -> impl Strategy<Value = Record> {
    let n = any::<u64>();
    prop_oneof![
        (name(), n, n, n, n, n, n).prop_map(|(vm, n, t_ms, scanned, young, skipped, dur_us)| {
            Record::Pass(PassLine {
                vm,
                n,
                t_ms,
                scanned,
                young,
                skipped,
                dur_us,
            })
        }),
        (name(), n, n, proptest::collection::vec((n, n, n), 0..8)).prop_map(|(vm, n, t_ms, b)| {
            Record::Hist(HistLine {
                vm,
                n,
                t_ms,
                buckets: b
                    .into_iter()
                    .map(|(seq, age_ms, pages)| HistBucket { seq, age_ms, pages })
                    .collect(),
            })
        }),
        (
            name(),
            n,
            n,
            n,
            1..4096u64,
            proptest::collection::vec(proptest::option::of(0..300u64), 0..200)
        )
            .prop_map(|(vm, n, t_ms, base, cell_kb, cells)| {
                Record::Map(MapLine {
                    vm,
                    n,
                    t_ms,
                    base,
                    cell_kb,
                    cells,
                })
            }),
        (name(), n, n, ranges(), ranges()).prop_map(|(vm, n, t_ms, hot, cold)| Record::Ranges(
            RangesLine {
                vm,
                n,
                t_ms,
                hot,
                cold
            }
        )),
        (name(), proptest::collection::vec(0..u64::MAX / 1000, 14)).prop_map(|(vm, v)| {
            Record::Reclaim(ReclaimLine {
                vm,
                n: v[0],
                t_ms: v[1],
                resident: v[2],
                reclaimed: v[3],
                zero: v[4],
                compressed: v[5],
                raw: v[6],
                cbytes: v[7],
                ratio_milli: v[8],
                refaults: v[9],
                threshold_gens: v[10],
                threshold_ms: v[11],
                freed: v[12],
            })
        }),
        (name(), n, 0..4u8, name()).prop_map(|(vm, t_ms, w, detail)| {
            let what = [
                EventKind::Paused,
                EventKind::Resumed,
                EventKind::Stopped,
                EventKind::TargetUnmet,
            ][usize::from(w)];
            Record::Event(EventLine {
                vm,
                t_ms,
                what,
                detail,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn every_record_round_trips(r in record(), prefix in prop_oneof![Just(""), Just("[ 1.5 INFO] "), Just("vm0: ")]) {
        let line = format!("{prefix}{r}");
        prop_assert!(!line.contains('\n'));
        prop_assert_eq!(parse_line(&line), Some(Ok(r)));
    }

    #[test]
    fn arbitrary_lines_never_panic(s in "\\PC{0,120}") {
        let _ = parse_line(&s);
        let _ = parse_line(&format!("TCR {s}"));
        let _ = parse_line(&format!("TCR map vm=a n=1 t_ms=2 base=0 cell_kb=4 ages={s}"));
    }

    /// Numbers at and past the edges of u64 in every numeric field: a
    /// value or an error, never an overflow panic (a run count of
    /// `usize::MAX`, a ratio of `u64::MAX` thousandths, panicked before).
    #[test]
    fn huge_numbers_never_panic(
        a in prop_oneof![Just(u64::MAX), Just(u64::MAX / 1000), Just(u64::MAX / 1000 + 1), any::<u64>()],
        b in prop_oneof![Just(usize::MAX as u64), Just(u64::MAX), any::<u64>()],
        frac in prop_oneof![Just(String::from("999")), Just(String::from("+99")), "[0-9]{3}"],
    ) {
        let _ = parse_line(&format!("TCR map vm=a n={a} t_ms={a} base={a:#x} cell_kb={a} ages=0x{b},-x{b},{a}"));
        let _ = parse_line(&format!(
            "TCR reclaim vm=a n={a} t_ms={a} resident={a} reclaimed={a} zero={a} compressed={a} \
             raw={a} cbytes={a} ratio={a}.{frac} refaults={a} threshold_gens={a} threshold_ms={a} freed={a}"
        ));
        let _ = parse_line(&format!("TCR hist vm=a n={a} t_ms={a} gens={a}:{b}:{a},{b}:{a}:{b}"));
        let _ = parse_line(&format!("TCR ranges vm=a n={a} t_ms={a} hot=0x0-{a:#x} cold={b:#x}-{a:#x}"));
    }
}

/// Found by a user (issue 19): these panicked with overflow in debug builds.
#[test]
fn overflowing_fields_are_errors() {
    let huge = u64::MAX;
    assert_eq!(
        parse_line(&format!(
            "TCR map vm=a n=1 t_ms=2 base=0 cell_kb=4 ages=0,1x{huge}"
        )),
        Some(Err(ParseError::Bad("ages")))
    );
    assert_eq!(
        parse_line(&format!(
            "TCR reclaim vm=a n=1 t_ms=2 resident=1 reclaimed=1 zero=1 compressed=1 raw=1 \
             cbytes=1 ratio={}.999 refaults=1 threshold_gens=1 threshold_ms=1 freed=1",
            huge / 1000
        )),
        Some(Err(ParseError::Bad("ratio")))
    );
}

#[test]
fn documented_examples_parse() {
    let lines = [
        "TCR pass vm=pattern n=12 t_ms=1200 scanned=16384 young=1024 skipped=30 dur_us=85",
        "TCR hist vm=pattern n=12 t_ms=1200 gens=3:1100:15000,11:100:360,12:0:1024",
        "TCR map vm=pattern n=12 t_ms=1200 base=0x0 cell_kb=64 ages=0x16,9,-x4,0",
        "TCR ranges vm=pattern n=12 t_ms=1200 hot=0x0-0x400000 cold=0x400000-0x4000000",
        "TCR reclaim vm=pattern n=12 t_ms=1200 resident=1384 reclaimed=15000 zero=9000 compressed=5000 raw=1000 cbytes=2100000 ratio=2.921 refaults=3 threshold_gens=4 threshold_ms=400 freed=15000",
        "TCR event vm=pattern t_ms=1300 what=paused detail=no_free_frame_for_fault_at_0x1234000",
    ];
    for l in lines {
        assert!(matches!(parse_line(l), Some(Ok(_))), "{l}");
    }
    let Some(Ok(Record::Map(m))) = parse_line(lines[2]) else {
        unreachable!()
    };
    assert_eq!(m.cells.len(), 16 + 1 + 4 + 1);
    assert_eq!(m.cells[16], Some(9));
    assert_eq!(m.cells[17], None);
    let Some(Ok(Record::Reclaim(r))) = parse_line(lines[4]) else {
        unreachable!()
    };
    assert_eq!(r.ratio_milli, 2921);
    // Unknown fields are ignored; missing ones are errors.
    assert!(matches!(
        parse_line(&format!("{} future=1", lines[0])),
        Some(Ok(_))
    ));
    assert_eq!(
        parse_line("TCR pass vm=a n=1 t_ms=2 scanned=3 young=4 skipped=5"),
        Some(Err(ParseError::Missing("dur_us")))
    );
    assert_eq!(
        parse_line("TCR nope x=1"),
        Some(Err(ParseError::UnknownKind("nope".into())))
    );
    assert_eq!(parse_line("xTCR pass"), None);
    assert_eq!(parse_line("no record here"), None);
    assert!(matches!(
        parse_line("TCR map vm=a n=1 t_ms=2 base=0 cell_kb=4 ages=1x99999999999"),
        Some(Err(ParseError::Bad("ages")))
    ));
}

#[test]
fn cells_and_ranges_from_generations() {
    // 64 pages: 0..16 young every pass, 16..32 young in the first pass
    // only, 32..48 mapped and never touched, 48..64 unmapped.
    let arena = HostArena::new(16);
    let mut alloc = &arena;
    let tables = Tables::<Npt, _>::new(&arena, &mut alloc).unwrap();
    let mut mapper = Mapper::new(&tables, &arena);
    mapper
        .map(
            &tables,
            GuestPhysAddr::new(0),
            HostPhysAddr::new(1 << 32),
            48 * 4096,
            Perms::RW,
            PageSize::Size4K,
        )
        .unwrap();
    let mut g = Generations::new(0);
    assert_eq!(g.adopt(&tables), 48);
    let mut flush = CountingFlush::default();
    for pass in 1..=5u64 {
        let touched = if pass == 1 { 0..32 } else { 0..16 };
        for p in touched {
            assert!(tables.mark_accessed(GuestPhysAddr::new(p * 4096), Npt::ACCESSED));
        }
        age_pass(
            &tables,
            &mut g,
            pass * 100,
            &mut flush,
            FlushPolicy::OncePerPass,
        );
    }
    assert_eq!(g.max_seq(), 6);
    assert_eq!(
        map_cells(&g, &tables, 64 * 4096, 16),
        vec![Some(0), Some(4), Some(5), None]
    );
    // Cells of 24 pages straddle the groups: each takes its youngest page.
    assert_eq!(
        map_cells(&g, &tables, 64 * 4096, 24),
        vec![Some(0), Some(4), None]
    );
    assert_eq!(
        ranges_where(&g, &tables, |age| age == 0),
        vec![(0, 16 * 4096)]
    );
    assert_eq!(
        ranges_where(&g, &tables, |age| age >= 4),
        vec![(16 * 4096, 48 * 4096)]
    );
    assert_eq!(
        ranges_where(&g, &tables, |age| age == 5),
        vec![(32 * 4096, 48 * 4096)]
    );
}
