//! Public read endpoints: pool status, coins, blocks, users and their workers, decisions,
//! assignments.
//!
//! **Estimated earnings** ("work × market data at the time"): a user's work is read per hour
//! and coin; each hour's work is valued with the market point of its coin in force at the end of
//! that hour: the latest engine decision recorded at or before it whose inputs carry the coin's
//! difficulty, block reward and BTC price (the decision loop records its inputs with every
//! decision); for hours older than every recorded decision, the oldest point after them; when no
//! decision carries the coin at all, the current market view. Work with no market point at all
//! is reported as `unpriced_work`. Estimates are decimals and never touch the ledger.
//! **Realised** earnings are the sums of the user's ledger entries per coin (credits of matured
//! blocks and pool payouts, minus reversals).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use defpool_accounting::estimate::{estimate, MarketPoint};
use defpool_control::Assignment;
use defpool_core::Ticker;
use defpool_store::{Bucket, WorkerInfo, WorkerWork};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Api, ApiError, St};
use crate::stats::{self, ONLINE_WINDOW_MS};

type ApiResult = Result<Json<Value>, ApiError>;

/// `limit` query parameter: default and maximum per endpoint.
fn limit(asked: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match asked {
        None => Ok(default),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) if n > max => Err(ApiError::bad_request(format!(
            "limit {n} is above the maximum {max}"
        ))),
        Some(n) => Ok(n),
    }
}

pub async fn status(State(api): St) -> ApiResult {
    let shared = &api.shared;
    let now = shared.now_ms();
    let assignments = shared.store.assignments().await?;
    let hashrate = stats::pool_hashrate(shared, now).await?;
    let (users, workers, active) = shared
        .store
        .pool_counts(now.saturating_sub(ONLINE_WINDOW_MS))
        .await?;
    let decisions = shared.store.recent_decisions(10).await?;
    let market = shared.market.borrow().clone();
    Ok(Json(json!({
        "at_ms": now,
        "groups": assignments.iter().map(group_view).collect::<Vec<_>>(),
        "hashrate": hashrate.iter().map(|(alg, hs)| json!({
            "algorithm": alg, "hashrate_hs": hs, "window_secs": stats::HASHRATE_WINDOW_MS / 1000,
        })).collect::<Vec<_>>(),
        "counts": {"miners": active, "workers": workers, "users": users},
        "profitability": market,
        "decisions": decisions,
    })))
}

/// The current coin of one assignment, without its upstreams (and so without credentials).
fn group_view(a: &Assignment) -> Value {
    json!({
        "group": a.group,
        "algorithm": a.algorithm,
        "coin": a.primary_coin(),
        "targets": a.targets,
        "epoch": a.epoch,
        "since_ms": a.issued_at_ms,
        "reason": a.reason,
    })
}

pub async fn coins(State(api): St) -> ApiResult {
    let whitelist: HashMap<Ticker, bool> = api
        .shared
        .store
        .coins()
        .await?
        .into_iter()
        .map(|c| (c.ticker, c.enabled))
        .collect();
    let market = api.shared.market.borrow().clone();
    let coins: Vec<Value> = api
        .shared
        .config
        .registry
        .iter()
        .map(|spec| {
            json!({
                "ticker": spec.ticker,
                "name": spec.name,
                "algorithm": spec.algorithm,
                "decimals": spec.decimals,
                "block_time_secs": spec.block_time_secs,
                "merge_mined_on": spec.merged_mining.as_ref().map(|m| &m.parent),
                "whitelisted": whitelist.contains_key(&spec.ticker),
                "enabled": whitelist.get(&spec.ticker).copied().unwrap_or(false),
                "market": market.rows.iter().find(|r| r.coin == spec.ticker),
            })
        })
        .collect();
    Ok(Json(
        json!({ "coins": coins, "market_updated_ms": market.updated_ms }),
    ))
}

/// A registry coin from a path or query parameter.
pub(crate) fn registry_coin(api: &Api, text: &str) -> Result<Ticker, ApiError> {
    let ticker: Ticker = text
        .to_string()
        .try_into()
        .map_err(|_| ApiError::unknown_coin(text))?;
    match api.shared.config.registry.get(&ticker) {
        Some(_) => Ok(ticker),
        None => Err(ApiError::unknown_coin(text)),
    }
}

