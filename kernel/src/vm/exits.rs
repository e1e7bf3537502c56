//! The exit handlers, written once for both vendors: CPUID, MSRs, CR4,
//! invalid opcodes and virtualization instructions, nested page faults,
//! shutdown; port I/O goes to `super::ports`, hypercalls to
//! `super::hypercalls`, HLT to `super::vcpu`.

use super::hypercalls::hypercall;
use super::memory::FaultOutcome;
use super::ports::port_io;
use super::vcpu::{Next, halt};
use super::{GuestRegs, StopReason, VirtCpu, Vm};
use crate::virt::Extension;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use hvcore::exit::{VirtInsn, VmExit};
use hvcore::guest_cpu;
use hvcore::guest_msr;
use hvcore::insn::{self, Insn};
use hvcore::pte::EntryFormat;

pub(super) fn handle_exit<E: Extension>(
    vm: &Arc<Vm<E>>,
    vcpu: &mut E::Vcpu,
    exit: VmExit,
    index: u32,
) -> Next {
    let rip = vcpu.regs().rip;
    match exit {
        VmExit::Cpuid => {
            cpuid(vcpu.regs());
            skip(vm, vcpu, Insn::Cpuid)
        }
        VmExit::MsrRead { msr } => {
            let value = if msr == guest_cpu::MSR_EFER {
                Some(vcpu.guest_efer())
            } else {
                vm.vcpus[index as usize]
                    .msrs
                    .lock()
                    .read(msr, crate::time::rdtsc())
            };
            let Some(v) = value else {
                msr_refused(
                    vm,
                    index,
                    msr,
                    format_args!(
                        "guest read unknown MSR {msr:#x} at RIP {rip:#x}: #GP injected, VM continues"
                    ),
                );
                vcpu.inject_exception(13, Some(0));
                return Next::Resume;
            };
            let r = vcpu.regs();
            r.rax = v & 0xffff_ffff;
            r.rdx = v >> 32;
            skip(vm, vcpu, Insn::Rdmsr)
        }
        VmExit::MsrWrite { msr, value } => {
            let result = if msr == guest_cpu::MSR_EFER {
                if vcpu.set_guest_efer(value) {
                    Ok(())
                } else {
                    Err(guest_msr::MsrError::Refused("only SCE and NXE may change"))
                }
            } else {
                vm.vcpus[index as usize].msrs.lock().write(msr, value)
            };
            match result {
                Ok(()) => skip(vm, vcpu, Insn::Wrmsr),
                Err(e) => {
                    let why = match e {
                        guest_msr::MsrError::Unknown => "unknown MSR",
                        guest_msr::MsrError::Refused(why) => why,
                    };
                    msr_refused(
                        vm,
                        index,
                        msr,
                        format_args!(
                            "guest wrote {value:#x} to MSR {msr:#x} at RIP {rip:#x}: refused ({why}), #GP injected, VM continues"
                        ),
                    );
                    vcpu.inject_exception(13, Some(0));
                    Next::Resume
                }
            }
        }
        VmExit::Io(io) => port_io(vm, vcpu, io, index),
        VmExit::Hlt => halt(vm, vcpu, index),
        VmExit::Hypercall => hypercall(vm, vcpu, index),
        VmExit::NestedPageFault(fault) => match vm.memory.fault_in(fault.gpa) {
            FaultOutcome::Mapped(_) => {
                // Mapped for the access the guest retries now: young, as
                // that access will make it. A new entry starts old, and
                // until the guest's retry sets A, a pass run on this exit
                // (exit-driven aging, without a timer) would offer
                // the page to the reclaimer as its coldest.
                vm.memory
                    .tables()
                    .mark_accessed(fault.gpa, <E::Format as EntryFormat>::ACCESSED);
                vm.stats.faults_served.fetch_add(1, Ordering::Relaxed);
                Next::Resume
            }
            FaultOutcome::AlreadyMapped if !fault.present => Next::Resume,
            FaultOutcome::AlreadyMapped => Next::Stop(StopReason::Unhandled { exit, rip }),
            FaultOutcome::OutsideRam => Next::Stop(StopReason::OutsideRam {
                gpa: fault.gpa.as_u64(),
                access: fault.access,
                rip,
            }),
            // Overcommit: wait for the reclaimer to free memory.
            FaultOutcome::OutOfMemory
                if super::memory::wait_for_memory(vm.name(), fault.gpa, &|| {
                    vm.stop_requested()
                }) =>
            {
                Next::Resume
            }
            FaultOutcome::OutOfMemory => Next::Stop(StopReason::OutOfMemory {
                gpa: fault.gpa.as_u64(),
            }),
        },
        VmExit::Shutdown => Next::Stop(StopReason::TripleFault { rip }),
        // The host took the interrupt when the vCPU re-enabled them.
        VmExit::ExternalInterrupt => Next::Resume,
        // The window is open: the interrupt step before the next entry
        // injects (and asks again if it still cannot).
        VmExit::InterruptWindow => {
            vm.stats.window_exits.fetch_add(1, Ordering::Relaxed);
            vcpu.set_interrupt_window(false);
            Next::Resume
        }
        VmExit::Exception { vector: 6, .. } => {
            let mut bytes = [0u8; insn::MAX_INSN_LEN];
            let n = match fetch_insn(vm, vcpu, rip, &mut bytes) {
                Ok(n) => n,
                Err(next) => return next,
            };
            match insn::decode(&bytes[..n]) {
                Some(insn::Decoded {
                    insn: Insn::Virt(v),
                    ..
                }) => report_virt(vm, v, rip, index),
                _ => vm.report_from(index, format_args!(
                    "guest executed an invalid opcode {:02x?} at RIP {rip:#x}: #UD injected, VM continues",
                    &bytes[..n.min(4)]
                )),
            }
            vcpu.inject_exception(6, None);
            Next::Resume
        }
        VmExit::Exception { vector, error_code } => {
            vcpu.inject_exception(vector, error_code);
            Next::Resume
        }
        VmExit::VirtInstruction(v) => {
            report_virt(vm, v, rip, index);
            vcpu.inject_exception(6, None);
            Next::Resume
        }
        VmExit::CrWrite { cr } => cr_write(vm, vcpu, cr, index),
        VmExit::Xsetbv { xcr, value } => {
            vm.report_from(index, format_args!(
                "guest wrote {value:#x} to XCR{xcr} at RIP {rip:#x}: extended state is not offered, #GP injected, VM continues"
            ));
            vcpu.inject_exception(13, Some(0));
            Next::Resume
        }
        VmExit::Unknown { .. } => Next::Stop(StopReason::Unhandled { exit, rip }),
    }
}

