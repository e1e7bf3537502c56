//! Full-system Bochs: the VMX bed. Boots a scenario's BIOS image on Debian's
//! `bochs` (2.7) with N emulated Skylake-X CPUs (VMX with EPT and EPT A/D,
//! VPID, unrestricted guest, x2APIC) and judges its serial console with the
//! same protocol and verdicts as the QEMU runner ([`crate::runner`]).
//!
//! How Debian's build has to be driven (measured, `TESTBEDS.md` section 4):
//! - It has no headless display and starts in its debugger: run it under
//!   `xvfb-run` with `display_library: x`, stdin from /dev/null, and
//!   `-rc FILE` holding one `c` (continue).
//! - It reads a flat disk as whole cylinders of 16 heads * 63 sectors and
//!   ignores a partial last one: every run boots a private copy of the image
//!   padded to [`CYLINDER_BYTES`] (the image itself is never written).
//! - There is no exit device (QEMU's port 0xF4 does nothing), so a run ends
//!   on the console: at the scenario's `[summary]` line (`failed=0` is a
//!   pass, anything else a failure), at a `[fatal]` line (a panic or fault
//!   outside a scenario), when Bochs panics (its log gets a `>>PANIC<<`
//!   line; a triple fault is one, with `reset_on_triple_fault=0`, the
//!   analogue of QEMU's `-no-reboot`), when Bochs exits, or at the deadline.
//!   The kernel then halts; the runner kills Bochs. Powering the machine
//!   off through ACPI would end the process but carries no verdict, and
//!   waiting for it would only add time, so the kernel does not.
//! - `xvfb-run` starts Xvfb beside Bochs; both run in a process group of
//!   their own that the runner ends as a whole ([`ProcessGroup`]).
//!
//! Time: `cpu: ips=` sets how many instructions make one emulated second
//! (the TSC and the APIC timer run at that rate) and `clock: sync=none`
//! ties guest time to instructions only, never to the host clock. Guest time
//! therefore runs at (instruction rate / [`IPS`]) of wall time, and what a
//! guest sees does not depend on how loaded the host is: a busy host only
//! stretches the wall time. [`IPS`] is the measured per-CPU rate of an idle
//! host (about 55 M/s per CPU with two CPUs), so a guest second is about a
//! wall second; a lower value would make every tick and aging interval
//! cheaper in instructions than on hardware (a 16 k-page aging pass takes
//! about 10 guest ms at this rate).

use crate::runner::{Line, Outcome, Run, scratch_dir};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Bochs reads a flat disk as whole cylinders of 16 heads * 63 sectors of
/// 512 bytes.
pub const CYLINDER_BYTES: u64 = 16 * 63 * 512;

/// Emulated instructions per guest second (see the module docs).
pub const IPS: u64 = 50_000_000;

/// The Bochs BIOS and VGA BIOS of Debian's `bochsbios` and `vgabios`.
pub const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
/// See [`BIOS`].
pub const VGA_BIOS: &str = "/usr/share/vgabios/vgabios.bin";

/// Bochs' X display plugin (package `bochs-x`).
pub const X_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_x_gui.so";

/// The Debian packages this bed needs (Debian 12: Bochs 2.7).
pub const APT_PACKAGES: [&str; 6] = ["bochs", "bochs-x", "bochsbios", "vgabios", "xvfb", "xauth"];

/// The CPU model: Skylake-X offers VMX with EPT, EPT A/D, VPID,
/// unrestricted guest, the preemption timer and x2APIC.
pub const CPU_MODEL: &str = "corei7_skylake_x";

/// The console line that marks the end of a scenario.
const SUMMARY: &str = "[summary] ";
/// The console line of a panic or fatal fault outside any scenario
/// (`kernel::testing::fail_and_exit`).
const FATAL: &str = "[fatal] ";
/// What Bochs writes to its log when it panics (a triple fault among them).
pub const BOCHS_PANIC: &str = ">>PANIC<<";

