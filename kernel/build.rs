//! Puts the guest images (flat binaries that `cargo xtask images` builds,
//! in `target/guests/`) into OUT_DIR for `include_bytes!`. A guest that is
//! not built yet becomes an empty image, which the kernel refuses to run
//! with a message naming the command, so `cargo check` works on a fresh
//! tree. `THERMOCLINE_GUESTS_DIR` overrides where the images are read from.

use std::path::PathBuf;

const GUESTS: [&str; 5] = ["hello", "pattern", "checksum", "evil", "smp"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-env-changed=THERMOCLINE_GUESTS_DIR");
    let dir = std::env::var_os("THERMOCLINE_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/guests"));
    for name in GUESTS {
        let src = dir.join(format!("{name}.bin"));
        println!("cargo:rerun-if-changed={}", src.display());
        let bytes = std::fs::read(&src).unwrap_or_default();
        std::fs::write(out.join(format!("{name}.bin")), bytes).expect("OUT_DIR is writable");
    }
}
