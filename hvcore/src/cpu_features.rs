//! Decoding of the CPU's virtualization features from raw CPUID and MSR values.
//!
//! The kernel executes `CPUID` and `RDMSR` (see `kernel/src/cpu.rs`) and hands
//! the raw register values to this module, which turns them into
//! [`CpuFeatures`]: the vendor, and what the VMX or SVM extension offers. Keeping
//! the bit logic here means it is tested on the host against register values
//! captured from real and emulated CPUs.
//!
//! Which MSR to read depends on what CPUID and earlier MSRs said (an absent MSR
//! raises #GP), so the reading is a conversation: [`VmxMsrPlan`] says which
//! VMX capability MSRs exist given what was read so far.
//!
//! References:
//! - Intel SDM Vol. 3, appendix "VMX Capability Reporting Facility" (basic VMX
//!   information, pin-based/processor-based/secondary controls, "VPID and EPT
//!   capabilities") and the chapter "Virtual Machine Control Structures".
//! - AMD APM Vol. 3, "CPUID Fn8000_000A SVM Revision and Feature
//!   Identification"; APM Vol. 2, "Enabling SVM" (VM_CR.SVMDIS).

/// `CPUID.1:ECX` bit 5: VMX.
pub const CPUID1_ECX_VMX: u32 = 1 << 5;
/// `CPUID.1:ECX` bit 31: running under a hypervisor.
pub const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// `CPUID.8000_0001:ECX` bit 2: SVM.
pub const CPUID_EXT1_ECX_SVM: u32 = 1 << 2;

/// MSR numbers of the capability MSRs the banner reads.
pub mod msr {
    /// IA32_FEATURE_CONTROL: lock bit and "VMX outside SMX" enable.
    pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
    /// IA32_VMX_BASIC: VMCS revision, "true" controls support (bit 55).
    pub const IA32_VMX_BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS.
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS.
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_PROCBASED_CTLS2 (exists only when the primary controls allow
    /// "activate secondary controls").
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
    /// IA32_VMX_EPT_VPID_CAP (exists only when the secondary controls allow
    /// EPT or VPID).
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
    /// IA32_VMX_TRUE_PINBASED_CTLS (exists when IA32_VMX_BASIC bit 55 is set).
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
    /// IA32_VMX_TRUE_PROCBASED_CTLS (exists when IA32_VMX_BASIC bit 55 is set).
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
    /// AMD VM_CR: bit 4 SVMDIS (firmware disabled SVM).
    pub const AMD_VM_CR: u32 = 0xC001_0114;
}

/// Which CPU vendor CPUID leaf 0 names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel"
    Intel,
    /// "AuthenticAMD"
    Amd,
    /// Anything else (e.g. "HygonGenuine"); VMX/SVM are still decoded from CPUID.
    Other,
}

impl Vendor {
    /// Classifies the 12-byte vendor string of CPUID leaf 0 (EBX, EDX, ECX order).
    pub fn from_id(id: &[u8; 12]) -> Self {
        match id {
            b"GenuineIntel" => Self::Intel,
            b"AuthenticAMD" => Self::Amd,
            _ => Self::Other,
        }
    }
}

/// The CPUID values the decoder needs, as the kernel read them.
///
/// Leaves beyond the CPU's maximum leaf are reported as zero by the kernel,
/// which this decoder treats as "feature absent".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidValues {
    /// Vendor string from leaf 0, EBX:EDX:ECX.
    pub vendor_id: [u8; 12],
    /// Leaf 1 ECX.
    pub leaf1_ecx: u32,
    /// Leaf 0x8000_0001 ECX.
    pub ext1_ecx: u32,
    /// Leaf 0x8000_000A EAX (SVM revision), EBX (number of ASIDs), EDX (features).
    pub svm_eax: u32,
    /// Leaf 0x8000_000A EBX: number of address space identifiers.
    pub svm_ebx: u32,
    /// Leaf 0x8000_000A EDX: SVM feature flags.
    pub svm_edx: u32,
}

