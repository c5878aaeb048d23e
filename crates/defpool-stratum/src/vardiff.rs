//! Per-connection variable difficulty: keep each miner near a configured share rate.
//!
//! Pure and clock-free: callers pass `now` in milliseconds. The rule is the one most pools use:
//! after a window (shorter while the miner is new) compare the observed share rate with the
//! target and move the difficulty by the ratio, clamped to ×4 per step and to the port's range,
//! ignoring changes under 30 % so difficulty does not flap.

#[derive(Clone, Debug)]
pub struct Vardiff {
    difficulty: f64,
    min: f64,
    max: f64,
    target_per_min: f64,
    window_start_ms: u64,
    shares_in_window: u32,
    retargets: u32,
}

/// Shortest and longest windows between retargets.
const FIRST_WINDOW_MS: u64 = 10_000;
const WINDOW_MS: u64 = 60_000;
/// A window closes early once it holds this many shares (fast miners converge quickly).
const WINDOW_SHARES: u32 = 30;
const MAX_STEP: f64 = 4.0;
const DEADBAND: f64 = 0.3;

impl Vardiff {
    pub fn new(start: f64, min: f64, max: f64, target_per_min: f64, now_ms: u64) -> Vardiff {
        Vardiff {
            difficulty: start.clamp(min, max),
            min,
            max,
            target_per_min: target_per_min.max(0.01),
            window_start_ms: now_ms,
            shares_in_window: 0,
            retargets: 0,
        }
    }

    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// A miner's suggestion (`mining.suggest_difficulty`, SV2 nominal hashrate) within the range.
    pub fn suggest(&mut self, difficulty: f64, now_ms: u64) -> f64 {
        self.difficulty = difficulty.clamp(self.min, self.max);
        self.restart(now_ms);
        self.difficulty
    }

    fn restart(&mut self, now_ms: u64) {
        self.window_start_ms = now_ms;
        self.shares_in_window = 0;
    }

    /// Counts an accepted share; returns a new difficulty when it is time to change.
    pub fn record_share(&mut self, now_ms: u64) -> Option<f64> {
        self.shares_in_window += 1;
        self.retarget(now_ms)
    }

    /// Also called on a timer so a miner that stopped finding shares gets an easier target.
    pub fn retarget(&mut self, now_ms: u64) -> Option<f64> {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        let window = if self.retargets == 0 {
            FIRST_WINDOW_MS
        } else {
            WINDOW_MS
        };
        if elapsed < window && (self.shares_in_window < WINDOW_SHARES || elapsed < 1_000) {
            return None;
        }
        let minutes = elapsed.max(1) as f64 / 60_000.0;
        // With no share at all, act as if half a share arrived: move down, but boundedly.
        let observed = (self.shares_in_window as f64).max(0.5) / minutes;
        let ratio = (observed / self.target_per_min).clamp(1.0 / MAX_STEP, MAX_STEP);
        self.restart(now_ms);
        self.retargets += 1;
        if (ratio - 1.0).abs() < DEADBAND {
            return None;
        }
        let next = (self.difficulty * ratio).clamp(self.min, self.max);
        if next == self.difficulty {
            return None;
        }
        self.difficulty = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A miner whose hashrate makes `rate_per_min` shares at difficulty 1.
    fn converge(hashrate_shares_at_d1: f64, target: f64) -> f64 {
        let mut v = Vardiff::new(1.0, 0.001, 1e9, target, 0);
        let mut now = 0u64;
        let mut carry = 0.0;
        for _ in 0..(60 * 30) {
            now += 1_000;
            carry += hashrate_shares_at_d1 / 60.0 / v.difficulty();
            while carry >= 1.0 {
                carry -= 1.0;
                v.record_share(now);
            }
            v.retarget(now);
        }
        v.difficulty()
    }

    #[test]
    fn converges_to_the_target_rate() {
        // 600 shares/min at d=1 and a target of 20/min → difficulty ≈ 30.
        let d = converge(600.0, 20.0);
        assert!((20.0..=45.0).contains(&d), "{d}");
        // A slow miner drifts down.
        let d = converge(2.0, 20.0);
        assert!(d < 0.2, "{d}");
    }

    #[test]
    fn suggestion_is_clamped() {
        let mut v = Vardiff::new(8.0, 1.0, 64.0, 10.0, 0);
        assert_eq!(v.suggest(1000.0, 0), 64.0);
        assert_eq!(v.suggest(0.1, 0), 1.0);
    }

    proptest! {
        #[test]
        fn stays_in_range_and_steps_boundedly(events in proptest::collection::vec((0u64..120_000, any::<bool>()), 1..200)) {
            let mut v = Vardiff::new(16.0, 2.0, 512.0, 12.0, 0);
            let mut now = 0;
            for (dt, share) in events {
                now += dt;
                let before = v.difficulty();
                let next = if share { v.record_share(now) } else { v.retarget(now) };
                if let Some(d) = next {
                    prop_assert!((2.0..=512.0).contains(&d));
                    prop_assert!(d <= before * MAX_STEP * 1.000_001 && d >= before / MAX_STEP / 1.000_001);
                }
            }
        }
    }
}
