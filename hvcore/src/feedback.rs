//! Refault feedback: how cold a page must be before it is reclaimed.
//!
//! A *refault* is a fault on a page the reclaimer took away: the guest
//! wanted it back, so reclaiming it cost a fault-in and gained nothing. The
//! reclaimer reports every refault with two distances in generations
//! ([`Feedback::refault`]):
//! * `since_reclaim`: passes between the reclaim and the refault (reported);
//! * `idle`: passes between the last time the page was young and the
//!   refault. This is the one that steers: a page idle for `idle` passes
//!   would **not** have been reclaimed had the threshold been above `idle`.
//!
//! # The rule
//! The user sets a refault budget as a rate, in millionths of the working
//! set per minute ([`DEFAULT_RATE_PPM_PER_MIN`]: 0.2 %, the figure Google
//! reports for its far-memory fleet). Over a sliding window of the last
//! [`WINDOW_MS`], the budget is `rate * working_set * window`. The wanted
//! threshold is the smallest `T` (in generations, within
//! `[min_gens, max_gens]`) such that the refaults of the window with
//! `idle >= T` fit the budget: refaults with `idle < T` would have been
//! avoided by `T`. When that is above the current threshold the threshold
//! jumps to it at once (protect the guest); when it is below, the threshold
//! comes down one generation per [`RELAX_MS`] (probe for more reclaim
//! slowly). The whole state is a ring of the last [`RING`] refaults.
//!
//! Neighbours: [`crate::reclaim`] feeds it and asks for
//! [`Feedback::threshold_gens`]; [`crate::report`] prints it.

/// Default refault budget: 0.2 % of the working set per minute.
pub const DEFAULT_RATE_PPM_PER_MIN: u64 = 2_000;
/// The sliding window over which refaults are counted.
pub const WINDOW_MS: u64 = 60_000;
/// How often the threshold may come down by one generation.
pub const RELAX_MS: u64 = 5_000;
/// Refaults remembered (older ones fall out of the window earlier when the
/// rate is high; the budget is then exceeded anyway).
pub const RING: usize = 256;
/// Longest hold after a rise: a workload whose probes keep failing is
/// probed at most once per this long.
pub const MAX_HOLD_MS: u64 = 256 * WINDOW_MS;

/// Settings of the feedback loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedbackConfig {
    /// Refault budget, millionths of the working set per minute.
    pub rate_ppm_per_min: u64,
    /// Lowest threshold, in generations (at least 1: never the current one).
    pub min_gens: u64,
    /// Highest threshold, in generations.
    pub max_gens: u64,
    /// Starting threshold.
    pub initial_gens: u64,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            rate_ppm_per_min: DEFAULT_RATE_PPM_PER_MIN,
            min_gens: 2,
            max_gens: 180,
            initial_gens: 4,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Refault {
    at_ms: u64,
    idle_gens: u64,
}

/// The feedback state of one VM.
#[derive(Debug)]
pub struct Feedback {
    config: FeedbackConfig,
    threshold: u64,
    ring: [Refault; RING],
    len: usize,
    head: usize,
    last_relax_ms: u64,
    refaults_total: u64,
    distance_sum: u64,
    working_set_pages: u64,
    /// When the threshold last had to rise.
    hold_start_ms: u64,
    /// How long the next rise holds the threshold: doubles when a rise
    /// follows a relax (the probe cost refaults), halves after a quiet window.
    hold_ms: u64,
    relaxed_since_rise: bool,
}

impl Feedback {
    /// A loop starting at `config.initial_gens`, at time `now_ms`.
    pub fn new(config: FeedbackConfig, now_ms: u64) -> Self {
        let min = config.min_gens.max(1);
        let max = config.max_gens.max(min);
        let config = FeedbackConfig {
            min_gens: min,
            max_gens: max,
            ..config
        };
        Feedback {
            threshold: config.initial_gens.clamp(min, max),
            config,
            ring: [Refault::default(); RING],
            len: 0,
            head: 0,
            last_relax_ms: now_ms,
            refaults_total: 0,
            distance_sum: 0,
            working_set_pages: 0,
            hold_start_ms: now_ms,
            hold_ms: WINDOW_MS,
            relaxed_since_rise: false,
        }
    }

