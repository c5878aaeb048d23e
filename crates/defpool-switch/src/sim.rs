//! A seeded market simulator for the backtest: several coins of one algorithm, fixed steps.
//!
//! # Model
//!
//! Everything is driven by one `ChaCha8Rng` seeded with `seed`, so a seed always gives the same
//! series. Per coin `c` and step of `Δ` seconds:
//!
//! - **Price (BTC).** `ln p = w + s`. The walk `w` moves by `σ_h·√(Δ/3600)·N(0,1)` per step
//!   (`σ_h` = `hourly_volatility`, 1.5 %). Spikes arrive as a Poisson process with
//!   `spikes_per_day` (1) per coin; a spike adds `ln(1 ± spike_size)` (±10 %, sign even odds)
//!   to `s`, which then decays exponentially with time constant `spike_decay_secs / 5`
//!   and is dropped entirely after `spike_decay_secs` (30 min), so it is gone within 30 minutes.
//! - **Network hashrate.** The algorithm's total hashrate `H_tot` is split among coins by revenue:
//!   the hashrate a coin attracts in the long run is `H*_c = H_tot · R_c p_c / Σ R_k p_k`
//!   (miners follow block reward × price, which at equilibrium makes every coin equally
//!   profitable once difficulties adjust). The actual `H_c` relaxes towards `H*_c` with time
//!   constant `hashrate_response_secs` (6 h) and also drifts on its own:
//!   `ln H_c += σ_H·√(Δ/86400)·N(0,1)` (`hashrate_daily_drift`, 2 %).
//! - **Blocks.** Per step the network finds `Poisson(H_c·Δ / (D_c·2^32))` blocks of coin `c`.
//! - **Difficulty.** Bitcoin-style: after every `retarget_blocks` (2,016) blocks of that coin,
//!   `D ← D · (n·T / elapsed)` for the `n` blocks found in `elapsed` seconds since the last
//!   retarget (target block time `T` = 600 s), clamped to ×¼..×4. Each coin starts at a random
//!   point of its retarget window, so coins do not retarget in lockstep. Between retargets a
//!   coin whose price rose is more profitable: that is the opportunity a switcher chases.
//! - **Start.** Revenue shares are `∝ 1/(c+1)²` (3 coins: 73 %, 18 %, 8 %), every coin has the
//!   same reward (6.25), the difficulty matches its hashrate (600 s blocks), so all coins start
//!   equally profitable.
//!
//! The pool's own hashrate is assumed small: it does not move difficulty. Earnings in the
//! backtest are expected values (hashes × reward / (D·2^32) × price), not simulated block luck.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::series::{Point, Series, TWO_POW_32};

/// Simulator parameters; [`SimParams::default`] is the fixed set of the simulated
/// comparison (3 coins, 1-minute steps, 30 days).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimParams {
    pub coins: usize,
    pub step_secs: u64,
    pub days: f64,
    pub hourly_volatility: f64,
    pub spikes_per_day: f64,
    pub spike_size: f64,
    pub spike_decay_secs: f64,
    pub block_time_secs: f64,
    pub retarget_blocks: u64,
    pub total_hashrate_hs: f64,
    pub hashrate_response_secs: f64,
    pub hashrate_daily_drift: f64,
    pub block_reward: f64,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            coins: 3,
            step_secs: 60,
            days: 30.0,
            hourly_volatility: 0.015,
            spikes_per_day: 1.0,
            spike_size: 0.10,
            spike_decay_secs: 1800.0,
            block_time_secs: 600.0,
            retarget_blocks: 2016,
            total_hashrate_hs: 1e20,
            hashrate_response_secs: 6.0 * 3600.0,
            hashrate_daily_drift: 0.02,
            block_reward: 6.25,
        }
    }
}

impl SimParams {
    /// Earned steps (the series has one more: the observed-only step 0).
    pub fn steps(&self) -> usize {
        (self.days * 86_400.0 / self.step_secs as f64).round() as usize
    }

