//! The server's HTTP API: public read endpoints (rate limited per client IP), admin endpoints
//! (bearer admin token, every change audited), the live feed (SSE and WebSocket), Prometheus
//! `/metrics`, and the OpenAPI document with a self-contained docs page.
//!
//! Errors are JSON `{"error": {"code", "message"}}` with stable codes (see `openapi.json`).
//! Secrets (the admin token, proxy tokens, upstream passwords) never appear in a response.

mod admin;
mod error;
mod feed;
mod limit;
mod metrics;
mod openapi;
mod public;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use defpool_core::secret::Secret;

pub use error::ApiError;

use crate::state::{Metrics, Shared};

/// Largest request body accepted (admin JSON bodies are small).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub admin_token: Option<Secret>,
}

/// What the handlers share: the server state, the admin token and the rate limiter.
pub(crate) struct Api {
    pub shared: Arc<Shared>,
    pub admin_token: Option<Secret>,
    pub limiter: limit::RateLimiter,
    pub history: public::MarketHistoryCache,
}

type St = State<Arc<Api>>;

/// The API as a service that knows each connection's peer address (for per-IP rate limits).
pub fn router(state: ApiState) -> IntoMakeServiceWithConnectInfo<Router, SocketAddr> {
    routes(state).into_make_service_with_connect_info::<SocketAddr>()
}

/// The API's routes. Served without connection info, every client shares one rate-limit bucket.
pub fn routes(state: ApiState) -> Router {
    let rate = state
        .shared
        .config
        .config
        .server
        .as_ref()
        .map(|s| s.rate_limit.clone())
        .unwrap_or_default();
    let api = Arc::new(Api {
        limiter: limit::RateLimiter::new(rate.requests_per_sec, rate.burst),
        shared: state.shared,
        admin_token: state.admin_token,
        history: public::MarketHistoryCache::default(),
    });
    let public = Router::new()
        .route("/api/status", get(public::status))
        .route("/api/coins", get(public::coins))
        .route("/api/blocks", get(public::blocks))
        .route("/api/blocks/{hash}", get(public::block))
        .route("/api/users/{address}", get(public::user))
        .route("/api/users/{address}/workers", get(public::user_workers))
        .route("/api/decisions", get(public::decisions))
        .route("/api/assignments", get(public::assignments))
        .route("/api/feed", get(feed::sse))
        .route("/api/ws", get(feed::ws))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/docs", get(openapi::docs))
        .route_layer(middleware::from_fn_with_state(api.clone(), rate_limited));
    let admin = Router::new()
        .route("/api/admin/coins", get(admin::coins))
        .route(
            "/api/admin/coins/{ticker}",
            put(admin::set_coin).delete(admin::remove_coin),
        )
        .route(
            "/api/admin/switching",
            get(admin::switching).put(admin::set_switching),
        )
        .route("/api/admin/pins", get(admin::pins))
        .route(
            "/api/admin/pins/{algorithm}",
            put(admin::pin).delete(admin::unpin),
        )
        .route("/api/admin/upstreams", get(admin::upstreams))
        .route(
            "/api/admin/upstreams/{name}",
            put(admin::set_upstream).delete(admin::remove_upstream),
        )
        .route("/api/admin/payouts", post(admin::payout))
        .route("/api/admin/audit", get(admin::audit))
        .route("/api/admin/assignments", post(admin::assign))
        .route_layer(middleware::from_fn_with_state(
            api.clone(),
            admin::authorized,
        ));
    Router::new()
        .merge(public)
        .merge(admin)
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(api.clone(), counted))
        .with_state(api)
}

/// The client's IP: the connection's peer (loopback when served without connection info).
pub(crate) fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

async fn counted(State(api): St, req: Request, next: Next) -> Response {
    Metrics::add(&api.shared.metrics.api_requests, 1);
    next.run(req).await
}

async fn rate_limited(State(api): St, req: Request, next: Next) -> Response {
    let ip = client_ip(&req);
    match api.limiter.check(ip, std::time::Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(retry_after_secs) => {
            Metrics::add(&api.shared.metrics.api_rate_limited, 1);
            ApiError::rate_limited(retry_after_secs).into()
        }
    }
}
