//! The coin daemon's JSON-RPC client (Bitcoin Core and its forks: Litecoin Core, Bitcoin Cash
//! Node, …), with typed errors.
//!
//! Transport: JSON-RPC 1.0 over HTTP `POST /` with basic authentication, either a user and
//! password or the daemon's cookie file (`<datadir>/.cookie`, `__cookie__:<hex>`), which the
//! daemon rewrites on every start: it is read on first use and again after any failure that may
//! mean the daemon restarted (a refused connection, a `401`). Requests are blocking `ureq` calls
//! run on tokio's blocking pool. The daemon answers
//! - `200` with `{"result":…,"error":null,"id":N}`;
//! - `500` (`404` for an unknown method) with `{"result":null,"error":{"code":C,"message":…}}`;
//! - `401` with an empty body for bad credentials, `403` for a client address it does not allow;
//! - `503` when its work queue is full.
//!
//! Secrets never appear in errors, logs or `Debug`: the password is a [`Secret`], the cookie's
//! contents stay inside the request, and the URL is shown without any userinfo.
//!
//! Retries: [`DaemonRpc::call`] makes one attempt. The typed read-only helpers retry transient
//! failures ([`RpcError::is_transient`]: connection failures, a daemon warming up) per the
//! [`RetryPolicy`]. [`DaemonRpc::submit_block`] retries connection failures too — a found block is
//! worth a resend, and a daemon that did get the first copy answers `duplicate`, which after a
//! retry means accepted. State errors (initial block download, no peers) are not retried here:
//! [`RpcError::is_retryable`] tells the caller to report the state and try again later.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use defpool_core::hash::{from_display_hex, Hash32};
use defpool_core::secret::{redact_userinfo, Secret};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::template::{BlockTemplate, TemplateError};

/// How the client authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcAuth {
    /// `rpcuser` / `rpcpassword` (or an `rpcauth` entry).
    UserPass { user: String, password: Secret },
    /// The daemon's cookie file, read at each (re)connect.
    Cookie(PathBuf),
}

/// A JSON-RPC error code, named where Bitcoin Core defines it (`src/rpc/protocol.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RpcCode {
    /// -1: `RPC_MISC_ERROR`, a failure without a more specific code.
    Misc,
    /// -3: `RPC_TYPE_ERROR`, a parameter of the wrong type.
    Type,
    /// -4: `RPC_WALLET_ERROR`.
    Wallet,
    /// -5: `RPC_INVALID_ADDRESS_OR_KEY`: an unknown block, transaction or address ("not found").
    NotFound,
    /// -6: `RPC_WALLET_INSUFFICIENT_FUNDS`.
    InsufficientFunds,
    /// -7: `RPC_OUT_OF_MEMORY`.
    OutOfMemory,
    /// -8: `RPC_INVALID_PARAMETER`.
    InvalidParameter,
    /// -9: `RPC_CLIENT_NOT_CONNECTED`: the node has no peers (refuses templates).
    NotConnected,
    /// -10: `RPC_CLIENT_IN_INITIAL_DOWNLOAD`: the node is still syncing (refuses templates).
    InInitialDownload,
    /// -18: `RPC_WALLET_NOT_FOUND`.
    WalletNotFound,
    /// -20: `RPC_DATABASE_ERROR`.
    Database,
    /// -22: `RPC_DESERIALIZATION_ERROR` (e.g. `submitblock`: "Block decode failed").
    Deserialization,
    /// -25: `RPC_VERIFY_ERROR`.
    Verify,
    /// -26: `RPC_VERIFY_REJECTED`.
    VerifyRejected,
    /// -27: `RPC_VERIFY_ALREADY_IN_CHAIN`.
    AlreadyInChain,
    /// -28: `RPC_IN_WARMUP`: the daemon is starting (loading the block index, …).
    InWarmup,
    /// -32: `RPC_METHOD_DEPRECATED`.
    MethodDeprecated,
    /// -32600: invalid JSON-RPC request.
    InvalidRequest,
    /// -32601: method not found.
    MethodNotFound,
    /// -32602: invalid parameters.
    InvalidParams,
    /// -32603: internal error.
    Internal,
    /// -32700: parse error.
    Parse,
    /// Any other code.
    Other(i64),
}

