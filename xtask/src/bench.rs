//! `cargo xtask bench`: the printed benchmarks of issue 7 (docs/benchmarks.md).
//!
//! - Host: `cargo bench -p hvcore` (benches `aging`, `frames`, `reclaim`),
//!   streamed as they print; the `[bench]` lines of `reclaim` are kept.
//! - Guest (`--guest`): builds the bench kernel `bench_guest`
//!   (kernel/src/bin/bench_guest.rs) with the release profile, boots it in
//!   QEMU (KVM when `detect_accel` finds it usable, else TCG) with 3 CPUs,
//!   and keeps its `[bench]` lines. Release, because a benchmark of a debug
//!   kernel measures the debug build: under TCG its fault-in path was
//!   several times slower.
//!
//! Then one table of every `[bench]` line: `[bench] <key> <value> <unit>
//! <description>`, the format both producers print. Nothing here judges
//! a figure: the targets are in the descriptions and the docs.

use crate::{Profile, build_images, cargo, show};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;
use thermocline_tests::qemu::{Accel, Firmware, Machine, detect_accel};
use thermocline_tests::runner::{Outcome, run};

/// The bench kernel's name (`kernel/src/bin/bench_guest.rs`).
const BENCH_KERNEL: &str = "bench_guest";
/// About a minute under TCG on an idle 2-core host; a loaded host takes
/// longer.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// One `[bench]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// Where it was measured: `host`, `TCG` or `KVM`.
    pub bed: String,
    /// Dotted key, e.g. `throughput.ratio`.
    pub key: String,
    /// The value as printed.
    pub value: String,
    /// Its unit.
    pub unit: String,
    /// What it is.
    pub what: String,
}

/// Parses a console or bench line `[bench] KEY VALUE UNIT DESCRIPTION...`
/// (anything before `[bench]` is ignored: QEMU's console may prefix it).
pub fn parse_line(bed: &str, line: &str) -> Option<Figure> {
    let rest = &line[line.find("[bench] ")? + "[bench] ".len()..];
    let mut parts = rest.splitn(4, ' ');
    let key = parts.next()?.to_string();
    let value = parts.next()?.to_string();
    let unit = parts.next()?.to_string();
    let what = parts.next().unwrap_or("").trim().to_string();
    if key.is_empty() || value.is_empty() || unit.is_empty() {
        return None;
    }
    Some(Figure {
        bed: bed.to_string(),
        key,
        value,
        unit,
        what,
    })
}

/// Options of `cargo xtask bench`.
#[derive(Debug, Default)]
struct BenchOptions {
    host: bool,
    guest: bool,
    quick: bool,
    cargo_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<BenchOptions, String> {
    let mut o = BenchOptions {
        host: true,
        ..BenchOptions::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--guest" => o.guest = true,
            "--guest-only" => {
                o.guest = true;
                o.host = false;
            }
            "--quick" => o.quick = true,
            "--" => o.cargo_args.extend(it.by_ref().cloned()),
            "--help" | "-h" => return Err(crate::HELP_REQUESTED.into()),
            other => {
                return Err(format!(
                    "unknown bench option `{other}`; see `cargo xtask bench --help`"
                ));
            }
        }
    }
    Ok(o)
}

pub fn cmd_bench(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    crate::setup::toolchain()?;
    let mut figures = Vec::new();
    if o.host {
        figures.extend(host(&o)?);
    }
    if o.guest {
        crate::setup::qemu(false)?;
        figures.extend(guest()?);
    }
    print_table(&figures);
    Ok(())
}

/// `cargo bench -p hvcore`, its output passed through as it comes.
fn host(o: &BenchOptions) -> Result<Vec<Figure>, String> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "hvcore"]);
    // Only the bench targets: without this cargo also runs the library's
    // unit tests in bench mode, one `... ignored` line each.
    if !o.cargo_args.iter().any(|a| a == "--bench") {
        cmd.arg("--benches");
    }
    cmd.args(&o.cargo_args);
    if o.quick {
        cmd.env("AGING_BENCH_QUICK", "1")
            .env("RECLAIM_BENCH_QUICK", "1");
    }
    println!("    $ {}", show(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo bench: {e}"))?;
    // Cargo's own lines (`Running benches/aging.rs`) come on stderr: pass
    // them on whole lines at a time, or they land inside a line of the
    // bench's output.
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("{line}");
            }
        })
    });
    let mut figures = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("reading cargo bench's output: {e}"))?;
            println!("{line}");
            figures.extend(parse_line("host", &line));
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo bench: {e}"))?;
    if let Some(t) = stderr {
        let _ = t.join();
    }
    if !status.success() {
        return Err(format!("cargo bench failed ({status})"));
    }
    Ok(figures)
}

