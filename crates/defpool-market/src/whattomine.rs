//! An aggregator feed in WhatToMine's `coins.json` format: difficulty, block reward, height and
//! price in BTC per coin.
//!
//! Format (WhatToMine's public JSON, <https://whattomine.com/coins.json>; see also
//! <https://whattomine.com/api-docs> for the token-authenticated v1 API, not used here):
//! `{"coins":{"Litecoin":{"id":4,"tag":"LTC","algorithm":"Scrypt","block_time":"150.0",
//! "block_reward":6.25,"block_reward24":…,"last_block":2801234,"difficulty":…,
//! "difficulty24":…,"nethash":…,"exchange_rate":0.00123,"exchange_rate24":…,
//! "exchange_rate_vol":…,"exchange_rate_curr":"BTC","market_cap":"$…",
//! "estimated_rewards":"…","btc_revenue":"…","profitability":100,"lagging":false,
//! "timestamp":1700000000},…}}`.
//! `block_reward` is in whole coins (JSON number), `difficulty` a JSON number in the
//! `getdifficulty` convention, `exchange_rate` the price in `exchange_rate_curr`, `timestamp`
//! Unix seconds of WhatToMine's last update of the coin. Entries are keyed by display name;
//! coins are matched by `tag` (and by algorithm when several entries share a tag).

use std::collections::BTreeMap;

use defpool_core::{CoinRegistry, CoinSpec, Ticker};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::SourceError;
use crate::http::{system_clock, Clock, HttpClient, HttpOptions, Reply};
use crate::num::{coins_to_units, JsonDecimal};
use crate::{network_builders, unique, Fetched, MarketSnapshot, MarketSource};

/// WhatToMine's base URL.
pub const DEFAULT_BASE_URL: &str = "https://whattomine.com";

/// How far ahead of our clock a provider timestamp may be before it is not believed.
const CLOCK_SKEW_MS: u64 = 60_000;

/// Difficulty, reward, height and price from a WhatToMine-format `coins.json`.
#[derive(Clone)]
pub struct WhatToMineSource {
    name: String,
    base_url: String,
    path: String,
    http: HttpClient,
    clock: Clock,
    registry: CoinRegistry,
}

impl std::fmt::Debug for WhatToMineSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatToMineSource")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Default for WhatToMineSource {
    fn default() -> Self {
        WhatToMineSource::new()
    }
}

network_builders!(WhatToMineSource);

#[derive(Deserialize)]
struct Document {
    coins: BTreeMap<String, Box<RawValue>>,
}

#[derive(Deserialize)]
struct TagOnly {
    tag: String,
    algorithm: Option<String>,
}

#[derive(Deserialize)]
struct Entry {
    block_reward: Option<JsonDecimal>,
    last_block: Option<JsonDecimal>,
    difficulty: Option<JsonDecimal>,
    exchange_rate: Option<JsonDecimal>,
    exchange_rate_curr: Option<String>,
    timestamp: Option<JsonDecimal>,
}

impl WhatToMineSource {
    /// The public feed, with the built-in coin registry (for decimals and algorithms).
    pub fn new() -> WhatToMineSource {
        WhatToMineSource {
            name: "whattomine".into(),
            base_url: DEFAULT_BASE_URL.into(),
            path: "/coins.json".into(),
            http: HttpClient::new(HttpOptions::default()),
            clock: system_clock(),
            registry: CoinRegistry::builtin(),
        }
    }

    /// The registry giving each coin's decimals and algorithm (operator additions included).
    pub fn with_registry(mut self, registry: CoinRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Another path for the document (a mirror serving the same format).
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        self
    }

    fn document(&self) -> Result<Document, SourceError> {
        let url = format!("{}{}", self.base_url, self.path);
        self.http.execute(
            &self.name,
            |agent| agent.get(&url).call(),
            |reply| self.interpret(reply),
        )
    }

    fn interpret(&self, reply: Reply) -> Result<Document, SourceError> {
        if reply.status != 200 {
            return Err(reply.status_error(&self.name));
        }
        serde_json::from_slice(&reply.body)
            .map_err(|e| SourceError::malformed(&self.name, e.to_string()))
    }