impl CpuidValues {
    /// CPUID says VMX exists.
    pub fn has_vmx(&self) -> bool {
        self.leaf1_ecx & CPUID1_ECX_VMX != 0
    }

    /// CPUID says SVM exists.
    pub fn has_svm(&self) -> bool {
        self.ext1_ecx & CPUID_EXT1_ECX_SVM != 0
    }

    /// CPUID says a hypervisor runs underneath us.
    pub fn under_hypervisor(&self) -> bool {
        self.leaf1_ecx & CPUID1_ECX_HYPERVISOR != 0
    }
}

/// The VMX capability MSRs, each `None` when it does not exist on this CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxMsrs {
    /// IA32_FEATURE_CONTROL.
    pub feature_control: Option<u64>,
    /// IA32_VMX_BASIC.
    pub basic: Option<u64>,
    /// IA32_VMX_TRUE_PINBASED_CTLS if it exists, else IA32_VMX_PINBASED_CTLS.
    pub pinbased: Option<u64>,
    /// IA32_VMX_TRUE_PROCBASED_CTLS if it exists, else IA32_VMX_PROCBASED_CTLS.
    pub procbased: Option<u64>,
    /// IA32_VMX_PROCBASED_CTLS2.
    pub procbased2: Option<u64>,
    /// IA32_VMX_EPT_VPID_CAP.
    pub ept_vpid_cap: Option<u64>,
}

/// Which VMX capability MSR to read next, given those read so far.
///
/// Feed the values back into [`VmxMsrs`] and call [`VmxMsrPlan::next`] again
/// until it returns `None`. Every MSR it names exists on the CPU (SDM appendix
/// "VMX Capability Reporting Facility" defines each one's existence condition).
#[derive(Clone, Copy, Debug)]
pub struct VmxMsrPlan;

/// IA32_VMX_BASIC bit 55: the "true" control MSRs exist.
const VMX_BASIC_TRUE_CTLS: u64 = 1 << 55;
/// Pin-based control bit 6: activate VMX-preemption timer.
const PIN_PREEMPTION_TIMER: u32 = 1 << 6;
/// Primary processor-based control bit 31: activate secondary controls.
const PROC_SECONDARY_CONTROLS: u32 = 1 << 31;
/// Secondary control bit 1: enable EPT.
const PROC2_EPT: u32 = 1 << 1;
/// Secondary control bit 5: enable VPID.
const PROC2_VPID: u32 = 1 << 5;
/// Secondary control bit 7: unrestricted guest.
const PROC2_UNRESTRICTED_GUEST: u32 = 1 << 7;
/// IA32_VMX_EPT_VPID_CAP bit 6: 4-level page walk.
const EPT_CAP_WALK_4: u64 = 1 << 6;
/// IA32_VMX_EPT_VPID_CAP bit 14: write-back memory type for EPT structures.
const EPT_CAP_WB: u64 = 1 << 14;
/// IA32_VMX_EPT_VPID_CAP bit 16: 2 MiB pages.
const EPT_CAP_2M: u64 = 1 << 16;
/// IA32_VMX_EPT_VPID_CAP bit 17: 1 GiB pages.
const EPT_CAP_1G: u64 = 1 << 17;
/// IA32_VMX_EPT_VPID_CAP bit 20: INVEPT.
const EPT_CAP_INVEPT: u64 = 1 << 20;
/// IA32_VMX_EPT_VPID_CAP bit 21: accessed and dirty flags for EPT.
const EPT_CAP_AD: u64 = 1 << 21;
/// IA32_VMX_EPT_VPID_CAP bit 25: single-context INVEPT.
const EPT_CAP_INVEPT_SINGLE: u64 = 1 << 25;
/// IA32_VMX_EPT_VPID_CAP bit 32: INVVPID.
const VPID_CAP_INVVPID: u64 = 1 << 32;
/// IA32_FEATURE_CONTROL bit 0: locked.
const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// IA32_FEATURE_CONTROL bit 2: VMX outside SMX enabled.
const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// Allowed-1 settings of a VMX control MSR are its high 32 bits: a control bit
/// may be set to 1 only where the high half has a 1.
fn allowed1(ctl_msr: u64) -> u32 {
    (ctl_msr >> 32) as u32
}

