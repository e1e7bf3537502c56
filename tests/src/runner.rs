//! Runs one QEMU machine to its end and classifies what happened.
//!
//! QEMU's stdout (the serial console) and stderr (QEMU's own errors) are read
//! line by line on two threads and timestamped from the spawn. The run ends
//! when QEMU exits or the deadline passes; then QEMU is killed (also when the
//! runner itself unwinds: the child is killed on drop).
//!
//! Classification by exit status (`qemu::EXIT_PASS`/`EXIT_FAIL`, see
//! `kernel/src/hw.rs`): 33 is [`Outcome::Passed`], 35 [`Outcome::Failed`],
//! anything else (0 after a triple fault with `-no-reboot`, 1 for a QEMU
//! error, a signal) [`Outcome::Crashed`]; no exit in time is
//! [`Outcome::TimedOut`]. Whether the cases themselves passed is the
//! protocol's business (`protocol::Report`); tests check both.

use crate::protocol::Report;
use crate::qemu::{EXIT_FAIL, EXIT_PASS, Machine};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How many console lines a failure report shows.
pub const TAIL_LINES: usize = 40;

/// What ended the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel left with the success code (Bochs: a summary with no
    /// failure).
    Passed,
    /// The kernel left with the failure code (Bochs: a summary with a
    /// failure, or a `[fatal]` line).
    Failed,
    /// The emulator ended any other way; the exit status if there was one
    /// (Bochs: `None` when it panicked, e.g. at a triple fault).
    Crashed(Option<i32>),
    /// The deadline passed; QEMU was killed.
    TimedOut(Duration),
    /// The awaited console line came ([`run_until`]); QEMU was killed.
    Stopped,
    /// QEMU could not be started.
    NotStarted(String),
}

/// One console line and when it arrived.
#[derive(Clone, Debug)]
pub struct Line {
    /// Time since QEMU was spawned.
    pub at: Duration,
    /// The text, without the line ending.
    pub text: String,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Run {
    /// What ended it.
    pub outcome: Outcome,
    /// Console lines (stdout and QEMU's stderr, interleaved as they came).
    pub console: Vec<Line>,
    /// Wall time from spawn to end.
    pub elapsed: Duration,
    /// The command line, for reports.
    pub command: String,
    /// Which emulator ran (`QEMU` or `Bochs`), for reports.
    pub emulator: &'static str,
}

impl Run {
    /// The protocol report of the console.
    pub fn report(&self) -> Report {
        Report::parse(self.console.iter().map(|l| l.text.as_str()))
    }

    /// When the first line containing `needle` arrived.
    pub fn time_to(&self, needle: &str) -> Option<Duration> {
        self.console
            .iter()
            .find(|l| l.text.contains(needle))
            .map(|l| l.at)
    }

    /// Whether any console line contains `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.console.iter().any(|l| l.text.contains(needle))
    }

    /// The last [`TAIL_LINES`] console lines, one per line.
    pub fn tail(&self) -> String {
        let start = self.console.len().saturating_sub(TAIL_LINES);
        self.console[start..]
            .iter()
            .map(|l| format!("    | {}\n", l.text))
            .collect()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let emu = self.emulator;
        // QEMU reports through its exit status; Bochs, which has no exit
        // device, through the console's summary line (`bochs.rs`).
        let (pass, fail) = if emu == "QEMU" {
            ("exit status 33", "exit status 35")
        } else {
            ("summary line", "summary or fatal line")
        };
        let what = match &self.outcome {
            Outcome::Passed => format!("passed ({pass})"),
            Outcome::Failed => format!("failed ({fail})"),
            Outcome::Crashed(Some(s)) => format!("crashed: {emu} exit status {s}"),
            Outcome::Crashed(None) if emu == "QEMU" => {
                "crashed: QEMU killed by a signal".to_string()
            }
            Outcome::Crashed(None) => format!("crashed: {emu} panicked (see its line below)"),
            Outcome::Stopped => "stopped at the awaited line".to_string(),
            Outcome::TimedOut(t) => {
                format!("timed out after {:.1} s, {emu} killed", t.as_secs_f64())
            }
            Outcome::NotStarted(e) => format!("{emu} did not start: {e}"),
        };
        writeln!(f, "{what} after {:.2} s", self.elapsed.as_secs_f64())?;
        writeln!(f, "  command: {}", self.command)?;
        writeln!(
            f,
            "  last {} console lines:",
            TAIL_LINES.min(self.console.len())
        )?;
        write!(f, "{}", self.tail())
    }
}

