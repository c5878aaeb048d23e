//! The configuration's shape. Unknown keys are refused everywhere (`deny_unknown_fields`), so a
//! typo is an error, not a silently ignored setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use defpool_core::coin::CoinSpec;
use defpool_core::secret::Secret;
use defpool_core::{Algorithm, Network, Ticker};
use serde::{Deserialize, Serialize};

/// One process's configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which chain every coin of this process uses.
    #[serde(default = "default_network")]
    pub network: Network,
    #[serde(default)]
    pub log: LogConfig,
    /// Coins added by the operator, in the built-in registry's schema.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coins: Vec<CoinSpec>,
    /// Present: this process runs the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerConfig>,
    /// Present: this process runs a proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Where proxies send work, per coin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Coin adapters (solo mode) this process runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterConfig>,
}

fn default_network() -> Network {
    Network::Mainnet
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// REST/GraphQL API, live feed and portal.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// Where proxies connect for assignments and to send batches.
    #[serde(default = "default_control_listen")]
    pub control_listen: SocketAddr,
    /// `sqlite:PATH` (embedded default) or `postgres://…`. A password in it is redacted when the
    /// config is printed (better: set it with `DEFPOOL_SERVER__DATABASE_URL` or a `.pgpass`).
    #[serde(
        default = "default_database_url",
        serialize_with = "serialize_redacted_url"
    )]
    pub database_url: String,
    /// Bearer token for admin endpoints. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// The pool's fee in basis points (100 = 1 %).
    #[serde(default = "default_pool_fee_bps")]
    pub pool_fee_bps: u32,
    /// Minimum payout in BTC, as a decimal string (`"0.001"`).
    #[serde(default = "default_payout_threshold")]
    pub default_payout_threshold_btc: String,
    /// Coins the decision engine may choose.
    #[serde(default)]
    pub whitelist: Vec<Ticker>,
    #[serde(default)]
    pub switching: SwitchingConfig,
    /// Proxies allowed to connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyAuth>,
    /// Market data sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub market: Vec<MarketSourceConfig>,
    /// PPLNS window for solo blocks, as a multiple of the block's expected work (its
    /// network difficulty in work units), a decimal string: `"2"` = the last 2 × D of work.
    #[serde(default = "default_pplns_window_factor")]
    pub pplns_window_factor: String,
    /// Per-client-IP limits on the public API.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// The most batches of one proxy applied in one transaction: those already queued on its
    /// connection behind the one being applied (a proxy keeps up to 64 in flight). 1 applies
    /// each batch alone.
    #[serde(default = "default_ingest_run_batches")]
    pub ingest_run_batches: u32,
}

/// A token bucket per client IP on the public API endpoints (admin endpoints, `/health` and
/// `/metrics` are not limited).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client IP (the bucket's refill rate).
    #[serde(default = "default_rate_per_sec")]
    pub requests_per_sec: u32,
    /// Requests a client may make at once (the bucket's size).
    #[serde(default = "default_rate_burst")]
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_sec: default_rate_per_sec(),
            burst: default_rate_burst(),
        }
    }
}

fn default_rate_per_sec() -> u32 {
    20
}
fn default_rate_burst() -> u32 {
    60
}

fn default_pplns_window_factor() -> String {
    "2".into()
}

fn serialize_redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    if url.contains("://") {
        s.serialize_str(&defpool_core::secret::redact_userinfo(url))
    } else {
        s.serialize_str(url)
    }
}

fn default_api_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid")
}
fn default_control_listen() -> SocketAddr {
    "127.0.0.1:3340".parse().expect("valid")
}
fn default_database_url() -> String {
    "sqlite:defpool.db".into()
}
fn default_ingest_run_batches() -> u32 {
    32
}
fn default_pool_fee_bps() -> u32 {
    100
}
fn default_payout_threshold() -> String {
    "0.001".into()
}

/// The decision engine's hysteresis.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchingConfig {
    /// A challenger must be this many percent more profitable (X)…
    #[serde(default = "default_hysteresis_percent")]
    pub hysteresis_percent: f64,
    /// …continuously for this many minutes (Y).
    #[serde(default = "default_hysteresis_minutes")]
    pub hysteresis_minutes: u32,
    /// Minimum minutes on a coin between two non-forced switches.
    #[serde(default = "default_min_dwell_minutes")]
    pub min_dwell_minutes: u32,
    /// Market data older than this makes a coin ineligible.
    #[serde(default = "default_stale_after_secs")]
    pub stale_after_secs: u32,
}

