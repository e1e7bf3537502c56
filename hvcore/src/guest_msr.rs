//! The MSRs a guest may read and write through exits, one model for both
//! vendors: a value per vCPU for those the hypervisor emulates, the rule
//! for each write, and "unknown" for the rest, which the caller turns into
//! #GP as hardware does for an MSR that does not exist (the SDM's RDMSR and
//! WRMSR: "#GP(0) if ECX specifies a reserved or unimplemented MSR
//! address"). Linux reads every MSR it is unsure of with an exception
//! fixup, so #GP is a survivable answer; a stopped VM is not.
//!
//! Not here: EFER (the vendor owns it, `VirtCpu::set_guest_efer`) and the
//! [`CONTEXT_MSRS`], which live in each vendor's per-vCPU state and are not
//! intercepted (SVM: VMLOAD/VMSAVE and the VMCB save area switch them
//! around every VMRUN, so the MSR permission map lets the guest reach them
//! directly).
//!
//! What the guest sees: the TSC as the host's (RDTSC is not intercepted
//! either, so both agree), an APIC base with the local APIC disabled (the
//! platform is the 8259 PIC; CPUID hides the APIC), PAT with the
//! architecture's validity check, TSC_AUX stored, the microcode patch level,
//! HWCR and the interrupt-pending message register (no C1E) as zero, and
//! on Intel a fixed IA32_MISC_ENABLE ([`MISC_ENABLE_VALUE`]). On VMX, PAT
//! and TSC_AUX (where RDTSCP is enabled) are not intercepted either: the
//! VMCS and the vCPU's MSR areas switch them (`kernel::vmx::vcpu`).

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = 0x10;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// AMD's microcode patch level (Intel's IA32_BIOS_SIGN_ID at the same index).
pub const MSR_PATCH_LEVEL: u32 = 0x8b;
/// IA32_MISC_ENABLE (Intel).
pub const MSR_MISC_ENABLE: u32 = 0x1a0;
/// IA32_PAT.
pub const MSR_PAT: u32 = 0x277;
/// TSC_AUX (RDTSCP/RDPID's value).
pub const MSR_TSC_AUX: u32 = 0xc000_0103;
/// AMD's hardware configuration register.
pub const MSR_HWCR: u32 = 0xc001_0015;
/// AMD's interrupt-pending message register (C1E on older families).
pub const MSR_INT_PENDING_MSG: u32 = 0xc001_0055;

/// MSRs the vendor keeps per vCPU outside this model and lets the guest
/// reach without an exit: SYSENTER_CS/ESP/EIP, STAR, LSTAR, CSTAR, SFMASK,
/// FS.base, GS.base, KernelGSbase.
pub const CONTEXT_MSRS: [u32; 10] = [
    0x174,
    0x175,
    0x176,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
];

/// The power-on PAT: WB, WT, UC-, UC, repeated.
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;
/// The APIC base a BSP reports: the default address with the BSP bit and
/// the global enable bit clear (no local APIC is offered).
pub const APIC_BASE_VALUE: u64 = 0xfee0_0000 | (1 << 8);

/// IA32_MISC_ENABLE as an Intel guest reads it: fast strings on (bit 0),
/// branch trace storage and PEBS unavailable (bits 11, 12), XD not
/// disabled (bit 34 clear). Linux reads it without a fixup in its very
/// first instructions on an Intel CPU (verify_cpu, before it has an IDT),
/// so #GP there would triple-fault the guest.
pub const MISC_ENABLE_VALUE: u64 = (1 << 0) | (1 << 11) | (1 << 12);

/// Why a write is refused; each becomes #GP in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrError {
    /// The model has no such MSR.
    Unknown,
    /// The MSR exists but the value is not allowed; why.
    Refused(&'static str),
}

/// One vCPU's emulated MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrState {
    pat: u64,
    tsc_aux: u64,
}

