//! Tells the Bochs bed (`tests/bochs/bed.py`) what the bootloader would know.
//!
//! The bed has no firmware and no bootloader: the harness builds the
//! `bootloader_api::BootInfo` itself, in guest memory. Its layout is whatever
//! the `bootloader_api` version in Cargo.lock says, so the offsets come from
//! the real types here (`offset_of!`, `size_of`, and enum tags read back from
//! real values), never from a copy of the struct in Python.
//!
//! - `bochs-bootinfo layout` prints the layouts as JSON.
//! - `bochs-bootinfo config <hex>` decodes the kernel's `.bootloader-config`
//!   section (the bytes `entry_point!` stores) with
//!   `BootloaderConfig::deserialize` and prints the mappings as JSON.
//!
//! Neighbours: `tests/bochs/bed.py` runs this and encodes the structures;
//! `tests/bochs/README.md` documents the entry contract.
#![feature(offset_of_enum)]

use core::mem::{align_of, offset_of, size_of};
use std::fmt::Write as _;
use std::process::ExitCode;

use bootloader_api::config::Mapping;
use bootloader_api::info::{
    FrameBuffer, MemoryRegion, MemoryRegionKind, MemoryRegions, Optional, TlsTemplate,
};
use bootloader_api::{BootInfo, BootloaderConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["layout"] => layout(),
        ["config", hex] => config(hex),
        _ => Err("usage: bochs-bootinfo layout | config <hex bytes of .bootloader-config>".into()),
    };
    match out {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bochs-bootinfo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the discriminant of a `#[repr(C)]` enum value.
///
/// A `#[repr(C)]` enum with fields starts with its tag, a C `int`-sized
/// field, so these bytes are always initialised (unlike padding or the
/// payload of a field-less variant, which this never reads).
fn tag_of<T>(value: &T) -> u32 {
    assert!(size_of::<T>() >= size_of::<u32>() && align_of::<T>() >= align_of::<u32>());
    // SAFETY: `T` is a `#[repr(C)]` enum whose first `size_of::<u32>()` bytes
    // are its initialised tag (checked by `tag_size`), the reference is valid
    // and aligned for u32 (asserted above).
    unsafe { (value as *const T).cast::<u32>().read() }
}

/// The tag size of a `#[repr(C)]` enum: the size of an `Optional` with an
/// empty payload.
fn tag_size() -> Result<usize, String> {
    let size = size_of::<Optional<()>>();
    if size == size_of::<u32>() {
        Ok(size)
    } else {
        Err(format!("unexpected repr(C) enum tag size {size}"))
    }
}

/// Mirror of `ApiVersion`, whose fields are private; `layout` proves the
/// mirror right by transmuting one into the real type and reading it back
/// through the public getters.
#[repr(C)]
struct ApiVersionMirror {
    major: u16,
    minor: u16,
    patch: u16,
    pre_release: bool,
}

fn api_version_layout(info: &BootInfo) -> Result<String, String> {
    let real = &info.api_version;
    if size_of::<ApiVersionMirror>() != size_of_val(real)
        || align_of::<ApiVersionMirror>() != align_of_val(real)
    {
        return Err("ApiVersion layout changed".into());
    }
    // Every probe byte is 0 or 1, so it is a valid `bool` wherever the real
    // type might keep one, and the three u16 values differ from each other.
    let probe = ApiVersionMirror {
        major: 0x0100,
        minor: 0x0001,
        patch: 0x0101,
        pre_release: true,
    };
    let mut bytes = [0u8; size_of::<ApiVersionMirror>()];
    bytes[offset_of!(ApiVersionMirror, major)..][..2].copy_from_slice(&probe.major.to_ne_bytes());
    bytes[offset_of!(ApiVersionMirror, minor)..][..2].copy_from_slice(&probe.minor.to_ne_bytes());
    bytes[offset_of!(ApiVersionMirror, patch)..][..2].copy_from_slice(&probe.patch.to_ne_bytes());
    bytes[offset_of!(ApiVersionMirror, pre_release)] = 1;
    // SAFETY: `bytes` has the size of `ApiVersion` (checked above) and is fully
    // initialised; `ApiVersion` holds only u16s and a bool, and every byte is
    // 0 or 1, so any placement of its fields reads valid values.
    let as_real: bootloader_api::config::ApiVersion = unsafe { core::mem::transmute_copy(&bytes) };
    if (
        as_real.version_major(),
        as_real.version_minor(),
        as_real.version_patch(),
        as_real.pre_release(),
    ) != (probe.major, probe.minor, probe.patch, probe.pre_release)
    {
        return Err("ApiVersion field order changed".into());
    }
    Ok(format!(
        r#"{{"size":{},"major":[{},{}],"minor":[{},{}],"patch":[{},{}],"pre_release":[{},{}]}}"#,
        size_of::<ApiVersionMirror>(),
        offset_of!(ApiVersionMirror, major),
        real.version_major(),
        offset_of!(ApiVersionMirror, minor),
        real.version_minor(),
        offset_of!(ApiVersionMirror, patch),
        real.version_patch(),
        offset_of!(ApiVersionMirror, pre_release),
        u8::from(real.pre_release()),
    ))
}

/// Where `MemoryRegions` (private `ptr` and `len`) keeps the pointer and the
/// length: build one from a real slice and find both values.
fn memory_regions_layout() -> Result<String, String> {
    const WORD: usize = size_of::<u64>();
    let slice: &'static mut [MemoryRegion] =
        Box::leak(vec![MemoryRegion::empty(); 3].into_boxed_slice());
    let ptr = slice.as_ptr() as u64;
    let regions = MemoryRegions::from(slice);
    if size_of::<MemoryRegions>() != 2 * WORD {
        return Err("MemoryRegions is not two words".into());
    }
    // SAFETY: `MemoryRegions` is `#[repr(C)]` and exactly two words (checked
    // above): a pointer and a usize, so it has no padding and both words are
    // initialised.
    let words: [u64; 2] = unsafe { core::mem::transmute_copy(&regions) };
    let find = |value: u64| words.iter().position(|&w| w == value).map(|i| i * WORD);
    match (find(ptr), find(3)) {
        (Some(p), Some(l)) if p != l => Ok(format!(
            r#"{{"size":{},"ptr":{p},"len":{l}}}"#,
            size_of::<MemoryRegions>()
        )),
        _ => Err("cannot locate MemoryRegions fields".into()),
    }
}

fn layout() -> Result<String, String> {
    let tag = tag_size()?;
    let info = BootInfo::new(MemoryRegions::from(
        Box::leak(Box::new([])) as &mut [MemoryRegion]
    ));

    let mut s = String::from("{");
    let _ = write!(s, r#""api_version":{},"#, api_version_layout(&info)?);
    let _ = write!(s, r#""memory_regions":{},"#, memory_regions_layout()?);

    macro_rules! fields {
        ($ty:ty: $($f:ident),*) => {{
            let mut o = format!(r#"{{"size":{},"align":{}"#, size_of::<$ty>(), align_of::<$ty>());
            $( let _ = write!(o, r#","{}":{}"#, stringify!($f), offset_of!($ty, $f)); )*
            o.push('}');
            o
        }};
    }
    let _ = write!(
        s,
        r#""boot_info":{},"#,
        fields!(BootInfo: api_version, memory_regions, framebuffer, physical_memory_offset,
            recursive_index, rsdp_addr, tls_template, ramdisk_addr, ramdisk_len, kernel_addr,
            kernel_len, kernel_image_offset, kernel_stack_bottom, kernel_stack_len, _test_sentinel)
    );
    let _ = write!(
        s,
        r#""memory_region":{},"#,
        fields!(MemoryRegion: start, end, kind)
    );
    let _ = write!(
        s,
        r#""tls_template":{},"#,
        fields!(TlsTemplate: start_addr, file_size, mem_size)
    );

    let _ = write!(
        s,
        r#""memory_region_kind":{{"size":{},"tag_size":{tag},"payload":{},"Usable":{},"Bootloader":{},"UnknownUefi":{},"UnknownBios":{}}},"#,
        size_of::<MemoryRegionKind>(),
        offset_of!(MemoryRegionKind, UnknownUefi.0),
        tag_of(&MemoryRegionKind::Usable),
        tag_of(&MemoryRegionKind::Bootloader),
        tag_of(&MemoryRegionKind::UnknownUefi(0)),
        tag_of(&MemoryRegionKind::UnknownBios(0)),
    );
    let _ = write!(
        s,
        r#""optional":{{"tag_size":{tag},"Some":{},"None":{},"#,
        tag_of(&Optional::Some(0u64)),
        tag_of(&Optional::<u64>::None),
    );
    let _ = write!(
        s,
        r#""u64":{{"size":{},"payload":{}}},"u16":{{"size":{},"payload":{}}},"tls_template":{{"size":{},"payload":{}}},"framebuffer":{{"size":{},"payload":{}}}}}"#,
        size_of::<Optional<u64>>(),
        offset_of!(Optional<u64>, Some.0),
        size_of::<Optional<u16>>(),
        offset_of!(Optional<u16>, Some.0),
        size_of::<Optional<TlsTemplate>>(),
        offset_of!(Optional<TlsTemplate>, Some.0),
        size_of::<Optional<FrameBuffer>>(),
        offset_of!(Optional<FrameBuffer>, Some.0),
    );
    s.push('}');
    Ok(s)
}

fn mapping_json(m: &Mapping) -> String {
    match m {
        Mapping::Dynamic => r#""dynamic""#.into(),
        Mapping::FixedAddress(addr) => addr.to_string(),
    }
}

fn opt_json<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "null".into(), f)
}

fn config(hex: &str) -> Result<String, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect::<Result<Vec<u8>, _>>()?;
    let c = BootloaderConfig::deserialize(&bytes)
        .map_err(|e| format!("bad .bootloader-config: {e}"))?;
    let m = &c.mappings;
    Ok(format!(
        r#"{{"kernel_stack_size":{},"kernel_stack":{},"kernel_base":{},"boot_info":{},"framebuffer":{},"physical_memory":{},"page_table_recursive":{},"aslr":{},"dynamic_range_start":{},"dynamic_range_end":{},"ramdisk_memory":{}}}"#,
        c.kernel_stack_size,
        mapping_json(&m.kernel_stack),
        mapping_json(&m.kernel_base),
        mapping_json(&m.boot_info),
        mapping_json(&m.framebuffer),
        opt_json(m.physical_memory.as_ref(), mapping_json),
        opt_json(m.page_table_recursive.as_ref(), mapping_json),
        m.aslr,
        opt_json(m.dynamic_range_start, |v| v.to_string()),
        opt_json(m.dynamic_range_end, |v| v.to_string()),
        mapping_json(&m.ramdisk_memory),
    ))
}
