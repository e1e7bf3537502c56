//! `/proc/self/pagemap`: one 64-bit little-endian entry per virtual page
//! (the kernel's Documentation/admin-guide/mm/pagemap.rst): bit 63 present,
//! bit 62 swapped, bits 0-54 the page frame number when present. Without
//! CAP_SYS_ADMIN the kernel reports PFN 0 for present pages.

/// Bit 63: the page is present in RAM.
const PRESENT: u64 = 1 << 63;
/// Bit 62: the page is swapped out.
const SWAPPED: u64 = 1 << 62;
/// Bits 0-54: the page frame number.
const PFN_MASK: u64 = (1 << 55) - 1;

/// One decoded entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// In RAM at this frame (0 when the kernel hides frames from us).
    Present(u64),
    /// Swapped out.
    Swapped,
    /// Never touched, or dropped.
    Absent,
}

/// Decodes an entry.
pub fn decode(entry: u64) -> PageState {
    if entry & PRESENT != 0 {
        PageState::Present(entry & PFN_MASK)
    } else if entry & SWAPPED != 0 {
        PageState::Swapped
    } else {
        PageState::Absent
    }
}

/// A run of consecutive frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRun {
    /// First frame.
    pub first_pfn: u64,
    /// Frames in the run.
    pub pages: u64,
}

/// What the hot part's entries say, summed up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotFrames {
    /// The set of frames of present pages, as ascending runs of consecutive
    /// frames (the hot set is a set: virtual order does not matter to it).
    pub runs: Vec<PfnRun>,
    /// Present pages whose frame was hidden (PFN 0: not root).
    pub hidden: u64,
    /// Pages not present (absent or swapped).
    pub not_present: u64,
}

impl HotFrames {
    /// Frames in all runs.
    pub fn frames(&self) -> u64 {
        self.runs.iter().map(|r| r.pages).sum()
    }
}

/// Sums up entries: the set of frames as runs, and what has none.
pub fn coalesce(entries: impl IntoIterator<Item = u64>) -> HotFrames {
    let mut out = HotFrames::default();
    let mut pfns = Vec::new();
    for entry in entries {
        match decode(entry) {
            PageState::Present(0) => out.hidden += 1,
            PageState::Present(pfn) => pfns.push(pfn),
            PageState::Swapped | PageState::Absent => out.not_present += 1,
        }
    }
    pfns.sort_unstable();
    pfns.dedup();
    for pfn in pfns {
        match out.runs.last_mut() {
            Some(run) if run.first_pfn + run.pages == pfn => run.pages += 1,
            _ => out.runs.push(PfnRun {
                first_pfn: pfn,
                pages: 1,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_and_coalesce() {
        assert_eq!(decode(PRESENT | 0x1234), PageState::Present(0x1234));
        assert_eq!(
            decode(PRESENT | (1 << 55) | 7),
            PageState::Present(7),
            "soft-dirty bit ignored"
        );
        assert_eq!(decode(SWAPPED | 5), PageState::Swapped);
        assert_eq!(decode(0), PageState::Absent);
        let e = |pfn: u64| PRESENT | pfn;
        let hot = coalesce([e(12), e(10), e(11), e(20), 0, e(21), e(0), SWAPPED]);
        assert_eq!(
            hot.runs,
            vec![
                PfnRun {
                    first_pfn: 10,
                    pages: 3
                },
                PfnRun {
                    first_pfn: 20,
                    pages: 2
                },
            ]
        );
        assert_eq!(hot.frames(), 5);
        assert_eq!(hot.hidden, 1);
        assert_eq!(hot.not_present, 2);
    }
}
