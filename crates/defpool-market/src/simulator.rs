//! The seeded market simulator as a source, for the demo and tests: the simulator of
//! `defpool_switch::sim` replayed against the clock, its synthetic coins mapped onto real tickers.
//! It is labelled `simulator` in every snapshot, so nothing downstream mistakes it for a market.

use defpool_core::Ticker;
use defpool_switch::series::Series;
use defpool_switch::sim::{simulate, SimParams};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;

use crate::{system_clock, unique, Clock, Fetched, MarketSnapshot, MarketSource, SourceError};

/// Replays one simulated run: step `k` is in force from `start_ms + k·step` on; after the last
/// step the run wraps around, so a long demo never runs dry.
pub struct SimulatorSource {
    name: String,
    coins: Vec<Ticker>,
    series: Series,
    start_ms: u64,
    /// Wall-clock duration of one simulated step (default: the step itself).
    wall_step_ms: u64,
    clock: Clock,
}

impl SimulatorSource {
    /// Simulate `coins.len()` coins with `params` (its coin count is overridden) and `seed`,
    /// starting at `start_ms`. Coin `i` of the run is reported as `coins[i]`.
    pub fn new(coins: Vec<Ticker>, mut params: SimParams, seed: u64, start_ms: u64) -> Self {
        params.coins = coins.len().max(1);
        SimulatorSource {
            name: "simulator".into(),
            wall_step_ms: params.step_secs.max(1) * 1000,
            series: simulate(&params, seed),
            coins,
            start_ms,
            clock: system_clock(),
        }
    }

    /// The clock deciding which step is in force.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Replay faster (or slower) than simulated time: each step is in force for `secs` of
    /// wall-clock time. The demo uses a few seconds so prices move within minutes.
    pub fn with_wall_step_secs(mut self, secs: u64) -> Self {
        self.wall_step_ms = secs.max(1) * 1000;
        self
    }

    fn step_at(&self, now_ms: u64) -> usize {
        let steps = self.series.len().max(1);
        let elapsed = now_ms.saturating_sub(self.start_ms) / self.wall_step_ms;
        (elapsed % steps as u64) as usize
    }
}

impl MarketSource for SimulatorSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch_detailed(&self, coins: &[Ticker]) -> Result<Fetched, SourceError> {
        let now = (self.clock)();
        let step = self.step_at(now);
        let mut out = Fetched::default();
        for coin in unique(coins) {
            let Some(index) = self.coins.iter().position(|c| *c == coin) else {
                out.failed.push((
                    coin.clone(),
                    SourceError::unknown(&self.name, format!("{coin} (not simulated)")),
                ));
                continue;
            };
            let point = &self.series.points[index][step];
            let decimal = |v: f64| Decimal::from_f64(v).map(|d| d.round_dp(12));
            // Whole coins to smallest units; every built-in coin has 8 decimals.
            let reward = (point.block_reward * 1e8).round();
            out.snapshots.push(MarketSnapshot {
                coin,
                price_btc: decimal(point.price_btc),
                difficulty: decimal(point.difficulty),
                block_reward: (reward.is_finite() && reward >= 0.0).then_some(reward as u64),
                height: None,
                observed_at_ms: now,
                source: self.name.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn tickers() -> Vec<Ticker> {
        ["BTC", "BCH", "BSV"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect()
    }

    #[test]
    fn replays_the_seeded_run_against_the_clock() {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || clock_now.load(Ordering::Relaxed));
        let source = SimulatorSource::new(tickers(), SimParams::default(), 7, 1_000)
            .with_clock(clock.clone());
        let same =
            SimulatorSource::new(tickers(), SimParams::default(), 7, 1_000).with_clock(clock);
        let first = source.fetch(&tickers()).unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(
            first,
            same.fetch(&tickers()).unwrap(),
            "same seed, same data"
        );
        assert!(first.iter().all(|s| s.source == "simulator"
            && s.price_btc.is_some_and(|p| p > Decimal::ZERO)
            && s.difficulty.is_some_and(|d| d > Decimal::ZERO)
            && s.block_reward.is_some_and(|r| r > 0)));
        // Minutes later the prices have moved.
        now.store(1_000 + 600_000, Ordering::Relaxed);
        let later = source.fetch(&tickers()).unwrap();
        assert_ne!(first[0].price_btc, later[0].price_btc);
        assert_eq!(later[0].observed_at_ms, 601_000);
    }

    #[test]
    fn a_faster_wall_step_moves_through_the_run_sooner() {
        let now = Arc::new(AtomicU64::new(0));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || clock_now.load(Ordering::Relaxed));
        let slow =
            SimulatorSource::new(tickers(), SimParams::default(), 3, 0).with_clock(clock.clone());
        let fast = SimulatorSource::new(tickers(), SimParams::default(), 3, 0)
            .with_clock(clock)
            .with_wall_step_secs(2);
        now.store(10 * 2_000, Ordering::Relaxed);
        assert_eq!(fast.step_at(20_000), 10);
        assert_eq!(slow.step_at(20_000), 0);
        now.store(10 * 60_000, Ordering::Relaxed);
        assert_eq!(slow.fetch(&tickers()), {
            now.store(10 * 2_000, Ordering::Relaxed);
            let f = fast.fetch(&tickers()).unwrap();
            now.store(10 * 60_000, Ordering::Relaxed);
            Ok(f.into_iter()
                .map(|mut s| {
                    s.observed_at_ms = 600_000;
                    s
                })
                .collect::<Vec<_>>())
        });
    }

    #[test]
    fn unknown_coins_are_reported_not_invented() {
        let source = SimulatorSource::new(tickers(), SimParams::default(), 1, 0);
        let fetched = source
            .fetch_detailed(&["LTC".parse().unwrap(), "BTC".parse().unwrap()])
            .unwrap();
        assert_eq!(fetched.snapshots.len(), 1);
        assert_eq!(fetched.failed[0].0.as_str(), "LTC");
        assert!(source.fetch(&["LTC".parse().unwrap()]).is_err());
    }
}
