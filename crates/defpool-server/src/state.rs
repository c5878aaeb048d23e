//! What the server's tasks share: the store, the validated configuration, the channels between
//! the control plane, the decision loop, the ledger service and the API, the latest market view,
//! counters for `/metrics`, and the clock (injectable, so tests can drive time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use defpool_config::{ServerConfig, Validated};
use defpool_control::Assignment;
use defpool_core::{Algorithm, Ticker};
use defpool_store::Store;
use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};

/// Unix milliseconds now.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// Everything the server's tasks hold in common. Cheap to clone (an `Arc`).
pub struct Shared {
    pub store: Store,
    /// The whole validated configuration (coins registry included).
    pub config: Arc<Validated>,
    /// Assignment changes, pushed by the control plane to every connected proxy of the group.
    pub assignments: broadcast::Sender<Assignment>,
    /// The live feed (SSE and WebSocket subscribers, the demo's status line).
    pub feed: broadcast::Sender<FeedEvent>,
    /// The decision loop's latest view of the market, for the API's profitability table.
    pub market: watch::Sender<MarketView>,
    /// An admin change (whitelist, X/Y/dwell, pin, upstreams) asks the decision loop to
    /// evaluate now instead of at its next tick.
    pub decide_now: Notify,
    /// Block phase changes or a recorded pool payout ask the ledger service to post now. It
    /// also reconciles on a timer and at start, so a missed notification loses nothing.
    pub ledger_now: Notify,
    pub metrics: Metrics,
    pub clock: Clock,
    /// Set once when the server stops: long-lived responses (SSE, WebSocket) end with it.
    pub stopping: watch::Sender<bool>,
}

impl Shared {
    pub fn new(store: Store, config: Arc<Validated>, clock: Clock) -> Arc<Shared> {
        let (assignments, _) = broadcast::channel(256);
        let (feed, _) = broadcast::channel(1024);
        let (market, _) = watch::channel(MarketView::default());
        Arc::new(Shared {
            store,
            config,
            assignments,
            feed,
            market,
            decide_now: Notify::new(),
            ledger_now: Notify::new(),
            metrics: Metrics::default(),
            clock,
            stopping: watch::channel(false).0,
        })
    }

    /// The `[server]` section (present: `run` refuses to start without it).
    pub fn server_config(&self) -> &ServerConfig {
        self.config
            .config
            .server
            .as_ref()
            .expect("the server runs only with a [server] section")
    }

    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Publishes a live-feed event; nobody listening is fine.
    pub fn publish(&self, event: FeedEvent) {
        let _ = self.feed.send(event);
    }
}

/// One live-feed event. Serialized as `{"type": "switch", …}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedEvent {
    /// Periodic pool figures per algorithm group.
    Hashrate {
        at_ms: u64,
        algorithm: Algorithm,
        /// The coin mined now, if any.
        coin: Option<Ticker>,
        /// Hashes per second over the last minutes, from accepted work.
        hashrate_hs: f64,
        workers: u64,
        users: u64,
    },
    /// A new assignment (an engine decision that changed the coin, a pin, an operator's
    /// assignment).
    Switch {
        at_ms: u64,
        group: String,
        algorithm: Algorithm,
        from: Option<String>,
        to: Option<String>,
        epoch: u64,
        /// `initial`, `switch`, `forced`, `pinned`, `admin`.
        kind: String,
        reason: String,
    },
    /// A block changed phase (candidate, found, rejected, immature, matured, orphaned).
    Block {
        at_ms: u64,
        coin: Ticker,
        hash: String,
        height: Option<u64>,
        phase: String,
    },
    /// The ledger posted earnings (a matured block, a pool payout) or reversed them.
    Earnings {
        at_ms: u64,
        coin: Ticker,
        /// The ledger transaction id.
        txn_id: String,
        /// `block`, `block_reversal`, `pool_payout`.
        source: String,
        /// Total credited to users, smallest units (negative for a reversal).
        users_amount: i64,
        fee_amount: i64,
        users: u64,
    },
}

impl FeedEvent {
    /// The event's `type`, for SSE `event:` lines and filters.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::Hashrate { .. } => "hashrate",
            FeedEvent::Switch { .. } => "switch",
            FeedEvent::Block { .. } => "block",
            FeedEvent::Earnings { .. } => "earnings",
        }
    }
}

/// The decision loop's latest evaluation inputs, one row per known coin.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MarketView {
    /// When the view was computed (0: not yet).
    pub updated_ms: u64,
    pub rows: Vec<ProfitRow>,
}

/// One coin in the profitability table: its market inputs and the engine's figure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfitRow {
    pub coin: Ticker,
    pub algorithm: Algorithm,
    /// Decimal strings: prices and difficulties are decimals, never floats.
    pub price_btc: Option<String>,
    pub difficulty: Option<String>,
    /// Smallest units.
    pub block_reward: Option<u64>,
    /// Expected BTC per day per unit hashrate, net of the upstream fee.
    pub profitability: Option<String>,
    /// `TH/s` (sha256d) or `MH/s` (scrypt).
    pub unit: String,
    pub whitelisted: bool,
    pub eligible: bool,
    /// Why not eligible, or damping notes.
    pub reason: Option<String>,
    pub sources: Vec<String>,
    pub observed_at_ms: Option<u64>,
    /// Whether this coin is what its group mines now.
    pub current: bool,
}

/// Counters for `/metrics`. Monotonic unless named as a gauge.
#[derive(Debug, Default)]
pub struct Metrics {
    pub batches_applied: AtomicU64,
    /// Applies of batches: a run of batches queued on a connection counts once.
    pub batch_transactions: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub batches_gap: AtomicU64,
    pub batch_errors: AtomicU64,
    pub work_records: AtomicU64,
    /// Gauge.
    pub proxies_connected: AtomicU64,
    pub assignments_pushed: AtomicU64,
    pub decisions: AtomicU64,
    pub switches: AtomicU64,
    pub market_fetch_errors: AtomicU64,
    pub ledger_postings: AtomicU64,
    pub api_requests: AtomicU64,
    pub api_rate_limited: AtomicU64,
    /// Gauge.
    pub feed_subscribers: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Store setting keys the admin API writes and the decision loop reads (the whitelist lives in
/// the store's coins table, seeded from `[server] whitelist` when empty).
pub mod settings {
    use serde::{Deserialize, Serialize};

    /// [`SwitchingSettings`]; absent: the `[server.switching]` values.
    pub const SWITCHING: &str = "switching";
    /// [`Pins`]; absent or empty: nothing pinned.
    pub const PINS: &str = "pins";

    /// X / Y / dwell as the admin set them.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SwitchingSettings {
        /// X, a decimal string (`"5"`, `"2.5"`).
        pub hysteresis_percent: String,
        /// Y.
        pub hysteresis_minutes: u32,
        pub min_dwell_minutes: u32,
    }

    /// Algorithm (`"sha256d"`, `"scrypt"`) → pinned target id (`"LTC"`).
    pub type Pins = std::collections::BTreeMap<String, String>;
}

/// An external pool's payout for one coin, upstream and period, as the admin records it. It is
/// attributed to users by PROP over the period's work on that coin, minus the pool fee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolPayout {
    pub coin: Ticker,
    /// The upstream's name.
    pub upstream: String,
    /// The period the payout covers, Unix ms, `from_ms < to_ms`.
    pub from_ms: u64,
    pub to_ms: u64,
    /// Smallest units of `coin`, above zero.
    pub amount: i64,
    /// The pool's own reference (payout txid, statement id); recording the same reference
    /// twice posts once.
    pub reference: String,
}
