//! What a unit of hashrate earns on a coin and on a mining target, in exact decimals.
//!
//! Expected coins per day for hashrate `H` (hashes per second) on a chain of network difficulty
//! `D` (`getdifficulty` convention, both algorithms) paying `R` per block is
//! `86400 · H · R / (D · 2^32)` (block time cancels out); in BTC, times the price. The unit of
//! hashrate is 1 TH/s for sha256d and 1 MH/s for scrypt. The constant `86400 · H / 2^32` is an
//! exact decimal for both, so nothing here is rounded except by `Decimal`'s 28 digits.

use defpool_core::{Algorithm, Ticker};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::{Candidate, TargetId};

/// What is mined: one coin, or a parent coin plus the chains merge-mined on its work.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MiningTarget {
    /// `"LTC"`, `"LTC+DOGE"`.
    pub id: TargetId,
    /// The parent first, then the merge-mined chains.
    pub coins: Vec<Ticker>,
}

impl MiningTarget {
    /// A single coin; the id is its ticker.
    pub fn single(coin: Ticker) -> Self {
        MiningTarget {
            id: coin.as_str().to_string(),
            coins: vec![coin],
        }
    }

    /// A parent with merge-mined chains; the id joins the tickers with `+` (`LTC+DOGE`).
    pub fn merged(parent: Ticker, aux: impl IntoIterator<Item = Ticker>) -> Self {
        let coins: Vec<Ticker> = std::iter::once(parent).chain(aux).collect();
        let id = coins
            .iter()
            .map(Ticker::as_str)
            .collect::<Vec<_>>()
            .join("+");
        MiningTarget { id, coins }
    }

    /// The coin whose proof of work is done (the first one).
    pub fn parent(&self) -> Option<&Ticker> {
        self.coins.first()
    }
}

/// What an upstream's terms do to a unit of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTerms {
    /// The upstream's fee in basis points (100 = 1 %).
    pub fee_bps: u32,
    /// Work lost by leaving it (a PPLNS window forfeited), in seconds of hashrate.
    pub switch_cost_secs: u32,
}

impl UpstreamTerms {
    /// `gross · (1 − fee_bps / 10000)`.
    pub fn net(&self, gross: Decimal) -> Result<Decimal, ProfitError> {
        if self.fee_bps > 10_000 {
            return Err(ProfitError::FeeAbove100 {
                fee_bps: self.fee_bps,
            });
        }
        let keep = Decimal::from(10_000 - self.fee_bps) / Decimal::from(10_000);
        gross.checked_mul(keep).ok_or(ProfitError::Overflow)
    }