impl VmxMsrPlan {
    /// The next MSR to read into `msrs`, or `None` when everything that exists
    /// has been read. Returns the MSR number and which field it fills.
    pub fn next(msrs: &VmxMsrs) -> Option<(u32, VmxMsrField)> {
        if msrs.feature_control.is_none() {
            return Some((msr::IA32_FEATURE_CONTROL, VmxMsrField::FeatureControl));
        }
        let Some(basic) = msrs.basic else {
            return Some((msr::IA32_VMX_BASIC, VmxMsrField::Basic));
        };
        let true_ctls = basic & VMX_BASIC_TRUE_CTLS != 0;
        if msrs.pinbased.is_none() {
            let n = if true_ctls {
                msr::IA32_VMX_TRUE_PINBASED_CTLS
            } else {
                msr::IA32_VMX_PINBASED_CTLS
            };
            return Some((n, VmxMsrField::Pinbased));
        }
        let Some(procbased) = msrs.procbased else {
            let n = if true_ctls {
                msr::IA32_VMX_TRUE_PROCBASED_CTLS
            } else {
                msr::IA32_VMX_PROCBASED_CTLS
            };
            return Some((n, VmxMsrField::Procbased));
        };
        if allowed1(procbased) & PROC_SECONDARY_CONTROLS == 0 {
            return None;
        }
        let Some(procbased2) = msrs.procbased2 else {
            return Some((msr::IA32_VMX_PROCBASED_CTLS2, VmxMsrField::Procbased2));
        };
        if allowed1(procbased2) & (PROC2_EPT | PROC2_VPID) != 0 && msrs.ept_vpid_cap.is_none() {
            return Some((msr::IA32_VMX_EPT_VPID_CAP, VmxMsrField::EptVpidCap));
        }
        None
    }
}

/// Which field of [`VmxMsrs`] a planned read fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxMsrField {
    /// [`VmxMsrs::feature_control`]
    FeatureControl,
    /// [`VmxMsrs::basic`]
    Basic,
    /// [`VmxMsrs::pinbased`]
    Pinbased,
    /// [`VmxMsrs::procbased`]
    Procbased,
    /// [`VmxMsrs::procbased2`]
    Procbased2,
    /// [`VmxMsrs::ept_vpid_cap`]
    EptVpidCap,
}

impl VmxMsrs {
    /// Stores `value` into `field`.
    pub fn set(&mut self, field: VmxMsrField, value: u64) {
        let slot = match field {
            VmxMsrField::FeatureControl => &mut self.feature_control,
            VmxMsrField::Basic => &mut self.basic,
            VmxMsrField::Pinbased => &mut self.pinbased,
            VmxMsrField::Procbased => &mut self.procbased,
            VmxMsrField::Procbased2 => &mut self.procbased2,
            VmxMsrField::EptVpidCap => &mut self.ept_vpid_cap,
        };
        *slot = Some(value);
    }
}

/// Whether firmware lets us turn VMX on (IA32_FEATURE_CONTROL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxFirmwareState {
    /// Unlocked: the hypervisor sets and locks the enable bit itself.
    Unlocked,
    /// Locked with VMX outside SMX enabled.
    LockedEnabled,
    /// Locked with VMX disabled: VMXON will fault; only a firmware setting helps.
    LockedDisabled,
}

