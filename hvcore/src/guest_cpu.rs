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
/// Leaf 7 EBX: AVX2 and AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
const LEAF7_EBX_AVX: u32 = (1 << 5) | 0xdc23_0000;

/// Whether the host's CPUID is consulted for `leaf` at all (else the guest
/// sees zeros or Thermocline's own values).
pub fn uses_host(leaf: u32) -> bool {
    !matches!(leaf, 0xd | 0x4000_0000..=0x4000_00ff | 0x8000_000a)
}

/// The guest's view of `leaf`/`subleaf`, given the host's answer (ignored
/// where [`uses_host`] is false).
pub fn guest_view(leaf: u32, subleaf: u32, host: Cpuid) -> Cpuid {
    let mut r = if uses_host(leaf) {
        host
    } else {
        Cpuid::default()
    };
    match leaf {
        1 => {
            r.ecx &= !(CPUID1_ECX_VMX | LEAF1_ECX_XSAVE_AVX);
            r.ecx |= CPUID1_ECX_HYPERVISOR;
            // Initial APIC id 0: one vCPU per VM.
            r.ebx &= 0x00ff_ffff;
        }
        7 if subleaf == 0 => r.ebx &= !LEAF7_EBX_AVX,
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
                eax: 0x4000_0000,
                ebx: word(0),
                ecx: word(4),
                edx: word(8),
            };
        }
        0x8000_0001 => r.ecx &= !CPUID_EXT1_ECX_SVM,
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
        let l1 = guest_view(1, 0, ALL);
        assert_eq!(l1.ecx & CPUID1_ECX_VMX, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_XSAVE_AVX, 0);
        assert_ne!(l1.ecx & CPUID1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ebx >> 24, 0);
        assert_eq!(guest_view(0x8000_0001, 0, ALL).ecx & CPUID_EXT1_ECX_SVM, 0);
        assert_eq!(guest_view(0x8000_000a, 0, ALL), Cpuid::default());
        assert_eq!(guest_view(0xd, 1, ALL), Cpuid::default());
        assert_eq!(guest_view(7, 0, ALL).ebx & LEAF7_EBX_AVX, 0);
        // Other subleaves of 7 and other leaves pass through.
        assert_eq!(guest_view(7, 1, ALL), ALL);
        assert_eq!(guest_view(0, 0, ALL), ALL);
    }

    #[test]
    fn signature_leaf() {
        let s = guest_view(0x4000_0000, 0, ALL);
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&s.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&s.ecx.to_le_bytes());
        id[8..].copy_from_slice(&s.edx.to_le_bytes());
        assert_eq!(&id, b"Thermocline ");
        assert_eq!(guest_view(0x4000_0001, 0, ALL), Cpuid::default());
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