/// One Bochs machine booting one BIOS image.
#[derive(Clone, Debug)]
pub struct BochsMachine {
    /// The BIOS disk image (`<kernel>.bios.img`), read only.
    pub image: PathBuf,
    /// Number of CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Instructions per emulated second.
    pub ips: u64,
    /// The program that starts Bochs under a virtual X display
    /// (`xvfb-run`; the runner's own tests put a script here).
    pub launcher: String,
}

/// The files of one run, in its scratch directory.
#[derive(Clone, Debug)]
pub struct RunFiles {
    /// The padded copy of the image that Bochs boots.
    pub disk: PathBuf,
    /// The configuration.
    pub bochsrc: PathBuf,
    /// Debugger commands read at start (`c`).
    pub commands: PathBuf,
    /// The serial console (COM1).
    pub com1: PathBuf,
    /// Bochs' own log.
    pub log: PathBuf,
}

impl RunFiles {
    /// The files' paths in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            disk: dir.join("disk.img"),
            bochsrc: dir.join("bochsrc"),
            commands: dir.join("commands"),
            com1: dir.join("com1.txt"),
            log: dir.join("bochs.log"),
        }
    }
}

/// Distinct X display numbers for concurrent runs in one process; `xvfb-run
/// -a` then searches upward from there for a free one, so two processes
/// rarely start their search at the same number either.
fn display_hint() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 16;
    100 + (std::process::id() % 50) * 16 + n
}

impl BochsMachine {
    /// A machine with the bed's defaults: two CPUs, 256 MiB, [`IPS`].
    pub fn new(image: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            cpus: 2,
            mem_mib: 256,
            ips: IPS,
            launcher: "xvfb-run".into(),
        }
    }

    /// The configuration for a run whose files are `files`.
    pub fn bochsrc(&self, files: &RunFiles) -> String {
        format!(
            "\
# Written by thermocline-tests (tests/src/bochs.rs) for one run.
megs: {mem}
cpu: model={CPU_MODEL}, count={cpus}, ips={ips}, reset_on_triple_fault=0
clock: sync=none, time0=local
romimage: file={BIOS}
vgaromimage: file={VGA_BIOS}
ata0-master: type=disk, path={disk}, mode=flat
boot: disk
display_library: x
mouse: enabled=0
com1: enabled=1, mode=file, dev={com1}
log: {log}
panic: action=fatal
error: action=report
",
            mem = self.mem_mib,
            cpus = self.cpus,
            ips = self.ips,
            disk = files.disk.display(),
            com1 = files.com1.display(),
            log = files.log.display(),
        )
    }

    /// Writes the run's files into `dir` (created) and returns the command
    /// that starts Bochs with them.
    ///
    /// # Errors
    /// When the image cannot be read or a file cannot be written.
    pub fn prepare(&self, dir: &Path) -> Result<(Command, RunFiles), String> {
        let files = RunFiles::in_dir(dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::copy(&self.image, &files.disk)
            .map_err(|e| format!("cannot copy {}: {e}", self.image.display()))?;
        let len = std::fs::metadata(&files.disk)
            .map_err(|e| format!("{}: {e}", files.disk.display()))?
            .len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&files.disk)
            .and_then(|f| f.set_len(padded_len(len)))
            .map_err(|e| format!("cannot pad {}: {e}", files.disk.display()))?;
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        write(&files.bochsrc, &self.bochsrc(&files))?;
        write(&files.commands, "c\n")?;
        // Bochs creates the console file; an empty one now lets the reader
        // open it at once.
        write(&files.com1, "")?;
        let mut cmd = Command::new(&self.launcher);
        // The X authority file in the scratch dir: left to itself, xvfb-run
        // makes a `mktemp -d` directory in /tmp that it removes only when it
        // exits normally, not when the runner ends it.
        cmd.args(["-a", "-n", &display_hint().to_string(), "-f"])
            .arg(dir.join("Xauthority"))
            .args(["bochs", "-q", "-rc"])
            .arg(&files.commands)
            .arg("-f")
            .arg(&files.bochsrc)
            .current_dir(dir);
        Ok((cmd, files))
    }
}

