//! Console checks that the QEMU and Bochs scenario tests share, beyond
//! the pass criterion: the overcommit scenarios' outcome lines
//! (`kernel/src/testing/overcommit.rs` prints them), read the same on
//! either backend.

use crate::runner::Run;

/// The console line that starts with `prefix`, if any.
pub fn line<'a>(run: &'a Run, prefix: &str) -> Option<&'a str> {
    run.console
        .iter()
        .map(|l| l.text.as_str())
        .find(|t| t.starts_with(prefix))
}

/// The number right after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Whether `text` is a pause line of VM `vm` in the documented format
/// (docs/ARCHITECTURE.md, "Overcommit"):
/// `vm NAME: paused: no free host frame for GPA 0x... (free F, reserved K, cold pages R)`.
pub fn is_pause_line(text: &str, vm: &str) -> bool {
    let Some(rest) = text.strip_prefix(&format!("vm {vm}: paused: no free host frame for GPA 0x"))
    else {
        return false;
    };
    let Some((gpa, figures)) = rest.split_once(' ') else {
        return false;
    };
    gpa.chars().all(|c| c.is_ascii_hexdigit())
        && number_after(figures, "(free ").is_some()
        && number_after(figures, ", reserved ").is_some()
        && number_after(figures, ", cold pages ").is_some()
        && figures.ends_with(')')
}

/// The console checks of `test_overcommit` (and `test_vmx_overcommit`)
/// beyond the pass itself, on a host of `host_mib`: two VMs of more than
/// the host each finished intact, reclaimed, and the report shows it.
pub fn check_all_finish(run: &Run, host_mib: u64) {
    // The guests' RAM adds up to at least twice what QEMU was given.
    let summary = line(run, "overcommit: 2 VMs x ").unwrap_or_else(|| panic!("{run}"));
    let total_mib = number_after(summary, " = ").unwrap_or_else(|| panic!("{summary}"));
    assert!(total_mib >= 2 * host_mib, "{summary}");
    for vm in ["oc-a", "oc-b"] {
        // Finished, nothing lost, and reclaimed (the scenario asserts how
        // much).
        let l = line(
            run,
            &format!("overcommit {vm}: guest exited with code 0x0; checksum Some(("),
        )
        .unwrap_or_else(|| panic!("{vm} did not finish: {run}"));
        assert!(l.contains(", 0)); reclaimed "), "{l}");
        assert!(number_after(l, "reclaimed ").is_some_and(|n| n > 0), "{l}");
        // The report shows it: the final `TCR reclaim` line of the VM.
        let r = line(run, &format!("TCR reclaim vm={vm} ")).unwrap_or_else(|| panic!("{run}"));
        assert!(number_after(r, " freed=").is_some_and(|n| n > 0), "{r}");
    }
}

/// The console checks of `test_overcommit_pause` (and
/// `test_vmx_overcommit_pause`) beyond the pass itself: the big VM paused
/// with the documented line, the small one never, finished intact; the big
/// one still paused at the end, then stopped.
pub fn check_pause(run: &Run) {
    assert!(
        run.console.iter().any(|l| is_pause_line(&l.text, "big")),
        "no pause line of the big VM in the documented format: {run}"
    );
    assert!(
        !run.console.iter().any(|l| is_pause_line(&l.text, "small")),
        "the small VM was paused: {run}"
    );
    assert!(run.saw("vm small: guest exited with code 0x0"), "{run}");
    assert!(
        run.saw("vm small: checksum result: 1024 pages checked, 0 mismatches"),
        "{run}"
    );
    assert!(
        run.saw("the big VM is still paused for memory at the end"),
        "{run}"
    );
    assert!(run.saw("vm big: stopped while paused for memory"), "{run}");
    // Why it could never resume: its dense data does not compress, so
    // reclaim under pressure leaves it resident.
    assert!(
        run.console.iter().any(|l| l
            .text
            .starts_with("vm big: stopped while paused for memory")
            && l.text.contains("the cold pages do not compress")),
        "the stop line does not say why the memory never came back: {run}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_lines_are_recognised() {
        assert!(is_pause_line(
            "vm big: paused: no free host frame for GPA 0xfe5000 (free 1280, reserved 1280, cold pages 3140)",
            "big"
        ));
        assert!(!is_pause_line(
            "vm big: paused: no free host frame for GPA 0xfe5000 (free 1280, reserved 1280)",
            "big"
        ));
        assert!(!is_pause_line(
            "vm big: paused: no free host frame for the fault at GPA 0xfe5000 (1280 frames free); waiting for memory",
            "big"
        ));
        assert!(!is_pause_line(
            "vm small: paused: no free host frame for GPA 0xfe5000 (free 1, reserved 2, cold pages 3)",
            "big"
        ));
    }
}
