//! Loom models of the reclaimer racing a guest write: the write must never
//! be lost, whichever way the interleaving goes. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p hvcore --release --target-dir target/loom -- loom`.
//!
//! The models run the crate's real [`Reclaimer`], [`Mapper`] and tables
//! (atomics from `hvcore::sync`) on [`TinyFormat`] trees. The guest is a
//! simulated vCPU: a TLB of one translation, page walks that set A and D
//! with atomic read-modify-writes on the entry it read (so a D update on an
//! entry the reclaimer has just exchanged fails and faults, as the CPU's
//! locked update does), nested page faults that take the VM's lock and
//! call the fault-in path, and a TLB flush that completes only once the
//! vCPU is between instructions (a shootdown IPI: it acknowledges while
//! waiting for the lock too, never between setting D and storing data).
//!
//! The deliberately broken twins of the reclaimer make these models fail:
//! * `--cfg hvcore_broken_reclaim_order` (frames read before the flush):
//!   `loom_reclaim_write_through_cached_translation` fails;
//! * `--cfg hvcore_broken_reclaim_dbit` (A and D from a snapshot read before
//!   the exchange): `loom_reclaim_clean_copy_vs_write` fails.
//!
//! e.g. `RUSTFLAGS="--cfg loom --cfg hvcore_broken_reclaim_order" cargo test
//! -p hvcore --release --target-dir target/loom-broken --test loom_reclaim`.
#![cfg(loom)]

use hvcore::addr::{GuestPhysAddr, HostPhysAddr};
use hvcore::age::age_pass;
use hvcore::flush::{CountingFlush, FlushPolicy, TlbFlush};
use hvcore::generations::Generations;
use hvcore::pte::{EntryFormat, Level, Perms, TinyFormat as T};
use hvcore::reclaim::{FaultIn, FlushedFrame, GuestFrames, ReclaimConfig, Reclaimer};
use hvcore::store::PAGE_BYTES;
use hvcore::sync::{AtomicBool, AtomicU64, Ordering};
use hvcore::table::{Mapper, PageSize, TableAlloc, TableMemory, Tables};
use loom::sync::{Arc, Mutex};
use loom::thread;

const TABLE_BASE: u64 = 0x10_0000;
const TABLE_PAGES: usize = 3;
const FRAME_BASE: u64 = 0x40_0000;
const FRAMES: usize = 3;

/// Table pages, guest frames (one u64 of contents each) and the flush
/// handshake, shared by every thread.
struct Shared {
    tables: Vec<Box<[AtomicU64]>>,
    frames: Vec<AtomicU64>,
    frame_freed: Vec<AtomicBool>,
    flush_req: AtomicU64,
    flush_ack: AtomicU64,
    done: AtomicBool,
}

#[derive(Clone)]
struct Mem(Arc<Shared>);

impl TableMemory for Mem {
    fn table(&self, table: HostPhysAddr) -> Option<&[AtomicU64]> {
        let i = usize::try_from((table.as_u64().checked_sub(TABLE_BASE)?) / 4096).ok()?;
        self.0.tables.get(i).map(|t| &t[..])
    }
}

struct TableAlloc1 {
    free: Vec<u64>,
}

impl TableAlloc for TableAlloc1 {
    fn alloc_table(&mut self) -> Option<HostPhysAddr> {
        self.free.pop().map(HostPhysAddr::new)
    }
    fn free_table(&mut self, table: HostPhysAddr) {
        self.free.push(table.as_u64());
    }
}

/// The reclaimer's view of frames: a free list plus the shared contents.
struct Frames {
    shared: Arc<Shared>,
    free: Vec<usize>,
}

fn frame_index(hpa: HostPhysAddr) -> usize {
    ((hpa.as_u64() - FRAME_BASE) / 4096) as usize
}

impl GuestFrames for Frames {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        let i = self.free.pop()?;
        self.shared.frame_freed[i].store(false, Ordering::SeqCst);
        Some(HostPhysAddr::new(FRAME_BASE + i as u64 * 4096))
    }
    fn free_frame(&mut self, frame: HostPhysAddr) {
        let i = frame_index(frame);
        self.shared.frame_freed[i].store(true, Ordering::SeqCst);
        // Poison: a late write would be caught by the final check only if
        // it changed a live frame; a write to a freed frame is caught here.
        self.shared.frames[i].store(0xdead, Ordering::SeqCst);
        self.free.push(i);
    }
    fn read_frame(&mut self, frame: &FlushedFrame, out: &mut [u8; PAGE_BYTES]) {
        out.fill(0);
        let v = self.shared.frames[frame_index(frame.frame())].load(Ordering::SeqCst);
        out[..8].copy_from_slice(&v.to_le_bytes());
    }
    fn write_frame(&mut self, frame: HostPhysAddr, data: &[u8; PAGE_BYTES]) {
        let mut w = [0u8; 8];
        w.copy_from_slice(&data[..8]);
        self.shared.frames[frame_index(frame)].store(u64::from_le_bytes(w), Ordering::SeqCst);
    }
}

