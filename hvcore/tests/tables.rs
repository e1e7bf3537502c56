//! Table manager and walk tests on both real formats, over the host arena.

#![cfg(not(loom))]

mod common;

use common::{SimCpu, pages_with};
use hvcore::addr::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE_1G, PAGE_SIZE_2M};
use hvcore::arena::HostArena;
use hvcore::ept::Ept;
use hvcore::npt::Npt;
use hvcore::pte::{EntryFormat, Level, Perms};
use hvcore::table::{MapError, Mapper, PageSize, Tables};

const G: fn(u64) -> GuestPhysAddr = GuestPhysAddr::new;
const H: fn(u64) -> HostPhysAddr = HostPhysAddr::new;

fn manager_ops<F: EntryFormat>() {
    let arena = HostArena::new(64);
    let mut alloc = &arena;
    let tables = Tables::<F, _>::new(&arena, &mut alloc).unwrap();
    let mut m = Mapper::new(&tables, &arena);

    // 4 MiB at 2 MiB alignment on both sides: two 2 MiB leaves.
    m.map(
        &tables,
        G(0x40_0000),
        H(0x8000_0000),
        2 * PAGE_SIZE_2M,
        Perms::RW,
        PageSize::Size1G,
    )
    .unwrap();
    let t = tables.translate(G(0x40_1234)).unwrap();
    assert_eq!(
        (t.hpa, t.level, t.perms),
        (H(0x8000_1234), Level::PAGE_2M, Perms::RW)
    );
    // Host side only 4 KiB aligned: 4 KiB leaves.
    m.map(
        &tables,
        G(0x100_0000),
        H(0x9000_1000),
        PAGE_SIZE_2M,
        Perms::R,
        PageSize::Size1G,
    )
    .unwrap();
    assert_eq!(
        tables.translate(G(0x100_0000)).unwrap().level,
        Level::PAGE_4K
    );
    // A 1 GiB page.
    m.map(
        &tables,
        G(PAGE_SIZE_1G),
        H(4 * PAGE_SIZE_1G),
        PAGE_SIZE_1G,
        Perms::RWX,
        PageSize::Size1G,
    )
    .unwrap();
    assert_eq!(
        tables.translate(G(PAGE_SIZE_1G + 5)).unwrap().level,
        Level::PAGE_1G
    );
    // Overlap, misalignment and bad rights are refused without changes.
    assert_eq!(
        m.map(
            &tables,
            G(0x50_0000),
            H(0),
            4096,
            Perms::RW,
            PageSize::Size4K
        ),
        Err(MapError::AlreadyMapped(G(0x50_0000)))
    );
    assert_eq!(
        m.map(&tables, G(0x123), H(0), 4096, Perms::RW, PageSize::Size4K),
        Err(MapError::Unaligned)
    );
    let no_read = Perms {
        read: false,
        write: true,
        exec: false,
    };
    assert_eq!(
        m.map(&tables, G(0), H(0), 4096, no_read, PageSize::Size4K),
        Err(MapError::BadPerms)
    );
    assert_eq!(
        m.map(
            &tables,
            G(u64::MAX - 4095),
            H(0),
            4096,
            Perms::R,
            PageSize::Size4K
        ),
        Err(MapError::OutOfRange)
    );

    // Accesses set A on exactly the pages touched, D on the written one.
    let mut cpu = SimCpu::uncached();
    assert!(cpu.access(&tables, 0x100_3000, false));
    assert!(
        !cpu.access(&tables, 0x100_3000, true),
        "read-only page refuses a write"
    );
    assert!(cpu.access(&tables, 0x40_0000 + 7 * 4096, true));
    assert!(!cpu.access(&tables, 0x200_0000, false), "unmapped");
    assert_eq!(pages_with(&tables, 0x200_0000, F::ACCESSED).len(), 512 + 1);
    assert!(pages_with(&tables, 0x200_0000, F::ACCESSED).contains(&0x1003));
    assert_eq!(
        pages_with(&tables, 0x200_0000, F::DIRTY),
        (0x400..0x600).collect::<Vec<_>>()
    );

    // Split keeps frames, rights and A/D; collapse puts them back together.
    m.split(&tables, G(0x40_0000), Level::PAGE_2M).unwrap();
    let t = tables.translate(G(0x40_7000)).unwrap();
    assert_eq!(
        (t.hpa, t.level, t.accessed, t.dirty),
        (H(0x8000_7000), Level::PAGE_4K, true, true)
    );
    assert_eq!(
        m.split(&tables, G(0x40_0000), Level::PAGE_2M),
        Err(MapError::NotMapped(G(0x40_0000)))
    );
    m.protect(&tables, G(0x40_2000), 4096, Perms::R).unwrap();
    assert_eq!(
        m.collapse(&tables, G(0x40_0000), Level::PAGE_2M),
        Err(MapError::NotCollapsible(G(0x40_0000)))
    );
    m.protect(&tables, G(0x40_2000), 4096, Perms::RW).unwrap();
    let before = arena.in_use();
    m.collapse(&tables, G(0x40_0000), Level::PAGE_2M).unwrap();
    let t = tables.translate(G(0x40_7000)).unwrap();
    assert_eq!(
        (t.level, t.accessed, t.dirty, t.perms),
        (Level::PAGE_2M, true, true, Perms::RW)
    );
    assert_eq!(m.retired_pages(), 1);
    assert_eq!(
        m.tlb_flushed(&tables),
        1,
        "no walker pinned: freed after the flush"
    );
    assert_eq!(arena.in_use(), before - 1);
    // 4 KiB frames that are not contiguous do not collapse.
    assert!(m.collapse(&tables, G(0x100_0000), Level::PAGE_2M).is_err());

    // Protect in the middle of a huge page splits it.
    let c = m
        .protect(&tables, G(PAGE_SIZE_1G + PAGE_SIZE_2M), 4096, Perms::R)
        .unwrap();
    assert!(c.flush_needed);
    assert_eq!(
        tables
            .translate(G(PAGE_SIZE_1G + PAGE_SIZE_2M))
            .unwrap()
            .perms,
        Perms::R
    );
    assert_eq!(
        tables
            .translate(G(PAGE_SIZE_1G + PAGE_SIZE_2M))
            .unwrap()
            .level,
        Level::PAGE_4K
    );
    assert_eq!(
        tables.translate(G(PAGE_SIZE_1G)).unwrap().level,
        Level::PAGE_2M
    );
    assert_eq!(
        tables
            .translate(G(PAGE_SIZE_1G + 8 * PAGE_SIZE_2M))
            .unwrap()
            .perms,
        Perms::RWX
    );

    // Unmap reports D bits, splits straddling huge pages, unlinks whole
    // tables and frees them after a flush and the grace period.
    let mut dirty = Vec::new();
    let c = m
        .unmap(
            &tables,
            G(0x40_0000 - 4096),
            PAGE_SIZE_2M + 8192,
            |gpa, _, e| {
                if e & F::DIRTY != 0 {
                    dirty.push(gpa)
                }
            },
        )
        .unwrap();
    assert_eq!((c.pages, c.dirty_pages), (513, 512));
    assert_eq!(
        dirty,
        vec![0x40_0000],
        "only the written 2 MiB leaf was dirty"
    );
    assert!(tables.translate(G(0x60_0000)).is_none());
    assert!(tables.translate(G(0x60_1000)).is_some());
    let walker = tables.walk(0, u64::MAX, Level::PAGE_4K, 0);
    let c = m
        .unmap(&tables, G(PAGE_SIZE_1G), PAGE_SIZE_1G, |_, _, _| {})
        .unwrap();
    assert_eq!(c.pages, PAGE_SIZE_1G / 4096);
    let retired = m.retired_pages();
    assert!(
        retired >= 2,
        "the split 1 GiB table and its 2 MiB sub-table"
    );
    assert_eq!(
        m.tlb_flushed(&tables),
        0,
        "a walker pinned before the unlink holds them"
    );
    drop(walker);
    assert_eq!(m.reclaim(&tables), retired);
    assert!(tables.translate(G(PAGE_SIZE_1G)).is_none());
}

