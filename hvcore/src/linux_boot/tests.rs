//! Host tests of the boot-protocol loader over synthesized bzImage headers.
//! The test against Debian's real kernel is `tests/linux_boot_debian.rs`.

use super::*;
use proptest::prelude::*;
use std::string::ToString;
use std::vec;

const MIB: u64 = 1 << 20;
const SETUP_SECTS: usize = 4;
const PM_OFFSET: usize = (SETUP_SECTS + 1) * 512;

/// Knobs of a synthesized bzImage.
#[derive(Clone, Copy)]
struct Synth {
    pm_bytes: usize,
    init_size: u32,
    pref_address: u64,
    kernel_alignment: u32,
    relocatable: bool,
    initrd_addr_max: u32,
    cmdline_size: u32,
}

impl Default for Synth {
    fn default() -> Self {
        Self {
            pm_bytes: 0x4000,
            init_size: 8 << 20,
            pref_address: 16 << 20,
            kernel_alignment: 2 << 20,
            relocatable: true,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
        }
    }
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// A header as Linux 6.1's `arch/x86/boot/header.S` lays it out (fields by
/// boot.rst offsets), then `pm_bytes` of protected-mode "code" whose bytes
/// encode their offset, so a misplaced copy shows.
fn synth(s: Synth) -> Vec<u8> {
    let mut image = vec![0u8; PM_OFFSET + s.pm_bytes];
    image[0x1f1] = SETUP_SECTS as u8;
    put_u32(&mut image, 0x1f4, (s.pm_bytes / 16) as u32);
    put_u16(&mut image, 0x1fe, 0xaa55);
    image[0x200] = 0xeb;
    image[0x201] = 0x6a; // header ends at 0x26c, as 6.1's does
    image[0x202..0x206].copy_from_slice(b"HdrS");
    put_u16(&mut image, 0x206, 0x020f);
    put_u16(&mut image, 0x20e, 0x100); // version string at 0x300
    image[0x300..0x305].copy_from_slice(b"6.1.0");
    image[0x211] = 0x01;
    put_u32(&mut image, 0x214, 0x10_0000);
    put_u32(&mut image, 0x22c, s.initrd_addr_max);
    put_u32(&mut image, 0x230, s.kernel_alignment);
    image[0x234] = u8::from(s.relocatable);
    image[0x235] = 0x15;
    put_u16(&mut image, 0x236, 0x7f);
    put_u32(&mut image, 0x238, s.cmdline_size);
    put_u64(&mut image, 0x258, s.pref_address);
    put_u32(&mut image, 0x260, s.init_size);
    for (i, b) in image[PM_OFFSET..].iter_mut().enumerate() {
        *b = (i as u8) ^ ((i >> 8) as u8);
    }
    image
}

fn plan_with<'a>(
    image: &'a [u8],
    initrd: &'a [u8],
    cmdline: &'a [u8],
    ram_bytes: u64,
) -> Result<LinuxBoot<'a>, LinuxBootError> {
    LinuxBoot::plan(&LinuxBootConfig {
        kernel_image: image,
        initrd,
        cmdline,
        ram_bytes,
    })
}

fn plan_err(image: &[u8], ram_bytes: u64) -> LinuxBootError {
    plan_with(image, &[], b"console=ttyS0", ram_bytes).expect_err("plan must fail")
}

#[test]
fn parses_a_6_1_style_header() {
    let image = synth(Synth::default());
    let h = header::parse(&image).unwrap();
    assert_eq!(h.version, 0x020f);
    assert_eq!(h.setup_sects, 4);
    assert_eq!(h.protected_mode_offset(), PM_OFFSET);
    assert_eq!(h.protected_mode_bytes, 0x4000);
    assert_eq!(h.header_end, 0x26c);
    assert_eq!(h.kernel_alignment, 2 << 20);
    assert!(h.relocatable);
    assert_eq!(h.pref_address, 16 << 20);
    assert_eq!(h.extent_bytes(), 8 << 20);
    assert_eq!(header::kernel_version(&image, &h), Some("6.1.0"));
}

#[test]
fn setup_sects_zero_means_four() {
    let mut image = synth(Synth::default());
    image[0x1f1] = 0;
    assert_eq!(header::parse(&image).unwrap().setup_sects, 4);
}

