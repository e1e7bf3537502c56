//! vCPU threads and the run loop: the boot vCPU on the caller's CPU, the
//! others on threads of their own (`VCPU_START`), HLT waits, and the stop
//! of the VM as a unit (see the module docs of `crate::vm`).

use super::exits::{handle_exit, skip};
use super::{
    EntryError, Extension, GuestRegs, SLOT_DONE, SLOT_FREE, SLOT_RUNNING, StopReason, VcpuSlot,
    VirtCpu, Vm, now_ns,
};
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use hvcore::devices::inject::{HaltOutcome, Injection, decide, on_halt};
use hvcore::guest_layout as layout;
use hvcore::hypercall::HypercallError;
use hvcore::insn::Insn;
use x86_64::instructions::interrupts;

/// Runs `vm` on a new kernel thread pinned to `cpu` (its vCPU thread);
/// join the handle to wait until the VM stops.
pub fn spawn_on<E: Extension>(cpu: usize, vm: Arc<Vm<E>>) -> crate::sched::JoinHandle {
    crate::sched::spawn_on(cpu, "vcpu", move || {
        run_on_this_cpu(&vm);
    })
}

/// Creates the boot vCPU of `vm` on this CPU and runs it until the VM
/// stops; with several vCPUs, waits until every vCPU thread has returned.
/// Returns the VM's reason (the first vCPU's), which is also printed once
/// and kept in the VM.
pub fn run_on_this_cpu<E: Extension>(vm: &Arc<Vm<E>>) -> StopReason {
    let reason = match E::enable_on_this_cpu().and_then(|()| vm.create_boot_vcpu()) {
        Ok(mut vcpu) => run_vcpu_as(vm, &mut vcpu, 0),
        Err(why) => StopReason::EntryFailed(EntryError::Setup(why)),
    };
    vm.record_stop(reason, 0);
    // No vCPU starts once the VM is stopping (`start_vcpu` checks under
    // the same lock), so the list only shrinks here.
    loop {
        let next = vm.threads.lock().pop();
        match next {
            Some(handle) => handle.join(),
            None => break,
        }
    }
    let (reason, index) = vm.first_stop.lock().unwrap_or((reason, 0));
    finish_as(vm, reason, index)
}

/// The CPU for vCPU `index` of a VM of `vcpus` whose boot vCPU runs on
/// `boot_cpu`, among `cpus`: spread over the CPUs from the boot vCPU's on,
/// leaving CPU 0 (the aging thread's) out when the others are enough.
fn cpu_for_vcpu(index: u32, vcpus: u32, boot_cpu: usize, cpus: usize) -> usize {
    let first = usize::from(cpus > vcpus as usize);
    let pool = (cpus - first).max(1);
    let at = boot_cpu.saturating_sub(first);
    first + (at + index as usize) % pool
}

/// vCPU `index` of `vm` on a thread pinned to its CPU; the thread holds
/// the VM.
fn spawn_vcpu<E: Extension>(
    vm: &Arc<Vm<E>>,
    index: u32,
    regs: GuestRegs,
) -> crate::sched::JoinHandle {
    let boot_cpu = vm.vcpus[0].cpu.load(Ordering::Acquire);
    let cpu = cpu_for_vcpu(index, vm.vcpu_count(), boot_cpu, crate::smp::cpu_count());
    vm.vcpus[index as usize].cpu.store(cpu, Ordering::Release);
    let vm = vm.clone();
    crate::sched::spawn_on(cpu, "vcpu", move || {
        let reason =
            match E::enable_on_this_cpu().and_then(|()| E::create_vcpu(vm.vcpu_setup(), regs)) {
                Ok(mut vcpu) => run_vcpu_as(&vm, &mut vcpu, index),
                Err(why) => {
                    vm.live_vcpus.fetch_sub(1, Ordering::AcqRel);
                    vm.vcpus[index as usize]
                        .state
                        .store(SLOT_DONE, Ordering::Release);
                    StopReason::EntryFailed(EntryError::Setup(why))
                }
            };
        vm.record_stop(reason, index);
    })
}

/// Records and prints the stop of a one-vCPU VM.
pub fn finish<E: Extension>(vm: &Vm<E>, reason: StopReason) -> StopReason {
    finish_as(vm, reason, 0)
}

/// Records and prints the VM's stop, which vCPU `index` caused.
fn finish_as<E: Extension>(vm: &Vm<E>, reason: StopReason, index: u32) -> StopReason {
    vm.devices.lock().flush();
    *vm.stopped.lock() = Some(reason);
    let action = match reason {
        StopReason::Exited(0) => "",
        _ => ": VM stopped",
    };
    if vm.vcpus.len() > 1 {
        crate::println!("vm {}: vCPU {index}: {reason}{action}", vm.name());
    } else {
        crate::println!("vm {}: {reason}{action}", vm.name());
    }
    reason
}

pub(super) enum Next {
    Resume,
    Stop(StopReason),
}

/// Runs `vcpu` as the boot vCPU of `vm` until it stops, handling every
/// exit.
pub fn run_vcpu<E: Extension>(vm: &Arc<Vm<E>>, vcpu: &mut E::Vcpu) -> StopReason {
    run_vcpu_as(vm, vcpu, 0)
}