#[derive(Deserialize)]
pub struct BlocksQuery {
    coin: Option<String>,
    limit: Option<u32>,
}

pub async fn blocks(State(api): St, q: Result<Query<BlocksQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    let coin = q
        .coin
        .as_deref()
        .map(|c| registry_coin(&api, c))
        .transpose()?;
    let n = limit(q.limit, 50, 1000)?;
    let blocks = api.shared.store.blocks(coin.as_ref(), n).await?;
    Ok(Json(json!({ "blocks": blocks })))
}

pub async fn block(State(api): St, hash: Result<Path<String>, PathRejection>) -> ApiResult {
    let Path(hash) = hash?;
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "a block hash is 64 hexadecimal characters",
        ));
    }
    let hash = hash.to_ascii_lowercase();
    let Some(block) = api.shared.store.block(&hash).await? else {
        return Err(ApiError::not_found(format!("no block {hash}")));
    };
    let history = api.shared.store.block_history(&hash).await?;
    Ok(Json(json!({ "block": block, "history": history })))
}

/// The store's user key for `/api/users/{address}`: a BTC payout address of the configured
/// network (in its canonical text, as the proxies register it) or an account name.
fn user_key(api: &Api, text: &str) -> Result<String, ApiError> {
    let invalid = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid-address", why);
    let network = api.shared.config.config.network;
    // Account names are short (the proxy's rule); anything longer must be an address.
    let account_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !text.is_empty() && account_chars && !looks_like_address(text) {
        return Ok(text.to_string());
    }
    let registry = &api.shared.config.registry;
    let btc = registry
        .by_ticker("BTC")
        .ok_or_else(|| invalid("the registry has no BTC".into()))?;
    defpool_core::address::parse_payout_address_in(registry, text, btc, network)
        .map(|a| a.text)
        .map_err(|e| invalid(format!("`{text}` is not a BTC address on {network:?}: {e}")))
}

/// Anything of 25 characters or more is an address (the proxy's rule: account names have at
/// most 24), and so is a shorter string with a segwit prefix (a truncated address is an invalid
/// address, not an unknown account).
fn looks_like_address(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["bc1", "tb1", "bcrt1"].iter().any(|p| lower.starts_with(p)) || text.len() >= 25
}

#[derive(Deserialize)]
pub struct UserQuery {
    bucket: Option<Bucket>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
}

/// Chart points a request may ask for at most.
const MAX_POINTS: u64 = 5000;

pub async fn user(
    State(api): St,
    address: Result<Path<String>, PathRejection>,
    q: Result<Query<UserQuery>, QueryRejection>,
) -> ApiResult {
    let Path(address) = address?;
    let Query(q) = q?;
    let key = user_key(&api, &address)?;
    let shared = &api.shared;
    let Some(user) = shared.store.user(&key).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-user",
            format!("no user `{key}` has mined here"),
        ));
    };
    let now = shared.now_ms();
    let bucket = q.bucket.unwrap_or(Bucket::Hour);
    let default_span = match bucket {
        Bucket::Minute => 3 * 3_600_000,
        Bucket::Hour => 48 * 3_600_000,
        Bucket::Day => 90 * 86_400_000,
    };
    let to = q.to_ms.unwrap_or(now + 1);
    let from = q.from_ms.unwrap_or(to.saturating_sub(default_span));
    if from >= to {
        return Err(ApiError::bad_request("from_ms must be before to_ms"));
    }
    if (to - from) / bucket.millis() > MAX_POINTS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_POINTS} buckets per request: widen the bucket or narrow the range"
        )));
    }
    let series = shared
        .store
        .hashrate_series(&key, None, bucket, from, to)
        .await?;
    let bucket_secs = (bucket.millis() / 1000) as f64;
    let points: Vec<Value> = series
        .iter()
        .map(|p| {
            json!({
                "bucket_ms": p.bucket_ms,
                "coin": p.coin,
                "work": p.work.to_string(),
                "hashrate_hs": p.work as f64 / bucket_secs,
                "shares": p.shares,
                "rejected_shares": p.rejected_shares,
                "stale_shares": p.stale_shares,
            })
        })
        .collect();
    let workers = worker_rows(&api, &key, now).await?;
    let balances = shared.store.balances(&format!("user:{key}")).await?;
    let earnings = earnings(&api, &key, user.first_seen_ms, now).await?;
    Ok(Json(json!({
        "user": user.user,
        "payout_address": user.payout_address,
        "first_seen_ms": user.first_seen_ms,
        "last_seen_ms": user.last_seen_ms,
        "hashrate": {"bucket": bucket, "from_ms": from, "to_ms": to, "points": points},
        "workers": workers,
        "balances": balances,
        "earnings": earnings,
    })))
}

