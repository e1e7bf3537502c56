//! TLB flush policy after aging.
//!
//! Clearing an accessed bit only records the *next* access if the CPU has to
//! walk the tables again for it: as long as a translation sits in the TLB
//! (or, under nested KVM, in L0's shadow EPT, TESTBEDS.md §1) the CPU does
//! not look at the entry and never sets A again. So a pass that cleared any
//! A bit must be followed by a flush of the guest's translations, or every
//! page that stayed in the TLB looks cold from then on.
//!
//! The vendor backends implement [`TlbFlush`]: VMX with one INVEPT
//! single-context for the guest's EPTP (Intel SDM, "INVEPT"), SVM by setting
//! the VMCB TLB control to flush the guest's ASID on the next VMRUN (AMD APM
//! vol. 2, "TLB Control"). The default [`FlushPolicy::OncePerPass`] asks for
//! one flush at the end of a pass that cleared at least one A bit, never one
//! per entry: the pass is lockless and the guest runs during it, and one
//! flush covers every entry the pass changed. The pass result
//! ([`crate::age::PassStats::flushed`]) says whether it flushed.
//!
//! The policy is unit-tested against a simulated MMU with a TLB and
//! nested-KVM-like A bits (`tests/flush_policy.rs`): a page touched every
//! interval stays hot only if the pass flushes.

/// Something that can drop a guest's cached second-level translations.
pub trait TlbFlush {
    /// Flush every translation of this guest (all vCPUs, before they next
    /// use the tables).
    fn flush_guest_tlb(&mut self);
}

impl<T: TlbFlush + ?Sized> TlbFlush for &mut T {
    fn flush_guest_tlb(&mut self) {
        (**self).flush_guest_tlb()
    }
}

/// When an aging pass flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlushPolicy {
    /// One flush at the end of a pass that cleared any A bit (default).
    #[default]
    OncePerPass,
    /// Never flush: only for hardware that sets A without a TLB miss, or
    /// for measuring the cost of the flush. Under nested KVM every page then
    /// looks cold.
    Never,
}

/// A flusher that counts calls and does nothing else (tests, benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountingFlush {
    /// Flushes requested so far.
    pub flushes: u64,
}

impl TlbFlush for CountingFlush {
    fn flush_guest_tlb(&mut self) {
        self.flushes += 1;
    }
}