/// `len` rounded up to whole cylinders.
pub fn padded_len(len: u64) -> u64 {
    len.div_ceil(CYLINDER_BYTES) * CYLINDER_BYTES
}

/// What the bed's packages lack on this machine, by Debian package name.
pub fn missing_packages() -> Vec<&'static str> {
    let on_path = |program: &str| {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    };
    let mut missing = Vec::new();
    for (package, present) in [
        ("bochs", on_path("bochs")),
        ("bochs-x", Path::new(X_PLUGIN).is_file()),
        ("bochsbios", Path::new(BIOS).is_file()),
        ("vgabios", Path::new(VGA_BIOS).is_file()),
        ("xvfb", on_path("xvfb-run") && on_path("Xvfb")),
        ("xauth", on_path("xauth")),
    ] {
        if !present {
            missing.push(package);
        }
    }
    missing
}

/// A child that leads its own process group (`xvfb-run` with Xvfb and
/// Bochs under it); dropping it ends the whole group.
#[derive(Debug)]
pub struct ProcessGroup(Child);

/// `kill(2)` and the two signals used here (Linux numbers).
mod sys {
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
    unsafe extern "C" {
        pub fn kill(pid: i32, sig: i32) -> i32;
    }
}

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new process group.
    ///
    /// # Errors
    /// As [`Command::spawn`].
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).spawn().map(Self)
    }

    /// The leader's exit status if it has ended.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }

    /// Sends `sig` to the group; whether any member was there to get it
    /// (signal 0 only asks).
    fn signal(&self, sig: i32) -> bool {
        let Ok(pgid) = i32::try_from(self.0.id()) else {
            return false;
        };
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (made by `process_group(0)`); it touches no memory of
        // ours. The group id stays taken while any member lives, and the
        // moments between reaping the leader and the group's last member
        // ending are far too short for the id to be reused.
        unsafe { sys::kill(-pgid, sig) == 0 }
    }

    /// Ends the group: SIGTERM first, so that Xvfb removes its lock file
    /// and xvfb-run its authority entry, then SIGKILL for whatever is left
    /// after a short grace (Bochs stopped in its debugger ignores SIGTERM).
    /// The grace waits for the whole group, not only its leader: xvfb-run
    /// (the leader) dies at once, and a SIGKILL then would catch Xvfb
    /// before it removed `/tmp/.X<n>-lock` (measured: stale locks left).
    pub fn end(&mut self) {
        self.signal(sys::SIGTERM);
        let grace = Instant::now() + Duration::from_secs(2);
        while Instant::now() < grace {
            // Reap the leader once it is gone, so only live members count.
            let _ = self.0.try_wait();
            if !self.signal(0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(sys::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.end();
    }
}

/// Kills `pid` and every process below it (for a child that shares the
/// terminal's process group, as `cargo xtask run --bochs` keeps it so that
/// Ctrl-C reaches Bochs). Descendants are found through `/proc/*/stat`.
pub fn kill_tree(pid: u32) {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and `)`.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    for p in tree {
        if let Ok(p) = i32::try_from(p) {
            // SAFETY: kill(2) on a process id; it touches no memory of ours.
            // A process that ended meanwhile gives ESRCH; its id cannot be
            // reused by an unrelated process before our child is reaped for
            // the root, and the others are its descendants of a moment ago.
            unsafe { sys::kill(p, sys::SIGKILL) };
        }
    }
}

/// Reads a file as it grows, line by line (bytes, converted lossily; a
/// trailing `\r` is dropped).
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Follows `path` from its start (it may not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            pos: 0,
            partial: Vec::new(),
        }
    }

    /// The complete lines added since the last call.
    pub fn lines(&mut self) -> Vec<String> {
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.path)
            && f.seek(SeekFrom::Start(self.pos)).is_ok()
            && let Ok(n) = f.read_to_end(&mut bytes)
        {
            self.pos += n as u64;
        }
        self.partial.extend_from_slice(&bytes);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            out.push(to_text(&line));
        }
        out
    }

    /// The last line if it has no line ending yet (the end of a run).
    pub fn rest(&mut self) -> Option<String> {
        let mut out = self.lines();
        if !self.partial.is_empty() {
            out.push(to_text(&std::mem::take(&mut self.partial)));
        }
        out.pop().filter(|l| !l.is_empty())
    }
}

