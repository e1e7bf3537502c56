//! Boot checks of the Linux assets in plain QEMU (TCG, no Thermocline).
//!
//! - [`boot_qemu`]: QEMU's own loader (`-kernel -initrd`, after SeaBIOS).
//! - [`boot_plan`]: the loader Thermocline will use, `hvcore::linux_boot`,
//!   with no firmware at all: its `(GPA, bytes)` writes go into guest RAM
//!   through QEMU's generic loader (`-device loader,file=..,addr=..`), and a
//!   64 KiB "BIOS" of our own ([`entry_rom`]) takes the CPU from the reset
//!   vector straight to the plan's 64-bit entry state. The guest then sees
//!   exactly what a Thermocline VM will: our e820 map, our page tables, our
//!   `boot_params`, no BIOS data.
//!
//! Both run `/init`'s smoke test (`thermocline_test=smoke`) and check its
//! lines; the console goes to a log file beside the initramfs.

use super::{Assets, CMDLINE};
use hvcore::linux_boot::{LinuxBoot, LinuxBootConfig, LinuxEntryState};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// RAM of the checked VM.
const RAM_MIB: u64 = 256;

/// Boots the assets with QEMU's `-kernel`/`-initrd` and checks the smoke test.
pub fn boot_qemu(assets: &Assets, timeout: Duration) -> Result<(), String> {
    let mut cmd = Command::new(thermocline_tests::qemu::Machine::program());
    cmd.args(["-M", "pc", "-cpu", "max", "-accel", "tcg", "-m"])
        .arg(format!("{RAM_MIB}M"))
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(&assets.initramfs)
        .arg("-append")
        .arg(format!("{CMDLINE} thermocline_test=smoke"));
    let log = assets.initramfs.with_file_name("boot-qemu.log");
    run_smoke(cmd, timeout, &log, "QEMU's -kernel loader after SeaBIOS")
}

/// Boots the assets through `hvcore::linux_boot`'s plan with no firmware.
pub fn boot_plan(assets: &Assets, timeout: Duration) -> Result<(), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let image = read(&assets.kernel)?;
    let initrd = read(&assets.initramfs)?;
    let cmdline = format!("{CMDLINE} thermocline_test=smoke");
    let boot = LinuxBoot::plan(&LinuxBootConfig {
        kernel_image: &image,
        initrd: &initrd,
        cmdline: cmdline.as_bytes(),
        ram_bytes: RAM_MIB << 20,
    })
    .map_err(|e| format!("{}: {e}", assets.kernel.display()))?;
    let dir = assets.initramfs.with_file_name("plan");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new(thermocline_tests::qemu::Machine::program());
    cmd.args([
        "-M",
        "pc",
        "-nodefaults",
        "-cpu",
        "max",
        "-accel",
        "tcg",
        "-m",
    ])
    .arg(format!("{RAM_MIB}M"))
    .args(["-display", "none", "-serial", "stdio", "-no-reboot"]);
    for (i, w) in boot.writes().enumerate() {
        let file = dir.join(format!("{i}-{:#x}.bin", w.gpa.as_u64()));
        std::fs::write(&file, w.bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        cmd.arg("-device").arg(format!(
            "loader,file={},addr={:#x},force-raw=on",
            file.display(),
            w.gpa.as_u64()
        ));
    }
    let rom = dir.join("entry-rom.bin");
    std::fs::write(&rom, entry_rom(boot.entry())).map_err(|e| format!("{}: {e}", rom.display()))?;
    cmd.arg("-bios").arg(&rom);
    let layout = boot.layout();
    println!(
        "    plan: kernel at {:#x} (init_size {:#x}), initrd at {:#x}, zero page {:#x}, entry RIP {:#x}",
        layout.kernel.as_u64(),
        layout.kernel_extent_bytes,
        layout.initrd.map_or(0, |g| g.as_u64()),
        layout.zero_page.as_u64(),
        boot.entry().rip
    );
    let log = assets.initramfs.with_file_name("boot-plan.log");
    run_smoke(cmd, timeout, &log, "hvcore::linux_boot's plan, no firmware")
}

