//! The values `cargo xtask run` carries into the kernel build
//! (`--age-interval-ms`, `--reclaim-target`), parsed once here so the two
//! sides agree: xtask refuses a bad value before anything builds, and the
//! kernel reads the same build-time variables with `option_env!` through
//! the same `const fn`s (a value that slipped past xtask, set by hand, stops
//! the kernel's build instead of being replaced by a default).
//!
//! Accepted forms (say them in every refusal: [`INTERVAL_FORMS`],
//! [`TARGET_FORMS`]):
//! - interval: a whole number of milliseconds, [`MIN_INTERVAL_MS`] to
//!   [`MAX_INTERVAL_MS`]; no sign, no suffix, no unit (`1K` is not 1024).
//! - reclaim target: `off`, `adaptive`, or a size: a whole number with a
//!   suffix `K`, `M` or `G` (KiB, MiB, GiB; either case) or none (bytes),
//!   a multiple of 4 KiB. Whether a size can be met depends on the VM ([`target_note`]), not
//!   on its spelling.
//!
//! `const fn` because the kernel evaluates them in constants.

/// Shortest interval between aging passes.
pub const MIN_INTERVAL_MS: u64 = 1;
/// Longest interval between aging passes (one hour).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// The interval when none is given.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;

/// What an interval may look like, for refusals.
pub const INTERVAL_FORMS: &str =
    "a whole number of milliseconds from 1 to 3600000, with no unit (e.g. 500)";
/// What a reclaim target may look like, for refusals.
pub const TARGET_FORMS: &str = "`off`, `adaptive`, or a size in bytes with an optional K, M or G \
     suffix (KiB, MiB, GiB), a multiple of 4 KiB (e.g. 16M, 40960K)";

/// Bytes of one guest page.
const PAGE_BYTES: u64 = 4096;

/// The run's reclaim setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimSetting {
    /// Aging only (reclaim under host memory pressure still happens).
    Off,
    /// Everything colder than the refault feedback's threshold.
    Adaptive,
    /// Each VM down to this many resident bytes (a multiple of 4 KiB).
    ResidentBytes(u64),
}

/// Why a value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueError {
    /// Empty.
    Empty,
    /// A character other than what the form allows (a sign, a unit, a
    /// letter).
    NotANumber,
    /// Too large for 64 bits.
    Overflow,
    /// Outside the allowed range.
    OutOfRange,
    /// A size that is not a whole number of 4 KiB pages.
    NotPageMultiple,
}

impl ValueError {
    /// A few words for a refusal.
    pub const fn describe(self) -> &'static str {
        match self {
            ValueError::Empty => "empty",
            ValueError::NotANumber => "not of the accepted form",
            ValueError::Overflow => "too large",
            ValueError::OutOfRange => "out of range",
            ValueError::NotPageMultiple => "not a multiple of 4 KiB",
        }
    }
}

/// Parses a run of decimal digits, all of `b[..end]`.
const fn digits(b: &[u8], end: usize) -> Result<u64, ValueError> {
    if end == 0 {
        return Err(ValueError::Empty);
    }
    let mut n: u64 = 0;
    let mut i = 0;
    while i < end {
        let d = b[i];
        if !d.is_ascii_digit() {
            return Err(ValueError::NotANumber);
        }
        n = match n.checked_mul(10) {
            Some(v) => match v.checked_add((d - b'0') as u64) {
                Some(v) => v,
                None => return Err(ValueError::Overflow),
            },
            None => return Err(ValueError::Overflow),
        };
        i += 1;
    }
    Ok(n)
}

/// `--age-interval-ms`: see the module docs.
pub const fn parse_interval_ms(s: &str) -> Result<u64, ValueError> {
    let b = s.as_bytes();
    match digits(b, b.len()) {
        Ok(n) if n >= MIN_INTERVAL_MS && n <= MAX_INTERVAL_MS => Ok(n),
        Ok(_) => Err(ValueError::OutOfRange),
        Err(e) => Err(e),
    }
}