fn to_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

/// How often the console and the log are read for new lines.
const POLL: Duration = Duration::from_millis(20);

/// Boots `machine` and runs it to its end (see the module docs).
pub fn run(machine: &BochsMachine, timeout: Duration) -> Run {
    run_while(machine, timeout, |_| false)
}

/// Like [`run`], but the run ends as [`Outcome::Stopped`] at the first
/// console line for which `stop` holds (for the hypervisor, which never ends).
pub fn run_while(machine: &BochsMachine, timeout: Duration, stop: impl Fn(&str) -> bool) -> Run {
    let scratch = scratch_dir();
    let result = run_in(machine, timeout, &scratch, &stop);
    // Best effort: a leftover scratch directory only costs disk space.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The verdict a console line carries, if it ends the run.
fn verdict(line: &str) -> Option<Outcome> {
    if let Some(rest) = line.strip_prefix(SUMMARY) {
        let failed = rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("failed="))
            .and_then(|n| n.parse::<usize>().ok());
        return Some(if failed == Some(0) {
            Outcome::Passed
        } else {
            Outcome::Failed
        });
    }
    line.starts_with(FATAL).then_some(Outcome::Failed)
}

fn run_in(
    machine: &BochsMachine,
    timeout: Duration,
    scratch: &Path,
    stop: &dyn Fn(&str) -> bool,
) -> Run {
    let not_started = |command: String, e: String| Run {
        outcome: Outcome::NotStarted(e),
        console: Vec::new(),
        elapsed: Duration::ZERO,
        command,
        emulator: "Bochs",
    };
    let (mut cmd, files) = match machine.prepare(scratch) {
        Ok(prepared) => prepared,
        Err(e) => return not_started(machine.launcher.clone(), e),
    };
    let command = format!("{cmd:?}");
    // Bochs' own output (its banner, the debugger's prompt) goes to a file
    // beside the log: it is noise on a pass, and a crash shows Bochs' panic
    // line from the log.
    let stdout = std::fs::File::create(scratch.join("bochs.out"));
    let (Ok(out), Ok(err)) = (
        stdout.as_ref().map(|f| f.try_clone()),
        stdout.as_ref().map(|f| f.try_clone()),
    ) else {
        return not_started(command, "cannot create bochs.out".into());
    };
    let (Ok(out), Ok(err)) = (out, err) else {
        return not_started(command, "cannot create bochs.out".into());
    };
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let start = Instant::now();
    let mut child = match ProcessGroup::spawn(&mut cmd) {
        Ok(child) => child,
        Err(e) => {
            return not_started(
                command,
                format!(
                    "{e} (is the bed installed? `apt-get install {}`)",
                    APT_PACKAGES.join(" ")
                ),
            );
        }
    };
    let mut console_tail = Tail::new(&files.com1);
    let mut log_tail = Tail::new(&files.log);
    let mut console: Vec<Line> = Vec::new();
    let deadline = start + timeout;
    let outcome = 'run: loop {
        for text in console_tail.lines() {
            let ends = if stop(&text) {
                Some(Outcome::Stopped)
            } else {
                verdict(&text)
            };
            console.push(Line {
                at: start.elapsed(),
                text,
            });
            if let Some(outcome) = ends {
                break 'run outcome;
            }
        }
        for text in log_tail.lines() {
            if text.contains(BOCHS_PANIC) {
                console.push(Line {
                    at: start.elapsed(),
                    text: format!("bochs: {text}"),
                });
                break 'run Outcome::Crashed(None);
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                // Read what the console got before Bochs ended.
                for text in console_tail.lines() {
                    console.push(Line {
                        at: start.elapsed(),
                        text,
                    });
                }
                break Outcome::Crashed(status.code());
            }
            Ok(None) => {}
            Err(e) => break Outcome::NotStarted(format!("waiting for Bochs: {e}")),
        }
        if Instant::now() >= deadline {
            break Outcome::TimedOut(timeout);
        }
        std::thread::sleep(POLL);
    };
    let elapsed = start.elapsed();
    drop(child);
    // A line the console had not finished (a crash mid-line) still shows.
    if let Some(text) = console_tail.rest() {
        console.push(Line { at: elapsed, text });
    }
    Run {
        outcome,
        console,
        elapsed,
        command,
        emulator: "Bochs",
    }
}