/// What the VMX extension offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxFeatures {
    /// The firmware lock state.
    pub firmware: VmxFirmwareState,
    /// VMCS revision identifier (IA32_VMX_BASIC bits 30:0).
    pub vmcs_revision: u32,
    /// The "true" control MSRs exist.
    pub true_controls: bool,
    /// Extended page tables.
    pub ept: bool,
    /// Accessed and dirty flags for EPT (IA32_VMX_EPT_VPID_CAP bit 21).
    pub ept_ad: bool,
    /// 4-level EPT walk with write-back paging structures: what Thermocline uses.
    pub ept_4level_wb: bool,
    /// EPT 2 MiB pages.
    pub ept_2m: bool,
    /// EPT 1 GiB pages.
    pub ept_1g: bool,
    /// INVEPT single-context (the flush ending each aging pass).
    pub invept_single: bool,
    /// Virtual-processor identifiers.
    pub vpid: bool,
    /// INVVPID.
    pub invvpid: bool,
    /// Unrestricted guest (real-mode guests without emulation).
    pub unrestricted_guest: bool,
    /// VMX-preemption timer.
    pub preemption_timer: bool,
}

impl VmxFeatures {
    /// Decodes the capability MSRs read by following [`VmxMsrPlan`].
    pub fn decode(m: &VmxMsrs) -> Self {
        let fc = m.feature_control.unwrap_or(0);
        let firmware = if fc & FEATURE_CONTROL_LOCK == 0 {
            VmxFirmwareState::Unlocked
        } else if fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX != 0 {
            VmxFirmwareState::LockedEnabled
        } else {
            VmxFirmwareState::LockedDisabled
        };
        let basic = m.basic.unwrap_or(0);
        let pin = m.pinbased.map_or(0, allowed1);
        let proc1 = m.procbased.map_or(0, allowed1);
        let proc2 = if proc1 & PROC_SECONDARY_CONTROLS != 0 {
            m.procbased2.map_or(0, allowed1)
        } else {
            0
        };
        let ept = proc2 & PROC2_EPT != 0;
        let vpid = proc2 & PROC2_VPID != 0;
        let cap = if ept || vpid {
            m.ept_vpid_cap.unwrap_or(0)
        } else {
            0
        };
        Self {
            firmware,
            vmcs_revision: (basic & 0x7FFF_FFFF) as u32,
            true_controls: basic & VMX_BASIC_TRUE_CTLS != 0,
            ept,
            ept_ad: ept && cap & EPT_CAP_AD != 0,
            ept_4level_wb: ept && cap & EPT_CAP_WALK_4 != 0 && cap & EPT_CAP_WB != 0,
            ept_2m: ept && cap & EPT_CAP_2M != 0,
            ept_1g: ept && cap & EPT_CAP_1G != 0,
            invept_single: ept && cap & EPT_CAP_INVEPT != 0 && cap & EPT_CAP_INVEPT_SINGLE != 0,
            vpid,
            invvpid: vpid && cap & VPID_CAP_INVVPID != 0,
            // Unrestricted guest requires EPT (SDM: "Checks on VMX Controls").
            unrestricted_guest: ept && proc2 & PROC2_UNRESTRICTED_GUEST != 0,
            preemption_timer: pin & PIN_PREEMPTION_TIMER != 0,
        }
    }

    /// Whether Thermocline's VMX backend can run: EPT with a 4-level
    /// write-back walk and single-context INVEPT, and firmware not in the way.
    pub fn usable(&self) -> bool {
        self.firmware != VmxFirmwareState::LockedDisabled
            && self.ept
            && self.ept_4level_wb
            && self.invept_single
    }
}

/// `CPUID.8000_000A:EDX` bit 0: nested paging.
const SVM_NP: u32 = 1 << 0;
/// `CPUID.8000_000A:EDX` bit 3: NRIP save on #VMEXIT.
const SVM_NRIPS: u32 = 1 << 3;
/// `CPUID.8000_000A:EDX` bit 5: VMCB clean bits.
const SVM_VMCB_CLEAN: u32 = 1 << 5;
/// `CPUID.8000_000A:EDX` bit 6: flush by ASID.
const SVM_FLUSH_BY_ASID: u32 = 1 << 6;
/// `CPUID.8000_000A:EDX` bit 7: decode assists.
const SVM_DECODE_ASSISTS: u32 = 1 << 7;
/// VM_CR bit 4: SVMDIS.
const VM_CR_SVMDIS: u64 = 1 << 4;

