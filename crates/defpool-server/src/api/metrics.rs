//! `/metrics` in the Prometheus text format: every counter of [`crate::state::Metrics`], and
//! gauges read at scrape time (users, workers, hashrate per algorithm, market view age, current
//! epochs). Never secrets.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ApiError, St};
use crate::state::Metrics;
use crate::stats::{self, ONLINE_WINDOW_MS};

fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn one(v: impl ToString) -> Vec<(String, String)> {
    vec![(String::new(), v.to_string())]
}

pub async fn metrics(State(api): St) -> Result<Response, ApiError> {
    let m = &api.shared.metrics;
    let counters: [(&str, &AtomicU64, &str); 13] = [
        (
            "defpool_batches_applied_total",
            &m.batches_applied,
            "Batches applied from proxies and adapters.",
        ),
        (
            "defpool_batch_transactions_total",
            &m.batch_transactions,
            "Applies of batches: the batches queued on a connection behind one are applied with it and count once.",
        ),
        (
            "defpool_batches_duplicate_total",
            &m.batches_duplicate,
            "Retransmitted batches acknowledged again without applying.",
        ),
        (
            "defpool_batches_gap_total",
            &m.batches_gap,
            "Batches refused because an earlier one was missing.",
        ),
        (
            "defpool_batch_errors_total",
            &m.batch_errors,
            "Batches the store could not apply.",
        ),
        (
            "defpool_work_records_total",
            &m.work_records,
            "Work records applied.",
        ),
        (
            "defpool_assignments_pushed_total",
            &m.assignments_pushed,
            "Assignments pushed to proxies.",
        ),
        (
            "defpool_decisions_total",
            &m.decisions,
            "Decisions of the switching engine.",
        ),
        (
            "defpool_switches_total",
            &m.switches,
            "Decisions that changed a group's coin.",
        ),
        (
            "defpool_market_fetch_errors_total",
            &m.market_fetch_errors,
            "Failed market data fetches.",
        ),
        (
            "defpool_ledger_postings_total",
            &m.ledger_postings,
            "Ledger transactions posted.",
        ),
        (
            "defpool_api_requests_total",
            &m.api_requests,
            "HTTP API requests.",
        ),
        (
            "defpool_api_rate_limited_total",
            &m.api_rate_limited,
            "API requests refused by the rate limit.",
        ),
    ];
    let mut out = String::with_capacity(4096);
    for (name, c, help) in counters {
        family(&mut out, name, "counter", help, &one(Metrics::get(c)));
    }
    family(
        &mut out,
        "defpool_proxies_connected",
        "gauge",
        "Proxies connected to the control plane.",
        &one(Metrics::get(&m.proxies_connected)),
    );
    family(
        &mut out,
        "defpool_feed_subscribers",
        "gauge",
        "Live feed subscribers (SSE and WebSocket).",
        &one(Metrics::get(&m.feed_subscribers)),
    );
    let now = api.shared.now_ms();
    let (users, workers, active) = api
        .shared
        .store
        .pool_counts(now.saturating_sub(ONLINE_WINDOW_MS))
        .await?;
    family(
        &mut out,
        "defpool_users",
        "gauge",
        "Users known to the store.",
        &one(users),
    );
    family(
        &mut out,
        "defpool_workers",
        "gauge",
        "Workers known to the store.",
        &one(workers),
    );
    family(
        &mut out,
        "defpool_workers_online",
        "gauge",
        "Workers with a share in the last 10 minutes.",
        &one(active),
    );
    let hashrate = stats::pool_hashrate(&api.shared, now).await?;
    let samples: Vec<(String, String)> = hashrate
        .iter()
        .map(|(alg, hs)| {
            (
                format!("{{algorithm=\"{}\"}}", alg.as_str()),
                format!("{hs}"),
            )
        })
        .collect();
    family(
        &mut out,
        "defpool_pool_hashrate_hs",
        "gauge",
        "Pool hashrate per algorithm over the last 10 minutes, hashes per second.",
        &samples,
    );
    let assignments = api.shared.store.assignments().await?;
    let samples: Vec<(String, String)> = assignments
        .iter()
        .map(|a| {
            (
                format!(
                    "{{group=\"{}\",algorithm=\"{}\"}}",
                    escape(&a.group),
                    a.algorithm.as_str()
                ),
                a.epoch.to_string(),
            )
        })
        .collect();
    family(
        &mut out,
        "defpool_assignment_epoch",
        "gauge",
        "Current assignment epoch per group and algorithm.",
        &samples,
    );
    let market_ms = api.shared.market.borrow().updated_ms;
    family(
        &mut out,
        "defpool_market_updated_ms",
        "gauge",
        "When the decision loop last computed the market view (Unix ms, 0: never).",
        &one(market_ms),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
