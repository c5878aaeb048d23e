//! Kraken public ticker: price in BTC.
//!
//! Format, per Kraken's REST documentation ("Get Ticker Information",
//! <https://docs.kraken.com/api/docs/rest-api/get-ticker-information>; "API symbols and
//! tickers" and "API error messages" in Kraken's support centre):
//! - `GET /0/public/Ticker?pair=LTCXBT,XDGXBT` →
//!   `{"error":[],"result":{"XLTCXXBT":{"a":[…],"b":[…],"c":["0.00123","1.5"],…},…}}`; `c` is
//!   the last trade `[price, lot volume]`, prices are strings;
//! - Kraken has its own asset codes: `XBT` for BTC, `XDG` for DOGE; result keys may use the
//!   long forms with `X` (crypto) / `Z` (fiat) prefixes (`XLTCXXBT`, `XXDGXXBT`) whatever form
//!   the request used;
//! - errors come in the envelope, often with HTTP 200: `{"error":["EQuery:Unknown asset
//!   pair"],"result":{}}` (one unknown pair fails the whole request), `EAPI:Rate limit
//!   exceeded`, `EGeneral:Too many requests`, `EService:Unavailable`; entries starting with `W`
//!   are warnings.
//!
//! A coin is priced from `{COIN}XBT`; when Kraken lists only `XBT{COIN}` the price is inverted.

use std::collections::BTreeMap;

use defpool_core::Ticker;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::error::SourceError;
use crate::http::{system_clock, Clock, HttpClient, HttpOptions, Reply};
use crate::num::{btc_price, JsonDecimal};
use crate::{is_per_coin, network_builders, unique, Fetched, MarketSnapshot, MarketSource};

/// Kraken's public REST base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.kraken.com";

/// Prices in BTC from Kraken's public ticker.
#[derive(Clone)]
pub struct KrakenSource {
    name: String,
    base_url: String,
    http: HttpClient,
    clock: Clock,
    assets: BTreeMap<Ticker, String>,
}

impl std::fmt::Debug for KrakenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KrakenSource")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("assets", &self.assets)
            .finish_non_exhaustive()
    }
}

impl Default for KrakenSource {
    fn default() -> Self {
        KrakenSource::new()
    }
}

network_builders!(KrakenSource);

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    error: Vec<String>,
    #[serde(default)]
    result: Option<BTreeMap<String, TickerInfo>>,
}

#[derive(Deserialize)]
struct TickerInfo {
    /// Last trade closed: `[price, lot volume]`.
    c: Vec<JsonDecimal>,
}

/// Which way a Kraken pair quotes a coin against BTC.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    /// `{COIN}XBT`: the price is in BTC.
    Direct,
    /// `XBT{COIN}`: the price is coins per BTC.
    Inverse,
}

impl KrakenSource {
    pub fn new() -> KrakenSource {
        let mut assets = BTreeMap::new();
        for (coin, code) in [("BTC", "XBT"), ("DOGE", "XDG")] {
            if let Ok(t) = coin.parse::<Ticker>() {
                assets.insert(t, code.to_string());
            }
        }
        KrakenSource {
            name: "kraken".into(),
            base_url: DEFAULT_BASE_URL.into(),
            http: HttpClient::new(HttpOptions::default()),
            clock: system_clock(),
            assets,
        }
    }

    /// Kraken's asset code for `coin` (built in: BTC → XBT, DOGE → XDG).
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

    /// The pair name to ask for.
    fn pair(&self, coin: &Ticker, side: Side) -> String {
        match side {
            Side::Direct => format!("{}XBT", self.asset(coin)),
            Side::Inverse => format!("XBT{}", self.asset(coin)),
        }
    }

    /// Every spelling a result key for this pair may take: altname (`LTCXBT`) or the long
    /// form with `X`/`Z` prefixes (`XLTCXXBT`, `XXBTZUSD`).
    fn result_keys(&self, coin: &Ticker, side: Side) -> Vec<String> {
        let a = self.asset(coin);
        let bases = [a.to_string(), format!("X{a}"), format!("Z{a}")];
        let btcs = ["XBT", "XXBT"];
        let mut keys = Vec::new();
        for base in &bases {
            for btc in btcs {
                keys.push(match side {
                    Side::Direct => format!("{base}{btc}"),
                    Side::Inverse => format!("{btc}{base}"),
                });
            }
        }
        keys
    }

    fn ticker(&self, pairs: &[String]) -> Result<BTreeMap<String, TickerInfo>, SourceError> {
        let url = format!("{}/0/public/Ticker", self.base_url);
        let list = pairs.join(",");
        self.http.execute(
            &self.name,
            |agent| agent.get(&url).query("pair", &list).call(),
            |reply| self.interpret(reply, &list),
        )
    }

