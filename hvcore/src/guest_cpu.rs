//! What a guest's CPUID shows: the host's leaves, minus what Thermocline
//! does not virtualize for guests (VMX, SVM, XSAVE and the AVX family whose
//! state lives in XSAVE components), plus the hypervisor bit and a
//! signature at leaf 0x4000_0000; and which EFER and CR4 writes a guest
//! may make. One policy for both vendors; the kernel's `vm` module executes
//! the host's CPUID and applies [`guest_view`], and checks intercepted
//! `MOV CR4` with [`cr4_write`] (VMX also masks CR4 with
//! [`CR4_GUEST_WRITABLE`]).
//!
//! Follows the Intel SDM vol. 2 and AMD APM vol. 3 "CPUID" (leaf 1 ECX
//! bits 5 VMX, 26 XSAVE, 27 OSXSAVE, 28 AVX, 31 hypervisor; leaf 7 EBX bit
//! 5 AVX2 and the AVX-512 bits; leaf 0xD XSAVE state; leaf 0x8000_0001 ECX
//! bit 2 SVM; leaf 0x8000_000A SVM features).

use crate::cpu_features::{CPUID_EXT1_ECX_SVM, CPUID1_ECX_HYPERVISOR, CPUID1_ECX_VMX};

/// Four CPUID output registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// The hypervisor signature at leaf 0x4000_0000 (EBX, ECX, EDX).
pub const SIGNATURE: [u8; 12] = *b"Thermocline ";

/// Leaf 1 ECX: XSAVE, OSXSAVE, AVX.
const LEAF1_ECX_XSAVE_AVX: u32 = (1 << 26) | (1 << 27) | (1 << 28);
/// Leaf 1 ECX, not virtualized: MONITOR (3; MONITOR/MWAIT would not exit),
/// PDCM (15; its capabilities MSR is not modelled), PCID (17; CR4.PCIDE is
/// not offered), x2APIC (21) and TSC-deadline (24; no local APIC).
const LEAF1_ECX_HIDDEN: u32 = (1 << 3) | (1 << 15) | (1 << 17) | (1 << 21) | (1 << 24);
/// Leaf 1 EDX, not virtualized: MCE (7) and MCA (14; no machine-check
/// banks), APIC (9; the platform is the 8259 PIC), MTRR (12; the MTRR MSRs
/// are not modelled, so Linux leaves MTRRs and PAT alone), ACPI thermal
/// (22).
const LEAF1_EDX_HIDDEN: u32 = (1 << 7) | (1 << 9) | (1 << 12) | (1 << 14) | (1 << 22);
/// Leaf 7 EBX: AVX2 and AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
const LEAF7_EBX_AVX: u32 = (1 << 5) | 0xdc23_0000;
/// Leaf 7 EBX, not virtualized: TSC_ADJUST (1; its MSR is not modelled),
/// INVPCID (10; PCID is off), RDT monitoring and allocation (12, 15).
const LEAF7_EBX_HIDDEN: u32 = (1 << 1) | (1 << 10) | (1 << 12) | (1 << 15);
/// Leaf 7 ECX, not virtualized: UMIP (2) and PKU/OSPKE (3, 4) (their CR4
/// bits are not offered), LA57 (16), RDPID (22; TSC_AUX is not switched
/// per vCPU).
const LEAF7_ECX_HIDDEN: u32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 16) | (1 << 22);
/// Leaf 7 EDX, not virtualized: the speculation-control MSRs (IBRS/IBPB
/// 26, STIBP 27, L1D_FLUSH 28, ARCH_CAPABILITIES 29, CORE_CAPABILITIES 30,
/// SSBD 31).
const LEAF7_EDX_HIDDEN: u32 = 0xfc00_0000;
/// Leaf 0x8000_0001 ECX: SVM (2), and the extended APIC space (3), the
/// core performance counters (23) and the data breakpoint extension (26),
/// whose MSRs are not modelled.
const EXT1_ECX_HIDDEN: u32 = CPUID_EXT1_ECX_SVM | (1 << 3) | (1 << 23) | (1 << 26);
/// Leaf 0x8000_0001 EDX: RDTSCP (27; TSC_AUX is not switched per vCPU).
const EXT1_EDX_HIDDEN: u32 = 1 << 27;
/// Leaf 0x8000_0008 EBX: AMD's speculation-control MSRs (IBPB 12, IBRS
/// 14, STIBP 15, SSBD 24, VIRT_SSBD 25).
const EXT8_EBX_HIDDEN: u32 = (1 << 12) | (1 << 14) | (1 << 15) | (1 << 24) | (1 << 25);