/// Size of the entry ROM (QEMU wants a BIOS of whole 64 KiB blocks).
const ROM_BYTES: usize = 64 * 1024;
/// Where the ROM's last 64 KiB sit: just below 4 GiB.
const ROM_BASE: u64 = (1 << 32) - ROM_BYTES as u64;
/// The reset vector's offset in the ROM (linear 0xFFFF_FFF0).
const RESET_OFFSET: usize = ROM_BYTES - 16;
/// Where the GDTR pseudo-descriptor lies in the ROM.
const GDTR_OFFSET: usize = 0x200;
const IA32_EFER: u32 = 0xc000_0080;
/// The local APIC's registers (default base) a PC firmware sets for
/// virtual-wire mode: spurious-interrupt vector (APIC enabled, vector
/// 0xFF), LINT0 as ExtINT (the 8259's INTR), LINT1 as NMI.
const LAPIC_VIRTUAL_WIRE: [(u32, u32); 3] = [
    (0xfee0_00f0, 0x1ff),
    (0xfee0_0350, 0x700),
    (0xfee0_0360, 0x400),
];
const EFER_LMA: u64 = 1 << 10;

/// `mov eax, imm32` in 16-bit code.
fn mov_eax16(code: &mut Vec<u8>, value: u32) {
    code.extend([0x66, 0xb8]);
    code.extend(value.to_le_bytes());
}

/// A 64 KiB BIOS image that enters `entry` from the reset vector.
///
/// At reset the CPU runs 16-bit code at CS base 0xFFFF_0000, IP 0xFFF0. The
/// code (Intel SDM, "Initializing IA-32e Mode"): enable A20 (port 0x92),
/// load CR4 (PAE) and CR3 (the plan's PML4), EFER.LME, the plan's GDT, then
/// CR0 with PE and PG at once, which activates long mode; a far jump to the
/// plan's code selector enters 64-bit code, which loads the data segments,
/// puts QEMU's local APIC in virtual-wire mode as a PC firmware does (QEMU
/// passes the 8259's interrupts to the CPU only through an unmasked ExtINT
/// LINT0, even with the APIC off; a Thermocline VM has no local APIC and
/// injects the 8259's vectors itself), loads RSI, RSP and jumps to the
/// plan's RIP. Interrupts stay off throughout.
pub fn entry_rom(entry: &LinuxEntryState) -> Vec<u8> {
    let mut code = Vec::new();
    code.push(0xfa); // cli
    code.extend([0xe4, 0x92, 0x0c, 0x02, 0xe6, 0x92]); // in al,0x92; or al,2; out 0x92,al
    mov_eax16(&mut code, entry.cr4 as u32);
    code.extend([0x0f, 0x22, 0xe0]); // mov cr4, eax
    mov_eax16(&mut code, entry.cr3 as u32);
    code.extend([0x0f, 0x22, 0xd8]); // mov cr3, eax
    code.extend([0x66, 0xb9]); // mov ecx, IA32_EFER
    code.extend(IA32_EFER.to_le_bytes());
    mov_eax16(&mut code, (entry.efer & !EFER_LMA) as u32); // the CPU sets LMA
    code.extend([0x66, 0x31, 0xd2]); // xor edx, edx
    code.extend([0x0f, 0x30]); // wrmsr
    code.extend([0x2e, 0x66, 0x0f, 0x01, 0x16]); // lgdt cs:[disp16], 32-bit base
    code.extend((GDTR_OFFSET as u16).to_le_bytes());
    mov_eax16(&mut code, entry.cr0 as u32);
    code.extend([0x0f, 0x22, 0xc0]); // mov cr0, eax
    code.extend([0x66, 0xea]); // jmp far ptr16:32
    let target_at = code.len();
    code.extend([0; 4]);
    code.extend(entry.code_selector.to_le_bytes());
    let entry64 = ROM_BASE + code.len() as u64;
    code[target_at..target_at + 4].copy_from_slice(&(entry64 as u32).to_le_bytes());
    // 64-bit code from here.
    code.push(0xb8); // mov eax, data selector
    code.extend(u32::from(entry.data_selector).to_le_bytes());
    for modrm in [0xd8, 0xc0, 0xd0, 0xe0, 0xe8] {
        code.extend([0x8e, modrm]); // mov ds/es/ss/fs/gs, ax
    }
    for (register, value) in LAPIC_VIRTUAL_WIRE {
        code.push(0xb9); // mov ecx, imm32 (zero-extended into rcx)
        code.extend(register.to_le_bytes());
        code.extend([0xc7, 0x01]); // mov dword [rcx], imm32
        code.extend(value.to_le_bytes());
    }
    code.extend([0x48, 0xbe]); // mov rsi, imm64
    code.extend(entry.rsi.to_le_bytes());
    code.extend([0x48, 0xbc]); // mov rsp, imm64
    code.extend(entry.rsp.to_le_bytes());
    code.extend([0x31, 0xed, 0x31, 0xff, 0x31, 0xdb]); // xor ebp/edi/ebx
    code.extend([0x48, 0xb8]); // mov rax, imm64
    code.extend(entry.rip.to_le_bytes());
    code.extend([0xff, 0xe0]); // jmp rax
    assert!(code.len() <= GDTR_OFFSET, "entry code overlaps the GDTR");

    let mut rom = vec![0xf4u8; ROM_BYTES]; // hlt everywhere else
    rom[..code.len()].copy_from_slice(&code);
    rom[GDTR_OFFSET..GDTR_OFFSET + 2].copy_from_slice(&entry.gdt_limit.to_le_bytes());
    rom[GDTR_OFFSET + 2..GDTR_OFFSET + 6].copy_from_slice(&(entry.gdt_base as u32).to_le_bytes());
    // jmp near to offset 0: IP after the 3-byte jump is 0xFFF3.
    let rel = 0u16.wrapping_sub((RESET_OFFSET + 3) as u16);
    rom[RESET_OFFSET] = 0xe9;
    rom[RESET_OFFSET + 1..RESET_OFFSET + 3].copy_from_slice(&rel.to_le_bytes());
    rom
}

