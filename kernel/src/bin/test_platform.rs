//! Scenario `platform`: frames, heap, clock, all CPUs, kernel threads, IPIs.
//!
//! Booted by `tests/tests/platform.rs` with several `-smp` values. Cases
//! that need a timer (preemption) check `time::has_timer()` and say so when
//! the machine has none (the Bochs CPU core); everything else runs the same on
//! one CPU.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use bootloader_api::{BootInfo, entry_point};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use hvcore::addr::{HostPhysAddr, PAGE_SIZE_4K};
use kernel::mem::{self, FrameSize, phys};
use kernel::sched::{self, JoinHandle};
use kernel::smp;
use kernel::testing::{Scenario, TestCase, run_scenario};
use kernel::time;

entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut BootInfo) -> ! {
    kernel::init(boot_info);
    // The banner lists the CPUs and the timer mode; the host test reads them.
    kernel::banner::print();
    kernel::println!(
        "[platform] cpus={} timer={}",
        smp::cpu_count(),
        time::has_timer()
    );
    run_scenario(&SCENARIO)
}

static SCENARIO: Scenario = Scenario {
    name: "platform",
    cases: &[
        TestCase {
            name: "all_cpus_report_their_apic_ids",
            run: all_cpus_report_apic_ids,
        },
        TestCase {
            name: "heap_serves_threads_on_every_cpu",
            run: heap_on_every_cpu,
        },
        TestCase {
            name: "pinned_threads_counters_add_up",
            run: pinned_threads_counters,
        },
        TestCase {
            name: "park_unpark_across_cpus",
            run: park_unpark_across_cpus,
        },
        TestCase {
            name: "sleep_ms_100_matches_tsc",
            run: sleep_ms_100,
        },
        TestCase {
            name: "never_yielding_thread_is_preempted",
            run: never_yielding_is_preempted,
        },
        TestCase {
            name: "frame_stress_across_cpus",
            run: frame_stress,
        },
        TestCase {
            name: "run_on_all_and_tlb_shootdown",
            run: tlb_shootdown,
        },
    ],
};

fn online_cpus() -> impl Iterator<Item = usize> {
    (0..smp::MAX_CPUS).filter(|&c| smp::is_online(c))
}

fn all_cpus_report_apic_ids() {
    let n = smp::cpu_count();
    assert_eq!(
        online_cpus().count(),
        n,
        "online flags disagree with the count"
    );
    let seen: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(u64::MAX)).collect();
    for cpu in online_cpus() {
        smp::run_on(cpu, &|| {
            let me = smp::cpu_index();
            let id = smp::percpu::current_apic_id();
            seen[me].store(u64::from(id), Ordering::Release);
        });
    }
    let mut ids: Vec<u64> = Vec::new();
    for cpu in online_cpus() {
        let id = seen[cpu].load(Ordering::Acquire);
        assert_eq!(
            id,
            u64::from(smp::apic_id(cpu)),
            "cpu{cpu} reports another APIC ID"
        );
        kernel::println!("[platform] cpu{cpu} apic_id={id}");
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "two CPUs share an APIC ID");
}

fn heap_on_every_cpu() {
    let handles: Vec<JoinHandle> = online_cpus()
        .map(|cpu| {
            sched::spawn_on(cpu, "heap", move || {
                let mut v: Vec<Vec<u64>> = Vec::new();
                for i in 0..200u64 {
                    v.push((0..(i % 37) * 10).map(|x| x ^ i).collect());
                }
                for (i, inner) in v.iter().enumerate() {
                    for (x, val) in inner.iter().enumerate() {
                        assert_eq!(*val, x as u64 ^ i as u64, "heap data corrupted");
                    }
                }
                // A big (1 MiB) allocation still fits one 2 MiB heap span.
                let big = alloc::vec![0xA5u8; 1 << 20];
                assert!(big.iter().all(|b| *b == 0xA5));
            })
        })
        .collect();
    for h in handles {
        h.join();
    }
    assert!(mem::heap::heap_bytes() > 0);
}

