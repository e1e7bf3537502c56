//! Length decoding of the few instructions the hypervisor intercepts and
//! must step over itself, for CPUs without NRIP save (QEMU's SVM model, old
//! AMD parts): CPUID, RDMSR, WRMSR, HLT, VMMCALL/VMCALL, IN/OUT, and the
//! VMX/SVM instructions named in reports; and INS/OUTS with their operand
//! size, address size, REP and segment prefixes, which `string_io`
//! emulates (the exit information does not give the address size on every
//! CPU).
//!
//! Follows the Intel SDM vol. 2, "Instruction Format" (legacy prefixes, REX,
//! ModR/M, SIB, displacement) and the opcode tables for the listed
//! instructions; AMD APM vol. 3 for the SVM instructions.
//!
//! The decoder is deliberately small: it recognises only these instructions
//! and returns `None` for anything else, so a handler never skips bytes it
//! did not understand.

use crate::exit::VirtInsn;

/// An instruction the decoder recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// CPUID (0F A2).
    Cpuid,
    /// RDMSR (0F 32).
    Rdmsr,
    /// WRMSR (0F 30).
    Wrmsr,
    /// HLT (F4).
    Hlt,
    /// VMMCALL (0F 01 D9).
    Vmmcall,
    /// VMCALL (0F 01 C1).
    Vmcall,
    /// IN/OUT with an immediate or DX port (E4-E7, EC-EF).
    PortIo,
    /// MOV to a control register from a general-purpose register
    /// (0F 22 /r): `gpr` in the SDM's numbering (0 = RAX ... 15 = R15).
    MovToCr {
        /// Control register number.
        cr: u8,
        /// Source register number.
        gpr: u8,
    },
    /// A VMX or SVM instruction.
    Virt(VirtInsn),
    /// INS/OUTS (6C-6F), with or without REP.
    StringIo(StringIoInsn),
}

/// The operands of an INS or OUTS instruction, from its opcode and
/// prefixes (SDM vol. 2, "INS/INSB/INSW/INSD" and "OUTS/OUTSB/OUTSW/OUTSD").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIoInsn {
    /// OUTS (memory to port); false: INS (port to memory).
    pub out: bool,
    /// Element size: 1, 2 (66 prefix) or 4 bytes (REX.W changes nothing).
    pub size_bytes: u8,
    /// REP (F3; F2 acts the same on these instructions).
    pub rep: bool,
    /// 67 prefix: ESI/EDI/ECX instead of RSI/RDI/RCX.
    pub addr32: bool,
    /// An FS or GS segment override on OUTS (its base is not zero in
    /// general; the other overrides mean base 0 in 64-bit mode).
    pub fs_gs: bool,
}

/// A decoded instruction and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Which instruction.
    pub insn: Insn,
    /// Total length, prefixes included.
    pub len: usize,
}

/// Architectural limit on instruction length.
pub const MAX_INSN_LEN: usize = 15;

/// Length of a ModR/M operand in 64-bit mode (the ModR/M byte itself, SIB
/// and displacement), given the bytes from the ModR/M byte on.
fn modrm_len(bytes: &[u8]) -> Option<usize> {
    let modrm = *bytes.first()?;
    let md = modrm >> 6;
    let rm = modrm & 7;
    if md == 3 {
        return Some(1);
    }
    let mut len = 1;
    if rm == 4 {
        let sib = *bytes.get(1)?;
        len += 1;
        if md == 0 && sib & 7 == 5 {
            len += 4;
        }
    } else if md == 0 && rm == 5 {
        // RIP-relative disp32.
        len += 4;
    }
    len += match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    Some(len)
}