#[test]
fn truncated_images_are_refused() {
    let image = synth(Synth::default());
    for len in [
        0,
        0x100,
        0x1ff,
        0x204,
        0x260,
        PM_OFFSET - 1,
        image.len() - 1,
    ] {
        let err = plan_err(&image[..len], 256 * MIB);
        assert!(
            matches!(err, LinuxBootError::Truncated { len_bytes, .. } if len_bytes == len as u64),
            "len {len}: {err:?}"
        );
        assert!(
            err.to_string().starts_with("truncated kernel image"),
            "{err}"
        );
    }
    // A file longer than syssize says (Debian's carries a signature) is fine.
    let mut longer = image.clone();
    longer.extend_from_slice(&[0xee; 1472]);
    let boot = plan_with(&longer, &[], b"", 256 * MIB).unwrap();
    let kernel = boot
        .writes()
        .find(|w| w.gpa == boot.layout().kernel)
        .unwrap();
    assert_eq!(kernel.bytes, &image[PM_OFFSET..]);
}

#[test]
fn a_file_that_is_no_bzimage_is_refused() {
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let err = plan_err(&garbage, 256 * MIB);
    assert_eq!(
        err,
        LinuxBootError::NotBzImage("no boot-sector magic 0xAA55 at offset 0x1FE")
    );
    assert!(err.to_string().starts_with("not a bzImage"));

    let mut no_hdrs = synth(Synth::default());
    no_hdrs[0x202] = b'X';
    assert!(
        matches!(plan_err(&no_hdrs, 256 * MIB), LinuxBootError::NotBzImage(m) if m.contains("HdrS"))
    );

    let mut zimage = synth(Synth::default());
    zimage[0x211] = 0;
    assert!(
        matches!(plan_err(&zimage, 256 * MIB), LinuxBootError::NotBzImage(m) if m.contains("LOADED_HIGH"))
    );
}

#[test]
fn old_protocols_and_32_bit_kernels_are_refused() {
    let mut old = synth(Synth::default());
    put_u16(&mut old, 0x206, 0x020b);
    let err = plan_err(&old, 256 * MIB);
    assert_eq!(err, LinuxBootError::ProtocolTooOld { version: 0x020b });
    assert!(err.to_string().contains("2.11 is too old"), "{err}");
    put_u16(&mut old, 0x206, 0x020c);
    assert!(
        header::parse(&old).is_ok(),
        "2.12 is the first usable protocol"
    );

    let mut k32 = synth(Synth::default());
    put_u16(&mut k32, 0x236, 0x7e);
    let err = plan_err(&k32, 256 * MIB);
    assert_eq!(err, LinuxBootError::No64BitEntry);
    assert!(err.to_string().contains("64-bit entry"));
}

#[test]
fn corrupt_header_fields_are_refused() {
    type Corrupt = fn(&mut Vec<u8>);
    let cases: [(&str, Corrupt); 6] = [
        ("short jump", |i| i[0x200] = 0x90),
        ("ends before init_size", |i| i[0x201] = 0x50),
        ("longer than the room", |i| i[0x201] = 0x8f),
        ("syssize is 0", |i| put_u32(i, 0x1f4, 0)),
        ("before its 64-bit entry", |i| put_u32(i, 0x1f4, 0x20)),
        ("not a power of two", |i| put_u32(i, 0x230, 0x30_0000)),
    ];
    for (needle, corrupt) in cases {
        let mut image = synth(Synth::default());
        corrupt(&mut image);
        let err = plan_err(&image, 256 * MIB);
        assert!(
            matches!(err, LinuxBootError::BadHeader(m) if m.contains(needle)),
            "{needle}: {err:?}"
        );
        assert!(err.to_string().starts_with("corrupt bzImage setup header"));
    }
}

#[test]
fn ram_size_is_checked() {
    let image = synth(Synth::default());
    assert_eq!(plan_err(&image, 0), LinuxBootError::ZeroRam);
    let err = plan_err(&image, 256 * MIB + 100);
    assert_eq!(
        err,
        LinuxBootError::UnalignedRam {
            ram_bytes: 256 * MIB + 100
        }
    );
    assert!(err.to_string().contains("multiple of 4 KiB"));
}

