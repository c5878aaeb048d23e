//! The HTTP layer every network adapter shares: one blocking `ureq` agent with a global timeout,
//! bounded retries with exponential backoff, and `429` / `Retry-After` handling.
//!
//! Adapters hand [`HttpClient::execute`] a function that sends one request and a function that
//! interprets one reply. The loop retries what is worth retrying (timeouts, broken connections,
//! 5xx, rate limits whose wait is acceptable) and returns everything else at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{excerpt, SourceError};

/// Unix milliseconds now, as the snapshots' `observed_at_ms` wants it. Injected so tests and
/// replays can fix time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// How often, and how patiently, a request is tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (`1` disables retries; `0` counts as `1`).
    pub max_attempts: u32,
    /// Wait before the first retry; each further retry doubles it.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts when the server did not ask for one.
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured by waiting. A server asking for more ends the fetch at
    /// once with [`SourceError::RateLimited`] carrying its wait, so the caller can back off.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt, errors returned as they come.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Transport settings shared by the network adapters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Whole-request timeout (connect, send, headers and body).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Bodies larger than this are refused as malformed.
    pub max_body_bytes: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_body_bytes: 8 << 20,
        }
    }
}

/// One HTTP answer, read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The error for a status the adapter has no better reading of.
    pub fn status_error(&self, origin: &str) -> SourceError {
        SourceError::Http {
            origin: origin.to_string(),
            status: self.status,
            detail: excerpt(&self.body),
        }
    }
}

pub(crate) type UreqResult = Result<ureq::http::Response<ureq::Body>, ureq::Error>;

/// A blocking HTTP client with the retry policy applied.
#[derive(Clone)]
pub(crate) struct HttpClient {
    agent: ureq::Agent,
    options: HttpOptions,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub fn new(options: HttpOptions) -> HttpClient {
        let config = ureq::Agent::config_builder()
            // Statuses are data here: 429, 418 and JSON-RPC error bodies on 500 are read.
            .http_status_as_error(false)
            .timeout_global(Some(options.timeout))
            .max_redirects(3)
            .user_agent(concat!("defpool/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpClient {
            agent: config.into(),
            options,
        }
    }

    /// Send with `send`, read the reply, interpret it with `interpret`; retry per the policy.
    pub fn execute<T>(
        &self,
        origin: &str,
        send: impl Fn(&ureq::Agent) -> UreqResult,
        mut interpret: impl FnMut(Reply) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let policy = &self.options.retry;
        let mut attempt: u32 = 1;
        loop {
            let (err, asked_wait) = match self.attempt(origin, &send) {
                Err(e) => (e, None),
                Ok(reply) if reply.status == 418 => {
                    // Binance: an IP ban for ignoring 429s. Retrying only lengthens it.
                    return Err(SourceError::RateLimited {
                        origin: origin.to_string(),
                        retry_after: reply.retry_after,
                    });
                }
                Ok(reply) if reply.status == 429 => (
                    SourceError::RateLimited {
                        origin: origin.to_string(),
                        retry_after: reply.retry_after,
                    },
                    reply.retry_after,
                ),
                Ok(reply) => {
                    let asked = reply.retry_after;
                    match interpret(reply) {
                        Ok(value) => return Ok(value),
                        Err(e) => {
                            let asked = match &e {
                                SourceError::RateLimited {
                                    retry_after: Some(d),
                                    ..
                                } => Some(*d),
                                _ => asked,
                            };
                            (e, asked)
                        }
                    }
                }
            };
            let retryable = matches!(err, SourceError::RateLimited { .. }) || err.is_transient();
            if !retryable || attempt >= policy.max_attempts.max(1) {
                return Err(err);
            }
            let wait = match asked_wait {
                Some(asked) if asked > policy.max_retry_after => return Err(err),
                Some(asked) => asked,
                None => policy.backoff(attempt),
            };
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn attempt(
        &self,
        origin: &str,
        send: &impl Fn(&ureq::Agent) -> UreqResult,
    ) -> Result<Reply, SourceError> {
        let mut response = send(&self.agent).map_err(|e| transport_error(origin, e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response
            .body_mut()
            .with_config()
            .limit(self.options.max_body_bytes)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(n) => {
                    SourceError::malformed(origin, format!("body exceeds {n} bytes"))
                }
                other => transport_error(origin, other),
            })?;
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

/// Map a ureq failure to a typed error. Only payload-free descriptions are kept: some ureq
/// errors carry the request URL, which may hold credentials an operator put there.
fn transport_error(origin: &str, e: ureq::Error) -> SourceError {
    let transport = |detail: String| SourceError::Transport {
        origin: origin.to_string(),
        detail,
    };
    match e {
        ureq::Error::Timeout(_) => SourceError::Timeout {
            origin: origin.to_string(),
        },
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            SourceError::Timeout {
                origin: origin.to_string(),
            }
        }
        ureq::Error::Io(io) => transport(format!("{}", io.kind())),
        ureq::Error::HostNotFound => transport("host not found".into()),
        ureq::Error::ConnectionFailed => transport("connection failed".into()),
        ureq::Error::Protocol(p) => transport(format!("HTTP protocol error: {p}")),
        ureq::Error::BadUri(_) => transport("invalid URL".into()),
        ureq::Error::Tls(t) => transport(format!("TLS: {t}")),
        ureq::Error::Rustls(t) => transport(format!("TLS: {t}")),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
            transport("redirect refused".into())
        }
        ureq::Error::LargeResponseHeader(_, _) => {
            SourceError::malformed(origin, "response header too large")
        }
        ureq::Error::BodyExceedsLimit(n) => {
            SourceError::malformed(origin, format!("body exceeds {n} bytes"))
        }
        ureq::Error::StatusCode(status) => SourceError::Http {
            origin: origin.to_string(),
            status,
            detail: String::new(),
        },
        _ => transport("request failed".into()),
    }
}

/// `Retry-After` is either delta-seconds or an HTTP-date (RFC 9110 §10.2.3). A date in the past
/// means "now".
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_imf_fixdate(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → Unix seconds.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    if parts.len() != 5 || parts[4] != "GMT" {
        return None;
    }
    let day: u64 = parts[0].parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[1])? as u64 + 1;
    let year: u64 = parts[2].parse().ok()?;
    let hms: Vec<u64> = parts[3]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + hms[0] * 3_600 + hms[1] * 60 + hms[2])
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), for years
/// from 1970 on.
pub(crate) fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Standard base64 (RFC 4648, with padding), for HTTP basic authentication.
pub(crate) fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_700); // 1994-11-06 08:48:20
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(77))
        );
        // A date already past means "now".
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "-1",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 99 Foo 1994",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=5).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(p.backoff(200), Duration::from_millis(500));
    }
}
