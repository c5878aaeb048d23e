//! Market data sources for the profit switcher: real adapters behind one trait, each producing
//! [`MarketSnapshot`]s.
//!
//! | adapter | gives | how |
//! |---|---|---|
//! | [`DaemonSource`] | difficulty, height, block reward (subsidy + fees) | coin daemon JSON-RPC: `getmininginfo` (fallback `getblockchaininfo`), `getblocktemplate` with the coin's rules |
//! | [`BinanceSource`] | price in BTC | `GET /api/v3/ticker/price` (`symbol=` or batch `symbols=`) |
//! | [`KrakenSource`] | price in BTC | `GET /0/public/Ticker?pair=…` (Kraken's own asset codes: XBT, XDG) |
//! | [`KucoinSource`] | price in BTC | `GET /api/v1/market/orderbook/level1` or `/api/v1/market/allTickers` |
//! | [`WhatToMineSource`] | price, difficulty, block reward, height | WhatToMine's `coins.json` |
//! | [`CsvReplay`] | whatever a recorded series holds | the backtest CSV format, the row in force at a time |
//!
//! The network adapters are blocking (the server calls them from a blocking task), share one
//! HTTP layer with a global timeout and bounded retries with exponential backoff (honouring
//! `429` / `Retry-After`), and turn every failure into a typed [`SourceError`] whose `Display`
//! names the source and the cause. None panics on any input, and none puts a credential in an
//! error or in `Debug` output. Prices are [`Decimal`](rust_decimal::Decimal)s read straight from
//! the JSON text: floats never touch a price.

mod binance;
mod csv;
mod daemon;
mod error;
mod http;
mod kraken;
mod kucoin;
mod num;
mod simulator;
mod whattomine;

pub use binance::BinanceSource;
pub use csv::{CsvReplay, CsvRow};
pub use daemon::DaemonSource;
pub use defpool_switch::snapshot::MarketSnapshot;
pub use error::SourceError;
pub use http::{system_clock, Clock, HttpOptions, RetryPolicy};
pub use kraken::KrakenSource;
pub use kucoin::KucoinSource;
pub use simulator::SimulatorSource;
pub use whattomine::WhatToMineSource;

use defpool_core::Ticker;

/// A source of market data. Blocking: call it from a blocking task.
pub trait MarketSource: Send + Sync {
    /// A short stable name (`binance`, `daemon:LTC`, …), used as the snapshots' `source`.
    fn name(&self) -> &str;

    /// Snapshots of the requested coins this source could observe, one per coin.
    ///
    /// A failure of the whole request (transport, timeout, rate limit, authentication, a
    /// malformed answer, a provider error) is an `Err`. A coin the source cannot price while
    /// others succeed is left out (see [`MarketSource::fetch_detailed`] for why); if no
    /// requested coin could be observed, the first coin's reason is returned as the error.
    /// Coins outside the source's scope (a daemon asked about another coin) are ignored.
    fn fetch(&self, coins: &[Ticker]) -> Result<Vec<MarketSnapshot>, SourceError> {
        self.fetch_detailed(coins)?.into_result()
    }

    /// Like [`MarketSource::fetch`], with the reason for every requested coin left out.
    fn fetch_detailed(&self, coins: &[Ticker]) -> Result<Fetched, SourceError>;
}

/// What one fetch produced: snapshots, and a typed reason for each coin without one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub snapshots: Vec<MarketSnapshot>,
    pub failed: Vec<(Ticker, SourceError)>,
}

impl Fetched {
    /// The [`MarketSource::fetch`] view: the snapshots, or the first reason when there are none.
    pub fn into_result(self) -> Result<Vec<MarketSnapshot>, SourceError> {
        if self.snapshots.is_empty() {
            if let Some((_, e)) = self.failed.into_iter().next() {
                return Err(e);
            }
        }
        Ok(self.snapshots)
    }
}

/// Whether an error concerns one coin's data (left out, reason kept) rather than the source as
/// a whole (the fetch fails).
pub(crate) fn is_per_coin(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::UnknownSymbol { .. }
            | SourceError::MissingPair { .. }
            | SourceError::Malformed { .. }
    )
}

/// The requested coins without repeats, in request order.
pub(crate) fn unique(coins: &[Ticker]) -> Vec<Ticker> {
    let mut out: Vec<Ticker> = Vec::with_capacity(coins.len());
    for c in coins {
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    out
}

/// The builder methods every network adapter shares.
macro_rules! network_builders {
    ($ty:ty) => {
        impl $ty {
            /// Use another base URL (a mirror, or a local server in tests). A trailing `/` is
            /// ignored.
            pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
                self.base_url = base_url.into().trim_end_matches('/').to_string();
                self
            }

            /// Timeout, retries and body size limit.
            pub fn with_http(mut self, options: $crate::HttpOptions) -> Self {
                self.http = $crate::http::HttpClient::new(options);
                self
            }

            /// The clock stamping `observed_at_ms`.
            pub fn with_clock(mut self, clock: $crate::Clock) -> Self {
                self.clock = clock;
                self
            }

            /// Report under another name (two instances of one provider, say).
            pub fn with_name(mut self, name: impl Into<String>) -> Self {
                self.name = name.into();
                self
            }
        }
    };
}
pub(crate) use network_builders;
