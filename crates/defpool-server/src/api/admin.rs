//! Admin endpoints (bearer admin token): whitelist, X/Y/dwell, pins, upstream terms, pool
//! payouts, the audit log and operator assignments. Every change is audited with the actor
//! (`admin@<client ip>`), its time and what changed (the store writes the audit line in the same
//! transaction as the change), and whitelist, switching, pin and upstream changes wake the
//! decision loop.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use defpool_control::Assignment;
use defpool_core::Algorithm;
use defpool_store::{SaveAssignment, UpstreamTerms};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::json_body;
use super::public::{query_limit, registry_coin, LimitQuery};
use super::{client_ip, Api, ApiError, St};
use crate::ledger::{self, LedgerError};
use crate::state::settings::{Pins, SwitchingSettings, PINS, SWITCHING};
use crate::state::{FeedEvent, PoolPayout};

type ApiResult = Result<Json<Value>, ApiError>;

/// Who made an admin request, for the audit log.
#[derive(Clone)]
pub struct Actor(pub String);

/// Refuses requests without the admin bearer token (401 `bad-token`); names the actor.
pub async fn authorized(State(api): St, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !api
        .admin_token
        .as_ref()
        .is_some_and(|t| !t.is_empty() && t.matches(presented))
    {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad-token",
            "missing or wrong bearer token",
        )
        .into_response();
    }
    let actor = Actor(format!("admin@{}", client_ip(&req)));
    req.extensions_mut().insert(actor);
    next.run(req).await
}

fn wake_decisions(api: &Api) {
    api.shared.decide_now.notify_one();
}

// ---- whitelist ----

