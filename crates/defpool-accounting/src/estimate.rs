//! Estimated earnings: what work should have earned at the market data of the time, shown beside
//! what was actually realised. Work of `w` expected hashes on a chain of difficulty `D` finds
//! `w / (D · 2^32)` blocks on average, each paying the block reward, worth the coin's BTC price:
//!
//! `expected units = w × reward / (D × 2^32)`, `expected BTC = units / 10^decimals × price_btc`.
//!
//! Estimates are decimals and never enter the ledger: there is no way to turn an [`Estimate`]
//! into a [`crate::Posting`]. They add up: the estimate of a sum of work at one market point is
//! the sum of the estimates.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Market data at the time the work was done (a `MarketSnapshot`'s fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketPoint {
    /// Network difficulty (`getdifficulty` convention: DIFF1 / target).
    pub difficulty: Decimal,
    /// Block reward in the coin's smallest units.
    pub block_reward: u64,
    /// Price of one whole coin in BTC.
    pub price_btc: Decimal,
    /// The coin's decimal places (8 for LTC: 10^8 litoshis per LTC).
    pub decimals: u8,
}

/// What some work is expected to earn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    /// Expected coin, in the coin's smallest units (fractional: an expectation).
    pub coin_units: Decimal,
    /// Its value in whole BTC.
    pub btc: Decimal,
}

/// Why no estimate could be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EstimateError {
    #[error("difficulty {0} is not positive")]
    Difficulty(Decimal),
    #[error("price {0} is negative")]
    Price(Decimal),
    #[error("{0} decimal places is more than 28")]
    Decimals(u8),
    #[error("the estimate is out of the decimal range")]
    Overflow,
}

/// 2^32: the expected hashes per unit of difficulty.
const HASHES_PER_DIFFICULTY: u64 = 1 << 32;

/// The expected earnings of `work` (expected hashes, as everywhere) at `market`.
pub fn estimate(work: u128, market: &MarketPoint) -> Result<Estimate, EstimateError> {
    if market.difficulty <= Decimal::ZERO {
        return Err(EstimateError::Difficulty(market.difficulty));
    }
    if market.price_btc < Decimal::ZERO {
        return Err(EstimateError::Price(market.price_btc));
    }
    let unit = Decimal::try_new(1, market.decimals as u32)
        .map_err(|_| EstimateError::Decimals(market.decimals))?;
    let overflow = || EstimateError::Overflow;
    // work / 2^32 without converting all of `work` (up to 2^128, beyond a decimal's 96 bits):
    // the quotient is below 2^96 and the remainder's fraction is added to it.
    let whole =
        Decimal::try_from_i128_with_scale((work >> 32) as i128, 0).map_err(|_| overflow())?;
    let frac = Decimal::from(work as u32 as u64) / Decimal::from(HASHES_PER_DIFFICULTY);
    // Divided separately: `whole + frac` alone can round past the decimal range.
    let blocks = whole
        .checked_div(market.difficulty)
        .zip(frac.checked_div(market.difficulty))
        .and_then(|(w, f)| w.checked_add(f))
        .ok_or_else(overflow)?;
    let coin_units = blocks
        .checked_mul(Decimal::from(market.block_reward))
        .ok_or_else(overflow)?;
    let btc = coin_units
        .checked_mul(unit)
        .and_then(|c| c.checked_mul(market.price_btc))
        .ok_or_else(overflow)?;
    Ok(Estimate { coin_units, btc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn ltc() -> MarketPoint {
        MarketPoint {
            difficulty: d("2"),
            block_reward: 625_000_000,
            price_btc: d("0.001"),
            decimals: 8,
        }
    }

    #[test]
    fn one_block_of_work() {
        // Work for exactly one block at difficulty 2: 2 · 2^32.
        let e = estimate(2 << 32, &ltc()).unwrap();
        assert_eq!(e.coin_units, d("625000000"));
        assert_eq!(e.btc, d("0.00625"));
        // A quarter of a block's work.
        let e = estimate(1 << 31, &ltc()).unwrap();
        assert_eq!(e.coin_units, d("156250000"));
        // Work that is not a multiple of 2^32 keeps its fraction: (2^32 + 1) / 2^33 blocks.
        let e = estimate((1 << 32) + 1, &ltc()).unwrap();
        assert!(e.coin_units > d("312500000") && e.coin_units < d("312500001"));
        assert_eq!(estimate(0, &ltc()).unwrap().btc, Decimal::ZERO);
    }

    #[test]
    fn huge_work_and_bad_inputs() {
        let mut m = ltc();
        m.difficulty = d("1e20");
        assert!(estimate(u128::MAX, &m).is_ok());
        m.difficulty = d("0.0000001");
        assert_eq!(estimate(u128::MAX, &m), Err(EstimateError::Overflow));
        m.difficulty = Decimal::ZERO;
        assert!(matches!(estimate(1, &m), Err(EstimateError::Difficulty(_))));
        let mut m = ltc();
        m.price_btc = d("-1");
        assert!(matches!(estimate(1, &m), Err(EstimateError::Price(_))));
        let mut m = ltc();
        m.decimals = 29;
        assert_eq!(estimate(1, &m), Err(EstimateError::Decimals(29)));
    }
}
