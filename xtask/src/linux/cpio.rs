//! A writer of "newc" cpio archives, the format Linux unpacks as an
//! initramfs (the kernel's Documentation/driver-api/early-userspace/
//! buffer-format.rst).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit
//! hex fields: ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
//! devminor, rdevmajor, rdevminor, namesize including its NUL, check), the
//! name and its NUL padded to a multiple of 4 bytes, then the data padded
//! to a multiple of 4. The archive ends with an entry named `TRAILER!!!`.
//! Owners are root, times 0, so the same inputs give the same bytes.

/// File-type bits of `mode` (POSIX `S_IF*`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// A newc archive being written.
#[derive(Debug, Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
}

/// The device numbers of a character or block device entry.
#[derive(Clone, Copy, Debug)]
struct Rdev {
    major: u32,
    minor: u32,
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            bytes: Vec::new(),
            next_ino: 1,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: Rdev,
        data: &[u8],
    ) -> Result<(), String> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(format!(
                "cpio: bad entry name {name:?} (relative, non-empty, no NUL)"
            ));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| format!("cpio: {name}: {} bytes is over newc's 4 GiB", data.len()))?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.major,
            rdev.minor,
            name.len() as u32 + 1,
            0, // check (only for the "070702" format)
        ];
        self.bytes.extend_from_slice(MAGIC);
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        pad4(&mut self.bytes);
        self.bytes.extend_from_slice(data);
        pad4(&mut self.bytes);
        Ok(())
    }

    /// A directory (`perm` like 0o755).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), String> {
        self.entry(name, S_IFDIR | perm, 2, Rdev { major: 0, minor: 0 }, &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), String> {
        self.entry(name, S_IFREG | perm, 1, Rdev { major: 0, minor: 0 }, data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), String> {
        self.entry(
            name,
            S_IFLNK | 0o777,
            1,
            Rdev { major: 0, minor: 0 },
            target.as_bytes(),
        )
    }

    /// A character device node.
    pub fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), String> {
        self.entry(name, S_IFCHR | perm, 1, Rdev { major, minor }, &[])
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, 1, Rdev { major: 0, minor: 0 }, &[])
            .expect("the trailer's name is valid");
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of a header before the name.
    const HEADER_BYTES: usize = 110;

    /// One entry read back: name, mode, nlink, rdev, data.
    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Reads an archive back, checking magic and alignment on the way (an
    /// independent reader, written from the format description).
    fn read(mut bytes: &[u8]) -> Vec<Entry> {
        let total = bytes.len();
        let mut out = Vec::new();
        loop {
            let at = total - bytes.len();
            assert_eq!(at % 4, 0, "entry at {at} not 4-aligned");
            assert_eq!(&bytes[..6], MAGIC);
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[6 + i * 8..6 + i * 8 + 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, nlink, size) = (field(1), field(4), field(6) as usize);
            let (rdev, namesize) = ((field(9), field(10)), field(11) as usize);
            let name_end = HEADER_BYTES + namesize;
            assert_eq!(bytes[name_end - 1], 0, "name NUL-terminated");
            let name = std::str::from_utf8(&bytes[HEADER_BYTES..name_end - 1]).unwrap();
            let data_at = name_end.next_multiple_of(4);
            assert!(bytes[name_end..data_at].iter().all(|&b| b == 0));
            let data = bytes[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            assert!(bytes[data_at + size..next].iter().all(|&b| b == 0));
            bytes = &bytes[next..];
            if name == TRAILER {
                assert!(bytes.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push(Entry {
                name: name.into(),
                mode,
                nlink,
                rdev,
                data,
            });
        }
    }

    #[test]
    fn header_bytes_are_the_newc_layout() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let bytes = c.finish();
        let header = std::str::from_utf8(&bytes[..HEADER_BYTES]).unwrap();
        assert_eq!(
            header,
            "070701\
             00000001\
             000081ED\
             00000000\
             00000000\
             00000001\
             00000000\
             0000000A\
             00000000\
             00000000\
             00000000\
             00000000\
             00000005\
             00000000"
        );
        // 110 + "init\0" = 115, padded to 116; 10 data bytes padded to 12.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(&bytes[126..128], b"\0\0");
        assert_eq!(&bytes[128..134], MAGIC);
        assert_eq!(&bytes[128 + 110..128 + 110 + 11], b"TRAILER!!!\0");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn every_kind_of_entry_reads_back() {
        let mut c = Cpio::new();
        c.dir("bin", 0o755).unwrap();
        c.file("bin/busybox", 0o755, &[0x7f, b'E', b'L', b'F', 1])
            .unwrap();
        c.symlink("bin/sh", "busybox").unwrap();
        c.dir("dev", 0o755).unwrap();
        c.char_dev("dev/console", 0o600, 5, 1).unwrap();
        c.file("empty", 0o644, &[]).unwrap();
        // Names of every length mod 4 exercise the name padding.
        for name in ["a", "ab", "abc", "abcd"] {
            c.file(name, 0o600, name.as_bytes()).unwrap();
        }
        let entries = read(&c.finish());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "empty",
                "a",
                "ab",
                "abc",
                "abcd"
            ]
        );
        assert_eq!(entries[0].mode, 0o040755);
        assert_eq!(entries[0].nlink, 2);
        assert_eq!(entries[1].mode, 0o100755);
        assert_eq!(entries[1].data, [0x7f, b'E', b'L', b'F', 1]);
        assert_eq!(entries[2].mode, 0o120777);
        assert_eq!(entries[2].data, b"busybox");
        assert_eq!(entries[4].mode, 0o020600);
        assert_eq!(entries[4].rdev, (5, 1));
        assert!(entries[5].data.is_empty());
        assert_eq!(entries[9].data, b"abcd");
    }

    #[test]
    fn bad_names_are_refused() {
        let mut c = Cpio::new();
        assert!(
            c.file("/init", 0o755, b"")
                .unwrap_err()
                .contains("bad entry name")
        );
        assert!(c.file("", 0o755, b"").is_err());
        assert!(c.file("a\0b", 0o755, b"").is_err());
    }
}