fn pinned_threads_counters() {
    const PER_CPU: usize = 3;
    const ROUNDS: u64 = 20_000;
    let total = Arc::new(AtomicU64::new(0));
    let wrong_cpu = Arc::new(AtomicUsize::new(0));
    let per_cpu: Arc<Vec<AtomicU64>> =
        Arc::new((0..smp::MAX_CPUS).map(|_| AtomicU64::new(0)).collect());
    let mut handles = Vec::new();
    for cpu in online_cpus() {
        for _ in 0..PER_CPU {
            let (total, wrong_cpu, per_cpu) = (total.clone(), wrong_cpu.clone(), per_cpu.clone());
            handles.push(sched::spawn_on(cpu, "counter", move || {
                for i in 0..ROUNDS {
                    total.fetch_add(1, Ordering::Relaxed);
                    per_cpu[smp::cpu_index()].fetch_add(1, Ordering::Relaxed);
                    if smp::cpu_index() != cpu {
                        wrong_cpu.fetch_add(1, Ordering::Relaxed);
                    }
                    if i % 1000 == 0 {
                        sched::yield_now();
                    }
                }
            }));
        }
    }
    for h in handles {
        h.join();
    }
    let n = smp::cpu_count() as u64;
    assert_eq!(
        wrong_cpu.load(Ordering::Relaxed),
        0,
        "a pinned thread ran elsewhere"
    );
    assert_eq!(total.load(Ordering::Relaxed), n * PER_CPU as u64 * ROUNDS);
    for cpu in online_cpus() {
        assert_eq!(
            per_cpu[cpu].load(Ordering::Relaxed),
            PER_CPU as u64 * ROUNDS,
            "cpu{cpu}"
        );
    }
}

fn park_unpark_across_cpus() {
    // Ping-pong between a thread on the last CPU and one on the first: each
    // round blocks and is woken from the other CPU (by IPI when they differ).
    const ROUNDS: u64 = 200;
    let last = online_cpus().last().unwrap_or(0);
    let turn = Arc::new(AtomicU64::new(0));
    let ping_slot: Arc<spin::Mutex<Option<Arc<sched::Thread>>>> = Arc::new(spin::Mutex::new(None));
    let pong_slot = ping_slot.clone();
    let t2 = turn.clone();
    let pong = sched::spawn_on(last, "pong", move || {
        for round in 0..ROUNDS {
            while t2.load(Ordering::Acquire) != 2 * round + 1 {
                sched::park();
            }
            t2.store(2 * round + 2, Ordering::Release);
            if let Some(ping) = pong_slot.lock().clone() {
                ping.unpark();
            }
        }
    });
    let pong_thread = pong.thread().clone();
    let t1 = turn.clone();
    let ping = sched::spawn_on(0, "ping", move || {
        *ping_slot.lock() = Some(sched::current());
        for round in 0..ROUNDS {
            t1.store(2 * round + 1, Ordering::Release);
            pong_thread.unpark();
            while t1.load(Ordering::Acquire) != 2 * round + 2 {
                sched::park();
            }
        }
    });
    ping.join();
    pong.join();
    assert_eq!(turn.load(Ordering::Acquire), 2 * ROUNDS);
}

fn sleep_ms_100() {
    // Another thread on this CPU counts while we sleep: the sleep blocks
    // rather than spins.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s, c) = (stop.clone(), count.clone());
    let me = smp::cpu_index();
    let worker = sched::spawn_on(me, "busy", move || {
        while !s.load(Ordering::Acquire) {
            c.fetch_add(1, Ordering::Relaxed);
            sched::yield_now();
        }
    });
    let t0_ns = time::now_ns();
    let tsc0 = time::rdtsc();
    time::sleep_ms(100);
    let slept_ns = time::now_ns() - t0_ns;
    let tsc_delta = time::rdtsc() - tsc0;
    stop.store(true, Ordering::Release);
    worker.join();
    kernel::println!(
        "[platform] sleep_ms(100) took {} us by the clock, {} TSC ticks",
        slept_ns / 1000,
        tsc_delta
    );
    assert!(slept_ns >= 100_000_000, "woke early: {slept_ns} ns");
    assert!(
        count.load(Ordering::Relaxed) > 0,
        "the sleeper did not yield its CPU"
    );
    if time::has_timer() {
        // Wide tolerance: an emulator on a shared host may stall.
        assert!(
            slept_ns < 10_000_000_000,
            "slept far too long: {slept_ns} ns"
        );
        // The clock is the TSC scaled by its calibrated frequency.
        let by_tsc_ns = (u128::from(tsc_delta) * 1_000_000_000 / u128::from(time::tsc_hz())) as u64;
        assert!(
            by_tsc_ns.abs_diff(slept_ns) < 5_000_000,
            "clock {slept_ns} ns vs TSC {by_tsc_ns} ns"
        );
    }
}