/// Runs `vcpu` as vCPU `index` of `vm` until it or the VM stops.
fn run_vcpu_as<E: Extension>(vm: &Arc<Vm<E>>, vcpu: &mut E::Vcpu, index: u32) -> StopReason {
    let slot = &vm.vcpus[index as usize];
    slot.cpu.store(crate::smp::cpu_index(), Ordering::Release);
    if crate::sched::is_running() {
        *slot.thread.lock() = Some(crate::sched::current());
    }
    if index == 0 {
        // Other vCPUs count from `start_vcpu` on, before their thread runs,
        // so a HLT right after VCPU_START still knows they will run.
        slot.state.store(SLOT_RUNNING, Ordering::Release);
        vm.live_vcpus.fetch_add(1, Ordering::AcqRel);
    }
    let reason = vcpu_loop(vm, vcpu, index);
    vm.live_vcpus.fetch_sub(1, Ordering::AcqRel);
    slot.state.store(SLOT_DONE, Ordering::Release);
    *slot.thread.lock() = None;
    reason
}

fn vcpu_loop<E: Extension>(vm: &Arc<Vm<E>>, vcpu: &mut E::Vcpu, index: u32) -> StopReason {
    let seen = &vm.vcpus[index as usize].seen_generation;
    // A new vCPU flushes at its first entry anyway (SVM: a fresh ASID or
    // the shared one's flush; VMX: INVEPT before the first entry).
    seen.store(vm.tlb_generation.load(Ordering::Acquire), Ordering::Release);
    let pc = vm.devices.lock().is_pc();
    let mut input_polled_ns = 0;
    loop {
        if vm.stop_requested() {
            return StopReason::Killed;
        }
        if pc {
            interrupt_step(vm, vcpu, &mut input_polled_ns);
        }
        // From the flush check to VMRUN/VM entry with interrupts off: a
        // shootdown IPI (`reclaim::Shootdown`) that arrives after the
        // check stays pending and makes the guest exit at once, so the
        // shootdown cannot complete while this vCPU enters with stale
        // translations (see "TLB flushes with several vCPUs").
        let entered = interrupts::without_interrupts(|| {
            let generation = vm.tlb_generation.load(Ordering::Acquire);
            if generation != seen.load(Ordering::Relaxed) {
                seen.store(generation, Ordering::Release);
                vcpu.flush_tlb_on_entry();
            }
            vcpu.run()
        });
        let exit = match entered {
            Ok(exit) => exit,
            Err(e) => return StopReason::EntryFailed(e),
        };
        vm.stats.exits.fetch_add(1, Ordering::Relaxed);
        match handle_exit(vm, vcpu, exit, index) {
            Next::Resume => {}
            Next::Stop(reason) => return reason,
        }
        // Before the flush check, so a pass's flush request is seen at
        // this very entry.
        if let Some(work) = vm.exit_work.get() {
            work();
        }
    }
}

/// How often the console's input is polled while a PC's guest runs or
/// halts: often enough that typing feels immediate.
const INPUT_POLL_NS: u64 = 10_000_000;

/// Up to this many typed bytes are taken per poll.
const INPUT_CHUNK_BYTES: usize = 64;

/// The console's input for `vm` when it owns the console and the last poll
/// is `INPUT_POLL_NS` old (`polled_ns` is updated); none otherwise.
fn console_input<E: Extension>(
    vm: &Vm<E>,
    now: u64,
    polled_ns: &mut u64,
    buf: &mut [u8; INPUT_CHUNK_BYTES],
) -> usize {
    if !vm.owns_console() || now.saturating_sub(*polled_ns) < INPUT_POLL_NS {
        return 0;
    }
    *polled_ns = now;
    crate::console::read_input(buf)
}

/// The vCPU loop's interrupt step on a PC, before each entry: timers and
/// input brought up to now, the lines folded into the PIC, then
/// `hvcore::devices::inject::decide` on the vCPU's interruptibility:
/// inject the PIC's vector now, or ask for the interrupt window, or
/// neither.
fn interrupt_step<E: Extension>(vm: &Vm<E>, vcpu: &mut E::Vcpu, polled_ns: &mut u64) {
    let now = now_ns();
    let mut buf = [0u8; INPUT_CHUNK_BYTES];
    let n = console_input(vm, now, polled_ns, &mut buf);
    let mut devices = vm.devices.lock();
    let pending = devices.poll(now, &buf[..n]);
    match decide(vcpu.interruptibility(pending)) {
        Injection::InjectNow => {
            if let Some(vector) = devices.acknowledge() {
                vcpu.inject_interrupt(vector);
                vm.stats.interrupts_injected.fetch_add(1, Ordering::Relaxed);
            }
            vcpu.set_interrupt_window(false);
        }
        Injection::RequestWindow => vcpu.set_interrupt_window(true),
        Injection::Nothing => vcpu.set_interrupt_window(false),
    }
}