impl RpcCode {
    pub fn from_code(code: i64) -> RpcCode {
        match code {
            -1 => RpcCode::Misc,
            -3 => RpcCode::Type,
            -4 => RpcCode::Wallet,
            -5 => RpcCode::NotFound,
            -6 => RpcCode::InsufficientFunds,
            -7 => RpcCode::OutOfMemory,
            -8 => RpcCode::InvalidParameter,
            -9 => RpcCode::NotConnected,
            -10 => RpcCode::InInitialDownload,
            -18 => RpcCode::WalletNotFound,
            -20 => RpcCode::Database,
            -22 => RpcCode::Deserialization,
            -25 => RpcCode::Verify,
            -26 => RpcCode::VerifyRejected,
            -27 => RpcCode::AlreadyInChain,
            -28 => RpcCode::InWarmup,
            -32 => RpcCode::MethodDeprecated,
            -32600 => RpcCode::InvalidRequest,
            -32601 => RpcCode::MethodNotFound,
            -32602 => RpcCode::InvalidParams,
            -32603 => RpcCode::Internal,
            -32700 => RpcCode::Parse,
            other => RpcCode::Other(other),
        }
    }

    /// The numeric code.
    pub fn code(self) -> i64 {
        match self {
            RpcCode::Misc => -1,
            RpcCode::Type => -3,
            RpcCode::Wallet => -4,
            RpcCode::NotFound => -5,
            RpcCode::InsufficientFunds => -6,
            RpcCode::OutOfMemory => -7,
            RpcCode::InvalidParameter => -8,
            RpcCode::NotConnected => -9,
            RpcCode::InInitialDownload => -10,
            RpcCode::WalletNotFound => -18,
            RpcCode::Database => -20,
            RpcCode::Deserialization => -22,
            RpcCode::Verify => -25,
            RpcCode::VerifyRejected => -26,
            RpcCode::AlreadyInChain => -27,
            RpcCode::InWarmup => -28,
            RpcCode::MethodDeprecated => -32,
            RpcCode::InvalidRequest => -32600,
            RpcCode::MethodNotFound => -32601,
            RpcCode::InvalidParams => -32602,
            RpcCode::Internal => -32603,
            RpcCode::Parse => -32700,
            RpcCode::Other(code) => code,
        }
    }

    /// A short description for log lines.
    pub fn describe(self) -> &'static str {
        match self {
            RpcCode::Misc => "misc error",
            RpcCode::Type => "type error",
            RpcCode::Wallet => "wallet error",
            RpcCode::NotFound => "not found",
            RpcCode::InsufficientFunds => "insufficient funds",
            RpcCode::OutOfMemory => "out of memory",
            RpcCode::InvalidParameter => "invalid parameter",
            RpcCode::NotConnected => "node has no peers",
            RpcCode::InInitialDownload => "node in initial block download",
            RpcCode::WalletNotFound => "wallet not found",
            RpcCode::Database => "database error",
            RpcCode::Deserialization => "deserialization error",
            RpcCode::Verify => "verify error",
            RpcCode::VerifyRejected => "verify rejected",
            RpcCode::AlreadyInChain => "already in chain",
            RpcCode::InWarmup => "daemon warming up",
            RpcCode::MethodDeprecated => "method deprecated",
            RpcCode::InvalidRequest => "invalid request",
            RpcCode::MethodNotFound => "method not found",
            RpcCode::InvalidParams => "invalid params",
            RpcCode::Internal => "internal error",
            RpcCode::Parse => "parse error",
            RpcCode::Other(_) => "error",
        }
    }
}

impl std::fmt::Display for RpcCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code(), self.describe())
    }
}