/// Whether `s` is `word` (ASCII, exactly).
const fn is(s: &[u8], word: &[u8]) -> bool {
    if s.len() != word.len() {
        return false;
    }
    let mut i = 0;
    while i < s.len() {
        if s[i] != word[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `--reclaim-target`: see the module docs.
pub const fn parse_reclaim_target(s: &str) -> Result<ReclaimSetting, ValueError> {
    let b = s.as_bytes();
    if is(b, b"off") {
        return Ok(ReclaimSetting::Off);
    }
    if is(b, b"adaptive") {
        return Ok(ReclaimSetting::Adaptive);
    }
    if b.is_empty() {
        return Err(ValueError::Empty);
    }
    let (end, shift) = match b[b.len() - 1] {
        b'K' | b'k' => (b.len() - 1, 10),
        b'M' | b'm' => (b.len() - 1, 20),
        b'G' | b'g' => (b.len() - 1, 30),
        _ => (b.len(), 0),
    };
    let n = match digits(b, end) {
        Ok(n) => n,
        Err(ValueError::Empty) => return Err(ValueError::NotANumber),
        Err(e) => return Err(e),
    };
    let bytes = match n.checked_mul(1 << shift) {
        Some(v) => v,
        None => return Err(ValueError::Overflow),
    };
    if !bytes.is_multiple_of(PAGE_BYTES) {
        return Err(ValueError::NotPageMultiple);
    }
    Ok(ReclaimSetting::ResidentBytes(bytes))
}

/// Why a resident limit is not being met, said once per VM on the console
/// and as a `TCR event ... what=target_unmet` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetNote {
    /// The limit is at least the VM's RAM: nothing is ever reclaimed to
    /// meet it.
    LargerThanRam,
    /// After a round that took all it may, more is resident than the
    /// limit: what is left was young in the last passes (never taken), so
    /// the limit stays unmet while the guest keeps it hot.
    NotMet,
}

/// Judges a resident limit of `limit_pages` for a VM of `ram_pages`, of
/// which `resident_pages` stayed resident after a reclaim round that took
/// `reclaimed_pages`. `None`: nothing to say (the limit is met, or the
/// round made progress toward it).
pub fn target_note(
    limit_pages: u64,
    ram_pages: u64,
    resident_pages: u64,
    reclaimed_pages: u64,
) -> Option<TargetNote> {
    if limit_pages >= ram_pages {
        Some(TargetNote::LargerThanRam)
    } else if resident_pages > limit_pages && reclaimed_pages == 0 {
        Some(TargetNote::NotMet)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval_ms("1"), Ok(1));
        assert_eq!(parse_interval_ms("500"), Ok(500));
        assert_eq!(parse_interval_ms("3600000"), Ok(3_600_000));
        for (bad, why) in [
            ("", ValueError::Empty),
            ("0", ValueError::OutOfRange),
            ("3600001", ValueError::OutOfRange),
            ("-1", ValueError::NotANumber),
            ("+5", ValueError::NotANumber),
            ("abc", ValueError::NotANumber),
            ("1K", ValueError::NotANumber),
            ("1k", ValueError::NotANumber),
            ("10ms", ValueError::NotANumber),
            (" 10", ValueError::NotANumber),
            ("1.5", ValueError::NotANumber),
            ("99999999999999999999999", ValueError::Overflow),
        ] {
            assert_eq!(parse_interval_ms(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn targets() {
        use ReclaimSetting::*;
        assert_eq!(parse_reclaim_target("off"), Ok(Off));
        assert_eq!(parse_reclaim_target("adaptive"), Ok(Adaptive));
        assert_eq!(parse_reclaim_target("16M"), Ok(ResidentBytes(16 << 20)));
        assert_eq!(parse_reclaim_target("16m"), Ok(ResidentBytes(16 << 20)));
        assert_eq!(parse_reclaim_target("40960K"), Ok(ResidentBytes(40 << 20)));
        assert_eq!(parse_reclaim_target("1G"), Ok(ResidentBytes(1 << 30)));
        assert_eq!(parse_reclaim_target("8192"), Ok(ResidentBytes(8192)));
        // Accepted here; the kernel says on its console that 0 cannot be met.
        assert_eq!(parse_reclaim_target("0"), Ok(ResidentBytes(0)));
        for (bad, why) in [
            ("", ValueError::Empty),
            ("aaaaaaaa", ValueError::NotANumber),
            ("adaptivE", ValueError::NotANumber),
            ("Adaptive", ValueError::NotANumber),
            ("OFF", ValueError::NotANumber),
            ("-5", ValueError::NotANumber),
            ("abc", ValueError::NotANumber),
            ("M", ValueError::NotANumber),
            ("16MB", ValueError::NotANumber),
            ("16 M", ValueError::NotANumber),
            ("1.5G", ValueError::NotANumber),
            ("1000", ValueError::NotPageMultiple),
            ("1K", ValueError::NotPageMultiple),
            ("99999999999G", ValueError::Overflow),
            ("99999999999999999999999", ValueError::Overflow),
        ] {
            assert_eq!(parse_reclaim_target(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn unmeetable_targets_are_told() {
        let ram = 16384; // 64 MiB
        assert_eq!(
            target_note(999 << 18, ram, 100, 0),
            Some(TargetNote::LargerThanRam)
        );
        assert_eq!(
            target_note(ram, ram, 100, 0),
            Some(TargetNote::LargerThanRam)
        );
        // `0` and `1M` under a hot 2 MiB page: nothing more may go.
        assert_eq!(target_note(0, ram, 512, 0), Some(TargetNote::NotMet));
        assert_eq!(target_note(256, ram, 512, 0), Some(TargetNote::NotMet));
        // Progress, or met: nothing to say.
        assert_eq!(target_note(256, ram, 512, 64), None);
        assert_eq!(target_note(4096, ram, 4000, 0), None);
    }

    #[test]
    fn usable_in_constants() {
        const I: u64 = match parse_interval_ms("250") {
            Ok(n) => n,
            Err(_) => panic!(),
        };
        const T: ReclaimSetting = match parse_reclaim_target("4K") {
            Ok(t) => t,
            Err(_) => panic!(),
        };
        assert_eq!((I, T), (250, ReclaimSetting::ResidentBytes(4096)));
    }
}