/// The highest hypervisor leaf: 0x4000_0010, the timing leaf.
pub const HYPERVISOR_MAX_LEAF: u32 = 0x4000_0010;

/// Whether the host's CPUID is consulted for `leaf` at all (else the guest
/// sees zeros or Thermocline's own values).
pub fn uses_host(leaf: u32) -> bool {
    !matches!(leaf, 0xd | 0x4000_0000..=0x4000_00ff | 0x8000_000a)
}

/// The guest's view of `leaf`/`subleaf`, given the host's answer (ignored
/// where [`uses_host`] is false) and the TSC frequency in kHz (0 when not
/// known), which leaf 0x4000_0010 reports in EAX (the timing leaf other
/// hypervisors use; the local APIC's bus frequency in EBX stays 0: there is
/// none).
pub fn guest_view(leaf: u32, subleaf: u32, host: Cpuid, tsc_khz: u32) -> Cpuid {
    let mut r = if uses_host(leaf) {
        host
    } else {
        Cpuid::default()
    };
    match leaf {
        1 => {
            r.ecx &= !(CPUID1_ECX_VMX | LEAF1_ECX_XSAVE_AVX | LEAF1_ECX_HIDDEN);
            r.ecx |= CPUID1_ECX_HYPERVISOR;
            r.edx &= !LEAF1_EDX_HIDDEN;
            // Initial APIC id 0: one vCPU per VM.
            r.ebx &= 0x00ff_ffff;
        }
        7 if subleaf == 0 => {
            r.ebx &= !(LEAF7_EBX_AVX | LEAF7_EBX_HIDDEN);
            r.ecx &= !LEAF7_ECX_HIDDEN;
            r.edx &= !LEAF7_EDX_HIDDEN;
        }
        0x4000_0000 => {
            let word = |i: usize| {
                u32::from_le_bytes([
                    SIGNATURE[i],
                    SIGNATURE[i + 1],
                    SIGNATURE[i + 2],
                    SIGNATURE[i + 3],
                ])
            };
            r = Cpuid {
                eax: HYPERVISOR_MAX_LEAF,
                ebx: word(0),
                ecx: word(4),
                edx: word(8),
            };
        }
        0x4000_0010 => r.eax = tsc_khz,
        // Intel's TSC/crystal ratio: none, so Linux does not derive a
        // frequency from a crystal it cannot see.
        0x15 => r = Cpuid::default(),
        // Intel's base and maximum frequency in MHz, which Linux takes as
        // the TSC's when leaf 0x15 is empty: the TSC the guest reads is the
        // host's, so the host's measured frequency. An emulator's nominal
        // value (Bochs: 3500 MHz with a TSC at its 50 MHz instruction rate)
        // made Linux's clocksource watchdog mark the TSC unstable.
        0x16 => {
            let mhz = tsc_khz / 1000;
            r = Cpuid {
                eax: mhz,
                ebx: mhz,
                ecx: 0,
                edx: 0,
            };
        }
        0x8000_0001 => {
            r.ecx &= !EXT1_ECX_HIDDEN;
            r.edx &= !EXT1_EDX_HIDDEN;
        }
        0x8000_0008 => r.ebx &= !EXT8_EBX_HIDDEN,
        _ => {}
    }
    r
}

/// MSR EFER (the SDM's IA32_EFER).
pub const MSR_EFER: u32 = 0xc000_0080;

/// CR4 bits a guest may change: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE,
/// PCE, OSFXSR, OSXMMEXCPT, UMIP, FSGSBASE, SMEP, SMAP. Not offered:
/// OSXSAVE (XCR0 is not switched per VM), PCIDE, LA57, and the rest.
pub const CR4_GUEST_WRITABLE: u64 = 0x7ff | (1 << 16) | (1 << 20) | (1 << 21);

