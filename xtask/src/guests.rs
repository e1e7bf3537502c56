//! Builds the test guests (crate `guests/`) as flat binaries in
//! `target/guests/NAME.bin`, where `kernel/build.rs` picks them up for
//! `include_bytes!`. A guest ELF is linked at its load address
//! (`guests/link.ld`), so the flat binary is its loadable bytes as they lie
//! in memory, which `llvm-objcopy -O binary` (rustup's `llvm-tools`) writes.
//!
//! Files are rewritten only when their bytes change, so an unchanged guest
//! does not make cargo rebuild the kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guests, in the order `cargo xtask help` lists them.
pub const NAMES: [&str; 5] = ["hello", "pattern", "checksum", "evil", "smp"];
/// What `cargo xtask run` boots when no `--guest` is given: the guest that
/// shows the product (a hot set, a cold set, phase changes, aged live).
pub const DEFAULT: &str = "pattern";

/// Checks a `--guest` value.
pub fn check_name(name: &str) -> Result<(), String> {
    if NAMES.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "--guest {name}: unknown guest; choose one of {}",
            NAMES.join(", ")
        ))
    }
}

fn llvm_objcopy() -> Result<PathBuf, String> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let rustlib = sysroot.join("lib/rustlib");
    let entries = std::fs::read_dir(&rustlib).map_err(|e| format!("{}: {e}", rustlib.display()))?;
    entries
        .flatten()
        .map(|e| e.path().join("bin/llvm-objcopy"))
        .find(|p| p.is_file())
        .ok_or_else(|| "llvm-objcopy not found: `rustup component add llvm-tools`".to_string())
}

/// Builds every guest (release profile) with `cargo` (a command set up to
/// run the workspace's cargo in its root) and writes the flat binaries
/// under `target` (cargo's target directory); returns their directory.
pub fn build(
    target: &Path,
    mut cargo: Command,
    run_cmd: impl Fn(&mut Command) -> Result<(), String>,
) -> Result<PathBuf, String> {
    run_cmd(cargo.args([
        "build",
        "-p",
        "guests",
        "--release",
        "--target",
        "x86_64-unknown-none",
        "--bins",
    ]))?;
    let elf_dir = target.join("x86_64-unknown-none/release");
    let out_dir = target.join("guests");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let objcopy = llvm_objcopy()?;
    for name in NAMES {
        let elf = elf_dir.join(name);
        let fresh = out_dir.join(format!("{name}.bin.new"));
        let status = Command::new(&objcopy)
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&fresh)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", objcopy.display()))?;
        if !status.success() {
            return Err(format!("llvm-objcopy {} failed ({status})", elf.display()));
        }
        let bytes = std::fs::read(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))?;
        if bytes.is_empty() {
            return Err(format!("guest {name}: the flat binary is empty"));
        }
        let dest = out_dir.join(format!("{name}.bin"));
        if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
            std::fs::rename(&fresh, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        } else {
            let _ = std::fs::remove_file(&fresh);
        }
    }
    Ok(out_dir)
}