/// Runs `cmd` (QEMU with the serial console on stdout) until the kernel
/// halts or `timeout`, writes the console to `log`, and checks the smoke
/// test's lines.
fn run_smoke(mut cmd: Command, timeout: Duration, log: &Path, how: &str) -> Result<(), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("    $ {}", super::super::show(&cmd));
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let (tx, rx) = mpsc::channel::<(Duration, String)>();
    let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as _),
        child.stderr.take().map(|s| Box::new(s) as _),
    ];
    for stream in streams.into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((start.elapsed(), line)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut lines: Vec<(Duration, String)> = Vec::new();
    // `poweroff -f` with acpi=off halts the CPU; QEMU stays up, so the run
    // ends at the kernel's last line.
    let ended = loop {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                let line = line.replace('\r', "");
                let last =
                    line.contains("reboot: System halted") || line.contains("reboot: Power down");
                lines.push((at, line));
                if last {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let text: String = lines
        .iter()
        .map(|(at, l)| format!("[{:8.3}] {l}\n", at.as_secs_f64()))
        .collect();
    std::fs::write(log, text).map_err(|e| format!("{}: {e}", log.display()))?;
    let when = |needle: &str| lines.iter().find(|(_, l)| l.contains(needle));
    let tail = || {
        let n = lines.len().saturating_sub(30);
        lines[n..]
            .iter()
            .map(|(at, l)| format!("    [{:7.3}] {l}", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !ended {
        return Err(format!(
            "boot check ({how}): no end of the smoke test within {} s; console in {}; last lines:\n{}",
            timeout.as_secs(),
            log.display(),
            tail()
        ));
    }
    let checks = [
        ("thermocline-init: reached /init", "/init did not run"),
        ("thermocline-init: uname -r: ", "uname -r printed nothing"),
        (
            "workload: result mismatches=0 ",
            "the workload did not finish with 0 mismatches",
        ),
        (
            "thermocline-init: workload exit status 0",
            "the workload failed",
        ),
        ("thermocline-init: done", "/init did not finish"),
    ];
    for (needle, problem) in checks {
        if when(needle).is_none() {
            return Err(format!(
                "boot check ({how}): {problem}; console in {}; last lines:\n{}",
                log.display(),
                tail()
            ));
        }
    }
    for (_, l) in &lines {
        if l.contains("thermocline-init: uname -r") || l.contains("workload: result") {
            println!("    {l}");
        }
    }
    let secs = |needle: &str| when(needle).map_or(f64::NAN, |(at, _)| at.as_secs_f64());
    println!(
        "boot check passed ({how}; QEMU TCG, no Thermocline), seconds after QEMU started: \
         kernel runs /init {:.2}, /init's first line {:.2}, workload done {:.2}, halted {:.2}\n    console: {}",
        secs("Run /init as init process"),
        secs("thermocline-init: reached /init"),
        secs("workload: result"),
        secs("reboot: System halted").min(secs("reboot: Power down")),
        log.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LinuxEntryState {
        LinuxEntryState {
            rip: 0x100_0200,
            rsi: 0x1_0000,
            rsp: 0x1_0000,
            rflags: 2,
            cr0: 0x8000_0031,
            cr3: 0x2000,
            cr4: 0x20,
            efer: 0x500,
            gdt_base: 0x1000,
            gdt_limit: 0x1f,
            code_selector: 0x10,
            data_selector: 0x18,
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn the_rom_carries_the_entry_state() {
        let rom = entry_rom(&entry());
        assert_eq!(rom.len(), ROM_BYTES);
        // Reset vector: jmp near back to offset 0 (0xFFF3 + 0x000D wraps to 0).
        assert_eq!(&rom[RESET_OFFSET..RESET_OFFSET + 3], &[0xe9, 0x0d, 0x00]);
        assert_eq!(rom[0], 0xfa, "cli first");
        // Virtual-wire mode: LINT0 = ExtINT.
        assert!(
            find(
                &rom,
                &[0xb9, 0x50, 0x03, 0xe0, 0xfe, 0xc7, 0x01, 0, 7, 0, 0]
            )
            .is_some()
        );
        // GDTR: limit, 32-bit base.
        assert_eq!(
            &rom[GDTR_OFFSET..GDTR_OFFSET + 6],
            &[0x1f, 0, 0, 0x10, 0, 0]
        );
        // CR4, CR3, EFER without LMA, CR0 immediates followed by their moves.
        assert!(find(&rom, &[0x66, 0xb8, 0x20, 0, 0, 0, 0x0f, 0x22, 0xe0]).is_some());
        assert!(find(&rom, &[0x66, 0xb8, 0, 0x20, 0, 0, 0x0f, 0x22, 0xd8]).is_some());
        assert!(
            find(
                &rom,
                &[0x66, 0xb8, 0, 0x01, 0, 0, 0x66, 0x31, 0xd2, 0x0f, 0x30]
            )
            .is_some()
        );
        assert!(find(&rom, &[0x66, 0xb8, 0x31, 0, 0, 0x80, 0x0f, 0x22, 0xc0]).is_some());
        // The far jump lands on the 64-bit code right after it, through the
        // upper alias of the ROM.
        let far = find(&rom, &[0x66, 0xea]).unwrap();
        let target = u32::from_le_bytes(rom[far + 2..far + 6].try_into().unwrap());
        assert_eq!(&rom[far + 6..far + 8], &[0x10, 0]);
        assert_eq!(u64::from(target), ROM_BASE + far as u64 + 8);
        assert_eq!(rom[far + 8], 0xb8, "64-bit code: mov eax, selector");
        // RSI, RSP and RIP, then jmp rax.
        let rip = find(&rom, &[0x48, 0xb8]).unwrap();
        assert_eq!(&rom[rip + 2..rip + 10], &0x100_0200u64.to_le_bytes());
        assert_eq!(&rom[rip + 10..rip + 12], &[0xff, 0xe0]);
        assert!(find(&rom, &[0x48, 0xbe, 0, 0, 1, 0, 0, 0, 0, 0]).is_some());
    }
}
