//! `cargo xtask linux-assets`: what a Linux guest boots from.
//!
//! - Debian's kernel (`linux-image-cloud-amd64`, resolved to its versioned
//!   package) and `busybox-static`, fetched with `apt-get download` into
//!   `target/linux/debs` and unpacked with `dpkg-deb -x` into
//!   `target/linux/root`: nothing is installed on the system, and nothing is
//!   fetched again while the packages are there (`--refresh` fetches anew).
//!   The versions fetched are recorded in `target/linux/versions.txt`.
//! - The workload (`linux-guest`), linked statically for the initramfs.
//! - The initramfs, `target/linux/initramfs.cpio.gz`: busybox, `/init`
//!   (`init.sh`) and the workload, as a gzip'd newc cpio ([`cpio`]).
//! - With `--boot-qemu` / `--boot-plan`: boots the kernel and initramfs in
//!   QEMU (TCG, no Thermocline), by QEMU's loader or by
//!   `hvcore::linux_boot`'s plan with no firmware, and checks the smoke
//!   test's output ([`boot_check`]).
//!
//! docs/guests.md ("Linux guests") describes the initramfs and the pins.

mod boot_check;
mod cpio;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The metapackage that names the current Debian 12 cloud kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Debian's statically linked busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The target the workload is linked for (glibc, statically: the pinned
/// nightly has no musl standard library).
const WORKLOAD_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The command line for a guest on a PC without ACPI or APICs: the console
/// on the first serial port, interrupts through the 8259 PIC only
/// (TESTBEDS.md section 5).
pub const CMDLINE: &str = "console=ttyS0 acpi=off nolapic noapic";
/// The command line of the `test_linux` scenario: the test init of
/// init.sh (`thermocline_test=thermocline`), a reboot (VM stop) on panic.
pub const TEST_CMDLINE: &str =
    "console=ttyS0 acpi=off nolapic noapic panic=-1 thermocline_test=thermocline";
/// The command line of `cargo xtask run --guest linux`: an interactive
/// shell; a panic stops the VM (reboot through the i8042).
pub const RUN_CMDLINE: &str = "console=ttyS0 acpi=off nolapic noapic panic=-1";

/// The scenario kernels that boot the test init (`TEST_CMDLINE`): on SVM
/// (QEMU) and on VMX (full-system Bochs).
pub const LINUX_TEST_KERNELS: [&str; 2] = ["test_linux", "test_linux_vmx"];

/// Where the bundle (`hvcore::linux_boot::bundle`) of kernel `name`
/// lives: `target/linux/<name>.bundle`.
pub fn bundle_path(target: &Path, name: &str) -> PathBuf {
    target.join("linux").join(format!("{name}.bundle"))
}

/// The ramdisk the image of kernel binary `bin` carries, if any: the
/// Linux bundle written for it (`LINUX_TEST_KERNELS` by the test step
/// `linux-assets`, `thermocline` by `cargo xtask run --guest linux`).
pub fn ramdisk_for(target: &Path, bin: &str) -> Option<PathBuf> {
    let path = bundle_path(target, bin);
    let wanted = LINUX_TEST_KERNELS.contains(&bin)
        || (bin == "thermocline" && std::env::var("THERMOCLINE_GUEST").as_deref() == Ok("linux"));
    (wanted && path.is_file()).then_some(path)
}

