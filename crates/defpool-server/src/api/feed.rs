//! The live feed: every `FeedEvent` (hashrate, switch, block, earnings) as Server-Sent Events
//! (`event: <type>`, JSON data, keep-alive comments) or WebSocket text messages (the same JSON),
//! optionally filtered with `?types=switch,block`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::{ApiError, St};
use crate::state::{FeedEvent, Metrics, Shared};

const KINDS: [&str; 4] = ["hashrate", "switch", "block", "earnings"];
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub struct FeedQuery {
    types: Option<String>,
}

/// Which event types a subscriber wants (all when none were named).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter(Option<Vec<&'static str>>);

impl Filter {
    pub fn parse(types: Option<&str>) -> Result<Filter, String> {
        let Some(types) = types.filter(|t| !t.trim().is_empty()) else {
            return Ok(Filter(None));
        };
        let mut wanted = Vec::new();
        for t in types.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match KINDS.iter().find(|k| **k == t) {
                Some(k) => wanted.push(*k),
                None => {
                    return Err(format!(
                        "unknown event type `{t}` (known: {})",
                        KINDS.join(", ")
                    ))
                }
            }
        }
        Ok(Filter(Some(wanted)))
    }

    pub fn allows(&self, kind: &str) -> bool {
        self.0.as_ref().is_none_or(|w| w.contains(&kind))
    }
}

fn filter(q: Result<Query<FeedQuery>, QueryRejection>) -> Result<Filter, ApiError> {
    let Query(q) = q?;
    Filter::parse(q.types.as_deref()).map_err(ApiError::bad_request)
}

/// Counts a subscriber in the `feed_subscribers` gauge while it lives.
struct Subscribed(Arc<Shared>);

impl Subscribed {
    fn new(shared: Arc<Shared>) -> Subscribed {
        Metrics::add(&shared.metrics.feed_subscribers, 1);
        Subscribed(shared)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        Metrics::sub(&self.0.metrics.feed_subscribers, 1);
    }
}

/// The next event the subscriber wants; `None` once the feed is closed. A subscriber too slow
/// for the feed's buffer skips what it missed.
/// The feed also ends when the server stops, so open subscriptions do not hold up shutdown.
async fn next_event(
    rx: &mut Receiver<FeedEvent>,
    filter: &Filter,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<FeedEvent> {
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        match received {
            Ok(e) if filter.allows(e.kind()) => return Some(e),
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "feed subscriber lagged"),
            Err(RecvError::Closed) => return None,
        }
    }
}

pub async fn sse(State(api): St, q: Result<Query<FeedQuery>, QueryRejection>) -> Response {
    let filter = match filter(q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let rx = api.shared.feed.subscribe();
    let stopping = api.shared.stopping.subscribe();
    let guard = Subscribed::new(api.shared.clone());
    let stream = futures_util::stream::unfold(
        (rx, filter, stopping, guard),
        |(mut rx, filter, mut stopping, guard)| async move {
            let e = next_event(&mut rx, &filter, &mut stopping).await?;
            let data = serde_json::to_string(&e).unwrap_or_default();
            let event = Event::default().event(e.kind()).data(data);
            Some((Ok::<_, Infallible>(event), (rx, filter, stopping, guard)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

pub async fn ws(
    State(api): St,
    q: Result<Query<FeedQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let filter = match filter(q) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return ApiError::new(
                e.status(),
                "not-websocket",
                format!("not a WebSocket handshake: {}", e.body_text()),
            )
            .into_response()
        }
    };
    // Subscribe before the upgrade so nothing published after the handshake is missed.
    let rx = api.shared.feed.subscribe();
    let shared = api.shared.clone();
    upgrade
        .on_upgrade(move |socket| feed_socket(socket, rx, filter, shared))
        .into_response()
}

async fn feed_socket(
    mut socket: WebSocket,
    mut rx: Receiver<FeedEvent>,
    filter: Filter,
    shared: Arc<Shared>,
) {
    let mut stopping = shared.stopping.subscribe();
    let _guard = Subscribed::new(shared);
    let mut ping = tokio::time::interval(KEEP_ALIVE);
    ping.tick().await;
    loop {
        tokio::select! {
            e = next_event(&mut rx, &filter, &mut stopping) => {
                let Some(e) = e else { break };
                let text = serde_json::to_string(&e).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the protocol layer; text from the client is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let all = Filter::parse(None).unwrap();
        assert!(all.allows("switch") && all.allows("hashrate"));
        let some = Filter::parse(Some("switch, block")).unwrap();
        assert!(some.allows("switch") && some.allows("block"));
        assert!(!some.allows("hashrate") && !some.allows("earnings"));
        assert!(Filter::parse(Some("switch,blocks")).is_err());
        assert_eq!(Filter::parse(Some("")).unwrap(), all);
    }
}
