//! Combining snapshots from several sources into one view per coin.
//!
//! Per coin and per field (price, difficulty, block reward), each source's newest fresh value
//! counts once (observations older than `stale_after_ms` are dropped; non-positive prices and
//! difficulties are ignored), and the field is the median of those values (for an even count, the
//! mean of the middle two; for the reward, rounded down). A coin missing any field is excluded
//! with the reason.
//!
//! Prices are then damped: a combined price deviating by more than `spike_percent` from the
//! median of the last `window` accepted prices is held back (the last accepted price is used,
//! with a note) until it has deviated in the same direction for `persist_ms`; then it is accepted
//! and the history restarts from it, as the new level. A price back within the band clears the
//! pending spike.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use defpool_core::Ticker;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::{duration, num};
use crate::snapshot::MarketSnapshot;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CombineParams {
    /// Observations older than this are ignored.
    pub stale_after_ms: u64,
    /// A price further than this from the rolling median is a spike.
    pub spike_percent: Decimal,
    /// How many accepted prices the rolling median looks at (at least 1).
    pub window: usize,
    /// How long a spike must persist before it is accepted.
    pub persist_ms: u64,
}

impl Default for CombineParams {
    /// 15 min staleness, 20 % spikes, a window of 5, 30 min persistence.
    fn default() -> Self {
        CombineParams {
            stale_after_ms: 15 * 60_000,
            spike_percent: Decimal::from(20),
            window: 5,
            persist_ms: 30 * 60_000,
        }
    }
}

/// One coin's combined market.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoinMarket {
    pub coin: Ticker,
    /// The damped median price in BTC.
    pub price_btc: Decimal,
    pub difficulty: Decimal,
    /// Smallest units.
    pub block_reward: u64,
    /// The oldest observation used: the combined view is at least this fresh.
    pub observed_at_ms: u64,
    /// Sources that contributed any field, sorted.
    pub sources: Vec<String>,
    /// What damping did (a held-back spike, an accepted new level); empty normally.
    pub notes: Vec<String>,
}

/// A coin left out of this update, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    pub coin: Ticker,
    pub reason: String,
}

/// The combiner's memory: per coin, recent accepted prices and any pending spike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Combiner {
    params: CombineParams,
    coins: BTreeMap<Ticker, PriceHistory>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PriceHistory {
    accepted: VecDeque<Decimal>,
    pending: Option<Pending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    since_ms: u64,
    up: bool,
}

impl Combiner {
    pub fn new(params: CombineParams) -> Self {
        Combiner {
            params,
            coins: BTreeMap::new(),
        }
    }

    pub fn params(&self) -> &CombineParams {
        &self.params
    }

    /// Combines one round of snapshots (any number per coin and source) at `now_ms`. Coins are
    /// returned in ticker order. A coin seen in an earlier update but absent now is excluded.
    pub fn update(
        &mut self,
        snapshots: &[MarketSnapshot],
        now_ms: u64,
    ) -> (Vec<CoinMarket>, Vec<Exclusion>) {
        let mut by_coin: BTreeMap<&Ticker, Vec<&MarketSnapshot>> = BTreeMap::new();
        for s in snapshots {
            by_coin.entry(&s.coin).or_default().push(s);
        }
        let mut markets = Vec::new();
        let mut exclusions = Vec::new();
        for coin in self.coins.keys() {
            if !by_coin.contains_key(coin) {
                exclusions.push(Exclusion {
                    coin: coin.clone(),
                    reason: format!("{coin}: no observations"),
                });
            }
        }
        for (coin, obs) in by_coin {
            match self.combine_coin(coin, &obs, now_ms) {
                Ok(m) => markets.push(m),
                Err(reason) => exclusions.push(Exclusion {
                    coin: coin.clone(),
                    reason,
                }),
            }
        }
        exclusions.sort_by(|a, b| a.coin.cmp(&b.coin));
        (markets, exclusions)
    }