/// HLT on a PC: step over it, then, until an interrupt can be delivered,
/// sleep to the next timer deadline (at most `INPUT_POLL_NS`, to look at
/// the console's input); with interrupts off nothing can wake it: the VM
/// has powered off (`hvcore::devices::inject::on_halt`).
fn pc_halt<E: Extension>(vm: &Vm<E>, vcpu: &mut E::Vcpu) -> Next {
    if let Next::Stop(reason) = skip(vm, vcpu, Insn::Hlt) {
        return Next::Stop(reason);
    }
    let rip = vcpu.regs().rip;
    let mut polled_ns = 0;
    let mut waited = false;
    let outcome = loop {
        if vm.stop_requested() {
            break Next::Resume;
        }
        let now = now_ns();
        let mut buf = [0u8; INPUT_CHUNK_BYTES];
        let n = console_input(vm, now, &mut polled_ns, &mut buf);
        let (pending, deadline) = {
            let mut devices = vm.devices.lock();
            (devices.poll(now, &buf[..n]), devices.next_deadline(now))
        };
        let enabled = vcpu.interruptibility(pending).interrupts_enabled;
        match on_halt(pending, enabled) {
            HaltOutcome::Wake => break Next::Resume,
            HaltOutcome::HaltedForever => break Next::Stop(StopReason::PoweredOff { rip }),
            HaltOutcome::Sleep => {}
        }
        waited = true;
        let until = deadline.unwrap_or(u64::MAX).min(now + INPUT_POLL_NS);
        if crate::sched::is_running() {
            crate::sched::park_until(until);
        } else {
            core::hint::spin_loop();
        }
    };
    if waited {
        vm.stats.halts.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

/// HLT: step over it, then wait (the thread parks) until a `WAKE` from
/// another vCPU, the armed deadline, or a stop request. When this wait has
/// no deadline and every other live vCPU is in such a wait too, nothing
/// can ever wake any of them: the VM stops (module docs, "HLT waits").
pub(super) fn halt<E: Extension>(vm: &Vm<E>, vcpu: &mut E::Vcpu, index: u32) -> Next {
    if vm.linux.is_some() {
        return pc_halt(vm, vcpu);
    }
    if let Next::Stop(reason) = skip(vm, vcpu, Insn::Hlt) {
        return Next::Stop(reason);
    }
    let rip = vcpu.regs().rip;
    let slot = &vm.vcpus[index as usize];
    let mut waited = false;
    let outcome = loop {
        if slot.wake.swap(false, Ordering::AcqRel) || vm.stop_requested() {
            break Next::Resume;
        }
        let deadline_ns = slot.deadline_ns.load(Ordering::Acquire);
        if deadline_ns != 0 && now_ns() >= deadline_ns {
            // One-shot: it fired.
            let _ = slot.deadline_ns.compare_exchange(
                deadline_ns,
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            break Next::Resume;
        }
        if deadline_ns == 0 && !slot.idle.load(Ordering::Acquire) {
            // Counted, then flagged (so an uncount never precedes its
            // count), then the wake flag is read again: a WAKE either came
            // before (seen here) or uncounts this vCPU itself.
            let idle = vm.idle_vcpus.fetch_add(1, Ordering::AcqRel) + 1;
            slot.idle.store(true, Ordering::Release);
            if slot.wake.load(Ordering::Acquire) {
                continue;
            }
            if idle >= vm.live_vcpus.load(Ordering::Acquire) {
                break Next::Stop(StopReason::Halted { rip });
            }
        }
        waited = true;
        if !crate::sched::is_running() {
            core::hint::spin_loop();
        } else if deadline_ns != 0 {
            crate::sched::park_until(deadline_ns);
        } else {
            crate::sched::park();
        }
    };
    leave_idle(vm, slot);
    if waited {
        vm.stats.halts.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

/// Uncounts `slot` from the VM's idle vCPUs if it is counted (by the vCPU
/// leaving its wait, or by the `WAKE` that ends it: whoever clears the
/// flag first). Only the vCPU itself sets the flag, after counting itself.
pub(super) fn leave_idle<E: Extension>(vm: &Vm<E>, slot: &VcpuSlot) {
    if slot.idle.swap(false, Ordering::AcqRel) {
        vm.idle_vcpus.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `VCPU_START`: claims the slot, then starts the vCPU's thread (refused
/// once the VM is stopping, under the lock the boot vCPU drains the
/// threads with).
pub(super) fn start_vcpu<E: Extension>(
    vm: &Arc<Vm<E>>,
    index: u32,
    rip: u64,
    rsp: u64,
    arg: u64,
) -> Result<u64, HypercallError> {
    let mut threads = vm.threads.lock();
    if vm.stop_requested() {
        return Err(HypercallError::Busy);
    }
    let slot = &vm.vcpus[index as usize];
    if slot
        .state
        .compare_exchange(SLOT_FREE, SLOT_RUNNING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(HypercallError::Busy);
    }
    vm.live_vcpus.fetch_add(1, Ordering::AcqRel);
    let regs = GuestRegs {
        rip,
        rsp,
        rdi: arg,
        rflags: layout::BOOT_CPU_STATE.rflags,
        ..GuestRegs::default()
    };
    threads.push(spawn_vcpu(vm, index, regs));
    Ok(0)
}
