//! A coin daemon's JSON-RPC (Bitcoin Core and its forks: Litecoin Core, Bitcoin Cash Node,
//! Dogecoin Core, …): network difficulty, height and block reward.
//!
//! Format, per Bitcoin Core's RPC reference (<https://developer.bitcoin.org/reference/rpc/>:
//! `getmininginfo`, `getblocktemplate`, `getblockchaininfo`) and its JSON-RPC 1.0 transport:
//! - request: `POST /` with HTTP basic auth and
//!   `{"jsonrpc":"1.0","id":N,"method":"getmininginfo","params":[]}`;
//! - answer: `{"result":…,"error":null,"id":N}`; on failure `{"result":null,"error":{"code":-10,
//!   "message":"…"},"id":N}`, sent with HTTP 500 (404 for an unknown method, `-32601`);
//!   a wrong password gets HTTP 401 with an empty body;
//! - `getmininginfo` → `{"blocks":…,"difficulty":…,…}`; `getblockchaininfo` → `{"blocks":…,
//!   "difficulty":…,"initialblockdownload":…,…}`;
//! - `getblocktemplate` with `[{"rules":[…]}]` (Bitcoin and Litecoin refuse a request without
//!   the rules they enforce: `["segwit"]`, `["mweb","segwit"]`; the coin's `gbt_rules` in the
//!   registry) → `{"height":…,"coinbasevalue":…,…}`, where `coinbasevalue` is subsidy plus the
//!   template's fees in smallest units.
//!
//! The snapshot's `height` is the chain tip (`blocks`); `block_reward` is the template's
//! `coinbasevalue`. A daemon without `getmininginfo` is asked `getblockchaininfo`; one without
//! `getblocktemplate` gives the subsidy at the next height from the coin's schedule (no fees).
//! A daemon still syncing is an error (its difficulty is history, not the network's).

use std::sync::atomic::{AtomicU64, Ordering};

use defpool_core::coin::Subsidy;
use defpool_core::secret::{redact_userinfo, Secret};
use defpool_core::{CoinRegistry, Network, Ticker};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::SourceError;
use crate::http::{base64, system_clock, Clock, HttpClient, HttpOptions, Reply};
use crate::num::JsonDecimal;
use crate::{Fetched, MarketSnapshot, MarketSource};

/// JSON-RPC: method not found.
const METHOD_NOT_FOUND: i64 = -32601;
/// Bitcoin Core: still downloading the initial chain.
const IN_INITIAL_DOWNLOAD: i64 = -10;

/// Difficulty, height and block reward of one coin from its daemon.
pub struct DaemonSource {
    name: String,
    coin: Ticker,
    url: String,
    user: String,
    password: Secret,
    gbt_rules: Vec<String>,
    subsidy: Option<Subsidy>,
    http: HttpClient,
    clock: Clock,
    next_id: AtomicU64,
}