/// Reports a refused MSR access, once per MSR (Linux probes many MSRs it
/// can live without; one line each is enough to see which).
fn msr_refused<E: Extension>(vm: &Vm<E>, index: u32, msr: u32, line: core::fmt::Arguments<'_>) {
    /// MSRs remembered; past that every refusal is reported (and counted
    /// against the VM's report lines).
    const TRACKED_MSRS: usize = 64;
    let first = {
        let mut seen = vm.unknown_msrs.lock();
        seen.len() >= TRACKED_MSRS || seen.insert(msr)
    };
    if first {
        vm.report_from(index, line);
    }
}

/// MOV to CR4 (the only control register intercepted): decode the source
/// register, keep to the offered bits (`hvcore::guest_cpu::cr4_write`), flush the
/// guest's TLB as the architecture does on CR4 changes.
fn cr_write<E: Extension>(vm: &Vm<E>, vcpu: &mut E::Vcpu, cr: u8, index: u32) -> Next {
    let rip = vcpu.regs().rip;
    let mut bytes = [0u8; insn::MAX_INSN_LEN];
    let n = match fetch_insn(vm, vcpu, rip, &mut bytes) {
        Ok(n) => n,
        Err(next) => return next,
    };
    let Some(insn::Decoded {
        insn: Insn::MovToCr { cr: got, gpr },
        len,
    }) = insn::decode(&bytes[..n])
    else {
        return Next::Stop(StopReason::Undecodable { rip });
    };
    if got != cr || cr != 4 {
        return Next::Stop(StopReason::Unhandled {
            exit: VmExit::CrWrite { cr },
            rip,
        });
    }
    let value = vcpu.regs().gpr(gpr);
    let long_mode = vcpu.guest_efer() & (1 << 10) != 0;
    match guest_cpu::cr4_write(value, long_mode) {
        Ok(cr4) if vcpu.set_guest_cr4(cr4) => {
            vcpu.flush_tlb_on_entry();
            let r = vcpu.regs();
            r.rip = r.rip.wrapping_add(len as u64);
        }
        Ok(_) => {
            return Next::Stop(StopReason::Unhandled {
                exit: VmExit::CrWrite { cr },
                rip,
            });
        }
        Err(why) => {
            vm.report_from(index, format_args!(
                "guest wrote {value:#x} to CR4 at RIP {rip:#x}: {why}, #GP injected, VM continues"
            ));
            vcpu.inject_exception(13, Some(0));
        }
    }
    Next::Resume
}