    /// The current threshold: pages not young for at least this many
    /// generations may be reclaimed.
    pub fn threshold_gens(&self) -> u64 {
        self.threshold
    }

    /// The settings.
    pub fn config(&self) -> FeedbackConfig {
        self.config
    }

    /// Refaults ever recorded.
    pub fn refaults_total(&self) -> u64 {
        self.refaults_total
    }

    /// Mean distance from reclaim to refault, in generations (0 if none).
    pub fn mean_refault_distance_gens(&self) -> u64 {
        self.distance_sum
            .checked_div(self.refaults_total)
            .unwrap_or(0)
    }

    /// Records a refault at `now_ms`: the page was reclaimed
    /// `since_reclaim_gens` passes ago and had not been young for
    /// `idle_gens` passes.
    pub fn refault(&mut self, now_ms: u64, since_reclaim_gens: u64, idle_gens: u64) {
        self.refaults_total += 1;
        self.distance_sum = self.distance_sum.saturating_add(since_reclaim_gens);
        self.ring[self.head] = Refault {
            at_ms: now_ms,
            idle_gens,
        };
        self.head = (self.head + 1) % RING;
        self.len = (self.len + 1).min(RING);
        let wanted = self.wanted(now_ms, self.working_set_pages, WINDOW_MS);
        self.raise(now_ms, wanted);
    }

    fn raise(&mut self, now_ms: u64, wanted: u64) {
        if wanted <= self.threshold {
            return;
        }
        if self.relaxed_since_rise {
            self.hold_ms = (self.hold_ms * 2).min(MAX_HOLD_MS);
        }
        self.relaxed_since_rise = false;
        self.threshold = wanted;
        self.last_relax_ms = now_ms;
        self.hold_start_ms = now_ms;
    }

    /// Refaults within the window ending at `now_ms`.
    pub fn refaults_in_window(&self, now_ms: u64) -> u64 {
        self.window(now_ms).count() as u64
    }

