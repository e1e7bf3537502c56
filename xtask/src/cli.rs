//! Checks of the values `cargo xtask` options take, and per-command help.
//!
//! Every refusal is one line that names the option, the value and the
//! accepted forms, and comes before anything builds or boots. The aging
//! values are parsed by `hvcore::run_config`, the same `const fn`s the
//! kernel evaluates on the build-time variables, so the two never disagree.

use hvcore::run_config::{self, INTERVAL_FORMS, ReclaimSetting, TARGET_FORMS};

/// Whether `arg` asks for help.
pub fn is_help(arg: &str) -> bool {
    matches!(arg, "--help" | "-h" | "help")
}

/// The help of one command: its usage line and its section of `help`
/// (the text of `cargo xtask help`, whose sections are headed
/// `<SECTION>:` and end at a blank line).
pub fn command_help(help: &str, command: &str, section: &str) -> String {
    let mut out = format!("USAGE:\n    cargo xtask {command} [OPTIONS]\n\n");
    let mut inside = false;
    for line in help.lines() {
        if line == section {
            inside = true;
        } else if inside && line.is_empty() {
            break;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("\nSee `cargo xtask help` for every command.\n");
    out
}

/// The smallest `--mem` that boots Thermocline on SeaBIOS, in MiB: with
/// less, the boot loader stops at `loading kernel...` on the VGA screen
/// (nothing on the serial console). Measured by bisecting with the debug
/// image of `thermocline` under TCG, 2 CPUs: 22 MiB stalls, 23 MiB reaches
/// the banner.
pub const MIN_MEM_BIOS_MIB: u64 = 23;
/// The same for OVMF (UEFI), measured the same way: with 47 MiB the UEFI
/// boot loader panics (`Failed to allocate memory for the file:
/// OUT_OF_RESOURCES`, reading the kernel), 48 MiB reaches the banner.
pub const MIN_MEM_UEFI_MIB: u64 = 48;

/// Parses `--mem` in QEMU's syntax (`-m`): a number, possibly with a
/// fraction, and an optional unit `B`, `K`, `M`, `G` or `T` (either case;
/// none means MiB). Returns bytes.
pub fn parse_mem_bytes(s: &str) -> Result<u64, String> {
    let refuse = |why: &str| {
        format!(
            "--mem {s}: {why}; expected a size in QEMU's syntax, a number with an optional \
             unit B, K, M, G or T (none means MiB), e.g. 256M, 1G, 1.5G"
        )
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit {
        "" | "M" | "m" => 20,
        "B" | "b" => 0,
        "K" | "k" => 10,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(refuse("unknown unit")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse("not a number"));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (number.contains('.') && frac.is_empty()) {
        return Err(refuse("not a number"));
    }
    let int: u64 = int.parse().map_err(|_| refuse("too large"))?;
    let whole = int.checked_shl(shift).filter(|v| v >> shift == int);
    let whole = whole.ok_or_else(|| refuse("too large"))?;
    // The fraction, exactly: digits / 10^len of a unit, rounded down.
    let frac = &frac[..frac.len().min(18)];
    let part = match frac.parse::<u128>() {
        Ok(digits) => ((digits << shift) / 10u128.pow(frac.len() as u32)) as u64,
        Err(_) => 0,
    };
    whole.checked_add(part).ok_or_else(|| refuse("too large"))
}

/// Checks `--mem` against the smallest machine that boots with `uefi`
/// firmware or not; returns the value for QEMU unchanged.
pub fn check_mem(s: &str, uefi: bool) -> Result<String, String> {
    let bytes = parse_mem_bytes(s)?;
    let (min_mib, firmware) = if uefi {
        (MIN_MEM_UEFI_MIB, "UEFI (OVMF)")
    } else {
        (MIN_MEM_BIOS_MIB, "BIOS (SeaBIOS)")
    };
    if bytes < min_mib << 20 {
        return Err(format!(
            "--mem {s}: Thermocline does not boot with less than {min_mib}M on {firmware} \
             (the boot loader stops before the serial console says anything)"
        ));
    }
    Ok(s.to_string())
}

/// Checks `--age-interval-ms`; returns the value for the build.
pub fn check_age_interval(s: &str) -> Result<String, String> {
    run_config::parse_interval_ms(s)
        .map(|n| n.to_string())
        .map_err(|e| {
            format!(
                "--age-interval-ms {s:?}: {}; expected {INTERVAL_FORMS}",
                e.describe()
            )
        })
}

/// Checks `--reclaim-target`; returns the value for the build.
pub fn check_reclaim_target(s: &str) -> Result<String, String> {
    match run_config::parse_reclaim_target(s) {
        Ok(ReclaimSetting::Off | ReclaimSetting::Adaptive | ReclaimSetting::ResidentBytes(_)) => {
            Ok(s.to_string())
        }
        Err(e) => Err(format!(
            "--reclaim-target {s:?}: {}; expected {TARGET_FORMS}",
            e.describe()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes_in_qemu_syntax() {
        assert_eq!(parse_mem_bytes("256M"), Ok(256 << 20));
        assert_eq!(parse_mem_bytes("256"), Ok(256 << 20));
        assert_eq!(parse_mem_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_mem_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_mem_bytes("65536K"), Ok(64 << 20));
        assert_eq!(parse_mem_bytes("1K"), Ok(1024));
        for bad in [
            "",
            "M",
            "abc",
            "-1",
            "1.",
            ".5",
            "1..5",
            "12Q",
            "1 G",
            "99999999999T",
        ] {
            let e = parse_mem_bytes(bad).expect_err(bad);
            assert!(e.starts_with(&format!("--mem {bad}: ")), "{e}");
            assert!(e.contains("e.g. 256M"), "{e}");
        }
    }

    #[test]
    fn mem_below_the_smallest_that_boots_is_refused() {
        for (mem, uefi) in [("1K", false), ("16M", false), ("22M", false), ("47M", true)] {
            let e = check_mem(mem, uefi).expect_err(mem);
            let min = if uefi { "48M" } else { "23M" };
            assert!(e.contains(&format!("less than {min}")), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert_eq!(check_mem("23M", false).as_deref(), Ok("23M"));
        assert_eq!(check_mem("48M", true).as_deref(), Ok("48M"));
        assert_eq!(check_mem("256M", true).as_deref(), Ok("256M"));
        assert!(check_mem("24M", true).is_err());
    }

    #[test]
    fn aging_values_are_checked_strictly() {
        for bad in ["0", "-1", "abc", "1K", "", "3600001"] {
            let e = check_age_interval(bad).expect_err(bad);
            assert!(e.contains(INTERVAL_FORMS) && !e.contains('\n'), "{e}");
        }
        assert_eq!(check_age_interval("100").as_deref(), Ok("100"));
        for bad in ["-5", "abc", "aaaaaaaa", "1000", "16MB", ""] {
            let e = check_reclaim_target(bad).expect_err(bad);
            assert!(e.contains(TARGET_FORMS) && !e.contains('\n'), "{e}");
        }
        for good in ["off", "adaptive", "16M", "0", "999G"] {
            assert_eq!(check_reclaim_target(good).as_deref(), Ok(good));
        }
    }

    /// `cargo xtask run`'s parser refuses before anything builds (it runs
    /// first in `cmd_run`), and `--help` is not an unknown option.
    #[test]
    fn run_options_are_refused_by_the_parser() {
        let parse = |args: &[&str]| {
            crate::parse_run(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        };
        for bad in [
            &["--age-interval-ms", "0"][..],
            &["--age-interval-ms", "-1"],
            &["--age-interval-ms", "abc"],
            &["--age-interval-ms", "1K"],
            &["--reclaim-target", "-5"],
            &["--reclaim-target", "abc"],
            &["--reclaim-target", "aaaaaaaa"],
            &["--mem", "1K"],
            &["--mem", "16M"],
            &["--mem", "47M", "--uefi"],
        ] {
            let e = parse(bad).expect_err(&bad.join(" "));
            assert!(e.starts_with(bad[0]) && !e.contains('\n'), "{e}");
        }
        assert_eq!(parse(&["--help"]).unwrap_err(), crate::HELP_REQUESTED);
        let o = parse(&["--age-interval-ms", "100", "--reclaim-target", "16M"]).unwrap();
        assert_eq!(o.aging.len(), 2);
        assert_eq!(o.mem, "256M");
    }

    /// `cargo xtask run|test|bench --help` print their own options (they
    /// said `unknown run option --help` before).
    #[test]
    fn each_command_has_its_help() {
        for (command, section, option) in [
            ("run", "RUN OPTIONS:", "--age-interval-ms"),
            ("test", "TEST OPTIONS:", "--step NAME"),
            ("bench", "BENCH OPTIONS:", "--quick"),
        ] {
            let h = command_help(crate::HELP, command, section);
            assert!(h.contains(option), "{command}: {h}");
            assert!(
                h.contains(&format!("cargo xtask {command} [OPTIONS]")),
                "{h}"
            );
        }
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            crate::cmd_test(&args(&["--help"])).unwrap_err(),
            crate::HELP_REQUESTED
        );
        assert_eq!(
            crate::bench::cmd_bench(&args(&["-h"])).unwrap_err(),
            crate::HELP_REQUESTED
        );
    }

    #[test]
    fn command_help_is_its_section() {
        let help = "HEAD\n\nRUN OPTIONS:\n    --x   X\n\nTEST OPTIONS:\n    --y  Y\n";
        let h = command_help(help, "run", "RUN OPTIONS:");
        assert!(
            h.contains("cargo xtask run [OPTIONS]") && h.contains("--x"),
            "{h}"
        );
        assert!(!h.contains("--y") && !h.contains("HEAD"), "{h}");
    }
}