/// Why an RPC failed. URLs are shown without credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The daemon could not be reached (down, restarting, refusing connections) or the
    /// connection broke.
    #[error("daemon at {url} unreachable: {detail}")]
    Transport { url: String, detail: String },
    /// No answer within the timeout.
    #[error("daemon at {url}: no answer within {timeout:?} ({method})")]
    Timeout {
        url: String,
        method: String,
        timeout: Duration,
    },
    /// The daemon refused the credentials (`401`) or the client address (`403`).
    #[error("daemon at {url} refused the login (HTTP {status}): check the RPC user/password or cookie file and rpcallowip")]
    Auth { url: String, status: u16 },
    /// The cookie file could not be read (the daemon may not be up yet).
    #[error("cannot read the daemon's cookie file {path}: {detail}")]
    Cookie { path: PathBuf, detail: String },
    /// The daemon answered with a JSON-RPC error.
    #[error("daemon RPC {method} failed: {code}: {message}")]
    Rpc {
        method: String,
        code: RpcCode,
        message: String,
    },
    /// An HTTP status without a JSON-RPC answer (e.g. `503`, work queue full).
    #[error("daemon at {url} answered HTTP {status} to {method}")]
    Http {
        url: String,
        method: String,
        status: u16,
    },
    /// The answer is not the JSON-RPC document expected.
    #[error("daemon RPC {method}: malformed answer: {detail}")]
    Malformed { method: String, detail: String },
    /// `getblocktemplate` answered, but the template is unusable.
    #[error("daemon's block template refused: {0}")]
    Template(#[from] TemplateError),
}

impl RpcError {
    /// Whether waiting and trying again may succeed: the daemon is down, restarting, busy,
    /// warming up, still syncing or without peers.
    pub fn is_retryable(&self) -> bool {
        match self {
            RpcError::Transport { .. } | RpcError::Timeout { .. } | RpcError::Cookie { .. } => true,
            RpcError::Http { status, .. } => *status >= 500,
            RpcError::Rpc { code, .. } => matches!(
                code,
                RpcCode::InWarmup | RpcCode::InInitialDownload | RpcCode::NotConnected
            ),
            RpcError::Auth { .. } | RpcError::Malformed { .. } | RpcError::Template(_) => false,
        }
    }

    /// Whether an immediate, short-backoff retry is worthwhile (the client's own retry loop):
    /// a broken or refused connection, an unreadable cookie, a warming-up or overloaded daemon.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Transport { .. } | RpcError::Cookie { .. } => true,
            RpcError::Http { status, .. } => *status == 503,
            RpcError::Rpc { code, .. } => *code == RpcCode::InWarmup,
            _ => false,
        }
    }

    /// The JSON-RPC error code, if the daemon sent one.
    pub fn rpc_code(&self) -> Option<RpcCode> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How often, and how patiently, the read-only helpers retry transient failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (`0` counts as `1`).
    pub max_attempts: u32,
    /// Wait before the first retry; each further retry doubles it, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// One attempt only.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// `getblockchaininfo`, the fields the adapter uses.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChainInfo {
    /// `main`, `test`, `regtest`.
    pub chain: String,
    pub blocks: u64,
    #[serde(default)]
    pub headers: u64,
    #[serde(rename = "bestblockhash", deserialize_with = "display_hash")]
    pub best_block_hash: Hash32,
    #[serde(rename = "initialblockdownload", default)]
    pub initial_block_download: bool,
    #[serde(rename = "verificationprogress", default)]
    pub verification_progress: f64,
}

/// `getblockheader <hash> true`, the fields the adapter uses.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BlockHeaderInfo {
    #[serde(deserialize_with = "display_hash")]
    pub hash: Hash32,
    /// Depth in the active chain (1 for the tip), or `-1` when the block is not in it.
    pub confirmations: i64,
    pub height: u64,
    pub version: i64,
    pub time: u64,
    pub bits: String,
    #[serde(
        rename = "previousblockhash",
        default,
        deserialize_with = "optional_display_hash"
    )]
    pub previous_block_hash: Option<Hash32>,
    #[serde(
        rename = "nextblockhash",
        default,
        deserialize_with = "optional_display_hash"
    )]
    pub next_block_hash: Option<Hash32>,
}

