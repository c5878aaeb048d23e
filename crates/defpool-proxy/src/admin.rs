//! The loopback admin endpoint: assignments from tests and operators (token), status for anyone
//! on the machine.
//!
//! * `POST /assign` with an assignment as JSON and `Authorization: Bearer <admin token>`:
//!   applied if its epoch is newer than the group's (`{"result":"applied"}`), else
//!   `unchanged` / `stale`.
//! * `GET /status`: groups (coin, epoch, upstreams and their health, last switch timing),
//!   counters, workers, outbox totals.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use defpool_control::{Assignment, Offer};
use defpool_core::secret::Secret;
use defpool_core::Algorithm;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::context::Context;
use crate::group::AssignRequest;

#[derive(Clone)]
pub struct AdminState {
    pub ctx: Arc<Context>,
    pub token: Option<Secret>,
    pub assign: HashMap<(String, Algorithm), mpsc::Sender<AssignRequest>>,
    pub proxy_id: String,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/assign", post(assign))
        .route("/status", get(status))
        .route("/health", get(|| async { "ok" }))
        .with_state(Arc::new(state))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &state.token else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "no proxy.admin_token is configured",
        )));
    };
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "bad-token",
            "missing or wrong bearer token",
        )))
    }
}

async fn assign(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return *r;
    }
    let assignment: Assignment = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad-assignment",
                &format!("assignment JSON: {e}"),
            )
        }
    };
    let key = (assignment.group.clone(), assignment.algorithm);
    let Some(tx) = state.assign.get(&key) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown-group",
            &format!(
                "this proxy has no {} port in group {:?}",
                assignment.algorithm.as_str(),
                assignment.group
            ),
        );
    };
    let (reply, rx) = oneshot::channel();
    if tx.send((assignment, reply)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "proxy is stopping",
        );
    }
    match rx.await {
        Ok(Offer::Applied) => Json(json!({"result": "applied"})).into_response(),
        Ok(Offer::Unchanged) => Json(json!({"result": "unchanged"})).into_response(),
        Ok(Offer::Stale { current_epoch }) => (
            StatusCode::CONFLICT,
            Json(json!({"result": "stale", "current_epoch": current_epoch})),
        )
            .into_response(),
        Ok(Offer::WrongSlot) | Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "group did not answer",
        ),
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let ctx = &state.ctx;
    let groups: Vec<_> = ctx
        .groups
        .values()
        .map(|g| {
            let st = g.status.lock().expect("status lock").clone();
            json!({
                "group": g.name,
                "algorithm": g.algorithm.as_str(),
                "miners": g.miners.load(Ordering::Relaxed),
                "status": st,
            })
        })
        .collect();
    let c = &ctx.counters;
    let workers: Vec<_> = ctx
        .workers
        .lock()
        .expect("workers lock")
        .iter()
        .flat_map(|(u, workers)| workers.iter().map(move |(w, s)| (u, w, s)))
        .take(1000)
        .map(|(u, w, s)| json!({"user": u, "worker": w, "stats": s}))
        .collect();
    let outbox = match ctx.outbox.totals().await {
        Ok(t) => json!({
            "held_work": t.held_work.to_string(),
            "held_shares": t.held_shares,
            "appended_work": t.appended_work.to_string(),
            "appended_shares": t.appended_shares,
            "last_sequence": t.last_sequence,
            "acknowledged_sequence": t.acknowledged_sequence,
            "unacknowledged_batches": t.unacknowledged_batches,
            "commits": t.commits,
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    let answers = c.share_answer.snapshot();
    let share_answer = json!({
        "count": answers.count(),
        "p50": answers.percentile_us(50.0),
        "p90": answers.percentile_us(90.0),
        "p99": answers.percentile_us(99.0),
        "p999": answers.percentile_us(99.9),
        "max": answers.percentile_us(100.0),
        // [upper bound µs, count] of the non-empty buckets: two readings subtract to a window.
        "buckets": answers.buckets(),
    });
    Json(json!({
        "proxy_id": state.proxy_id,
        "groups": groups,
        "counters": {
            "connections": c.connections.load(Ordering::Relaxed),
            "disconnects": c.disconnects.load(Ordering::Relaxed),
            "protocol_violations": c.protocol_violations.load(Ordering::Relaxed),
            "shares_accepted": c.shares_accepted.load(Ordering::Relaxed),
            "shares_rejected": c.shares_rejected.load(Ordering::Relaxed),
            "extranonce_resets": c.extranonce_resets.load(Ordering::Relaxed),
            "reconnects_sent": c.reconnects_sent.load(Ordering::Relaxed),
        },
        "share_answer_us": share_answer,
        "workers": workers,
        "outbox": outbox,
    }))
    .into_response()
}