fn report_virt<E: Extension>(vm: &Vm<E>, v: VirtInsn, rip: u64, index: u32) {
    vm.report_from(
        index,
        format_args!(
            "guest executed {} ({} instruction) at RIP {rip:#x}: #UD injected, VM continues",
            v.name(),
            v.family()
        ),
    );
}

/// Steps over the intercepted instruction: NRIP when the CPU gives it,
/// else the decoded length of the bytes at RIP, which must be `expect`.
pub(super) fn skip<E: Extension>(vm: &Vm<E>, vcpu: &mut E::Vcpu, expect: Insn) -> Next {
    if let Some(next) = vcpu.next_rip() {
        vcpu.regs().rip = next;
        return Next::Resume;
    }
    let rip = vcpu.regs().rip;
    let mut bytes = [0u8; insn::MAX_INSN_LEN];
    let n = match fetch_insn(vm, vcpu, rip, &mut bytes) {
        Ok(n) => n,
        Err(next) => return next,
    };
    let same = |got: Insn| {
        got == expect
            || (expect == Insn::Vmmcall && got == Insn::Vmcall)
            || (expect == Insn::Vmcall && got == Insn::Vmmcall)
    };
    match insn::decode(&bytes[..n]) {
        Some(d) if same(d.insn) => {
            vcpu.regs().rip = rip.wrapping_add(d.len as u64);
            Next::Resume
        }
        _ => Next::Stop(StopReason::Undecodable { rip }),
    }
}

/// CPUID as the guest sees it: `hvcore::guest_cpu::guest_view` of the
/// host's answer.
fn cpuid(regs: &mut GuestRegs) {
    let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
    let host = if guest_cpu::uses_host(leaf) {
        let r = crate::hw::cpuid(leaf, subleaf);
        guest_cpu::Cpuid {
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        }
    } else {
        guest_cpu::Cpuid::default()
    };
    let tsc_khz = u32::try_from(crate::time::tsc_hz() / 1000).unwrap_or(0);
    let r = guest_cpu::guest_view(leaf, subleaf, host, tsc_khz);
    regs.rax = u64::from(r.eax);
    regs.rbx = u64::from(r.ebx);
    regs.rcx = u64::from(r.ecx);
    regs.rdx = u64::from(r.edx);
}

/// The bytes at the guest's `rip` (up to `bytes.len()`; how many were
/// read), through its paging. A page of the instruction or of the guest's
/// page tables that was reclaimed comes back first; one that cannot for
/// lack of a host frame pauses the vCPU as a nested page fault does, and
/// when the wait ends without memory the VM stops for that
/// (`StopReason::OutOfMemory`), never on bytes that are not the guest's.
pub(super) fn fetch_insn<E: Extension>(
    vm: &Vm<E>,
    vcpu: &mut E::Vcpu,
    rip: u64,
    bytes: &mut [u8],
) -> Result<usize, Next> {
    vm.memory
        .fetch(vcpu.paging(), rip, bytes, vm.name(), &|| {
            vm.stop_requested()
        })
        .map_err(|gpa| Next::Stop(StopReason::OutOfMemory { gpa: gpa.as_u64() }))
}
