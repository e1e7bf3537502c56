//! Reads what the CPU says about itself: CPUID leaves and the virtualization
//! capability MSRs, for `hvcore::cpu_features` to decode.
//!
//! MSRs are read only when CPUID (or an earlier MSR) says they exist, in the
//! order `hvcore::cpu_features::VmxMsrPlan` gives; each read also goes through
//! `hw::rdmsr_safe`, so an emulator that advertises a feature but does not
//! model its MSR yields "unreadable" instead of a fatal #GP.
//!
//! Follows: Intel SDM Vol. 2 "CPUID", Vol. 3 appendix "VMX Capability
//! Reporting Facility"; AMD APM Vol. 3 "CPUID Fn8000_000A".

use crate::hw;
use hvcore::cpu_features::{CpuFeatures, CpuidValues, VmxMsrPlan, VmxMsrs, msr};

/// Everything the banner shows about the CPU.
#[derive(Clone, Debug)]
pub struct CpuInfo {
    /// The decoded virtualization features.
    pub features: CpuFeatures,
    /// The raw CPUID values they were decoded from.
    pub cpuid: CpuidValues,
    /// The processor brand string (CPUID 0x8000_0002..4), NUL-padded.
    pub brand: [u8; 48],
    /// The hypervisor vendor (CPUID 0x4000_0000 EBX:ECX:EDX) when under one.
    pub hypervisor_id: Option<[u8; 12]>,
    /// An MSR that CPUID promised but that faulted on read, if any.
    pub unreadable_msr: Option<u32>,
}

fn le_bytes(words: [u32; 3]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (chunk, word) in out.as_chunks_mut::<4>().0.iter_mut().zip(words) {
        *chunk = word.to_le_bytes();
    }
    out
}

/// Reads CPUID and the capability MSRs of the CPU executing this.
pub fn read() -> CpuInfo {
    let leaf0 = hw::cpuid(0, 0);
    let max_leaf = leaf0.eax;
    let max_ext = hw::cpuid(0x8000_0000, 0).eax;
    let leaf = |n: u32| {
        let max = if n >= 0x8000_0000 { max_ext } else { max_leaf };
        if n <= max {
            hw::cpuid(n, 0)
        } else {
            hw::CpuidResult::default()
        }
    };
    let l1 = leaf(1);
    let e1 = leaf(0x8000_0001);
    let svm = leaf(0x8000_000A);
    let mut cpuid = CpuidValues {
        vendor_id: le_bytes([leaf0.ebx, leaf0.edx, leaf0.ecx]),
        leaf1_ecx: l1.ecx,
        ext1_ecx: e1.ecx,
        ..CpuidValues::default()
    };
    if cpuid.has_svm() {
        cpuid.svm_eax = svm.eax;
        cpuid.svm_ebx = svm.ebx;
        cpuid.svm_edx = svm.edx;
    }

    let mut unreadable_msr = None;
    let vmx_msrs = cpuid.has_vmx().then(|| {
        let mut m = VmxMsrs::default();
        while let Some((number, field)) = VmxMsrPlan::next(&m) {
            let Some(value) = hw::rdmsr_safe(number) else {
                unreadable_msr = Some(number);
                break;
            };
            m.set(field, value);
        }
        m
    });
    let vm_cr = if cpuid.has_svm() {
        let value = hw::rdmsr_safe(msr::AMD_VM_CR);
        if value.is_none() {
            unreadable_msr = Some(msr::AMD_VM_CR);
        }
        value
    } else {
        None
    };

    let mut brand = [0u8; 48];
    if max_ext >= 0x8000_0004 {
        for (i, n) in (0x8000_0002..=0x8000_0004).enumerate() {
            let r = hw::cpuid(n, 0);
            let words = [r.eax, r.ebx, r.ecx, r.edx];
            for (j, word) in words.into_iter().enumerate() {
                let at = i * 16 + j * 4;
                brand[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    let hypervisor_id = cpuid.under_hypervisor().then(|| {
        let r = hw::cpuid(0x4000_0000, 0);
        le_bytes([r.ebx, r.ecx, r.edx])
    });

    CpuInfo {
        features: CpuFeatures::decode(&cpuid, vmx_msrs.as_ref(), vm_cr),
        cpuid,
        brand,
        hypervisor_id,
        unreadable_msr,
    }
}

/// Bytes up to the first NUL as text, trimmed; `"?"` when not UTF-8.
pub fn text(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).map_or("?", str::trim)
}