pub async fn coins(State(api): St) -> ApiResult {
    let coins: Vec<Value> = api
        .shared
        .store
        .coins()
        .await?
        .into_iter()
        .map(|c| {
            let algorithm = api
                .shared
                .config
                .registry
                .get(&c.ticker)
                .map(|s| s.algorithm);
            json!({"ticker": c.ticker, "enabled": c.enabled, "updated_at_ms": c.updated_at_ms,
                   "algorithm": algorithm})
        })
        .collect();
    Ok(Json(json!({ "coins": coins })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoinBody {
    enabled: bool,
}

pub async fn set_coin(
    State(api): St,
    Extension(actor): Extension<Actor>,
    ticker: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Path(ticker) = ticker?;
    let coin = registry_coin(&api, &ticker)?;
    let CoinBody { enabled } = json_body(body)?;
    api.shared.store.set_coin(&actor.0, &coin, enabled).await?;
    wake_decisions(&api);
    tracing::info!(actor = %actor.0, coin = %coin, enabled, "whitelist changed");
    Ok(Json(
        json!({"ticker": coin, "enabled": enabled, "whitelisted": true}),
    ))
}

pub async fn remove_coin(
    State(api): St,
    Extension(actor): Extension<Actor>,
    ticker: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(ticker) = ticker?;
    let coin = registry_coin(&api, &ticker)?;
    let removed = api.shared.store.remove_coin(&actor.0, &coin).await?;
    wake_decisions(&api);
    tracing::info!(actor = %actor.0, coin = %coin, removed, "whitelist: coin removed");
    Ok(Json(json!({"ticker": coin, "removed": removed})))
}

// ---- switching ----

/// The stored X/Y/dwell, else the configuration's.
async fn current_switching(api: &Api) -> Result<SwitchingSettings, ApiError> {
    if let Some(v) = api.shared.store.setting(SWITCHING).await? {
        if let Ok(s) = serde_json::from_value::<SwitchingSettings>(v) {
            return Ok(s);
        }
    }
    let sw = &api.shared.server_config().switching;
    let x = Decimal::from_f64_retain(sw.hysteresis_percent)
        .map(|d| d.normalize().to_string())
        .unwrap_or_else(|| sw.hysteresis_percent.to_string());
    Ok(SwitchingSettings {
        hysteresis_percent: x,
        hysteresis_minutes: sw.hysteresis_minutes,
        min_dwell_minutes: sw.min_dwell_minutes,
    })
}

pub async fn switching(State(api): St) -> ApiResult {
    let s = current_switching(&api).await?;
    Ok(Json(serde_json::to_value(s).unwrap_or_default()))
}

/// X a decimal in 0..=1000, Y ≤ 1440 minutes, dwell ≤ 10080 minutes (a week).
pub fn validate_switching(s: &SwitchingSettings) -> Result<(), String> {
    let x: Decimal = s.hysteresis_percent.trim().parse().map_err(|e| {
        format!(
            "hysteresis_percent `{}` is not a decimal: {e}",
            s.hysteresis_percent
        )
    })?;
    if x < Decimal::ZERO || x > Decimal::from(1000) {
        return Err(format!("hysteresis_percent {x} is outside 0..=1000"));
    }
    if s.hysteresis_minutes > 1440 {
        return Err(format!(
            "hysteresis_minutes {} is above 1440",
            s.hysteresis_minutes
        ));
    }
    if s.min_dwell_minutes > 10_080 {
        return Err(format!(
            "min_dwell_minutes {} is above 10080",
            s.min_dwell_minutes
        ));
    }
    Ok(())
}

pub async fn set_switching(
    State(api): St,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut s: SwitchingSettings = json_body(body)?;
    validate_switching(&s)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad-switching", m))?;
    s.hysteresis_percent = s.hysteresis_percent.trim().to_string();
    let value = serde_json::to_value(&s).unwrap_or_default();
    api.shared
        .store
        .set_setting(&actor.0, SWITCHING, &value)
        .await?;
    wake_decisions(&api);
    tracing::info!(actor = %actor.0, ?s, "switching settings changed");
    Ok(Json(value))
}

// ---- pins ----

async fn current_pins(api: &Api) -> Result<Pins, ApiError> {
    Ok(match api.shared.store.setting(PINS).await? {
        Some(v) => serde_json::from_value(v).unwrap_or_default(),
        None => Pins::new(),
    })
}

pub async fn pins(State(api): St) -> ApiResult {
    Ok(Json(json!({ "pins": current_pins(&api).await? })))
}

fn algorithm(text: &str) -> Result<Algorithm, ApiError> {
    text.parse::<Algorithm>().map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-algorithm",
            format!("`{text}`: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    coin: String,
}

pub async fn pin(
    State(api): St,
    Extension(actor): Extension<Actor>,
    alg: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Path(alg) = alg?;
    let algorithm = algorithm(&alg)?;
    let PinBody { coin } = json_body(body)?;
    let coin = registry_coin(&api, &coin)?;
    let spec_alg = api.shared.config.registry.get(&coin).map(|s| s.algorithm);
    if spec_alg != Some(algorithm) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "wrong-algorithm",
            format!("{coin} is not mined with {}", algorithm.as_str()),
        ));
    }
    let mut pins = current_pins(&api).await?;
    pins.insert(algorithm.as_str().to_string(), coin.as_str().to_string());
    let value = serde_json::to_value(&pins).unwrap_or_default();
    api.shared.store.set_setting(&actor.0, PINS, &value).await?;
    wake_decisions(&api);
    tracing::info!(actor = %actor.0, algorithm = algorithm.as_str(), coin = %coin, "pinned");
    Ok(Json(json!({ "pins": pins })))
}

pub async fn unpin(
    State(api): St,
    Extension(actor): Extension<Actor>,
    alg: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(alg) = alg?;
    let algorithm = algorithm(&alg)?;
    let mut pins = current_pins(&api).await?;
    let removed = pins.remove(algorithm.as_str()).is_some();
    let value = serde_json::to_value(&pins).unwrap_or_default();
    api.shared.store.set_setting(&actor.0, PINS, &value).await?;
    wake_decisions(&api);
    tracing::info!(actor = %actor.0, algorithm = algorithm.as_str(), removed, "unpinned");
    Ok(Json(json!({ "pins": pins, "removed": removed })))
}

// ---- upstreams ----

pub async fn upstreams(State(api): St) -> ApiResult {
    Ok(Json(
        json!({ "upstreams": api.shared.store.upstreams().await? }),
    ))
}

/// An upstream's terms as PUT: the name comes from the path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamBody {
    #[serde(default)]
    name: Option<String>,
    coin: String,
    protocol: String,
    #[serde(default)]
    fee_bps: u32,
    payout_scheme: String,
    #[serde(default)]
    switch_cost_secs: u32,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

/// Keys in `details` that would carry a secret into the audit log and API output.
const SECRET_KEYS: [&str; 5] = ["password", "token", "secret", "api_key", "private"];

fn secret_key_in(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                Some(k.clone())
            } else {
                secret_key_in(v)
            }
        }),
        Value::Array(a) => a.iter().find_map(secret_key_in),
        _ => None,
    }
}

