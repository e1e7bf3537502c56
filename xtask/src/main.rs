//! `cargo xtask`: the developer and user entry point of Thermocline.
//!
//! - `run`: build the hypervisor, make a disk image, boot it in QEMU with the
//!   serial console on this terminal (accelerator chosen by
//!   `thermocline_tests::qemu::detect_accel`, which says why), or with
//!   `--bochs` on full-system Bochs with VMX ([`bochs`]).
//! - `test`: the whole suite as a list of named steps ([`steps`]), ending with
//!   the in-QEMU scenarios so the output ends with cargo test's summary.
//! - `bench`: the host benchmarks (`cargo bench -p hvcore`) and, with
//!   `--guest`, the in-guest ones under QEMU, as one table ([`bench`]).
//! - `images`: build the kernel ELFs and their BIOS/UEFI images only.
//!
//! Before building, [`setup`] checks the pinned toolchain's components and
//! targets (adding what is missing through rustup) and QEMU/OVMF (installing
//! them with apt-get when root on Debian, else printing the command).
//!
//! Everything builds in the default `target/`; the loom tests use
//! `target/loom` (different RUSTFLAGS would otherwise rebuild everything).

mod bench;
mod bochs;
mod cli;
mod guests;
mod layers;
mod linux;
mod report;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;
use thermocline_tests::qemu::{Accel, Firmware, Machine, detect_accel};

const HELP: &str = "\
cargo xtask: build, boot and test Thermocline

USAGE:
    cargo xtask <COMMAND> [OPTIONS]

COMMANDS:
    run       Build the hypervisor and boot it in QEMU (or Bochs, --bochs);
              the serial console is this terminal (quit QEMU with Ctrl-A X);
              a triple fault or the failure exit is reported as an error
    test      Run the whole test suite: rustfmt, the kernel's layers,
              clippy (host and kernel), host tests, loom models, the Linux
              guest's assets, VMX scenarios on full-system Bochs, in-QEMU
              scenarios (Linux under Thermocline among them)
    bench     Run the benchmarks and print one table of their figures
              (docs/benchmarks.md): host (cargo bench -p hvcore), and with
              --guest the bench kernel in QEMU
    images    Build the kernel ELFs and their BIOS and UEFI disk images
    report LOG
              Summarise the aging/reclaim report (TCR lines) of a console log
    heatmap LOG -o FILE.png [--vm NAME]
              Draw guest-physical memory against time, coloured by age
    linux-assets [--refresh] [--boot-qemu] [--boot-plan]
              Fetch Debian's kernel and busybox, build the workload and the
              initramfs for Linux guests (target/linux); --boot-qemu and
              --boot-plan boot them in plain QEMU as a check (see
              `cargo xtask linux-assets --help`)
    help      Print this help

