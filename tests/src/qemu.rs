//! The QEMU machine Thermocline boots on, for `cargo xtask run` and the tests.
//!
//! Accelerator: KVM with `-cpu host` only where it helps: `/dev/kvm` opens,
//! the host CPU has VMX, and `kvm_intel` allows nested virtualization (then
//! Thermocline's VMX backend runs on the users' bed). Otherwise TCG with
//! `-cpu max`, whose software CPU emulates AMD SVM with nested paging (not
//! VMX), and two CPUs. [`detect_accel`] says which and why.
//!
//! Devices: `isa-debug-exit` at port 0xF4 (the exit protocol of
//! `kernel/src/hw.rs`: status 33 = pass, 35 = fail), COM1 on stdio, no
//! display, `--no-reboot` so a triple fault ends QEMU (status 0) instead of
//! rebooting. The disk is opened with `snapshot=on`, so several QEMUs can
//! boot one image at once and none writes it.
//!
//! UEFI uses the system's OVMF (`/usr/share/OVMF`, Debian's `ovmf` package)
//! with a private copy of the variable store; nothing is downloaded.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit status of QEMU when the kernel wrote `ExitCode::Success` (0x10).
pub const EXIT_PASS: i32 = 33;
/// Exit status of QEMU when the kernel wrote `ExitCode::Failure` (0x11).
pub const EXIT_FAIL: i32 = 35;

/// Where Debian's `ovmf` package puts the firmware.
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// How QEMU executes the guest CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through KVM, `-cpu host` (nested VMX).
    Kvm,
    /// QEMU's software CPU, `-cpu max` (SVM + NPT emulated).
    Tcg,
}

/// The chosen accelerator and a sentence saying why.
#[derive(Clone, Debug)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// Why it was chosen, for the user.
    pub reason: String,
}

/// Which firmware boots the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF from [`OVMF_DIR`].
    Uefi,
}

impl Firmware {
    /// Suffix of the image file for this firmware (see `boot::image_path`).
    pub fn image_suffix(self) -> &'static str {
        match self {
            Firmware::Bios => "bios.img",
            Firmware::Uefi => "uefi.img",
        }
    }
}

/// Picks KVM or TCG as the module docs say. `THERMOCLINE_ACCEL=tcg|kvm`
/// overrides the choice.
pub fn detect_accel() -> AccelChoice {
    match std::env::var("THERMOCLINE_ACCEL").as_deref() {
        Ok("tcg") => {
            return AccelChoice {
                accel: Accel::Tcg,
                reason: "THERMOCLINE_ACCEL=tcg".into(),
            };
        }
        Ok("kvm") => {
            return AccelChoice {
                accel: Accel::Kvm,
                reason: "THERMOCLINE_ACCEL=kvm".into(),
            };
        }
        _ => {}
    }
    let tcg = |why: String| AccelChoice {
        accel: Accel::Tcg,
        reason: format!("{why}; TCG's -cpu max emulates AMD SVM with nested paging"),
    };
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return tcg(format!("/dev/kvm is not usable ({e})"));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    if !has_flag("vmx") {
        let svm = if has_flag("svm") {
            " (it has SVM; nested SVM under KVM is not used yet)"
        } else {
            ""
        };
        return tcg(format!("/dev/kvm opens but the host CPU has no VMX{svm}"));
    }
    let nested = std::fs::read_to_string("/sys/module/kvm_intel/parameters/nested")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if nested == "Y" || nested == "1" {
        AccelChoice {
            accel: Accel::Kvm,
            reason: "/dev/kvm works, the host CPU has VMX and kvm_intel nested=Y: \
                     Thermocline gets VMX with EPT"
                .into(),
        }
    } else {
        tcg(format!(
            "host has VMX but kvm_intel nested is '{}' (enable: \
             echo 'options kvm_intel nested=1' > /etc/modprobe.d/kvm-nested.conf, then reload kvm_intel)",
            if nested.is_empty() {
                "unknown"
            } else {
                &nested
            }
        ))
    }
}

/// Paths of the OVMF code image and the variable-store template.
///
/// # Errors
/// When the `ovmf` package is not installed; the message says how to install it.
pub fn ovmf() -> Result<(PathBuf, PathBuf), String> {
    let dir = Path::new(OVMF_DIR);
    for (code, vars) in [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        ("OVMF_CODE.fd", "OVMF_VARS.fd"),
    ] {
        let (code, vars) = (dir.join(code), dir.join(vars));
        if code.is_file() && vars.is_file() {
            return Ok((code, vars));
        }
    }
    Err(format!(
        "no OVMF firmware in {OVMF_DIR}: install it with `apt-get install ovmf`"
    ))
}

/// One QEMU machine booting one image.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The disk image (`<kernel>.bios.img` or `.uefi.img`).
    pub image: PathBuf,
    /// The firmware matching the image.
    pub firmware: Firmware,
    /// KVM or TCG.
    pub accel: Accel,
    /// Number of CPUs.
    pub smp: u32,
    /// Memory size in QEMU's syntax (`256M`, `2G`).
    pub mem: String,
    /// Start halted with a GDB server on TCP port 1234 (`-s -S`).
    pub gdb: bool,
    /// A QMP monitor on this Unix socket (`crate::qmp::Watcher` reads why
    /// QEMU shut down). The machine then starts halted (`-S`) until the
    /// watcher, or GDB with [`Machine::gdb`], lets it run.
    pub qmp: Option<PathBuf>,
    /// Further QEMU arguments.
    pub extra: Vec<String>,
    /// The QEMU program ([`Machine::program`] by default; the runner's own
    /// tests put a script here).
    pub qemu: String,
}