fn never_yielding_is_preempted() {
    if !time::has_timer() {
        kernel::println!("[platform] no timer on this machine: preemption not applicable");
        return;
    }
    let last = online_cpus().last().unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let other_ran = Arc::new(AtomicBool::new(false));
    let hog_done = Arc::new(AtomicBool::new(false));
    let (s, o, d) = (stop.clone(), other_ran.clone(), hog_done.clone());
    // A launcher on the target CPU queues the hog and then a second thread
    // behind it, both on its own CPU (so no reschedule IPI is involved) and
    // ends: the hog runs first and never yields, parks or sleeps; only the
    // timer tick can give the second thread the CPU.
    let launcher = sched::spawn_on(last, "launcher", move || {
        drop(sched::spawn_on(last, "hog", move || {
            while !s.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            d.store(true, Ordering::Release);
        }));
        drop(sched::spawn_on(last, "other", move || {
            o.store(true, Ordering::Release);
        }));
    });
    let deadline = time::now_ns() + 10_000_000_000;
    while !other_ran.load(Ordering::Acquire) && time::now_ns() < deadline {
        time::sleep_ms(5);
    }
    // Read before the hog is told to stop: after that, `other` runs anyway.
    let ran_beside_hog = other_ran.load(Ordering::Acquire);
    stop.store(true, Ordering::Release);
    launcher.join();
    while !hog_done.load(Ordering::Acquire) {
        time::sleep_ms(1);
    }
    assert!(
        ran_beside_hog,
        "a thread queued behind a spinning one did not run within 10 s"
    );
}

