//! Kernel threads and their scheduler.
//!
//! Every CPU has its own run queue (`CpuSched`, in the scheduler's own
//! per-CPU array: `smp::percpu` holds no scheduler types); a thread
//! belongs to one CPU for its whole life (pinned by [`spawn_on`], or placed round-robin by
//! [`spawn`]), so a thread never runs on two CPUs and its saved context is
//! always complete before its own CPU can pick it again. Threads:
//! - switch when they [`yield_now`], [`park`] (block until [`Thread::unpark`];
//!   [`park_until`] also wakes at a deadline), sleep ([`sleep_until`],
//!   `time::sleep_ms`) or end;
//! - are preempted by the timer tick (`time`) when another thread of the same
//!   CPU is ready, in timer mode. In cooperative mode (no timer: the Bochs
//!   bed) only the first list applies;
//! - are woken from another CPU by pushing them onto their CPU's queue and
//!   sending that CPU a reschedule IPI ([`RESCHED_VECTOR`]).
//!
//! An AP's boot context becomes its idle thread; the boot CPU's becomes the
//! thread `boot` and the CPU gets a separate idle thread. Idle threads halt
//! until an interrupt when nothing is ready (spin in cooperative mode, where
//! no interrupt would come). Every thread stack has an unmapped guard below
//! it (`crate::mem::stacks`): an overflow faults at once, and the exception
//! report names the thread. A canary at the bottom of the stack is also
//! checked at each switch away from the thread (an overflow that skipped
//! the canary's word panics there, naming the thread).
//!
//! Context switch: [`switch_stacks`] saves the callee-saved registers on the
//! old stack, stores its stack pointer in the old thread, and loads the new
//! one; everything else is saved by the compiler at the call (or by the
//! interrupt entry stub when the switch happens inside the tick handler).
//! The kernel target has no SSE, so there is no vector state to save.
//! Interrupts are off from taking the run-queue lock until after the switch.
//!
//! Park/unpark use a token (as `std::thread::park` does) checked and set
//! under the thread's run-queue lock, so a wake-up between a waiter's check
//! and its block is never lost; callers loop on their condition.

use crate::lock::IrqSpinLock;
use crate::smp::{self, MAX_CPUS};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use x86_64::instructions::interrupts;

/// Vector of the reschedule IPI.
pub const RESCHED_VECTOR: u8 = 0xF0;
/// Stack size of a spawned thread (`crate::mem::stacks`: each stack has an
/// unmapped guard below it).
pub const STACK_BYTES: usize = crate::mem::stacks::STACK_BYTES;
/// Written at the bottom of every thread stack; found changed = overflow.
const STACK_CANARY: u64 = 0x57AC_CA4A_2D0F_F10E;

const READY: u8 = 0;
const RUNNING: u8 = 1;
const PARKED: u8 = 2;
const SLEEPING: u8 = 3;
const DEAD: u8 = 4;

/// A kernel thread.
pub struct Thread {
    id: u64,
    name: &'static str,
    cpu: usize,
    state: AtomicU8,
    /// Park token: set by `unpark`, consumed by `park`.
    token: AtomicBool,
    /// Saved stack pointer while switched out; written only by its own CPU
    /// with interrupts off.
    rsp: UnsafeCell<u64>,
    /// The thread's stack (None for a CPU's boot context); kept alive, never
    /// read, until the thread is dropped.
    _stack: Option<crate::mem::stacks::ThreadStack>,
    /// Address of the canary word at the bottom of `_stack` (0: none).
    canary_at: u64,
    entry: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    done: AtomicBool,
    joiner: IrqSpinLock<Option<Arc<Thread>>>,
    /// Times this thread was switched in.
    switches: AtomicU64,
}