pub async fn user_workers(
    State(api): St,
    address: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(address) = address?;
    let key = user_key(&api, &address)?;
    if api.shared.store.user(&key).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-user",
            format!("no user `{key}` has mined here"),
        ));
    }
    let now = api.shared.now_ms();
    Ok(Json(
        json!({ "user": key, "workers": worker_rows(&api, &key, now).await? }),
    ))
}

/// Each worker: lifetime counters, and over the last [`ONLINE_WINDOW_MS`] its hashrate, reject
/// and stale percentages; online when it had a share in that window.
async fn worker_rows(api: &Api, user: &str, now: u64) -> Result<Vec<Value>, ApiError> {
    let since = now.saturating_sub(ONLINE_WINDOW_MS);
    let infos = api.shared.store.workers(user).await?;
    let recent: HashMap<String, WorkerWork> = api
        .shared
        .store
        .worker_work(user, since, now + 1)
        .await?
        .into_iter()
        .map(|w| (w.worker.clone(), w))
        .collect();
    Ok(infos
        .iter()
        .map(|w| worker_view(w, recent.get(&w.worker), since))
        .collect())
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

fn worker_view(w: &WorkerInfo, recent: Option<&WorkerWork>, since: u64) -> Value {
    let (work, shares, rejected, stale) = recent
        .map(|r| (r.work, r.shares, r.rejected_shares, r.stale_shares))
        .unwrap_or_default();
    let window_total = shares + rejected;
    json!({
        "worker": w.worker,
        "online": w.last_share_ms.is_some_and(|t| t >= since),
        "last_share_ms": w.last_share_ms,
        "first_seen_ms": w.first_seen_ms,
        "last_seen_ms": w.last_seen_ms,
        "hashrate_hs": work as f64 / (ONLINE_WINDOW_MS / 1000) as f64,
        "reject_pct": percent(rejected, window_total),
        "stale_pct": percent(stale, window_total),
        "window": {"secs": ONLINE_WINDOW_MS / 1000, "work": work.to_string(), "shares": shares,
                   "rejected_shares": rejected, "stale_shares": stale},
        "accepted_shares": w.accepted_shares,
        "late_shares": w.late_shares,
        "rejected_shares": w.rejected_shares,
        "rejected_by_reason": w.rejected_by_reason,
    })
}

/// Realised (ledger) beside estimated (work × market data at the time), per coin.
async fn earnings(api: &Api, user: &str, first_seen_ms: u64, now: u64) -> Result<Value, ApiError> {
    let shared = &api.shared;
    let mut realised: BTreeMap<Ticker, i64> = BTreeMap::new();
    for e in shared
        .store
        .account_entries(&format!("user:{user}"), 100_000)
        .await?
    {
        *realised.entry(e.coin).or_insert(0) += e.amount;
    }
    // All the user's work (work may predate the first user record a proxy sent).
    let _ = first_seen_ms;
    let hours = shared
        .store
        .hashrate_series(user, None, Bucket::Hour, 0, now + 1)
        .await?;
    let history = api.history.get(api).await?;
    #[derive(Default)]
    struct Est {
        work: u128,
        unpriced: u128,
        units: Decimal,
        btc: Decimal,
    }
    let mut est: BTreeMap<Ticker, Est> = BTreeMap::new();
    for h in &hours {
        let slot = est.entry(h.coin.clone()).or_default();
        slot.work += h.work;
        let at = h.bucket_ms + Bucket::Hour.millis();
        match history
            .at(&h.coin, at)
            .and_then(|m| estimate(h.work, &m).ok())
        {
            Some(e) => {
                slot.units += e.coin_units;
                slot.btc += e.btc;
            }
            None => slot.unpriced += h.work,
        }
    }
    let coins: std::collections::BTreeSet<&Ticker> = realised.keys().chain(est.keys()).collect();
    let mut total_btc = Decimal::ZERO;
    let rows: Vec<Value> = coins
        .into_iter()
        .map(|c| {
            let e = est.get(c);
            if let Some(e) = e {
                total_btc += e.btc;
            }
            json!({
                "coin": c,
                "realised_units": realised.get(c).copied().unwrap_or(0),
                "estimated_units": e.map(|e| e.units.round_dp(0).to_string()).unwrap_or_else(|| "0".into()),
                "estimated_btc": e.map(|e| e.btc.round_dp(8).to_string()).unwrap_or_else(|| "0".into()),
                "work": e.map(|e| e.work).unwrap_or(0).to_string(),
                "unpriced_work": e.map(|e| e.unpriced).unwrap_or(0).to_string(),
            })
        })
        .collect();
    Ok(json!({
        "per_coin": rows,
        "estimated_btc": total_btc.round_dp(8).to_string(),
        "method": "each hour's work on a coin × the market point (difficulty, reward, price) of the latest decision at or before the end of that hour",
    }))
}

pub async fn decisions(State(api): St, q: Result<Query<LimitQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    let n = limit(q.limit, 20, 1000)?;
    Ok(Json(
        json!({ "decisions": api.shared.store.recent_decisions(n).await? }),
    ))
}

#[derive(Deserialize)]
pub struct LimitQuery {
    pub limit: Option<u32>,
}

pub(crate) fn query_limit(asked: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    limit(asked, default, max)
}

pub async fn assignments(State(api): St) -> ApiResult {
    let a = api.shared.store.assignments().await?;
    Ok(Json(
        json!({ "assignments": a.iter().map(redacted).collect::<Vec<_>>() }),
    ))
}

/// An assignment for display: upstream passwords (which the control wire carries in clear)
/// never leave the server through the API.
pub(crate) fn redacted(a: &Assignment) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    for list in ["upstreams", "standby"] {
        if let Some(ups) = v.get_mut(list).and_then(|u| u.as_array_mut()) {
            for u in ups {
                if let Some(p) = u.get_mut("password") {
                    *p = json!("<redacted>");
                }
            }
        }
    }
    v
}

