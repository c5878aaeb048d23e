//! The adapters against recorded responses served from a loopback HTTP server.

mod server;

mod binance;
mod csv_replay;
mod daemon;
mod http_behaviour;
mod kraken;
mod kucoin;
mod whattomine;

use std::sync::Arc;
use std::time::Duration;

use defpool_core::Ticker;
use defpool_market::{Clock, HttpOptions, RetryPolicy};
use rust_decimal::Decimal;

/// The fixed time the tests' clock reports (2023-11-14 22:13:20 UTC).
pub const NOW_MS: u64 = 1_700_000_000_000;

pub fn clock() -> Clock {
    Arc::new(|| NOW_MS)
}

pub fn t(s: &str) -> Ticker {
    s.parse().unwrap()
}

pub fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// Short timeouts and near-instant backoff, `attempts` tries in all.
pub fn fast(attempts: u32) -> HttpOptions {
    HttpOptions {
        timeout: Duration::from_millis(1_500),
        retry: RetryPolicy {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(2),
        },
        max_body_bytes: 1 << 20,
    }
}
