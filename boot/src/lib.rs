//! Disk images for Thermocline kernels.
//!
//! Wraps the `bootloader` crate's image builders: [`BiosBoot`] writes an MBR
//! disk whose stages load the kernel ELF, [`UefiBoot`] a GPT disk whose EFI
//! system partition holds the UEFI loader and the kernel. Both loaders hand the
//! kernel a `bootloader_api::BootInfo` and jump to its `_start`
//! (`kernel/src/lib.rs` fixes the mapping it asks for).
//!
//! The loaders' own serial and framebuffer logging is turned off so that the
//! serial console carries only Thermocline's lines, which the test harness
//! parses (`tests/src/protocol.rs`).
//!
//! Neighbours: `xtask` calls this crate's binary; `tests` boots the images.

use bootloader::{BiosBoot, BootConfig, UefiBoot};
use std::path::{Path, PathBuf};

/// Which firmware an image is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS in QEMU): an MBR disk.
    Bios,
    /// UEFI (OVMF in QEMU): a GPT disk with an EFI system partition.
    Uefi,
}

impl Firmware {
    /// The file-name suffix of images for this firmware.
    pub fn suffix(self) -> &'static str {
        match self {
            Firmware::Bios => "bios.img",
            Firmware::Uefi => "uefi.img",
        }
    }
}

/// The path of the image for `kernel_name` built for `firmware` in `out_dir`.
///
/// The harness and xtask find images by this name: `<kernel>.<bios|uefi>.img`.
pub fn image_path(out_dir: &Path, kernel_name: &str, firmware: Firmware) -> PathBuf {
    out_dir.join(format!("{kernel_name}.{}", firmware.suffix()))
}

/// The boot configuration: no loader output on serial or framebuffer.
fn boot_config() -> BootConfig {
    let mut config = BootConfig::default();
    config.serial_logging = false;
    config.frame_buffer_logging = false;
    config
}

/// Builds the image for one kernel ELF and returns its path.
///
/// # Errors
/// When the ELF cannot be read or the image cannot be written; the message
/// names the kernel and the image.
pub fn build_image(
    kernel_elf: &Path,
    out_dir: &Path,
    firmware: Firmware,
) -> Result<PathBuf, String> {
    build_image_with_ramdisk(kernel_elf, out_dir, firmware, None)
}

/// [`build_image`], with `ramdisk` (when given) as the loader's ramdisk:
/// the loader reads it into memory and hands its address and length to the
/// kernel in `BootInfo` (a Linux guest's bundle travels this way).
///
/// # Errors
/// As [`build_image`].
pub fn build_image_with_ramdisk(
    kernel_elf: &Path,
    out_dir: &Path,
    firmware: Firmware,
    ramdisk: Option<&Path>,
) -> Result<PathBuf, String> {
    let name = kernel_elf
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("kernel path {} has no file name", kernel_elf.display()))?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let image = image_path(out_dir, name, firmware);
    let config = boot_config();
    let result = match firmware {
        Firmware::Bios => {
            let mut b = BiosBoot::new(kernel_elf);
            b.set_boot_config(&config);
            if let Some(r) = ramdisk {
                b.set_ramdisk(r);
            }
            b.create_disk_image(&image)
        }
        Firmware::Uefi => {
            let mut b = UefiBoot::new(kernel_elf);
            b.set_boot_config(&config);
            if let Some(r) = ramdisk {
                b.set_ramdisk(r);
            }
            b.create_disk_image(&image)
        }
    };
    result.map_err(|e| {
        format!(
            "building {} from {}: {e:#}",
            image.display(),
            kernel_elf.display()
        )
    })?;
    Ok(image)
}
