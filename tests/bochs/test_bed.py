#!/usr/bin/env python3
"""Unit tests of the Bochs bed's pure parts (no emulator needed):
`python3 tests/bochs/test_bed.py` (also run by `bed.py suite`)."""

import json
import struct
import subprocess
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bed  # noqa: E402


class ProtocolTest(unittest.TestCase):
    PASSING = [
        "[INFO  cpu0] noise",
        "[scenario] basic cases=2",
        "[test] one ... ok",
        "[test] two ... ok",
        "[summary] basic passed=2 failed=0",
    ]

    def parse(self, lines):
        p = bed.Protocol()
        for line in lines:
            p.feed(line)
        return p

    def test_passing(self):
        self.assertTrue(self.parse(self.PASSING).all_passed())

    def test_missing_case_is_not_a_pass(self):
        p = self.parse([line for line in self.PASSING if "two" not in line])
        self.assertFalse(p.all_passed())
        self.assertIn("1 of 2", p.problem())

    def test_failure_and_panic(self):
        p = self.parse(["[scenario] s cases=2", "[test] a ... ok", "[panic] at x.rs:1:2: boom",
                        "[test] b ... FAILED", "[summary] s passed=1 failed=1"])
        self.assertFalse(p.all_passed())
        self.assertEqual(p.failed, ["b"])
        self.assertEqual(p.panic, "at x.rs:1:2: boom")

    def test_no_summary(self):
        self.assertFalse(self.parse(self.PASSING[:-1]).all_passed())


class UartTest(unittest.TestCase):
    def setUp(self):
        self.out = bytearray()
        self.u = bed.Uart16550(self.out.append)

    def test_scratch_and_output(self):
        self.u.write(7, 0x42)
        self.assertEqual(self.u.read(7), 0x42)
        self.u.write(0, ord("A"))
        self.assertEqual(bytes(self.out), b"A")
        self.assertEqual(self.u.read(5) & 0x60, 0x60, "transmitter empty")
        self.assertEqual(self.u.read(6) & 0xB0, 0xB0, "DCD, DSR, CTS: a remote is there")

    def test_divisor_latch(self):
        self.u.write(3, 0x80)
        self.u.write(0, 3)
        self.u.write(1, 0)
        self.assertEqual(self.out, bytearray(), "divisor bytes are not console output")
        self.assertEqual((self.u.read(0), self.u.read(1)), (3, 0))

    def test_fifo_flag_and_loopback(self):
        self.u.write(2, 0xC7)
        self.assertEqual(self.u.read(2) & 0xC0, 0xC0, "FIFOs enabled")
        self.u.write(4, 0x10)
        msg = b"hello world!1337"
        for b in msg:
            self.u.write(0, b)
        self.assertEqual(self.out, bytearray(), "looped back, not sent")
        got = bytearray()
        while self.u.read(5) & 1:
            got.append(self.u.read(0))
        self.assertEqual(bytes(got), msg)
        self.u.write(4, 0x0B)
        self.assertEqual(self.u.read(5) & 1, 0)


class LayoutTest(unittest.TestCase):
    def test_first_free_level4_entries(self):
        l4 = bed.Level4Entries()
        l4.mark(0, 256 << 20)
        self.assertEqual(l4.free_address(1 << 20), 1 << 39)
        self.assertEqual(l4.free_address(1 << 20), 2 << 39)
        l4.used[3:256] = [True] * 253
        self.assertEqual(l4.free_address(1), 0xFFFF_8000_0000_0000, "upper half is canonical")

    def test_selftest_elf_has_relative_relocations_only(self):
        elf = bed.Elf(bed.selftest_kernel().read_bytes())
        self.assertEqual(elf.type, bed.ET_DYN, "a static PIE, like the kernel")
        relocs = elf.relocations()
        self.assertTrue(relocs)
        self.assertTrue(all(t == bed.R_X86_64_RELATIVE for _, t, _ in relocs))
        self.assertEqual(len(elf.section_bytes(".bootloader-config")), 133)


class BootInfoTest(unittest.TestCase):
    """Encodes a BootInfo with the layouts the real types report and reads
    the fields back at the offsets bochs-bootinfo gave."""

    @classmethod
    def setUpClass(cls):
        tool = bed.layout_tool()
        cls.layout = json.loads(subprocess.run([str(tool), "layout"], check=True,
                                               capture_output=True, text=True).stdout)

    def test_round_trip(self):
        lay = self.layout
        values = {"physical_memory_offset": 0x180_0000_0000, "recursive_index": None,
                  "tls_template": None, "ramdisk_len": 0, "kernel_addr": 0x100000,
                  "kernel_len": 4096, "kernel_image_offset": 0x80_0000_0000,
                  "kernel_stack_bottom": 0x100_0000_1000, "kernel_stack_len": 0x14000,
                  "_test_sentinel": 0}
        regions = [(0x1000, 0x9F000, "Usable"), (0x100000, 0x200000, "Bootloader")]
        info, arr = bed.encode_boot_info(lay, values, regions, 0x2000_0000_00F0, 4)
        bi = lay["boot_info"]
        self.assertEqual(len(info), bi["size"])
        q = lambda off: struct.unpack_from("<Q", info, off)[0]  # noqa: E731
        mr = lay["memory_regions"]
        self.assertEqual(q(bi["memory_regions"] + mr["ptr"]), 0x2000_0000_00F0)
        self.assertEqual(q(bi["memory_regions"] + mr["len"]), 2)
        opt = lay["optional"]
        pmo = bi["physical_memory_offset"]
        self.assertEqual(struct.unpack_from("<I", info, pmo)[0], opt["Some"])
        self.assertEqual(q(pmo + opt["u64"]["payload"]), 0x180_0000_0000)
        self.assertEqual(struct.unpack_from("<I", info, bi["framebuffer"])[0], opt["None"])
        self.assertEqual(q(bi["kernel_stack_len"]), 0x14000)
        major_off, major = lay["api_version"]["major"]
        minor_off, minor = lay["api_version"]["minor"]
        self.assertEqual((major, minor), (0, 11))
        self.assertEqual(struct.unpack_from("<H", info, bi["api_version"] + minor_off)[0], 11)
        r = lay["memory_region"]
        k = lay["memory_region_kind"]
        self.assertEqual(struct.unpack_from("<Q", arr, r["size"] + r["start"])[0], 0x100000)
        self.assertEqual(struct.unpack_from("<I", arr, r["size"] + r["kind"])[0], k["Bootloader"])
        self.assertEqual(struct.unpack_from("<I", arr, r["kind"])[0], k["Usable"])


if __name__ == "__main__":
    unittest.main()
