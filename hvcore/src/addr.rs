//! Address newtypes.
//!
//! Guest-physical and host-physical addresses are different spaces; mixing
//! them up is the classic second-level-paging bug, so each is its own type
//! with no `+`/`-`: arithmetic is explicit and named.

/// Size of the smallest page, in bytes.
pub const PAGE_SIZE_4K: u64 = 4096;
/// Size of a 2 MiB large page, in bytes.
pub const PAGE_SIZE_2M: u64 = 2 * 1024 * 1024;
/// Size of a 1 GiB huge page, in bytes.
pub const PAGE_SIZE_1G: u64 = 1024 * 1024 * 1024;

macro_rules! phys_addr {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }
            /// The raw address.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// The address `bytes` further on, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// The 4 KiB page number.
            pub const fn page_number(self) -> u64 {
                self.0 / PAGE_SIZE_4K
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

phys_addr!(
    /// A guest-physical address: what the guest believes is physical memory,
    /// translated by EPT/NPT.
    GuestPhysAddr
);
phys_addr!(
    /// A host-physical address: a real frame of the machine.
    HostPhysAddr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_and_page_number() {
        let a = GuestPhysAddr::new(0x20_1234);
        assert_eq!(a.align_down(PAGE_SIZE_4K), GuestPhysAddr::new(0x20_1000));
        assert_eq!(a.align_down(PAGE_SIZE_2M), GuestPhysAddr::new(0x20_0000));
        assert!(!a.is_aligned(PAGE_SIZE_4K));
        assert_eq!(a.page_number(), 0x201);
        assert_eq!(HostPhysAddr::new(u64::MAX).checked_add(1), None);
    }
}