impl BlockHeaderInfo {
    /// Whether the block is in the daemon's active chain.
    pub fn in_active_chain(&self) -> bool {
        self.confirmations >= 1
    }
}

fn display_hash<'de, D: Deserializer<'de>>(d: D) -> Result<Hash32, D::Error> {
    let s = String::deserialize(d)?;
    from_display_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a hash")))
}

fn optional_display_hash<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Hash32>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => from_display_hex(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a hash"))),
    }
}

/// The daemon's JSON-RPC endpoint. Cheap to clone; clones share connections and the cookie.
#[derive(Clone)]
pub struct DaemonRpc {
    /// The URL requests go to (as given; may hold userinfo, never shown).
    endpoint: String,
    /// The URL as errors and logs show it.
    shown_url: String,
    auth: RpcAuth,
    timeout: Duration,
    longpoll_timeout: Duration,
    retry: RetryPolicy,
    shared: Arc<Shared>,
}

struct Shared {
    agent: ureq::Agent,
    next_id: AtomicU64,
    /// The cookie's `Authorization` header, once read.
    cookie_header: Mutex<Option<String>>,
}

impl std::fmt::Debug for DaemonRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonRpc")
            .field("url", &self.shown_url)
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("longpoll_timeout", &self.longpoll_timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Default long-poll timeout: Bitcoin Core answers a long poll when the tip changes, or after
/// about a minute when only the mempool did; a quiet chain may hold it much longer.
pub const DEFAULT_LONGPOLL_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest answer read (a full template of a busy chain is a few MB of hex).
const MAX_BODY_BYTES: u64 = 64 << 20;

/// One HTTP exchange's outcome before JSON-RPC interpretation.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl DaemonRpc {
    /// A client for the daemon at `url` (`http://127.0.0.1:9332/`). `timeout` bounds every
    /// request except long polls ([`DaemonRpc::with_longpoll_timeout`]).
    pub fn new(url: impl Into<String>, auth: RpcAuth, timeout: Duration) -> DaemonRpc {
        let url = url.into();
        let config = ureq::Agent::config_builder()
            // Statuses are data here: JSON-RPC errors come with 500 and 404.
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            // Below the daemon's idle keep-alive limit (rpcservertimeout, 30 s by default), so a
            // pooled connection is not reused after the daemon closed it.
            .max_idle_age(Duration::from_secs(10))
            .max_redirects(0)
            .user_agent(concat!("defpool/", env!("CARGO_PKG_VERSION")))
            .build();
        DaemonRpc {
            shown_url: redact_userinfo(&url),
            endpoint: url,
            auth,
            timeout,
            longpoll_timeout: DEFAULT_LONGPOLL_TIMEOUT,
            retry: RetryPolicy::default(),
            shared: Arc::new(Shared {
                agent: config.into(),
                next_id: AtomicU64::new(1),
                cookie_header: Mutex::new(None),
            }),
        }
    }

    /// How long a long-polling `getblocktemplate` may wait.
    pub fn with_longpoll_timeout(mut self, timeout: Duration) -> DaemonRpc {
        self.longpoll_timeout = timeout;
        self
    }

    /// How the read-only helpers retry transient failures.
    pub fn with_retry(mut self, retry: RetryPolicy) -> DaemonRpc {
        self.retry = retry;
        self
    }

    /// The daemon's URL without credentials.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// One JSON-RPC call, one attempt.
    pub async fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, RpcError> {
        self.call_with_timeout(method, params, self.timeout).await
    }

    /// One JSON-RPC call with transient failures retried per the policy. Only for calls that are
    /// safe to repeat.
    pub async fn call_idempotent<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<T, RpcError> {
        self.call_retrying(method, params, self.timeout).await
    }

    async fn call_retrying<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<T, RpcError> {
        let mut attempt = 1;
        loop {
            match self
                .call_with_timeout(method, params.clone(), timeout)
                .await
            {
                Err(e) if e.is_transient() && attempt < self.retry.max_attempts.max(1) => {
                    let wait = self.retry.backoff(attempt);
                    tracing::debug!(method, url = %self.shown_url, error = %e, ?wait, "RPC retry");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_with_timeout<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<T, RpcError> {
        let this = self.clone();
        let method = method.to_string();
        tokio::task::spawn_blocking(move || this.call_blocking(&method, &params, timeout))
            .await
            .map_err(|e| RpcError::Transport {
                url: self.shown_url.clone(),
                detail: format!("RPC task failed: {e}"),
            })?
    }

    /// One call on the current thread (blocking).
    fn call_blocking<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<T, RpcError> {
        let started = Instant::now();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "jsonrpc": "1.0",
            "id": id,
            "method": method,
            "params": params,
        })
        .to_string();
        let mut reply = self.exchange(method, &body, timeout)?;
        if reply.status == 401 && matches!(self.auth, RpcAuth::Cookie(_)) {
            // The daemon may have restarted with a new cookie: read it again, and if it changed,
            // try once more.
            let before = self.cached_cookie();
            self.forget_cookie();
            if Some(self.authorization()?) != before {
                reply = self.exchange(method, &body, timeout)?;
            }
            if reply.status == 401 {
                self.forget_cookie();
            }
        }
        let result = self.interpret(method, id, reply);
        tracing::debug!(
            method,
            url = %self.shown_url,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "daemon RPC"
        );
        result
    }

    fn exchange(&self, method: &str, body: &str, timeout: Duration) -> Result<Reply, RpcError> {
        let authorization = self.authorization()?;
        let sent = self
            .shared
            .agent
            .post(&self.endpoint)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Authorization", &authorization)
            .header("Content-Type", "application/json")
            .send(body.as_bytes());
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                // A refused or broken connection may be a restarted daemon with a new cookie.
                self.forget_cookie();
                return Err(self.transport_error(method, timeout, e));
            }
        };
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport_error(method, timeout, e))?;
        Ok(Reply { status, body })
    }

    fn interpret<T: DeserializeOwned>(
        &self,
        method: &str,
        id: u64,
        reply: Reply,
    ) -> Result<T, RpcError> {
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(default)]
            result: Value,
            #[serde(default)]
            error: Option<ErrorObject>,
            #[serde(default)]
            id: Value,
        }
        #[derive(Deserialize)]
        struct ErrorObject {
            code: i64,
            #[serde(default)]
            message: String,
        }
        let malformed = |detail: String| RpcError::Malformed {
            method: method.to_string(),
            detail,
        };
        if reply.status == 401 || reply.status == 403 {
            return Err(RpcError::Auth {
                url: self.shown_url.clone(),
                status: reply.status,
            });
        }
        let envelope: Envelope = match serde_json::from_slice(&reply.body) {
            Ok(env) => env,
            Err(_) if reply.status != 200 => {
                return Err(RpcError::Http {
                    url: self.shown_url.clone(),
                    method: method.to_string(),
                    status: reply.status,
                })
            }
            Err(e) => return Err(malformed(format!("not a JSON-RPC answer: {e}"))),
        };
        if let Some(error) = envelope.error {
            return Err(RpcError::Rpc {
                method: method.to_string(),
                code: RpcCode::from_code(error.code),
                message: error.message,
            });
        }
        if reply.status != 200 {
            return Err(RpcError::Http {
                url: self.shown_url.clone(),
                method: method.to_string(),
                status: reply.status,
            });
        }
        if envelope.id.as_u64() != Some(id) {
            return Err(malformed(format!(
                "answer id {} does not match request id {id}",
                envelope.id
            )));
        }
        serde_json::from_value(envelope.result).map_err(|e| malformed(e.to_string()))
    }

    /// The `Authorization` header value.
    fn authorization(&self) -> Result<String, RpcError> {
        match &self.auth {
            RpcAuth::UserPass { user, password } => Ok(format!(
                "Basic {}",
                base64(format!("{user}:{}", password.expose()).as_bytes())
            )),
            RpcAuth::Cookie(path) => {
                if let Some(header) = self.cached_cookie() {
                    return Ok(header);
                }
                let cookie_error = |detail: String| RpcError::Cookie {
                    path: path.clone(),
                    detail,
                };
                let text = std::fs::read_to_string(path)
                    .map_err(|e| cookie_error(format!("{}", e.kind())))?;
                let text = text.trim();
                if !text.contains(':') {
                    return Err(cookie_error("not a `user:password` cookie".into()));
                }
                let header = format!("Basic {}", base64(text.as_bytes()));
                *self.lock_cookie() = Some(header.clone());
                Ok(header)
            }
        }
    }

    fn lock_cookie(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.shared
            .cookie_header
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached_cookie(&self) -> Option<String> {
        self.lock_cookie().clone()
    }

    fn forget_cookie(&self) {
        if matches!(self.auth, RpcAuth::Cookie(_)) {
            *self.lock_cookie() = None;
        }
    }

    /// Map a ureq failure to a typed error. Only payload-free descriptions are kept: ureq
    /// errors may carry the request URL, which may hold credentials.
    fn transport_error(&self, method: &str, timeout: Duration, e: ureq::Error) -> RpcError {
        let transport = |detail: String| RpcError::Transport {
            url: self.shown_url.clone(),
            detail,
        };
        let timed_out = || RpcError::Timeout {
            url: self.shown_url.clone(),
            method: method.to_string(),
            timeout,
        };
        match e {
            ureq::Error::Timeout(_) => timed_out(),
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                timed_out()
            }
            ureq::Error::Io(io) => transport(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                kind => format!("{kind}"),
            }),
            ureq::Error::HostNotFound => transport("host not found".into()),
            ureq::Error::ConnectionFailed => transport("connection failed".into()),
            ureq::Error::Protocol(p) => transport(format!("HTTP protocol error: {p}")),
            ureq::Error::BadUri(_) => transport("invalid URL".into()),
            ureq::Error::Tls(t) => transport(format!("TLS: {t}")),
            ureq::Error::Rustls(t) => transport(format!("TLS: {t}")),
            ureq::Error::BodyExceedsLimit(n) => RpcError::Malformed {
                method: method.to_string(),
                detail: format!("answer exceeds {n} bytes"),
            },
            _ => transport("request failed".into()),
        }
    }

    /// `getblocktemplate {"rules": rules}`, parsed and checked. With `longpoll_id` (the previous
    /// template's), the daemon holds the answer until its tip changes (or, after about a minute,
    /// its mempool did); the request may then take up to the long-poll timeout, and a
    /// [`RpcError::Timeout`] only means nothing changed: poll again.
    pub async fn get_block_template(
        &self,
        rules: &[String],
        longpoll_id: Option<String>,
    ) -> Result<BlockTemplate, RpcError> {
        let mut request = serde_json::json!({ "rules": rules });
        let timeout = match longpoll_id {
            Some(id) => {
                request["longpollid"] = Value::String(id);
                self.longpoll_timeout
            }
            None => self.timeout,
        };
        let value: Value = self
            .call_retrying("getblocktemplate", serde_json::json!([request]), timeout)
            .await?;
        Ok(BlockTemplate::from_json(&value)?)
    }

    /// The tip's hash, internal byte order.
    pub async fn get_best_block_hash(&self) -> Result<Hash32, RpcError> {
        let hash: String = self
            .call_idempotent("getbestblockhash", serde_json::json!([]))
            .await?;
        parse_hash("getbestblockhash", &hash)
    }

    /// The hash of the active chain's block at `height`, internal byte order.
    pub async fn get_block_hash(&self, height: u64) -> Result<Hash32, RpcError> {
        let hash: String = self
            .call_idempotent("getblockhash", serde_json::json!([height]))
            .await?;
        parse_hash("getblockhash", &hash)
    }

    /// `getblockheader` of `hash` (internal byte order).
    pub async fn get_block_header(&self, hash: &Hash32) -> Result<BlockHeaderInfo, RpcError> {
        let shown = defpool_core::hash::to_display_hex(hash);
        self.call_idempotent("getblockheader", serde_json::json!([shown, true]))
            .await
    }

    /// `getblockchaininfo`.
    pub async fn get_blockchain_info(&self) -> Result<ChainInfo, RpcError> {
        self.call_idempotent("getblockchaininfo", serde_json::json!([]))
            .await
    }

    /// The number of peers.
    pub async fn get_connection_count(&self) -> Result<u64, RpcError> {
        self.call_idempotent("getconnectioncount", serde_json::json!([]))
            .await
    }

    /// `submitblock`: `None` when the daemon accepted the block, else its reject reason
    /// (`bad-cb-amount`, `high-hash`, `duplicate`, `inconclusive`, …). A block that does not even
    /// decode is an [`RpcError::Rpc`] with [`RpcCode::Deserialization`].
    pub async fn submit_block(&self, block_hex: &str) -> Result<Option<String>, RpcError> {
        let params = serde_json::json!([block_hex]);
        let mut attempt = 1;
        loop {
            match self
                .call::<Option<String>>("submitblock", params.clone())
                .await
            {
                // The first copy arrived after all: the daemon has it, valid.
                Ok(Some(reason)) if attempt > 1 && reason == "duplicate" => return Ok(None),
                Err(e)
                    if matches!(e, RpcError::Transport { .. })
                        && attempt < self.retry.max_attempts.max(1) =>
                {
                    tracing::warn!(url = %self.shown_url, error = %e, "submitblock failed to reach the daemon; resending");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

fn parse_hash(method: &str, text: &str) -> Result<Hash32, RpcError> {
    from_display_hex(text).ok_or_else(|| RpcError::Malformed {
        method: method.to_string(),
        detail: format!("{text:?} is not a block hash"),
    })
}

/// Standard base64 (RFC 4648, with padding), for HTTP basic authentication.
fn base64(input: &[u8]) -> String {
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
    fn userinfo_never_shows() {
        let rpc = DaemonRpc::new(
            "http://alice:hunter2@127.0.0.1:1/",
            RpcAuth::UserPass {
                user: "alice".into(),
                password: Secret::new("hunter2"),
            },
            Duration::from_secs(1),
        );
        let shown = format!("{rpc:?} {}", rpc.url());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn codes_are_named_and_classified() {
        for code in [-1, -3, -5, -8, -9, -10, -22, -25, -28, -32601, -32700, -99] {
            assert_eq!(RpcCode::from_code(code).code(), code);
        }
        assert_eq!(RpcCode::from_code(-10), RpcCode::InInitialDownload);
        assert_eq!(RpcCode::from_code(-9), RpcCode::NotConnected);
        assert_eq!(RpcCode::from_code(-99), RpcCode::Other(-99));
        let rpc = |code| RpcError::Rpc {
            method: "getblocktemplate".into(),
            code: RpcCode::from_code(code),
            message: String::new(),
        };
        assert!(rpc(-10).is_retryable() && rpc(-9).is_retryable() && rpc(-28).is_retryable());
        assert!(!rpc(-10).is_transient() && rpc(-28).is_transient());
        assert!(!rpc(-8).is_retryable() && !rpc(-1).is_retryable() && !rpc(-32601).is_retryable());
        assert!(
            rpc(-10)
                .to_string()
                .contains("-10 (node in initial block download)"),
            "{}",
            rpc(-10)
        );
        let auth = RpcError::Auth {
            url: "http://127.0.0.1:1/".into(),
            status: 401,
        };
        assert!(!auth.is_retryable());
        let down = RpcError::Transport {
            url: "http://127.0.0.1:1/".into(),
            detail: "connection refused".into(),
        };
        assert!(down.is_retryable() && down.is_transient());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        let waits: Vec<u128> = (1..=4).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300, 300]);
    }
}
