//! The hypercalls of docs/hypercalls.md (`hvcore::hypercall` decodes them)
//! and the guest events they raise for hooks.

use super::exits::skip;
use super::memory::GuestMemory;
use super::vcpu::{Next, leave_idle, start_vcpu};
use super::{GuestEvent, SLOT_RUNNING, StopReason, VirtCpu, Vm};
use crate::virt::Extension;
use alloc::sync::Arc;
use alloc::vec;
use core::sync::atomic::Ordering;
use hvcore::addr::GuestPhysAddr;
use hvcore::guest_walk::GuestPhysRead;
use hvcore::hypercall::{self, Hypercall, HypercallError, HypercallRegs, VmShape};
use hvcore::insn::Insn;
use hvcore::pte::EntryFormat;

pub(super) fn hypercall<E: Extension>(vm: &Arc<Vm<E>>, vcpu: &mut E::Vcpu, index: u32) -> Next {
    vm.stats.hypercalls.fetch_add(1, Ordering::Relaxed);
    let r = *vcpu.regs();
    let call = HypercallRegs {
        rax: r.rax,
        rdi: r.rdi,
        rsi: r.rsi,
        rdx: r.rdx,
        rcx: r.rcx,
    };
    let shape = VmShape {
        ram_bytes: vm.config.ram_bytes,
        vcpus: vm.vcpu_count(),
    };
    let result: Result<u64, HypercallError> = match Hypercall::decode_for(&call, shape) {
        Ok(Hypercall::Version) => Ok(hypercall::ABI_VERSION),
        Ok(Hypercall::Exit { code }) => return Next::Stop(StopReason::Exited(code)),
        Ok(Hypercall::TimeNs) => Ok(crate::vm::now_ns()),
        Ok(Hypercall::VcpuStart {
            index: target,
            rip,
            rsp,
            arg,
        }) => start_vcpu(vm, target, rip, rsp, arg),
        Ok(Hypercall::Wake { index: target }) => {
            let slot = &vm.vcpus[target as usize];
            if slot.state.load(Ordering::Acquire) == SLOT_RUNNING {
                slot.wake.store(true, Ordering::Release);
                // Before this vCPU can itself go idle: the count must never
                // take a vCPU about to run for one that waits forever.
                leave_idle(vm, slot);
                // Not under the slot's lock: unpark takes a run-queue lock.
                let thread = slot.thread.lock().clone();
                if let Some(thread) = thread {
                    thread.unpark();
                }
                Ok(0)
            } else {
                Err(HypercallError::InvalidArgument)
            }
        }
        Ok(Hypercall::SetTimer { deadline_ns }) => {
            vm.vcpus[index as usize]
                .deadline_ns
                .store(deadline_ns.unwrap_or(0), Ordering::Release);
            Ok(0)
        }
        Ok(Hypercall::Mark { tag }) => {
            event(vm, vcpu, &GuestEvent::Mark(tag));
            Ok(0)
        }
        Ok(Hypercall::ChecksumResult {
            pages_checked,
            mismatches,
        }) => {
            *vm.checksum.lock() = Some((pages_checked, mismatches));
            crate::println!(
                "vm {}: checksum result: {pages_checked} pages checked, {mismatches} mismatches",
                vm.name()
            );
            event(
                vm,
                vcpu,
                &GuestEvent::Checksum {
                    pages_checked,
                    mismatches,
                },
            );
            Ok(0)
        }
        Ok(Hypercall::ReportTouched {
            interval,
            bitmap,
            first_pfn,
            page_count,
        }) => {
            let mut words = vec![0u64; page_count.div_ceil(64) as usize];
            read_guest_words(&vm.memory, bitmap.start, page_count.div_ceil(8), &mut words);
            event(
                vm,
                vcpu,
                &GuestEvent::Touched {
                    interval,
                    first_pfn,
                    page_count,
                    bitmap: words,
                },
            );
            Ok(0)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        vm.report_from(index, format_args!(
            "bad hypercall {:#x} (args {:#x} {:#x} {:#x} {:#x}) at RIP {:#x}: {}, error returned, VM continues",
            r.rax,
            r.rdi,
            r.rsi,
            r.rdx,
            r.rcx,
            r.rip,
            e.name()
        ));
    }
    vcpu.regs().rax = match result {
        Ok(v) => v,
        Err(e) => e.to_rax(),
    };
    skip(vm, vcpu, Insn::Vmmcall)
}

/// Reads `len_bytes` of guest RAM at `gpa` into `words` (little endian).
fn read_guest_words<F: EntryFormat>(
    mem: &GuestMemory<F>,
    gpa: GuestPhysAddr,
    len_bytes: u64,
    words: &mut [u64],
) {
    let mut done = 0u64;
    while done < len_bytes {
        let at = gpa.as_u64() + done;
        let n = (4096 - at % 4096).min(len_bytes - done).min(8 - done % 8);
        let mut buf = [0u8; 8];
        if mem
            .read(GuestPhysAddr::new(at), &mut buf[..n as usize])
            .is_none()
        {
            return;
        }
        let word = &mut words[(done / 8) as usize];
        for (i, b) in buf[..n as usize].iter().enumerate() {
            *word |= u64::from(*b) << (8 * ((done % 8) as usize + i));
        }
        done += n;
    }
}

fn event<E: Extension>(vm: &Vm<E>, vcpu: &mut E::Vcpu, e: &GuestEvent) {
    if let Some(hook) = vm.hook {
        hook(vm, e);
        // The hook may have cleared accessed bits: every vCPU flushes.
        vm.request_tlb_flush();
        vcpu.flush_tlb_on_entry();
    }
}
