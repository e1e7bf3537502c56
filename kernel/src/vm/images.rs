//! The test guests (crate `guests/`), built by `cargo xtask images` (and by
//! `run` and `test`, which build the images)
//! and embedded at kernel build time by `kernel/build.rs`. An image that
//! was not built is empty; `Vm::new` refuses it with a message.

/// A guest binary and its name.
#[derive(Clone, Copy, Debug)]
pub struct Image {
    /// The guest's name (`--guest NAME`).
    pub name: &'static str,
    /// The flat binary, loaded at `hvcore::guest_layout::IMAGE_GPA`.
    pub bytes: &'static [u8],
}

/// Prints and exits.
pub const HELLO: Image = Image {
    name: "hello",
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/hello.bin")),
};
/// Known access pattern with ground truth reports.
pub const PATTERN: Image = Image {
    name: "pattern",
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/pattern.bin")),
};
/// Writes, re-reads and verifies its memory.
pub const CHECKSUM: Image = Image {
    name: "checksum",
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/checksum.bin")),
};
/// One misbehaviour per run.
pub const EVIL: Image = Image {
    name: "evil",
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/evil.bin")),
};

/// Several vCPUs: starts, counters, HLT wait and wake, string I/O.
pub const SMP: Image = Image {
    name: "smp",
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/smp.bin")),
};

/// Every guest.
pub const ALL: [Image; 5] = [HELLO, PATTERN, CHECKSUM, EVIL, SMP];

/// The guest called `name`.
pub fn by_name(name: &str) -> Option<Image> {
    ALL.into_iter().find(|i| i.name == name)
}
