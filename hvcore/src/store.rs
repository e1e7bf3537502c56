//! The compressed page store: where the reclaimer puts the contents of the
//! guest pages it takes away, keyed by guest page number.
//!
//! A page is kept in one of three forms ([`StoredKind`]):
//! * **zero**: a page of zeros costs no data at all (the most common cold
//!   page of a freshly booted guest);
//! * **compressed**: LZ4 block format ([`lz4_flex`], `no_std`, no alloc);
//! * **raw**: a page that does not compress to at most
//!   [`MAX_COMPRESSED_BYTES`] is kept as it is, so a later fault-in does
//!   not pay for a decompression that saves nothing.
//!
//! Why LZ4 (`lz4_flex`): the reclaimer compresses on the aging CPU and the
//! fault path decompresses while a vCPU waits, so speed matters more than
//! ratio; LZ4 compresses a 4 KiB page in a few microseconds and
//! decompresses several times faster, where DEFLATE (`miniz_oxide`) gives a
//! better ratio at about ten times the compression cost. `lz4_flex` is pure
//! Rust, builds without `alloc` (its hash table lives on the stack, 8 KiB
//! for inputs under 64 KiB), and its safe, checked decoder turns a corrupt
//! block into an error.
//!
//! Every entry carries a 64-bit checksum of the original page, checked
//! after decompression: a corrupt or missing entry is a [`StoreError`],
//! never a panic and never wrong bytes handed to a guest.
//!
//! Memory comes from the `alloc` heap with fallible reservations
//! (`try_reserve_exact`): when the heap cannot grow, [`PageStore::put`]
//! says so and the reclaimer keeps the page resident.
//!
//! Neighbours: [`crate::reclaim`] (the only writer), the report
//! ([`crate::report`]) prints [`StoreStats`].

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use lz4_flex::block::CompressTable;

/// Bytes in a page.
pub const PAGE_BYTES: usize = 4096;
/// Largest compressed size worth keeping: 3/4 of a page. A page that does
/// not shrink by at least a quarter is stored raw.
pub const MAX_COMPRESSED_BYTES: usize = PAGE_BYTES * 3 / 4;
/// Scratch size the LZ4 encoder may need for one page.
const SCRATCH_BYTES: usize = lz4_flex::block::get_maximum_output_size(PAGE_BYTES);

/// How a page is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredKind {
    /// All zeros; no data kept.
    Zero,
    /// LZ4-compressed.
    Compressed,
    /// Kept uncompressed (it did not compress well).
    Raw,
}

/// Why the store could not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No entry for this page.
    Missing(u64),
    /// The entry does not decode to a page with its checksum.
    Corrupt(u64),
    /// The heap could not provide the bytes for a new entry.
    NoMemory,
    /// The page does not compress and raw copies were not wanted
    /// ([`PageStore::put_as`]).
    Incompressible,
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::Missing(k) => write!(f, "page store: no entry for page {k:#x}"),
            StoreError::Corrupt(k) => write!(f, "page store: entry for page {k:#x} is corrupt"),
            StoreError::NoMemory => write!(f, "page store: out of heap memory"),
            StoreError::Incompressible => write!(f, "page store: page does not compress"),
        }
    }
}

/// Counters of what the store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Pages kept as zero.
    pub zero_pages: u64,
    /// Pages kept compressed.
    pub compressed_pages: u64,
    /// Bytes those compressed pages take.
    pub compressed_bytes: u64,
    /// Pages kept raw.
    pub raw_pages: u64,
}

impl StoreStats {
    /// Pages in the store.
    pub fn pages(&self) -> u64 {
        self.zero_pages + self.compressed_pages + self.raw_pages
    }
    /// Bytes of page data held (compressed plus raw; zero pages hold none).
    pub fn stored_bytes(&self) -> u64 {
        self.compressed_bytes + self.raw_pages * PAGE_BYTES as u64
    }
    /// Compression ratio of the non-zero pages (original bytes over stored
    /// bytes) in thousandths: 1000 is no gain, 0 when nothing is stored.
    pub fn ratio_milli(&self) -> u64 {
        let original = (self.compressed_pages + self.raw_pages) * PAGE_BYTES as u64;
        let stored = self.stored_bytes();
        (original * 1000).checked_div(stored).unwrap_or(0)
    }
}

#[derive(Debug)]
struct Entry {
    kind: StoredKind,
    /// Compressed or raw bytes; empty for zero pages.
    data: Vec<u8>,
    checksum: u64,
}