/// What the SVM extension offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmFeatures {
    /// SVM revision (CPUID.8000_000A:EAX bits 7:0).
    pub revision: u8,
    /// Number of address space identifiers.
    pub asids: u32,
    /// Nested paging (NPT).
    pub npt: bool,
    /// NRIP save: the CPU stores the next RIP on intercepts.
    pub nrip_save: bool,
    /// VMCB clean bits.
    pub vmcb_clean: bool,
    /// TLB flush by ASID.
    pub flush_by_asid: bool,
    /// Decode assists.
    pub decode_assists: bool,
    /// Firmware disabled SVM through VM_CR.SVMDIS; `None` when VM_CR was not read.
    pub disabled_by_firmware: Option<bool>,
}

impl SvmFeatures {
    /// Decodes CPUID leaf 0x8000_000A and, if read, the VM_CR MSR.
    pub fn decode(c: &CpuidValues, vm_cr: Option<u64>) -> Self {
        Self {
            revision: (c.svm_eax & 0xFF) as u8,
            asids: c.svm_ebx,
            npt: c.svm_edx & SVM_NP != 0,
            nrip_save: c.svm_edx & SVM_NRIPS != 0,
            vmcb_clean: c.svm_edx & SVM_VMCB_CLEAN != 0,
            flush_by_asid: c.svm_edx & SVM_FLUSH_BY_ASID != 0,
            decode_assists: c.svm_edx & SVM_DECODE_ASSISTS != 0,
            disabled_by_firmware: vm_cr.map(|v| v & VM_CR_SVMDIS != 0),
        }
    }

    /// Whether Thermocline's SVM backend can run: nested paging, at least one
    /// guest ASID (ASID 0 is the host's), and firmware not in the way.
    pub fn usable(&self) -> bool {
        self.npt && self.asids > 1 && self.disabled_by_firmware != Some(true)
    }
}

/// Everything the boot banner reports about virtualization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// The vendor named by CPUID leaf 0.
    pub vendor: Vendor,
    /// We run under another hypervisor (CPUID.1:ECX bit 31).
    pub under_hypervisor: bool,
    /// VMX, when CPUID offers it.
    pub vmx: Option<VmxFeatures>,
    /// SVM, when CPUID offers it.
    pub svm: Option<SvmFeatures>,
}

impl CpuFeatures {
    /// Decodes CPUID values plus the MSRs read for them (`vmx_msrs` when
    /// CPUID offered VMX, `vm_cr` when it offered SVM).
    pub fn decode(c: &CpuidValues, vmx_msrs: Option<&VmxMsrs>, vm_cr: Option<u64>) -> Self {
        Self {
            vendor: Vendor::from_id(&c.vendor_id),
            under_hypervisor: c.under_hypervisor(),
            vmx: match vmx_msrs {
                Some(m) if c.has_vmx() => Some(VmxFeatures::decode(m)),
                _ => None,
            },
            svm: c.has_svm().then(|| SvmFeatures::decode(c, vm_cr)),
        }
    }

    /// The backend Thermocline would pick: VMX first (the users' bed), then SVM.
    pub fn backend(&self) -> Option<Backend> {
        if self.vmx.is_some_and(|v| v.usable()) {
            Some(Backend::Vmx)
        } else if self.svm.is_some_and(|s| s.usable()) {
            Some(Backend::Svm)
        } else {
            None
        }
    }
}