    fn combine_coin(
        &mut self,
        coin: &Ticker,
        obs: &[&MarketSnapshot],
        now_ms: u64,
    ) -> Result<CoinMarket, String> {
        let stale = self.params.stale_after_ms;
        let fresh = |s: &&&MarketSnapshot| now_ms.saturating_sub(s.observed_at_ms) <= stale;
        let price = newest_per_source(obs.iter().filter(fresh), |s| {
            s.price_btc.filter(|p| *p > Decimal::ZERO)
        });
        let difficulty = newest_per_source(obs.iter().filter(fresh), |s| {
            s.difficulty.filter(|d| *d > Decimal::ZERO)
        });
        let reward = newest_per_source(obs.iter().filter(fresh), |s| s.block_reward);

        // Damping runs whenever there is a price, so a spike's persistence is measured even
        // while the coin is excluded for another field.
        let mut notes = Vec::new();
        let damped = (!price.is_empty()).then(|| {
            let raw = median_decimal(price.values().map(|(_, p)| *p).collect());
            let history = self.coins.entry(coin.clone()).or_default();
            damp(&self.params, history, coin, raw, now_ms, &mut notes)
        });

        let mut missing = Vec::new();
        if price.is_empty() {
            missing.push("price");
        }
        if difficulty.is_empty() {
            missing.push("difficulty");
        }
        if reward.is_empty() {
            missing.push("block reward");
        }
        if !missing.is_empty() {
            let newest = obs.iter().map(|s| s.observed_at_ms).max().unwrap_or(0);
            return Err(format!(
                "{coin}: no {} newer than {} (newest observation {} old)",
                missing.join(", "),
                duration(stale),
                duration(now_ms.saturating_sub(newest))
            ));
        }

        let mut sources = BTreeSet::new();
        let mut oldest = u64::MAX;
        for (src, (at, _)) in &price {
            sources.insert(src.to_string());
            oldest = oldest.min(*at);
        }
        for (src, (at, _)) in &difficulty {
            sources.insert(src.to_string());
            oldest = oldest.min(*at);
        }
        for (src, (at, _)) in &reward {
            sources.insert(src.to_string());
            oldest = oldest.min(*at);
        }
        Ok(CoinMarket {
            coin: coin.clone(),
            price_btc: damped.expect("price is not empty"),
            difficulty: median_decimal(difficulty.values().map(|(_, d)| *d).collect()),
            block_reward: median_u64(reward.values().map(|(_, r)| *r).collect()),
            observed_at_ms: oldest,
            sources: sources.into_iter().collect(),
            notes,
        })
    }
}

/// Per source, the newest observation carrying the field (later in the slice wins a tie).
fn newest_per_source<'a, T>(
    obs: impl Iterator<Item = &'a &'a MarketSnapshot>,
    field: impl Fn(&MarketSnapshot) -> Option<T>,
) -> BTreeMap<&'a str, (u64, T)> {
    let mut out: BTreeMap<&str, (u64, T)> = BTreeMap::new();
    for s in obs {
        if let Some(v) = field(s) {
            match out.get(s.source.as_str()) {
                Some((at, _)) if *at > s.observed_at_ms => {}
                _ => {
                    out.insert(s.source.as_str(), (s.observed_at_ms, v));
                }
            }
        }
    }
    out
}