RUN OPTIONS:
    --bios | --uefi   Firmware: SeaBIOS (default) or OVMF from /usr/share/OVMF
    --bochs           Boot on full-system Bochs instead of QEMU: Intel VMX
                      with EPT on emulated CPUs (for hosts without VMX);
                      BIOS only, no --gdb; quit with Ctrl-C
    --smp N           Number of CPUs (default 2)
    --mem SIZE        Memory of the emulated machine (Thermocline's host RAM)
                      in QEMU syntax, e.g. 512M, 2G (default 256M); at least
                      23M with BIOS, 48M with UEFI (less does not boot)
    --gdb             Start halted with a GDB server on localhost:1234
    --release         Build the kernel with the release profile
    --guest NAME      Guest to run: linux (Debian's kernel with a busybox
                      shell as the console; Thermocline's log goes to
                      target/run/com2.log), pattern (default: runs until you
                      quit, aged live), hello, checksum, evil (its scenarios
                      1-6 and 8 in a row, one VM each), smp (4 vCPUs); the run
                      ends once every VM has stopped
    --kernel PATH --initrd PATH --cmdline \"...\"
                      With --guest linux: your own bzImage, initrd and
                      kernel command line
    --age-interval-ms N
                      Time between aging passes, whole milliseconds from 1 to
                      3600000 (default 1000); the report
                      (docs/report-format.md) is printed live
    --reclaim-target SIZE|adaptive|off
                      Reclaim each VM down to SIZE resident: bytes with an
                      optional K, M or G suffix, a multiple of 4 KiB (e.g.
                      16M); or what the refault feedback allows; default off
                      (host memory pressure reclaims even then)
    -- ARGS...        Extra arguments passed to QEMU unchanged

BENCH OPTIONS:
    --guest           Also boot the bench kernel (release) in QEMU, 3 CPUs:
                      guest throughput with aging+reclaim on against off,
                      reclaim and fault-in cost, compression ratio
    --guest-only      Only the bench kernel
    --quick           Smaller host benches (AGING_BENCH_QUICK,
                      RECLAIM_BENCH_QUICK)
    -- ARGS...        Passed to cargo bench (e.g. -- --bench reclaim)

TEST OPTIONS:
    --list            List the steps and exit
    --step NAME       Run only this step (repeatable)
    --release         Build kernel images with the release profile
    --keep-going      Run every step even after one fails; list failures at the end

ENVIRONMENT:
    THERMOCLINE_ACCEL=tcg|kvm   Force the accelerator
    THERMOCLINE_QEMU=PATH       QEMU binary (default qemu-system-x86_64)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    };
    // `cargo xtask run --help` (and test, bench): that command's options.
    let section = match command.as_str() {
        "run" => Some("RUN OPTIONS:"),
        "test" => Some("TEST OPTIONS:"),
        "bench" => Some("BENCH OPTIONS:"),
        _ => None,
    };
    let help_first = rest.first().is_some_and(|a| cli::is_help(a));
    let result = match command.as_str() {
        _ if help_first && section.is_some() => Err(HELP_REQUESTED.to_string()),
        "run" => cmd_run(rest),
        "test" => cmd_test(rest),
        "bench" => bench::cmd_bench(rest),
        "images" => cmd_images(rest),
        "report" => report::cmd_report(rest),
        "heatmap" => report::cmd_heatmap(rest),
        "linux-assets" => linux::cmd_linux_assets(rest),
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`; see `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e == HELP_REQUESTED && section.is_some() => {
            print!(
                "{}",
                cli::command_help(HELP, command, section.unwrap_or_default())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace
/// root, as cargo reads it when run from there) or `target/`. Every path
/// xtask builds into or reads back from is under it, so two checkouts, or
/// two engineers with their own target directories, never share outputs.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// The cargo that runs us (the pinned toolchain's), or `cargo`.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command, echoing it; an error names the command and its status.
fn run_cmd(cmd: &mut Command) -> Result<(), String> {
    let shown = show(cmd);
    println!("    $ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// A command line as a user would type it.
fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
        .collect();
    let program = Path::new(cmd.get_program());
    // The toolchain's full cargo path is noise; show what a user would type.
    if program.file_name().is_some_and(|n| n == "cargo") {
        parts.push("cargo".into());
    } else {
        parts.push(program.to_string_lossy().into_owned());
    }
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Kernel build profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// The kernel target triple.
const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// The kernel binaries: `thermocline` plus one per `kernel/src/bin/*.rs`
/// (or `kernel/src/bin/<name>/main.rs`).
fn kernel_bins() -> Result<Vec<String>, String> {
    let dir = root().join("kernel/src/bin");
    let mut bins = vec!["thermocline".to_string()];
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut scenario_bins = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = if path.extension().is_some_and(|e| e == "rs") {
            path.file_stem()
        } else if path.join("main.rs").is_file() {
            path.file_name()
        } else {
            None
        };
        if let Some(name) = name.and_then(|n| n.to_str()) {
            scenario_bins.push(name.to_string());
        }
    }
    scenario_bins.sort();
    bins.extend(scenario_bins);
    Ok(bins)
}

/// Builds kernel ELFs (all binaries, or only `only`) and their images for
/// `firmwares`; returns the image directory.
fn build_images(
    profile: Profile,
    only: Option<&str>,
    firmwares: &[Firmware],
) -> Result<PathBuf, String> {
    // The kernel embeds the guests (kernel/build.rs): build them first.
    let guests_dir = guests::build(&target_dir(), cargo(), run_cmd)?;
    let mut build = cargo();
    build.env("THERMOCLINE_GUESTS_DIR", &guests_dir).args([
        "build",
        "-p",
        "kernel",
        "--target",
        KERNEL_TARGET,
    ]);
    match only {
        Some(bin) => build.args(["--bin", bin]),
        None => build.arg("--bins"),
    };
    if profile == Profile::Release {
        build.arg("--release");
    }
    run_cmd(&mut build)?;

    let elf_dir = target_dir().join(KERNEL_TARGET).join(profile.dir());
    let image_dir = target_dir().join("images").join(profile.dir());
    let bins = match only {
        Some(bin) => vec![bin.to_string()],
        None => kernel_bins()?,
    };
    // The loaders read the whole ELF through firmware disk calls, slow under
    // TCG: a debug kernel with DWARF (6 MB) took 5.5 s to reach its first
    // line on BIOS, stripped (0.8 MB) 1.6 s. Images get a copy without debug
    // info; GDB uses the original ELF (same addresses, see README).
    let stripped_dir = image_dir.join("elf");
    std::fs::create_dir_all(&stripped_dir)
        .map_err(|e| format!("cannot create {}: {e}", stripped_dir.display()))?;
    let objcopy = setup::llvm_tool("llvm-objcopy")?;
    println!(
        "    $ llvm-objcopy --strip-debug <{} ELFs> {}/",
        bins.len(),
        stripped_dir.display()
    );
    for bin in &bins {
        let status = Command::new(&objcopy)
            .arg("--strip-debug")
            .arg(elf_dir.join(bin))
            .arg(stripped_dir.join(bin))
            .status()
            .map_err(|e| format!("cannot run {}: {e}", objcopy.display()))?;
        if !status.success() {
            return Err(format!(
                "llvm-objcopy --strip-debug {bin} failed ({status})"
            ));
        }
    }
    // Kernels that run a Linux guest get its bundle as the loader's
    // ramdisk (docs/guests.md, "Linux guests"), one `boot` run each.
    let (with_ramdisk, plain): (Vec<_>, Vec<_>) = bins
        .iter()
        .map(|bin| (bin, linux::ramdisk_for(&target_dir(), bin)))
        .partition(|(_, r)| r.is_some());
    let boot_run = |bins: &[&String], ramdisk: Option<&Path>| {
        let mut boot = cargo();
        boot.args(["run", "--quiet", "-p", "boot", "--", "--out-dir"])
            .arg(&image_dir);
        for firmware in firmwares {
            boot.arg(match firmware {
                Firmware::Bios => "--bios",
                Firmware::Uefi => "--uefi",
            });
        }
        if let Some(r) = ramdisk {
            boot.arg("--ramdisk").arg(r);
        }
        for bin in bins {
            boot.arg(stripped_dir.join(bin));
        }
        run_cmd(&mut boot)
    };
    let plain: Vec<&String> = plain.into_iter().map(|(b, _)| b).collect();
    if !plain.is_empty() {
        boot_run(&plain, None)?;
    }
    for (bin, ramdisk) in with_ramdisk {
        boot_run(&[bin], ramdisk.as_deref())?;
    }
    Ok(image_dir)
}

fn cmd_images(args: &[String]) -> Result<(), String> {
    let profile = if args.iter().any(|a| a == "--release") {
        Profile::Release
    } else {
        Profile::Debug
    };
    setup::toolchain()?;
    let dir = build_images(profile, None, &[Firmware::Bios, Firmware::Uefi])?;
    println!("images in {}", dir.display());
    Ok(())
}

/// Options of `cargo xtask run`.
#[derive(Debug)]
struct RunOptions {
    firmware: Firmware,
    smp: Option<u32>,
    mem: String,
    gdb: bool,
    profile: Profile,
    guest: Option<String>,
    /// `--age-interval-ms`, `--reclaim-target`: carried into the image.
    aging: Vec<(&'static str, String)>,
    qemu_args: Vec<String>,
    /// `--guest linux`: `--kernel`, `--initrd`, `--cmdline` (Debian's
    /// kernel, the project's initramfs and `linux::RUN_CMDLINE` when not
    /// given).
    linux_kernel: Option<PathBuf>,
    linux_initrd: Option<PathBuf>,
    linux_cmdline: Option<String>,
    /// `--mem` was given (else `--guest linux` raises the default).
    mem_given: bool,
}

fn parse_run(args: &[String]) -> Result<RunOptions, String> {
    let mut o = RunOptions {
        firmware: Firmware::Bios,
        smp: None,
        mem: "256M".into(),
        gdb: false,
        profile: Profile::Debug,
        guest: None,
        aging: Vec::new(),
        qemu_args: Vec::new(),
        linux_kernel: None,
        linux_initrd: None,
        linux_cmdline: None,
        mem_given: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--bios" => o.firmware = Firmware::Bios,
            "--uefi" => o.firmware = Firmware::Uefi,
            "--smp" => {
                let n = value("--smp")?;
                let n: u32 = n.parse().map_err(|_| format!("--smp {n}: not a number"))?;
                if !(1..=64).contains(&n) {
                    return Err(format!("--smp {n}: choose 1 to 64 CPUs"));
                }
                o.smp = Some(n);
            }
            "--mem" => {
                o.mem = value("--mem")?;
                o.mem_given = true;
            }
            "--kernel" => o.linux_kernel = Some(PathBuf::from(value("--kernel")?)),
            "--initrd" => o.linux_initrd = Some(PathBuf::from(value("--initrd")?)),
            "--cmdline" => o.linux_cmdline = Some(value("--cmdline")?),
            "--gdb" => o.gdb = true,
            "--release" => o.profile = Profile::Release,
            "--guest" => o.guest = Some(value("--guest")?),
            "--age-interval-ms" => o.aging.push((
                "THERMOCLINE_AGE_INTERVAL_MS",
                cli::check_age_interval(&value("--age-interval-ms")?)?,
            )),
            "--reclaim-target" => o.aging.push((
                "THERMOCLINE_RECLAIM_TARGET",
                cli::check_reclaim_target(&value("--reclaim-target")?)?,
            )),
            "--" => {
                o.qemu_args.extend(it.by_ref().cloned());
            }
            "--help" | "-h" => return Err(HELP_REQUESTED.into()),
            other => {
                return Err(format!(
                    "unknown run option `{other}`; see `cargo xtask run --help`"
                ));
            }
        }
    }
    // After every option: the smallest machine depends on the firmware.
    o.mem = cli::check_mem(&o.mem, o.firmware == Firmware::Uefi)?;
    Ok(o)
}

/// What a command's parser returns for `--help`; `main` prints the
/// command's help and succeeds.
const HELP_REQUESTED: &str = "help requested";

/// The `--guest` value that runs Linux (kernel/src/launch.rs).
const LINUX_GUEST: &str = "linux";
/// RAM of the Linux VM (kernel/src/launch.rs, `LINUX_RAM_BYTES`).
const LINUX_RAM_BYTES: u64 = 256 << 20;

/// `run --guest linux`: the bundle the image carries, from the user's
/// files or Debian's kernel and the project's initramfs (fetched and built
/// on first use).
fn prepare_linux_run(o: &RunOptions) -> Result<(), String> {
    let (kernel, initrd) = match (&o.linux_kernel, &o.linux_initrd) {
        (Some(k), Some(i)) => (k.clone(), i.clone()),
        (k, i) => {
            let assets = linux::prepare(&target_dir(), false)?;
            (
                k.clone().unwrap_or(assets.kernel),
                i.clone().unwrap_or(assets.initramfs),
            )
        }
    };
    let cmdline = o.linux_cmdline.as_deref().unwrap_or(linux::RUN_CMDLINE);
    // Checked here too, so a bad file is named before anything boots (the
    // hypervisor checks again and refuses the VM with the same message).
    let image =
        std::fs::read(&kernel).map_err(|e| format!("--kernel {}: {e}", kernel.display()))?;
    let initrd_bytes =
        std::fs::read(&initrd).map_err(|e| format!("--initrd {}: {e}", initrd.display()))?;
    hvcore::linux_boot::LinuxBoot::plan(&hvcore::linux_boot::LinuxBootConfig {
        kernel_image: &image,
        initrd: &initrd_bytes,
        cmdline: cmdline.as_bytes(),
        ram_bytes: LINUX_RAM_BYTES,
    })
    .map_err(|e| {
        format!(
            "cannot boot {} with {}: {e}",
            kernel.display(),
            initrd.display()
        )
    })?;
    let path = linux::write_bundle(&target_dir(), "thermocline", &kernel, &initrd, cmdline)?;
    println!(
        "xtask: Linux bundle {} (cmdline \"{cmdline}\")",
        path.display()
    );
    Ok(())
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    if let Some(rest) = bochs::wants(args) {
        return bochs::cmd_run(&rest);
    }
    let o = parse_run(args)?;
    let mut o = o;
    let guest = o.guest.clone().unwrap_or_else(|| guests::DEFAULT.into());
    let guest = guest.as_str();
    let linux_options =
        o.linux_kernel.is_some() || o.linux_initrd.is_some() || o.linux_cmdline.is_some();
    if guest == LINUX_GUEST {
        prepare_linux_run(&o)?;
        if !o.mem_given {
            // The Linux VM's 256 MiB, the bundle, and the host's own.
            o.mem = "1G".into();
        }
    } else if linux_options {
        return Err("--kernel, --initrd and --cmdline go with --guest linux".into());
    } else {
        guests::check_name(guest)?;
    }
    // SAFETY: xtask is single-threaded; the variable reaches the kernel
    // build (read with `option_env!` in kernel/src/vm/mod.rs).
    unsafe { std::env::set_var("THERMOCLINE_GUEST", guest) };
    for (var, v) in &o.aging {
        // SAFETY: as above; read with `option_env!` in kernel/src/aging.
        unsafe { std::env::set_var(var, v) };
    }
    setup::toolchain()?;
    setup::qemu(o.firmware == Firmware::Uefi)?;
    let image_dir = build_images(o.profile, Some("thermocline"), &[o.firmware])?;
    let image = image_dir.join(format!("thermocline.{}", o.firmware.image_suffix()));

    let choice = detect_accel();
    let mut machine = Machine::new(&image, o.firmware, choice.accel);
    if let Some(smp) = o.smp {
        machine.smp = smp;
    }
    machine.mem = o.mem.clone();
    machine.gdb = o.gdb;
    machine.extra = o.qemu_args.clone();
    if guest == LINUX_GUEST {
        // COM2: the hypervisor's log and aging report while the Linux VM
        // owns COM1 (kernel/src/console.rs, `divert_to_com2`).
        let dir = target_dir().join("run");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let com2 = dir.join("com2.log");
        machine
            .extra
            .splice(0..0, ["-serial".into(), format!("file:{}", com2.display())]);
        println!(
            "xtask: the Linux VM's console is this terminal; Thermocline's log and aging report go to {} (`cargo xtask report {}`)",
            com2.display(),
            com2.display()
        );
    }
    let accel = match choice.accel {
        Accel::Kvm => "KVM, -cpu host",
        Accel::Tcg => "TCG, -cpu max",
    };
    println!("xtask: accelerator {accel}: {}", choice.reason);
    let scratch = target_dir().join("run");
    // A triple fault and a quit both end QEMU with status 0 (-no-reboot):
    // QEMU's own shutdown reason tells them apart (`thermocline_tests::qmp`).
    let verdict = thermocline_tests::qmp::run_watched(&machine, &scratch, |qemu| {
        println!("    $ {}", show(qemu));
        if o.gdb {
            let elf = target_dir()
                .join(KERNEL_TARGET)
                .join(o.profile.dir())
                .join("thermocline");
            println!(
                "xtask: QEMU waits for GDB on localhost:1234. In another terminal:\n    \
                 gdb {} -ex 'target remote :1234'\n    \
                 (symbols: the kernel logs its load address; see README, \"Debugging with GDB\")",
                elf.display()
            );
        }
        println!(
            "xtask: serial console follows; quit QEMU with Ctrl-A X (the run ends by itself \
             once every VM has stopped)\n"
        );
    })?;
    match verdict {
        thermocline_tests::qmp::Verdict::Clean(why) => {
            println!("\nxtask: {why}");
            Ok(())
        }
        thermocline_tests::qmp::Verdict::Crash(why) => Err(why),
    }
}

/// One step of `cargo xtask test`.
struct Step {
    /// Short name for `--step` and the headers.
    name: &'static str,
    /// What it checks, for `--list`.
    what: &'static str,
    /// Runs the step.
    run: fn(&TestContext) -> Result<(), String>,
}

/// What the steps share.
struct TestContext {
    profile: Profile,
}

/// The steps of `cargo xtask test`, in order. Add a step with one line here.
/// Keep `qemu` last: the output must end with cargo test's summary lines.
fn steps() -> Vec<Step> {
    vec![
        Step {
            name: "fmt",
            what: "rustfmt check of the whole workspace",
            run: step_fmt,
        },
        Step {
            name: "layers",
            what: "kernel modules import only from their layer or below (xtask/src/layers.rs)",
            run: step_layers,
        },
        Step {
            name: "clippy-host",
            what: "clippy -D warnings, host crates, all targets",
            run: step_clippy_host,
        },
        Step {
            name: "clippy-kernel",
            what: "clippy -D warnings, kernel for x86_64-unknown-none",
            run: step_clippy_kernel,
        },
        Step {
            name: "host-tests",
            what: "cargo test of the host crates (unit, property, integration)",
            run: step_host_tests,
        },
        Step {
            name: "loom",
            what: "loom models of the lock-free code (hvcore, --cfg loom)",
            run: step_loom,
        },
        Step {
            name: "linux-assets",
            what: "Debian's kernel and busybox, the initramfs, the test_linux and test_linux_vmx bundles (target/linux)",
            run: step_linux_assets,
        },
        Step {
            name: "images",
            what: "kernel ELFs and their BIOS/UEFI images",
            run: step_images,
        },
        Step {
            name: "bochs",
            what: "VMX scenario kernels on full-system Bochs, 2 CPUs (tests/tests/bochs.rs)",
            run: step_bochs,
        },
        Step {
            name: "qemu",
            what: "in-QEMU scenario kernels and runner self-tests",
            run: step_qemu,
        },
    ]
}

fn step_fmt(_: &TestContext) -> Result<(), String> {
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))
}

fn step_layers(_: &TestContext) -> Result<(), String> {
    let src = root().join("kernel/src");
    match layers::check_dir(&src) {
        Ok(n) => {
            println!("{n} kernel module files, every import from its own layer or below");
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            Err(format!(
                "{} import(s) against the kernel's layers (docs/ARCHITECTURE.md, \"Layers\")",
                problems.len()
            ))
        }
    }
}

fn step_clippy_host(_: &TestContext) -> Result<(), String> {
    run_cmd(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
}

fn step_clippy_kernel(_: &TestContext) -> Result<(), String> {
    run_cmd(cargo().args([
        "clippy",
        "-p",
        "kernel",
        "-p",
        "guests",
        "--target",
        KERNEL_TARGET,
        "--lib",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]))
}

fn step_host_tests(_: &TestContext) -> Result<(), String> {
    run_cmd(cargo().arg("test"))
}

fn step_loom(_: &TestContext) -> Result<(), String> {
    // Tests under `#[cfg(loom)]` whose names contain `loom`; with none yet,
    // cargo runs zero tests and succeeds.
    run_cmd(cargo().env("RUSTFLAGS", "--cfg loom").args([
        "test",
        "-p",
        "hvcore",
        "--release",
        "--target-dir",
        "target/loom",
        "--",
        "loom",
    ]))
}

fn step_linux_assets(_: &TestContext) -> Result<(), String> {
    let target = target_dir();
    let assets = linux::prepare(&target, false)?;
    for name in linux::LINUX_TEST_KERNELS {
        let path = linux::write_bundle(
            &target,
            name,
            &assets.kernel,
            &assets.initramfs,
            linux::TEST_CMDLINE,
        )?;
        println!("Linux bundle for {name}: {}", path.display());
    }
    Ok(())
}

fn step_images(ctx: &TestContext) -> Result<(), String> {
    build_images(ctx.profile, None, &[Firmware::Bios, Firmware::Uefi]).map(|_| ())
}

/// The VMX bed: every VMX scenario on full-system Bochs, two CPUs
/// (`xtask/src/bochs.rs`, `tests/tests/bochs.rs`).
fn step_bochs(ctx: &TestContext) -> Result<(), String> {
    bochs::step(&target_dir().join("images").join(ctx.profile.dir()))
}

fn step_qemu(ctx: &TestContext) -> Result<(), String> {
    let images = target_dir().join("images").join(ctx.profile.dir());
    let choice = detect_accel();
    println!("    accelerator {:?}: {}", choice.accel, choice.reason);
    run_cmd(cargo().env("THERMOCLINE_IMAGES", &images).args([
        "test",
        "-p",
        "thermocline-tests",
        "--test",
        "qemu",
        "--",
        "--include-ignored",
    ]))
}

fn cmd_test(args: &[String]) -> Result<(), String> {
    let all = steps();
    let mut selected: Vec<&str> = Vec::new();
    let mut profile = Profile::Debug;
    let mut keep_going = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--keep-going" => keep_going = true,
            "--list" => {
                for s in &all {
                    println!("{:<14} {}", s.name, s.what);
                }
                return Ok(());
            }
            "--step" => {
                let name = it.next().ok_or("--step needs a step name (see --list)")?;
                if !all.iter().any(|s| s.name == name) {
                    return Err(format!("no step `{name}`; see `cargo xtask test --list`"));
                }
                selected.push(name);
            }
            "--release" => profile = Profile::Release,
            "--help" | "-h" => return Err(HELP_REQUESTED.into()),
            other => {
                return Err(format!(
                    "unknown test option `{other}`; see `cargo xtask test --help`"
                ));
            }
        }
    }
    setup::toolchain()?;
    setup::qemu(true)?;
    let ctx = TestContext { profile };
    let run: Vec<&Step> = all
        .iter()
        .filter(|s| selected.is_empty() || selected.contains(&s.name))
        .collect();
    let start = Instant::now();
    let mut failed = Vec::new();
    for (i, step) in run.iter().enumerate() {
        println!(
            "\n==> [{}/{}] {}: {} (at {:.0} s)",
            i + 1,
            run.len(),
            step.name,
            step.what,
            start.elapsed().as_secs_f64()
        );
        if let Err(e) = (step.run)(&ctx) {
            let e = format!("step `{}` failed: {e}", step.name);
            if !keep_going {
                return Err(e);
            }
            eprintln!("xtask: {e}; going on (--keep-going)");
            failed.push(step.name);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} steps failed: {} (after {:.0} s)",
            failed.len(),
            run.len(),
            failed.join(", "),
            start.elapsed().as_secs_f64()
        ))
    }
}
