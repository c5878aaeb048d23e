//! What a market data source reports about one coin at one moment.

use defpool_core::Ticker;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One observation of one coin. Any field a source does not know is `None`; combining several
/// sources fills a coin's full picture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSnapshot {
    pub coin: Ticker,
    /// Price of one whole coin in BTC.
    pub price_btc: Option<Decimal>,
    /// Network difficulty (`getdifficulty` convention: DIFF1 / target).
    pub difficulty: Option<Decimal>,
    /// Block reward in the coin's smallest units: subsidy plus typical fees where known.
    pub block_reward: Option<u64>,
    pub height: Option<u64>,
    /// When the source observed it (Unix milliseconds).
    pub observed_at_ms: u64,
    /// Which source (`binance`, `kraken`, `daemon:LTC`, `csv`, …).
    pub source: String,
}