    fn snapshot(
        &self,
        doc: &Document,
        coin: &Ticker,
        now: u64,
    ) -> Result<MarketSnapshot, SourceError> {
        let spec = self.registry.get(coin).ok_or_else(|| {
            SourceError::unknown(&self.name, format!("{coin} (not in the coin registry)"))
        })?;
        let candidates: Vec<(&str, TagOnly)> = doc
            .coins
            .iter()
            .filter_map(|(name, raw)| {
                let t: TagOnly = serde_json::from_str(raw.get()).ok()?;
                t.tag
                    .eq_ignore_ascii_case(coin.as_str())
                    .then_some((name.as_str(), t))
            })
            .collect();
        let chosen = match candidates.as_slice() {
            [] => None,
            [(name, only)] if algorithm_matches(only.algorithm.as_deref(), spec) => Some(*name),
            [_] => None,
            many => many
                .iter()
                .find(|(_, t)| algorithm_matches(t.algorithm.as_deref(), spec))
                .map(|(name, _)| *name),
        };
        let name = chosen.ok_or_else(|| SourceError::unknown(&self.name, coin.as_str()))?;
        let raw = &doc.coins[name];
        let entry: Entry = serde_json::from_str(raw.get())
            .map_err(|e| SourceError::malformed(&self.name, format!("{name}: {e}")))?;

        let block_reward = match entry.block_reward {
            None => None,
            Some(r) => Some(coins_to_units(r.0, spec.decimals).ok_or_else(|| {
                SourceError::malformed(&self.name, format!("{name}: block_reward {}", r.0))
            })?),
        };
        let price_btc = if coin.as_str() == "BTC" {
            Some(Decimal::ONE)
        } else {
            match (entry.exchange_rate, entry.exchange_rate_curr.as_deref()) {
                (Some(rate), Some(curr)) if curr.eq_ignore_ascii_case("BTC") => {
                    (rate.0 > Decimal::ZERO).then(|| rate.0.normalize())
                }
                _ => None,
            }
        };
        let difficulty = entry.difficulty.map(|d| d.0).filter(|d| *d > Decimal::ZERO);
        let height = entry
            .last_block
            .and_then(|h| h.0.is_integer().then(|| h.0.to_u64()).flatten());
        // WhatToMine's own update time is the honest observation time (a lagging coin shows
        // as old data); a missing or future one falls back to our clock.
        let observed_at_ms = entry
            .timestamp
            .and_then(|t| t.0.checked_mul(Decimal::ONE_THOUSAND))
            .and_then(|ms| ms.trunc().to_u64())
            .filter(|ms| *ms > 0 && *ms <= now.saturating_add(CLOCK_SKEW_MS))
            .unwrap_or(now);
        Ok(MarketSnapshot {
            coin: coin.clone(),
            price_btc,
            difficulty,
            block_reward,
            height,
            observed_at_ms,
            source: self.name.clone(),
        })
    }
}

/// WhatToMine's algorithm names (`SHA-256`, `Scrypt`) against ours (`sha256d`, `scrypt`).
fn algorithm_matches(theirs: Option<&str>, spec: &CoinSpec) -> bool {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let ours = norm(spec.algorithm.as_str());
    match theirs {
        None => true,
        Some(t) => {
            let t = norm(t);
            t == ours || format!("{t}d") == ours
        }
    }
}

impl MarketSource for WhatToMineSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch_detailed(&self, coins: &[Ticker]) -> Result<Fetched, SourceError> {
        let coins = unique(coins);
        if coins.is_empty() {
            return Ok(Fetched::default());
        }
        let now = (self.clock)();
        let doc = self.document()?;
        let mut out = Fetched::default();
        for coin in coins {
            match self.snapshot(&doc, &coin, now) {
                Ok(s) => out.snapshots.push(s),
                Err(e) => out.failed.push((coin, e)),
            }
        }
        Ok(out)
    }
}
