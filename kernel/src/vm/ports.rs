//! Port I/O of the guest: IN/OUT and INS/OUTS (`hvcore::string_io`) go to
//! the VM's bus (`super::devices`: one dispatch, every device registered
//! on it), what a device asks of the VM (reset, exit, mark) is done here,
//! and guest RAM as the hypervisor reads and writes it on the guest's
//! behalf.

use super::exits::skip;
use super::memory::{FaultOutcome, GuestMemory};
use super::vcpu::Next;
use super::{StopReason, VirtCpu, Vm, now_ns};
use crate::virt::Extension;
use core::sync::atomic::Ordering;
use hvcore::addr::GuestPhysAddr;
use hvcore::devices::bus::{BusEvent, Space};
use hvcore::exit::{IoAccess, IoDir};
use hvcore::guest_walk::{self, GuestPhysRead, GuestPhysWrite};
use hvcore::insn::{self, Insn};
use hvcore::pte::EntryFormat;
use hvcore::string_io;
use x86_64::instructions::interrupts;

pub(super) fn port_io<E: Extension>(
    vm: &Vm<E>,
    vcpu: &mut E::Vcpu,
    io: IoAccess,
    index: u32,
) -> Next {
    if io.string {
        return string_io(vm, vcpu, io, index);
    }
    let rip = vcpu.regs().rip;
    let mask = size_mask(io.size_bytes);
    let regs = vcpu.regs();
    let mut event = None;
    match io.dir {
        IoDir::Out => {
            event = port_write(vm, io.port, io.size_bytes, regs.rax as u32, rip, index);
        }
        IoDir::In => {
            let value = u64::from(port_read(vm, io.port, io.size_bytes, rip, index));
            regs.rax = (regs.rax & !mask) | value;
        }
    }
    let next = match io.next_rip {
        Some(next) => {
            vcpu.regs().rip = next;
            Next::Resume
        }
        None => skip(vm, vcpu, Insn::PortIo),
    };
    match event {
        Some(event) => bus_event(vm, event, rip, index),
        None => next,
    }
}

/// What a device asked of the VM with a write.
fn bus_event<E: Extension>(vm: &Vm<E>, event: BusEvent, rip: u64, index: u32) -> Next {
    match event {
        BusEvent::ResetRequested => Next::Stop(StopReason::ResetRequested { rip }),
        BusEvent::GuestExit { status } => Next::Stop(StopReason::Exited(u64::from(status))),
        BusEvent::Mark { tag } => {
            let ns = now_ns();
            vm.log(format_args!(
                "mark {tag} at {}.{:03} s (hypervisor clock)",
                ns / 1_000_000_000,
                ns / 1_000_000 % 1000
            ));
            Next::Resume
        }
        _ => {
            vm.report_from(
                index,
                format_args!("device event {event:?} at RIP {rip:#x} not handled, VM continues"),
            );
            Next::Resume
        }
    }
}