/// Kills QEMU when dropped, so no test leaves one behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already exited is fine; nothing else can be done about errors here.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private scratch directory per run (for the UEFI variable store, and
/// the Bochs bed's configuration, disk copy and console).
pub(crate) fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("thermocline-run-{}-{n}", std::process::id()))
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    start: Instant,
    tx: mpsc::Sender<Line>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        // Serial output is bytes, not necessarily UTF-8 (firmware escape
        // sequences); read raw lines and convert lossily.
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\n', '\r']).to_string();
            if tx
                .send(Line {
                    at: start.elapsed(),
                    text,
                })
                .is_err()
            {
                break;
            }
            buf.clear();
        }
    })
}

/// Boots `machine` and waits at most `timeout` for QEMU to exit.
pub fn run(machine: &Machine, timeout: Duration) -> Run {
    run_until(machine, timeout, None)
}

/// Like [`run`], but when a console line contains `stop_at`, QEMU is killed
/// and the outcome is [`Outcome::Stopped`]: for kernels that never exit (the
/// hypervisor idling after its banner).
pub fn run_until(machine: &Machine, timeout: Duration, stop_at: Option<&str>) -> Run {
    run_typing(machine, timeout, stop_at, &[])
}

/// Like [`run_until`], and types on the console: when a line contains the
/// first string of a pair (each pair once, in order), the second is
/// written to QEMU's standard input (the serial port), as a person would.
pub fn run_typing(
    machine: &Machine,
    timeout: Duration,
    stop_at: Option<&str>,
    typing: &[(&str, &str)],
) -> Run {
    let scratch = scratch_dir();
    let result = run_in(machine, timeout, &scratch, stop_at, typing);
    // Best effort: a leftover scratch directory only costs disk space.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_in(
    machine: &Machine,
    timeout: Duration,
    scratch: &std::path::Path,
    stop_at: Option<&str>,
    typing: &[(&str, &str)],
) -> Run {
    let not_started = |command: String, e: String| Run {
        outcome: Outcome::NotStarted(e),
        console: Vec::new(),
        elapsed: Duration::ZERO,
        command,
        emulator: "QEMU",
    };
    let mut cmd = match machine.command(scratch) {
        Ok(cmd) => cmd,
        Err(e) => return not_started(machine.qemu.clone(), e),
    };
    let command = format!("{cmd:?}");
    cmd.stdin(if typing.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut spawned = cmd.spawn();
    // ETXTBSY: the program file is still open for writing in a child that
    // another thread forked and has not exec'd yet (a freshly written
    // script); it clears within moments.
    for _ in 0..10 {
        match &spawned {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(Duration::from_millis(20));
                spawned = cmd.spawn();
            }
            _ => break,
        }
    }
    let mut child = match spawned {
        Ok(child) => KillOnDrop(child),
        Err(e) => {
            return not_started(
                command,
                format!("{e} (is qemu-system-x86 installed? `apt-get install qemu-system-x86`)"),
            );
        }
    };
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    if let Some(out) = child.0.stdout.take() {
        readers.push(spawn_reader(out, start, tx.clone()));
    }
    if let Some(err) = child.0.stderr.take() {
        readers.push(spawn_reader(err, start, tx.clone()));
    }
    drop(tx);
    let mut stdin = child.0.stdin.take();
    let mut typing = typing.iter().peekable();

    let deadline = start + timeout;
    let mut console = Vec::new();
    let outcome = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => {
                break match status.code() {
                    Some(EXIT_PASS) => Outcome::Passed,
                    Some(EXIT_FAIL) => Outcome::Failed,
                    other => Outcome::Crashed(other),
                };
            }
            Ok(None) => {}
            Err(e) => break Outcome::NotStarted(format!("waiting for QEMU: {e}")),
        }
        let now = Instant::now();
        if now >= deadline {
            // Kill now so the readers see EOF; the Drop guard reaps.
            let _ = child.0.kill();
            break Outcome::TimedOut(timeout);
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if let Some((trigger, text)) = typing.peek()
                    && line.text.contains(trigger)
                    && let Some(input) = stdin.as_mut()
                {
                    use std::io::Write;
                    // A failed write shows as the reply missing.
                    let _ = input
                        .write_all(text.as_bytes())
                        .and_then(|()| input.flush());
                    typing.next();
                }
                let stop = stop_at.is_some_and(|needle| line.text.contains(needle));
                console.push(line);
                if stop {
                    let _ = child.0.kill();
                    break Outcome::Stopped;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                // Disconnected: both streams closed; QEMU is exiting, keep
                // polling its status without spinning hard.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let elapsed = start.elapsed();
    drop(child);
    // QEMU is gone: the readers see EOF and end; collect what they had.
    for line in rx.iter() {
        console.push(line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    // Two reader threads: restore arrival order across the streams.
    console.sort_by_key(|l| l.at);
    Run {
        outcome,
        console,
        elapsed,
        command,
        emulator: "QEMU",
    }
}

#[cfg(test)]
mod tests {
    //! The runner against fake QEMUs: shell scripts that print a console and
    //! exit the way QEMU would, so classification, deadlines and reports are
    //! tested on the host in milliseconds.
    use super::*;
    use crate::qemu::{Accel, Firmware};
    use std::os::unix::fs::PermissionsExt;

    fn fake_qemu(name: &str, body: &str) -> Machine {
        let dir =
            std::env::temp_dir().join(format!("thermocline-fake-qemu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join(name);
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut machine = Machine::new("unused.img", Firmware::Bios, Accel::Tcg);
        machine.qemu = script.to_string_lossy().into_owned();
        machine
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn exit_33_with_complete_protocol_is_a_pass() {
        let m = fake_qemu(
            "pass",
            "printf '[scenario] s cases=1\\r\\n[test] a ... ok\\r\\n[summary] s passed=1 failed=0\\r\\n'; exit 33",
        );
        let r = run(&m, 10 * SECOND);
        assert_eq!(r.outcome, Outcome::Passed, "{r}");
        assert!(r.report().all_passed(), "{r}");
        assert_eq!(r.console.len(), 3);
        assert!(!r.console[0].text.ends_with('\r'));
    }

    #[test]
    fn exit_35_is_a_failure() {
        let m = fake_qemu("fail", "echo '[test] a ... FAILED'; exit 35");
        let r = run(&m, 10 * SECOND);
        assert_eq!(r.outcome, Outcome::Failed, "{r}");
        assert_eq!(r.report().failed, ["a"]);
    }

    #[test]
    fn other_status_is_a_crash_with_the_last_40_lines() {
        // The pause keeps stderr's line after stdout's: the two streams are
        // read by two threads and ordered by arrival.
        let m = fake_qemu(
            "crash",
            "i=0; while [ $i -lt 50 ]; do echo line$i; i=$((i+1)); done; sleep 0.3; echo qemu: boom >&2; exit 1",
        );
        let r = run(&m, 10 * SECOND);
        assert_eq!(r.outcome, Outcome::Crashed(Some(1)), "{r}");
        assert_eq!(r.console.len(), 51, "{r}");
        let text = r.to_string();
        assert!(text.contains("crashed: QEMU exit status 1"), "{text}");
        assert!(text.contains("last 40 console lines"), "{text}");
        assert_eq!(r.tail().lines().count(), TAIL_LINES, "{text}");
        assert!(
            text.contains("| qemu: boom"),
            "stderr is part of the console: {text}"
        );
        assert!(
            text.contains("| line49\n") && !text.contains("| line9\n"),
            "{text}"
        );
    }

    #[test]
    fn a_hang_times_out_and_is_killed() {
        let m = fake_qemu("hang", "echo started; exec sleep 60");
        let start = Instant::now();
        let r = run(&m, SECOND);
        assert_eq!(r.outcome, Outcome::TimedOut(SECOND), "{r}");
        assert!(start.elapsed() < 10 * SECOND, "killed promptly: {r}");
        assert!(r.saw("started"));
    }

    #[test]
    fn run_until_stops_at_the_awaited_line() {
        let m = fake_qemu(
            "idle",
            "echo booting; echo 'Thermocline 0.1.0: banner'; exec sleep 60",
        );
        let r = run_until(&m, 10 * SECOND, Some("Thermocline"));
        assert_eq!(r.outcome, Outcome::Stopped, "{r}");
        assert!(r.time_to("Thermocline").is_some());
        assert!(r.time_to("absent").is_none());
    }

    #[test]
    fn a_missing_qemu_is_reported_not_started() {
        let mut m = Machine::new("unused.img", Firmware::Bios, Accel::Tcg);
        m.qemu = "/nonexistent/qemu-system-x86_64".into();
        let r = run(&m, SECOND);
        assert!(
            matches!(&r.outcome, Outcome::NotStarted(e) if e.contains("apt-get install qemu-system-x86")),
            "{r}"
        );
    }
}