fn damp(
    params: &CombineParams,
    h: &mut PriceHistory,
    coin: &Ticker,
    price: Decimal,
    now_ms: u64,
    notes: &mut Vec<String>,
) -> Decimal {
    let window = params.window.max(1);
    let Some(&last) = h.accepted.back() else {
        h.accepted.push_back(price);
        return price;
    };
    let median = median_decimal(h.accepted.iter().copied().collect());
    let deviation = (price - median)
        .abs()
        .checked_div(median)
        .and_then(|r| r.checked_mul(Decimal::ONE_HUNDRED));
    let within = matches!(deviation, Some(d) if d <= params.spike_percent);
    if within {
        h.pending = None;
        h.accepted.push_back(price);
        while h.accepted.len() > window {
            h.accepted.pop_front();
        }
        return price;
    }
    let up = price > median;
    let since = match h.pending {
        Some(p) if p.up == up => p.since_ms,
        _ => now_ms,
    };
    let held = now_ms.saturating_sub(since);
    let dev = deviation.map_or_else(|| "an overflowing".to_string(), |d| num(d).to_string());
    if held >= params.persist_ms {
        h.pending = None;
        h.accepted.clear();
        h.accepted.push_back(price);
        notes.push(format!(
            "{coin}: price {} accepted as a new level after deviating {dev} % from the median {} for {}",
            num(price),
            num(median),
            duration(held)
        ));
        return price;
    }
    h.pending = Some(Pending {
        since_ms: since,
        up,
    });
    notes.push(format!(
        "{coin}: price {} held back ({dev} % from the median {} of the last {}, > {} %) for {} < {}; using {}",
        num(price),
        num(median),
        h.accepted.len(),
        num(params.spike_percent),
        duration(held),
        duration(params.persist_ms),
        num(last)
    ));
    last
}