// ---- market data at the time ----

/// Market points per coin over time, from the decisions' recorded inputs and the current view.
#[derive(Default)]
pub struct MarketHistory {
    points: HashMap<Ticker, Vec<(u64, MarketPoint)>>,
}

impl MarketHistory {
    /// The point in force at `at_ms`: the latest at or before it, else the oldest after it.
    pub fn at(&self, coin: &Ticker, at_ms: u64) -> Option<MarketPoint> {
        let points = self.points.get(coin)?;
        let after = points.partition_point(|(t, _)| *t <= at_ms);
        if after > 0 {
            Some(points[after - 1].1)
        } else {
            points.first().map(|p| p.1)
        }
    }

    fn add(&mut self, coin: Ticker, at_ms: u64, point: MarketPoint) {
        self.points.entry(coin).or_default().push((at_ms, point));
    }

    fn sort(&mut self) {
        for v in self.points.values_mut() {
            v.sort_by_key(|(t, _)| *t);
            v.dedup_by_key(|(t, _)| *t);
        }
    }
}

/// Decisions recorded this long ago or less are read again; older history is cached.
const HISTORY_TTL: Duration = Duration::from_secs(10);
/// Decisions read for the history (newest first).
const HISTORY_DECISIONS: u32 = 20_000;

#[derive(Default)]
pub struct MarketHistoryCache {
    cached: Mutex<Option<(Instant, Arc<MarketHistory>)>>,
}