pub async fn set_upstream(
    State(api): St,
    Extension(actor): Extension<Actor>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Path(name) = name?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad-upstream", m);
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(format!(
            "upstream name `{name}`: 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    let b: UpstreamBody = json_body(body)?;
    if b.name.as_ref().is_some_and(|n| *n != name) {
        return Err(bad("the body's name differs from the path's".into()));
    }
    let coin = registry_coin(&api, &b.coin)?;
    if !["sv2", "sv1", "adapter"].contains(&b.protocol.as_str()) {
        return Err(bad(format!(
            "protocol `{}`: one of sv2, sv1, adapter",
            b.protocol
        )));
    }
    if !["solo", "pplns", "pps", "prop"].contains(&b.payout_scheme.as_str()) {
        return Err(bad(format!(
            "payout_scheme `{}`: one of solo, pplns, pps, prop",
            b.payout_scheme
        )));
    }
    if (b.protocol == "adapter") != (b.payout_scheme == "solo") {
        return Err(bad(
            "an adapter upstream is solo, and only adapters are solo".into(),
        ));
    }
    if b.fee_bps > 10_000 {
        return Err(bad(format!("fee_bps {} is above 10000", b.fee_bps)));
    }
    let details = b.details.unwrap_or(json!({}));
    if let Some(k) = secret_key_in(&details) {
        return Err(bad(format!(
            "details.{k}: secrets belong in the config file, not in audited upstream terms"
        )));
    }
    let terms = UpstreamTerms {
        name,
        coin,
        protocol: b.protocol,
        fee_bps: b.fee_bps,
        payout_scheme: b.payout_scheme,
        switch_cost_secs: b.switch_cost_secs,
        details,
        enabled: b.enabled,
    };
    api.shared.store.upsert_upstream(&actor.0, &terms).await?;
    wake_decisions(&api);
    tracing::info!(actor = %actor.0, upstream = %terms.name, "upstream terms stored");
    Ok(Json(serde_json::to_value(&terms).unwrap_or_default()))
}

pub async fn remove_upstream(
    State(api): St,
    Extension(actor): Extension<Actor>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(name) = name?;
    let removed = api.shared.store.remove_upstream(&actor.0, &name).await?;
    wake_decisions(&api);
    tracing::info!(actor = %actor.0, upstream = %name, removed, "upstream removed");
    Ok(Json(json!({"name": name, "removed": removed})))
}

// ---- payouts, audit ----

pub async fn payout(
    State(api): St,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let payout: PoolPayout = json_body(body)?;
    let recorded = ledger::record_pool_payout(&api.shared, &payout)
        .await
        .map_err(|e| match e {
            LedgerError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad-payout", m),
            LedgerError::Store(e) => ApiError::store(e),
        })?;
    let _ = api
        .shared
        .store
        .audit(
            &actor.0,
            "record-payout",
            &json!({"coin": payout.coin, "upstream": payout.upstream, "from_ms": payout.from_ms,
                    "to_ms": payout.to_ms, "amount": payout.amount, "reference": payout.reference,
                    "txn_id": recorded.txn_id, "posted": recorded.posted}),
        )
        .await;
    tracing::info!(actor = %actor.0, txn = %recorded.txn_id, posted = recorded.posted, "pool payout recorded");
    Ok(Json(serde_json::to_value(&recorded).unwrap_or_default()))
}

pub async fn audit(State(api): St, q: Result<Query<LimitQuery>, QueryRejection>) -> ApiResult {
    let Query(q) = q?;
    let n = query_limit(q.limit, 100, 10_000)?;
    Ok(Json(
        json!({ "audit": api.shared.store.audit_log(n).await? }),
    ))
}

// ---- assignments ----

/// Stores an operator's assignment with a higher epoch, audits it, pushes it to the proxies of
/// its group and publishes a `switch` feed event.
pub async fn assign(
    State(api): St,
    Extension(actor): Extension<Actor>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body?;
    // `bad-assignment` (not `bad-request`): the code this endpoint has always had.
    let assignment: Assignment = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-assignment",
            format!("assignment JSON: {e}"),
        )
    })?;
    let shared = &api.shared;
    let previous = shared
        .store
        .current_assignment(&assignment.group, assignment.algorithm)
        .await?;
    match shared.store.save_assignment(&assignment).await? {
        SaveAssignment::Saved => {
            let _ = shared
                .store
                .audit(
                    &actor.0,
                    "assign",
                    &json!({"group": assignment.group, "algorithm": assignment.algorithm,
                            "epoch": assignment.epoch, "coin": assignment.primary_coin(),
                            "reason": assignment.reason}),
                )
                .await;
            tracing::info!(group = %assignment.group, epoch = assignment.epoch, "assignment saved and pushed");
            shared.publish(FeedEvent::Switch {
                at_ms: shared.now_ms(),
                group: assignment.group.clone(),
                algorithm: assignment.algorithm,
                from: previous
                    .as_ref()
                    .and_then(|p| p.primary_coin())
                    .map(|c| c.to_string()),
                to: assignment.primary_coin().map(|c| c.to_string()),
                epoch: assignment.epoch,
                kind: "admin".into(),
                reason: assignment.reason.clone(),
            });
            let _ = shared.assignments.send(assignment);
            Ok(Json(json!({"result": "applied"})).into_response())
        }
        SaveAssignment::Unchanged => Ok(Json(json!({"result": "unchanged"})).into_response()),
        SaveAssignment::Stale { current_epoch } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale-epoch",
            format!("the current epoch is {current_epoch}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str, y: u32, d: u32) -> SwitchingSettings {
        SwitchingSettings {
            hysteresis_percent: x.into(),
            hysteresis_minutes: y,
            min_dwell_minutes: d,
        }
    }

    #[test]
    fn switching_bounds() {
        assert!(validate_switching(&s("5", 10, 30)).is_ok());
        assert!(validate_switching(&s("0", 0, 0)).is_ok());
        assert!(validate_switching(&s("1000", 1440, 10_080)).is_ok());
        assert!(validate_switching(&s("1000.01", 10, 30)).is_err());
        assert!(validate_switching(&s("-1", 10, 30)).is_err());
        assert!(validate_switching(&s("five", 10, 30)).is_err());
        assert!(validate_switching(&s("5", 1441, 30)).is_err());
        assert!(validate_switching(&s("5", 10, 10_081)).is_err());
    }

    #[test]
    fn secrets_in_details_are_found() {
        assert_eq!(secret_key_in(&json!({"url": "x"})), None);
        assert_eq!(
            secret_key_in(&json!({"account": {"Password": "x"}})),
            Some("Password".into())
        );
        assert_eq!(
            secret_key_in(&json!([{"api_key": 1}])),
            Some("api_key".into())
        );
    }
}
