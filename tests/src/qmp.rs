//! Why QEMU shut down, from its QMP `SHUTDOWN` event.
//!
//! With `-no-reboot` a triple fault (a guest reset) ends QEMU with exit
//! status 0, the same status as quitting with Ctrl-A X: the status alone
//! cannot tell a crash from a clean end. QEMU's QMP monitor can: its
//! `SHUTDOWN` event carries `"reason"`: `guest-reset` for a triple fault
//! (or any other reset, which `-no-reboot` turns into a shutdown),
//! `guest-shutdown` for an ACPI power-off, `host-qmp-quit` for Ctrl-A X
//! or the monitor's `quit`, `host-signal` for SIGINT/SIGTERM. The exit
//! device (`isa-debug-exit`) ends QEMU with no event. Measured with QEMU
//! 7.2 on `test_triple_fault`: `{"event": "SHUTDOWN", "data": {"guest":
//! true, "reason": "guest-reset"}}`, exit status 0.
//!
//! [`Watcher`] connects to the socket of `Machine::qmp`, negotiates
//! capabilities (QEMU sends no event before that), lets the machine run
//! (it was started with `-S`, so nothing can happen before the watcher
//! listens) and keeps the last shutdown reason. [`judge_exit`] turns an
//! exit status and that reason into a verdict. No JSON library: the
//! harness is dependency-free, and the two fields needed are plain strings.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The string value of `"key"` in one JSON line, if it is there and a plain
/// string (QEMU's reasons and event names have no escapes).
pub fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let quoted = format!("\"{key}\"");
    let after = &line[line.find(&quoted)? + quoted.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let value = after.strip_prefix('"')?;
    let end = value.find('"')?;
    Some(&value[..end])
}

/// The reason of a `SHUTDOWN` event line, or `None` for any other line.
pub fn shutdown_reason(line: &str) -> Option<&str> {
    if json_string(line, "event")? != "SHUTDOWN" {
        return None;
    }
    Some(json_string(line, "reason").unwrap_or("unknown"))
}

/// Listens on a QMP socket for the shutdown reason.
#[derive(Debug)]
pub struct Watcher {
    thread: JoinHandle<Option<String>>,
}

impl Watcher {
    /// Connects to `socket` (retrying for up to `patience` while QEMU
    /// creates it), negotiates capabilities and, when `resume`, sends
    /// `cont` (for a machine started with `-S`).
    ///
    /// # Errors
    /// When the socket does not answer as QMP does.
    pub fn connect(socket: &Path, resume: bool, patience: Duration) -> Result<Self, String> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < patience => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("QMP socket {}: {e}", socket.display())),
            }
        };
        let mut writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        reader
            .read_line(&mut greeting)
            .map_err(|e| format!("QMP greeting: {e}"))?;
        if !greeting.contains("\"QMP\"") {
            return Err(format!("not a QMP greeting: {}", greeting.trim()));
        }
        writer
            .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
            .map_err(|e| format!("QMP: {e}"))?;
        if resume {
            writer
                .write_all(b"{\"execute\": \"cont\"}\n")
                .map_err(|e| format!("QMP: {e}"))?;
        }
        let thread = std::thread::spawn(move || {
            let _keep = writer;
            let mut reason = None;
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(r) = shutdown_reason(&line) {
                    reason = Some(r.to_string());
                }
            }
            reason
        });
        Ok(Watcher { thread })
    }

    /// The last shutdown reason, once QEMU has exited (the socket closed).
    pub fn reason(self) -> Option<String> {
        self.thread.join().ok().flatten()
    }
}

/// How an interactive run ended, for `cargo xtask run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel left with the success code, or the user quit.
    Clean(String),
    /// A crash or a failure, said in words.
    Crash(String),
}

