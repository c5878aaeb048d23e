//! Binance spot public ticker: price in BTC.
//!
//! Format, per Binance's spot REST documentation ("Symbol price ticker",
//! <https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints#symbol-price-ticker>,
//! and "General API Information" for errors and limits):
//! - `GET /api/v3/ticker/price?symbol=LTCBTC` → `{"symbol":"LTCBTC","price":"0.00123400"}`;
//! - `GET /api/v3/ticker/price?symbols=["LTCBTC","BCHBTC"]` → an array of such objects;
//! - errors: a 4xx with `{"code":-1121,"msg":"Invalid symbol."}` (one invalid symbol fails a
//!   whole `symbols=` batch); `429` when a rate limit is broken (with `Retry-After`), `418` when
//!   the IP is banned for ignoring 429s; `5xx` on Binance's side.
//!
//! A coin is priced from `{COIN}BTC`; when Binance lists only `BTC{COIN}` the price is inverted.

use std::collections::BTreeMap;

use defpool_core::Ticker;
use serde::Deserialize;

use crate::error::SourceError;
use crate::http::{system_clock, Clock, HttpClient, HttpOptions, Reply};
use crate::num::{btc_price, JsonDecimal};
use crate::{is_per_coin, network_builders, unique, Fetched, MarketSnapshot, MarketSource};

/// Binance's public REST base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.binance.com";

/// Binance's error code for an unknown symbol.
const INVALID_SYMBOL: i64 = -1121;
/// Binance's error code for too many requests.
const TOO_MANY_REQUESTS: i64 = -1003;

/// Prices in BTC from Binance's spot price ticker.
#[derive(Clone)]
pub struct BinanceSource {
    name: String,
    base_url: String,
    http: HttpClient,
    clock: Clock,
    assets: BTreeMap<Ticker, String>,
}

impl std::fmt::Debug for BinanceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinanceSource")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("assets", &self.assets)
            .finish_non_exhaustive()
    }
}

impl Default for BinanceSource {
    fn default() -> Self {
        BinanceSource::new()
    }
}

network_builders!(BinanceSource);

#[derive(Deserialize)]
struct PriceTicker {
    symbol: String,
    price: JsonDecimal,
}

#[derive(Deserialize)]
struct ApiError {
    code: i64,
    msg: String,
}

impl BinanceSource {
    pub fn new() -> BinanceSource {
        BinanceSource {
            name: "binance".into(),
            base_url: DEFAULT_BASE_URL.into(),
            http: HttpClient::new(HttpOptions::default()),
            clock: system_clock(),
            assets: BTreeMap::new(),
        }
    }

    /// Binance's asset code for `coin` when it differs from the ticker.
    pub fn with_asset(mut self, coin: Ticker, code: impl Into<String>) -> Self {
        self.assets.insert(coin, code.into().to_ascii_uppercase());
        self
    }

    fn asset<'a>(&'a self, coin: &'a Ticker) -> &'a str {
        self.assets
            .get(coin)
            .map(String::as_str)
            .unwrap_or(coin.as_str())
    }

    fn url(&self) -> String {
        format!("{}/api/v3/ticker/price", self.base_url)
    }

    /// One symbol's last price.
    fn one(&self, symbol: &str) -> Result<rust_decimal::Decimal, SourceError> {
        let url = self.url();
        let ticker: PriceTicker = self.http.execute(
            &self.name,
            |agent| agent.get(&url).query("symbol", symbol).call(),
            |reply| self.interpret(reply, symbol),
        )?;
        if ticker.symbol != symbol {
            return Err(SourceError::malformed(
                &self.name,
                format!("asked for {symbol}, answered {}", ticker.symbol),
            ));
        }
        Ok(ticker.price.0)
    }

    /// Several symbols' last prices in one request.
    fn batch(&self, symbols: &[String]) -> Result<Vec<PriceTicker>, SourceError> {
        let url = self.url();
        let list = serde_json::to_string(symbols).unwrap_or_default();
        self.http.execute(
            &self.name,
            |agent| agent.get(&url).query("symbols", &list).call(),
            |reply| self.interpret(reply, &symbols.join(",")),
        )
    }

