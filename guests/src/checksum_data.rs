//! The data the `checksum` guest writes, as a pure function: the guest
//! (`bin/checksum.rs`) and the host benchmark of the reclaimer
//! (`hvcore/benches/reclaim.rs`, which measures the compression ratio on
//! exactly these bytes) both include this file with `#[path]`, so the two
//! cannot drift apart. No dependencies, no `std`.

/// The hash stored in the word at `gpa` by a round with `seed`.
pub fn expected(gpa: u64, seed: u64) -> u64 {
    // splitmix64 finaliser: cheap and every bit depends on the address.
    let mut z = gpa ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The word at `gpa`: a hash, or zero between the hashed words of sparse
/// data (only the first word of each 256 bytes holds a hash).
pub fn word(gpa: u64, seed: u64, sparse: bool) -> u64 {
    if sparse && !gpa.is_multiple_of(256) {
        0
    } else {
        expected(gpa, seed)
    }
}
