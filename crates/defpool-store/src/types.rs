//! What goes in and comes out of the store.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use defpool_control::{Event, HealthState, ProxyId};
use defpool_core::{Algorithm, Ticker};
use serde::{Deserialize, Serialize};

/// Which database a [`crate::Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What [`crate::Store::migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order (empty when the schema was current).
    pub applied: Vec<i64>,
    /// The schema version now.
    pub version: i64,
}

/// What happened to a batch offered to [`crate::Store::apply_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The next batch of its proxy: applied and its sequence recorded, in one transaction.
    Applied(ApplySummary),
    /// Applied before (a retransmission): acknowledge again; nothing was applied.
    Duplicate { last_sequence: u64 },
    /// A batch is missing before this one: refused; the proxy resends from `expected`.
    Gap { expected: u64 },
}

impl ApplyOutcome {
    /// Whether the proxy may be acknowledged (and drop the batch from its outbox).
    pub fn acknowledge(&self) -> bool {
        !matches!(self, ApplyOutcome::Gap { .. })
    }
}

/// What an applied batch changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub work_records: usize,
    /// Rows of the `work` table written (records of one key and minute are added up first).
    pub work_rows: usize,
    /// Credited work (accepted + late) in the batch.
    pub work: u128,
    pub user_records: usize,
    pub events: usize,
    /// Blocks whose phase changed, in the order of their events.
    pub block_changes: Vec<BlockChange>,
}

/// A block moving to a new phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockChange {
    pub block_hash: String,
    pub coin: Ticker,
    /// `None` for a block first seen in this batch.
    pub from: Option<BlockPhase>,
    pub to: BlockPhase,
}

/// Where a block stands in the store: a proxy's candidate, then the adapter's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockPhase {
    /// A share met the network target and went upstream (the only phase of pool-mode blocks).
    Candidate,
    /// The adapter submitted it and the node accepted it.
    Found,
    /// The node refused it.
    Rejected,
    Immature,
    /// Spendable: creditable.
    Matured,
    Orphaned,
}

impl BlockPhase {
    pub const ALL: [BlockPhase; 6] = [
        BlockPhase::Candidate,
        BlockPhase::Found,
        BlockPhase::Rejected,
        BlockPhase::Immature,
        BlockPhase::Matured,
        BlockPhase::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockPhase::Candidate => "candidate",
            BlockPhase::Found => "found",
            BlockPhase::Rejected => "rejected",
            BlockPhase::Immature => "immature",
            BlockPhase::Matured => "matured",
            BlockPhase::Orphaned => "orphaned",
        }
    }
}

impl fmt::Display for BlockPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlockPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown block phase `{s}`"))
    }
}

/// A user as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub user: String,
    pub payout_address: Option<String>,
    pub first_seen_ms: u64,
    /// The end of the latest work period of any of its workers (`first_seen_ms` if none).
    pub last_seen_ms: u64,
}

/// A worker's lifetime counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    pub user: String,
    pub worker: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// The end of the last period with accepted or late shares.
    pub last_share_ms: Option<u64>,
    pub accepted_shares: u64,
    pub late_shares: u64,
    pub rejected_shares: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
}

/// A worker's work over a period (for hashrate and reject rates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerWork {
    pub worker: String,
    pub work: u128,
    /// Accepted plus late shares.
    pub shares: u64,
    pub rejected_shares: u64,
    pub stale_shares: u64,
}

/// Chart resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    pub fn millis(self) -> u64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }
}

/// Work in one chart bucket on one coin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SeriesPoint {
    /// Start of the bucket (Unix milliseconds, a multiple of the bucket's length).
    pub bucket_ms: u64,
    pub coin: Ticker,
    pub work: u128,
    /// Accepted plus late shares.
    pub shares: u64,
    pub rejected_shares: u64,
    pub stale_shares: u64,
}

/// The PPLNS window before a block: the most recent work on a coin, going back until the
/// window's work is covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PplnsWindow {
    /// Work per user inside the window. The oldest minute included is usually only partly
    /// inside: its work is scaled down pro rata across its users (largest remainders get the
    /// odd units, ties by user name) so that the total is exactly the window.
    pub per_user: BTreeMap<String, u128>,
    /// `min(window_work, all work on record up to the block)`.
    pub total: u128,
    /// Start of the oldest minute that contributed.
    pub oldest_minute_ms: Option<u64>,
    /// Whether the recorded work covered the whole window (false: the pool has less history).
    pub complete: bool,
}

