//! Why a source could not report: one typed error for every adapter.
//!
//! Every variant names the source it came from (`origin`: `binance`, `daemon:LTC`, …) so a log
//! line or an exclusion reason is self-explanatory. No variant ever carries a credential: adapters
//! build errors from status codes, provider error codes and short excerpts of response bodies,
//! never from request headers or configured URLs with user info.

use std::time::Duration;

/// The longest excerpt of a response body kept in an error.
pub(crate) const EXCERPT_LEN: usize = 160;

/// Why one fetch (or one coin within a fetch) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The server answered with an HTTP status the adapter does not treat as data
    /// (401/403: authentication refused; 5xx after the retries ran out; …).
    #[error("{origin}: {}", http_cause(*.status, .detail))]
    Http {
        origin: String,
        status: u16,
        /// A short excerpt of the body, when it had one.
        detail: String,
    },
    /// The provider asked us to slow down (HTTP 429, Binance's 418 IP ban, Kraken's
    /// `EAPI:Rate limit exceeded`, KuCoin's `429000`).
    #[error("{origin}: rate limited{}", retry_after_text(.retry_after))]
    RateLimited {
        origin: String,
        /// How long the provider asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// No complete answer within the configured timeout.
    #[error("{origin}: timed out")]
    Timeout { origin: String },
    /// The connection could not be made or broke (refused, reset, DNS, TLS).
    #[error("{origin}: connection failed: {detail}")]
    Transport { origin: String, detail: String },
    /// The answer was not in the provider's documented format.
    #[error("{origin}: malformed response: {detail}")]
    Malformed { origin: String, detail: String },
    /// The provider does not know this symbol (Binance `-1121`, Kraken
    /// `EQuery:Unknown asset pair`, a coin absent from an aggregator feed).
    #[error("{origin}: unknown symbol `{symbol}`")]
    UnknownSymbol { origin: String, symbol: String },
    /// The request succeeded but the answer holds no usable price for this coin (the pair is
    /// absent from a batch answer, or listed without a last price).
    #[error("{origin}: no {coin}/BTC price: {detail}")]
    MissingPair {
        origin: String,
        coin: String,
        detail: String,
    },
    /// The provider reported an error in its own envelope.
    #[error("{origin}: API error {code}: {message}")]
    Api {
        origin: String,
        code: String,
        message: String,
    },
    /// The coin daemon answered a JSON-RPC error (`-10`: initial sync, `-28`: warming up, …).
    #[error("{origin}: RPC error {code}: {message}")]
    Rpc {
        origin: String,
        code: i64,
        message: String,
    },
    /// A local file (CSV replay) could not be read.
    #[error("{origin}: cannot read {path}: {detail}")]
    Io {
        origin: String,
        path: String,
        detail: String,
    },
}

fn http_cause(status: u16, detail: &str) -> String {
    let what = match status {
        401 => "authentication failed (HTTP 401)".to_string(),
        403 => "access forbidden (HTTP 403)".to_string(),
        404 => "not found (HTTP 404)".to_string(),
        s if s >= 500 => format!("server error (HTTP {s})"),
        s => format!("HTTP {s}"),
    };
    if detail.is_empty() {
        what
    } else {
        format!("{what}: {detail}")
    }
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) if d.subsec_millis() == 0 => format!(" (retry after {} s)", d.as_secs()),
        Some(d) => format!(" (retry after {} ms)", d.as_millis()),
        None => String::new(),
    }
}

impl SourceError {
    /// The source that produced this error.
    pub fn origin(&self) -> &str {
        match self {
            SourceError::Http { origin, .. }
            | SourceError::RateLimited { origin, .. }
            | SourceError::Timeout { origin }
            | SourceError::Transport { origin, .. }
            | SourceError::Malformed { origin, .. }
            | SourceError::UnknownSymbol { origin, .. }
            | SourceError::MissingPair { origin, .. }
            | SourceError::Api { origin, .. }
            | SourceError::Rpc { origin, .. }
            | SourceError::Io { origin, .. } => origin,
        }
    }

    /// Whether trying the same request again may succeed: timeouts, broken connections and
    /// server errors. Rate limits are retried separately (they carry their own wait).
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Timeout { .. } | SourceError::Transport { .. } => true,
            SourceError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn malformed(origin: &str, detail: impl Into<String>) -> SourceError {
        SourceError::Malformed {
            origin: origin.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn missing(origin: &str, coin: &str, detail: impl Into<String>) -> SourceError {
        SourceError::MissingPair {
            origin: origin.to_string(),
            coin: coin.to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn unknown(origin: &str, symbol: impl Into<String>) -> SourceError {
        SourceError::UnknownSymbol {
            origin: origin.to_string(),
            symbol: symbol.into(),
        }
    }

    pub(crate) fn api(origin: &str, code: impl Into<String>, message: impl Into<String>) -> Self {
        SourceError::Api {
            origin: origin.to_string(),
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A printable excerpt of a response body: valid UTF-8 (lossy), control characters replaced,
/// at most [`EXCERPT_LEN`] characters.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .trim()
        .chars()
        .take(EXCERPT_LEN)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().chars().count() > EXCERPT_LEN {
        out.push('…');
    }
    out
}