#[test]
fn ept_manager() {
    manager_ops::<Ept>();
}

#[test]
fn npt_manager() {
    manager_ops::<Npt>();
}

#[test]
fn walk_is_preorder_and_respects_range_and_min_level() {
    let arena = HostArena::new(16);
    let mut alloc = &arena;
    let tables = Tables::<Npt, _>::new(&arena, &mut alloc).unwrap();
    let mut m = Mapper::new(&tables, &arena);
    m.map(
        &tables,
        G(0x1000),
        H(0x1000),
        3 * 4096,
        Perms::RW,
        PageSize::Size4K,
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut w = tables.walk(0x2000, 0x4000, Level::PAGE_4K, 0);
    while let Some(e) = w.next() {
        seen.push((e.level.get(), e.gpa, Npt::is_present(e.old)));
    }
    assert_eq!(
        seen,
        vec![
            (4, 0, true),
            (3, 0, true),
            (2, 0, true),
            (1, 0x2000, true),
            (1, 0x3000, true)
        ]
    );
    let mut w = tables.walk(0, 0x10_0000, Level::PAGE_2M, 0);
    let mut levels = Vec::new();
    while let Some(e) = w.next() {
        levels.push(e.level.get());
    }
    assert_eq!(levels, vec![4, 3, 2]);
    // A filtered walk on A skips the whole tree when no A bit is set.
    let mut w = tables.walk(0, u64::MAX, Level::PAGE_4K, Npt::ACCESSED);
    // Non-leaf entries are created with A set, leaves without.
    let mut n = 0;
    while let Some(e) = w.next() {
        assert!(e.level > Level::PAGE_4K);
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn out_of_table_pages_undoes_a_partial_map() {
    let arena = HostArena::new(4);
    let mut alloc = &arena;
    let tables = Tables::<Ept, _>::new(&arena, &mut alloc).unwrap();
    let mut m = Mapper::new(&tables, &arena);
    // Root + 3 levels for the first 2 MiB, then no page for the second table.
    let err = m.map(
        &tables,
        G(0),
        H(0x1000),
        2 * PAGE_SIZE_2M,
        Perms::RW,
        PageSize::Size4K,
    );
    assert_eq!(err, Err(MapError::OutOfMemory));
    assert!(tables.translate(G(0)).is_none());
    assert!(tables.translate(G(PAGE_SIZE_2M - 4096)).is_none());
    m.tlb_flushed(&tables);
    assert_eq!(m.retired_pages(), 0);
    // The 4 KiB table went back; the empty upper tables stay for reuse.
    assert_eq!(arena.in_use(), 3);
    m.map(&tables, G(0), H(0x1000), 4096, Perms::RW, PageSize::Size4K)
        .unwrap();
    assert!(tables.translate(G(0)).is_some());
}