impl core::fmt::Debug for Thread {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Thread")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("cpu", &self.cpu)
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

// SAFETY: `rsp` and `entry` are touched only by the thread's own CPU with
// interrupts off (switch) or by the thread itself (its first run); every
// other field is atomic or locked.
unsafe impl Sync for Thread {}
// SAFETY: as above; the entry closure is `Send`.
unsafe impl Send for Thread {}

impl Thread {
    /// The thread's number (unique, from 1; idle threads have 0).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The thread's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The CPU the thread runs on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
    /// How many times the thread was switched in.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Wakes the thread if it is parked; otherwise its next [`park`] returns
    /// at once. Works from any CPU and from interrupt handlers.
    pub fn unpark(self: &Arc<Self>) {
        let cpu = cpu_sched(self.cpu);
        let mut rq = cpu.rq.lock();
        self.token.store(true, Ordering::Release);
        if self.state.load(Ordering::Acquire) == PARKED {
            self.state.store(READY, Ordering::Release);
            // A timed park ([`park_until`]) leaves an entry among the
            // sleepers; left there it would wake a later sleep early.
            rq.sleepers.retain(|(_, t)| !Arc::ptr_eq(t, self));
            rq.ready.push_back(self.clone());
            drop(rq);
            kick(self.cpu);
        }
    }
}

/// Makes `cpu` look at its run queue soon.
fn kick(cpu: usize) {
    if cpu != smp::cpu_index() && crate::time::has_timer() {
        smp::send_ipi(cpu, RESCHED_VECTOR);
    }
}

/// One CPU's scheduler state.
#[derive(Debug)]
struct CpuSched {
    rq: IrqSpinLock<RunQueue>,
    running: AtomicBool,
}

#[derive(Debug, Default)]
struct RunQueue {
    ready: VecDeque<Arc<Thread>>,
    sleepers: Vec<(u64, Arc<Thread>)>,
    current: Option<Arc<Thread>>,
    idle: Option<Arc<Thread>>,
    /// A thread that ended and whose stack we were still on; dropped after
    /// the switch away from it.
    reap: Option<Arc<Thread>>,
}

impl CpuSched {
    /// An empty scheduler (for the per-CPU statics).
    const fn new() -> Self {
        Self {
            rq: IrqSpinLock::new(RunQueue {
                ready: VecDeque::new(),
                sleepers: Vec::new(),
                current: None,
                idle: None,
                reap: None,
            }),
            running: AtomicBool::new(false),
        }
    }
}

/// Each CPU's scheduler, by CPU index (the scheduler's own per-CPU data:
/// `smp::percpu` knows nothing of threads).
static CPUS: [CpuSched; MAX_CPUS] = [const { CpuSched::new() }; MAX_CPUS];

/// The scheduler of the CPU executing this.
fn this_cpu() -> &'static CpuSched {
    &CPUS[smp::cpu_index()]
}

/// CPU `index`'s scheduler.
///
/// # Panics
/// If `index >= MAX_CPUS`.
fn cpu_sched(index: usize) -> &'static CpuSched {
    &CPUS[index]
}

