//! Typed access to physical memory through the bootloader's mapping of all
//! physical memory (`BootInfo::physical_memory_offset`): host-physical
//! address in, pointer out.
//!
//! The mapping covers every usable frame and at least the first 4 GiB (so the
//! local APIC's registers too). Turning an address into a pointer is safe;
//! using the pointer is the caller's business, with the usual `unsafe`
//! contract: the memory must not be something Rust code owns under a
//! reference at the same time. The helpers here that touch memory are
//! `unsafe fn`s that say so.

use core::sync::atomic::{AtomicU64, Ordering};
use hvcore::addr::{HostPhysAddr, PAGE_SIZE_4K};

static OFFSET: AtomicU64 = AtomicU64::new(u64::MAX);

pub(super) fn set_offset(offset: u64) {
    OFFSET.store(offset, Ordering::Release);
}

/// The virtual address at which physical address 0 is mapped.
///
/// # Panics
/// Before `mem::init` (the mapping is not known yet).
pub fn offset() -> u64 {
    let offset = OFFSET.load(Ordering::Acquire);
    assert!(
        offset != u64::MAX,
        "physical memory accessed before mem::init"
    );
    offset
}

/// The kernel pointer through which `addr` is reached.
pub fn to_virt(addr: HostPhysAddr) -> *mut u8 {
    offset().wrapping_add(addr.as_u64()) as *mut u8
}

/// [`to_virt`] as a typed pointer; `addr` must be aligned for `T`.
///
/// # Panics
/// If `addr` is not aligned for `T`.
pub fn ptr<T>(addr: HostPhysAddr) -> *mut T {
    assert!(
        addr.is_aligned(core::mem::align_of::<T>() as u64),
        "{addr:?} is not aligned for {}",
        core::any::type_name::<T>()
    );
    to_virt(addr).cast()
}

/// The physical address of a pointer into the mapping of physical memory.
pub fn from_virt(ptr: *const u8) -> HostPhysAddr {
    HostPhysAddr::new((ptr as u64).wrapping_sub(offset()))
}

/// Reads a `T` at `addr` (volatile: the memory may be a device or a guest).
///
/// # Safety
/// `addr..addr + size_of::<T>()` is RAM or a device register that may be
/// read, holding a valid `T`, and no Rust reference owns it mutably.
pub unsafe fn read<T: Copy>(addr: HostPhysAddr) -> T {
    // SAFETY: the caller vouches for the memory; `ptr` checked alignment.
    unsafe { ptr::<T>(addr).read_volatile() }
}

/// Writes a `T` at `addr` (volatile).
///
/// # Safety
/// `addr..addr + size_of::<T>()` is memory the caller owns (a frame it was
/// handed, or a device register it drives), with no Rust reference to it.
pub unsafe fn write<T: Copy>(addr: HostPhysAddr, value: T) {
    // SAFETY: the caller vouches for the memory; `ptr` checked alignment.
    unsafe { ptr::<T>(addr).write_volatile(value) }
}

/// Fills `len_bytes` at `addr` with zeros.
///
/// # Safety
/// As for [`write`]: the caller owns the whole range.
pub unsafe fn zero(addr: HostPhysAddr, len_bytes: u64) {
    // SAFETY: the caller owns the range; it lies inside the mapping.
    unsafe { core::ptr::write_bytes(to_virt(addr), 0, len_bytes as usize) }
}

/// A frame the caller owns, as a byte slice.
///
/// # Safety
/// The caller owns `addr..addr + len_bytes` for the slice's lifetime `'a`
/// and no other reference to it exists.
pub unsafe fn bytes_mut<'a>(addr: HostPhysAddr, len_bytes: u64) -> &'a mut [u8] {
    // SAFETY: the caller's contract is the slice contract.
    unsafe { core::slice::from_raw_parts_mut(to_virt(addr), len_bytes as usize) }
}

/// Whether `addr` is 4 KiB aligned (the granularity of every table page).
pub const fn is_page_aligned(addr: HostPhysAddr) -> bool {
    addr.is_aligned(PAGE_SIZE_4K)
}