impl MarketHistoryCache {
    async fn get(&self, api: &Api) -> Result<Arc<MarketHistory>, ApiError> {
        if let Some((at, h)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if at.elapsed() < HISTORY_TTL {
                return Ok(h.clone());
            }
        }
        let decisions = api.shared.store.recent_decisions(HISTORY_DECISIONS).await?;
        let registry = &api.shared.config.registry;
        let mut history = MarketHistory::default();
        for d in &decisions {
            collect_points(&d.decision.inputs, d.decision.at_ms, &mut |coin, at, p| {
                if let Some(spec) = registry.get(&coin) {
                    history.add(
                        coin,
                        at,
                        MarketPoint {
                            decimals: spec.decimals,
                            ..p
                        },
                    );
                }
            });
        }
        let view = api.shared.market.borrow().clone();
        if history.points.is_empty() || view.updated_ms > 0 {
            for r in &view.rows {
                let row = serde_json::to_value(r).unwrap_or_default();
                collect_points(&row, view.updated_ms, &mut |coin, at, p| {
                    if let Some(spec) = registry.get(&coin) {
                        history.add(
                            coin,
                            at,
                            MarketPoint {
                                decimals: spec.decimals,
                                ..p
                            },
                        );
                    }
                });
            }
        }
        history.sort();
        let history = Arc::new(history);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), history.clone()));
        Ok(history)
    }
}

/// Finds every object in `v` that carries a coin's market inputs (`coin`, `difficulty`,
/// `block_reward`, `price_btc`, as the profitability rows do), at its `observed_at_ms` or
/// `default_at`.
fn collect_points(v: &Value, default_at: u64, out: &mut dyn FnMut(Ticker, u64, MarketPoint)) {
    match v {
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_points(i, default_at, out)),
        Value::Object(map) => {
            let dec = |k: &str| -> Option<Decimal> {
                match map.get(k)? {
                    Value::String(s) => s.parse().ok(),
                    Value::Number(n) => n.to_string().parse().ok(),
                    _ => None,
                }
            };
            let coin = map
                .get("coin")
                .and_then(|c| c.as_str())
                .and_then(|c| Ticker::try_from(c.to_string()).ok());
            let reward = map.get("block_reward").and_then(|r| match r {
                Value::String(s) => s.parse::<u64>().ok(),
                other => other.as_u64(),
            });
            if let (Some(coin), Some(difficulty), Some(price_btc), Some(block_reward)) =
                (coin, dec("difficulty"), dec("price_btc"), reward)
            {
                let at = map
                    .get("observed_at_ms")
                    .and_then(|t| t.as_u64())
                    .unwrap_or(default_at);
                out(
                    coin,
                    at,
                    MarketPoint {
                        difficulty,
                        block_reward,
                        price_btc,
                        decimals: 8,
                    },
                );
            } else {
                map.values()
                    .for_each(|i| collect_points(i, default_at, out));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn market_points_are_found_in_any_shape_and_picked_by_time() {
        let inputs = json!({"rows": [
            {"coin": "LTC", "difficulty": "100", "price_btc": "0.001", "block_reward": 625000000, "observed_at_ms": 1000},
            {"coin": "DOGE", "difficulty": 5, "price_btc": "0.000001", "block_reward": "1000000000000"},
            {"coin": "BTC", "difficulty": "1"}
        ]});
        let mut h = MarketHistory::default();
        collect_points(&inputs, 7000, &mut |c, at, p| h.add(c, at, p));
        let later = json!([{"coin": "LTC", "difficulty": "200", "price_btc": "0.001", "block_reward": 625000000, "observed_at_ms": 5000}]);
        collect_points(&later, 9000, &mut |c, at, p| h.add(c, at, p));
        h.sort();
        let ltc: Ticker = "LTC".parse().unwrap();
        let doge: Ticker = "DOGE".parse().unwrap();
        let btc: Ticker = "BTC".parse().unwrap();
        // Before every point: the oldest; between: the latest at or before; after: the last.
        assert_eq!(h.at(&ltc, 10).unwrap().difficulty, Decimal::from(100));
        assert_eq!(h.at(&ltc, 4999).unwrap().difficulty, Decimal::from(100));
        assert_eq!(h.at(&ltc, 5000).unwrap().difficulty, Decimal::from(200));
        assert_eq!(h.at(&doge, 7000).unwrap().block_reward, 1_000_000_000_000);
        // Incomplete inputs are no market point.
        assert!(h.at(&btc, 7000).is_none());
    }
}