impl Default for SwitchingConfig {
    fn default() -> Self {
        SwitchingConfig {
            hysteresis_percent: default_hysteresis_percent(),
            hysteresis_minutes: default_hysteresis_minutes(),
            min_dwell_minutes: default_min_dwell_minutes(),
            stale_after_secs: default_stale_after_secs(),
        }
    }
}

fn default_hysteresis_percent() -> f64 {
    5.0
}
fn default_hysteresis_minutes() -> u32 {
    10
}
fn default_min_dwell_minutes() -> u32 {
    30
}
fn default_stale_after_secs() -> u32 {
    900
}

/// A proxy the server accepts on its control port.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyAuth {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// A source of market data.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketSourceConfig {
    pub kind: MarketSourceKind,
    /// Base URL (exchanges, aggregator, daemon RPC) or file path (CSV replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Coins this source reports on (empty: all whitelisted coins).
    #[serde(default)]
    pub coins: Vec<Ticker>,
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Simulator seed (kind = "simulator").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Simulator only: wall-clock seconds per simulated step (default: the simulator's own
    /// step, 60 s). The demo uses a few seconds so prices cross within minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_secs: Option<u32>,
}

fn default_poll_secs() -> u32 {
    60
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarketSourceKind {
    Daemon,
    Binance,
    Kraken,
    Kucoin,
    Whattomine,
    Csv,
    Simulator,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// This proxy's identity toward the server.
    pub id: String,
    /// Proxy group: proxies of one group mine the same assignment.
    #[serde(default = "default_group")]
    pub group: String,
    /// The server's control address (`tcp://host:port`). Omit when this process also runs the
    /// server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_token: Option<Secret>,
    /// The durable share outbox (SQLite, WAL).
    #[serde(default = "default_outbox_path")]
    pub outbox_path: PathBuf,
    /// Milliseconds the outbox gathers accepted shares, counted from when the first was sent,
    /// before committing them together; a share is answered once committed. The timer fires on
    /// the next whole millisecond, so the default 1 waits 1 to 2 ms. 0 commits whatever is
    /// waiting at once: answers sooner, for more proxy CPU per share under load.
    #[serde(default = "default_outbox_commit_interval_ms")]
    pub outbox_commit_interval_ms: u32,
    /// Noise authority key pair for SV2 ports (base58check, as the SRI tools print them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_secret_key: Option<Secret>,
    /// Local admin endpoint (loopback only) for operators and tests.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// Seconds that shares for the previous coin's jobs are still accepted after a switch.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u32,
    /// An upstream that sends no job for this long is stalled: miners fail over.
    #[serde(default = "default_stall_job_secs")]
    pub upstream_stall_job_secs: u32,
    /// An upstream that leaves a submitted share unanswered this long is stalled.
    #[serde(default = "default_stall_submit_secs")]
    pub upstream_stall_submit_secs: u32,
    /// Of an upstream's last 20 share results, this many rejects mark it down.
    #[serde(default = "default_reject_streak")]
    pub upstream_reject_streak: u32,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
}

fn default_stall_job_secs() -> u32 {
    120
}
fn default_stall_submit_secs() -> u32 {
    30
}
fn default_reject_streak() -> u32 {
    15
}

fn default_group() -> String {
    "default".into()
}
fn default_outbox_commit_interval_ms() -> u32 {
    1
}
fn default_outbox_path() -> PathBuf {
    "defpool-outbox.db".into()
}
fn default_admin_listen() -> SocketAddr {
    "127.0.0.1:3341".parse().expect("valid")
}
fn default_grace_secs() -> u32 {
    10
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StratumProtocol {
    Sv1,
    Sv2,
}

/// One miner-facing listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub algorithm: Algorithm,
    pub protocol: StratumProtocol,
    pub listen: SocketAddr,
    /// Share difficulty in the stratum convention of the algorithm (scrypt: 2^16 × network
    /// convention).
    #[serde(default = "default_start_difficulty")]
    pub start_difficulty: f64,
    #[serde(default = "default_min_difficulty")]
    pub min_difficulty: f64,
    #[serde(default = "default_max_difficulty")]
    pub max_difficulty: f64,
    /// Vardiff aims at this many shares per minute per connection.
    #[serde(default = "default_shares_per_minute")]
    pub shares_per_minute: f64,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u32,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
}

fn default_start_difficulty() -> f64 {
    1024.0
}
fn default_min_difficulty() -> f64 {
    1.0
}
fn default_max_difficulty() -> f64 {
    1e15
}
fn default_shares_per_minute() -> f64 {
    20.0
}
fn default_max_connections() -> u32 {
    50_000
}
fn default_idle_timeout_secs() -> u32 {
    600
}
fn default_max_message_bytes() -> u32 {
    16 * 1024
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Sv2,
    Sv1,
    Adapter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayoutScheme {
    /// Our own blocks (coin adapter).
    Solo,
    Pplns,
    Pps,
    Prop,
}

/// An upstream for one coin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub coin: Ticker,
    pub protocol: UpstreamProtocol,
    /// `stratum+tcp://host:port` (SV1) or `stratum2+tcp://host:port` (SV2, adapter).
    pub url: String,
    /// The SV2 authority public key the upstream must present (SV2, adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_public_key: Option<String>,
    #[serde(default)]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// The upstream's fee in basis points.
    #[serde(default)]
    pub fee_bps: u32,
    #[serde(default = "default_payout_scheme")]
    pub payout_scheme: PayoutScheme,
    /// Seconds of earnings forfeited when leaving (a PPLNS window), for switch decisions.
    #[serde(default)]
    pub switch_cost_secs: u32,
}

impl UpstreamConfig {
    /// The upstream as assignments carry it to proxies (credentials included: the control
    /// channel is the one place they travel).
    pub fn to_upstream_ref(&self) -> defpool_control::UpstreamRef {
        use defpool_control::UpstreamKind;
        defpool_control::UpstreamRef {
            name: self.name.clone(),
            coin: self.coin.clone(),
            kind: match self.protocol {
                UpstreamProtocol::Sv1 => UpstreamKind::Sv1,
                UpstreamProtocol::Sv2 => UpstreamKind::Sv2,
                UpstreamProtocol::Adapter => UpstreamKind::Adapter,
            },
            address: self.url.clone(),
            authority_public_key: self.authority_public_key.clone(),
            username: self.username.clone(),
            password: self.password.clone().unwrap_or_else(|| Secret::new("")),
        }
    }
}

fn default_payout_scheme() -> PayoutScheme {
    PayoutScheme::Pplns
}

/// A coin adapter: an SV2 pool over a coin daemon (solo mode).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub name: String,
    pub coin: Ticker,
    /// SV2 listener for proxies.
    pub listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_secret_key: Option<Secret>,
    /// The daemon's JSON-RPC URL (`http://127.0.0.1:9332`).
    pub rpc_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_password: Option<Secret>,
    /// Cookie file written by the daemon, instead of user and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_cookie_file: Option<PathBuf>,
    /// Address the coinbase pays.
    pub payout_address: String,
    #[serde(default = "default_coinbase_tag")]
    pub coinbase_tag: String,
    /// Extranonce bytes reserved for proxies and their miners.
    #[serde(default = "default_extranonce_size")]
    pub extranonce_size: u8,
    /// Regtest only: a network difficulty (network convention) that block candidates must
    /// meet, stricter than the chain's, so regtest chains do not advance on every share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_target_difficulty: Option<f64>,
    #[serde(default = "default_template_refresh_secs")]
    pub template_refresh_secs: u32,
    /// The server's control plane (`tcp://host:port`) for block events, when the server runs
    /// elsewhere. Without it an adapter in a file that also has `[server]` connects to that
    /// server (with its `[[server.proxies]]` token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// Required with `server_url`: the token `[[server.proxies]]` lists for this adapter's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_token: Option<Secret>,
    /// The adapter's durable event outbox (found blocks, maturity); default
    /// `defpool-adapter-<name>.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_path: Option<PathBuf>,
}

fn default_coinbase_tag() -> String {
    "/DefPool/".into()
}
fn default_extranonce_size() -> u8 {
    16
}
fn default_template_refresh_secs() -> u32 {
    30
}