/// Decodes the instruction at the start of `bytes` (up to 15 bytes fetched
/// at the guest's RIP). Returns `None` when the bytes are not one of the
/// recognised instructions or are cut short.
pub fn decode(bytes: &[u8]) -> Option<Decoded> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut i = 0;
    let mut opsize = false;
    let mut rep = false;
    let mut repne = false;
    let mut addr32 = false;
    let mut fs_gs = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 => opsize = true,
            0xf3 => rep = true,
            0xf2 => repne = true,
            0x67 => addr32 = true,
            0x64 | 0x65 => fs_gs = true,
            0xf0 | 0x2e | 0x36 | 0x3e | 0x26 => {}
            _ => break,
        }
        i += 1;
    }
    // REX directly before the opcode.
    let mut rex = 0u8;
    if let Some(&b @ 0x40..=0x4f) = bytes.get(i) {
        rex = b;
        i += 1;
    }
    let op = *bytes.get(i)?;
    let done = |insn, len: usize| (len <= bytes.len()).then_some(Decoded { insn, len });
    match op {
        0xf4 => done(Insn::Hlt, i + 1),
        0xe4..=0xe7 => done(Insn::PortIo, i + 2),
        0xec..=0xef => done(Insn::PortIo, i + 1),
        0x6c..=0x6f => done(
            Insn::StringIo(StringIoInsn {
                out: op >= 0x6e,
                size_bytes: match (op & 1, opsize) {
                    (0, _) => 1,
                    (_, true) => 2,
                    _ => 4,
                },
                rep: rep || repne,
                addr32,
                fs_gs,
            }),
            i + 1,
        ),
        0x0f => {
            let op2 = *bytes.get(i + 1)?;
            match op2 {
                0xa2 => done(Insn::Cpuid, i + 2),
                0x32 => done(Insn::Rdmsr, i + 2),
                0x30 => done(Insn::Wrmsr, i + 2),
                0x22 => {
                    // MOV CRn, r64: always a register operand (mod is
                    // ignored); REX.R extends the CR, REX.B the register.
                    let modrm = *bytes.get(i + 2)?;
                    let cr = ((modrm >> 3) & 7) | ((rex & 0x4) << 1);
                    let gpr = (modrm & 7) | ((rex & 0x1) << 3);
                    done(Insn::MovToCr { cr, gpr }, i + 3)
                }
                0x01 => {
                    let modrm = *bytes.get(i + 2)?;
                    let insn = match modrm {
                        0xd9 => Insn::Vmmcall,
                        0xc1 => Insn::Vmcall,
                        0xc2 => Insn::Virt(VirtInsn::Vmlaunch),
                        0xc3 => Insn::Virt(VirtInsn::Vmresume),
                        0xc4 => Insn::Virt(VirtInsn::Vmxoff),
                        0xd4 => Insn::Virt(VirtInsn::Vmfunc),
                        0xd8 => Insn::Virt(VirtInsn::Vmrun),
                        0xda => Insn::Virt(VirtInsn::Vmload),
                        0xdb => Insn::Virt(VirtInsn::Vmsave),
                        0xdc => Insn::Virt(VirtInsn::Stgi),
                        0xdd => Insn::Virt(VirtInsn::Clgi),
                        0xde => Insn::Virt(VirtInsn::Skinit),
                        0xdf => Insn::Virt(VirtInsn::Invlpga),
                        _ => return None,
                    };
                    done(insn, i + 3)
                }
                0xc7 => {
                    let modrm = *bytes.get(i + 2)?;
                    // Register forms are RDRAND/RDSEED/RDPID, not VMX.
                    if modrm >> 6 == 3 {
                        return None;
                    }
                    let insn = match ((modrm >> 3) & 7, rep, opsize) {
                        (6, true, _) => VirtInsn::Vmxon,
                        (6, false, true) => VirtInsn::Vmclear,
                        (6, false, false) => VirtInsn::Vmptrld,
                        (7, false, false) => VirtInsn::Vmptrst,
                        _ => return None,
                    };
                    done(Insn::Virt(insn), i + 2 + modrm_len(&bytes[i + 2..])?)
                }
                0x78 | 0x79 if !opsize && !rep => {
                    let insn = if op2 == 0x78 {
                        VirtInsn::Vmread
                    } else {
                        VirtInsn::Vmwrite
                    };
                    done(Insn::Virt(insn), i + 2 + modrm_len(bytes.get(i + 2..)?)?)
                }
                0x38 if opsize => {
                    let insn = match *bytes.get(i + 2)? {
                        0x80 => VirtInsn::Invept,
                        0x81 => VirtInsn::Invvpid,
                        _ => return None,
                    };
                    done(Insn::Virt(insn), i + 3 + modrm_len(bytes.get(i + 3..)?)?)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(bytes: &[u8]) -> Option<(Insn, usize)> {
        decode(bytes).map(|x| (x.insn, x.len))
    }

    #[test]
    fn plain_intercepted_instructions() {
        assert_eq!(d(&[0x0f, 0xa2, 0x90]), Some((Insn::Cpuid, 2)));
        assert_eq!(d(&[0x0f, 0x32]), Some((Insn::Rdmsr, 2)));
        assert_eq!(d(&[0x0f, 0x30]), Some((Insn::Wrmsr, 2)));
        assert_eq!(d(&[0xf4]), Some((Insn::Hlt, 1)));
        assert_eq!(d(&[0x0f, 0x01, 0xd9]), Some((Insn::Vmmcall, 3)));
        assert_eq!(d(&[0x0f, 0x01, 0xc1]), Some((Insn::Vmcall, 3)));
        assert_eq!(d(&[0xe6, 0x80]), Some((Insn::PortIo, 2)));
        assert_eq!(d(&[0x66, 0xed]), Some((Insn::PortIo, 2)));
    }

    #[test]
    fn prefixes_count_toward_length() {
        assert_eq!(d(&[0x66, 0x0f, 0xa2]), Some((Insn::Cpuid, 3)));
        assert_eq!(d(&[0x2e, 0x3e, 0x48, 0x0f, 0x32]), Some((Insn::Rdmsr, 5)));
        // REX must be last: a REX followed by a prefix is not this decoder's.
        assert_eq!(d(&[0x48, 0x66, 0x0f, 0xa2]), None);
        // More than 15 bytes of prefixes never decodes.
        let mut long = [0x66u8; 16];
        long[14] = 0x0f;
        long[15] = 0xa2;
        assert_eq!(d(&long), None);
    }

    #[test]
    fn truncated_or_unknown_bytes_are_refused() {
        assert_eq!(d(&[]), None);
        assert_eq!(d(&[0x0f]), None);
        assert_eq!(d(&[0x0f, 0x01]), None);
        assert_eq!(d(&[0xe4]), None);
        assert_eq!(d(&[0x90]), None);
        assert_eq!(d(&[0x0f, 0x01, 0xd0]), None);
        assert_eq!(
            d(&[0xf3, 0x0f, 0xc7, 0x30]),
            Some((Insn::Virt(VirtInsn::Vmxon), 4))
        );
        assert_eq!(d(&[0xf3, 0x0f, 0xc7, 0x80, 0, 0, 0]), None);
    }

    #[test]
    fn mov_to_control_registers() {
        // mov cr4, rax; mov cr4, r9; mov cr0, rbx; mov cr8, rax (REX.R).
        assert_eq!(
            d(&[0x0f, 0x22, 0xe0]),
            Some((Insn::MovToCr { cr: 4, gpr: 0 }, 3))
        );
        assert_eq!(
            d(&[0x41, 0x0f, 0x22, 0xe1]),
            Some((Insn::MovToCr { cr: 4, gpr: 9 }, 4))
        );
        assert_eq!(
            d(&[0x0f, 0x22, 0xc3]),
            Some((Insn::MovToCr { cr: 0, gpr: 3 }, 3))
        );
        assert_eq!(
            d(&[0x44, 0x0f, 0x22, 0xc0]),
            Some((Insn::MovToCr { cr: 8, gpr: 0 }, 4))
        );
        assert_eq!(d(&[0x0f, 0x22]), None);
    }

    #[test]
    fn svm_and_vmx_instructions() {
        for (b, v) in [
            (0xd8, VirtInsn::Vmrun),
            (0xda, VirtInsn::Vmload),
            (0xdb, VirtInsn::Vmsave),
            (0xdc, VirtInsn::Stgi),
            (0xdd, VirtInsn::Clgi),
            (0xde, VirtInsn::Skinit),
            (0xdf, VirtInsn::Invlpga),
            (0xc2, VirtInsn::Vmlaunch),
            (0xc3, VirtInsn::Vmresume),
            (0xc4, VirtInsn::Vmxoff),
        ] {
            assert_eq!(d(&[0x0f, 0x01, b]), Some((Insn::Virt(v), 3)));
        }
        // VMXON [rax]; VMXON [rsp+disp8] (SIB); VMPTRLD [rip+disp32].
        assert_eq!(
            d(&[0xf3, 0x0f, 0xc7, 0x30]),
            Some((Insn::Virt(VirtInsn::Vmxon), 4))
        );
        assert_eq!(
            d(&[0xf3, 0x0f, 0xc7, 0x74, 0x24, 0x08]),
            Some((Insn::Virt(VirtInsn::Vmxon), 6))
        );
        assert_eq!(
            d(&[0x0f, 0xc7, 0x35, 1, 2, 3, 4]),
            Some((Insn::Virt(VirtInsn::Vmptrld), 7))
        );
        assert_eq!(
            d(&[0x66, 0x0f, 0xc7, 0x30]),
            Some((Insn::Virt(VirtInsn::Vmclear), 4))
        );
        // SIB with no base: disp32.
        assert_eq!(
            d(&[0x0f, 0xc7, 0x3c, 0x25, 0, 0x10, 0, 0]),
            Some((Insn::Virt(VirtInsn::Vmptrst), 8))
        );
        // RDRAND eax is 0F C7 /6 with a register operand: not VMX.
        assert_eq!(d(&[0x0f, 0xc7, 0xf0]), None);
        assert_eq!(
            d(&[0x0f, 0x78, 0xc1]),
            Some((Insn::Virt(VirtInsn::Vmread), 3))
        );
        assert_eq!(
            d(&[0x0f, 0x79, 0x81, 0, 0, 0, 0]),
            Some((Insn::Virt(VirtInsn::Vmwrite), 7))
        );
        assert_eq!(
            d(&[0x66, 0x0f, 0x38, 0x80, 0x08]),
            Some((Insn::Virt(VirtInsn::Invept), 5))
        );
        assert_eq!(
            d(&[0x66, 0x0f, 0x38, 0x81, 0x48, 0x10]),
            Some((Insn::Virt(VirtInsn::Invvpid), 6))
        );
    }

    #[test]
    fn string_io_operands() {
        let s = |out, size_bytes, rep, addr32, fs_gs| {
            Insn::StringIo(StringIoInsn {
                out,
                size_bytes,
                rep,
                addr32,
                fs_gs,
            })
        };
        assert_eq!(d(&[0x6e]), Some((s(true, 1, false, false, false), 1)));
        assert_eq!(d(&[0xf3, 0x6e]), Some((s(true, 1, true, false, false), 2)));
        assert_eq!(
            d(&[0xf3, 0x66, 0x6f]),
            Some((s(true, 2, true, false, false), 3))
        );
        // REX.W does not make OUTSD 8 bytes wide.
        assert_eq!(
            d(&[0xf3, 0x48, 0x6f]),
            Some((s(true, 4, true, false, false), 3))
        );
        assert_eq!(d(&[0x6c]), Some((s(false, 1, false, false, false), 1)));
        assert_eq!(
            d(&[0xf2, 0x67, 0x6d]),
            Some((s(false, 4, true, true, false), 3))
        );
        assert_eq!(
            d(&[0x65, 0xf3, 0x6e]),
            Some((s(true, 1, true, false, true), 3))
        );
        // Other segment overrides mean base 0 in 64-bit mode.
        assert_eq!(d(&[0x2e, 0x6e]), Some((s(true, 1, false, false, false), 2)));
    }
}