/// The virtualization backend a CPU supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Intel VMX with EPT.
    Vmx,
    /// AMD SVM with NPT.
    Svm,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Bochs CPU core's Cannon Lake model (TESTBEDS.md §3) reports this
    /// EPT/VPID capability value.
    const BOCHS_EPT_VPID_CAP: u64 = 0x0000_0F01_0673_4141;

    fn read_all(mut rdmsr: impl FnMut(u32) -> u64) -> (VmxMsrs, std::vec::Vec<u32>) {
        let mut m = VmxMsrs::default();
        let mut order = std::vec::Vec::new();
        while let Some((n, field)) = VmxMsrPlan::next(&m) {
            order.push(n);
            m.set(field, rdmsr(n));
            assert!(order.len() <= 6, "plan does not terminate: {order:x?}");
        }
        (m, order)
    }

    /// A CPU offering true controls, secondary controls with EPT, VPID and
    /// unrestricted guest, and the preemption timer.
    fn full_vmx(n: u32) -> u64 {
        match n {
            msr::IA32_FEATURE_CONTROL => 0,
            msr::IA32_VMX_BASIC => VMX_BASIC_TRUE_CTLS | 4,
            msr::IA32_VMX_TRUE_PINBASED_CTLS => u64::from(PIN_PREEMPTION_TIMER) << 32,
            msr::IA32_VMX_TRUE_PROCBASED_CTLS => u64::from(PROC_SECONDARY_CONTROLS) << 32,
            msr::IA32_VMX_PROCBASED_CTLS2 => {
                u64::from(PROC2_EPT | PROC2_VPID | PROC2_UNRESTRICTED_GUEST) << 32
            }
            msr::IA32_VMX_EPT_VPID_CAP => BOCHS_EPT_VPID_CAP,
            other => panic!("read of MSR {other:#x} that the plan should not name"),
        }
    }

    #[test]
    fn plan_reads_true_controls_and_ept_cap_when_offered() {
        let (m, order) = read_all(full_vmx);
        assert_eq!(
            order,
            [0x3A, 0x480, 0x48D, 0x48E, 0x48B, 0x48C],
            "reads in dependency order, using the true control MSRs"
        );
        let f = VmxFeatures::decode(&m);
        assert_eq!(f.vmcs_revision, 4);
        assert!(f.true_controls && f.ept && f.vpid && f.unrestricted_guest);
        assert!(f.preemption_timer);
        assert_eq!(f.firmware, VmxFirmwareState::Unlocked);
        assert!(f.usable());
    }

    #[test]
    fn bochs_ept_cap_decodes_ad_flags_and_page_sizes() {
        let (m, _) = read_all(full_vmx);
        let f = VmxFeatures::decode(&m);
        assert!(f.ept_ad, "bit 21 is set in the Bochs value");
        assert!(f.ept_4level_wb && f.ept_2m && f.ept_1g && f.invept_single);
        assert!(f.invvpid);
    }

    #[test]
    fn ept_ad_is_bit_21_only() {
        let mut m = read_all(full_vmx).0;
        m.ept_vpid_cap = Some(BOCHS_EPT_VPID_CAP & !(1 << 21));
        assert!(!VmxFeatures::decode(&m).ept_ad);
        m.ept_vpid_cap = Some(1 << 21);
        assert!(VmxFeatures::decode(&m).ept_ad);
    }

    #[test]
    fn plan_skips_secondary_msrs_when_not_offered() {
        let (m, order) = read_all(|n| match n {
            msr::IA32_FEATURE_CONTROL => 0,
            msr::IA32_VMX_BASIC => 1,
            msr::IA32_VMX_PINBASED_CTLS => 0,
            msr::IA32_VMX_PROCBASED_CTLS => 0xFFFF_FFFF & !u64::from(PROC_SECONDARY_CONTROLS),
            other => panic!("MSR {other:#x} does not exist on this CPU"),
        });
        assert_eq!(order, [0x3A, 0x480, 0x481, 0x482]);
        let f = VmxFeatures::decode(&m);
        assert!(!f.ept && !f.vpid && !f.unrestricted_guest && !f.preemption_timer);
        assert!(!f.usable());
    }

    #[test]
    fn plan_skips_ept_cap_without_ept_or_vpid() {
        let (_, order) = read_all(|n| match n {
            msr::IA32_VMX_PROCBASED_CTLS2 => 0,
            msr::IA32_VMX_EPT_VPID_CAP => panic!("EPT/VPID cap MSR does not exist here"),
            other => full_vmx(other),
        });
        assert_eq!(order.last(), Some(&0x48B));
    }

    #[test]
    fn allowed0_bits_do_not_count_as_offered() {
        // The low half of a control MSR holds the allowed-0 settings; a 1 there
        // means "must be 1", which does not by itself tell about the feature.
        let mut m = read_all(full_vmx).0;
        m.procbased2 = Some(u64::from(PROC2_EPT));
        assert!(!VmxFeatures::decode(&m).ept);
    }

    #[test]
    fn feature_control_states() {
        let mut m = read_all(full_vmx).0;
        m.feature_control = Some(FEATURE_CONTROL_LOCK);
        assert_eq!(
            VmxFeatures::decode(&m).firmware,
            VmxFirmwareState::LockedDisabled
        );
        assert!(!VmxFeatures::decode(&m).usable());
        m.feature_control = Some(FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX);
        assert_eq!(
            VmxFeatures::decode(&m).firmware,
            VmxFirmwareState::LockedEnabled
        );
    }

    /// CPUID leaf 0x8000_000A as QEMU 7.2 TCG `-cpu max` reports it: NPT,
    /// no NRIP save, 16 ASIDs (TESTBEDS.md §2).
    fn qemu_tcg_max() -> CpuidValues {
        CpuidValues {
            vendor_id: *b"AuthenticAMD",
            leaf1_ecx: CPUID1_ECX_HYPERVISOR,
            ext1_ecx: CPUID_EXT1_ECX_SVM,
            svm_eax: 1,
            svm_ebx: 0x10,
            svm_edx: SVM_NP,
        }
    }

    #[test]
    fn svm_decode_tcg() {
        let f = CpuFeatures::decode(&qemu_tcg_max(), None, Some(0));
        assert_eq!(f.vendor, Vendor::Amd);
        assert!(f.vmx.is_none());
        let svm = f.svm.expect("SVM offered");
        assert!(svm.npt && !svm.nrip_save && !svm.decode_assists);
        assert_eq!(svm.asids, 16);
        assert_eq!(svm.revision, 1);
        assert_eq!(svm.disabled_by_firmware, Some(false));
        assert_eq!(f.backend(), Some(Backend::Svm));
    }

    #[test]
    fn svm_needs_npt_and_enabled_firmware() {
        let mut c = qemu_tcg_max();
        c.svm_edx = SVM_NRIPS;
        assert_eq!(CpuFeatures::decode(&c, None, Some(0)).backend(), None);
        let c = qemu_tcg_max();
        assert_eq!(
            CpuFeatures::decode(&c, None, Some(VM_CR_SVMDIS)).backend(),
            None
        );
    }

    #[test]
    fn no_virtualization() {
        let c = CpuidValues {
            vendor_id: *b"GenuineIntel",
            ..CpuidValues::default()
        };
        let f = CpuFeatures::decode(&c, None, None);
        assert_eq!(f.vendor, Vendor::Intel);
        assert!(f.vmx.is_none() && f.svm.is_none() && !f.under_hypervisor);
        assert_eq!(f.backend(), None);
    }

    #[test]
    fn vmx_msrs_ignored_when_cpuid_says_no_vmx() {
        let (m, _) = read_all(full_vmx);
        let c = CpuidValues {
            vendor_id: *b"GenuineIntel",
            ..CpuidValues::default()
        };
        assert!(CpuFeatures::decode(&c, Some(&m), None).vmx.is_none());
        let c = CpuidValues {
            leaf1_ecx: CPUID1_ECX_VMX,
            ..c
        };
        assert_eq!(
            CpuFeatures::decode(&c, Some(&m), None).backend(),
            Some(Backend::Vmx)
        );
    }

    #[test]
    fn vendor_strings() {
        assert_eq!(Vendor::from_id(b"GenuineIntel"), Vendor::Intel);
        assert_eq!(Vendor::from_id(b"AuthenticAMD"), Vendor::Amd);
        assert_eq!(Vendor::from_id(b"HygonGenuine"), Vendor::Other);
    }
}
