//! The boot-protocol loader against Debian's real kernel, when it has been
//! fetched (`cargo xtask linux-assets` unpacks it under
//! `target/linux/root/boot/`). Without it the tests print a note and pass:
//! the synthesized headers in `src/linux_boot/tests.rs` cover every rule;
//! this checks that a real 6.1 bzImage reads as those tests assume.
//!
//! `THERMOCLINE_LINUX_KERNEL=PATH` points at another bzImage.

use hvcore::linux_boot::{LinuxBoot, LinuxBootConfig, LinuxBootError, header};
use std::path::PathBuf;

const MIB: u64 = 1 << 20;

fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The fetched kernel's bytes, or `None` (with a note) when absent.
fn debian_kernel() -> Option<(PathBuf, Vec<u8>)> {
    let path = match std::env::var_os("THERMOCLINE_LINUX_KERNEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let boot = target_dir().join("linux/root/boot");
            let found = std::fs::read_dir(&boot).ok().and_then(|entries| {
                entries.flatten().map(|e| e.path()).find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
            });
            match found {
                Some(p) => p,
                None => {
                    println!(
                        "note: no Debian kernel under {}; skipped (run `cargo xtask linux-assets`)",
                        boot.display()
                    );
                    return None;
                }
            }
        }
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some((path, bytes))
}

#[test]
fn debian_kernel_header_reads_as_expected() {
    let Some((path, image)) = debian_kernel() else {
        return;
    };
    let h = header::parse(&image).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let version = header::kernel_version(&image, &h).unwrap_or("?");
    println!(
        "{}: protocol {}.{:02}, kernel {version}, setup_sects {}, {} protected-mode bytes, \
         init_size {:#x}, pref_address {:#x}, alignment {:#x}, cmdline_size {}, initrd_addr_max {:#x}",
        path.display(),
        h.version >> 8,
        h.version & 0xff,
        h.setup_sects,
        h.protected_mode_bytes,
        h.init_size,
        h.pref_address,
        h.kernel_alignment,
        h.cmdline_size,
        h.initrd_addr_max
    );
    assert!(h.version >= header::MIN_PROTOCOL);
    assert!(h.relocatable, "Debian builds CONFIG_RELOCATABLE");
    assert_ne!(h.xloadflags & header::XLF_KERNEL_64, 0);
    assert!(h.kernel_alignment.is_power_of_two());
    assert!(
        u64::from(h.init_size) > h.protected_mode_bytes,
        "init_size covers decompression"
    );
    assert!(
        (h.protected_mode_offset() as u64 + h.protected_mode_bytes) <= image.len() as u64,
        "syssize within the file"
    );
}

#[test]
fn debian_kernel_plans_in_256_mib_and_is_refused_in_too_little() {
    let Some((_, image)) = debian_kernel() else {
        return;
    };
    let h = header::parse(&image).unwrap();
    let initrd = vec![0x42u8; 4 * MIB as usize];
    let cmdline = b"console=ttyS0 acpi=off nolapic noapic";
    let boot = LinuxBoot::plan(&LinuxBootConfig {
        kernel_image: &image,
        initrd: &initrd,
        cmdline,
        ram_bytes: 256 * MIB,
    })
    .unwrap();
    let layout = boot.layout();
    println!("256 MiB VM: {layout:x?}\nentry: {:x?}", boot.entry());
    assert_eq!(
        layout.kernel.as_u64(),
        h.pref_address,
        "placed where it prefers to run"
    );
    let initrd_at = layout.initrd.unwrap().as_u64();
    assert!(initrd_at >= layout.kernel.as_u64() + layout.kernel_extent_bytes);
    assert!(initrd_at + initrd.len() as u64 <= 256 * MIB);
    assert_eq!(boot.entry().rip, h.pref_address + 0x200);
    let kernel = boot.writes().find(|w| w.gpa == layout.kernel).unwrap();
    assert_eq!(kernel.bytes.len() as u64, h.protected_mode_bytes);

    // Too little RAM for init_size even at the lowest aligned address.
    let small = (u64::from(h.kernel_alignment) + h.extent_bytes()) & !(MIB - 1);
    let err = LinuxBoot::plan(&LinuxBootConfig {
        kernel_image: &image,
        initrd: &[],
        cmdline,
        ram_bytes: small,
    })
    .unwrap_err();
    assert!(
        matches!(err, LinuxBootError::KernelDoesNotFit { .. }),
        "{err}"
    );
    println!("{small:#x} bytes of RAM: {err}");

    // The same file cut short.
    let err = LinuxBoot::plan(&LinuxBootConfig {
        kernel_image: &image[..image.len() / 2],
        initrd: &[],
        cmdline,
        ram_bytes: 256 * MIB,
    })
    .unwrap_err();
    assert!(matches!(err, LinuxBootError::Truncated { .. }), "{err}");
    println!("half the file: {err}");
}
