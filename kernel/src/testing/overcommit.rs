//! What the overcommit scenarios (`test_overcommit`: memory twice the
//! host's, all VMs finish; `test_overcommit_pause`: hot sets over the host,
//! one VM paused) share: `checksum` VMs sized against the host, one vCPU
//! thread each off CPU 0, the aging thread on CPU 0 with reclaim driven by
//! host pressure alone, and the per-VM outcome lines the host harness
//! (`tests/tests/aging/overcommit.rs`) prints. They boot separately since
//! test VMs are never torn down: the first case's memory stays allocated.

use crate::aging::{self, AgingConfig, Managed};
use crate::svm::Svm;
use crate::vm::{Vm, VmConfig, images};
use alloc::sync::Arc;
use hvcore::guest_layout as layout;

/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;

/// A `checksum` VM of `ram_bytes` with 4 KiB pages.
pub fn new_vm(name: &'static str, ram_bytes: u64, boot_arg: u64) -> Arc<Vm<Svm>> {
    let config = VmConfig {
        name,
        image: images::CHECKSUM.bytes,
        ram_bytes,
        huge_pages: false,
        boot_arg,
    };
    Vm::new(config, None).expect("VM")
}

/// Bytes of RAM the frame allocator manages: the host, as guests see it.
pub fn host_bytes() -> u64 {
    crate::mem::frame_stats().managed_frames * 4096
}

/// RAM of a VM that alone is larger than the host.
pub fn over_host_bytes() -> u64 {
    (host_bytes() + 8 * MIB).next_multiple_of(2 * MIB)
}

/// The pages the checksum guest writes and verifies.
pub fn data_pages(ram: u64) -> u64 {
    (ram - layout::DATA_START_GPA) / 4096
}

/// Passes every 10 ms, quiet: reclaim is driven by host pressure alone.
pub fn aging_config() -> AgingConfig {
    AgingConfig {
        interval_ms: 10,
        // Thousands of pass lines would slow the emulated serial port;
        // the final `TCR reclaim` lines and the events show the reclaim.
        pass_lines: false,
        detail_every: 0,
        timing_every_ms: 5000,
        ..AgingConfig::default()
    }
}

/// The vCPU CPU of the `i`-th VM: CPU 0 stays with the aging thread when
/// there are others (the reclaim that unpauses the VMs must not wait for
/// a time slice).
pub fn vcpu_cpu(i: usize) -> usize {
    let n = crate::smp::cpu_count();
    if n > 1 { 1 + i % (n - 1) } else { 0 }
}

/// Runs `vm` on [`vcpu_cpu`]`(i)`.
pub fn spawn_vcpu(i: usize, vm: &Arc<Vm<Svm>>) -> crate::sched::JoinHandle {
    crate::vm::spawn_on(vcpu_cpu(i), vm.clone())
}

/// The aging thread on CPU 0 over `ms`.
pub fn spawn_aging(ms: &[Managed<Svm>]) -> crate::sched::JoinHandle {
    let all = ms.to_vec();
    crate::sched::spawn_on(0, "aging", move || aging::run(all, aging_config()))
}

/// One `overcommit NAME:` line of the VM's outcome and reclaim counters,
/// and one `timing overcommit NAME:` line of where reclaim spent its time.
pub fn print_vm(vm: &Vm<Svm>, m: &Managed<Svm>) {
    let mm = m.mm.lock();
    let s = mm.rec.stats();
    let st = mm.rec.store_stats();
    let t = mm.rec.times();
    crate::println!(
        "overcommit {}: {}; checksum {:?}; reclaimed {} pages ({} zero, {} compressed, {} raw now, {} compressed bytes), {} refaults, {} kept incompressible, {} resident frames",
        vm.name(),
        vm.stop_reason().expect("stopped"),
        vm.checksum_result(),
        s.reclaimed_total,
        st.zero_pages,
        st.compressed_pages,
        st.raw_pages,
        st.compressed_bytes,
        s.refaults,
        s.kept_incompressible,
        vm.memory.resident().0
    );
    crate::println!(
        "timing overcommit {}: select_us={} unmap_us={} flush_us={} store_us={} fault_in_us={}",
        vm.name(),
        t.select_ns / 1000,
        t.unmap_ns / 1000,
        t.flush_ns / 1000,
        t.store_ns / 1000,
        t.fault_in_ns / 1000
    );
}