/// The flush: ask, then wait until the vCPU acknowledged (it drops its TLB
/// when it does).
struct Shootdown(Arc<Shared>);

impl TlbFlush for Shootdown {
    fn flush_guest_tlb(&mut self) {
        let req = self.0.flush_req.fetch_add(1, Ordering::SeqCst) + 1;
        while self.0.flush_ack.load(Ordering::SeqCst) < req {
            thread::yield_now();
        }
    }
}

/// Everything behind the VM's writer lock.
struct Vm {
    tables: Tables<T, Mem>,
    mapper: Mapper<TableAlloc1>,
    frames: Frames,
    gens: Generations,
    rec: Reclaimer,
}

/// The simulated vCPU.
struct Vcpu {
    shared: Arc<Shared>,
    /// One cached translation of page 0: (frame index, dirty).
    tlb: Option<(usize, bool)>,
    acked: u64,
}

impl Vcpu {
    /// At an instruction boundary: take a pending shootdown.
    fn boundary(&mut self) {
        let req = self.shared.flush_req.load(Ordering::SeqCst);
        if req > self.acked {
            self.tlb = None;
            self.acked = req;
            self.shared.flush_ack.store(req, Ordering::SeqCst);
        }
    }

    /// One page walk for a write of page 0, without any lock (the CPU's
    /// walker): A and D set with an RMW that fails if the entry changed
    /// (the CPU's locked update), else a fault.
    fn walk_for_write(&mut self) -> Option<usize> {
        let mem = Mem(self.shared.clone());
        let r = mem.table(HostPhysAddr::new(TABLE_BASE))?[0].load(Ordering::SeqCst);
        if !T::is_table(r, Level::PAGE_2M) {
            return None;
        }
        let slot = &mem.table(T::addr(r))?[0];
        let e = slot.load(Ordering::SeqCst);
        if !T::is_present(e) {
            return None;
        }
        slot.compare_exchange(
            e,
            e | T::ACCESSED | T::DIRTY,
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .ok()?;
        Some(frame_index(T::addr(e)))
    }

    /// Takes shootdowns until the reclaimer is done.
    fn idle_until_done(&mut self) {
        while !self.shared.done.load(Ordering::SeqCst) {
            self.boundary();
            thread::yield_now();
        }
    }

    /// A guest write of `value` to page 0, faulting as often as needed.
    fn write(&mut self, vm: &Mutex<Vm>, value: u64) {
        loop {
            self.boundary();
            if let Some((f, true)) = self.tlb {
                // Writes through the cached translation: no walk.
                assert!(
                    !self.shared.frame_freed[f].load(Ordering::SeqCst),
                    "the guest wrote a frame the reclaimer freed"
                );
                self.shared.frames[f].store(value, Ordering::SeqCst);
                return;
            }
            match self.walk_for_write() {
                Some(f) => {
                    // Between the D update and the store the vCPU is inside
                    // one instruction: no shootdown is taken here.
                    self.tlb = Some((f, true));
                    assert!(!self.shared.frame_freed[f].load(Ordering::SeqCst));
                    self.shared.frames[f].store(value, Ordering::SeqCst);
                    return;
                }
                None => self.fault(vm),
            }
        }
    }

    /// The nested page fault: wait for the lock (acknowledging shootdowns
    /// meanwhile), then bring the page back.
    fn fault(&mut self, vm: &Mutex<Vm>) {
        let mut g = loop {
            if let Ok(g) = vm.try_lock() {
                break g;
            }
            self.boundary();
            thread::yield_now();
        };
        let Vm {
            tables,
            mapper,
            frames,
            gens,
            rec,
        } = &mut *g;
        let r = rec.fault_in(tables, mapper, frames, gens, GuestPhysAddr::new(0), 0);
        assert!(
            matches!(r, Ok(FaultIn::Restored(_)) | Ok(FaultIn::NotReclaimed)),
            "{r:?}"
        );
    }
}

/// A VM with page 0 mapped (4 KiB) to frame 0 holding `value`, leaf entry
/// `flags` (A/D) as given.
fn setup(value: u64, flags: u64) -> (Arc<Shared>, Arc<Mutex<Vm>>) {
    let shared = Arc::new(Shared {
        tables: (0..TABLE_PAGES)
            .map(|_| (0..T::ENTRIES).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        frames: (0..FRAMES).map(|_| AtomicU64::new(0)).collect(),
        frame_freed: (0..FRAMES).map(|_| AtomicBool::new(true)).collect(),
        flush_req: AtomicU64::new(0),
        flush_ack: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let mut talloc = TableAlloc1 {
        free: (0..TABLE_PAGES as u64)
            .rev()
            .map(|i| TABLE_BASE + i * 4096)
            .collect(),
    };
    let tables = Tables::<T, _>::new(Mem(shared.clone()), &mut talloc).unwrap();
    let mut mapper = Mapper::new(&tables, talloc);
    let mut frames = Frames {
        shared: shared.clone(),
        free: (0..FRAMES).rev().collect(),
    };
    let f0 = frames.alloc_frame().unwrap();
    shared.frames[frame_index(f0)].store(value, Ordering::SeqCst);
    mapper
        .map(
            &tables,
            GuestPhysAddr::new(0),
            f0,
            4096,
            Perms::RW,
            PageSize::Size4K,
        )
        .unwrap();
    let leaf_table = T::addr(tables.mem().table(tables.root()).unwrap()[0].load(Ordering::SeqCst));
    tables.mem().table(leaf_table).unwrap()[0].fetch_or(flags, Ordering::SeqCst);
    let mut gens = Generations::new(0);
    assert_eq!(gens.adopt(&tables), 1);
    gens.begin_pass(1);
    let rec = Reclaimer::new(ReclaimConfig::default(), 0);
    let vm = Vm {
        tables,
        mapper,
        frames,
        gens,
        rec,
    };
    (shared, Arc::new(Mutex::new(vm)))
}

fn reclaim(vm: &Mutex<Vm>, shared: &Arc<Shared>) {
    let mut g = vm.lock().unwrap();
    let Vm {
        tables,
        mapper,
        frames,
        gens,
        rec,
    } = &mut *g;
    rec.reclaim_pages(
        tables,
        mapper,
        frames,
        &mut Shootdown(shared.clone()),
        gens,
        &[0],
    );
    shared.done.store(true, Ordering::SeqCst);
}

/// What the guest reads from page 0 in the end (faulting it back in).
fn final_value(vm: &Mutex<Vm>, shared: &Shared) -> u64 {
    let mut g = vm.lock().unwrap();
    if g.tables.translate(GuestPhysAddr::new(0)).is_none() {
        let Vm {
            tables,
            mapper,
            frames,
            gens,
            rec,
        } = &mut *g;
        rec.fault_in(tables, mapper, frames, gens, GuestPhysAddr::new(0), 0)
            .unwrap();
    }
    let t = g.tables.translate(GuestPhysAddr::new(0)).unwrap();
    shared.frames[frame_index(t.hpa)].load(Ordering::SeqCst)
}

/// Runs `f` under loom on a thread with a larger stack: the reclaimer's
/// generation queries keep a few KiB of counts on the stack (a histogram
/// of the window), more than loom's default 32 KiB coroutine stack holds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    let f = std::sync::Arc::new(f);
    b.check(move || {
        let f = f.clone();
        thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || f())
            .unwrap()
            .join()
            .unwrap();
    });
}

/// The guest holds a dirty translation of a page that aging found cold
/// (A clear, D set) and writes through it while the reclaimer takes the
/// page: the write lands before the flush completes, so the frame must be
/// read only after it.
#[test]
fn loom_reclaim_write_through_cached_translation() {
    model(|| {
        let (shared, vm) = setup(1, T::DIRTY);
        let mut cpu = Vcpu {
            shared: shared.clone(),
            tlb: Some((0, true)),
            acked: 0,
        };
        let vm2 = vm.clone();
        let guest = thread::spawn(move || {
            cpu.write(&vm2, 2);
            cpu.idle_until_done();
        });
        reclaim(&vm, &shared);
        guest.join().unwrap();
        assert_eq!(final_value(&vm, &shared), 2, "the guest's write was lost");
    });
}

/// The page was reclaimed, faulted back (a clean copy is kept) and aged
/// (entry A/D clear); the guest writes it (walk, D set) while the reclaimer takes
/// it again. Dropping the frame as clean is right only if D is clear in the
/// *exchanged* value.
#[test]
fn loom_reclaim_clean_copy_vs_write() {
    model(|| {
        let (shared, vm) = setup(1, 0);
        // Reclaim once and fault back: page 0 now has a clean copy.
        {
            let mut g = vm.lock().unwrap();
            let Vm {
                tables,
                mapper,
                frames,
                gens,
                rec,
            } = &mut *g;
            // No vCPU holds a translation yet: acknowledge in advance.
            shared.flush_ack.store(1, Ordering::SeqCst);
            rec.reclaim_pages(
                tables,
                mapper,
                frames,
                &mut Shootdown(shared.clone()),
                gens,
                &[0],
            );
            rec.fault_in(tables, mapper, frames, gens, GuestPhysAddr::new(0), 0)
                .unwrap();
            assert_eq!(rec.clean_copies(), 1);
            // A fault-in leaves A set (the access it serves); a pass clears
            // it, or the reclaimer would rescue the page instead of taking
            // it (and this model would never reach the clean drop).
            age_pass(
                tables,
                gens,
                1,
                &mut CountingFlush::default(),
                FlushPolicy::OncePerPass,
            );
            let t = tables.translate(GuestPhysAddr::new(0)).unwrap();
            assert!(!t.accessed && !t.dirty);
        }
        let mut cpu = Vcpu {
            shared: shared.clone(),
            tlb: None,
            acked: 1,
        };
        let vm2 = vm.clone();
        let guest = thread::spawn(move || {
            cpu.write(&vm2, 2);
            cpu.idle_until_done();
        });
        reclaim(&vm, &shared);
        guest.join().unwrap();
        assert_eq!(
            final_value(&vm, &shared),
            2,
            "a dirty page was dropped as clean"
        );
    });
}