/// The CR4 a guest's `MOV CR4` may install, or why it raises #GP.
pub fn cr4_write(new: u64, long_mode: bool) -> Result<u64, &'static str> {
    if new & !CR4_GUEST_WRITABLE != 0 {
        return Err("sets a CR4 bit that is reserved or not offered (OSXSAVE, PCIDE, LA57...)");
    }
    if long_mode && new & (1 << 5) == 0 {
        return Err("clears CR4.PAE in long mode");
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Cpuid = Cpuid {
        eax: u32::MAX,
        ebx: u32::MAX,
        ecx: u32::MAX,
        edx: u32::MAX,
    };

    #[test]
    fn virtualization_and_xsave_are_hidden() {
        let l1 = guest_view(1, 0, ALL, 0);
        assert_eq!(l1.ecx & CPUID1_ECX_VMX, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_XSAVE_AVX, 0);
        assert_ne!(l1.ecx & CPUID1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ebx >> 24, 0);
        assert_eq!(
            guest_view(0x8000_0001, 0, ALL, 0).ecx & CPUID_EXT1_ECX_SVM,
            0
        );
        assert_eq!(guest_view(0x8000_000a, 0, ALL, 0), Cpuid::default());
        assert_eq!(guest_view(0xd, 1, ALL, 0), Cpuid::default());
        assert_eq!(guest_view(7, 0, ALL, 0).ebx & LEAF7_EBX_AVX, 0);
        // Other subleaves of 7 and other leaves pass through.
        assert_eq!(guest_view(7, 1, ALL, 0), ALL);
        assert_eq!(guest_view(0, 0, ALL, 0), ALL);
    }

    #[test]
    fn signature_leaf() {
        let s = guest_view(0x4000_0000, 0, ALL, 0);
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&s.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&s.ecx.to_le_bytes());
        id[8..].copy_from_slice(&s.edx.to_le_bytes());
        assert_eq!(&id, b"Thermocline ");
        assert_eq!(guest_view(0x4000_0001, 0, ALL, 0), Cpuid::default());
        assert_eq!(s.eax, HYPERVISOR_MAX_LEAF);
        assert_eq!(guest_view(0x4000_0010, 0, ALL, 2_400_000).eax, 2_400_000);
        assert_eq!(guest_view(0x4000_0010, 0, ALL, 2_400_000).ebx, 0);
        // Intel's frequency leaves follow the host's measured TSC.
        assert_eq!(guest_view(0x15, 0, ALL, 50_000), Cpuid::default());
        let leaf16 = guest_view(0x16, 0, ALL, 50_000);
        assert_eq!((leaf16.eax, leaf16.ebx, leaf16.ecx), (50, 50, 0));
        assert_eq!(guest_view(0x16, 0, ALL, 0), Cpuid::default());
    }

    #[test]
    fn what_is_not_virtualized_is_hidden() {
        let l1 = guest_view(1, 0, ALL, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_HIDDEN, 0);
        assert_eq!(l1.edx & LEAF1_EDX_HIDDEN, 0);
        // FPU, TSC, MSR, PAE, CX8, SSE2 stay.
        for bit in [0, 4, 5, 6, 8, 26] {
            assert_ne!(l1.edx & (1 << bit), 0, "leaf 1 EDX bit {bit}");
        }
        let l7 = guest_view(7, 0, ALL, 0);
        assert_eq!(l7.ebx & LEAF7_EBX_HIDDEN, 0);
        assert_eq!(l7.ecx & LEAF7_ECX_HIDDEN, 0);
        assert_eq!(l7.edx & LEAF7_EDX_HIDDEN, 0);
        let e1 = guest_view(0x8000_0001, 0, ALL, 0);
        assert_eq!(e1.ecx & EXT1_ECX_HIDDEN, 0);
        assert_eq!(e1.edx & EXT1_EDX_HIDDEN, 0);
        // Long mode and NX stay.
        assert_ne!(e1.edx & (1 << 29), 0);
        assert_ne!(e1.edx & (1 << 20), 0);
        assert_eq!(guest_view(0x8000_0008, 0, ALL, 0).ebx & EXT8_EBX_HIDDEN, 0);
    }

    #[test]
    fn cr4_writes_keep_to_the_offered_bits() {
        let boot = (1 << 5) | (1 << 9) | (1 << 10);
        assert_eq!(cr4_write(boot | (1 << 7), true), Ok(boot | (1 << 7)));
        assert!(
            cr4_write(boot | (1 << 18), true)
                .unwrap_err()
                .contains("OSXSAVE")
        );
        assert!(cr4_write(boot | (1 << 12), true).is_err());
        assert!(
            cr4_write(boot & !(1 << 5), true)
                .unwrap_err()
                .contains("PAE")
        );
        assert_eq!(cr4_write(0, false), Ok(0));
    }
}