/// Writes the bundle of `kernel`, `initrd` and `cmdline` for kernel binary
/// `name` (only when it changed) and returns its path.
///
/// # Errors
/// When a file cannot be read or written, or a part is too large.
pub fn write_bundle(
    target: &Path,
    name: &str,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Result<PathBuf, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let bytes =
        hvcore::linux_boot::bundle::pack(cmdline.as_bytes(), &read(kernel)?, &read(initrd)?)
            .map_err(|e| e.to_string())?;
    let path = bundle_path(target, name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_if_changed(&path, &bytes)?;
    Ok(path)
}

/// The `/init` script.
const INIT_SCRIPT: &str = include_str!("init.sh");

const HELP: &str = "\
cargo xtask linux-assets: fetch and build what a Linux guest boots from

USAGE:
    cargo xtask linux-assets [--refresh] [--boot-qemu] [--boot-plan] [--timeout-s N]

    --refresh       Fetch the Debian packages again (the newest in the apt index)
    --boot-qemu     Boot the kernel and initramfs directly in QEMU (TCG, no
                    Thermocline): /init runs uname -r and the workload on
                    64 MiB and powers off; prints the time to /init and to the end
    --boot-plan     The same check, loaded by hvcore::linux_boot (the loader
                    Thermocline uses) with no firmware: its writes go into
                    RAM as they are, a tiny ROM enters its 64-bit entry state
    --timeout-s N   Limit for each boot check (default 120)
";

/// What `prepare` made.
#[derive(Debug)]
pub struct Assets {
    /// Debian's bzImage.
    pub kernel: PathBuf,
    /// The gzip'd newc initramfs.
    pub initramfs: PathBuf,
    /// The static workload binary (also inside the initramfs).
    pub workload: PathBuf,
    /// `package version` per fetched package.
    pub versions: Vec<(String, String)>,
}

/// `cargo xtask linux-assets`.
pub fn cmd_linux_assets(args: &[String]) -> Result<(), String> {
    let (mut refresh, mut boot, mut plan, mut timeout_s) = (false, false, false, 120u64);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--refresh" => refresh = true,
            "--boot-qemu" => boot = true,
            "--boot-plan" => plan = true,
            "--timeout-s" => {
                let v = it.next().ok_or("--timeout-s needs a number of seconds")?;
                timeout_s = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--timeout-s {v}: not a positive number"))?;
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(());
            }
            other => return Err(format!("linux-assets: unknown option `{other}`\n{HELP}")),
        }
    }
    let assets = prepare(&super::target_dir(), refresh)?;
    let root = super::root();
    let show = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    println!("Linux guest assets:");
    for (package, version) in &assets.versions {
        println!("    package   {package} {version}");
    }
    println!("    kernel    {}", show(&assets.kernel));
    println!("    initramfs {}", show(&assets.initramfs));
    println!("    workload  {}", show(&assets.workload));
    println!("    cmdline   {CMDLINE}");
    println!(
        "Boot directly (no Thermocline):\n    qemu-system-x86_64 -M pc -cpu max -m 256M -nographic -kernel {} -initrd {} -append \"{CMDLINE}\"",
        show(&assets.kernel),
        show(&assets.initramfs)
    );
    if boot {
        boot_check::boot_qemu(&assets, Duration::from_secs(timeout_s))?;
    }
    if plan {
        boot_check::boot_plan(&assets, Duration::from_secs(timeout_s))?;
    }
    Ok(())
}

/// Fetches, unpacks and builds everything under `target/linux`.
///
/// # Errors
/// When apt-get or dpkg-deb is missing or fails (the message has the
/// command to run), or a build fails.
pub fn prepare(target: &Path, refresh: bool) -> Result<Assets, String> {
    let dir = target.join("linux");
    let debs = dir.join("debs");
    let unpacked = dir.join("root");
    if refresh {
        for d in [&debs, &unpacked] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
        }
    }
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let kernel_deb = match find_deb(&debs, is_kernel_deb)? {
        Some(deb) => deb,
        None => {
            let package = resolve_kernel_package()?;
            apt_download(&debs, &package)?;
            find_deb(&debs, is_kernel_deb)?.ok_or(format!(
                "apt-get download {package} left no .deb in {}",
                debs.display()
            ))?
        }
    };
    let busybox_deb = match find_deb(&debs, is_busybox_deb)? {
        Some(deb) => deb,
        None => {
            apt_download(&debs, BUSYBOX_PACKAGE)?;
            find_deb(&debs, is_busybox_deb)?.ok_or(format!(
                "apt-get download {BUSYBOX_PACKAGE} left no .deb in {}",
                debs.display()
            ))?
        }
    };
    let mut versions = Vec::new();
    for deb in [&kernel_deb, &busybox_deb] {
        versions.push(deb_version(deb)?);
    }
    record_versions(
        &dir.join("versions.txt"),
        &versions,
        &[&kernel_deb, &busybox_deb],
    )?;

    let kernel = find_kernel(&unpacked);
    let busybox = unpacked.join("bin/busybox");
    let kernel = match kernel {
        Some(k) if busybox.is_file() => k,
        _ => {
            for deb in [&kernel_deb, &busybox_deb] {
                super::run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))
                    .map_err(|e| {
                        format!(
                            "{e}\n(dpkg-deb comes with Debian's dpkg package: apt-get install dpkg)"
                        )
                    })?;
            }
            find_kernel(&unpacked)
                .ok_or(format!("{} holds no boot/vmlinuz-*", kernel_deb.display()))?
        }
    };

    let workload = build_workload(target)?;
    let initramfs = dir.join("initramfs.cpio.gz");
    write_initramfs(&initramfs, &busybox, &workload)?;
    Ok(Assets {
        kernel,
        initramfs,
        workload,
        versions,
    })
}

