//! Just enough ACPI to find the CPUs: RSDP -> XSDT/RSDT -> MADT, and the
//! MADT's local APIC and x2APIC entries.
//!
//! Memory is read through [`PhysRead`], so the parser runs on the host over
//! synthetic tables and in the kernel over the mapping of physical memory.
//! Every table's checksum and length are checked; a malformed table is an
//! error, never a panic or an out-of-bounds read.
//!
//! Follows: ACPI Specification 6.5, "Root System Description Pointer
//! (RSDP)", "Extended System Description Table (XSDT)", "Multiple APIC
//! Description Table (MADT)" (Processor Local APIC and Processor Local x2APIC
//! structures).

/// Reads physical memory for the parser.
pub trait PhysRead {
    /// Fills `buf` from `addr`; `false` if the range cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// Why the CPUs could not be listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// A read failed.
    Unreadable(u64),
    /// A signature did not match.
    BadSignature(u64),
    /// A checksum did not sum to zero.
    BadChecksum(u64),
    /// A length field is impossible.
    BadLength(u64),
    /// No MADT ("APIC") in the root table.
    NoMadt,
}

/// One processor the MADT lists as enabled or online-capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MadtCpu {
    /// Its local APIC ID (8-bit IDs widened; x2APIC IDs as they are).
    pub apic_id: u32,
}

const HEADER_BYTES: usize = 36;
/// Largest table this parser accepts (a MADT of thousands of CPUs fits).
const MAX_TABLE_BYTES: u32 = 1 << 20;

fn read_array<const N: usize>(mem: &impl PhysRead, addr: u64) -> Result<[u8; N], AcpiError> {
    let mut buf = [0u8; N];
    if mem.read(addr, &mut buf) {
        Ok(buf)
    } else {
        Err(AcpiError::Unreadable(addr))
    }
}

fn sums_to_zero(mem: &impl PhysRead, addr: u64, len: u64) -> Result<bool, AcpiError> {
    let mut sum = 0u8;
    let mut buf = [0u8; 256];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        if !mem.read(addr + done, &mut buf[..n]) {
            return Err(AcpiError::Unreadable(addr + done));
        }
        sum = buf[..n].iter().fold(sum, |s, b| s.wrapping_add(*b));
        done += n as u64;
    }
    Ok(sum == 0)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Checks a system description table's header and checksum; its length.
fn check_table(mem: &impl PhysRead, addr: u64, signature: &[u8; 4]) -> Result<u32, AcpiError> {
    let header: [u8; HEADER_BYTES] = read_array(mem, addr)?;
    if &header[0..4] != signature {
        return Err(AcpiError::BadSignature(addr));
    }
    let len = u32_at(&header, 4);
    if (len as usize) < HEADER_BYTES || len > MAX_TABLE_BYTES {
        return Err(AcpiError::BadLength(addr));
    }
    if !sums_to_zero(mem, addr, u64::from(len))? {
        return Err(AcpiError::BadChecksum(addr));
    }
    Ok(len)
}

/// The physical address of the MADT, found from the RSDP at `rsdp_addr`.
pub fn find_madt(mem: &impl PhysRead, rsdp_addr: u64) -> Result<u64, AcpiError> {
    let rsdp: [u8; 36] = read_array(mem, rsdp_addr)?;
    if &rsdp[0..8] != b"RSD PTR " {
        return Err(AcpiError::BadSignature(rsdp_addr));
    }
    if !sums_to_zero(mem, rsdp_addr, 20)? {
        return Err(AcpiError::BadChecksum(rsdp_addr));
    }
    let revision = rsdp[15];
    // ACPI 2.0+: prefer the XSDT (64-bit entries) when its checksum holds.
    let (root, entry_bytes, signature) = if revision >= 2 && sums_to_zero(mem, rsdp_addr, 36)? {
        (u64_at(&rsdp, 24), 8u64, b"XSDT")
    } else {
        (u64::from(u32_at(&rsdp, 16)), 4u64, b"RSDT")
    };
    let len = check_table(mem, root, signature)?;
    let entries = (u64::from(len) - HEADER_BYTES as u64) / entry_bytes;
    for i in 0..entries {
        let at = root + HEADER_BYTES as u64 + i * entry_bytes;
        let table = if entry_bytes == 8 {
            u64::from_le_bytes(read_array(mem, at)?)
        } else {
            u64::from(u32::from_le_bytes(read_array(mem, at)?))
        };
        let sig: [u8; 4] = read_array(mem, table)?;
        if &sig == b"APIC" {
            check_table(mem, table, b"APIC")?;
            return Ok(table);
        }
    }
    Err(AcpiError::NoMadt)
}