    fn window(&self, now_ms: u64) -> impl Iterator<Item = Refault> + '_ {
        (0..self.len)
            .map(move |i| self.ring[(self.head + RING - 1 - i) % RING])
            .take_while(move |r| now_ms.saturating_sub(r.at_ms) < WINDOW_MS)
    }

    /// The current hold: how far back refaults keep the threshold up.
    pub fn hold_ms(&self) -> u64 {
        self.hold_ms
    }

    /// The smallest threshold whose avoidable refaults fit the budget, over
    /// the refaults of the last `window_ms`.
    ///
    /// One sweep of the ring and one selection: `remaining(t)`, the
    /// refaults with `idle >= t`, only falls as `t` grows, so the smallest
    /// `t` with `remaining(t) <= k` (`k` the refaults the budget allows) is
    /// one above the `(k + 1)`-th largest idle distance. It runs on every
    /// refault, with the VM's reclaim state locked, so it must not be the
    /// scan per candidate threshold it replaces (`O(RING * max_gens)`: it
    /// made fault-ins and passes take tens of ms under emulation).
    fn wanted(&self, now_ms: u64, working_set_pages: u64, window_ms: u64) -> u64 {
        // ppm/min * pages * window(min) -> refaults; times 1000 for milli.
        let budget_milli = self
            .config
            .rate_ppm_per_min
            .saturating_mul(working_set_pages)
            .saturating_mul(window_ms)
            / 60_000
            / 1_000;
        let allowed = usize::try_from(budget_milli / 1000).unwrap_or(usize::MAX);
        let mut idle = [0u64; RING];
        let mut n = 0;
        for i in 0..self.len {
            let r = self.ring[(self.head + RING - 1 - i) % RING];
            if now_ms.saturating_sub(r.at_ms) >= window_ms {
                break;
            }
            idle[n] = r.idle_gens;
            n += 1;
        }
        let (min, max) = (self.config.min_gens, self.config.max_gens);
        if n <= allowed {
            return min;
        }
        // The (allowed + 1)-th largest idle distance.
        let (_, &mut kth, _) = idle[..n].select_nth_unstable_by(allowed, |a, b| b.cmp(a));
        kth.saturating_add(1).clamp(min, max)
    }

    /// Called once per aging pass with the working set (pages young within
    /// the last minute): raises or relaxes the threshold. Returns it.
    pub fn end_pass(&mut self, now_ms: u64, working_set_pages: u64) -> u64 {
        self.working_set_pages = working_set_pages;
        let wanted = self.wanted(now_ms, working_set_pages, WINDOW_MS);
        if wanted > self.threshold {
            self.raise(now_ms, wanted);
            return self.threshold;
        }
        // Relax only after the hold: what a failed probe taught is kept
        // longer than the window remembers refaults.
        if wanted < self.threshold
            && now_ms >= self.hold_start_ms + self.hold_ms
            && now_ms.saturating_sub(self.last_relax_ms) >= RELAX_MS
        {
            self.threshold -= 1;
            self.last_relax_ms = now_ms;
            if self.relaxed_since_rise
                && now_ms.saturating_sub(self.hold_start_ms) >= self.hold_ms + WINDOW_MS
            {
                // A whole window of probing without a rise: probe sooner.
                self.hold_ms = (self.hold_ms / 2).max(WINDOW_MS);
            }
            self.relaxed_since_rise = true;
        } else if wanted == self.threshold {
            self.last_relax_ms = now_ms;
        }
        self.threshold
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A simulated guest with `pages` pages; page `i` is touched every
    /// `period[i]` passes (0: never). The reclaimer reclaims every page
    /// idle for the threshold; a touch on a reclaimed page is a refault.
    /// Returns (refaults per pass, in the last `tail` passes; threshold).
    fn simulate(
        fb: &mut Feedback,
        periods: &[u64],
        passes: u64,
        interval_ms: u64,
        tail: u64,
    ) -> (u64, u64) {
        let mut last_young = vec![0u64; periods.len()];
        let mut reclaimed_at: Vec<Option<u64>> = vec![None; periods.len()];
        let mut tail_refaults = 0;
        for pass in 1..=passes {
            let now = pass * interval_ms;
            for (i, &p) in periods.iter().enumerate() {
                if p != 0 && pass % p == 0 {
                    if let Some(r) = reclaimed_at[i].take() {
                        fb.refault(now, pass - r, pass - last_young[i]);
                        if pass > passes - tail {
                            tail_refaults += 1;
                        }
                    }
                    last_young[i] = pass;
                }
            }
            let ws = periods
                .iter()
                .enumerate()
                .filter(|&(i, _)| (pass - last_young[i]) * interval_ms < 60_000)
                .count() as u64;
            let t = fb.end_pass(now, ws.max(1));
            for i in 0..periods.len() {
                if reclaimed_at[i].is_none() && pass - last_young[i] >= t {
                    reclaimed_at[i] = Some(pass);
                }
            }
        }
        (tail_refaults, fb.threshold_gens())
    }

    #[test]
    fn periodic_reuse_raises_the_threshold_above_the_period() {
        // 1000 pages reused every 8 passes of 1 s: reclaiming them at the
        // initial threshold (4) refaults all of them every period.
        let mut fb = Feedback::new(FeedbackConfig::default(), 0);
        let periods = vec![8u64; 1000];
        let (tail, t) = simulate(&mut fb, &periods, 600, 1000, 300);
        assert!(t >= 9, "threshold {t} stays under the reuse period");
        // One failed probe at most in the last 5 minutes (the hold has
        // doubled after the first one).
        assert!(tail <= 1000, "{tail} refaults in the last 300 s");
        assert!(fb.refaults_total() >= 1000);
        assert!(fb.hold_ms() > WINDOW_MS, "failed probes lengthen the hold");
    }

    #[test]
    fn idle_memory_keeps_a_low_threshold() {
        // Half the pages hot every pass, half never touched again: nothing
        // refaults, the threshold stays at its floor and everything cold goes.
        let mut fb = Feedback::new(FeedbackConfig::default(), 0);
        let periods: Vec<u64> = (0..1000).map(|i| if i % 2 == 0 { 1 } else { 0 }).collect();
        let (tail, t) = simulate(&mut fb, &periods, 300, 1000, 100);
        assert_eq!(tail, 0);
        assert_eq!(t, FeedbackConfig::default().min_gens);
        assert_eq!(fb.refaults_total(), 0);
    }

    #[test]
    fn threshold_relaxes_after_a_phase_change() {
        let mut fb = Feedback::new(FeedbackConfig::default(), 0);
        let (_, high) = simulate(&mut fb, &vec![10u64; 500], 300, 1000, 1);
        assert!(high >= 10);
        // Phase two: the same pages are never touched again; after the
        // window empties the threshold comes down one step per RELAX_MS.
        let start = 300 * 1000;
        let mut t = high;
        for pass in 1..=400u64 {
            t = fb.end_pass(start + pass * 1000, 1);
        }
        assert_eq!(t, FeedbackConfig::default().min_gens);
    }

    #[test]
    fn refault_rate_stays_under_budget_with_mixed_periods() {
        // Periods from 1 to 40 passes: the loop must settle where refaults
        // per minute are within 0.2 % of the working set.
        let mut fb = Feedback::new(FeedbackConfig::default(), 0);
        let periods: Vec<u64> = (0..2000u64).map(|i| 1 + i % 40).collect();
        let (tail, _t) = simulate(&mut fb, &periods, 3600, 1000, 1800);
        // The working set is all 2000 pages: budget 4 per minute, 120 over
        // the last 30 minutes (the first half is for learning).
        assert!(tail <= 120, "{tail} refaults in 1800 s");
    }

    /// The rule as first written: try each candidate threshold in turn
    /// (the specification [`Feedback::wanted`] must match).
    fn wanted_by_scan(fb: &Feedback, now_ms: u64, ws: u64, window_ms: u64) -> u64 {
        let budget_milli = fb
            .config
            .rate_ppm_per_min
            .saturating_mul(ws)
            .saturating_mul(window_ms)
            / 60_000
            / 1_000;
        let recent: Vec<Refault> = (0..fb.len)
            .map(|i| fb.ring[(fb.head + RING - 1 - i) % RING])
            .take_while(|r| now_ms.saturating_sub(r.at_ms) < window_ms)
            .collect();
        let mut t = fb.config.min_gens;
        loop {
            let remaining = recent.iter().filter(|r| r.idle_gens >= t).count() as u64;
            if remaining * 1000 <= budget_milli || t >= fb.config.max_gens {
                return t;
            }
            t = recent
                .iter()
                .map(|r| r.idle_gens + 1)
                .filter(|&d| d > t)
                .min()
                .unwrap_or(t + 1)
                .min(fb.config.max_gens);
        }
    }

    #[test]
    fn wanted_matches_the_scan_over_thresholds() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..300u64 {
            let mut fb = Feedback::new(FeedbackConfig::default(), 0);
            let refaults = next() % 400;
            let mut now = 0;
            for _ in 0..refaults {
                now += next() % 700;
                // Idle distances around and beyond [min_gens, max_gens].
                let idle = match next() % 4 {
                    0 => next() % 4,
                    1 => next() % 20,
                    2 => next() % 250,
                    _ => 170 + next() % 20,
                };
                fb.refault(now, 1, idle);
            }
            let ws = [1, 100, 5_000, 100_000, 10_000_000][(case % 5) as usize];
            for window in [1_000, WINDOW_MS] {
                let at = now + next() % 2_000;
                assert_eq!(
                    fb.wanted(at, ws, window),
                    wanted_by_scan(&fb, at, ws, window),
                    "case {case}: {refaults} refaults, ws {ws}, window {window}"
                );
            }
        }
    }
}