impl Machine {
    /// A machine with the defaults: two CPUs, 256 MiB, no debugger.
    pub fn new(image: impl Into<PathBuf>, firmware: Firmware, accel: Accel) -> Self {
        Self {
            image: image.into(),
            firmware,
            accel,
            smp: 2,
            mem: "256M".into(),
            gdb: false,
            qmp: None,
            extra: Vec::new(),
            qemu: Self::program(),
        }
    }

    /// The QEMU program: `THERMOCLINE_QEMU` or `qemu-system-x86_64`.
    pub fn program() -> String {
        std::env::var("THERMOCLINE_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
    }

    /// The full QEMU command. `scratch` is a private directory for the UEFI
    /// variable store copy.
    ///
    /// # Errors
    /// When UEFI firmware is missing or the variable store cannot be copied.
    pub fn command(&self, scratch: &Path) -> Result<Command, String> {
        let mut cmd = Command::new(&self.qemu);
        match self.accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
        };
        cmd.args(["-smp", &self.smp.to_string(), "-m", &self.mem]);
        if self.firmware == Firmware::Uefi {
            let (code, vars_template) = ovmf()?;
            std::fs::create_dir_all(scratch)
                .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
            let vars = scratch.join("OVMF_VARS.fd");
            std::fs::copy(&vars_template, &vars)
                .map_err(|e| format!("cannot copy {}: {e}", vars_template.display()))?;
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                code.display()
            ));
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        cmd.arg("-drive").arg(format!(
            "format=raw,file={},snapshot=on",
            self.image.display()
        ));
        cmd.args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-serial",
            "stdio",
            "-display",
            "none",
            "-no-reboot",
        ]);
        if self.gdb {
            cmd.args(["-s", "-S"]);
        }
        if let Some(socket) = &self.qmp {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", socket.display()));
            if !self.gdb {
                cmd.arg("-S");
            }
        }
        cmd.args(&self.extra);
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(machine: &Machine) -> Vec<String> {
        let scratch =
            std::env::temp_dir().join(format!("thermocline-qemu-test-{}", std::process::id()));
        let cmd = machine.command(&scratch).expect("command");
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn tcg_machine_has_exit_device_serial_and_snapshot_disk() {
        let a = args(&Machine::new("/x/k.bios.img", Firmware::Bios, Accel::Tcg)).join(" ");
        assert!(a.starts_with("-accel tcg -cpu max -smp 2 -m 256M"), "{a}");
        assert!(
            a.contains("-drive format=raw,file=/x/k.bios.img,snapshot=on"),
            "{a}"
        );
        assert!(
            a.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"),
            "{a}"
        );
        assert!(a.contains("-serial stdio -display none -no-reboot"), "{a}");
        assert!(!a.contains("pflash") && !a.contains("-S"), "{a}");
    }

    #[test]
    fn kvm_gdb_and_extra_arguments() {
        let mut m = Machine::new("k.img", Firmware::Bios, Accel::Kvm);
        m.gdb = true;
        m.smp = 4;
        m.mem = "1G".into();
        m.extra = vec!["-d".into(), "int".into()];
        let a = args(&m).join(" ");
        assert!(a.starts_with("-accel kvm -cpu host -smp 4 -m 1G"), "{a}");
        assert!(a.ends_with("-s -S -d int"), "{a}");
    }

    #[test]
    fn qmp_socket_starts_halted_once() {
        let mut m = Machine::new("k.img", Firmware::Bios, Accel::Tcg);
        m.qmp = Some("/tmp/x/qmp.sock".into());
        let a = args(&m).join(" ");
        assert!(
            a.ends_with("-qmp unix:/tmp/x/qmp.sock,server=on,wait=off -S"),
            "{a}"
        );
        m.gdb = true;
        let a = args(&m).join(" ");
        assert_eq!(a.matches("-S").count(), 1, "{a}");
    }

    #[test]
    fn uefi_uses_system_ovmf_and_a_private_vars_copy() {
        let Ok((code, _)) = ovmf() else {
            // Without the ovmf package the builder must say how to get it.
            let m = Machine::new("k.uefi.img", Firmware::Uefi, Accel::Tcg);
            let err = m.command(Path::new("/nonexistent")).expect_err("no OVMF");
            assert!(err.contains("apt-get install ovmf"), "{err}");
            return;
        };
        let a = args(&Machine::new("k.uefi.img", Firmware::Uefi, Accel::Tcg)).join(" ");
        assert!(
            a.contains(&format!(
                "if=pflash,format=raw,readonly=on,file={}",
                code.display()
            )),
            "{a}"
        );
        assert!(
            a.contains("OVMF_VARS.fd") && a.contains("thermocline-qemu-test-"),
            "{a}"
        );
    }
}