/// Builds and boots the bench kernel; its `[bench]` lines.
fn guest() -> Result<Vec<Figure>, String> {
    let images = build_images(Profile::Release, Some(BENCH_KERNEL), &[Firmware::Bios])?;
    let image = images.join(format!("{BENCH_KERNEL}.{}", Firmware::Bios.image_suffix()));
    let choice = detect_accel();
    let bed = match choice.accel {
        Accel::Kvm => "KVM",
        Accel::Tcg => "TCG",
    };
    let mut machine = Machine::new(&image, Firmware::Bios, choice.accel);
    // CPU 0 ages, CPUs 1 and 2 run the aged and the plain guest at once.
    machine.smp = 3;
    machine.mem = "512M".into();
    println!(
        "xtask: accelerator {bed}: {}{}",
        choice.reason,
        if choice.accel == Accel::Tcg {
            " (emulated CPU: the guest figures are TCG figures, not hardware figures)"
        } else {
            ""
        }
    );
    println!(
        "xtask: booting {} with 3 CPUs (about a minute under TCG)",
        image.display()
    );
    let load_before = loadavg();
    let r = run(&machine, GUEST_TIMEOUT);
    for l in &r.console {
        if l.text.starts_with("bench:") || l.text.starts_with("[bench]") {
            println!("{}", l.text);
        }
    }
    println!(
        "xtask: host load average (1 min) {} before, {} after; {:.0} s in QEMU",
        load_before,
        loadavg(),
        r.elapsed.as_secs_f64()
    );
    if r.outcome != Outcome::Passed {
        return Err(format!("the bench kernel did not finish: {r}"));
    }
    Ok(r.console
        .iter()
        .filter_map(|l| parse_line(bed, &l.text))
        .collect())
}

/// The host's 1-minute load average, as `/proc/loadavg` shows it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn print_table(figures: &[Figure]) {
    print!("{}", table(figures));
}

/// Every figure, one aligned row each, under one heading.
fn table(figures: &[Figure]) -> String {
    if figures.is_empty() {
        return String::new();
    }
    let w_key = figures.iter().map(|f| f.key.len()).max().unwrap_or(0);
    let w_val = figures.iter().map(|f| f.value.len()).max().unwrap_or(0);
    let w_unit = figures.iter().map(|f| f.unit.len()).max().unwrap_or(0);
    let mut out = String::from("\n== benchmarks (docs/benchmarks.md) ==\n");
    for f in figures {
        out.push_str(&format!(
            "{:<4} {:<w_key$} {:>w_val$} {:<w_unit$}  {}\n",
            f.bed, f.key, f.value, f.unit, f.what
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bench_lines() {
        let f = parse_line(
            "TCG",
            "[bench] throughput.ratio 0.9912 on/off target >= 0.98",
        )
        .expect("a figure");
        assert_eq!(f.key, "throughput.ratio");
        assert_eq!(f.value, "0.9912");
        assert_eq!(f.unit, "on/off");
        assert_eq!(f.what, "target >= 0.98");
        assert_eq!(
            parse_line("host", "[bench] a 1 x").map(|f| f.what),
            Some(String::new())
        );
        assert!(parse_line("host", "bench: round 1 ...").is_none());
        assert!(parse_line("host", "[bench] lonely").is_none());
    }

    /// The lines the three host benches print (aging and frames print
    /// `[bench]` lines too since issue 19) make one table, a row each.
    #[test]
    fn every_host_figure_is_in_the_table() {
        let lines = [
            "[bench] host.aging.1g.clustered.10pct.ours 0.412 ns/page age_pass, cold tables, best of 5",
            "[bench] host.aging.1g.clustered.10pct.ours_over_kvm 0.81 x median ratio to a KVM-style pass (lower is better)",
            "[bench] host.frames.alloc_4k 21.3 ns/op 4 KiB allocate, best of 3 rounds (target < 100)",
            "[bench] host.reclaim.mixed 250000 pages/s reclaim, mixed",
            "     Running benches/aging.rs (target/release/deps/aging-0123)",
            "test insn::tests::decodes ... ignored",
        ];
        let figures: Vec<Figure> = lines.iter().filter_map(|l| parse_line("host", l)).collect();
        assert_eq!(figures.len(), 4);
        let t = table(&figures);
        assert_eq!(
            t.lines().filter(|l| l.starts_with("host ")).count(),
            4,
            "{t}"
        );
        for key in [
            "aging.1g.clustered.10pct.ours ",
            "frames.alloc_4k",
            "reclaim.mixed",
        ] {
            assert!(t.contains(key), "{key} missing: {t}");
        }
        assert!(!t.contains("ignored") && !t.contains("Running"), "{t}");
    }
}