impl Default for MsrState {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether every byte of `pat` is a memory type PAT accepts (0, 1, 4, 5,
/// 6, 7; 2 and 3 are reserved): SDM "IA32_PAT MSR".
fn pat_valid(pat: u64) -> bool {
    pat.to_le_bytes()
        .iter()
        .all(|&t| matches!(t, 0 | 1 | 4..=7))
}

impl MsrState {
    /// The state at power-on.
    pub const fn new() -> Self {
        Self {
            pat: PAT_POWER_ON,
            tsc_aux: 0,
        }
    }

    /// RDMSR `msr`; `tsc` is the host TSC now. `None`: unknown (#GP).
    pub fn read(&self, msr: u32, tsc: u64) -> Option<u64> {
        match msr {
            MSR_TSC => Some(tsc),
            MSR_APIC_BASE => Some(APIC_BASE_VALUE),
            MSR_MISC_ENABLE => Some(MISC_ENABLE_VALUE),
            MSR_PATCH_LEVEL | MSR_HWCR | MSR_INT_PENDING_MSG => Some(0),
            MSR_PAT => Some(self.pat),
            MSR_TSC_AUX => Some(self.tsc_aux),
            _ => None,
        }
    }

    /// WRMSR `value` to `msr`.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<(), MsrError> {
        match msr {
            MSR_PAT if pat_valid(value) => self.pat = value,
            MSR_PAT => return Err(MsrError::Refused("a reserved PAT memory type")),
            MSR_TSC_AUX if value >> 32 == 0 => self.tsc_aux = value,
            MSR_TSC_AUX => return Err(MsrError::Refused("TSC_AUX bits 63:32 are reserved")),
            // Writing the value it reads is harmless (Linux re-writes the
            // base when it disables the APIC); anything else would ask for
            // an APIC this platform does not have.
            MSR_APIC_BASE if value == APIC_BASE_VALUE => {}
            MSR_APIC_BASE => {
                return Err(MsrError::Refused("no local APIC is offered"));
            }
            // Linux writes it back only to change a bit it found set the
            // other way; the value is fixed here.
            MSR_MISC_ENABLE if value == MISC_ENABLE_VALUE => {}
            MSR_MISC_ENABLE => return Err(MsrError::Refused("MISC_ENABLE is fixed here")),
            // A microcode load asks for the level to be re-read; no effect.
            MSR_PATCH_LEVEL => {}
            MSR_TSC => return Err(MsrError::Refused("the guest TSC follows the host's")),
            MSR_HWCR | MSR_INT_PENDING_MSG => {
                return Err(MsrError::Refused("read-only here"));
            }
            _ => return Err(MsrError::Unknown),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emulated_msrs_keep_their_values() {
        let mut s = MsrState::new();
        assert_eq!(s.read(MSR_PAT, 0), Some(PAT_POWER_ON));
        s.write(MSR_PAT, 0x0007_0106_0007_0106).unwrap();
        assert_eq!(s.read(MSR_PAT, 0), Some(0x0007_0106_0007_0106));
        assert_eq!(
            s.write(MSR_PAT, 0x02),
            Err(MsrError::Refused("a reserved PAT memory type"))
        );
        s.write(MSR_TSC_AUX, 3).unwrap();
        assert_eq!(s.read(MSR_TSC_AUX, 0), Some(3));
        assert!(s.write(MSR_TSC_AUX, 1 << 32).is_err());
        assert_eq!(s.read(MSR_TSC, 1234), Some(1234));
        assert_eq!(s.read(MSR_APIC_BASE, 0).unwrap() & (1 << 11), 0);
        assert_eq!(s.write(MSR_APIC_BASE, APIC_BASE_VALUE), Ok(()));
        assert!(s.write(MSR_APIC_BASE, APIC_BASE_VALUE | (1 << 11)).is_err());
        assert_eq!(s.read(MSR_MISC_ENABLE, 0), Some(MISC_ENABLE_VALUE));
        assert_eq!(
            s.read(MSR_MISC_ENABLE, 0).unwrap() & (1 << 34),
            0,
            "XD enabled"
        );
        assert_eq!(s.write(MSR_MISC_ENABLE, MISC_ENABLE_VALUE), Ok(()));
        assert!(
            s.write(MSR_MISC_ENABLE, MISC_ENABLE_VALUE | (1 << 34))
                .is_err()
        );
        assert_eq!(s.read(0x1234, 0), None);
        assert_eq!(s.write(0x1234, 0), Err(MsrError::Unknown));
        for m in CONTEXT_MSRS {
            assert_eq!(s.read(m, 0), None, "{m:#x} belongs to the vendor");
        }
    }

    proptest! {
        #[test]
        fn pat_accepts_exactly_the_defined_types(pat in any::<u64>()) {
            let mut s = MsrState::new();
            let ok = pat.to_le_bytes().iter().all(|&t| t < 8 && t != 2 && t != 3);
            prop_assert_eq!(s.write(MSR_PAT, pat).is_ok(), ok);
            prop_assert_eq!(s.read(MSR_PAT, 0), Some(if ok { pat } else { PAT_POWER_ON }));
        }
    }
}