#[test]
fn kernel_goes_to_pref_address_else_lowest_aligned_else_error() {
    let image = synth(Synth::default());
    let at = |ram| plan_with(&image, &[], b"", ram).map(|b| b.layout().kernel.as_u64());
    assert_eq!(at(256 * MIB), Ok(16 * MIB), "pref_address when it fits");
    assert_eq!(at(24 * MIB), Ok(16 * MIB), "exactly fits at pref_address");
    assert_eq!(
        at(24 * MIB - 4096),
        Ok(2 * MIB),
        "else 1 MiB aligned up to 2 MiB"
    );
    let err = at(10 * MIB - 4096).unwrap_err();
    assert_eq!(
        err,
        LinuxBootError::KernelDoesNotFit {
            load_gpa: 2 * MIB,
            extent_bytes: 8 * MIB,
            ram_end: 10 * MIB - 4096
        }
    );
    assert!(err.to_string().starts_with("kernel does not fit"));
    assert!(matches!(
        at(0x8_0000),
        Err(LinuxBootError::KernelDoesNotFit { .. })
    ));

    let fixed = synth(Synth {
        relocatable: false,
        pref_address: 32 * MIB,
        ..Synth::default()
    });
    let at = |ram| plan_with(&fixed, &[], b"", ram).map(|b| b.layout().kernel.as_u64());
    assert_eq!(
        at(64 * MIB),
        Ok(32 * MIB),
        "a fixed kernel runs at pref_address"
    );
    assert!(
        matches!(at(36 * MIB), Err(LinuxBootError::KernelDoesNotFit { load_gpa, .. }) if load_gpa == 32 * MIB)
    );
}

#[test]
fn initrd_goes_high_and_respects_initrd_addr_max() {
    let image = synth(Synth::default());
    let initrd = vec![0x5a; 3 * MIB as usize + 10];
    let boot = plan_with(&image, &initrd, b"", 256 * MIB).unwrap();
    let at = boot.layout().initrd.unwrap().as_u64();
    assert_eq!(at % 4096, 0);
    assert!(at + initrd.len() as u64 <= 256 * MIB);
    assert!(
        256 * MIB - (at + initrd.len() as u64) < 4096,
        "as high as RAM allows"
    );

    // A low initrd_addr_max caps the placement, inclusive of its last byte.
    let capped = synth(Synth {
        initrd_addr_max: 64 * MIB as u32 - 1,
        ..Synth::default()
    });
    let boot = plan_with(&capped, &initrd, b"", 256 * MIB).unwrap();
    let at = boot.layout().initrd.unwrap().as_u64();
    assert!(at + initrd.len() as u64 <= 64 * MIB);
    assert!(64 * MIB - (at + initrd.len() as u64) < 4096);

    // Room is [kernel end = 24 MiB, 32 MiB): 8 MiB fits, 8 MiB + 1 does not.
    let tight = synth(Synth {
        initrd_addr_max: 32 * MIB as u32 - 1,
        ..Synth::default()
    });
    let eight = vec![1u8; 8 * MIB as usize];
    let boot = plan_with(&tight, &eight, b"", 256 * MIB).unwrap();
    assert_eq!(boot.layout().initrd, Some(GuestPhysAddr::new(24 * MIB)));
    let nine = vec![1u8; 8 * MIB as usize + 1];
    let err = plan_with(&tight, &nine, b"", 256 * MIB).unwrap_err();
    assert_eq!(
        err,
        LinuxBootError::InitrdDoesNotFit {
            initrd_bytes: 8 * MIB + 1,
            lowest_gpa: 24 * MIB,
            limit_gpa: 32 * MIB,
            initrd_addr_limit: 32 * MIB
        }
    );
    let text = err.to_string();
    assert!(text.starts_with("initrd does not fit"), "{text}");
    assert!(text.contains("initrd_addr_max"), "{text}");

    // Larger than the RAM left.
    let huge = vec![0u8; 250 * MIB as usize];
    assert!(matches!(
        plan_with(&image, &huge, b"", 256 * MIB),
        Err(LinuxBootError::InitrdDoesNotFit { limit_gpa, .. }) if limit_gpa == 256 * MIB
    ));
}

#[test]
fn command_line_length_and_nul_are_checked() {
    let image = synth(Synth::default());
    let longest = vec![b'a'; 2047];
    let boot = plan_with(&image, &[], &longest, 256 * MIB).unwrap();
    let cmd = boot
        .writes()
        .find(|w| w.gpa.as_u64() == CMDLINE_GPA)
        .unwrap();
    assert_eq!(cmd.bytes.len(), 2048);
    assert_eq!(cmd.bytes[2047], 0);
    let err = plan_with(&image, &[], &[b'a'; 2048], 256 * MIB).unwrap_err();
    assert_eq!(
        err,
        LinuxBootError::CmdlineTooLong {
            len_bytes: 2048,
            max_bytes: 2047
        }
    );
    assert!(err.to_string().starts_with("kernel command line too long"));
    let err = plan_with(&image, &[], b"console=ttyS0\0init=/bin/sh", 256 * MIB).unwrap_err();
    assert_eq!(err, LinuxBootError::CmdlineHasNul);
    // A kernel that claims a huge cmdline_size still gets at most what fits
    // below the legacy hole.
    let greedy = synth(Synth {
        cmdline_size: u32::MAX,
        ..Synth::default()
    });
    let long = vec![b'b'; (LEGACY_HOLE_START - CMDLINE_GPA) as usize];
    assert!(matches!(
        plan_with(&greedy, &[], &long, 256 * MIB),
        Err(LinuxBootError::CmdlineTooLong { max_bytes, .. }) if max_bytes == LEGACY_HOLE_START - CMDLINE_GPA - 1
    ));
}

