#!/usr/bin/env python3
"""Thermocline's VMX test bed: the Bochs CPU core, driven from Python.

The bed runs the Thermocline kernel ELF on the CPU emulator of the pinned
PyPI wheel `bochscpu-python` (VMX with EPT and EPT A/D flags, see
../../../shared/TESTBEDS.md section 3 and README.md here). It has no firmware,
so this harness does what the bootloader would: it loads the ELF, applies its
relocations, builds long-mode page tables, a stack, the physical-memory
mapping, a memory map and a `bootloader_api::BootInfo`, and enters the kernel
at its ELF entry with RDI = &BootInfo (the contract is in README.md).

Commands (all idempotent; `run` and `selftest` set the bed up first):
  bed.py setup                      venv + pinned wheel, preload.so, layout tool
  bed.py run --kernel ELF [...]     run one kernel, judge its console
  bed.py selftest                   build and run tests/bochs/selftest
  bed.py suite --elf-dir DIR        unit tests (test_bed.py), selftest, then the
                                    bed's scenarios from DIR
                                    (the kernel's target/x86_64-unknown-none/<profile>)
  bed.py emulate --kernel ELF       no judge: behave like QEMU with -serial stdio
                                    and isa-debug-exit (console on stdout, exit
                                    status 33/35), for runners that judge themselves

Judging follows the QEMU runner: the kernel writes 0x10 (pass) or 0x11
(fail) to the isa-debug-exit port 0xf4, which exits the emulator with
status 33 or 35; any other end is a crash, and a run past its time limit is
a timeout. A HLT that nothing can end (the bed has no interrupt sources) is
the same hang, found at once: also a timeout. Anything but a pass prints the
last 40 console lines.

Layout: the judge runs on any python3; it starts a worker process
(`bed.py worker`, in target/bochs-venv) that owns the emulator, writes the
guest's serial output to its stdout and exits with the guest's exit status.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import json
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TARGET = ROOT / "target"
VENV = TARGET / "bochs-venv"
VENV_PY = VENV / "bin" / "python"
BUILD = TARGET / "bochs-bed"
PRELOAD_SRC = HERE / "preload.c"
PRELOAD_SO = BUILD / "preload.so"
REQUIREMENTS = HERE / "requirements.txt"

WHEEL = "bochscpu-python"
WHEEL_VERSION = "0.4.0"
WHEEL_PYTHON = (3, 11)

EXIT_PORT = 0xF4
EXIT_PASS = 33  # (0x10 << 1) | 1, as QEMU's isa-debug-exit
EXIT_FAIL = 35  # (0x11 << 1) | 1
# Worker exit statuses for ends that are not the guest's own.
WORKER_GUEST_STOPPED = 3  # halted, unbacked memory, emulator stop
WORKER_SETUP_ERROR = 4  # the bed could not start the guest
WORKER_HALTED = 5  # HLT with nothing that could ever wake the CPU: a hang, found at once
CONSOLE_TAIL_LINES = 40


def log(msg: str) -> None:
    print(f"bochs-bed: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Setup: venv with the pinned wheel, the preload library, the layout tool.
# --------------------------------------------------------------------------


def find_python311() -> str:
    """A Python 3.11 interpreter: the wheel is built for CPython 3.11 only."""
    if sys.version_info[:2] == WHEEL_PYTHON:
        return sys.executable
    for name in ("python3.11", "python3"):
        for d in os.environ.get("PATH", "").split(os.pathsep):
            cand = Path(d) / name
            if cand.is_file() and os.access(cand, os.X_OK):
                out = subprocess.run(
                    [str(cand), "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                    capture_output=True,
                    text=True,
                )
                if out.stdout.strip() == "True":
                    return str(cand)
    raise SystemExit("bochs-bed: needs CPython 3.11 (the bochscpu-python wheel is cp311)")


def wheel_installed() -> bool:
    site = VENV / "lib" / "python3.11" / "site-packages"
    dist = site / f"bochscpu_python-{WHEEL_VERSION}.dist-info"
    stamp = VENV / ".thermocline-requirements"
    return dist.is_dir() and stamp.is_file() and stamp.read_bytes() == REQUIREMENTS.read_bytes()


def setup_venv() -> None:
    if not VENV_PY.exists():
        log(f"creating {VENV.relative_to(ROOT)}")
        subprocess.run([find_python311(), "-m", "venv", str(VENV)], check=True)
    if wheel_installed():
        return
    log(f"installing {WHEEL}=={WHEEL_VERSION} from PyPI")
    subprocess.run(
        [str(VENV_PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--require-hashes", "-r", str(REQUIREMENTS)],
        check=True,
    )
    (VENV / ".thermocline-requirements").write_bytes(REQUIREMENTS.read_bytes())


def build_preload() -> None:
    src = PRELOAD_SRC.read_bytes()
    stamp = BUILD / "preload.sha256"
    digest = hashlib.sha256(src).hexdigest()
    if PRELOAD_SO.exists() and stamp.exists() and stamp.read_text() == digest:
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    tmp = PRELOAD_SO.with_suffix(f".{os.getpid()}.tmp")
    log(f"building {PRELOAD_SO.relative_to(ROOT)} with {cc}")
    subprocess.run(
        [cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
         "-o", str(tmp), str(PRELOAD_SRC), "-ldl"],
        check=True,
    )
    os.replace(tmp, PRELOAD_SO)
    stamp.write_text(digest)


def cargo_build_bin(package: str, extra: list[str]) -> Path:
    """Builds one binary with cargo and returns its path (honours CARGO_TARGET_DIR)."""
    out = subprocess.run(
        [os.environ.get("CARGO", "cargo"), "build", "--quiet", "-p", package, "--message-format=json-render-diagnostics",
         *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"bochs-bed: cargo build -p {package} failed")
    exe = None
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            exe = msg["executable"]
    if exe is None:
        raise SystemExit(f"bochs-bed: cargo built no executable for {package}")
    return Path(exe)


def layout_tool() -> Path:
    return cargo_build_bin("bochs-bootinfo", ["--release"])


def setup() -> Path:
    setup_venv()
    build_preload()
    return layout_tool()


# --------------------------------------------------------------------------
# The judge.
# --------------------------------------------------------------------------


class Protocol:
    """The kernel's console line protocol (kernel/src/testing.rs), parsed as
    the QEMU runner's `tests/src/protocol.rs` parses it."""

    def __init__(self):
        self.scenario: tuple[str, int] | None = None
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.panic: str | None = None
        self.summary: tuple[int, int] | None = None

    def feed(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.startswith("[scenario] "):
            words = line[len("[scenario] "):].split()
            cases = next((w[len("cases="):] for w in words[1:] if w.startswith("cases=")), "0")
            self.scenario = (words[0] if words else "", int(cases) if cases.isdigit() else 0)
        elif line.startswith("[test] "):
            rest = line[len("[test] "):]
            if rest.endswith(" ... ok"):
                self.passed.append(rest[:-len(" ... ok")])
            elif rest.endswith(" ... FAILED"):
                self.failed.append(rest[:-len(" ... FAILED")])
        elif line.startswith("[panic] ") and self.panic is None:
            self.panic = line[len("[panic] "):]
        elif line.startswith("[summary] "):
            words = line.split()
            p = next((w[len("passed="):] for w in words if w.startswith("passed=")), None)
            f = next((w[len("failed="):] for w in words if w.startswith("failed=")), None)
            if p and f and p.isdigit() and f.isdigit():
                self.summary = (int(p), int(f))

    def all_passed(self) -> bool:
        if self.scenario is None or self.summary is None:
            return False
        cases = self.scenario[1]
        p, f = self.summary
        return (not self.failed and f == 0 and p == cases and len(self.passed) == cases
                and self.panic is None)

    def problem(self) -> str:
        if self.scenario is None:
            return "no [scenario] line"
        if self.summary is None:
            return "no [summary] line"
        if self.failed:
            return f"failed cases: {', '.join(self.failed)}"
        return f"{len(self.passed)} of {self.scenario[1]} cases reported ok"


def judge(kernel: Path, name: str, timeout_s: float, mem_mib: int, tool: Path,
          quiet: bool, scenario: bool = True) -> bool:
    """Runs one kernel; a pass needs exit status 33 and, for a scenario
    kernel, a console whose protocol says every declared case passed."""
    if not kernel.is_file():
        print(f"bochs {name}: crash (no kernel ELF at {kernel})", flush=True)
        return False
    cmd = [str(VENV_PY), str(Path(__file__).resolve()), "worker", "--kernel", str(kernel),
           "--mem-mib", str(mem_mib), "--layout-tool", str(tool)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=CONSOLE_TAIL_LINES)
    protocol = Protocol()

    def pump_console() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            protocol.feed(line)
            if not quiet:
                print(f"  | {line}", flush=True)

    notes: list[str] = []

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if quiet:
                notes.append(line)
            else:
                print(line, file=sys.stderr, flush=True)

    threads = [threading.Thread(target=pump_console, daemon=True),
               threading.Thread(target=pump_stderr, daemon=True)]
    for t in threads:
        t.start()
    timed_out = False
    try:
        status = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        status = proc.wait()
    for t in threads:
        t.join(timeout=5)
    elapsed_s = time.monotonic() - started

    if timed_out:
        verdict = f"timeout after {timeout_s:.0f} s"
    elif status == EXIT_PASS and (protocol.all_passed() or not scenario):
        verdict = "pass"
    elif status == EXIT_PASS:
        verdict = f"fail (exit status 33, but the console protocol disagrees: {protocol.problem()})"
    elif status == EXIT_FAIL:
        verdict = "fail"
    elif status == WORKER_HALTED:
        verdict = "timeout (the guest halted and nothing can wake it: a hang, seen at once)"
    elif status < 0:
        verdict = f"crash (emulator killed by signal {-status})"
    else:
        verdict = f"crash (exit status {status})"
    ok = verdict == "pass"
    if not ok:
        for line in notes:
            print(line, file=sys.stderr)
        print(f"--- last {len(tail)} console lines of {name} ---")
        for line in tail:
            print(f"  | {line}")
        print("---")
    print(f"bochs {name}: {verdict} ({elapsed_s:.2f} s)", flush=True)
    return ok


# --------------------------------------------------------------------------
# ELF loading (runs in the worker, but needs nothing from the wheel).
# --------------------------------------------------------------------------

PT_LOAD, PT_DYNAMIC, PT_TLS, PT_GNU_RELRO = 1, 2, 7, 0x6474E552
PF_X, PF_W = 1, 2
DT_NULL, DT_RELA, DT_RELASZ, DT_RELAENT, DT_REL, DT_RELSZ = 0, 7, 8, 9, 17, 18
R_X86_64_NONE, R_X86_64_RELATIVE = 0, 8
ET_EXEC, ET_DYN = 2, 3
PAGE = 4096
HUGE = 2 << 20
L4_SPAN = 1 << 39


class Elf:
    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not a little-endian ELF64 file")
        (self.type, machine, _, self.entry, phoff, shoff, _, _, phentsize, phnum, shentsize,
         shnum, shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        if machine != 62:
            raise ValueError("not an x86_64 ELF file")
        self.data = data
        self.phdrs = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
                      for i in range(phnum)]
        self.sections = {}
        if shoff:
            shdrs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                     for i in range(shnum)]
            stroff = shdrs[shstrndx][4]
            for sh in shdrs:
                end = data.index(b"\0", stroff + sh[0])
                self.sections[data[stroff + sh[0]:end].decode()] = sh

    def segments(self, kind: int):
        # (type, flags, offset, vaddr, paddr, filesz, memsz, align)
        return [p for p in self.phdrs if p[0] == kind]

    def section_bytes(self, name: str) -> bytes | None:
        sh = self.sections.get(name)
        if sh is None:
            return None
        return self.data[sh[4]:sh[4] + sh[5]]

    def vaddr_to_offset(self, vaddr: int) -> int:
        for p in self.segments(PT_LOAD):
            if p[3] <= vaddr < p[3] + p[5]:
                return p[2] + vaddr - p[3]
        raise ValueError(f"vaddr {vaddr:#x} is not in the file")

    def relocations(self):
        """R_X86_64_* entries from PT_DYNAMIC: (offset, type, addend)."""
        dyn = self.segments(PT_DYNAMIC)
        if not dyn:
            return []
        tags = {}
        off = dyn[0][2]
        while True:
            tag, val = struct.unpack_from("<qQ", self.data, off)
            off += 16
            if tag == DT_NULL:
                break
            tags[tag] = val
        if tags.get(DT_RELSZ):
            raise ValueError("the kernel has REL relocations; the bootloader supports RELA only")
        if DT_RELA not in tags:
            return []
        ent = tags.get(DT_RELAENT, 24)
        start = self.vaddr_to_offset(tags[DT_RELA])
        out = []
        for i in range(tags.get(DT_RELASZ, 0) // ent):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", self.data, start + i * ent)
            out.append((r_offset, r_info & 0xFFFFFFFF, r_addend))
        return out


def canonical(addr: int) -> int:
    addr &= (1 << 64) - 1
    return addr | 0xFFFF_0000_0000_0000 if addr & (1 << 47) else addr & ((1 << 48) - 1)


def align_up(v: int, a: int) -> int:
    return (v + a - 1) // a * a


class Level4Entries:
    """Which PML4 slots are taken, chosen first-free as bootloader 0.11 does without ASLR."""

    def __init__(self):
        self.used = [False] * 512

    def mark(self, start: int, size: int) -> None:
        if size == 0:
            return
        first = (start >> 39) & 511
        last = ((start + size - 1) >> 39) & 511
        for i in range(first, last + 1):
            self.used[i] = True

    def free_entries(self, count: int) -> int:
        for i in range(0, 512 - count + 1):
            if not any(self.used[i:i + count]):
                for j in range(i, i + count):
                    self.used[j] = True
                return i
        raise RuntimeError("no free PML4 entries")

    def free_address(self, size: int) -> int:
        return canonical(self.free_entries(max(1, -(-size // L4_SPAN))) << 39)


def mapping_addr(mapping, size: int, align: int, l4: Level4Entries) -> int:
    addr = l4.free_address(size) if mapping == "dynamic" else canonical(mapping)
    if addr % align:
        raise ValueError(f"mapping {addr:#x} is not {align:#x}-aligned")
    return addr


class BumpFrames:
    """Physical frames for the bootloader's own use, from 1 MiB up."""

    def __init__(self, start: int, end: int):
        self.start = self.next = start
        self.end = end

    def alloc(self, count: int = 1) -> int:
        frame = self.next
        self.next += count * PAGE
        if self.next > self.end:
            raise RuntimeError("guest RAM too small for the kernel")
        return frame


class PageTables:
    """4-level long-mode tables in guest RAM (memory: the worker's GuestRam)."""

    P, W, PS, NX = 1, 2, 0x80, 1 << 63

    def __init__(self, ram, frames: BumpFrames):
        self.ram, self.frames = ram, frames
        self.pml4 = frames.alloc()

    def _table(self, table: int, index: int) -> int:
        entry = self.ram.read_u64(table + index * 8)
        if entry & self.P:
            if entry & self.PS:
                raise ValueError("mapping overlaps a huge page")
            return entry & 0x000F_FFFF_FFFF_F000
        new = self.frames.alloc()
        self.ram.write_u64(table + index * 8, new | self.P | self.W)
        return new

    def map(self, va: int, pa: int, flags: int, huge: bool = False) -> None:
        idx = [(va >> s) & 511 for s in (39, 30, 21, 12)]
        t = self._table(self.pml4, idx[0])
        t = self._table(t, idx[1])
        if huge:
            slot = t + idx[2] * 8
            leaf = pa | flags | self.P | self.PS
        else:
            t = self._table(t, idx[2])
            slot = t + idx[3] * 8
            leaf = pa | flags | self.P
        if self.ram.read_u64(slot) & self.P:
            raise ValueError(f"virtual address {va:#x} mapped twice")
        self.ram.write_u64(slot, leaf)


def encode_boot_info(layout: dict, values: dict, regions: list, regions_va: int,
                     region_slots: int) -> tuple[bytes, bytes]:
    """BootInfo and its memory-region array, encoded with the layouts from bochs-bootinfo."""
    bi = layout["boot_info"]
    out = bytearray(bi["size"])
    opt = layout["optional"]

    def put(off: int, size: int, value: int) -> None:
        out[off:off + size] = value.to_bytes(size, "little")

    def put_optional(field: str, kind: str, payload) -> None:
        base = bi[field]
        if payload is None:
            put(base, opt["tag_size"], opt["None"])
            return
        put(base, opt["tag_size"], opt["Some"])
        at = base + opt[kind]["payload"]
        if kind == "tls_template":
            t = layout["tls_template"]
            for name, v in payload.items():
                put(at + t[name], 8, v)
        else:
            put(at, 8 if kind == "u64" else 2, payload)

    av = layout["api_version"]
    for name, size in (("major", 2), ("minor", 2), ("patch", 2), ("pre_release", 1)):
        off, value = av[name]
        put(bi["api_version"] + off, size, value)
    mr = layout["memory_regions"]
    put(bi["memory_regions"] + mr["ptr"], 8, regions_va)
    put(bi["memory_regions"] + mr["len"], 8, len(regions))
    put_optional("framebuffer", "framebuffer", None)
    put_optional("physical_memory_offset", "u64", values["physical_memory_offset"])
    put_optional("recursive_index", "u16", values["recursive_index"])
    put_optional("rsdp_addr", "u64", None)
    put_optional("tls_template", "tls_template", values["tls_template"])
    put_optional("ramdisk_addr", "u64", None)
    for field in ("ramdisk_len", "kernel_addr", "kernel_len", "kernel_image_offset",
                  "kernel_stack_bottom", "kernel_stack_len", "_test_sentinel"):
        put(bi[field], 8, values[field])

    r = layout["memory_region"]
    k = layout["memory_region_kind"]
    arr = bytearray(r["size"] * region_slots)
    for i, (start, end, kind) in enumerate(regions):
        base = i * r["size"]
        arr[base + r["start"]:base + r["start"] + 8] = start.to_bytes(8, "little")
        arr[base + r["end"]:base + r["end"] + 8] = end.to_bytes(8, "little")
        at = base + r["kind"]
        arr[at:at + k["tag_size"]] = k[kind].to_bytes(k["tag_size"], "little")
    return bytes(out), bytes(arr)


# --------------------------------------------------------------------------
# The worker: owns the emulator (runs under target/bochs-venv).
# --------------------------------------------------------------------------


class GuestRam:
    """Guest physical RAM: one host mapping, inserted page by page into Bochs."""

    def __init__(self, size: int, memory):
        self.size = size
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.host = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        insert = memory.page_insert
        for gpa in range(0, size, PAGE):
            insert(gpa, self.host + gpa)

    def write(self, gpa: int, data: bytes) -> None:
        self.buf[gpa:gpa + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        return self.buf[gpa:gpa + n]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.buf, gpa)[0]

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.buf, gpa, value)


class Uart16550:
    """COM1 as the kernel's uart_16550 driver needs it: scratch register,
    DLAB, FIFO flags in IIR, loopback with a receive FIFO, CTS/DSR/DCD when
    not looped back; everything sent outside loopback is console output."""

    BASE = 0x3F8

    def __init__(self, emit):
        self.emit = emit
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = 0
        self.dll, self.dlm = 1, 0
        self.rx: collections.deque[int] = collections.deque()

    def read(self, off: int) -> int:
        dlab = self.lcr & 0x80
        if off == 0:
            if dlab:
                return self.dll
            return self.rx.popleft() if self.rx else 0
        if off == 1:
            return self.dlm if dlab else self.ier
        if off == 2:  # IIR: no interrupt pending; FIFOs enabled if FCR says so
            return 0x01 | (0xC0 if self.fcr & 1 else 0)
        if off == 3:
            return self.lcr
        if off == 4:
            return self.mcr
        if off == 5:  # LSR: transmitter always empty, data ready if looped back
            return 0x60 | (1 if self.rx else 0)
        if off == 6:  # MSR
            if self.mcr & 0x10:
                m = self.mcr
                return ((m & 2) << 3) | ((m & 1) << 5) | ((m & 4) << 4) | ((m & 8) << 4)
            return 0xB0  # a remote is connected: DCD, DSR, CTS
        return self.scr

    def write(self, off: int, value: int) -> None:
        dlab = self.lcr & 0x80
        if off == 0:
            if dlab:
                self.dll = value
            elif self.mcr & 0x10:
                if len(self.rx) < 16:
                    self.rx.append(value)
            else:
                self.emit(value)
        elif off == 1:
            if dlab:
                self.dlm = value
            else:
                self.ier = value & 0x0F
        elif off == 2:
            self.fcr = value & 0xC9
            if value & 2:
                self.rx.clear()
        elif off == 3:
            self.lcr = value
        elif off == 4:
            self.mcr = value & 0x1F
        elif off == 7:
            self.scr = value


def segment(bochscpu, selector: int, attr: int, present: bool = True, limit: int = 0xFFFFFFFF):
    s = bochscpu.Segment()
    s.present = present
    s.selector = selector
    s.base = 0
    s.limit = limit
    s.attr = attr
    return s


def worker(args) -> int:
    lib = ctypes.CDLL(args.preload, mode=ctypes.RTLD_GLOBAL)
    import importlib.metadata

    version = importlib.metadata.version(WHEEL)
    if version != WHEEL_VERSION:
        log(f"{WHEEL} is {version}, the bed needs exactly {WHEEL_VERSION} (preload.c "
            f"interposes its internals): rerun `bed.py setup`")
        return WORKER_SETUP_ERROR
    import bochscpu
    import bochscpu.memory

    layout = json.loads(subprocess.run([args.layout_tool, "layout"], check=True,
                                       capture_output=True, text=True).stdout)
    kernel_bytes = Path(args.kernel).read_bytes()
    elf = Elf(kernel_bytes)
    cfg_bytes = elf.section_bytes(".bootloader-config")
    if cfg_bytes is None:
        log("the kernel has no .bootloader-config section (is it built with "
            "bootloader_api::entry_point!?)")
        return WORKER_SETUP_ERROR
    config = json.loads(subprocess.run([args.layout_tool, "config", cfg_bytes.hex()], check=True,
                                       capture_output=True, text=True).stdout)
    if config["aslr"]:
        log("note: the kernel asks for ASLR; the bed maps it deterministically")

    sess = bochscpu.Session()
    t0 = time.monotonic()
    ram = GuestRam(args.mem_mib << 20, bochscpu.memory)
    setup_ms = (time.monotonic() - t0) * 1000
    entry = load_kernel(ram, elf, kernel_bytes, config, layout)

    # ---- devices -----------------------------------------------------------
    out_buf = bytearray()

    def flush_console() -> None:
        if out_buf:
            os.write(1, bytes(out_buf))
            out_buf.clear()

    def emit(byte: int) -> None:
        out_buf.append(byte)
        if byte == 0x0A or len(out_buf) >= 4096:
            flush_console()

    uart = Uart16550(emit)
    exit_status: list[int] = []
    unknown_ports: set[int] = set()
    stop_reason: list[str] = []
    halted: list[bool] = []

    def note_port(port: int, what: str) -> None:
        if port not in unknown_ports:
            unknown_ports.add(port)
            log(f"guest {what} port {port:#x} (no device there; reads float high)")

    def on_in(port: int, size: int) -> int:
        if Uart16550.BASE <= port < Uart16550.BASE + 8:
            return uart.read(port - Uart16550.BASE)
        note_port(port, "reads")
        return 0xFFFFFFFF

    def on_out(port: int, value: int, size: int) -> None:
        if Uart16550.BASE <= port < Uart16550.BASE + 8:
            uart.write(port - Uart16550.BASE, value & 0xFF)
        elif port == EXIT_PORT:
            exit_status.append(((value << 1) | 1) & 0xFF)
            sess.stop()
        else:
            note_port(port, "writes")

    in_cb = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32)(on_in)
    out_cb = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32)(on_out)
    lib.bed_set_io_handlers(in_cb, out_cb)
    lib.bed_io_count.restype = ctypes.c_uint64
    lib.bed_bochs_errors.restype = ctypes.c_uint64
    lib.bed_bochs_panics.restype = ctypes.c_uint64
    lib.bed_bochs_suppressed.restype = ctypes.c_uint64

    def missing_page(gpa: int) -> None:
        # Outside RAM: keep Bochs going on a scratch page, but end the run.
        stop_reason.append(f"guest touched physical address {gpa:#x}, outside its "
                           f"{args.mem_mib} MiB of RAM")
        bochscpu.memory.page_insert(gpa & ~0xFFF, bochscpu.memory.allocate_host_page())
        sess.stop()

    sess.missing_page_handler = missing_page

    exceptions: collections.deque[str] = collections.deque(maxlen=8)
    counts = {"exceptions": 0, "vmexits": 0}

    def on_exception(s, cpu_id, vector, error_code) -> None:
        counts["exceptions"] += 1
        exceptions.append(f"vector {vector} error {error_code:#x} at rip {s.cpu.rip:#x}")

    def on_hlt(s, cpu_id) -> None:
        # Bochs calls this hook for HLT and for the shutdown state that a
        # triple fault leads to (after its "3rd exception" panic).
        if lib.bed_bochs_panics():
            stop_reason.append(f"the CPU shut down at rip {s.cpu.rip:#x} (triple fault: see "
                               "the Bochs panic and the exceptions below)")
        else:
            halted.append(True)
            stop_reason.append(f"guest halted at rip {s.cpu.rip:#x} (the bed has no interrupt "
                               "source to wake it: no timer, no devices)")
        s.stop()

    def on_vmexit(s, cpu_id, reason, qualification) -> None:
        counts["vmexits"] += 1

    hook = bochscpu.Hook()
    hook.exception = on_exception
    hook.hlt = on_hlt
    hook.vmexit = on_vmexit

    sess.cpu.state = entry
    log(f"guest RAM {args.mem_mib} MiB inserted in {setup_ms:.0f} ms; entering the kernel at "
        f"{entry.rip:#x} with RDI={entry.rdi:#x}")
    t0 = time.monotonic()
    sess.run([hook])
    run_s = time.monotonic() - t0
    flush_console()

    errors, panics = lib.bed_bochs_errors(), lib.bed_bochs_panics()
    log(f"ran {run_s:.2f} s; {counts['exceptions']} exceptions, {counts['vmexits']} VM exits, "
        f"{lib.bed_io_count()} port accesses, {errors} Bochs errors, {panics} Bochs panics "
        f"({lib.bed_bochs_suppressed()} repeated messages not printed)")
    if exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown: the wheel's destructors abort at exit.
        os._exit(exit_status[0])
    for line in stop_reason or ["the emulator stopped without an exit-port write"]:
        log(line)
    for line in exceptions:
        log(f"recent exception: {line}")
    sys.stderr.flush()
    os._exit(WORKER_HALTED if halted else WORKER_GUEST_STOPPED)


def load_kernel(ram: GuestRam, elf: Elf, kernel_bytes: bytes, config: dict, layout: dict):
    """Lays the kernel out as bootloader 0.11 does and returns the entry State."""
    import bochscpu

    ram_end = ram.size
    frames = BumpFrames(1 << 20, ram_end)
    l4 = Level4Entries()
    l4.mark(0, ram_end)  # the bootloader's identity mapping of physical memory
    for key in ("physical_memory",):
        if config[key] not in (None, "dynamic"):
            l4.mark(config[key], ram_end)
    if config["page_table_recursive"] not in (None, "dynamic"):
        l4.used[(config["page_table_recursive"] >> 39) & 511] = True
    if config["kernel_stack"] != "dynamic":
        l4.mark(config["kernel_stack"], config["kernel_stack_size"])

    loads = [p for p in elf.segments(PT_LOAD) if p[6] > 0]
    min_va = min(p[3] for p in loads) & ~(PAGE - 1)
    max_va = max(p[3] + p[6] for p in loads)
    align = max([PAGE] + [p[7] for p in loads])
    if config["kernel_base"] != "dynamic":
        l4.mark(config["kernel_base"], max_va - min_va)
    if elf.type == ET_EXEC:
        l4.mark(min_va, max_va - min_va)
    if config["boot_info"] != "dynamic":
        l4.mark(config["boot_info"], PAGE)
    if config["dynamic_range_start"] is not None:
        first = (config["dynamic_range_start"] >> 39) & 511
        for i in range(first):
            l4.used[i] = True
    if config["dynamic_range_end"] is not None:
        last = (config["dynamic_range_end"] >> 39) & 511
        for i in range(last + 1, 512):
            l4.used[i] = True

    # The kernel file itself, where the bootloader keeps it (BootInfo.kernel_addr).
    kernel_addr = frames.alloc(align_up(len(kernel_bytes), PAGE) // PAGE)
    ram.write(kernel_addr, kernel_bytes)
    tables = PageTables(ram, frames)

    if elf.type == ET_DYN:
        base = (mapping_addr(config["kernel_base"], max_va - min_va, align, l4)
                if config["kernel_base"] == "dynamic" else canonical(config["kernel_base"]))
    elif elf.type == ET_EXEC:
        base = 0
    else:
        raise ValueError("the kernel ELF is neither an executable nor a PIE")
    for p in loads:
        l4.mark(canonical(base + p[3]), p[6])

    # Segments: one frame per page, flags from the segment (a page shared by
    # two segments gets the union).
    pages: dict[int, list[int]] = {}
    for _, flags, off, vaddr, _, filesz, memsz, _ in loads:
        va0 = base + vaddr
        for va in range(va0 & ~(PAGE - 1), va0 + memsz, PAGE):
            entry = pages.setdefault(va, [frames.alloc(), 0])
            entry[1] |= flags
        # Copy the file bytes page by page (frames are not contiguous in general).
        pos = 0
        while pos < filesz:
            va = va0 + pos
            chunk = min(filesz - pos, PAGE - (va & (PAGE - 1)))
            ram.write(pages[va & ~(PAGE - 1)][0] + (va & (PAGE - 1)),
                      kernel_bytes[off + pos:off + pos + chunk])
            pos += chunk

    def va_to_pa(va: int) -> int:
        return pages[va & ~(PAGE - 1)][0] + (va & (PAGE - 1))

    for r_offset, r_type, addend in elf.relocations():
        if r_type == R_X86_64_NONE:
            continue
        if r_type != R_X86_64_RELATIVE:
            raise ValueError(f"relocation type {r_type} (the bootloader handles RELATIVE only)")
        va = base + r_offset
        if (va & (PAGE - 1)) > PAGE - 8:
            raise ValueError("relocation straddles a page")
        ram.write_u64(va_to_pa(va), (base + addend) & ((1 << 64) - 1))

    relro = [(base + p[3], base + p[3] + p[6]) for p in elf.segments(PT_GNU_RELRO)]
    for va, (pa, flags) in sorted(pages.items()):
        f = 0 if flags & PF_X else PageTables.NX
        writable = flags & PF_W and not any(lo <= va and va + PAGE <= hi for lo, hi in relro)
        tables.map(canonical(va), pa, f | (PageTables.W if writable else 0))

    tls = None
    for p in elf.segments(PT_TLS):
        tls = {"start_addr": canonical(base + p[3]), "file_size": p[5], "mem_size": p[6]}

    # Stack with a guard page below it, as the bootloader maps it.
    stack_size = config["kernel_stack_size"]
    guard = mapping_addr(config["kernel_stack"], PAGE + stack_size, PAGE, l4)
    stack_bottom = guard + PAGE
    stack_end = stack_bottom + stack_size
    stack_frames = {}
    for va in range(stack_bottom, align_up(stack_end, PAGE), PAGE):
        stack_frames[va] = frames.alloc()
        tables.map(va, stack_frames[va], PageTables.W | PageTables.NX)
    stack_top = stack_end & ~15

    # GDT: null, 64-bit code (0x08), data (0x10), identity-mapped like the bootloader's.
    gdt = frames.alloc()
    ram.write(gdt, struct.pack("<QQQ", 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF))
    tables.map(gdt, gdt, PageTables.W | PageTables.NX)

    phys_offset = None
    if config["physical_memory"] is not None:
        phys_offset = mapping_addr(config["physical_memory"], ram_end, HUGE, l4)
        for pa in range(0, align_up(ram_end, HUGE), HUGE):
            tables.map(canonical(phys_offset + pa), pa, PageTables.W | PageTables.NX, huge=True)

    recursive_index = None
    if config["page_table_recursive"] is not None:
        if config["page_table_recursive"] == "dynamic":
            recursive_index = l4.free_entries(1)
        else:
            recursive_index = (config["page_table_recursive"] >> 39) & 511
        ram.write_u64(tables.pml4 + recursive_index * 8,
                      tables.pml4 | PageTables.P | PageTables.W | PageTables.NX)

    # Boot info, then the memory regions right after it, as the bootloader lays them out.
    bi_size, bi_align = layout["boot_info"]["size"], layout["boot_info"]["align"]
    region_size = layout["memory_region"]["size"]
    region_slots = 8
    regions_off = align_up(bi_size, layout["memory_region"]["align"])
    combined = regions_off + region_slots * region_size
    boot_info_va = mapping_addr(config["boot_info"], combined, bi_align, l4)
    boot_info_frames = []
    for va in range(boot_info_va, boot_info_va + combined, PAGE):
        boot_info_frames.append(frames.alloc())
        tables.map(va, boot_info_frames[-1], PageTables.W | PageTables.NX)

    used_end = frames.next
    regions = [
        (0x1000, 0x9F000, "Usable"),  # low RAM, as a BIOS reports it (below the EBDA)
        (frames.start, used_end, "Bootloader"),  # kernel file, segments, tables, stack, boot info
        (used_end, ram_end, "Usable"),
    ]
    values = {
        "physical_memory_offset": phys_offset,
        "recursive_index": recursive_index,
        "tls_template": tls,
        "ramdisk_len": 0,
        "kernel_addr": kernel_addr,
        "kernel_len": len(kernel_bytes),
        "kernel_image_offset": base,
        "kernel_stack_bottom": stack_bottom,
        "kernel_stack_len": stack_size,
        "_test_sentinel": 0,
    }
    info, region_bytes = encode_boot_info(layout, values, regions, boot_info_va + regions_off,
                                          region_slots)
    blob = info + bytes(regions_off - len(info)) + region_bytes
    for i, frame in enumerate(boot_info_frames):
        ram.write(frame, blob[i * PAGE:(i + 1) * PAGE])

    # Return address 0 on the stack, as the bootloader's `push 0; jmp entry`.
    rsp = stack_top - 8
    ram.write_u64(stack_frames[rsp & ~(PAGE - 1)] + (rsp & (PAGE - 1)), 0)

    st = bochscpu.State()
    st.rip = canonical(base + elf.entry)
    st.rsp = rsp
    st.rdi = boot_info_va
    st.rbp = 0
    st.rflags = 0x2
    st.cr0 = 0x80010011  # PG | WP | ET | PE: what the bootloader leaves (NE is the kernel's job)
    st.cr3 = tables.pml4
    st.cr4 = 0x20  # PAE
    st.efer = 0xD00  # NXE | LMA | LME
    st.xcr0 = 1
    st.pat = 0x0007040600070406
    st.mxcsr = 0x1F80
    # The State default is 0, and Bochs then refuses every FXRSTOR (#GP,
    # "corrupted MXCSR"); real CPUs with DAZ report 0xFFFF.
    st.mxcsr_mask = 0xFFFF
    st.fpcw = 0x37F
    st.apic_base = 0xFEE00900  # xAPIC enabled, bootstrap processor
    st.cs = segment(bochscpu, 0x08, 0xA09B)  # 64-bit code, DPL 0, accessed
    for name in ("ds", "es", "ss"):
        setattr(st, name, segment(bochscpu, 0x10, 0xC093))
    for name in ("fs", "gs"):
        setattr(st, name, segment(bochscpu, 0, 0, present=False, limit=0))
    st.tr = segment(bochscpu, 0, 0x8B, limit=0xFFFF)
    st.ldtr = segment(bochscpu, 0, 0x82, present=False, limit=0)
    g = bochscpu.GlobalSegment()
    g.base, g.limit = gdt, 3 * 8 - 1
    st.gdtr = g
    i = bochscpu.GlobalSegment()
    i.base, i.limit = 0, 0
    st.idtr = i
    return st


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


# Scenario kernels that must pass on this bed: the foundation's basic checks
# (the same kernel paths as on QEMU), the platform layer in its cooperative
# (no timer, one CPU) mode, and every VMX scenario (`test_vmx*`).
# Scenarios that are meant to fail or hang are QEMU runner self-tests.
BED_SCENARIOS = ["test_basic", "test_platform"]
BED_SCENARIO_PREFIX = "test_vmx"


def suite(elf_dir: Path, timeout_s: float, tool: Path) -> bool:
    names = list(BED_SCENARIOS)
    names += sorted(p.name for p in elf_dir.glob(BED_SCENARIO_PREFIX + "*")
                    if p.is_file() and os.access(p, os.X_OK) and p.suffix == "")
    missing = [n for n in names if not (elf_dir / n).is_file()]
    if missing:
        print(f"bochs suite: missing kernels in {elf_dir}: {', '.join(missing)}")
        return False
    unit = subprocess.run([sys.executable, str(HERE / "test_bed.py")], capture_output=True,
                          text=True)
    if unit.returncode != 0:
        print(unit.stdout + unit.stderr)
    print(f"bochs unit tests: {'pass' if unit.returncode == 0 else 'fail'}", flush=True)
    results = [("unit tests", unit.returncode == 0)]
    results.append(("selftest", judge(selftest_kernel(), "selftest", timeout_s, 128, tool, True,
                                      scenario=False)))
    for name in names:
        results.append((name, judge(elf_dir / name, name, timeout_s, 256, tool, True)))
    failed = [n for n, ok in results if not ok]
    print(f"bochs suite: {len(results) - len(failed)} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return not failed


def selftest_kernel() -> Path:
    return cargo_build_bin("bochs-selftest", ["--release", "--target", "x86_64-unknown-none"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="install the pinned wheel, build preload.so and the layout tool")
    run = sub.add_parser("run", help="run one kernel ELF and judge its console")
    run.add_argument("--kernel", required=True, type=Path)
    run.add_argument("--name", help="name in the result line (default: the file name)")
    run.add_argument("--timeout-s", type=float, default=120.0)
    run.add_argument("--mem-mib", type=int, default=256)
    run.add_argument("--quiet", action="store_true", help="print the console only on failure")
    run.add_argument("--no-protocol", action="store_true",
                     help="judge by the exit status only (kernels that are not test scenarios)")
    st = sub.add_parser("selftest", help="build and run tests/bochs/selftest")
    st.add_argument("--timeout-s", type=float, default=60.0)
    st.add_argument("--quiet", action="store_true")
    su = sub.add_parser("suite", help="selftest plus the bed's scenario kernels")
    su.add_argument("--elf-dir", required=True, type=Path)
    su.add_argument("--timeout-s", type=float, default=120.0)
    em = sub.add_parser("emulate", help="run one kernel like QEMU would (no judging, no timeout)")
    em.add_argument("--kernel", required=True, type=Path)
    em.add_argument("--mem-mib", type=int, default=256)
    wk = sub.add_parser("worker", help=argparse.SUPPRESS)
    wk.add_argument("--kernel", required=True)
    wk.add_argument("--mem-mib", type=int, required=True)
    wk.add_argument("--layout-tool", required=True)
    wk.add_argument("--preload", default=str(PRELOAD_SO))
    args = ap.parse_args()

    if args.cmd == "worker":
        try:
            return worker(args)
        except (OSError, ValueError, RuntimeError, subprocess.CalledProcessError) as e:
            log(f"cannot start the guest: {e}")
            return WORKER_SETUP_ERROR
    tool = setup()
    if args.cmd == "setup":
        log("ready")
        return 0
    if args.cmd == "emulate":
        # Become the worker, so whoever started us can kill the emulator itself.
        sys.stdout.flush()
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), "worker",
                                "--kernel", str(args.kernel), "--mem-mib", str(args.mem_mib),
                                "--layout-tool", str(tool)])
    if args.cmd == "suite":
        return 0 if suite(args.elf_dir, args.timeout_s, tool) else 1
    if args.cmd == "selftest":
        return 0 if judge(selftest_kernel(), "selftest", args.timeout_s, 128, tool, args.quiet,
                          scenario=False) else 1
    return 0 if judge(args.kernel, args.name or args.kernel.name, args.timeout_s, args.mem_mib,
                      tool, args.quiet, scenario=not args.no_protocol) else 1


if __name__ == "__main__":
    sys.exit(main())
