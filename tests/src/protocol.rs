//! The console line protocol of test kernels (written by
//! `kernel/src/testing/mod.rs`, `panic.rs` and `interrupts/exceptions.rs`).
//!
//! ```text
//! [scenario] <scenario> cases=<N>
//! [test] <case> ... ok
//! [test] <case> ... FAILED
//! [panic] at <file>:<line>:<col>: <message>      (message may continue on more lines)
//! [exception] <mnemonic> <name> (vector <v>) on cpu<n>   (then more [exception] lines)
//! [summary] <scenario> passed=<P> failed=<F>
//! ```
//!
//! Anything else (firmware output, log lines `[LEVEL cpuN] ...`, the banner)
//! is ignored by the parser but kept in the console for reports. A trailing
//! `\r` is stripped from every line.

/// What a console said, per the protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// `[scenario]` line: name and declared number of cases.
    pub scenario: Option<(String, usize)>,
    /// Cases reported `ok`, in order.
    pub passed: Vec<String>,
    /// Cases reported `FAILED`, in order.
    pub failed: Vec<String>,
    /// The first `[panic]` line, without the prefix.
    pub panic: Option<String>,
    /// All `[exception]` lines, without the prefix.
    pub exception: Vec<String>,
    /// `[summary]` line: passed and failed counts.
    pub summary: Option<(usize, usize)>,
}

impl Report {
    /// Parses console lines.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut report = Report::default();
        for line in lines {
            let line = line.trim_end_matches('\r');
            if let Some(rest) = line.strip_prefix("[scenario] ") {
                let mut words = rest.split_whitespace();
                let name = words.next().unwrap_or_default().to_string();
                let cases = words
                    .find_map(|w| w.strip_prefix("cases="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                report.scenario = Some((name, cases));
            } else if let Some(rest) = line.strip_prefix("[test] ") {
                if let Some(name) = rest.strip_suffix(" ... ok") {
                    report.passed.push(name.to_string());
                } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
                    report.failed.push(name.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("[panic] ") {
                report.panic.get_or_insert_with(|| rest.to_string());
            } else if let Some(rest) = line.strip_prefix("[exception] ") {
                report.exception.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("[summary] ") {
                let count = |key: &str| {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|n| n.parse().ok())
                };
                if let (Some(p), Some(f)) = (count("passed="), count("failed=")) {
                    report.summary = Some((p, f));
                }
            }
        }
        report
    }

    /// Whether the console shows a complete, all-passing scenario: a declared
    /// case count, that many `ok` lines, no `FAILED`, and a summary agreeing.
    pub fn all_passed(&self) -> bool {
        match (&self.scenario, self.summary) {
            (Some((_, cases)), Some((p, f))) => {
                self.failed.is_empty()
                    && f == 0
                    && p == *cases
                    && self.passed.len() == *cases
                    && self.panic.is_none()
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSING: &str = "BdsDxe: noise from firmware\r
[INFO  cpu0] memory: 247 MiB usable\r
[scenario] basic cases=2\r
[test] one ... ok\r
[test] two ... ok\r
[summary] basic passed=2 failed=0\r";

    #[test]
    fn parses_a_passing_scenario() {
        let r = Report::parse(PASSING.lines());
        assert_eq!(r.scenario, Some(("basic".into(), 2)));
        assert_eq!(r.passed, ["one", "two"]);
        assert!(r.failed.is_empty());
        assert_eq!(r.summary, Some((2, 0)));
        assert!(r.all_passed());
    }

    #[test]
    fn a_missing_case_is_not_a_pass() {
        let text = PASSING.replace("[test] two ... ok\r\n", "");
        let r = Report::parse(text.lines());
        assert!(!r.all_passed(), "declared 2 cases, saw 1");
    }

    #[test]
    fn no_summary_is_not_a_pass() {
        let text = PASSING.replace("[summary] basic passed=2 failed=0\r", "");
        assert!(!Report::parse(text.lines()).all_passed());
    }

    #[test]
    fn parses_a_failure_with_panic_and_exception() {
        let text = "[scenario] s cases=3
[test] a ... ok
[exception] #PF page fault (vector 14) on cpu0
[exception] CR2=0x00000deadbeef000 CR3=0x1000
[panic] at kernel/src/bin/x.rs:1:2: boom
[panic] at somewhere/else.rs:3:4: second
[test] b ... FAILED
[summary] s passed=1 failed=1";
        let r = Report::parse(text.lines());
        assert_eq!(r.failed, ["b"]);
        assert_eq!(r.panic.as_deref(), Some("at kernel/src/bin/x.rs:1:2: boom"));
        assert_eq!(r.exception.len(), 2);
        assert_eq!(r.summary, Some((1, 1)));
        assert!(!r.all_passed());
    }
}