impl Default for CpuSched {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// Whether the scheduler runs on this CPU (its idle thread exists).
pub fn is_running() -> bool {
    smp::is_ready() && this_cpu().running.load(Ordering::Acquire)
}

/// The thread running on this CPU.
///
/// # Panics
/// Before the scheduler runs on this CPU.
pub fn current() -> Arc<Thread> {
    let cpu = this_cpu();
    let rq = cpu.rq.lock();
    rq.current
        .clone()
        .expect("sched::current before sched::init")
}

/// Starts scheduling on this CPU. The code running now becomes a thread:
/// with `becomes_idle` it is this CPU's idle thread (an AP, which then calls
/// [`idle_loop`]); otherwise it is an ordinary thread named `boot` that may
/// block and sleep (the boot CPU's main path), and an idle thread is made
/// for the CPU. Call once per CPU.
pub fn init_this_cpu(becomes_idle: bool) {
    let index = smp::cpu_index();
    let cpu = this_cpu();
    let me = Arc::new(Thread {
        id: if becomes_idle {
            0
        } else {
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        },
        name: if becomes_idle { "idle" } else { "boot" },
        cpu: index,
        state: AtomicU8::new(RUNNING),
        token: AtomicBool::new(false),
        rsp: UnsafeCell::new(0),
        _stack: None,
        canary_at: 0,
        entry: UnsafeCell::new(None),
        done: AtomicBool::new(false),
        joiner: IrqSpinLock::new(None),
        switches: AtomicU64::new(0),
    });
    let idle = if becomes_idle {
        me.clone()
    } else {
        Arc::new(new_thread(0, "idle", index, Box::new(|| idle_loop())))
    };
    {
        let mut rq = cpu.rq.lock();
        rq.idle = Some(idle);
        rq.current = Some(me);
    }
    crate::interrupts::set_handler(RESCHED_VECTOR, on_resched);
    crate::time::set_tick_hook(on_tick);
    crate::time::set_sleep_hook(sleep_if_running);
    cpu.running.store(true, Ordering::Release);
}

/// The idle thread's loop: run whatever is ready, else wait for an interrupt.
pub fn idle_loop() -> ! {
    loop {
        yield_now();
        if crate::time::has_timer() {
            // STI's one-instruction shadow makes "enable, then halt" atomic:
            // a wake-up IPI cannot slip in between and be missed.
            interrupts::enable_and_hlt();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// A handle to wait for a spawned thread's end.
#[derive(Debug)]
pub struct JoinHandle {
    thread: Arc<Thread>,
}

impl JoinHandle {
    /// The thread.
    pub fn thread(&self) -> &Arc<Thread> {
        &self.thread
    }
    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.done.load(Ordering::Acquire)
    }
    /// Blocks until the thread has ended.
    pub fn join(self) {
        loop {
            if self.is_finished() {
                return;
            }
            *self.thread.joiner.lock() = Some(current());
            if self.is_finished() {
                return;
            }
            park();
        }
    }
}

/// Spawns a thread on the next CPU in round-robin order.
pub fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> JoinHandle {
    let n = smp::cpu_count().max(1);
    let cpu = NEXT_CPU.fetch_add(1, Ordering::Relaxed) % n;
    spawn_on(cpu, name, f)
}

/// Spawns a thread pinned to CPU `cpu` (an index, 0 = boot CPU).
///
/// # Panics
/// If `cpu` is not online.
pub fn spawn_on(cpu: usize, name: &'static str, f: impl FnOnce() + Send + 'static) -> JoinHandle {
    assert!(smp::is_online(cpu), "spawn_on: cpu{cpu} is not online");
    let thread = Arc::new(new_thread(
        NEXT_ID.fetch_add(1, Ordering::Relaxed),
        name,
        cpu,
        Box::new(f),
    ));
    let target = cpu_sched(cpu);
    target.rq.lock().ready.push_back(thread.clone());
    kick(cpu);
    JoinHandle { thread }
}

/// A thread whose first switch-in enters `thread_start` and runs `entry`.
fn new_thread(id: u64, name: &'static str, cpu: usize, entry: Box<dyn FnOnce() + Send>) -> Thread {
    let mut stack = crate::mem::stacks::ThreadStack::new(name)
        .unwrap_or_else(|why| panic!("sched: no stack for thread {name}: {why}"));
    // A thread that overflows its stack runs into this word first; the
    // scheduler checks it at every switch away from the thread.
    let canary_at = (stack.as_mut_ptr() as u64).next_multiple_of(8);
    // SAFETY: the word lies inside the new stack, which nothing else
    // references, and is 8-byte aligned.
    unsafe { (canary_at as *mut u64).write(STACK_CANARY) };
    // Initial frame, popped by `switch_stacks`: r15 r14 r13 r12 rbx rbp, then
    // the return address `thread_trampoline`. After that `ret` the stack
    // pointer is `top` (16-byte aligned), so the trampoline's `call` enters
    // `thread_start` with the alignment the ABI wants.
    let top = (stack.as_mut_ptr() as u64 + STACK_BYTES as u64) & !0xF;
    let frame: [u64; 7] = [0, 0, 0, 0, 0, 0, thread_trampoline as *const () as u64];
    let frame_at = top - 8 * frame.len() as u64;
    // SAFETY: `frame_at..top` lies inside `stack`, which nothing else
    // references; it is 8-byte aligned. Moving the Box below does not move
    // its buffer.
    unsafe {
        core::ptr::copy_nonoverlapping(frame.as_ptr(), frame_at as *mut u64, frame.len());
    }
    Thread {
        id,
        name,
        cpu,
        state: AtomicU8::new(READY),
        token: AtomicBool::new(false),
        rsp: UnsafeCell::new(frame_at),
        canary_at,
        _stack: Some(stack),
        entry: UnsafeCell::new(Some(entry)),
        done: AtomicBool::new(false),
        joiner: IrqSpinLock::new(None),
        switches: AtomicU64::new(0),
    }
}

/// Lets another ready thread of this CPU run; returns at once if none is.
pub fn yield_now() {
    schedule(Reason::Yield);
}

/// Blocks the current thread until [`Thread::unpark`] (returns at once if an
/// unpark came since the last park). May return spuriously: loop on the
/// condition.
pub fn park() {
    schedule(Reason::Park);
}

/// [`park`] with a deadline: blocks until [`Thread::unpark`] or until
/// [`crate::time::now_ns`] reaches `deadline_ns`, whichever comes first.
/// May return spuriously: loop on the condition.
pub fn park_until(deadline_ns: u64) {
    if crate::time::now_ns() >= deadline_ns {
        return;
    }
    schedule(Reason::ParkUntil(deadline_ns));
}

/// Blocks the current thread until [`crate::time::now_ns`] reaches
/// `deadline_ns`.
pub fn sleep_until(deadline_ns: u64) {
    if crate::time::now_ns() >= deadline_ns {
        return;
    }
    schedule(Reason::Sleep(deadline_ns));
}

/// Blocks the calling thread until `deadline_ns` when the scheduler runs
/// on this CPU (`time::sleep_ms`'s hook); false when it does not.
fn sleep_if_running(deadline_ns: u64) -> bool {
    if !is_running() {
        return false;
    }
    sleep_until(deadline_ns);
    true
}

/// The timer tick's hook (interrupts off): wakes sleepers and preempts the
/// current thread if another is ready.
fn on_tick() {
    if is_running() {
        schedule(Reason::Preempt);
    }
}

fn on_resched(_frame: &mut crate::interrupts::InterruptFrame) {
    crate::smp::apic::eoi();
    if is_running() {
        schedule(Reason::Preempt);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Yield,
    Preempt,
    Park,
    ParkUntil(u64),
    Sleep(u64),
    Exit,
}

fn schedule(reason: Reason) {
    let irqs_were_enabled = interrupts::are_enabled();
    interrupts::disable();
    let cpu = this_cpu();
    // Interrupts are already off, so dropping the guard leaves them off.
    let mut rq = cpu.rq.lock();
    let now = crate::time::now_ns();
    let mut i = 0;
    while i < rq.sleepers.len() {
        if rq.sleepers[i].0 <= now {
            let (_, t) = rq.sleepers.swap_remove(i);
            // PARKED here: a timed park whose deadline passed.
            if matches!(t.state.load(Ordering::Acquire), SLEEPING | PARKED) {
                t.state.store(READY, Ordering::Release);
                rq.ready.push_back(t);
            }
        } else {
            i += 1;
        }
    }
    let Some(prev) = rq.current.clone() else {
        drop(rq);
        if irqs_were_enabled {
            interrupts::enable();
        }
        return;
    };
    let idle = rq.idle.clone().unwrap_or_else(|| prev.clone());
    let prev_is_idle = Arc::ptr_eq(&prev, &idle);
    if prev.canary_at != 0 {
        // SAFETY: `canary_at` is inside `prev`'s stack, which `prev` (alive:
        // it is current) owns.
        let canary = unsafe { (prev.canary_at as *const u64).read_volatile() };
        if canary != STACK_CANARY {
            let (name, id, cpu) = (prev.name, prev.id, prev.cpu);
            drop(rq);
            panic!("thread {name} (id {id}, cpu{cpu}) overflowed its {STACK_BYTES}-byte stack");
        }
    }
    match reason {
        Reason::Yield | Reason::Preempt => {
            if rq.ready.is_empty() {
                drop(rq);
                if irqs_were_enabled {
                    interrupts::enable();
                }
                return;
            }
            if !prev_is_idle {
                prev.state.store(READY, Ordering::Release);
                rq.ready.push_back(prev.clone());
            }
        }
        Reason::Park => {
            if prev.token.swap(false, Ordering::AcqRel) || prev_is_idle {
                drop(rq);
                if irqs_were_enabled {
                    interrupts::enable();
                }
                return;
            }
            prev.state.store(PARKED, Ordering::Release);
        }
        Reason::ParkUntil(deadline) => {
            if prev.token.swap(false, Ordering::AcqRel) || prev_is_idle {
                drop(rq);
                if irqs_were_enabled {
                    interrupts::enable();
                }
                return;
            }
            prev.state.store(PARKED, Ordering::Release);
            rq.sleepers.push((deadline, prev.clone()));
        }
        Reason::Sleep(deadline) => {
            prev.state.store(SLEEPING, Ordering::Release);
            rq.sleepers.push((deadline, prev.clone()));
        }
        Reason::Exit => {
            prev.state.store(DEAD, Ordering::Release);
            rq.reap = Some(prev.clone());
        }
    }
    let next = rq.ready.pop_front().unwrap_or(idle);
    if Arc::ptr_eq(&next, &prev) {
        prev.state.store(RUNNING, Ordering::Release);
        drop(rq);
        if irqs_were_enabled {
            interrupts::enable();
        }
        return;
    }
    next.state.store(RUNNING, Ordering::Release);
    next.switches.fetch_add(1, Ordering::Relaxed);
    rq.current = Some(next.clone());
    let prev_rsp = prev.rsp.get();
    // SAFETY: `next` is switched out (it is not current anywhere: threads
    // never leave their CPU, and this CPU is running `prev`), so its saved
    // stack pointer is complete.
    let next_rsp = unsafe { *next.rsp.get() };
    // The run queue (current, ready, sleepers or reap) keeps both threads
    // alive across the switch.
    drop(prev);
    drop(next);
    drop(rq);
    // SAFETY: interrupts are off; `prev_rsp` belongs to the thread running
    // now, `next_rsp` is a stack pointer `switch_stacks` saved (or a new
    // thread's initial frame).
    unsafe { switch_stacks(prev_rsp, next_rsp) };
    after_switch();
    if irqs_were_enabled {
        interrupts::enable();
    }
}

/// Runs on the new thread right after every switch: frees a thread that
/// ended on this CPU (its stack is no longer in use now).
fn after_switch() {
    let reaped = this_cpu().rq.lock().reap.take();
    drop(reaped);
}

/// First code of every spawned thread (entered through `thread_trampoline`).
extern "C" fn thread_start() -> ! {
    after_switch();
    interrupts::enable();
    let me = current();
    // SAFETY: `me` is the running thread; only it touches its `entry`, once.
    let entry = unsafe { (*me.entry.get()).take() };
    drop(me);
    if let Some(f) = entry {
        f();
    }
    exit_current()
}

/// Deepest stack use of any thread that has exited, in bytes.
static STACK_HIGH_WATER_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Deepest stack use of any thread that has exited so far, in bytes, out of
/// [`STACK_BYTES`]. Stacks start zeroed, so the depth is the distance from
/// the top to the lowest non-zero byte above the canary (a thread that
/// leaves only zeros that deep is under-counted, never over-counted).
pub fn stack_high_water_bytes() -> usize {
    STACK_HIGH_WATER_BYTES.load(Ordering::Relaxed)
}

impl Thread {
    fn stack_used_bytes(&self) -> usize {
        let Some(stack) = self._stack.as_deref() else {
            return 0;
        };
        let above_canary = (self.canary_at - stack.as_ptr() as u64) as usize + 8;
        let untouched = stack[above_canary..]
            .iter()
            .take_while(|&&b| b == 0)
            .count();
        stack.len() - above_canary - untouched
    }
}

/// Ends the current thread.
fn exit_current() -> ! {
    let me = current();
    let used = me.stack_used_bytes();
    if STACK_HIGH_WATER_BYTES.fetch_max(used, Ordering::Relaxed) < used && used > STACK_BYTES / 2 {
        log::warn!(
            "sched: thread {} used {used} of its {STACK_BYTES} stack bytes",
            me.name
        );
    }
    me.done.store(true, Ordering::Release);
    let joiner = me.joiner.lock().take();
    drop(me);
    if let Some(j) = joiner {
        j.unpark();
    }
    schedule(Reason::Exit);
    unreachable!("a dead thread was scheduled again");
}

#[unsafe(naked)]
extern "C" fn thread_trampoline() {
    core::arch::naked_asm!("call {start}", "ud2", start = sym thread_start);
}

/// Saves the callee-saved registers and the stack pointer into `*prev_rsp`,
/// then continues on `next_rsp` (whose frame `switch_stacks` or `spawn_on`
/// wrote).
///
/// # Safety
/// Interrupts off; `prev_rsp` points at the running thread's slot; `next_rsp`
/// holds such a frame on a live stack.
#[unsafe(naked)]
unsafe extern "C" fn switch_stacks(prev_rsp: *mut u64, next_rsp: u64) {
    core::arch::naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov [rdi], rsp",
        "mov rsp, rsi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
    );
}