fn size_mask(size_bytes: u8) -> u64 {
    match size_bytes {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// An OUT of `size_bytes` to `port` through the VM's bus (an unclaimed
/// port is reported once and the write dropped); a PC's serial output goes
/// to the console. Returns what the device asked of the VM.
fn port_write<E: Extension>(
    vm: &Vm<E>,
    port: u16,
    size_bytes: u8,
    value: u32,
    rip: u64,
    index: u32,
) -> Option<BusEvent> {
    let value = (u64::from(value) & size_mask(size_bytes)) as u32;
    let mut out = [0u8; 64];
    let mut n = 0;
    let outcome = {
        let mut devices = vm.devices.lock();
        let outcome = devices.bus.write(
            Space::Port,
            u64::from(port),
            size_bytes,
            u64::from(value),
            now_ns(),
        );
        devices.drain_serial(|b| {
            if n < out.len() {
                out[n] = b;
                n += 1;
            }
        });
        outcome
    };
    if n > 0 {
        crate::console::write_raw(&out[..n]);
    }
    match outcome {
        Ok(o) => {
            if o.first_unclaimed {
                vm.report_from(index, format_args!(
                    "guest wrote {value:#x} to unemulated port {port:#x} at RIP {rip:#x}: dropped (reported once per port), VM continues"
                ));
            }
            o.event
        }
        Err(e) => {
            vm.report_from(
                index,
                format_args!("guest port write at RIP {rip:#x}: {e}, dropped"),
            );
            None
        }
    }
}

/// An IN of `size_bytes` from `port` through the VM's bus: all ones
/// where no device answers (reported once per port).
fn port_read<E: Extension>(vm: &Vm<E>, port: u16, size_bytes: u8, rip: u64, index: u32) -> u32 {
    let outcome = vm
        .devices
        .lock()
        .bus
        .read(Space::Port, u64::from(port), size_bytes, now_ns());
    match outcome {
        Ok(o) => {
            if o.first_unclaimed {
                vm.report_from(index, format_args!(
                    "guest read unemulated port {port:#x} ({size_bytes} bytes) at RIP {rip:#x}: all ones returned (reported once per port), VM continues"
                ));
            }
            (o.value & size_mask(size_bytes)) as u32
        }
        Err(e) => {
            vm.report_from(
                index,
                format_args!("guest port read at RIP {rip:#x}: {e}, all ones"),
            );
            size_mask(size_bytes) as u32
        }
    }
}

/// Elements one exit moves at most; a longer REP resumes the guest on the
/// same instruction, which exits again (the host stays responsive).
const STRING_IO_BATCH: u64 = 4096;

/// INS/OUTS (`hvcore::string_io`): decode the instruction to learn the
/// address size and REP, move the elements through the guest's paging,
/// step over it when done.
fn string_io<E: Extension>(vm: &Vm<E>, vcpu: &mut E::Vcpu, io: IoAccess, index: u32) -> Next {
    let rip = vcpu.regs().rip;
    let mut bytes = [0u8; insn::MAX_INSN_LEN];
    let n = guest_walk::fetch(&vm.memory, vcpu.paging(), rip, &mut bytes);
    let decoded = match insn::decode(&bytes[..n]) {
        Some(insn::Decoded {
            insn: Insn::StringIo(s),
            len,
        }) if s.out == (io.dir == IoDir::Out) && s.size_bytes == io.size_bytes => (s, len),
        _ => return Next::Stop(StopReason::Undecodable { rip }),
    };
    let (op, len) = decoded;
    if op.fs_gs {
        return Next::Stop(StopReason::StringIo {
            rip,
            va: 0,
            why: "is FS/GS-relative: segment overrides are not emulated",
        });
    }
    let paging = vcpu.paging();
    let r = vcpu.regs();
    let mut sregs = string_io::Regs {
        rsi: r.rsi,
        rdi: r.rdi,
        rcx: r.rcx,
        rflags: r.rflags,
    };
    let mut ports = VmPorts {
        vm,
        rip,
        index,
        event: None,
    };
    let outcome = string_io::run(
        &op,
        io.port,
        &mut sregs,
        paging,
        &GuestRam(&vm.memory),
        &mut ports,
        STRING_IO_BATCH,
    );
    let r = vcpu.regs();
    (r.rsi, r.rdi, r.rcx) = (sregs.rsi, sregs.rdi, sregs.rcx);
    let event = ports.event;
    let next = match outcome {
        string_io::Outcome::Done { elements } => {
            vm.stats
                .string_io_elements
                .fetch_add(elements, Ordering::Relaxed);
            r.rip = rip.wrapping_add(len as u64);
            Next::Resume
        }
        string_io::Outcome::Continue { elements } => {
            vm.stats
                .string_io_elements
                .fetch_add(elements, Ordering::Relaxed);
            Next::Resume
        }
        string_io::Outcome::Fault { va, why, .. } => Next::Stop(StopReason::StringIo {
            rip,
            va,
            why: why.describe(),
        }),
    };
    match (next, event) {
        (Next::Resume, Some(event)) => bus_event(vm, event, rip, index),
        (next, _) => next,
    }
}

/// The port side of emulated string I/O: the same models as IN/OUT.
struct VmPorts<'a, E: Extension> {
    vm: &'a Vm<E>,
    rip: u64,
    index: u32,
    /// The last event a write raised, handled when the instruction ends.
    event: Option<BusEvent>,
}

impl<E: Extension> string_io::Ports for VmPorts<'_, E> {
    fn read(&mut self, port: u16, size_bytes: u8) -> u32 {
        port_read(self.vm, port, size_bytes, self.rip, self.index)
    }
    fn write(&mut self, port: u16, size_bytes: u8, value: u32) {
        if let Some(e) = port_write(self.vm, port, size_bytes, value, self.rip, self.index) {
            self.event = Some(e);
        }
    }
}

/// Guest RAM for the hypervisor's own accesses on the guest's behalf
/// (string I/O). A page that is mapped is copied with interrupts off: the
/// reclaimer unmaps, then shoots down (waiting for this CPU to take an
/// interrupt), and only then reads and frees the frame, so the frame
/// cannot go away mid-copy and a write lands before the reclaimer reads.
/// The leaf gets A (and D for a write) first, and its ancestors A, as the
/// CPU's own access would set them (`hvcore::table::Tables::mark_accessed`):
/// the reclaimer drops a page whose D is clear when it holds a clean copy,
/// so a write with D left clear would be lost, and the aging pass counts
/// the page young. A page
/// that is not mapped is backed (or brought back) with interrupts on,
/// since that takes the VM's writer lock, which the reclaimer holds across
/// its shootdown.
struct GuestRam<'a, F: EntryFormat>(&'a GuestMemory<F>);

impl<F: EntryFormat> GuestPhysRead for GuestRam<'_, F> {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Option<()> {
        let mapped = interrupts::without_interrupts(|| {
            self.0
                .tables()
                .mark_accessed(gpa, F::ACCESSED)
                .then(|| self.0.read(gpa, &mut *buf))
        });
        // Not mapped: never-backed pages read as zeros, reclaimed ones
        // come back first.
        mapped.unwrap_or_else(|| self.0.read(gpa, buf))
    }
}

impl<F: EntryFormat> GuestPhysWrite for GuestRam<'_, F> {
    fn write(&self, gpa: GuestPhysAddr, buf: &[u8]) -> Option<()> {
        // A page reclaimed between the fault-in and the copy is faulted
        // in again; a few rounds make that race practically impossible to
        // lose, and losing it fails the access, never the host.
        for _ in 0..4 {
            let done = interrupts::without_interrupts(|| {
                self.0
                    .tables()
                    .mark_accessed(gpa, F::ACCESSED | F::DIRTY)
                    .then(|| self.0.write(gpa, buf).is_ok())
            });
            match done {
                Some(true) => return Some(()),
                Some(false) => return None,
                None => match self.0.fault_in(gpa) {
                    FaultOutcome::Mapped(_) | FaultOutcome::AlreadyMapped => {}
                    FaultOutcome::OutsideRam | FaultOutcome::OutOfMemory => return None,
                },
            }
        }
        None
    }
}