/// Calls `f` for every enabled (or online-capable) processor in the MADT at
/// `madt_addr`, in table order.
pub fn madt_cpus(
    mem: &impl PhysRead,
    madt_addr: u64,
    mut f: impl FnMut(MadtCpu),
) -> Result<(), AcpiError> {
    let len = u64::from(check_table(mem, madt_addr, b"APIC")?);
    // Header, then the local APIC address (4) and flags (4).
    let mut at = HEADER_BYTES as u64 + 8;
    while at + 2 <= len {
        let [kind, entry_len]: [u8; 2] = read_array(mem, madt_addr + at)?;
        let entry_len = u64::from(entry_len);
        if entry_len < 2 || at + entry_len > len {
            return Err(AcpiError::BadLength(madt_addr + at));
        }
        const ENABLED: u32 = 1;
        const ONLINE_CAPABLE: u32 = 2;
        match (kind, entry_len) {
            // Processor Local APIC: uid (1), APIC ID (1), flags (4).
            (0, 8) => {
                let e: [u8; 8] = read_array(mem, madt_addr + at)?;
                if u32_at(&e, 4) & (ENABLED | ONLINE_CAPABLE) != 0 {
                    f(MadtCpu {
                        apic_id: u32::from(e[3]),
                    });
                }
            }
            // Processor Local x2APIC: reserved (2), x2APIC ID (4), flags (4), uid (4).
            (9, 16) => {
                let e: [u8; 16] = read_array(mem, madt_addr + at)?;
                if u32_at(&e, 8) & (ENABLED | ONLINE_CAPABLE) != 0 {
                    f(MadtCpu {
                        apic_id: u32_at(&e, 4),
                    });
                }
            }
            _ => {}
        }
        at += entry_len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    struct Mem(Vec<u8>);

    impl PhysRead for Mem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Ok(a) = usize::try_from(addr) else {
                return false;
            };
            match self.0.get(a..a + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER_BYTES];
        t[0..4].copy_from_slice(signature);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    /// RSDP v2 at 0x100, XSDT at 0x200, a FACP-like table at 0x300, MADT at 0x400.
    fn machine() -> Mem {
        let mut m = vec![0u8; 0x800];
        let mut rsdp = vec![0u8; 36];
        rsdp[0..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = 2;
        rsdp[16..20].copy_from_slice(&0xdead_u32.to_le_bytes());
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&0x200u64.to_le_bytes());
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
        m[0x100..0x100 + 36].copy_from_slice(&rsdp);
        let mut xsdt_body = Vec::new();
        xsdt_body.extend_from_slice(&0x300u64.to_le_bytes());
        xsdt_body.extend_from_slice(&0x400u64.to_le_bytes());
        let xsdt = table(b"XSDT", &xsdt_body);
        m[0x200..0x200 + xsdt.len()].copy_from_slice(&xsdt);
        let facp = table(b"FACP", &[1, 2, 3]);
        m[0x300..0x300 + facp.len()].copy_from_slice(&facp);
        let mut madt_body = vec![0u8; 8];
        // APIC ID 0 enabled, APIC ID 1 disabled, APIC ID 2 online-capable,
        // an I/O APIC (type 1), x2APIC ID 300 enabled.
        madt_body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        madt_body.extend_from_slice(&[0, 8, 1, 1, 0, 0, 0, 0]);
        madt_body.extend_from_slice(&[0, 8, 2, 2, 2, 0, 0, 0]);
        madt_body.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        let mut x2 = vec![9u8, 16, 0, 0];
        x2.extend_from_slice(&300u32.to_le_bytes());
        x2.extend_from_slice(&1u32.to_le_bytes());
        x2.extend_from_slice(&7u32.to_le_bytes());
        madt_body.extend_from_slice(&x2);
        let madt = table(b"APIC", &madt_body);
        m[0x400..0x400 + madt.len()].copy_from_slice(&madt);
        Mem(m)
    }

    fn cpus(m: &Mem) -> Result<Vec<u32>, AcpiError> {
        let madt = find_madt(m, 0x100)?;
        let mut ids = Vec::new();
        madt_cpus(m, madt, |c| ids.push(c.apic_id))?;
        Ok(ids)
    }

    #[test]
    fn lists_enabled_cpus() {
        assert_eq!(cpus(&machine()), Ok(vec![0, 2, 300]));
    }

    #[test]
    fn rejects_bad_tables() {
        let mut m = machine();
        m.0[0x400 + 40] ^= 1;
        assert_eq!(cpus(&m), Err(AcpiError::BadChecksum(0x400)));
        let mut m = machine();
        m.0[0x100] = b'X';
        assert_eq!(cpus(&m), Err(AcpiError::BadSignature(0x100)));
        // An entry whose length runs past the table.
        let mut m = machine();
        m.0[0x400 + HEADER_BYTES + 8 + 1] = 200;
        fix_checksum(
            &mut m.0[0x400..0x400 + HEADER_BYTES + 8 + 8 * 3 + 12 + 16],
            9,
        );
        assert_eq!(
            cpus(&m),
            Err(AcpiError::BadLength(0x400 + HEADER_BYTES as u64 + 8))
        );
        // Truncated memory.
        let m = Mem(machine().0[..0x420].to_vec());
        assert_eq!(cpus(&m), Err(AcpiError::Unreadable(0x400)));
    }

    #[test]
    fn falls_back_to_rsdt() {
        let mut m = machine();
        // Revision 0: the RSDT pointer (0xdead) is used and cannot be read.
        m.0[0x100 + 15] = 0;
        fix_checksum(&mut m.0[0x100..0x100 + 20], 8);
        assert_eq!(cpus(&m), Err(AcpiError::Unreadable(0xdead)));
    }
}