    /// Ticker of simulated coin `c`: `SIM-A`, `SIM-B`, …
    pub fn ticker(c: usize) -> String {
        let letter = (b'A' + (c % 26) as u8) as char;
        if c < 26 {
            format!("SIM-{letter}")
        } else {
            format!("SIM-{letter}{}", c / 26)
        }
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm's argument in (0, 1].
    let u: f64 = rng.random();
    let v: f64 = rng.random();
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda > 200.0 {
        return (lambda + lambda.sqrt() * normal(rng)).round().max(0.0);
    }
    // Knuth: count uniforms until their product drops below e^-λ.
    let limit = (-lambda).exp();
    let mut k = 0.0;
    let mut prod: f64 = rng.random();
    while prod > limit {
        k += 1.0;
        prod *= rng.random::<f64>();
    }
    k
}

struct CoinState {
    walk: f64,
    spikes: Vec<(f64, f64)>, // (log size, age in seconds)
    hashrate: f64,
    difficulty: f64,
    window_blocks: f64,
    window_secs: f64,
}

/// Simulates `params.steps() + 1` steps (step 0 is observed only) for `seed`.
pub fn simulate(params: &SimParams, seed: u64) -> Series {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = params.coins.max(1);
    let dt = params.step_secs as f64;
    let weights: Vec<f64> = (0..n).map(|c| 1.0 / ((c + 1) * (c + 1)) as f64).collect();
    let total_w: f64 = weights.iter().sum();
    let mut coins: Vec<CoinState> = weights
        .iter()
        .map(|w| {
            let hashrate = params.total_hashrate_hs * w / total_w;
            let difficulty = hashrate * params.block_time_secs / TWO_POW_32;
            // A random point of the retarget window, on schedule so far.
            let done = (rng.random::<f64>() * params.retarget_blocks as f64).floor();
            CoinState {
                // Equal rewards, so price ∝ revenue share; coin 0 trades at 0.05 BTC.
                walk: (0.05 * w / weights[0]).ln(),
                spikes: Vec::new(),
                hashrate,
                difficulty,
                window_blocks: done,
                window_secs: done * params.block_time_secs,
            }
        })
        .collect();

    let steps = params.steps() + 1;
    let mut points: Vec<Vec<Point>> = (0..n).map(|_| Vec::with_capacity(steps)).collect();
    let price_sigma = params.hourly_volatility * (dt / 3600.0).sqrt();
    let drift_sigma = params.hashrate_daily_drift * (dt / 86_400.0).sqrt();
    let spike_p = params.spikes_per_day * dt / 86_400.0;
    let tau = params.spike_decay_secs / 5.0;
    let relax = 1.0 - (-dt / params.hashrate_response_secs).exp();
    let mut prices = vec![0.0; n];

    for _ in 0..steps {
        // Prices for this step.
        for (c, coin) in coins.iter_mut().enumerate() {
            coin.walk += price_sigma * normal(&mut rng);
            for s in coin.spikes.iter_mut() {
                s.1 += dt;
            }
            coin.spikes.retain(|s| s.1 < params.spike_decay_secs);
            if rng.random::<f64>() < spike_p {
                let up = rng.random::<f64>() < 0.5;
                let size = if up {
                    1.0 + params.spike_size
                } else {
                    1.0 - params.spike_size
                };
                coin.spikes.push((size.ln(), 0.0));
            }
            let spike: f64 = coin
                .spikes
                .iter()
                .map(|(s, age)| s * (-age / tau).exp())
                .sum();
            prices[c] = (coin.walk + spike).exp();
        }
        // Hashrate follows revenue share, with drift.
        let revenue: f64 = prices.iter().map(|p| p * params.block_reward).sum();
        for (c, coin) in coins.iter_mut().enumerate() {
            let target = params.total_hashrate_hs * prices[c] * params.block_reward / revenue;
            coin.hashrate += (target - coin.hashrate) * relax;
            coin.hashrate *= (drift_sigma * normal(&mut rng)).exp();
        }
        // Blocks found, then retargets at the end of the step.
        for (c, coin) in coins.iter_mut().enumerate() {
            let lambda = coin.hashrate * dt / (coin.difficulty * TWO_POW_32);
            let blocks = poisson(&mut rng, lambda);
            points[c].push(Point {
                price_btc: prices[c],
                difficulty: coin.difficulty,
                block_reward: params.block_reward,
                blocks,
            });
            coin.window_blocks += blocks;
            coin.window_secs += dt;
            if coin.window_blocks >= params.retarget_blocks as f64 {
                let factor = (coin.window_blocks * params.block_time_secs / coin.window_secs)
                    .clamp(0.25, 4.0);
                coin.difficulty *= factor;
                coin.window_blocks = 0.0;
                coin.window_secs = 0.0;
            }
        }
    }

    Series {
        coins: (0..n).map(SimParams::ticker).collect(),
        step_secs: params.step_secs,
        start_ms: 0,
        labels: None,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_series_other_seed_other_series() {
        let p = SimParams {
            days: 2.0,
            ..SimParams::default()
        };
        let a = simulate(&p, 7);
        assert_eq!(a, simulate(&p, 7));
        assert_ne!(a, simulate(&p, 8));
        assert_eq!(a.len(), 2 * 1440 + 1);
        assert_eq!(a.coins, vec!["SIM-A", "SIM-B", "SIM-C"]);
        a.validate().unwrap();
    }

    #[test]
    fn blocks_come_about_every_ten_minutes_and_difficulty_retargets() {
        let p = SimParams {
            days: 60.0,
            ..SimParams::default()
        };
        let s = simulate(&p, 1);
        for c in 0..3 {
            let blocks: f64 = s.points[c].iter().map(|p| p.blocks).sum();
            let expected = 60.0 * 144.0;
            assert!(
                (blocks / expected - 1.0).abs() < 0.25,
                "coin {c}: {blocks} blocks in 60 days"
            );
            let d0 = s.points[c][0].difficulty;
            assert!(
                s.points[c].iter().any(|p| p.difficulty != d0),
                "coin {c} never retargeted"
            );
        }
    }

    #[test]
    fn hourly_volatility_is_about_one_and_a_half_percent() {
        let p = SimParams {
            days: 60.0,
            spikes_per_day: 0.0,
            ..SimParams::default()
        };
        let s = simulate(&p, 3);
        let hourly: Vec<f64> = s.points[0]
            .windows(61)
            .step_by(60)
            .map(|w| (w[60].price_btc / w[0].price_btc).ln())
            .collect();
        let mean = hourly.iter().sum::<f64>() / hourly.len() as f64;
        let var = hourly.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / hourly.len() as f64;
        let sd = var.sqrt();
        assert!((0.0135..0.0165).contains(&sd), "hourly sd {sd}");
    }
}
