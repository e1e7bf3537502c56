//! Linux guests (issue 12): `test_linux` boots Debian's unmodified kernel
//! under Thermocline on the SVM backend (QEMU TCG, `-cpu max`) from the
//! bundle xtask's test step `linux-assets` put in the image's ramdisk, and
//! the test init (xtask/src/linux/init.sh, `thermocline_test=thermocline`)
//! reports through the guest's COM1, which is Thermocline's console.
//! Included by `tests/qemu.rs` (`mod linux;`).

use super::check_passed;
use super::machine;
use std::time::Duration;
use thermocline_tests::qemu::Firmware;
use thermocline_tests::runner::{Run, run_typing};

/// Boot, the workload, 20 s between the uptime marks and a VM under
/// aging: about a minute under TCG on an idle machine.
const LINUX_TIMEOUT: Duration = Duration::from_secs(300);

/// The number in `line` after `key` (up to the next space).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The value of `key` on the first console line containing `key`.
fn value(run: &Run, key: &str) -> f64 {
    run.console
        .iter()
        .find_map(|l| number_after(&l.text, key))
        .unwrap_or_else(|| panic!("no `{key}` line: {run}"))
}

/// The console lines with the hypervisor's `TCR` report lines taken out:
/// in the scenario both share COM1, and a report line printed while the
/// guest was in the middle of a line splits it (the guest's part before
/// the report, the rest on the next line), which this joins again.
fn guest_lines(run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    let mut carry = String::new();
    for l in &run.console {
        if let Some(i) = l.text.find("TCR ") {
            carry.push_str(&l.text[..i]);
            continue;
        }
        out.push(format!("{carry}{}", l.text));
        carry.clear();
    }
    out
}

#[test]
#[ignore = "needs images: run `cargo xtask test`"]
fn test_linux() {
    let mut m = machine("test_linux", Firmware::Bios);
    m.mem = "1G".into();
    // The last case's shell: a command typed when it is up, then a kernel
    // crash through sysrq (each line as a person types it, CR as Enter).
    let run = run_typing(
        &m,
        LINUX_TIMEOUT,
        None,
        &[
            (
                "interactive shell (exit it to power off)",
                "echo reply-$((6*7))\r",
            ),
            ("reply-42", "echo c > /proc/sysrq-trigger\r"),
        ],
    );
    let report = check_passed(&run).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.passed.len(), 4, "{run}");
    // Bad inputs: named before any VM starts.
    for needle in [
        "truncated bzImage: refused: truncated kernel image",
        "garbage kernel: refused: not a bzImage",
        "initrd larger than RAM allows: refused: initrd does not fit",
        "command line too long: refused: kernel command line too long",
    ] {
        assert!(run.saw(needle), "missing `{needle}`: {run}");
    }
    // The test init's facts.
    assert!(run.saw("thermocline-init: reached /init"), "{run}");
    assert!(run.saw("thermocline-init: uname -r: 6."), "{run}");
    assert!(
        value(&run, "thermocline-init: MemTotal:") > 100_000.0,
        "{run}"
    );
    assert!(run.saw("thermocline-init: interrupts:   0:"), "{run}");
    assert!(run.saw("XT-PIC      timer"), "{run}");
    assert!(run.saw("workload: result mismatches=0 passes=4"), "{run}");
    // The guest's clock against the hypervisor's over the two marks.
    let guest_s = value(&run, "uptime mark 2 ") - value(&run, "uptime mark 1 ");
    let host_s = value(&run, "vm linux: mark 2 at ") - value(&run, "vm linux: mark 1 at ");
    let drift = (guest_s - host_s).abs() / host_s;
    println!(
        "test_linux: guest {guest_s:.3} s between the marks, hypervisor {host_s:.3} s ({:.2} %); run {:.1} s",
        drift * 100.0,
        run.elapsed.as_secs_f64()
    );
    assert!(
        (19.0..30.0).contains(&host_s) && drift < 0.02,
        "guest {guest_s:.3} s against the hypervisor's {host_s:.3} s ({:.2} %): {run}",
        drift * 100.0
    );
    assert!(run.saw("vm linux: guest exited with code 0x0"), "{run}");
    // The reclaim variant: the workload intact a second time, pages
    // reclaimed and refaults counted while it ran.
    assert!(
        guest_lines(&run)
            .iter()
            .any(|l| l.contains("workload: result mismatches=0 passes=2")),
        "the workload under reclaim verified: {run}"
    );
    assert!(
        run.saw("vm linux-aged: guest exited with code 0x0"),
        "{run}"
    );
    let refaults = run
        .console
        .iter()
        .filter(|l| l.text.starts_with("TCR reclaim vm=linux-aged"))
        .filter_map(|l| number_after(&l.text, "refaults="))
        .fold(0.0, f64::max);
    assert!(
        refaults > 0.0,
        "refaults counted under adaptive reclaim: {run}"
    );
    assert!(run.saw("linux: under adaptive reclaim:"), "{run}");
    // The interactive shell answered what was typed; the guest's panic is
    // on the console, its reboot stopped the VM, and the hypervisor went
    // on (the scenario's summary is the last case's).
    assert!(
        run.console
            .iter()
            .any(|l| l.text.contains("reply-42") && !l.text.contains("$((")),
        "the shell's reply: {run}"
    );
    assert!(run.saw("Kernel panic - not syncing"), "{run}");
    assert!(
        run.saw("vm linux-shell: guest asked for a reset through the i8042"),
        "{run}"
    );
}

#[test]
fn report_lines_are_cut_out_of_guest_lines() {
    use thermocline_tests::runner::{Line, Outcome};
    let line = |t: &str| Line {
        at: Duration::ZERO,
        text: t.into(),
    };
    let run = Run {
        outcome: Outcome::Passed,
        console: vec![
            line("workload: result mis"),
            line("matches=0 TCR reclaim vm=a n=1 refaults=3"),
            line("passes=2"),
            line("TCR pass vm=a n=2"),
            line("next"),
        ],
        elapsed: Duration::ZERO,
        command: String::new(),
        emulator: "QEMU",
    };
    assert_eq!(
        guest_lines(&run),
        ["workload: result mis", "matches=0 passes=2", "next"]
    );
}

#[test]
fn numbers_are_read_after_their_key() {
    assert_eq!(
        number_after("thermocline-init: uptime mark 1 8.90", "uptime mark 1 "),
        Some(8.9)
    );
    assert_eq!(
        number_after(
            "vm linux: mark 2 at 32.780 s (hypervisor clock)",
            "mark 2 at "
        ),
        Some(32.78)
    );
    assert_eq!(number_after("nothing", "mark"), None);
}