/// A block as stored: its candidate and adapter events merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockInfo {
    pub block_hash: String,
    pub coin: Ticker,
    pub height: Option<u64>,
    pub phase: BlockPhase,
    /// Coinbase value in the coin's smallest unit (solo blocks, from the adapter).
    pub reward: Option<u64>,
    pub adapter: Option<String>,
    /// The adapter's channel user whose share it was (a proxy's identity at the adapter).
    pub found_by: Option<String>,
    /// From the proxy's candidate: where it went and whose share it was.
    pub upstream: Option<String>,
    pub user: Option<String>,
    pub worker: Option<String>,
    pub epoch: Option<u64>,
    pub confirmations: Option<i64>,
    /// Why the node refused it.
    pub reason: Option<String>,
    pub first_seen_ms: u64,
    pub found_at_ms: Option<u64>,
    pub updated_at_ms: u64,
}

/// One event in a block's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockEventInfo {
    pub block_hash: String,
    pub phase: BlockPhase,
    pub confirmations: Option<i64>,
    pub detail: Option<String>,
    pub at_ms: u64,
    /// The batch it came in.
    pub proxy_id: ProxyId,
    pub sequence: u64,
}

/// An upstream's health as one proxy reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpstreamHealthInfo {
    pub proxy_id: ProxyId,
    pub upstream: String,
    pub coin: Ticker,
    pub state: HealthState,
    pub reason: String,
    pub at_ms: u64,
}

/// A switch timing as a proxy reported it ([`Event::SwitchTiming`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchTimingInfo {
    pub proxy_id: ProxyId,
    pub event: Event,
}

/// One line of a ledger transaction. Amounts are in the coin's smallest unit; debits and
/// credits are signs (the entries of a transaction sum to zero per coin).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub account: String,
    pub coin: Ticker,
    pub amount: i64,
}

/// What [`crate::Store::post_entries`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostOutcome {
    Posted,
    /// The same transaction (id, entries and memo) was posted before: nothing changed.
    AlreadyPosted,
}

/// A posted ledger transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerTxn {
    pub txn_id: String,
    pub memo: String,
    pub posted_at_ms: u64,
    /// In the order they were posted.
    pub entries: Vec<LedgerEntry>,
}

/// One entry of an account's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountEntry {
    pub txn_id: String,
    pub coin: Ticker,
    pub amount: i64,
    pub memo: String,
    pub posted_at_ms: u64,
}

/// A decision of the switching engine, with what it was based on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub group: String,
    pub algorithm: Algorithm,
    pub epoch: u64,
    /// The coin chosen (none: nothing profitable or nothing whitelisted).
    pub coin: Option<Ticker>,
    pub reason: String,
    /// The engine's inputs (market data, scores), as JSON.
    pub inputs: serde_json::Value,
    pub at_ms: u64,
}

/// A stored [`Decision`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub id: i64,
    #[serde(flatten)]
    pub decision: Decision,
}

/// What [`crate::Store::save_assignment`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveAssignment {
    /// A higher epoch than the stored one (or the first): saved.
    Saved,
    /// The very same assignment was stored already.
    Unchanged,
    /// The stored epoch is higher, or equal with a different assignment: refused.
    Stale { current_epoch: u64 },
}

/// A whitelisted coin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CoinSetting {
    pub ticker: Ticker,
    pub enabled: bool,
    pub updated_at_ms: u64,
}

/// An admin audit line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub details: serde_json::Value,
}

/// An upstream registered for a coin, with its terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamTerms {
    /// Unique name (as the proxies know it).
    pub name: String,
    pub coin: Ticker,
    /// `sv2`, `sv1` or `adapter`.
    pub protocol: String,
    /// The upstream's fee in basis points (0..=10,000).
    pub fee_bps: u32,
    /// `solo`, `pplns`, `pps` or `prop`.
    pub payout_scheme: String,
    /// Seconds of earnings forfeited when leaving (a PPLNS window).
    pub switch_cost_secs: u32,
    /// Anything else (URL, account); never secrets: audit lines copy it.
    pub details: serde_json::Value,
    pub enabled: bool,
}

/// A stored [`UpstreamTerms`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpstreamRecord {
    #[serde(flatten)]
    pub terms: UpstreamTerms,
    pub updated_at_ms: u64,
}
