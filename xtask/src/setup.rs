//! Self-setup: make sure the machine has what the build and the emulator need.
//!
//! The toolchain itself must already be installed for `cargo xtask` to run at
//! all (rustup reads `rust-toolchain.toml`; with `RUSTUP_AUTO_INSTALL=0` it
//! refuses to install on demand, hence `rustup toolchain install` in the
//! README and `.ci/run`). Here we check the parts a hand-installed toolchain
//! may lack: `rust-src` (the `bootloader` build script compiles its stages
//! with `-Zbuild-std`), `llvm-tools`, rustfmt, clippy and the
//! `x86_64-unknown-none` target, and add them through rustup.
//!
//! QEMU and OVMF come from Debian packages, as do the Bochs bed's
//! (`crate::bochs::setup`): installed with apt-get when we run as root on
//! Debian, otherwise we stop and print the command.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The channel pinned in `rust-toolchain.toml`.
fn pinned_channel() -> Result<String, String> {
    let path = super::root().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_string())
        })
        .ok_or_else(|| format!("{}: no `channel = \"...\"`", path.display()))
}

fn sysroot() -> Result<PathBuf, String> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(super::root())
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`rustc --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Adds missing components and targets of the pinned toolchain.
pub fn toolchain() -> Result<(), String> {
    let channel = pinned_channel()?;
    let sysroot = sysroot()?;
    let rustlib = sysroot.join("lib/rustlib");
    let host_bin = |name: &str| -> bool {
        std::fs::read_dir(&rustlib).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().join("bin").join(name).is_file())
        })
    };
    let checks: [(&str, bool); 4] = [
        ("rust-src", rustlib.join("src/rust/library").is_dir()),
        ("rustfmt", sysroot.join("bin/rustfmt").is_file()),
        ("clippy", sysroot.join("bin/cargo-clippy").is_file()),
        ("llvm-tools", host_bin("llvm-objcopy")),
    ];
    let missing: Vec<&str> = checks
        .iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        println!(
            "xtask: toolchain {channel} lacks {}: adding",
            missing.join(", ")
        );
        rustup(
            &[
                &["component", "add", "--toolchain", &channel],
                missing.as_slice(),
            ]
            .concat(),
        )?;
    }
    if !rustlib.join(super::KERNEL_TARGET).is_dir() {
        println!(
            "xtask: toolchain {channel} lacks target {}: adding",
            super::KERNEL_TARGET
        );
        rustup(&[
            "target",
            "add",
            "--toolchain",
            &channel,
            super::KERNEL_TARGET,
        ])?;
    }
    Ok(())
}

fn rustup(args: &[&str]) -> Result<(), String> {
    let status = Command::new("rustup").args(args).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`rustup {}` failed ({s})", args.join(" "))),
        Err(e) => Err(format!(
            "rustup is needed to add toolchain parts ({e}); install it from rustup.rs, then run `rustup {}`",
            args.join(" ")
        )),
    }
}

/// The Debian packages the emulator needs.
const APT_PACKAGES: [&str; 2] = ["qemu-system-x86", "ovmf"];

/// Makes sure QEMU (and OVMF when `uefi`) are installed.
pub fn qemu(uefi: bool) -> Result<(), String> {
    let qemu_ok = Command::new(thermocline_tests::qemu::Machine::program())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ovmf_ok = !uefi || thermocline_tests::qemu::ovmf().is_ok();
    if qemu_ok && ovmf_ok {
        return Ok(());
    }
    let what = if ovmf_ok { "QEMU" } else { "QEMU or OVMF" };
    apt_install(what, &APT_PACKAGES)
}

/// Installs Debian `packages` with apt-get when we run as root on Debian;
/// otherwise an error that names `what` is missing and prints the command.
pub fn apt_install(what: &str, packages: &[&str]) -> Result<(), String> {
    let command = format!("apt-get install -y {}", packages.join(" "));
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let debian = Path::new("/etc/debian_version").is_file();
    if !(is_root && debian) {
        return Err(format!("{what} missing; install with:\n    sudo {command}"));
    }
    println!("xtask: installing {} with apt-get", packages.join(" "));
    let apt = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`apt-get {}` failed ({status})", args.join(" ")))
        }
    };
    apt(&["update"])?;
    apt(&[&["install", "-y", "--no-install-recommends"], packages].concat())
}

/// The path of an LLVM tool of the pinned toolchain's `llvm-tools` component.
///
/// # Errors
/// When the component is missing (`toolchain` adds it) or rustc fails.
pub fn llvm_tool(name: &str) -> Result<PathBuf, String> {
    let rustlib = sysroot()?.join("lib/rustlib");
    let entries = std::fs::read_dir(&rustlib).map_err(|e| format!("{}: {e}", rustlib.display()))?;
    entries
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{name} not found under {}: rustup component add llvm-tools",
                rustlib.display()
            )
        })
}