    fn interpret(
        &self,
        reply: Reply,
        pairs: &str,
    ) -> Result<BTreeMap<String, TickerInfo>, SourceError> {
        let parsed = serde_json::from_slice::<Envelope>(&reply.body);
        if reply.status != 200 {
            // Kraken sometimes answers errors with a 4xx and its envelope; 5xx (and
            // Cloudflare's 52x) are server trouble.
            return match parsed {
                Ok(env) if reply.status < 500 && first_error(&env.error).is_some() => {
                    Err(self.envelope_error(&env.error, pairs, &reply))
                }
                _ => Err(reply.status_error(&self.name)),
            };
        }
        let env = parsed.map_err(|e| SourceError::malformed(&self.name, e.to_string()))?;
        if first_error(&env.error).is_some() {
            return Err(self.envelope_error(&env.error, pairs, &reply));
        }
        env.result
            .ok_or_else(|| SourceError::malformed(&self.name, "no `result` and no error"))
    }

    fn envelope_error(&self, errors: &[String], pairs: &str, reply: &Reply) -> SourceError {
        let e = first_error(errors).unwrap_or_default();
        let (code, message) = e.split_once(':').unwrap_or((e, ""));
        match (code, message) {
            ("EQuery", "Unknown asset pair") => SourceError::unknown(&self.name, pairs),
            ("EAPI", "Rate limit exceeded") | ("EGeneral", "Too many requests") => {
                SourceError::RateLimited {
                    origin: self.name.clone(),
                    retry_after: reply.retry_after,
                }
            }
            _ => SourceError::api(&self.name, code, message),
        }
    }

    fn price_in(
        &self,
        result: &BTreeMap<String, TickerInfo>,
        coin: &Ticker,
    ) -> Option<Result<Decimal, SourceError>> {
        for side in [Side::Direct, Side::Inverse] {
            for key in self.result_keys(coin, side) {
                if let Some(info) = result.get(&key) {
                    let price = match info.c.first() {
                        Some(p) => p.0,
                        None => {
                            return Some(Err(SourceError::missing(
                                &self.name,
                                coin.as_str(),
                                format!("{key} has no last trade"),
                            )))
                        }
                    };
                    return Some(
                        btc_price(price, side == Side::Inverse)
                            .map_err(|e| SourceError::malformed(&self.name, e)),
                    );
                }
            }
        }
        None
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

    /// One coin on its own: `{COIN}XBT`, then `XBT{COIN}`.
    fn single(&self, coin: &Ticker) -> Result<Decimal, SourceError> {
        let mut tried = Vec::new();
        for side in [Side::Direct, Side::Inverse] {
            let pair = self.pair(coin, side);
            match self.ticker(std::slice::from_ref(&pair)) {
                Ok(result) => {
                    return self.price_in(&result, coin).unwrap_or_else(|| {
                        Err(SourceError::missing(
                            &self.name,
                            coin.as_str(),
                            format!("{pair} absent from the answer"),
                        ))
                    })
                }
                Err(SourceError::UnknownSymbol { .. }) => tried.push(pair),
                Err(e) => return Err(e),
            }
        }
        Err(SourceError::unknown(&self.name, tried.join(" nor ")))
    }
}

/// The first error entry (`E…`); warnings (`W…`) are not failures.
fn first_error(errors: &[String]) -> Option<&str> {
    errors
        .iter()
        .map(String::as_str)
        .find(|e| !e.starts_with('W'))
}

impl MarketSource for KrakenSource {
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
        if wanted.is_empty() {
            return Ok(out);
        }
        if wanted.len() > 1 {
            let pairs: Vec<String> = wanted.iter().map(|c| self.pair(c, Side::Direct)).collect();
            match self.ticker(&pairs) {
                Ok(result) => {
                    for coin in &wanted {
                        match self.price_in(&result, coin) {
                            Some(Ok(p)) => out.snapshots.push(self.snapshot(coin, p, now)),
                            Some(Err(e)) => out.failed.push((coin.clone(), e)),
                            None => out.failed.push((
                                coin.clone(),
                                SourceError::missing(
                                    &self.name,
                                    coin.as_str(),
                                    format!(
                                        "{} absent from the answer",
                                        self.pair(coin, Side::Direct)
                                    ),
                                ),
                            )),
                        }
                    }
                    return Ok(out);
                }
                // One unknown pair fails the batch: find it coin by coin.
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