    /// BTC per unit hashrate forfeited by one switch away from this upstream, for a target
    /// earning `profitability` BTC/day per unit: `profitability · switch_cost_secs / 86400`.
    pub fn switch_cost(&self, profitability: Decimal) -> Result<Decimal, ProfitError> {
        profitability
            .checked_mul(Decimal::from(self.switch_cost_secs))
            .and_then(|v| v.checked_div(Decimal::from(86_400)))
            .ok_or(ProfitError::Overflow)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfitError {
    #[error("difficulty {0} is not positive")]
    NonPositiveDifficulty(Decimal),
    #[error("price {0} BTC is negative")]
    NegativePrice(Decimal),
    #[error("{0} decimals is more than 28")]
    TooManyDecimals(u8),
    #[error("fee {fee_bps} bps is more than 100 %")]
    FeeAbove100 { fee_bps: u32 },
    #[error("no profitability for {0}")]
    MissingCoin(Ticker),
    #[error("target {0} has no coins")]
    EmptyTarget(TargetId),
    #[error("the profitability overflows")]
    Overflow,
}

/// `86400 · H / 2^32` for the algorithm's unit of hashrate, exactly.
pub fn day_hashes_per_difficulty(algorithm: Algorithm) -> Decimal {
    match algorithm {
        // 86400e12 / 2^32 = 164794921875 / 8192
        Algorithm::Sha256d => Decimal::from_i128_with_scale(201_165_676_116_943_359_375, 13),
        // 86400e6 / 2^32 = 10546875 / 524288
        Algorithm::Scrypt => Decimal::from_i128_with_scale(201_165_676_116_943_359_375, 19),
    }
}

/// The unit of hashrate profitability is given per.
pub fn hashrate_unit(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Sha256d => "TH/s",
        Algorithm::Scrypt => "MH/s",
    }
}

/// Expected BTC per day per unit hashrate (1 TH/s for sha256d, 1 MH/s for scrypt) mining a coin
/// whose blocks pay `reward_units` (smallest units, `decimals` places) at `price_btc` per coin
/// and network `difficulty`.
pub fn coin_profitability(
    algorithm: Algorithm,
    reward_units: u64,
    decimals: u8,
    price_btc: Decimal,
    difficulty: Decimal,
) -> Result<Decimal, ProfitError> {
    if difficulty <= Decimal::ZERO {
        return Err(ProfitError::NonPositiveDifficulty(difficulty));
    }
    if price_btc.is_sign_negative() && !price_btc.is_zero() {
        return Err(ProfitError::NegativePrice(price_btc));
    }
    if decimals > 28 {
        return Err(ProfitError::TooManyDecimals(decimals));
    }
    let reward = Decimal::from_i128_with_scale(i128::from(reward_units), u32::from(decimals));
    day_hashes_per_difficulty(algorithm)
        .checked_mul(reward)
        .and_then(|v| v.checked_mul(price_btc))
        .and_then(|v| v.checked_div(difficulty))
        .ok_or(ProfitError::Overflow)
}

/// A target's profitability: the sum of its coins' (from `per_coin`), net of the upstream's fee.
/// Any coin without a profitability makes the whole target unknown.
pub fn target_profitability(
    target: &MiningTarget,
    terms: &UpstreamTerms,
    per_coin: impl Fn(&Ticker) -> Option<Decimal>,
) -> Result<Decimal, ProfitError> {
    if target.coins.is_empty() {
        return Err(ProfitError::EmptyTarget(target.id.clone()));
    }
    let mut gross = Decimal::ZERO;
    for coin in &target.coins {
        let p = per_coin(coin).ok_or_else(|| ProfitError::MissingCoin(coin.clone()))?;
        gross = gross.checked_add(p).ok_or(ProfitError::Overflow)?;
    }
    terms.net(gross)
}

/// The engine's view of a target: its net profitability, or ineligible with the reason when it
/// cannot be computed. `eligible` carries the caller's own verdict (whitelist, upstream health).
pub fn candidate(
    target: &MiningTarget,
    terms: &UpstreamTerms,
    per_coin: impl Fn(&Ticker) -> Option<Decimal>,
    eligible: Result<(), String>,
) -> Candidate {
    match target_profitability(target, terms, per_coin) {
        Ok(profitability) => Candidate {
            target: target.id.clone(),
            profitability,
            eligible,
        },
        Err(e) => Candidate {
            target: target.id.clone(),
            profitability: Decimal::ZERO,
            eligible: Err(match eligible {
                Ok(()) => e.to_string(),
                Err(why) => format!("{why}; {e}"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::str::FromStr;

    fn t(s: &str) -> Ticker {
        s.parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn constants_are_exact() {
        let k = day_hashes_per_difficulty(Algorithm::Sha256d);
        assert_eq!(k * Decimal::from(8192), Decimal::from(164_794_921_875u64));
        let k = day_hashes_per_difficulty(Algorithm::Scrypt);
        assert_eq!(k * Decimal::from(524_288), Decimal::from(10_546_875));
    }

    #[test]
    fn btc_hand_computed() {
        // 86400·1e12·6.25·1 / (1e13·2^32) = 3375 / 2^28, exactly.
        let p = coin_profitability(Algorithm::Sha256d, 625_000_000, 8, Decimal::ONE, d("1e13"))
            .unwrap();
        assert_eq!(p, d("0.0000125728547573089599609375"));
        // Matches defpool-core's float estimate (12572.85 sats/day at difficulty 1e12).
        let units = defpool_core::work::expected_units_per_day(1e12, 625_000_000, 1e13);
        assert!((units / 1e8 - 1.257_285_475_730_896e-5).abs() < 1e-18);
    }

    #[test]
    fn scrypt_is_per_mh() {
        // LTC: 12.5 LTC at 0.005 BTC, difficulty 1e7, 1 MH/s: 1.25728547573089599609375e-7.
        let p =
            coin_profitability(Algorithm::Scrypt, 1_250_000_000, 8, d("0.005"), d("1e7")).unwrap();
        assert_eq!(p.round_dp(28), d("0.0000001257285475730895996094"));
        // DOGE: 10000 DOGE at 3e-8 BTC, difficulty 5e6: 1.20699405670166015625e-9.
        let q = coin_profitability(
            Algorithm::Scrypt,
            1_000_000_000_000,
            8,
            d("0.00000003"),
            d("5e6"),
        )
        .unwrap();
        assert_eq!(q.round_dp(28), d("0.0000000012069940567016601562"));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let a = Algorithm::Sha256d;
        assert_eq!(
            coin_profitability(a, 1, 8, Decimal::ONE, Decimal::ZERO),
            Err(ProfitError::NonPositiveDifficulty(Decimal::ZERO))
        );
        assert!(matches!(
            coin_profitability(a, 1, 8, Decimal::ONE, d("-1")),
            Err(ProfitError::NonPositiveDifficulty(_))
        ));
        assert!(matches!(
            coin_profitability(a, 1, 8, d("-0.1"), Decimal::ONE),
            Err(ProfitError::NegativePrice(_))
        ));
        assert_eq!(
            coin_profitability(a, 1, 29, Decimal::ONE, Decimal::ONE),
            Err(ProfitError::TooManyDecimals(29))
        );
        assert_eq!(
            coin_profitability(a, u64::MAX, 0, Decimal::MAX, d("0.0000000001")),
            Err(ProfitError::Overflow)
        );
        assert_eq!(
            coin_profitability(a, 5, 8, Decimal::ZERO, Decimal::ONE),
            Ok(Decimal::ZERO)
        );
    }

    #[test]
    fn merged_target_sums_its_chains_net_of_fee() {
        let target = MiningTarget::merged(t("LTC"), [t("DOGE")]);
        assert_eq!(target.id, "LTC+DOGE");
        assert_eq!(target.parent(), Some(&t("LTC")));
        let per: BTreeMap<Ticker, Decimal> = [(t("LTC"), d("0.0003")), (t("DOGE"), d("0.0001"))]
            .into_iter()
            .collect();
        let terms = UpstreamTerms {
            fee_bps: 250,
            switch_cost_secs: 0,
        };
        let p = target_profitability(&target, &terms, |c| per.get(c).copied()).unwrap();
        assert_eq!(p, d("0.00039")); // 0.0004 · 0.975
        let single = MiningTarget::single(t("LTC"));
        assert_eq!(single.id, "LTC");
        assert_eq!(
            target_profitability(&single, &UpstreamTerms::default(), |c| per.get(c).copied()),
            Ok(d("0.0003"))
        );
    }

    #[test]
    fn missing_coin_makes_the_target_ineligible() {
        let target = MiningTarget::merged(t("LTC"), [t("DOGE")]);
        let per = |c: &Ticker| (c.as_str() == "LTC").then(|| d("0.0003"));
        assert_eq!(
            target_profitability(&target, &UpstreamTerms::default(), per),
            Err(ProfitError::MissingCoin(t("DOGE")))
        );
        let c = candidate(&target, &UpstreamTerms::default(), per, Ok(()));
        assert_eq!(c.eligible, Err("no profitability for DOGE".to_string()));
        let c = candidate(
            &target,
            &UpstreamTerms::default(),
            per,
            Err("upstreams down".into()),
        );
        assert_eq!(
            c.eligible,
            Err("upstreams down; no profitability for DOGE".to_string())
        );
        let empty = MiningTarget {
            id: "X".into(),
            coins: vec![],
        };
        assert!(matches!(
            target_profitability(&empty, &UpstreamTerms::default(), per),
            Err(ProfitError::EmptyTarget(_))
        ));
    }

    #[test]
    fn fee_and_switch_cost() {
        let all = UpstreamTerms {
            fee_bps: 10_000,
            switch_cost_secs: 0,
        };
        assert_eq!(all.net(Decimal::ONE), Ok(Decimal::ZERO));
        let over = UpstreamTerms {
            fee_bps: 10_001,
            switch_cost_secs: 0,
        };
        assert!(over.net(Decimal::ONE).is_err());
        let pplns = UpstreamTerms {
            fee_bps: 0,
            switch_cost_secs: 4_320,
        };
        assert_eq!(pplns.switch_cost(Decimal::ONE), Ok(d("0.05")));
    }
}
