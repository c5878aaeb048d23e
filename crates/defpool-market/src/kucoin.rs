//! KuCoin spot public market data: price in BTC.
//!
//! Format, per KuCoin's REST documentation ("Get Ticker",
//! <https://www.kucoin.com/docs/rest/spot-trading/market-data/get-ticker>; "Get All Tickers",
//! <https://www.kucoin.com/docs/rest/spot-trading/market-data/get-all-tickers>; error codes,
//! <https://www.kucoin.com/docs/basic-info/errors-code/spot-errors-code>):
//! - every answer is an envelope `{"code":"200000","data":…}`; any other `code` is an error,
//!   with a `msg` (`400100` parameter error, `429000` too many requests, …);
//! - `GET /api/v1/market/orderbook/level1?symbol=LTC-BTC` → `data`:
//!   `{"time":…,"sequence":"…","price":"0.00123","size":"…","bestBid":"…","bestBidSize":"…",
//!   "bestAsk":"…","bestAskSize":"…"}`, or `data: null` for a symbol KuCoin does not list;
//! - `GET /api/v1/market/allTickers` → `data`: `{"time":…,"ticker":[{"symbol":"LTC-BTC",
//!   "last":"0.00123","buy":"…","sell":"…",…},…]}`; `last` is null for a pair without trades.
//!
//! One coin is asked with `level1`; several at once with one `allTickers`. A coin is priced from
//! `{COIN}-BTC`; when KuCoin lists only `BTC-{COIN}` the price is inverted.

use std::collections::BTreeMap;

use defpool_core::Ticker;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::SourceError;
use crate::http::{system_clock, Clock, HttpClient, HttpOptions, Reply};
use crate::num::{btc_price, JsonDecimal};
use crate::{is_per_coin, network_builders, unique, Fetched, MarketSnapshot, MarketSource};

/// KuCoin's public REST base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.kucoin.com";

const OK: &str = "200000";
const TOO_MANY_REQUESTS: &str = "429000";

/// Prices in BTC from KuCoin's public tickers.
#[derive(Clone)]
pub struct KucoinSource {
    name: String,
    base_url: String,
    http: HttpClient,
    clock: Clock,
    assets: BTreeMap<Ticker, String>,
}

impl std::fmt::Debug for KucoinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KucoinSource")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("assets", &self.assets)
            .finish_non_exhaustive()
    }
}

impl Default for KucoinSource {
    fn default() -> Self {
        KucoinSource::new()
    }
}

network_builders!(KucoinSource);

#[derive(Deserialize)]
struct Envelope<T> {
    code: String,
    msg: Option<String>,
    data: Option<T>,
}

#[derive(Deserialize)]
struct Level1 {
    price: Option<JsonDecimal>,
}

#[derive(Deserialize)]
struct AllTickers {
    ticker: Vec<TickerEntry>,
}

#[derive(Deserialize)]
struct TickerEntry {
    symbol: String,
    last: Option<JsonDecimal>,
}

impl KucoinSource {
    pub fn new() -> KucoinSource {
        KucoinSource {
            name: "kucoin".into(),
            base_url: DEFAULT_BASE_URL.into(),
            http: HttpClient::new(HttpOptions::default()),
            clock: system_clock(),
            assets: BTreeMap::new(),
        }
    }

    /// KuCoin's asset code for `coin` when it differs from the ticker.
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

    fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        symbol: Option<&str>,
    ) -> Result<Option<T>, SourceError> {
        let url = format!("{}{path}", self.base_url);
        self.http.execute(
            &self.name,
            |agent| {
                let req = agent.get(&url);
                match symbol {
                    Some(s) => req.query("symbol", s).call(),
                    None => req.call(),
                }
            },
            |reply| self.interpret(reply),
        )
    }

    fn interpret<T: DeserializeOwned>(&self, reply: Reply) -> Result<Option<T>, SourceError> {
        let parsed = serde_json::from_slice::<Envelope<T>>(&reply.body);
        if reply.status >= 500 {
            return Err(reply.status_error(&self.name));
        }
        match parsed {
            Ok(env) if env.code == OK && reply.status == 200 => Ok(env.data),
            Ok(env) if env.code == TOO_MANY_REQUESTS => Err(SourceError::RateLimited {
                origin: self.name.clone(),
                retry_after: reply.retry_after,
            }),
            Ok(env) if env.code != OK => Err(SourceError::api(
                &self.name,
                env.code,
                env.msg.unwrap_or_default(),
            )),
            Ok(_) => Err(reply.status_error(&self.name)),
            Err(e) if reply.status == 200 => Err(SourceError::malformed(&self.name, e.to_string())),
            Err(_) => Err(reply.status_error(&self.name)),
        }
    }

    fn snapshot(&self, coin: &Ticker, price: Decimal, now: u64) -> MarketSnapshot {
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

    /// One coin with `level1`: `{COIN}-BTC`, then `BTC-{COIN}` inverted.
    fn single(&self, coin: &Ticker) -> Result<Decimal, SourceError> {
        let asset = self.asset(coin);
        let direct = format!("{asset}-BTC");
        let inverse = format!("BTC-{asset}");
        for (symbol, inverted) in [(&direct, false), (&inverse, true)] {
            let Some(level1) =
                self.get::<Level1>("/api/v1/market/orderbook/level1", Some(symbol))?
            else {
                continue; // not listed
            };
            let price = level1.price.ok_or_else(|| {
                SourceError::missing(&self.name, coin.as_str(), format!("{symbol} has no price"))
            })?;
            return btc_price(price.0, inverted).map_err(|e| SourceError::malformed(&self.name, e));
        }
        Err(SourceError::unknown(
            &self.name,
            format!("{direct} (nor {inverse})"),
        ))
    }

    /// A coin's price from an `allTickers` list.
    fn price_in_list(&self, list: &[TickerEntry], coin: &Ticker) -> Result<Decimal, SourceError> {
        let asset = self.asset(coin);
        let direct = format!("{asset}-BTC");
        let inverse = format!("BTC-{asset}");
        for (symbol, inverted) in [(&direct, false), (&inverse, true)] {
            if let Some(entry) = list.iter().find(|t| &t.symbol == symbol) {
                let last = entry.last.ok_or_else(|| {
                    SourceError::missing(
                        &self.name,
                        coin.as_str(),
                        format!("{symbol} has no last trade"),
                    )
                })?;
                return btc_price(last.0, inverted)
                    .map_err(|e| SourceError::malformed(&self.name, e));
            }
        }
        Err(SourceError::unknown(
            &self.name,
            format!("{direct} (nor {inverse})"),
        ))
    }
}

impl MarketSource for KucoinSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch_detailed(&self, coins: &[Ticker]) -> Result<Fetched, SourceError> {
        let now = (self.clock)();
        let mut out = Fetched::default();
        let mut wanted = Vec::new();
        for coin in unique(coins) {
            if coin.as_str() == "BTC" {
                out.snapshots.push(self.snapshot(&coin, Decimal::ONE, now));
            } else {
                wanted.push(coin);
            }
        }
        match wanted.as_slice() {
            [] => {}
            [coin] => match self.single(coin) {
                Ok(p) => out.snapshots.push(self.snapshot(coin, p, now)),
                Err(e) if is_per_coin(&e) => out.failed.push((coin.clone(), e)),
                Err(e) => return Err(e),
            },
            _ => {
                let all = self
                    .get::<AllTickers>("/api/v1/market/allTickers", None)?
                    .ok_or_else(|| SourceError::malformed(&self.name, "allTickers without data"))?;
                for coin in wanted {
                    match self.price_in_list(&all.ticker, &coin) {
                        Ok(p) => out.snapshots.push(self.snapshot(&coin, p, now)),
                        Err(e) => out.failed.push((coin, e)),
                    }
                }
            }
        }
        Ok(out)
    }
}