impl std::fmt::Debug for DaemonSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonSource")
            .field("name", &self.name)
            .field("coin", &self.coin)
            .field("url", &redact_userinfo(&self.url))
            .field("user", &self.user)
            .field("password", &self.password)
            .field("gbt_rules", &self.gbt_rules)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope {
    result: Option<Box<RawValue>>,
    error: Option<RpcError>,
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RpcError {
    code: i64,
    message: String,
}

#[derive(Deserialize)]
struct MiningInfo {
    blocks: u64,
    difficulty: JsonDecimal,
}

#[derive(Deserialize)]
struct ChainInfo {
    blocks: u64,
    difficulty: JsonDecimal,
    #[serde(default)]
    initialblockdownload: bool,
}

#[derive(Deserialize)]
struct Template {
    coinbasevalue: u64,
}

impl DaemonSource {
    /// The daemon of `coin` at `url` (`http://127.0.0.1:9332/`), on `network`, logging in as
    /// `user`. The getblocktemplate rules and the subsidy schedule come from `registry`. The URL
    /// must not carry credentials: pass them here, where they stay out of errors and `Debug`.
    pub fn new(
        registry: &CoinRegistry,
        coin: &Ticker,
        network: Network,
        url: impl Into<String>,
        user: impl Into<String>,
        password: Secret,
    ) -> Result<DaemonSource, SourceError> {
        let name = format!("daemon:{coin}");
        let spec = registry.get(coin).ok_or_else(|| {
            SourceError::unknown(&name, format!("{coin} (not in the coin registry)"))
        })?;
        Ok(DaemonSource {
            coin: coin.clone(),
            url: url.into(),
            user: user.into(),
            password,
            gbt_rules: spec.gbt_rules.clone(),
            subsidy: spec.network(network).map(|n| n.subsidy.clone()),
            http: HttpClient::new(HttpOptions::default()),
            clock: system_clock(),
            next_id: AtomicU64::new(1),
            name,
        })
    }

    /// Timeout, retries and body size limit.
    pub fn with_http(mut self, options: HttpOptions) -> Self {
        self.http = HttpClient::new(options);
        self
    }

    /// The clock stamping `observed_at_ms`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The coin this daemon serves.
    pub fn coin(&self) -> &Ticker {
        &self.coin
    }

    /// One JSON-RPC call.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<T, SourceError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "jsonrpc": "1.0",
            "id": id,
            "method": method,
            "params": params,
        })
        .to_string();
        let auth = format!(
            "Basic {}",
            base64(format!("{}:{}", self.user, self.password.expose()).as_bytes())
        );
        self.http.execute(
            &self.name,
            |agent| {
                agent
                    .post(&self.url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes())
            },
            |reply| self.interpret(reply, method, id),
        )
    }

    fn interpret<T: DeserializeOwned>(
        &self,
        reply: Reply,
        method: &str,
        id: u64,
    ) -> Result<T, SourceError> {
        let env = match serde_json::from_slice::<Envelope>(&reply.body) {
            Ok(env) => env,
            Err(_) if reply.status != 200 => return Err(reply.status_error(&self.name)),
            Err(e) => return Err(SourceError::malformed(&self.name, format!("{method}: {e}"))),
        };
        if let Some(e) = env.error {
            return Err(SourceError::Rpc {
                origin: self.name.clone(),
                code: e.code,
                message: e.message,
            });
        }
        if reply.status != 200 {
            return Err(reply.status_error(&self.name));
        }
        if env.id.as_ref().and_then(serde_json::Value::as_u64) != Some(id) {
            return Err(SourceError::malformed(
                &self.name,
                format!("{method}: answer id does not match request id {id}"),
            ));
        }
        let result = env
            .result
            .ok_or_else(|| SourceError::malformed(&self.name, format!("{method}: null result")))?;
        serde_json::from_str(result.get())
            .map_err(|e| SourceError::malformed(&self.name, format!("{method}: {e}")))
    }

    /// Tip height and difficulty: `getmininginfo`, or `getblockchaininfo` on a daemon without it.
    fn tip(&self) -> Result<(u64, Decimal), SourceError> {
        match self.call::<MiningInfo>("getmininginfo", serde_json::json!([])) {
            Ok(info) => Ok((info.blocks, info.difficulty.0)),
            Err(SourceError::Rpc {
                code: METHOD_NOT_FOUND,
                ..
            }) => {
                let info: ChainInfo = self.call("getblockchaininfo", serde_json::json!([]))?;
                if info.initialblockdownload {
                    return Err(SourceError::Rpc {
                        origin: self.name.clone(),
                        code: IN_INITIAL_DOWNLOAD,
                        message: "initial block download in progress".into(),
                    });
                }
                Ok((info.blocks, info.difficulty.0))
            }
            Err(e) => Err(e),
        }
    }

    /// The reward of the next block: the template's coinbase value, or the scheduled subsidy on
    /// a daemon without `getblocktemplate`.
    fn reward(&self, tip: u64) -> Result<Option<u64>, SourceError> {
        let params = serde_json::json!([{ "rules": self.gbt_rules }]);
        match self.call::<Template>("getblocktemplate", params) {
            Ok(t) => Ok(Some(t.coinbasevalue)),
            Err(SourceError::Rpc {
                code: METHOD_NOT_FOUND,
                ..
            }) => Ok(self.subsidy.as_ref().map(|s| s.at(tip.saturating_add(1)))),
            Err(e) => Err(e),
        }
    }
}

impl MarketSource for DaemonSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch_detailed(&self, coins: &[Ticker]) -> Result<Fetched, SourceError> {
        if !coins.contains(&self.coin) {
            return Ok(Fetched::default());
        }
        let (height, difficulty) = self.tip()?;
        let block_reward = self.reward(height)?;
        Ok(Fetched {
            snapshots: vec![MarketSnapshot {
                coin: self.coin.clone(),
                price_btc: None,
                difficulty: (difficulty > Decimal::ZERO).then_some(difficulty),
                block_reward,
                height: Some(height),
                observed_at_ms: (self.clock)(),
                source: self.name.clone(),
            }],
            failed: Vec::new(),
        })
    }
}
