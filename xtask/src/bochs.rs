//! The full-system Bochs bed in `cargo xtask`: VMX with EPT on two emulated
//! CPUs, for machines without VMX (`thermocline_tests::bochs` drives it).
//!
//! - [`setup`]: the bed's Debian packages (Bochs 2.7 with its X plugin,
//!   BIOS and VGA BIOS, Xvfb), installed with apt-get as root on Debian as
//!   the QEMU step's are, else the command to run is printed.
//! - [`step`]: the `bochs` test step, `tests/tests/bochs.rs`.
//! - [`cmd_run`]: `cargo xtask run --bochs`, the hypervisor on this bed with
//!   its serial console followed on the terminal.

use crate::{RunOptions, guests, parse_run, run_cmd, setup};
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};
use thermocline_tests::bochs::{self as bed, BochsMachine, Tail};
use thermocline_tests::qemu::Firmware;

/// Installs what [`bed::missing_packages`] reports, or says how to.
pub fn setup() -> Result<(), String> {
    let missing = bed::missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    setup::apt_install("the Bochs bed", &missing)
}

/// The `bochs` step: every VMX scenario on full-system Bochs, two CPUs.
pub fn step(images: &std::path::Path) -> Result<(), String> {
    setup()?;
    let start = Instant::now();
    // Two tests at a time: Bochs emulates every CPU on one host thread, so
    // two runs fill two cores.
    let result = run_cmd(crate::cargo().env("THERMOCLINE_IMAGES", images).args([
        "test",
        "-p",
        "thermocline-tests",
        "--test",
        "bochs",
        "--",
        "--include-ignored",
        "--nocapture",
        "--test-threads",
        "2",
        // Instruction-bound and about 20 times slower than in QEMU: too
        // long for the suite (tests/tests/bochs.rs says how to run it).
        "--skip",
        "vmx_overcommit_twice_the_host",
    ]));
    println!(
        "    bochs step: {:.0} s wall time",
        start.elapsed().as_secs_f64()
    );
    result
}

/// Whether `cargo xtask run` was asked for this bed; the other options
/// without `--bochs`.
pub fn wants(args: &[String]) -> Option<Vec<String>> {
    let before_extra = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let at = args[..before_extra].iter().position(|a| a == "--bochs")?;
    let mut rest = args.to_vec();
    rest.remove(at);
    Some(rest)
}

/// `--mem` in QEMU's syntax (`256M`, `2G`, a bare number is MiB) as MiB.
fn mem_mib(mem: &str) -> Result<u32, String> {
    let (digits, scale) = match mem.strip_suffix(['G', 'g']) {
        Some(d) => (d, 1024),
        None => (mem.strip_suffix(['M', 'm']).unwrap_or(mem), 1),
    };
    let mib = digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("--mem {mem}: expected a size such as 256M or 2G"))?;
    // Bochs' `megs` limit, and the smallest the hypervisor boots in.
    if !(64..=2048).contains(&mib) {
        return Err(format!("--mem {mem}: Bochs takes 64M to 2G"));
    }
    Ok(mib)
}

/// `cargo xtask run --bochs [OPTIONS]`.
pub fn cmd_run(args: &[String]) -> Result<(), String> {
    let o: RunOptions = parse_run(args)?;
    if o.firmware == Firmware::Uefi {
        return Err("--bochs boots the BIOS image only (the Bochs BIOS; no OVMF here)".into());
    }
    if o.gdb {
        return Err(
            "--gdb needs QEMU; Bochs has its own debugger, not a GDB stub in Debian's build".into(),
        );
    }
    if !o.qemu_args.is_empty() {
        return Err("arguments after `--` are QEMU's; with --bochs there is no QEMU".into());
    }
    let mut machine = BochsMachine::new("");
    if let Some(smp) = o.smp {
        machine.cpus = smp;
    }
    machine.mem_mib = mem_mib(&o.mem)?;
    let guest = o.guest.as_deref().unwrap_or(guests::DEFAULT);
    guests::check_name(guest)?;
    // SAFETY: xtask is single-threaded; the variables reach the kernel build
    // (read with `option_env!`), as in `cmd_run`.
    unsafe { std::env::set_var("THERMOCLINE_GUEST", guest) };
    for (var, v) in &o.aging {
        // SAFETY: as above.
        unsafe { std::env::set_var(var, v) };
    }
    setup::toolchain()?;
    setup()?;
    let image_dir = crate::build_images(o.profile, Some("thermocline"), &[Firmware::Bios])?;
    machine.image = image_dir.join("thermocline.bios.img");
    let dir = crate::target_dir().join("run-bochs");
    let (mut cmd, files) = machine.prepare(&dir)?;
    println!(
        "xtask: full-system Bochs, {} CPUs ({}: VMX with EPT), {} MiB, {} instructions per emulated second",
        machine.cpus,
        bed::CPU_MODEL,
        machine.mem_mib,
        machine.ips
    );
    println!("    $ {}", crate::show(&cmd));
    println!(
        "xtask: serial console follows (from {}); quit with Ctrl-C\n",
        files.com1.display()
    );
    // In this terminal's process group, so that Ctrl-C reaches Bochs (its
    // debugger then reads end-of-file and quits), Xvfb and xvfb-run too.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", machine.launcher))?;
    let mut console = Tail::new(&files.com1);
    let mut log = Tail::new(&files.log);
    let mut out = std::io::stdout();
    loop {
        for line in console.lines() {
            // The terminal may be gone (a closed pipe): then stop.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                bed::kill_tree(child.id());
                return Ok(());
            }
        }
        if let Some(panic) = log
            .lines()
            .into_iter()
            .find(|l| l.contains(bed::BOCHS_PANIC))
        {
            bed::kill_tree(child.id());
            let _ = child.wait();
            return Err(format!(
                "Bochs stopped: {panic} (log: {})",
                files.log.display()
            ));
        }
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for Bochs: {e}"))?
        {
            for line in console.lines() {
                println!("{line}");
            }
            return if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "Bochs ended with {status} (log: {})",
                    files.log.display()
                ))
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bochs_flag_is_found_before_the_extra_arguments_only() {
        assert_eq!(
            wants(&strings(&["--smp", "2", "--bochs", "--guest", "hello"])),
            Some(strings(&["--smp", "2", "--guest", "hello"]))
        );
        assert_eq!(wants(&strings(&["--smp", "2"])), None);
        assert_eq!(wants(&strings(&["--", "--bochs"])), None);
    }

    #[test]
    fn mem_sizes_in_qemu_syntax() {
        assert_eq!(mem_mib("256M"), Ok(256));
        assert_eq!(mem_mib("1G"), Ok(1024));
        assert_eq!(mem_mib("512"), Ok(512));
        assert!(mem_mib("32M").is_err());
        assert!(mem_mib("lots").is_err());
    }
}