/// xorshift64: a deterministic stream of test choices.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn frame_stress() {
    let before = mem::frame_stats();
    let heap_before = mem::heap::heap_bytes();
    let stacks_before = mem::stacks::frames_held();
    let held_all: Arc<spin::Mutex<Vec<(u64, FrameSize)>>> = Arc::new(spin::Mutex::new(Vec::new()));
    let handles: Vec<JoinHandle> = online_cpus()
        .map(|cpu| {
            let held_all = held_all.clone();
            sched::spawn_on(cpu, "frames", move || {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (cpu as u64 + 1);
                let mut held: Vec<(u64, FrameSize, u64)> = Vec::new();
                for step in 0..3000u64 {
                    let r = next(&mut rng);
                    if !r.is_multiple_of(3) || held.is_empty() {
                        let size = if r % 16 == 1 {
                            FrameSize::Size2M
                        } else {
                            FrameSize::Size4K
                        };
                        if let Ok(a) = mem::alloc_frame(size) {
                            // Tag the frame: a frame handed to two owners at
                            // once would have its tag overwritten.
                            let tag = (cpu as u64) << 48 | step;
                            // SAFETY: the frame was just handed to us.
                            unsafe { phys::write::<u64>(a, tag) };
                            held.push((a.as_u64(), size, tag));
                        }
                    } else {
                        let i = (r >> 8) as usize % held.len();
                        let (a, size, tag) = held.swap_remove(i);
                        // SAFETY: we own the frame until the free below.
                        let seen = unsafe { phys::read::<u64>(HostPhysAddr::new(a)) };
                        assert_eq!(seen, tag, "frame {a:#x} was written by another owner");
                        mem::free_frame(HostPhysAddr::new(a), size).expect("free");
                    }
                    if step % 100 == 0 {
                        sched::yield_now();
                    }
                }
                for &(a, _, tag) in &held {
                    // SAFETY: still ours.
                    let seen = unsafe { phys::read::<u64>(HostPhysAddr::new(a)) };
                    assert_eq!(seen, tag, "frame {a:#x} was written by another owner");
                }
                held_all.lock().extend(held.iter().map(|&(a, s, _)| (a, s)));
            })
        })
        .collect();
    for h in handles {
        h.join();
    }
    let mut held = core::mem::take(&mut *held_all.lock());
    // No two held frames overlap.
    held.sort_unstable_by_key(|&(a, _)| a);
    for w in held.windows(2) {
        let (a, size) = w[0];
        assert!(
            a + size.bytes() <= w[1].0,
            "frames {a:#x} and {:#x} overlap",
            w[1].0
        );
    }
    let in_use: u64 = held.iter().map(|&(_, s)| s.bytes() / PAGE_SIZE_4K).sum();
    assert!(mem::frame_stats().used_frames >= in_use);
    for &(a, size) in &held {
        mem::free_frame(HostPhysAddr::new(a), size).expect("free at the end");
    }
    // A second free of any of them is refused.
    if let Some(&(a, size)) = held.first() {
        assert!(
            mem::free_frame(HostPhysAddr::new(a), size).is_err(),
            "double free accepted"
        );
    }
    drop(held);
    let after = mem::frame_stats();
    kernel::println!(
        "[platform] frames before: {} free, after: {} free ({} MiB of heap)",
        before.free_frames,
        after.free_frames,
        mem::heap::heap_bytes() >> 20
    );
    // Every frame the test took is free again: the only frames in use now
    // that were not before are the ones the heap grew by (bookkeeping) and
    // the stacks of the test's threads, which the heap and the stack pool
    // keep.
    let heap_growth_frames = (mem::heap::heap_bytes() - heap_before) / PAGE_SIZE_4K;
    let stack_frames = mem::stacks::frames_held() - stacks_before;
    assert_eq!(
        after.used_frames,
        before.used_frames + heap_growth_frames + stack_frames,
        "frames lost: {before:?} -> {after:?}, heap grew by {heap_growth_frames} frames, stacks by {stack_frames}"
    );
    assert_eq!(after.managed_frames, before.managed_frames);
}

fn tlb_shootdown() {
    // Every CPU runs the closure exactly once.
    let hits: Vec<AtomicU64> = (0..smp::MAX_CPUS).map(|_| AtomicU64::new(0)).collect();
    smp::run_on_all(&|| {
        hits[smp::cpu_index()].fetch_add(1, Ordering::Relaxed);
    });
    for (cpu, hit) in hits.iter().enumerate() {
        let expected = u64::from(smp::is_online(cpu));
        assert_eq!(hit.load(Ordering::Relaxed), expected, "cpu{cpu}");
    }
    // Remap one virtual page from frame A to frame B; after the shootdown
    // every CPU reads B's tag through it.
    let a = mem::alloc_frame(FrameSize::Size4K).expect("frame A");
    let b = mem::alloc_frame(FrameSize::Size4K).expect("frame B");
    // SAFETY: both frames were just handed to this test.
    unsafe {
        phys::write::<u64>(a, 0xAAAA);
        phys::write::<u64>(b, 0xBBBB);
    }
    let page = kernel::mem::map::ScratchPage::new(a);
    let read_all = |expect: u64| {
        let wrong = AtomicUsize::new(0);
        smp::run_on_all(&|| {
            // SAFETY: the test page is mapped to a frame this test owns.
            let v = unsafe { page.read() };
            if v != expect {
                wrong.fetch_add(1, Ordering::Relaxed);
            }
        });
        wrong.load(Ordering::Relaxed)
    };
    assert_eq!(read_all(0xAAAA), 0, "a CPU does not see frame A");
    page.remap(b);
    smp::flush_page_all(page.vaddr());
    assert_eq!(
        read_all(0xBBBB),
        0,
        "a CPU still sees the old mapping after the shootdown"
    );
    page.unmap();
    mem::free_frame(a, FrameSize::Size4K).expect("free A");
    mem::free_frame(b, FrameSize::Size4K).expect("free B");
}