    fn interpret<T: serde::de::DeserializeOwned>(
        &self,
        reply: Reply,
        symbol: &str,
    ) -> Result<T, SourceError> {
        if reply.status == 200 {
            return serde_json::from_slice(&reply.body)
                .map_err(|e| SourceError::malformed(&self.name, e.to_string()));
        }
        if reply.status >= 500 {
            return Err(reply.status_error(&self.name));
        }
        match serde_json::from_slice::<ApiError>(&reply.body) {
            Ok(e) if e.code == INVALID_SYMBOL => Err(SourceError::unknown(&self.name, symbol)),
            Ok(e) if e.code == TOO_MANY_REQUESTS => Err(SourceError::RateLimited {
                origin: self.name.clone(),
                retry_after: reply.retry_after,
            }),
            Ok(e) => Err(SourceError::api(&self.name, e.code.to_string(), e.msg)),
            Err(_) => Err(reply.status_error(&self.name)),
        }
    }

    fn snapshot(&self, coin: &Ticker, price: rust_decimal::Decimal, now: u64) -> MarketSnapshot {
        MarketSnapshot {
            coin: coin.clone(),
            price_btc: Some(price),
            difficulty: None,
            block_reward: None,
            height: None,
            observed_at_ms: now,
            source: self.name.clone(),
        }
    }

    /// One coin on its own: `{COIN}BTC`, then `BTC{COIN}` inverted.
    fn single(&self, coin: &Ticker) -> Result<rust_decimal::Decimal, SourceError> {
        let asset = self.asset(coin);
        let direct = format!("{asset}BTC");
        match self.one(&direct) {
            Ok(p) => btc_price(p, false).map_err(|e| SourceError::malformed(&self.name, e)),
            Err(SourceError::UnknownSymbol { .. }) => {
                let inverse = format!("BTC{asset}");
                match self.one(&inverse) {
                    Ok(p) => btc_price(p, true).map_err(|e| SourceError::malformed(&self.name, e)),
                    Err(SourceError::UnknownSymbol { .. }) => Err(SourceError::unknown(
                        &self.name,
                        format!("{direct} (nor {inverse})"),
                    )),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl MarketSource for BinanceSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch_detailed(&self, coins: &[Ticker]) -> Result<Fetched, SourceError> {
        let now = (self.clock)();
        let mut out = Fetched::default();
        let mut wanted = Vec::new();
        for coin in unique(coins) {
            if coin.as_str() == "BTC" {
                // One BTC is one BTC; no pair to ask for.
                out.snapshots
                    .push(self.snapshot(&coin, rust_decimal::Decimal::ONE, now));
            } else {
                wanted.push(coin);
            }
        }
        if wanted.is_empty() {
            return Ok(out);
        }
        if wanted.len() > 1 {
            let symbols: Vec<String> = wanted
                .iter()
                .map(|c| format!("{}BTC", self.asset(c)))
                .collect();
            match self.batch(&symbols) {
                Ok(tickers) => {
                    for (coin, symbol) in wanted.iter().zip(&symbols) {
                        match tickers.iter().find(|t| &t.symbol == symbol) {
                            Some(t) => match btc_price(t.price.0, false) {
                                Ok(p) => out.snapshots.push(self.snapshot(coin, p, now)),
                                Err(e) => out
                                    .failed
                                    .push((coin.clone(), SourceError::malformed(&self.name, e))),
                            },
                            None => out.failed.push((
                                coin.clone(),
                                SourceError::missing(
                                    &self.name,
                                    coin.as_str(),
                                    format!("{symbol} absent from the batch answer"),
                                ),
                            )),
                        }
                    }
                    return Ok(out);
                }
                // Some symbol is not listed: find which, coin by coin (inverse pairs included).
                Err(SourceError::UnknownSymbol { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for coin in wanted {
            match self.single(&coin) {
                Ok(p) => out.snapshots.push(self.snapshot(&coin, p, now)),
                Err(e) if is_per_coin(&e) => out.failed.push((coin, e)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
