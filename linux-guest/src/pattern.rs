//! The checksum pattern: what every byte of a page holds after its n-th write.
//!
//! Word `w` (8 bytes, little-endian) of page `p` at version `v` is a
//! SplitMix64 mix of (seed, p, w, v). Every word differs from its neighbours,
//! from the same word of other pages and from the page's earlier versions,
//! so a lost write, a page swapped for another, a stale copy or a single
//! flipped bit all show as mismatches.

use crate::PAGE_BYTES;

/// SplitMix64's finaliser (a bijection on u64 with full avalanche).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value of word `word` of page `page` at `version`.
pub fn word(seed: u64, page: u64, word: u64, version: u32) -> u64 {
    let key = seed
        .wrapping_add(page.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(mix(word ^ (u64::from(version) << 32)));
    mix(key)
}

/// Writes page `page` at `version` into `bytes` (one page).
pub fn fill(bytes: &mut [u8], seed: u64, page: u64, version: u32) {
    for (i, chunk) in bytes.as_chunks_mut::<8>().0.iter_mut().enumerate() {
        *chunk = word(seed, page, i as u64, version).to_le_bytes();
    }
}

/// Compares `bytes` (one page) with page `page` at `version`; calls
/// `mismatch(offset, expected, found)` for every byte that differs.
pub fn check(
    bytes: &[u8],
    seed: u64,
    page: u64,
    version: u32,
    mut mismatch: impl FnMut(usize, u8, u8),
) {
    debug_assert_eq!(bytes.len(), PAGE_BYTES);
    for (i, chunk) in bytes.as_chunks::<8>().0.iter().enumerate() {
        let expected = word(seed, page, i as u64, version).to_le_bytes();
        if *chunk != expected {
            for (j, (&e, &f)) in expected.iter().zip(chunk).enumerate() {
                if e != f {
                    mismatch(i * 8 + j, e, f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_differ_across_pages_words_and_versions() {
        let w = word(5, 10, 3, 2);
        assert_eq!(w, word(5, 10, 3, 2), "deterministic");
        assert_ne!(w, word(5, 11, 3, 2));
        assert_ne!(w, word(5, 10, 4, 2));
        assert_ne!(w, word(5, 10, 3, 3));
        assert_ne!(w, word(6, 10, 3, 2));
    }

    #[test]
    fn check_reports_exactly_the_changed_bytes() {
        let mut page = vec![0u8; PAGE_BYTES];
        fill(&mut page, 1, 2, 3);
        let mut found = Vec::new();
        check(&page, 1, 2, 3, |at, e, f| found.push((at, e, f)));
        assert!(found.is_empty());
        page[17] ^= 1;
        page[4000] = page[4000].wrapping_add(1);
        check(&page, 1, 2, 3, |at, e, f| found.push((at, e, f)));
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, 17);
        assert_eq!(found[0].2, found[0].1 ^ 1);
        assert_eq!(found[1].0, 4000);
        let mut stale = 0;
        check(&page, 1, 2, 4, |_, _, _| stale += 1);
        assert!(stale > PAGE_BYTES / 2, "another version is not the pattern");
        let mut zero = 0;
        check(&vec![0u8; PAGE_BYTES], 1, 2, 3, |_, _, _| zero += 1);
        assert!(zero > PAGE_BYTES / 2, "a zero page is not the pattern");
    }
}