/// The store of one VM (or of the whole host: keys are whatever the caller
/// chooses; the reclaimer uses guest page numbers).
///
/// The encoder's hash table (8 KiB) and output buffer live on the heap,
/// made once: kernel thread stacks are small, and a debug build would
/// otherwise keep several page-sized temporaries on them.
pub struct PageStore {
    entries: BTreeMap<u64, Entry>,
    stats: StoreStats,
    scratch: Box<[u8; SCRATCH_BYTES]>,
    table: Box<CompressTable>,
}

impl core::fmt::Debug for PageStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageStore")
            .field("entries", &self.entries.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for PageStore {
    fn default() -> Self {
        PageStore {
            entries: BTreeMap::new(),
            stats: StoreStats::default(),
            scratch: Box::new([0; SCRATCH_BYTES]),
            table: Box::new(CompressTable::small()),
        }
    }
}

/// FNV-1a over 64-bit words: cheap, and any flipped bit changes it.
fn checksum(page: &[u8; PAGE_BYTES]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in page.as_chunks::<8>().0 {
        h ^= u64::from_le_bytes(*chunk);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether every byte of `page` is zero.
pub fn is_zero_page(page: &[u8; PAGE_BYTES]) -> bool {
    page.as_chunks::<8>()
        .0
        .iter()
        .all(|c| u64::from_ne_bytes(*c) == 0)
}

impl PageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the store holds.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Whether `key` has an entry.
    pub fn contains(&self, key: u64) -> bool {
        self.entries.contains_key(&key)
    }

    /// How `key` is kept, if it is.
    pub fn kind(&self, key: u64) -> Option<StoredKind> {
        self.entries.get(&key).map(|e| e.kind)
    }

    /// Keeps a copy of `page` under `key`, replacing any older entry.
    /// On [`StoreError::NoMemory`] the store is unchanged except that an
    /// older entry for `key` is gone (it no longer matches the page).
    pub fn put(&mut self, key: u64, page: &[u8; PAGE_BYTES]) -> Result<StoredKind, StoreError> {
        self.put_as(key, page, true)
    }

    /// As [`Self::put`], but a page that does not compress is not kept
    /// when `raw_ok` is false: [`StoreError::Incompressible`] (an older
    /// entry for `key` is gone all the same). Under host memory pressure
    /// a raw copy would cost the heap the very frame reclaim frees.
    pub fn put_as(
        &mut self,
        key: u64,
        page: &[u8; PAGE_BYTES],
        raw_ok: bool,
    ) -> Result<StoredKind, StoreError> {
        self.remove(key);
        let sum = checksum(page);
        let entry = if is_zero_page(page) {
            Entry {
                kind: StoredKind::Zero,
                data: Vec::new(),
                checksum: sum,
            }
        } else {
            let scratch = &mut self.scratch[..];
            let compressed =
                lz4_flex::block::compress_into_with_table(page, scratch, &mut self.table)
                    .ok()
                    .filter(|&n| n <= MAX_COMPRESSED_BYTES);
            let (kind, bytes): (StoredKind, &[u8]) = match compressed {
                Some(n) => (StoredKind::Compressed, &self.scratch[..n]),
                None if raw_ok => (StoredKind::Raw, &page[..]),
                None => return Err(StoreError::Incompressible),
            };
            let mut data = Vec::new();
            data.try_reserve_exact(bytes.len())
                .map_err(|_| StoreError::NoMemory)?;
            data.extend_from_slice(bytes);
            Entry {
                kind,
                data,
                checksum: sum,
            }
        };
        let kind = entry.kind;
        self.account(&entry, true);
        self.entries.insert(key, entry);
        Ok(kind)
    }

    /// Writes the page kept under `key` into `out`, checking it.
    pub fn get(&self, key: u64, out: &mut [u8; PAGE_BYTES]) -> Result<StoredKind, StoreError> {
        let e = self.entries.get(&key).ok_or(StoreError::Missing(key))?;
        match e.kind {
            StoredKind::Zero => {
                if !e.data.is_empty() {
                    return Err(StoreError::Corrupt(key));
                }
                out.fill(0);
            }
            StoredKind::Raw => {
                if e.data.len() != PAGE_BYTES {
                    return Err(StoreError::Corrupt(key));
                }
                out.copy_from_slice(&e.data);
            }
            StoredKind::Compressed => match lz4_flex::block::decompress_into(&e.data, out) {
                Ok(PAGE_BYTES) => {}
                _ => return Err(StoreError::Corrupt(key)),
            },
        }
        if checksum(out) != e.checksum {
            return Err(StoreError::Corrupt(key));
        }
        Ok(e.kind)
    }

    /// Drops the entry for `key`; whether there was one.
    pub fn remove(&mut self, key: u64) -> bool {
        match self.entries.remove(&key) {
            Some(e) => {
                self.account(&e, false);
                true
            }
            None => false,
        }
    }

    fn account(&mut self, e: &Entry, add: bool) {
        let s = &mut self.stats;
        let (count, bytes) = match e.kind {
            StoredKind::Zero => (&mut s.zero_pages, None),
            StoredKind::Compressed => (&mut s.compressed_pages, Some(&mut s.compressed_bytes)),
            StoredKind::Raw => (&mut s.raw_pages, None),
        };
        if add {
            *count += 1;
        } else {
            *count -= 1;
        }
        if let Some(b) = bytes {
            if add {
                *b += e.data.len() as u64;
            } else {
                *b -= e.data.len() as u64;
            }
        }
    }

    /// Flips one byte of an entry's data (or its checksum when it has no
    /// data): fault injection for tests of the corrupt-entry path.
    #[doc(hidden)]
    pub fn corrupt_for_test(&mut self, key: u64) -> bool {
        let Some(e) = self.entries.get_mut(&key) else {
            return false;
        };
        let mid = e.data.len() / 2;
        match e.data.get_mut(mid) {
            Some(b) => *b ^= 0x5a,
            None => e.checksum ^= 1,
        }
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn text_page(seed: u8) -> [u8; PAGE_BYTES] {
        let mut p = [0u8; PAGE_BYTES];
        for (i, b) in p.iter_mut().enumerate() {
            *b = b"the quick brown fox jumps over the lazy dog "[i % 44].wrapping_add(seed);
        }
        p
    }

    fn noise_page(mut x: u64) -> [u8; PAGE_BYTES] {
        let mut p = [0u8; PAGE_BYTES];
        for b in p.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        p
    }

    #[test]
    fn kinds_round_trip_and_accounting() {
        let mut s = PageStore::new();
        let zero = [0u8; PAGE_BYTES];
        let text = text_page(1);
        let noise = noise_page(0x1234_5678);
        assert_eq!(s.put(1, &zero), Ok(StoredKind::Zero));
        assert_eq!(s.put(2, &text), Ok(StoredKind::Compressed));
        assert_eq!(s.put(3, &noise), Ok(StoredKind::Raw));
        let st = s.stats();
        assert_eq!(
            (st.zero_pages, st.compressed_pages, st.raw_pages),
            (1, 1, 1)
        );
        assert!(st.compressed_bytes > 0 && st.compressed_bytes < 600);
        assert!(st.ratio_milli() > 1000, "{}", st.ratio_milli());
        let mut out = [0xffu8; PAGE_BYTES];
        for (k, page) in [(1, zero), (2, text), (3, noise)] {
            s.get(k, &mut out).unwrap();
            assert_eq!(out, page);
        }
        // Replacing an entry re-accounts it.
        assert_eq!(s.put(2, &zero), Ok(StoredKind::Zero));
        assert_eq!(s.stats().compressed_bytes, 0);
        assert_eq!(s.stats().zero_pages, 2);
        assert!(s.remove(3));
        assert!(!s.remove(3));
        assert_eq!(s.stats().pages(), 2);
    }

    #[test]
    fn corrupt_and_missing_entries_are_errors() {
        let mut s = PageStore::new();
        let mut out = [0u8; PAGE_BYTES];
        assert_eq!(s.get(9, &mut out), Err(StoreError::Missing(9)));
        for (k, page) in [
            (1, [0u8; PAGE_BYTES]),
            (2, text_page(3)),
            (3, noise_page(7)),
        ] {
            s.put(k, &page).unwrap();
            assert!(s.corrupt_for_test(k));
            assert_eq!(s.get(k, &mut out), Err(StoreError::Corrupt(k)));
        }
    }

    #[test]
    fn truncated_compressed_data_is_an_error() {
        let mut s = PageStore::new();
        s.put(5, &text_page(9)).unwrap();
        if let Some(e) = s.entries.get_mut(&5) {
            e.data.truncate(e.data.len() / 3);
        }
        let mut out = [0u8; PAGE_BYTES];
        assert_eq!(s.get(5, &mut out), Err(StoreError::Corrupt(5)));
        if let Some(e) = s.entries.get_mut(&5) {
            e.data.clear();
            e.data.extend_from_slice(&[0xff; 40]);
        }
        assert_eq!(s.get(5, &mut out), Err(StoreError::Corrupt(5)));
    }
}