#[test]
fn e820_covers_ram_exactly_with_the_holes_reserved() {
    for (ram, expect) in [
        (
            256 * MIB,
            vec![
                (0, 0xa_0000, 1),
                (0xa_0000, 0x6_0000, 2),
                (MIB, 255 * MIB, 1),
            ],
        ),
        (
            5 << 30,
            vec![
                (0, 0xa_0000, 1),
                (0xa_0000, 0x6_0000, 2),
                (MIB, APIC_HOLE_START - MIB, 1),
                (APIC_HOLE_START, (1 << 32) - APIC_HOLE_START, 2),
                (1 << 32, 1 << 30, 1),
            ],
        ),
    ] {
        let got: Vec<(u64, u64, u32)> = e820_map(ram)
            .map(|e| (e.addr.as_u64(), e.size_bytes, e.kind as u32))
            .collect();
        assert_eq!(got, expect, "ram {ram:#x}");
    }
    assert_eq!(e820_map(0x8_0000).count(), 1);
}

/// Guest RAM as a test sees it: the writes, zero where nothing was written.
struct Ram<'a>(Vec<GuestWrite<'a>>);

impl<'a> Ram<'a> {
    fn apply(boot: &'a LinuxBoot<'a>) -> Self {
        Ram(boot.writes().collect())
    }
    fn u8(&self, gpa: u64) -> u8 {
        self.0
            .iter()
            .find_map(|w| {
                let off = gpa.checked_sub(w.gpa.as_u64())?;
                w.bytes.get(usize::try_from(off).ok()?).copied()
            })
            .unwrap_or(0)
    }
    fn u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(core::array::from_fn(|i| self.u8(gpa + i as u64)))
    }
    fn u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(core::array::from_fn(|i| self.u8(gpa + i as u64)))
    }
    /// Translates `va` through 4-level paging from `cr3`, as the CPU would.
    fn translate(&self, cr3: u64, va: u64) -> Option<u64> {
        let pml4e = self.u64(cr3 + ((va >> 39) & 511) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = self.u64((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & PRESENT == 0 || pdpte & PAGE_SIZE_BIT != 0 {
            return None;
        }
        let pde = self.u64((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & (PRESENT | WRITABLE | PAGE_SIZE_BIT) != PRESENT | WRITABLE | PAGE_SIZE_BIT {
            return None;
        }
        Some((pde & !0x1f_ffff & ((1 << 52) - 1)) + (va & 0x1f_ffff))
    }
}

/// Everything the 64-bit protocol asks of the loader, checked on the bytes
/// written, as the kernel would find them.
fn check_boot(image: &[u8], initrd: &[u8], cmdline: &[u8], ram_bytes: u64, boot: &LinuxBoot<'_>) {
    let layout = *boot.layout();
    let entry = *boot.entry();
    let ram = Ram::apply(boot);

    // Writes: ascending, disjoint, in e820 RAM, below the identity map's end.
    let mut last_end = 0;
    for w in boot.writes() {
        let start = w.gpa.as_u64();
        let end = start + w.bytes.len() as u64;
        assert!(
            start >= last_end,
            "writes overlap or are unordered at {start:#x}"
        );
        last_end = end;
        assert!(end <= IDENTITY_MAP_END);
        assert!(
            e820_map(ram_bytes).any(|e| e.kind == E820Kind::Ram
                && e.addr.as_u64() <= start
                && end <= e.addr.as_u64() + e.size_bytes),
            "write [{start:#x}, {end:#x}) outside e820 RAM"
        );
    }
    // The kernel's init_size range is free of everything else.
    let k = layout.kernel.as_u64();
    let k_end = k + layout.kernel_extent_bytes;
    for w in boot.writes().filter(|w| w.gpa != layout.kernel) {
        let (s, e) = (w.gpa.as_u64(), w.gpa.as_u64() + w.bytes.len() as u64);
        assert!(
            e <= k || s >= k_end,
            "write at {s:#x} inside the kernel's init_size"
        );
    }
    assert!(k_end <= ram_bytes.min(APIC_HOLE_START));
    let h = boot.header();
    if h.relocatable {
        assert_eq!(k % u64::from(h.kernel_alignment), 0);
    }

    // Registers.
    assert_eq!(entry.rip, k + 0x200);
    assert_eq!(entry.rsi, layout.zero_page.as_u64());
    assert_eq!(entry.rflags & (1 << 9), 0, "interrupts off");
    assert_eq!(entry.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
    assert_ne!(entry.cr4 & CR4_PAE, 0);
    assert_eq!(entry.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    assert_eq!(entry.code_selector, 0x10);
    assert_eq!(entry.data_selector, 0x18);
    let code = ram.u64(entry.gdt_base + u64::from(entry.code_selector));
    let data = ram.u64(entry.gdt_base + u64::from(entry.data_selector));
    assert!(u64::from(entry.gdt_limit) >= u64::from(entry.data_selector) + 7);
    assert_eq!((code >> 44) & 0x9, 0x9, "code: present, code/data type");
    assert_eq!((code >> 43) & 1, 1, "code: executable");
    assert_eq!((code >> 53) & 3, 1, "code: L=1, D=0");
    assert_eq!((data >> 43) & 1, 0, "data: not executable");
    assert_eq!((data >> 41) & 1, 1, "data: writable");
    assert_eq!(
        data & 0xffff | ((data >> 32) & 0xf_0000),
        0xf_ffff,
        "data: 4 GiB limit"
    );

    // Identity map of everything the kernel reads at entry.
    let mut must_map = vec![entry.rip, entry.rsi, entry.rsi + 4095, entry.rsp - 8];
    must_map.extend([
        layout.cmdline.as_u64(),
        layout.cmdline.as_u64() + cmdline.len() as u64,
    ]);
    must_map.extend((k..k_end).step_by(PAGE_2M as usize).chain([k_end - 1]));
    if let Some(i) = layout.initrd {
        must_map.extend([i.as_u64(), i.as_u64() + initrd.len() as u64 - 1]);
    }
    for va in must_map {
        assert_eq!(
            ram.translate(entry.cr3, va),
            Some(va),
            "va {va:#x} not identity-mapped"
        );
    }

    // boot_params as the kernel reads it.
    let bp = layout.zero_page.as_u64();
    for off in 0x1f1..h.header_end as u64 {
        let skip = [0x1fa, 0x1fb, 0x210, 0x211, 0x214, 0x215, 0x216, 0x217].contains(&off)
            || (0x218..0x220).contains(&off)
            || (0x228..0x22c).contains(&off);
        if !skip {
            assert_eq!(
                ram.u8(bp + off),
                image[off as usize],
                "header byte {off:#x}"
            );
        }
    }
    assert_eq!(ram.u8(bp + 0x1ef), 0, "sentinel");
    assert_eq!(ram.u8(bp + 0x210), 0xff, "type_of_loader");
    assert_eq!(ram.u8(bp + 0x211), 0x01, "loadflags: LOADED_HIGH only");
    assert_eq!(ram.u32(bp + 0x214), k as u32, "code32_start");
    let initrd_at = layout.initrd.map_or(0, |g| g.as_u64());
    assert_eq!(
        u64::from(ram.u32(bp + 0x218)) | u64::from(ram.u32(bp + 0xc0)) << 32,
        initrd_at
    );
    assert_eq!(
        u64::from(ram.u32(bp + 0x21c)) | u64::from(ram.u32(bp + 0xc4)) << 32,
        initrd.len() as u64
    );
    let cmd_ptr = u64::from(ram.u32(bp + 0x228)) | u64::from(ram.u32(bp + 0xc8)) << 32;
    let read_cmd: Vec<u8> = (0..)
        .map(|i| ram.u8(cmd_ptr + i))
        .take_while(|&b| b != 0)
        .collect();
    assert_eq!(read_cmd, cmdline);
    let n = usize::from(ram.u8(bp + 0x1e8));
    let table: Vec<E820Entry> = (0..n as u64)
        .map(|i| {
            let at = bp + 0x2d0 + i * 20;
            E820Entry {
                addr: GuestPhysAddr::new(ram.u64(at)),
                size_bytes: ram.u64(at + 8),
                kind: if ram.u32(at + 16) == 1 {
                    E820Kind::Ram
                } else {
                    E820Kind::Reserved
                },
            }
        })
        .collect();
    assert_eq!(table, e820_map(ram_bytes).collect::<Vec<_>>());

    // Payloads, byte for byte.
    let pm = &image[h.protected_mode_offset()..][..h.protected_mode_bytes as usize];
    assert!(
        (0..pm.len())
            .step_by(997)
            .all(|i| ram.u8(k + i as u64) == pm[i])
    );
    if let Some(i) = layout.initrd {
        assert!(
            (0..initrd.len())
                .step_by(997)
                .all(|j| ram.u8(i.as_u64() + j as u64) == initrd[j])
        );
    }
}

#[test]
fn the_written_memory_is_what_the_64_bit_protocol_asks_for() {
    let image = synth(Synth::default());
    let initrd: Vec<u8> = (0..(5 * MIB as u32 + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    let cmdline = b"console=ttyS0 acpi=off nolapic noapic";
    for ram in [64 * MIB, 256 * MIB, 4 << 30, 6 << 30] {
        let boot = plan_with(&image, &initrd, cmdline, ram).unwrap();
        check_boot(&image, &initrd, cmdline, ram, &boot);
    }
    let boot = plan_with(&image, &[], b"", 64 * MIB).unwrap();
    assert_eq!(boot.layout().initrd, None);
    assert_eq!(boot.writes().count(), 5, "no initrd write");
    check_boot(&image, &[], b"", 64 * MIB, &boot);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any RAM size, initrd size and command line: either a boot that meets
    /// the protocol or the error that names why, never a panic.
    #[test]
    fn any_inputs_give_a_valid_boot_or_the_right_error(
        ram_pages in 1u64..(6u64 << 18),
        initrd_len in 0usize..(48 << 20),
        cmd_len in 0usize..2100,
        init_mib in 1u32..64,
        relocatable in any::<bool>(),
        initrd_max_mib in 16u32..4096,
    ) {
        let s = Synth {
            init_size: init_mib << 20,
            relocatable,
            initrd_addr_max: (initrd_max_mib << 20) - 1,
            ..Synth::default()
        };
        let image = synth(s);
        let initrd = vec![0xa5u8; initrd_len];
        let cmdline = vec![b'x'; cmd_len];
        let ram = ram_pages * 4096;
        match plan_with(&image, &initrd, &cmdline, ram) {
            Ok(boot) => {
                prop_assert!(cmd_len <= 2047);
                check_boot(&image, &initrd, &cmdline, ram, &boot);
                if let Some(i) = boot.layout().initrd {
                    prop_assert!(i.as_u64() + initrd_len as u64 <= u64::from(s.initrd_addr_max) + 1);
                }
            }
            Err(LinuxBootError::CmdlineTooLong { .. }) => prop_assert!(cmd_len > 2047),
            Err(LinuxBootError::KernelDoesNotFit { load_gpa, extent_bytes, ram_end }) => {
                prop_assert!(cmd_len <= 2047);
                prop_assert!(load_gpa + extent_bytes > ram_end);
            }
            Err(LinuxBootError::InitrdDoesNotFit { initrd_bytes, lowest_gpa, limit_gpa, .. }) => {
                prop_assert!(cmd_len <= 2047);
                prop_assert!(lowest_gpa + initrd_bytes > limit_gpa);
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

#[test]
fn the_tsc_frequency_is_appended_once() {
    assert_eq!(
        &*with_tsc_early_khz(b"console=ttyS0", 2_899_795),
        b"console=ttyS0 tsc_early_khz=2899795 tsc=reliable"
    );
    assert_eq!(
        &*with_tsc_early_khz(b"", 1000),
        b"tsc_early_khz=1000 tsc=reliable"
    );
    // The user's own values win; an unknown frequency adds nothing.
    assert_eq!(
        &*with_tsc_early_khz(b"quiet tsc_early_khz=5 x", 1000),
        b"quiet tsc_early_khz=5 x tsc=reliable"
    );
    assert_eq!(
        &*with_tsc_early_khz(b"tsc=unstable", 1000),
        b"tsc=unstable tsc_early_khz=1000"
    );
    assert_eq!(&*with_tsc_early_khz(b"quiet", 0), b"quiet");
    // A line no kernel takes is left for the plan to refuse.
    let long = vec![b'x'; 5000];
    assert_eq!(with_tsc_early_khz(&long, 1000).len(), 5000);
}
