//! The server's HTTP API, first part: assignments. Operators (and tests) command proxies
//! through the server: `POST /api/admin/assignments` (bearer admin token) stores an assignment
//! with a higher epoch, audits it and pushes it to every connected proxy of its group;
//! `GET /api/assignments` lists the current ones (credentials redacted). Errors are JSON
//! `{"error": {"code", "message"}}` with stable codes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use defpool_control::Assignment;
use defpool_core::secret::Secret;
use defpool_store::SaveAssignment;
use serde_json::json;

use crate::state::Shared;

#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub admin_token: Option<Secret>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/assignments", get(list))
        .route("/api/admin/assignments", post(assign))
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

async fn list(State(state): State<Arc<ApiState>>) -> Response {
    match state.shared.store.assignments().await {
        Ok(a) => Json(json!({ "assignments": a.iter().map(redacted).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string()),
    }
}

/// An assignment for display: upstream passwords (which the control wire carries in clear)
/// never leave the server through the API.
fn redacted(a: &Assignment) -> serde_json::Value {
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

async fn assign(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state
        .admin_token
        .as_ref()
        .is_some_and(|t| t.matches(presented))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "bad-token",
            "missing or wrong bearer token",
        );
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
    match state.shared.store.save_assignment(&assignment).await {
        Ok(SaveAssignment::Saved) => {
            let _ = state
                .shared
                .store
                .audit(
                    "admin",
                    "assign",
                    &json!({"group": assignment.group, "algorithm": assignment.algorithm,
                            "epoch": assignment.epoch, "coin": assignment.primary_coin(),
                            "reason": assignment.reason}),
                )
                .await;
            tracing::info!(group = %assignment.group, epoch = assignment.epoch, "assignment saved and pushed");
            let _ = state.shared.assignments.send(assignment);
            Json(json!({"result": "applied"})).into_response()
        }
        Ok(SaveAssignment::Unchanged) => Json(json!({"result": "unchanged"})).into_response(),
        Ok(SaveAssignment::Stale { current_epoch }) => (
            StatusCode::CONFLICT,
            Json(json!({"error": {"code": "stale-epoch", "message": format!("the current epoch is {current_epoch}")}})),
        )
            .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string()),
    }
}