/// Judges QEMU's exit `code` (None: killed by a signal) and the shutdown
/// `reason` from QMP (None: no event, or no QMP).
pub fn judge_exit(code: Option<i32>, reason: Option<&str>) -> Verdict {
    use crate::qemu::{EXIT_FAIL, EXIT_PASS};
    match (code, reason) {
        (Some(EXIT_PASS), _) => Verdict::Clean("the kernel exited with the success code".into()),
        (Some(EXIT_FAIL), _) => Verdict::Crash(
            "the kernel exited with the failure code (a VM that did not end cleanly, a panic \
             or a fatal exception: see the last console lines)"
                .into(),
        ),
        (Some(0), Some("guest-reset")) => Verdict::Crash(
            "the machine reset (a triple fault; -no-reboot turned it into an exit): \
             see the last console lines"
                .into(),
        ),
        (Some(0), Some("host-qmp-quit")) => Verdict::Clean("QEMU was quit".into()),
        (Some(0), Some("host-signal")) => Verdict::Clean("QEMU was stopped by a signal".into()),
        (Some(0), Some("guest-shutdown")) => {
            Verdict::Clean("the machine powered itself off".into())
        }
        (Some(0), Some(other)) => Verdict::Crash(format!("QEMU shut down: {other}")),
        (Some(0), None) => Verdict::Crash(
            "QEMU exited with status 0 and no shutdown event: a triple fault cannot be told \
             from a quit"
                .into(),
        ),
        (Some(c), _) => Verdict::Crash(format!("QEMU ended with exit status {c}")),
        (None, _) => Verdict::Crash("QEMU was killed by a signal".into()),
    }
}

/// Runs `machine` with the console on this process's stdin and stdout (as
/// `cargo xtask run` does) and a QMP watcher on a socket in `scratch`,
/// until QEMU exits; then judges how it ended ([`judge_exit`]). `announce`
/// runs once QEMU is started, before the guest runs (for a banner).
///
/// # Errors
/// When QEMU cannot be started or watched (it is killed then).
pub fn run_watched(
    machine: &crate::qemu::Machine,
    scratch: &Path,
    announce: impl FnOnce(&std::process::Command),
) -> Result<Verdict, String> {
    std::fs::create_dir_all(scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let socket = scratch.join(format!("qmp-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut machine = machine.clone();
    machine.qmp = Some(socket.clone());
    let mut cmd = machine.command(scratch)?;
    announce(&cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", machine.qemu))?;
    // QEMU waits halted (-S) until the watcher listens, so a triple fault
    // in the first instructions is seen too. QEMU may also end at once (a
    // bad argument): then its status says why.
    let start = Instant::now();
    let watcher = loop {
        match Watcher::connect(&socket, !machine.gdb, Duration::from_millis(100)) {
            Ok(w) => break w,
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Ok(judge_exit(status.code(), None));
                }
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("cannot watch QEMU: {e}"));
                }
            }
        }
    };
    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
    let reason = watcher.reason();
    let _ = std::fs::remove_file(&socket);
    Ok(judge_exit(status.code(), reason.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_events_as_qemu_7_2_prints_them() {
        let reset = r#"{"timestamp": {"seconds": 1796700408, "microseconds": 879408}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}"#;
        assert_eq!(shutdown_reason(reset), Some("guest-reset"));
        let quit = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#;
        assert_eq!(shutdown_reason(quit), Some("host-qmp-quit"));
        assert_eq!(shutdown_reason(r#"{"return": {}}"#), None);
        assert_eq!(
            shutdown_reason(r#"{"event": "STOP", "data": {"reason": "x"}}"#),
            None
        );
        assert_eq!(shutdown_reason("{\"event\":\"SHUTDOWN\"}"), Some("unknown"));
    }

    /// A QEMU that ends before its monitor answers (a bad argument) is
    /// judged by its status, without waiting out the watcher's patience.
    #[test]
    fn a_qemu_that_ends_at_once_is_judged_by_its_status() {
        use crate::qemu::{Accel, Firmware, Machine};
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("thermocline-qmp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join("qemu");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'qemu: -bogus: invalid option' >&2\nexit 1\n",
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut m = Machine::new("unused.img", Firmware::Bios, Accel::Tcg);
        m.qemu = script.to_string_lossy().into_owned();
        let start = Instant::now();
        let verdict = run_watched(&m, &dir, |_| {}).expect("judged");
        assert_eq!(
            verdict,
            Verdict::Crash("QEMU ended with exit status 1".into())
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_triple_fault_is_a_crash_and_a_quit_is_not() {
        assert!(matches!(
            judge_exit(Some(0), Some("guest-reset")),
            Verdict::Crash(w) if w.contains("triple fault")
        ));
        assert!(matches!(judge_exit(Some(0), None), Verdict::Crash(_)));
        assert!(matches!(
            judge_exit(Some(0), Some("host-qmp-quit")),
            Verdict::Clean(_)
        ));
        assert!(matches!(judge_exit(Some(33), None), Verdict::Clean(_)));
        assert!(matches!(judge_exit(Some(35), None), Verdict::Crash(_)));
        assert!(matches!(judge_exit(Some(1), None), Verdict::Crash(_)));
        assert!(matches!(judge_exit(None, None), Verdict::Crash(_)));
    }
}