fn is_kernel_deb(name: &str) -> bool {
    name.starts_with("linux-image-") && !name.starts_with(&format!("{KERNEL_METAPACKAGE}_"))
}

fn is_busybox_deb(name: &str) -> bool {
    name.starts_with(&format!("{BUSYBOX_PACKAGE}_"))
}

/// The one `.deb` in `dir` whose name passes `matches`.
fn find_deb(dir: &Path, matches: fn(&str) -> bool) -> Result<Option<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name().is_some_and(|n| matches(&n.to_string_lossy()))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!(
            "several candidate packages in {}: {}; remove all but one (or use --refresh)",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn find_kernel(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// The message for an apt command that cannot run or fails.
fn apt_hint(command: &str, why: &str) -> String {
    format!(
        "`{command}`: {why}\n\
         The Linux guest's kernel and busybox are Debian 12 packages, fetched without installing them.\n\
         On Debian, refresh the package index and retry:\n    \
         apt-get update && cargo xtask linux-assets\n\
         or fetch them by hand into target/linux/debs:\n    \
         cd target/linux/debs && apt-get download $(apt-cache depends {KERNEL_METAPACKAGE} | sed -n 's/.*Depends: //p') {BUSYBOX_PACKAGE}"
    )
}

/// The versioned kernel package the metapackage depends on (e.g.
/// `linux-image-6.1.0-57-cloud-amd64`): `apt-get download` fetches exactly
/// the package named, not its dependencies.
fn resolve_kernel_package() -> Result<String, String> {
    let command = format!("apt-cache depends {KERNEL_METAPACKAGE}");
    println!("    $ {command}");
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_METAPACKAGE])
        .output()
        .map_err(|e| apt_hint(&command, &format!("cannot run ({e}); is this Debian?")))?;
    if !out.status.success() {
        return Err(apt_hint(
            &command,
            &format!(
                "failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let dep = l.trim().strip_prefix("Depends:")?.trim();
            dep.starts_with("linux-image-").then(|| dep.to_string())
        })
        .ok_or_else(|| apt_hint(&command, "names no linux-image-* dependency"))
}

/// `apt-get download PACKAGE` into `debs`, through a scratch directory so an
/// interrupted download never looks like a cached package.
fn apt_download(debs: &Path, package: &str) -> Result<(), String> {
    let scratch = debs.join(".partial");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let command = format!("apt-get download {package}");
    println!("    $ (cd {} && {command})", debs.display());
    let status = Command::new("apt-get")
        .args(["download", package])
        .current_dir(&scratch)
        .status()
        .map_err(|e| apt_hint(&command, &format!("cannot run ({e}); is this Debian?")))?;
    if !status.success() {
        return Err(apt_hint(&command, &format!("failed ({status})")));
    }
    let entries = std::fs::read_dir(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    for entry in entries.flatten() {
        let dest = debs.join(entry.file_name());
        std::fs::rename(entry.path(), &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    std::fs::remove_dir(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))
}

/// `(package, version)` from a `.deb`'s control file.
fn deb_version(deb: &Path) -> Result<(String, String), String> {
    let out = Command::new("dpkg-deb")
        .args(["--field"])
        .arg(deb)
        .args(["Package", "Version"])
        .output()
        .map_err(|e| format!("cannot run dpkg-deb ({e}): apt-get install dpkg"))?;
    if !out.status.success() {
        return Err(format!(
            "dpkg-deb --field {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
            .ok_or(format!("{}: no {name} field", deb.display()))
    };
    Ok((field("Package")?, field("Version")?))
}

/// Writes `versions.txt`: what this tree's Linux guest was built from.
fn record_versions(
    path: &Path,
    versions: &[(String, String)],
    debs: &[&PathBuf],
) -> Result<(), String> {
    let mut text = String::from(
        "# Debian packages of the Linux guest, as fetched by `cargo xtask linux-assets`\n\
         # (kept until `--refresh`); see docs/guests.md, \"Linux guests\".\n",
    );
    for ((package, version), deb) in versions.iter().zip(debs) {
        let size = std::fs::metadata(deb).map(|m| m.len()).unwrap_or(0);
        let name = deb.file_name().unwrap_or_default().to_string_lossy();
        text.push_str(&format!("{package} {version} {name} {size} bytes\n"));
    }
    write_if_changed(path, text.as_bytes())
}

/// Builds the workload statically linked and checks that it is.
fn build_workload(target: &Path) -> Result<PathBuf, String> {
    // Only this target's artifacts get the flags (an explicit --target keeps
    // host builds and build scripts out of it), in their own directory.
    super::run_cmd(
        super::cargo()
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=debuginfo",
            )
            .args([
                "build",
                "--quiet",
                "-p",
                "linux-guest",
                "--bin",
                "workload",
                "--release",
                "--target",
                WORKLOAD_TARGET,
            ]),
    )?;
    let path = target.join(WORKLOAD_TARGET).join("release/workload");
    let elf = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if has_interpreter(&elf)? {
        return Err(format!(
            "{} is dynamically linked (has PT_INTERP); the initramfs has no libc \
             (is glibc's libc.a installed? apt-get install libc6-dev)",
            path.display()
        ));
    }
    Ok(path)
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader.
fn has_interpreter(elf: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    let bad = || "workload: not a 64-bit ELF file".to_string();
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Err(bad());
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?))
    };
    let phoff = u64::from_le_bytes(
        elf.get(0x20..0x28)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let (phentsize, phnum) = (
        usize::from(u16_at(0x36).ok_or_else(bad)?),
        usize::from(u16_at(0x38).ok_or_else(bad)?),
    );
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(
            elf.get(at..at + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        if p_type == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The initramfs: busybox (its applets linked by `/init`), `/init` and the
/// workload, plus the directories `/init` mounts on and `/dev/console`
/// (the kernel opens it for init's stdio before devtmpfs is mounted).
fn initramfs_cpio(busybox: &[u8], workload: &[u8]) -> Result<Vec<u8>, String> {
    let mut c = cpio::Cpio::new();
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc",
    ] {
        c.dir(dir, 0o755)?;
    }
    c.char_dev("dev/console", 0o600, 5, 1)?;
    c.file("bin/busybox", 0o755, busybox)?;
    c.symlink("bin/sh", "busybox")?;
    c.file("bin/workload", 0o755, workload)?;
    c.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    Ok(c.finish())
}

fn write_initramfs(path: &Path, busybox: &Path, workload: &Path) -> Result<(), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let archive = initramfs_cpio(&read(busybox)?, &read(workload)?)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&archive)
        .and_then(|()| gz.flush())
        .map_err(|e| format!("gzip: {e}"))?;
    let bytes = gz.finish().map_err(|e| format!("gzip: {e}"))?;
    write_if_changed(path, &bytes)
}

/// Writes `bytes` to `path` unless it already holds them (through a
/// temporary file, so a reader never sees half a file).
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_told_apart() {
        assert!(is_kernel_deb(
            "linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb"
        ));
        assert!(!is_kernel_deb(
            "linux-image-cloud-amd64_6.1.192-3_amd64.deb"
        ));
        assert!(is_busybox_deb(
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        ));
        assert!(!is_busybox_deb("busybox_1%3a1.35.0-4_amd64.deb"));
    }

    #[test]
    fn the_initramfs_holds_init_busybox_and_the_workload() {
        let archive = initramfs_cpio(b"BUSYBOX", b"WORKLOAD").unwrap();
        let text = String::from_utf8_lossy(&archive);
        for name in [
            "init\0",
            "bin/busybox\0",
            "bin/sh\0",
            "bin/workload\0",
            "dev/console\0",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(name), "{name}");
        }
        assert!(text.contains("#!/bin/sh"));
    }

    #[test]
    fn elf_interpreter_is_detected() {
        // A minimal ELF64 header with one program header of the given type.
        let elf = |p_type: u32| {
            let mut e = vec![0u8; 0x40 + 0x38];
            e[..5].copy_from_slice(b"\x7fELF\x02");
            e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
            e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
            e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
            e[0x40..0x44].copy_from_slice(&p_type.to_le_bytes());
            e
        };
        assert_eq!(has_interpreter(&elf(3)), Ok(true));
        assert_eq!(has_interpreter(&elf(1)), Ok(false));
        assert!(has_interpreter(b"#!/bin/sh").is_err());
        let mut short = elf(1);
        short.truncate(0x42);
        assert!(has_interpreter(&short).is_err());
    }
}
