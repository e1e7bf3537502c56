//! `boot --out-dir DIR [--bios] [--uefi] [--ramdisk FILE] KERNEL_ELF...`:
//! writes `DIR/<kernel>.bios.img` and/or `DIR/<kernel>.uefi.img` for each
//! kernel ELF (both firmwares when neither flag is given), with FILE as the
//! loader's ramdisk when given. xtask runs this; it is also usable by hand.

use boot::{Firmware, build_image_with_ramdisk};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: boot --out-dir DIR [--bios] [--uefi] [--ramdisk FILE] KERNEL_ELF...";

fn main() -> ExitCode {
    let mut out_dir = None;
    let mut ramdisk: Option<PathBuf> = None;
    let mut firmwares = Vec::new();
    let mut kernels = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out-dir" => out_dir = args.next().map(PathBuf::from),
            "--bios" => firmwares.push(Firmware::Bios),
            "--ramdisk" => ramdisk = args.next().map(PathBuf::from),
            "--uefi" => firmwares.push(Firmware::Uefi),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if arg.starts_with('-') => {
                eprintln!("boot: unknown option {arg}\n{USAGE}");
                return ExitCode::FAILURE;
            }
            _ => kernels.push(PathBuf::from(arg)),
        }
    }
    let Some(out_dir) = out_dir else {
        eprintln!("boot: --out-dir is required\n{USAGE}");
        return ExitCode::FAILURE;
    };
    if kernels.is_empty() {
        eprintln!("boot: no kernel ELF given\n{USAGE}");
        return ExitCode::FAILURE;
    }
    if firmwares.is_empty() {
        firmwares = vec![Firmware::Bios, Firmware::Uefi];
    }
    for kernel in &kernels {
        for &firmware in &firmwares {
            if let Err(e) = build_image_with_ramdisk(kernel, &out_dir, firmware, ramdisk.as_deref())
            {
                eprintln!("boot: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