#[cfg(test)]
mod tests {
    //! The runner against fake launchers: shell scripts that write a console
    //! file and a log the way Bochs does, so verdicts, deadlines and the
    //! process-group kill are tested on the host in milliseconds.
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake `xvfb-run`: `$COM1` and `$LOG` are the run's files (read from
    /// the bochsrc the runner wrote, in the working directory).
    fn fake(name: &str, body: &str) -> BochsMachine {
        let dir =
            std::env::temp_dir().join(format!("thermocline-fake-bochs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join(name);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nCOM1=$(sed -n 's/^com1: .*dev=//p' bochsrc)\n\
                 LOG=$(sed -n 's/^log: //p' bochsrc)\n{body}\n"
            ),
        )
        .expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let image = dir.join("image.img");
        std::fs::write(&image, [0u8; 1000]).expect("image");
        let mut machine = BochsMachine::new(image);
        machine.launcher = script.to_string_lossy().into_owned();
        machine
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn summary_with_no_failure_is_a_pass_and_ends_the_run() {
        let m = fake(
            "pass",
            "printf '[scenario] s cases=1\\r\\n[test] a ... ok\\r\\n[summary] s passed=1 failed=0\\r\\n' >> $COM1; exec sleep 60",
        );
        let start = Instant::now();
        let r = run(&m, 30 * SECOND);
        assert_eq!(r.outcome, Outcome::Passed, "{r}");
        assert!(r.report().all_passed(), "{r}");
        assert_eq!(r.console.len(), 3);
        assert!(start.elapsed() < 10 * SECOND, "ended at the summary: {r}");
    }

    #[test]
    fn a_failed_case_or_fatal_line_is_a_failure() {
        let m = fake(
            "fail",
            "echo '[test] a ... FAILED' >> $COM1; echo '[summary] s passed=0 failed=1' >> $COM1; exec sleep 60",
        );
        let r = run(&m, 30 * SECOND);
        assert_eq!(r.outcome, Outcome::Failed, "{r}");
        assert_eq!(r.report().failed, ["a"]);
        let m = fake(
            "fatal",
            "echo '[fatal] panic: stopping' >> $COM1; exec sleep 60",
        );
        assert_eq!(run(&m, 30 * SECOND).outcome, Outcome::Failed);
    }

    #[test]
    fn a_bochs_panic_is_a_crash_with_the_console_tail() {
        let m = fake(
            "panic",
            "i=0; while [ $i -lt 50 ]; do echo line$i >> $COM1; i=$((i+1)); done; printf 'half a li' >> $COM1; \
             echo '00194317700p[CPU0  ] >>PANIC<< exception(): 3rd (13) exception with no resolution' >> $LOG; exec sleep 60",
        );
        let r = run(&m, 30 * SECOND);
        assert_eq!(r.outcome, Outcome::Crashed(None), "{r}");
        let text = r.to_string();
        assert!(text.contains("crashed: Bochs"), "{text}");
        assert!(text.contains("3rd (13) exception"), "{text}");
        assert!(text.contains("| half a li\n"), "{text}");
        assert_eq!(
            r.tail().lines().count(),
            crate::runner::TAIL_LINES,
            "{text}"
        );
    }

    #[test]
    fn bochs_exiting_is_a_crash() {
        let m = fake("exit", "echo booting >> $COM1; exit 1");
        let r = run(&m, 30 * SECOND);
        assert_eq!(r.outcome, Outcome::Crashed(Some(1)), "{r}");
        assert!(r.saw("booting"), "{r}");
    }

    #[test]
    fn a_hang_times_out_and_the_whole_group_is_killed() {
        let dir =
            std::env::temp_dir().join(format!("thermocline-bochs-pid-{}", std::process::id()));
        let pid_file = dir.with_extension("pid");
        // A grandchild that ignores SIGTERM stands in for Bochs stopped in its
        // debugger: only the group's SIGKILL ends it.
        let m = fake(
            "hang",
            &format!(
                "echo started >> $COM1; sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 60' & wait",
                pid_file.display()
            ),
        );
        let start = Instant::now();
        let r = run(&m, SECOND);
        assert_eq!(r.outcome, Outcome::TimedOut(SECOND), "{r}");
        assert!(start.elapsed() < 10 * SECOND, "killed promptly: {r}");
        assert!(r.saw("started"));
        let pid = std::fs::read_to_string(&pid_file).expect("grandchild pid");
        let _ = std::fs::remove_file(&pid_file);
        // SIGKILL is delivered asynchronously: give it a moment to land.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        let until = Instant::now() + 5 * SECOND;
        while alive() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let alive = alive();
        assert!(!alive, "grandchild {pid} survived the group kill");
    }

    #[test]
    fn run_while_stops_at_the_awaited_line() {
        let m = fake(
            "idle",
            "echo booting >> $COM1; echo 'Thermocline 0.1.0: banner' >> $COM1; exec sleep 60",
        );
        let r = run_while(&m, 30 * SECOND, |l| l.starts_with("Thermocline"));
        assert_eq!(r.outcome, Outcome::Stopped, "{r}");
    }

    #[test]
    fn the_disk_copy_is_padded_to_whole_cylinders_and_the_config_names_it() {
        let m = fake("unused", "true");
        let dir =
            std::env::temp_dir().join(format!("thermocline-bochs-prep-{}", std::process::id()));
        let (cmd, files) = m.prepare(&dir).expect("prepare");
        assert_eq!(
            std::fs::metadata(&files.disk).expect("disk").len(),
            CYLINDER_BYTES
        );
        let rc = std::fs::read_to_string(&files.bochsrc).expect("bochsrc");
        assert!(
            rc.contains(
                "cpu: model=corei7_skylake_x, count=2, ips=50000000, reset_on_triple_fault=0"
            ),
            "{rc}"
        );
        assert!(
            rc.contains(&format!("path={}, mode=flat", files.disk.display())),
            "{rc}"
        );
        assert!(rc.contains("clock: sync=none"), "{rc}");
        assert_eq!(std::fs::read_to_string(&files.commands).expect("rc"), "c\n");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..2], ["-a", "-n"]);
        assert_eq!(args[3], "-f");
        assert_eq!(&args[5..8], ["bochs", "-q", "-rc"]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(padded_len(CYLINDER_BYTES + 1), 2 * CYLINDER_BYTES);
        assert_eq!(padded_len(2 * CYLINDER_BYTES), 2 * CYLINDER_BYTES);
    }

    #[test]
    fn tail_reads_growing_files_line_by_line() {
        let path =
            std::env::temp_dir().join(format!("thermocline-tail-{}.txt", std::process::id()));
        let mut t = Tail::new(&path);
        assert!(t.lines().is_empty(), "no file yet");
        std::fs::write(&path, "one\r\ntw").expect("write");
        assert_eq!(t.lines(), ["one"]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut f, b"o\nthree").expect("append");
        assert_eq!(t.lines(), ["two"]);
        assert_eq!(t.rest().as_deref(), Some("three"));
        let _ = std::fs::remove_file(&path);
    }
}
