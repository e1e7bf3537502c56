//! Reclaim driven by host memory pressure (overcommit): the watermarks, the
//! choice of victim across VMs and one whole round
//! (`hvcore::reclaim::pressure_round`) against a model of several VMs whose
//! pages have ages and compress or not.

#![cfg(not(loom))]

use hvcore::reclaim::{BatchStats, VictimCandidate, Watermarks, pick_victim, pressure_round};
use std::cell::RefCell;

/// One model page: how long ago it was young, and whether it compresses.
#[derive(Clone, Copy, Debug)]
struct Page {
    age_ms: u64,
    compresses: bool,
    resident: bool,
}

/// Host and VMs: reclaiming a page frees its frame; a page that does not
/// compress is kept raw and costs the heap a frame back.
struct Host {
    free: u64,
    vms: Vec<Vec<Page>>,
    stopped: Vec<bool>,
    /// (vm, age) of every page reclaimed, in order.
    taken: Vec<(usize, u64)>,
    batch_pages: usize,
}

impl Host {
    fn survey(&self, i: usize) -> VictimCandidate {
        let coldest = self.vms[i]
            .iter()
            .filter(|p| p.resident && p.age_ms > 0)
            .map(|p| p.age_ms)
            .max();
        VictimCandidate {
            coldest_age_ms: if self.stopped[i] { None } else { coldest },
            barren: false,
        }
    }

    fn reclaim(&mut self, i: usize) -> BatchStats {
        let mut b = BatchStats::default();
        for _ in 0..self.batch_pages {
            let Some(p) = self.vms[i]
                .iter_mut()
                .filter(|p| p.resident && p.age_ms > 0)
                .max_by_key(|p| p.age_ms)
            else {
                break;
            };
            p.resident = false;
            b.candidates += 1;
            b.reclaimed += 1;
            self.free += 1;
            if p.compresses {
                b.compressed += 1;
            } else {
                b.raw += 1;
                self.free -= 1;
            }
            self.taken.push((i, p.age_ms));
        }
        b
    }

    fn round(host: &RefCell<Host>, wm: Watermarks) -> hvcore::reclaim::PressureRound {
        let n = host.borrow().vms.len();
        pressure_round(
            wm,
            n,
            || host.borrow().free,
            |i| host.borrow().survey(i),
            |i| host.borrow_mut().reclaim(i),
        )
    }
}

fn pages(ages: impl IntoIterator<Item = u64>, compresses: bool) -> Vec<Page> {
    ages.into_iter()
        .map(|age_ms| Page {
            age_ms,
            compresses,
            resident: true,
        })
        .collect()
}

const WM: Watermarks = Watermarks {
    low_frames: 100,
    high_frames: 200,
};

#[test]
fn watermarks_start_below_low_and_stop_at_high() {
    assert!(WM.under_pressure(99));
    assert!(!WM.under_pressure(100));
    assert!(!WM.satisfied(199));
    assert!(WM.satisfied(200));
    // A high mark under the low one is read as the low one.
    let odd = Watermarks {
        low_frames: 50,
        high_frames: 10,
    };
    assert!(!odd.satisfied(49));
    assert!(odd.satisfied(50));
}

#[test]
fn the_victim_holds_the_coldest_page_and_barren_vms_are_passed_over() {
    let c = |age: Option<u64>, barren: bool| VictimCandidate {
        coldest_age_ms: age,
        barren,
    };
    assert_eq!(pick_victim(&[]), None);
    assert_eq!(pick_victim(&[c(None, false), c(None, false)]), None);
    assert_eq!(
        pick_victim(&[c(Some(5), false), c(Some(9), false)]),
        Some(1)
    );
    assert_eq!(
        pick_victim(&[c(Some(9), false), c(Some(9), false)]),
        Some(0)
    );
    assert_eq!(
        pick_victim(&[c(Some(50), true), c(Some(9), false)]),
        Some(1)
    );
    assert_eq!(pick_victim(&[c(Some(50), true), c(None, false)]), None);
}

#[test]
fn a_round_takes_the_coldest_pages_of_any_vm_first_until_the_high_mark() {
    // Three VMs with interleaved ages (and some young pages, age 0).
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let vms: Vec<Vec<Page>> = (0..3)
        .map(|_| pages((0..300).map(|_| next() % 1000), true))
        .collect();
    let host = RefCell::new(Host {
        free: 40,
        vms,
        stopped: vec![false; 3],
        taken: Vec::new(),
        batch_pages: 1,
    });
    let r = Host::round(&host, WM);
    let h = host.borrow();
    assert!(r.satisfied);
    assert_eq!(
        h.free, WM.high_frames,
        "stops as soon as the high mark is met"
    );
    assert_eq!(r.reclaimed, 160);
    assert_eq!(r.net_frames, 160);
    assert!(r.went_barren.is_empty());
    // Every page taken is at least as cold as every reclaimable page left,
    // whichever VM either belongs to.
    let coldest_left = h
        .vms
        .iter()
        .flatten()
        .filter(|p| p.resident && p.age_ms > 0)
        .map(|p| p.age_ms)
        .max()
        .unwrap();
    assert!(h.taken.iter().all(|&(_, age)| age >= coldest_left));
    assert!(
        h.taken.windows(2).all(|w| w[0].1 >= w[1].1),
        "coldest first"
    );
    // Pages from more than one VM were taken (the ages interleave).
    assert!((0..3).filter(|v| h.taken.iter().any(|t| t.0 == *v)).count() > 1);
    // Young pages are never taken.
    assert!(h.taken.iter().all(|&(_, age)| age > 0));
}

#[test]
fn a_vm_that_cannot_shrink_goes_barren_and_the_round_ends_unsatisfied() {
    // VM 0 holds the coldest pages but none compresses (reclaiming them
    // frees nothing); VM 1 compresses but has too few cold pages; VM 2 is
    // stopped.
    let host = RefCell::new(Host {
        free: 50,
        vms: vec![
            pages((0..500).map(|i| 5_000 + i), false),
            pages((0..80).map(|i| 1 + i), true),
            pages((0..500).map(|i| 9_000 + i), true),
        ],
        stopped: vec![false, false, true],
        taken: Vec::new(),
        batch_pages: 16,
    });
    let r = Host::round(&host, WM);
    let h = host.borrow();
    assert!(!r.satisfied);
    assert_eq!(r.went_barren, vec![0]);
    // One batch of VM 0 (then passed over), all of VM 1, nothing of VM 2.
    assert_eq!(h.taken.iter().filter(|t| t.0 == 0).count(), 16);
    assert_eq!(h.taken.iter().filter(|t| t.0 == 1).count(), 80);
    assert_eq!(h.taken.iter().filter(|t| t.0 == 2).count(), 0);
    assert_eq!(r.net_frames, 80);
    assert_eq!(h.free, 130);
    // VM 1 has nothing left after 5 batches: the survey ends the round.
    assert_eq!(r.batches, 1 + 5);
}