fn median_decimal(mut v: Vec<Decimal>) -> Decimal {
    v.sort();
    let n = v.len();
    if n == 0 {
        return Decimal::ZERO;
    }
    if n % 2 == 1 {
        return v[n / 2];
    }
    let (a, b) = (v[n / 2 - 1], v[n / 2]);
    a.checked_add(b)
        .map(|s| s / Decimal::TWO)
        .or_else(|| b.checked_sub(a).map(|gap| a + gap / Decimal::TWO))
        .unwrap_or(a)
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return 0;
    }
    if n % 2 == 1 {
        return v[n / 2];
    }
    ((u128::from(v[n / 2 - 1]) + u128::from(v[n / 2])) / 2) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    const MIN: u64 = 60_000;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn snap(coin: &str, source: &str, at: u64, price: Option<&str>) -> MarketSnapshot {
        MarketSnapshot {
            coin: coin.parse().unwrap(),
            price_btc: price.map(d),
            difficulty: Some(d("1000")),
            block_reward: Some(1_250_000_000),
            height: None,
            observed_at_ms: at,
            source: source.to_string(),
        }
    }

    fn params() -> CombineParams {
        CombineParams {
            stale_after_ms: 15 * MIN,
            spike_percent: Decimal::from(20),
            window: 3,
            persist_ms: 30 * MIN,
        }
    }

    #[test]
    fn median_of_sources_per_field() {
        let mut c = Combiner::new(params());
        let mut a = snap("LTC", "kraken", 100, Some("0.004"));
        a.difficulty = Some(d("900"));
        a.block_reward = Some(1_250_000_001);
        let mut b = snap("LTC", "binance", 200, Some("0.006"));
        b.difficulty = None;
        b.block_reward = Some(1_250_000_002);
        let k = snap("LTC", "kucoin", 300, Some("0.005"));
        let (m, x) = c.update(&[a, b, k], 400);
        assert!(x.is_empty(), "{x:?}");
        assert_eq!(m.len(), 1);
        let m = &m[0];
        assert_eq!(m.price_btc, d("0.005"));
        assert_eq!(m.difficulty, d("950")); // mean of the middle two of {900, 1000}
        assert_eq!(m.block_reward, 1_250_000_001);
        assert_eq!(m.observed_at_ms, 100);
        assert_eq!(m.sources, ["binance", "kraken", "kucoin"]);
        assert!(m.notes.is_empty());
    }

    #[test]
    fn each_source_counts_once_with_its_newest_value() {
        let mut c = Combiner::new(params());
        let snaps = [
            snap("LTC", "kraken", 100, Some("0.001")),
            snap("LTC", "kraken", 300, Some("0.005")),
            snap("LTC", "kraken", 200, Some("0.002")),
            snap("LTC", "binance", 300, Some("0.007")),
        ];
        let (m, _) = c.update(&snaps, 400);
        assert_eq!(m[0].price_btc, d("0.006"));
    }

    #[test]
    fn stale_and_invalid_observations_are_dropped_with_a_reason() {
        let mut c = Combiner::new(params());
        let now = 60 * MIN;
        let old = snap("LTC", "kraken", now - 16 * MIN, Some("0.005"));
        let mut zero = snap("LTC", "binance", now, Some("0"));
        zero.difficulty = Some(Decimal::ZERO);
        let ok = snap("DOGE", "binance", now - 15 * MIN, Some("0.00000003"));
        let (m, x) = c.update(&[old, zero, ok], now);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].coin.as_str(), "DOGE");
        assert_eq!(
            x,
            vec![Exclusion {
                coin: "LTC".parse().unwrap(),
                reason: "LTC: no price, difficulty newer than 15 min (newest observation 0 ms old)"
                    .into()
            }]
        );
        let (_, x) = c.update(&[snap("LTC", "kraken", 0, Some("1"))], now);
        assert_eq!(
            x.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
            [
                "DOGE: no observations",
                "LTC: no price, difficulty, block reward newer than 15 min (newest observation 1 h old)"
            ]
        );
    }

    #[test]
    fn a_spike_is_held_then_accepted_once_it_persists() {
        let mut c = Combiner::new(params());
        for t in 0..3 {
            let (m, _) = c.update(&[snap("LTC", "k", t * MIN, Some("0.005"))], t * MIN);
            assert_eq!(m[0].price_btc, d("0.005"));
        }
        // +30 %: held.
        let t0 = 10 * MIN;
        let (m, _) = c.update(&[snap("LTC", "k", t0, Some("0.0065"))], t0);
        assert_eq!(m[0].price_btc, d("0.005"));
        assert_eq!(
            m[0].notes,
            [
                "LTC: price 0.0065 held back (30 % from the median 0.005 of the last 3, > 20 %) \
              for 0 ms < 30 min; using 0.005"
            ]
        );
        let (m, _) = c.update(
            &[snap("LTC", "k", t0 + 29 * MIN, Some("0.007"))],
            t0 + 29 * MIN,
        );
        assert_eq!(m[0].price_btc, d("0.005"));
        let (m, _) = c.update(
            &[snap("LTC", "k", t0 + 30 * MIN, Some("0.0066"))],
            t0 + 30 * MIN,
        );
        assert_eq!(m[0].price_btc, d("0.0066"));
        assert!(
            m[0].notes[0].contains("accepted as a new level"),
            "{:?}",
            m[0].notes
        );
        // The new level is the reference from now on.
        let (m, _) = c.update(
            &[snap("LTC", "k", t0 + 31 * MIN, Some("0.0067"))],
            t0 + 31 * MIN,
        );
        assert_eq!(m[0].price_btc, d("0.0067"));
        assert!(m[0].notes.is_empty());
    }

    #[test]
    fn a_spike_that_reverts_or_flips_restarts_the_clock() {
        let mut c = Combiner::new(params());
        c.update(&[snap("LTC", "k", 0, Some("0.005"))], 0);
        let at = |c: &mut Combiner, t: u64, p: &str| {
            c.update(&[snap("LTC", "k", t, Some(p))], t).0[0].price_btc
        };
        assert_eq!(at(&mut c, MIN, "0.009"), d("0.005"));
        assert_eq!(at(&mut c, 20 * MIN, "0.005"), d("0.005"));
        assert_eq!(at(&mut c, 25 * MIN, "0.009"), d("0.005"));
        assert_eq!(at(&mut c, 40 * MIN, "0.001"), d("0.005")); // other direction: restart
        assert_eq!(at(&mut c, 60 * MIN, "0.009"), d("0.005")); // and again
        assert_eq!(at(&mut c, 89 * MIN, "0.009"), d("0.005"));
        assert_eq!(at(&mut c, 90 * MIN, "0.009"), d("0.009"));
    }

    #[test]
    fn combiner_state_round_trips_through_serde() {
        let mut c = Combiner::new(params());
        c.update(&[snap("LTC", "k", 0, Some("0.005"))], 0);
        c.update(&[snap("LTC", "k", 0, Some("0.009"))], 1);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Combiner>(&json).unwrap(), c);
    }

    #[test]
    fn medians() {
        assert_eq!(median_u64(vec![3, 1, 2]), 2);
        assert_eq!(median_u64(vec![u64::MAX, u64::MAX - 1]), u64::MAX - 1);
        assert_eq!(
            median_decimal(vec![Decimal::MAX, Decimal::MAX]),
            Decimal::MAX
        );
        assert_eq!(median_decimal(vec![d("1"), d("2")]), d("1.5"));
    }

    proptest! {
        #[test]
        fn a_single_observation_spike_never_passes_before_persist(
            spike_percent in 1u32..100,
            window in 1usize..8,
            persist_ms in 1u64..120 * MIN,
            warmup in 1usize..6,
            factor_pct in 1u32..500,
            up in any::<bool>(),
            // Times of the spiking source's reports, as fractions of persist_ms (< 1).
            offsets in prop::collection::vec(0u64..1_000, 1..20),
            three_sources in any::<bool>(),
        ) {
            let p = CombineParams {
                stale_after_ms: u64::MAX,
                spike_percent: Decimal::from(spike_percent),
                window,
                persist_ms,
            };
            let base = d("0.005");
            // Strictly beyond the band: (spike% + 1 + factor%) away, and positive.
            let dev = Decimal::from(spike_percent + 1) + Decimal::from(factor_pct) / Decimal::from(10);
            let spike = if up {
                base * (Decimal::ONE + dev / Decimal::ONE_HUNDRED)
            } else {
                let f = Decimal::ONE - dev / Decimal::ONE_HUNDRED;
                prop_assume!(f > Decimal::ZERO);
                base * f
            };
            let mut c = Combiner::new(p);
            for i in 0..warmup as u64 {
                c.update(&[snap("LTC", "a", i, Some("0.005"))], i);
            }
            let t0 = 1_000;
            let mut offsets = offsets;
            offsets.sort();
            for o in offsets {
                let now = t0 + persist_ms * o / 1_000;
                let mut snaps = vec![snap("LTC", "a", now, Some(&spike.to_string()))];
                if three_sources {
                    snaps.push(snap("LTC", "b", now, Some("0.005")));
                    snaps.push(snap("LTC", "c", now, Some("0.005")));
                }
                let (m, x) = c.update(&snaps, now);
                prop_assert!(x.is_empty());
                prop_assert_eq!(m[0].price_btc, base);
            }
            // Back to normal: the normal price, and the pending spike is forgotten.
            let now = t0 + persist_ms;
            let (m, _) = c.update(&[snap("LTC", "a", now, Some("0.005"))], now);
            prop_assert_eq!(m[0].price_btc, base);
            let (m, _) = c.update(&[snap("LTC", "a", now + 1, Some(&spike.to_string()))], now + 1);
            prop_assert_eq!(m[0].price_btc, base);
        }

        #[test]
        fn combined_fields_lie_within_the_fresh_observations(
            prices in prop::collection::vec((1i64..1_000_000, 0u64..30 * MIN), 1..8),
        ) {
            let mut c = Combiner::new(CombineParams { window: 1, ..params() });
            let now = 30 * MIN;
            let snaps: Vec<MarketSnapshot> = prices
                .iter()
                .enumerate()
                .map(|(i, (p, at))| MarketSnapshot {
                    price_btc: Some(Decimal::new(*p, 8)),
                    ..snap("LTC", &format!("s{i}"), *at, None)
                })
                .collect();
            let fresh: Vec<Decimal> = snaps
                .iter()
                .filter(|s| now - s.observed_at_ms <= 15 * MIN)
                .map(|s| s.price_btc.unwrap())
                .collect();
            let (m, x) = c.update(&snaps, now);
            if fresh.is_empty() {
                prop_assert_eq!(x.len(), 1);
            } else {
                let lo = fresh.iter().min().unwrap();
                let hi = fresh.iter().max().unwrap();
                prop_assert!(m[0].price_btc >= *lo && m[0].price_btc <= *hi);
            }
        }
    }
}
