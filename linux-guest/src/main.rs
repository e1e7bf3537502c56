//! `workload`: wires the library to the clock, stdout and
//! `/proc/self/pagemap`. Output format: docs/guests.md, "The Linux workload".

use linux_guest::options::{self, Command, Length, Options};
use linux_guest::{PAGE_BYTES, Workload, hot_pages, hot_window, pagemap, phase_of, window_range};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Instant;

const MIB: f64 = (1 << 20) as f64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("outb") {
        return outb_command(&args[1..]);
    }
    match options::parse(args) {
        Ok(Command::Help) => {
            print!("{}", options::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(o)) => run(&o),
        Err(e) => {
            eprintln!("workload: {e}");
            ExitCode::from(2)
        }
    }
}

/// `workload outb PORT VALUE`: writes byte VALUE to I/O port PORT (both
/// decimal or 0x-hex), for Thermocline's exit device (0xF4: end the VM
/// with that status; 0xF5: a mark line with the hypervisor's clock;
/// docs/guests.md). Needs root (ioperm). Debian's kernel has no
/// /dev/port, so a shell cannot do this.
fn outb_command(args: &[String]) -> ExitCode {
    let parse = |s: &String| {
        let s = s.as_str();
        match s.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    };
    let (Some(port), Some(value)) = (
        args.first()
            .and_then(parse)
            .and_then(|p| u16::try_from(p).ok()),
        args.get(1)
            .and_then(parse)
            .and_then(|v| u8::try_from(v).ok()),
    ) else {
        eprintln!("workload: usage: workload outb PORT VALUE (PORT < 0x10000, VALUE < 256)");
        return ExitCode::from(2);
    };
    match outb(port, value) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: outb {port:#x}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `value` to `port` after asking the kernel for access to it.
#[cfg(target_arch = "x86_64")]
fn outb(port: u16, value: u8) -> Result<(), std::io::Error> {
    /// ioperm(2) on x86-64.
    const SYS_IOPERM: u64 = 173;
    let ret: i64;
    // SAFETY: ioperm(port, 1, 1) changes only this process's I/O bitmap;
    // the syscall clobbers RCX and R11 (declared) and touches no memory of
    // ours.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") SYS_IOPERM as i64 => ret,
            in("rdi") u64::from(port), in("rsi") 1u64, in("rdx") 1u64,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(
            i32::try_from(-ret).unwrap_or(i32::MAX),
        ));
    }
    // SAFETY: ioperm granted this port; OUT touches no memory. What the
    // device does with the byte is the caller's intent.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn outb(_port: u16, _value: u8) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("port I/O exists only on x86-64"))
}

/// Prints the frames of the hot window (format in docs/guests.md).
fn report_hot_pfns(w: &Workload<'_>, pages: impl Iterator<Item = usize>, phase: u64) {
    let file = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => {
            println!("workload: hot-pfns phase={phase} error=\"/proc/self/pagemap: {e}\"");
            return;
        }
    };
    let base = w.region_addr();
    let mut entries = Vec::new();
    let mut count = 0u64;
    for page in pages {
        count += 1;
        let vpn = (base + page * PAGE_BYTES) / PAGE_BYTES;
        let mut entry = [0u8; 8];
        match file.read_exact_at(&mut entry, vpn as u64 * 8) {
            Ok(()) => entries.push(u64::from_le_bytes(entry)),
            Err(e) => {
                println!("workload: hot-pfns phase={phase} error=\"pagemap read: {e}\"");
                return;
            }
        }
    }
    let frames = pagemap::coalesce(entries);
    println!(
        "workload: hot-pfns phase={phase} pages={count} frames={} hidden={} not_present={} runs={}",
        frames.frames(),
        frames.hidden,
        frames.not_present,
        frames.runs.len()
    );
    for run in &frames.runs {
        println!("workload: hot-pfn-run {:#x} {}", run.first_pfn, run.pages);
    }
    println!("workload: hot-pfns-end phase={phase}");
    if frames.hidden > 0 {
        println!("workload: note: frames hidden by the kernel; run as root (CAP_SYS_ADMIN)");
    }
}

fn run(o: &Options) -> ExitCode {
    let bytes = (o.size_mib as usize) << 20;
    let total_pages = bytes / PAGE_BYTES;
    let hot = hot_pages(total_pages, o.hot_percent);
    let length = match o.length {
        Length::Passes(n) => format!("passes={n}"),
        Length::Seconds(s) => format!("seconds={s}"),
    };
    println!(
        "workload: size_mib={} hot_percent={} hot_pages={hot} pages={total_pages} phases={} {length} seed={}",
        o.size_mib, o.hot_percent, o.phases, o.seed
    );
    // One page more than asked, so the region can start on a page boundary.
    let mut buf = vec![0u8; bytes + PAGE_BYTES];
    let Some(region) = linux_guest::page_aligned(&mut buf, bytes) else {
        eprintln!("workload: cannot align the region");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let mut w = Workload::new(region, o.seed);
    println!(
        "workload: filled {} MiB in {:.3} s",
        o.size_mib,
        start.elapsed().as_secs_f64()
    );

    let run_start = Instant::now();
    let mut phase = None;
    let mut passes = 0u64;
    loop {
        let now = match o.length {
            Length::Passes(n) if passes >= n => break,
            Length::Passes(n) => phase_of(passes, n, o.phases),
            Length::Seconds(s) => {
                let elapsed_ms = run_start.elapsed().as_millis() as u64;
                if elapsed_ms >= s * 1000 {
                    break;
                }
                phase_of(elapsed_ms, s * 1000, o.phases)
            }
        };
        let new_phase = phase != Some(now);
        if new_phase {
            let range = window_range(total_pages, hot, now);
            println!(
                "workload: phase {now}: hot pages {}..{} (of {total_pages}, wrapping)",
                range.start, range.end
            );
            phase = Some(now);
        }
        w.hot_pass(hot_window(total_pages, hot, now));
        passes += 1;
        if new_phase && o.report_hot_pfns {
            report_hot_pfns(&w, hot_window(total_pages, hot, now), now);
        }
        if hot == 0 {
            // Nothing to touch: do not spin.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let seconds = run_start.elapsed().as_secs_f64();

    let verify_start = Instant::now();
    w.verify_all();
    println!(
        "workload: verified {} MiB in {:.3} s",
        o.size_mib,
        verify_start.elapsed().as_secs_f64()
    );
    for m in &w.first_mismatches {
        println!(
            "workload: mismatch offset={:#x} expected={:#04x} found={:#04x}",
            m.offset, m.expected, m.found
        );
    }
    let hot_mib = (w.hot_page_visits * PAGE_BYTES as u64) as f64 / MIB;
    println!(
        "workload: result mismatches={} passes={passes} hot_mib={hot_mib:.1} seconds={seconds:.3} hot_mib_per_s={:.1}",
        w.mismatch_bytes,
        if seconds > 0.0 {
            hot_mib / seconds
        } else {
            0.0
        }
    );
    if w.mismatch_bytes == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
