//! The server's storage: one interface, [`Store`], over SQLite (the embedded default, WAL mode)
//! and PostgreSQL (production), chosen by URL.
//!
//! * **Batches** from proxies and coin adapters apply exactly once ([`Store::apply_batch`]): the
//!   sequence check, every row the batch adds and the new sequence commit in one transaction,
//!   so the server acknowledges a batch only after it is durable and a retransmission is
//!   recognised as a duplicate.
//! * **Work** is a `u128` of expected hashes, exact everywhere: PostgreSQL keeps it as
//!   `NUMERIC(39,0)`; SQLite as four 32-bit limbs whose `SUM`s are exact in 64-bit integers and
//!   are assembled in Rust. Work is booked per user, worker, coin, epoch, upstream and minute,
//!   with per-minute rollups per user and per coin for charts (hours and days are aggregated
//!   from minutes at query time).
//! * **Money** is `i64` in each coin's smallest unit in a double-entry ledger: a transaction's
//!   entries sum to zero per coin or it is refused, and its id makes posting idempotent.
//! * **Server state**: decisions with their inputs, current assignments, the coin whitelist,
//!   settings, upstream terms, and an audit log written in the same transaction as every admin
//!   change.
//!
//! Migrations are embedded per backend and applied by [`Store::migrate`] in one transaction,
//! recorded in `schema_migrations` with checksums.

mod error;
mod fold;
mod migrate;
mod postgres;
mod prepare;
mod sqlite;
mod types;
mod work;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use defpool_control::{Assignment, Batch, HealthState, ProxyId};
use defpool_core::{Algorithm, Ticker};

pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use types::*;

/// Connection settings beyond the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// PostgreSQL pool size; SQLite read connections (SQLite always has one writer).
    pub max_connections: u32,
    /// SQLite `synchronous=FULL` (default): every commit is fsynced, so an acknowledged batch
    /// or a posted ledger transaction survives power loss, not only a killed process. Off:
    /// `synchronous=NORMAL`, which survives `kill -9` but may lose the last commits on power
    /// loss.
    pub sqlite_fsync_each_commit: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            sqlite_fsync_each_commit: true,
        }
    }
}

/// The name of migration `version` for `backend` (as `schema_migrations` records it).
pub fn migration_name(backend: Backend, version: i64) -> Option<&'static str> {
    let list = match backend {
        Backend::Sqlite => migrate::SQLITE,
        Backend::Postgres => migrate::POSTGRES,
    };
    list.iter().find(|m| m.version == version).map(|m| m.name)
}

/// How often a PostgreSQL transaction that lost a deadlock is retried.
const RETRIES: u32 = 5;

/// The store. Cheap to clone; clones share the connection pools.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens the database named by `url`: `sqlite:PATH` (created if missing),
    /// `sqlite::memory:`, or `postgres://…` / `postgresql://…`. Does not migrate.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(url, &StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Store::Sqlite(SqliteStore::connect(url, options).await?)),
            "postgres" | "postgresql" => Ok(Store::Postgres(PgStore::connect(url, options).await?)),
            other => Err(StoreError::UnsupportedUrl {
                scheme: other.chars().take(32).collect(),
            }),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the pools (waits for connections in use to come back).
    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    /// Applies the migrations this build has and the database lacks, in one transaction.
    /// Idempotent; refuses a database migrated by a newer build or whose applied migrations
    /// differ from this build's.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        dispatch!(self, s => s.migrate().await)
    }

    // ---- batches ----

    /// Applies a proxy's (or adapter's) batch exactly once: only if its sequence is the one
    /// after the last applied for that proxy. In one transaction: the sequence, users (first
    /// seen), workers (registered once; their last share and share counts live on the work
    /// rows), rejects by reason, work per user/worker/coin/epoch/upstream/minute, the minute
    /// rollups, and the events (blocks merged by hash with their history, upstream health,
    /// switch timings). A batch applied before is
    /// [`ApplyOutcome::Duplicate`] (acknowledge it again); one after a missing batch is
    /// [`ApplyOutcome::Gap`]. Concurrent calls with the same batch apply it once.
    pub async fn apply_batch(&self, batch: &Batch) -> Result<ApplyOutcome, StoreError> {
        Ok(match self.apply_run(std::slice::from_ref(batch)).await? {
            RunOutcome::Applied(mut summaries) => {
                ApplyOutcome::Applied(summaries.pop().unwrap_or_default())
            }
            RunOutcome::Refused(outcome) => outcome,
        })
    }

    /// Applies batches that a proxy sent one after another, each exactly once, with one
    /// outcome per batch in order. A run of consecutive sequences of one proxy applies in one
    /// transaction, its records added up by key across the run (a worker's records of the
    /// same minute make one row): what a server does with the batches queued behind the one
    /// it is applying, so that a busy proxy costs fewer, larger transactions. A run that is not
    /// consecutive, or whose first batch is not the next one expected, is applied batch by
    /// batch with the outcomes of [`Store::apply_batch`]. For a run applied together,
    /// `work_rows` is counted on its last batch's summary.
    pub async fn apply_batches(&self, run: &[Batch]) -> Result<Vec<ApplyOutcome>, StoreError> {
        if run.is_empty() {
            return Ok(Vec::new());
        }
        let consecutive = run.windows(2).all(|w| {
            w[1].proxy_id == w[0].proxy_id && Some(w[1].sequence) == w[0].sequence.checked_add(1)
        });
        if run.len() > 1 && !consecutive {
            return self.apply_one_by_one(run).await;
        }
        match self.apply_run(run).await? {
            RunOutcome::Applied(summaries) => {
                Ok(summaries.into_iter().map(ApplyOutcome::Applied).collect())
            }
            RunOutcome::Refused(outcome) if run.len() == 1 => Ok(vec![outcome]),
            RunOutcome::Refused(_) => self.apply_one_by_one(run).await,
        }
    }

    async fn apply_one_by_one(&self, run: &[Batch]) -> Result<Vec<ApplyOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(run.len());
        for batch in run {
            outcomes.push(self.apply_batch(batch).await?);
        }
        Ok(outcomes)
    }

    /// One transaction for a run of consecutive batches (or one batch), then the fold it made
    /// due.
    async fn apply_run(&self, run: &[Batch]) -> Result<RunOutcome, StoreError> {
        let (outcome, fold) = match self {
            Store::Sqlite(s) => s.apply_run(run).await?,
            Store::Postgres(s) => {
                let mut attempt = 0;
                loop {
                    match s.apply_run(run).await {
                        Err(e) if e.is_retryable() && attempt < RETRIES => {
                            attempt += 1;
                            tracing::debug!(error = %e, attempt, "retrying a batch after a deadlock");
                        }
                        other => break other?,
                    }
                }
            }
        };
        if let Some(horizon) = fold {
            // The batch is committed: a failed fold is only logged, and the next batch retries.
            if let Err(e) = dispatch!(self, s => s.fold(horizon).await) {
                tracing::warn!(error = %e, "folding old work into worker and user figures failed; the next batch retries");
            }
        }
        Ok(outcome)
    }

    /// The last sequence applied for `proxy` (0 if none).
    pub async fn last_sequence(&self, proxy: &ProxyId) -> Result<u64, StoreError> {
        dispatch!(self, s => s.last_sequence(proxy).await)
    }

    // ---- work ----

    /// Credited work per coin in minutes `from_ms <= minute < to_ms`.
    pub async fn work_by_coin(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<Ticker, u128>, StoreError> {
        dispatch!(self, s => s.work_by_coin(from_ms, to_ms).await)
    }

    /// Credited work per user on `coin` in minutes `from_ms <= minute < to_ms`, optionally only
    /// work sent to one upstream (PROP over an external pool's payout period).
    pub async fn work_by_user(
        &self,
        coin: &Ticker,
        upstream: Option<&str>,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<String, u128>, StoreError> {
        dispatch!(self, s => s.work_by_user(coin, upstream, from_ms, to_ms).await)
    }

    /// The PPLNS window: the most recent work on `coin` (optionally one upstream) in minutes
    /// starting at or before `until_ms`, going back minute by minute until `window_work` is
    /// covered, per user. See [`PplnsWindow`] for the boundary minute.
    pub async fn work_window_before(
        &self,
        coin: &Ticker,
        upstream: Option<&str>,
        until_ms: u64,
        window_work: u128,
    ) -> Result<PplnsWindow, StoreError> {
        let mut walk = work::WindowWalk::new(window_work);
        if walk.done() {
            return Ok(walk.finish());
        }
        let oldest = dispatch!(self, s => s.oldest_work_minute(coin, upstream).await)?;
        let Some(oldest) = oldest else {
            return Ok(walk.finish());
        };
        let mut through = clamp_i64(until_ms);
        // Read an hour first, then twice as far back each time.
        let mut span: i64 = 3_600_000;
        while through >= oldest {
            let after = through.saturating_sub(span);
            let rows = dispatch!(self, s => s.work_by_minute_and_user(coin, upstream, after, through).await)?;
            let mut rows = rows.into_iter().peekable();
            while let Some((minute, user, w)) = rows.next() {
                let mut users = BTreeMap::from([(user, w)]);
                while let Some((_, user, w)) = rows.next_if(|(m, _, _)| *m == minute) {
                    let slot = users.entry(user).or_insert(0);
                    *slot = prepare::add_work(*slot, w, "a minute")?;
                }
                let minute = error::to_u64("minute", minute)?;
                walk.minute(minute, users)?;
                if walk.done() {
                    return Ok(walk.finish());
                }
            }
            through = after;
            span = span.saturating_mul(2).min(30 * 86_400_000);
        }
        Ok(walk.finish())
    }

    /// All credited work ever stored.
    pub async fn total_work(&self) -> Result<u128, StoreError> {
        dispatch!(self, s => s.total_work().await)
    }

    pub async fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        dispatch!(self, s => s.users().await)
    }

    pub async fn user(&self, user: &str) -> Result<Option<UserInfo>, StoreError> {
        dispatch!(self, s => s.user(user).await)
    }

    pub async fn workers(&self, user: &str) -> Result<Vec<WorkerInfo>, StoreError> {
        dispatch!(self, s => s.workers(user).await)
    }

    /// Work per worker of `user` in minutes `from_ms <= minute < to_ms` (hashrate, reject and
    /// stale rates).
    pub async fn worker_work(
        &self,
        user: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<WorkerWork>, StoreError> {
        dispatch!(self, s => s.worker_work(user, from_ms, to_ms).await)
    }

    /// A user's work per bucket and coin (optionally one coin), oldest first.
    pub async fn hashrate_series(
        &self,
        user: &str,
        coin: Option<&Ticker>,
        bucket: Bucket,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        dispatch!(self, s => s.hashrate_series(Some(user), coin, bucket, from_ms, to_ms).await)
    }

    /// The pool's work per bucket and coin (optionally one coin), oldest first.
    pub async fn pool_series(
        &self,
        coin: Option<&Ticker>,
        bucket: Bucket,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        dispatch!(self, s => s.hashrate_series(None, coin, bucket, from_ms, to_ms).await)
    }

    // ---- blocks and events ----

    /// Blocks, newest first (by first sighting), optionally of one coin.
    pub async fn blocks(
        &self,
        coin: Option<&Ticker>,
        limit: u32,
    ) -> Result<Vec<BlockInfo>, StoreError> {
        dispatch!(self, s => s.blocks(coin, limit).await)
    }

    pub async fn block(&self, hash: &str) -> Result<Option<BlockInfo>, StoreError> {
        dispatch!(self, s => s.block(hash).await)
    }

    /// Every event of a block, in the order applied.
    pub async fn block_history(&self, hash: &str) -> Result<Vec<BlockEventInfo>, StoreError> {
        dispatch!(self, s => s.block_history(hash).await)
    }

    /// Upstream health reports, newest first.
    pub async fn upstream_health(&self, limit: u32) -> Result<Vec<UpstreamHealthInfo>, StoreError> {
        dispatch!(self, s => s.upstream_health(limit).await)
    }

    /// Switch timings, newest first.
    pub async fn switch_timings(&self, limit: u32) -> Result<Vec<SwitchTimingInfo>, StoreError> {
        dispatch!(self, s => s.switch_timings(limit).await)
    }

    // ---- ledger ----

    /// Posts a ledger transaction: refused unless its entries sum to zero per coin; idempotent
    /// on `txn_id` (posting the same entries and memo again is [`PostOutcome::AlreadyPosted`],
    /// different ones [`StoreError::TxnConflict`]). Entries and balances commit together.
    pub async fn post_entries(
        &self,
        txn_id: &str,
        entries: &[LedgerEntry],
        memo: &str,
    ) -> Result<PostOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.post_entries(txn_id, entries, memo).await,
            Store::Postgres(s) => {
                let mut attempt = 0;
                loop {
                    match s.post_entries(txn_id, entries, memo).await {
                        Err(e) if e.is_retryable() && attempt < RETRIES => attempt += 1,
                        other => return other,
                    }
                }
            }
        }
    }

    pub async fn ledger_txn(&self, txn_id: &str) -> Result<Option<LedgerTxn>, StoreError> {
        dispatch!(self, s => s.ledger_txn(txn_id).await)
    }

    pub async fn balance(&self, account: &str, coin: &Ticker) -> Result<i64, StoreError> {
        dispatch!(self, s => s.balance(account, coin).await)
    }

    /// Non-zero and zero balances of an account that ever had entries, per coin.
    pub async fn balances(&self, account: &str) -> Result<BTreeMap<Ticker, i64>, StoreError> {
        dispatch!(self, s => s.balances(account).await)
    }

    /// An account's entries, newest first.
    pub async fn account_entries(
        &self,
        account: &str,
        limit: u32,
    ) -> Result<Vec<AccountEntry>, StoreError> {
        dispatch!(self, s => s.account_entries(account, limit).await)
    }

    /// The sum of every entry of `coin`: zero unless the ledger is broken.
    pub async fn ledger_sum(&self, coin: &Ticker) -> Result<i64, StoreError> {
        let text = dispatch!(self, s => s.ledger_sum(coin).await)?;
        parse_sum("ledger sum", &text)
    }

    /// Checks the whole ledger: entries sum to zero and the balances table agrees with them.
    /// Returns `(sum of entries, sum of balances)`, both zero when healthy.
    pub async fn ledger_check(&self) -> Result<(i64, i64), StoreError> {
        let (a, b) = dispatch!(self, s => s.ledger_sums().await)?;
        Ok((parse_sum("ledger sum", &a)?, parse_sum("balance sum", &b)?))
    }

    // ---- server state ----

    /// Records a decision of the switching engine; returns its id.
    pub async fn record_decision(&self, decision: &Decision) -> Result<i64, StoreError> {
        dispatch!(self, s => s.record_decision(decision).await)
    }

    /// Decisions, newest first.
    pub async fn recent_decisions(&self, limit: u32) -> Result<Vec<DecisionRecord>, StoreError> {
        dispatch!(self, s => s.recent_decisions(limit).await)
    }

    /// Stores the current assignment of its (group, algorithm) if its epoch is higher than the
    /// stored one's. Note: the assignment carries upstream credentials; they are stored as the
    /// proxies need them.
    pub async fn save_assignment(
        &self,
        assignment: &Assignment,
    ) -> Result<SaveAssignment, StoreError> {
        dispatch!(self, s => s.save_assignment(assignment).await)
    }

    pub async fn current_assignment(
        &self,
        group: &str,
        algorithm: Algorithm,
    ) -> Result<Option<Assignment>, StoreError> {
        dispatch!(self, s => s.current_assignment(group, algorithm).await)
    }

    /// Every current assignment, by group and algorithm.
    pub async fn assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        dispatch!(self, s => s.assignments().await)
    }

    /// The whitelist, by ticker.
    pub async fn coins(&self) -> Result<Vec<CoinSetting>, StoreError> {
        dispatch!(self, s => s.coins().await)
    }

    /// Adds a coin to the whitelist or enables/disables it; audited as `set-coin`.
    pub async fn set_coin(
        &self,
        actor: &str,
        coin: &Ticker,
        enabled: bool,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_coin(actor, coin, enabled).await)
    }

    /// Removes a coin from the whitelist; audited as `remove-coin`. Whether it was there.
    pub async fn remove_coin(&self, actor: &str, coin: &Ticker) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remove_coin(actor, coin).await)
    }

    pub async fn setting(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        dispatch!(self, s => s.setting(key).await)
    }

    pub async fn settings(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        dispatch!(self, s => s.settings().await)
    }

    /// Sets a setting (X, Y, dwell, a pinned coin, …); audited as `set-setting`.
    pub async fn set_setting(
        &self,
        actor: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_setting(actor, key, value).await)
    }

    /// Writes an audit line for an action not covered by the audited setters; returns its id.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        details: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        dispatch!(self, s => s.audit(actor, action, details).await)
    }

    /// The audit log, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        dispatch!(self, s => s.audit_log(limit).await)
    }

    /// Registered upstreams, by name.
    pub async fn upstreams(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        dispatch!(self, s => s.upstreams().await)
    }

    /// Registers an upstream or replaces its terms; audited as `upsert-upstream`.
    pub async fn upsert_upstream(
        &self,
        actor: &str,
        terms: &UpstreamTerms,
    ) -> Result<(), StoreError> {
        if terms.fee_bps > 10_000 {
            return Err(StoreError::OutOfRange {
                what: "fee_bps",
                value: terms.fee_bps.to_string(),
            });
        }
        dispatch!(self, s => s.upsert_upstream(actor, terms).await)
    }

    /// Removes an upstream; audited as `remove-upstream`. Whether it was there.
    pub async fn remove_upstream(&self, actor: &str, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remove_upstream(actor, name).await)
    }

    // ---- read-only queries for the API (added with the server API) ----

    /// `(users, workers, workers with a share at or after active_since_ms)`: the pool status
    /// counts, in one read instead of a query per user.
    pub async fn pool_counts(&self, active_since_ms: u64) -> Result<(u64, u64, u64), StoreError> {
        dispatch!(self, s => s.pool_counts(active_since_ms).await)
    }

    /// Every `(coin, user, worker)` with credited work in minutes at or after `since_ms`: who
    /// mined what lately (hashrate events per algorithm).
    pub async fn active_workers(
        &self,
        since_ms: u64,
    ) -> Result<Vec<(Ticker, String, String)>, StoreError> {
        dispatch!(self, s => s.active_workers(since_ms).await)
    }
}

// ---- helpers shared by the backends ----

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `u64` bound (time) as a signed column value; beyond `i64::MAX` means "no bound".
pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What a backend did with a run of batches: applied all of them (a summary per batch), or
/// refused the run because its first batch is not the next one expected.
pub(crate) enum RunOutcome {
    Applied(Vec<ApplySummary>),
    Refused(ApplyOutcome),
}

/// The summaries of a run applied together: each batch's own counts, the run's rows and events
/// as written.
pub(crate) fn run_summaries(
    p: &prepare::Prepared<'_>,
    mut events: Vec<(usize, Vec<BlockChange>)>,
) -> Vec<ApplySummary> {
    let last = p.tallies.len().saturating_sub(1);
    p.tallies
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (n, block_changes) = std::mem::take(&mut events[i]);
            ApplySummary {
                work_records: t.work_records,
                work_rows: if i == last { p.work.len() } else { 0 },
                work: t.work,
                user_records: t.user_records,
                events: n,
                block_changes,
            }
        })
        .collect()
}

/// The outcome of a batch whose sequence is not `last + 1`.
pub(crate) fn refused(sequence: u64, last: u64) -> ApplyOutcome {
    if sequence <= last {
        ApplyOutcome::Duplicate {
            last_sequence: last,
        }
    } else {
        ApplyOutcome::Gap { expected: last + 1 }
    }
}

/// Checks a ledger transaction balances; returns the change per (account, coin).
pub(crate) fn check_entries(
    txn_id: &str,
    entries: &[LedgerEntry],
) -> Result<BTreeMap<(String, String), i64>, StoreError> {
    if entries.is_empty() {
        return Err(StoreError::EmptyTransaction {
            txn_id: txn_id.to_string(),
        });
    }
    let mut per_coin: BTreeMap<&Ticker, i128> = BTreeMap::new();
    let mut changes: BTreeMap<(String, String), i128> = BTreeMap::new();
    for e in entries {
        *per_coin.entry(&e.coin).or_insert(0) += i128::from(e.amount);
        *changes
            .entry((e.account.clone(), e.coin.as_str().to_string()))
            .or_insert(0) += i128::from(e.amount);
    }
    if let Some((coin, sum)) = per_coin.into_iter().find(|(_, s)| *s != 0) {
        return Err(StoreError::Unbalanced {
            txn_id: txn_id.to_string(),
            coin: coin.clone(),
            sum,
        });
    }
    changes
        .into_iter()
        .map(|(k, v)| {
            i64::try_from(v)
                .map(|v| (k, v))
                .map_err(|_| StoreError::OutOfRange {
                    what: "an account's change in one transaction",
                    value: v.to_string(),
                })
        })
        .collect()
}

/// A transaction id seen before: the same transaction, or a conflict.
pub(crate) fn compare_txn(
    txn_id: &str,
    stored: Option<LedgerTxn>,
    entries: &[LedgerEntry],
    memo: &str,
) -> Result<PostOutcome, StoreError> {
    let conflict = || StoreError::TxnConflict {
        txn_id: txn_id.to_string(),
    };
    let stored = stored.ok_or_else(conflict)?;
    let mut a = stored.entries;
    let mut b = entries.to_vec();
    a.sort();
    b.sort();
    if a == b && stored.memo == memo {
        Ok(PostOutcome::AlreadyPosted)
    } else {
        Err(conflict())
    }
}

/// An assignment that did not replace the stored one: the same one, or a stale one.
pub(crate) fn compare_assignment(
    offered: &Assignment,
    stored_epoch: u64,
    stored_body: &str,
) -> Result<SaveAssignment, StoreError> {
    let stored: Assignment =
        serde_json::from_str(stored_body).map_err(|e| error::corrupt("assignment", e))?;
    Ok(if stored == *offered {
        SaveAssignment::Unchanged
    } else {
        SaveAssignment::Stale {
            current_epoch: stored_epoch,
        }
    })
}

pub(crate) fn health_str(h: HealthState) -> &'static str {
    match h {
        HealthState::Up => "up",
        HealthState::Degraded => "degraded",
        HealthState::Down => "down",
    }
}

pub(crate) fn parse_health(s: &str) -> Result<HealthState, StoreError> {
    match s {
        "up" => Ok(HealthState::Up),
        "degraded" => Ok(HealthState::Degraded),
        "down" => Ok(HealthState::Down),
        other => Err(error::corrupt("health state", format!("`{other}`"))),
    }
}

fn parse_sum(what: &'static str, text: &str) -> Result<i64, StoreError> {
    let int = text.split('.').next().unwrap_or(text);
    let v: i128 = int
        .parse()
        .map_err(|e| error::corrupt(what, format!("`{text}`: {e}")))?;
    i64::try_from(v).map_err(|_| StoreError::OutOfRange {
        what,
        value: v.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_rule_matches_the_control_crate() {
        use defpool_control::{SequenceCheck, SequenceLedger};
        for last in 0..5u64 {
            let mut ledger = SequenceLedger::default();
            let p = ProxyId("p".into());
            if last > 0 {
                ledger.mark_applied(&p, last);
            }
            for n in 0..8u64 {
                let expected = ledger.check(&p, n);
                if n == last + 1 {
                    assert_eq!(expected, SequenceCheck::Apply);
                } else {
                    let ours = refused(n, last);
                    match (expected, ours) {
                        (SequenceCheck::Duplicate, ApplyOutcome::Duplicate { .. }) => {}
                        (SequenceCheck::Gap { expected: a }, ApplyOutcome::Gap { expected: b }) => {
                            assert_eq!(a, b)
                        }
                        (a, b) => panic!("{n} after {last}: {a:?} vs {b:?}"),
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn urls_choose_the_backend() {
        let err = Store::connect("mysql://user:secret@host/db")
            .await
            .unwrap_err();
        assert!(matches!(&err, StoreError::UnsupportedUrl { scheme } if scheme == "mysql"));
        assert!(!err.to_string().contains("secret"), "{err}");
        let s = Store::connect("sqlite::memory:").await.unwrap();
        assert_eq!(s.backend(), Backend::Sqlite);
        assert_eq!(s.migrate().await.unwrap().applied, vec![1, 2, 3, 4]);
        assert_eq!(s.total_work().await.unwrap(), 0);
        s.close().await;
    }

    #[test]
    fn entries_must_balance() {
        let btc: Ticker = "BTC".parse().unwrap();
        let ltc: Ticker = "LTC".parse().unwrap();
        let e = |a: &str, c: &Ticker, v| LedgerEntry {
            account: a.into(),
            coin: c.clone(),
            amount: v,
        };
        assert!(matches!(
            check_entries("t", &[]),
            Err(StoreError::EmptyTransaction { .. })
        ));
        assert!(matches!(
            check_entries("t", &[e("a", &btc, 5), e("b", &btc, -5), e("c", &ltc, 1)]),
            Err(StoreError::Unbalanced { sum: 1, .. })
        ));
        let ok =
            check_entries("t", &[e("a", &btc, 5), e("a", &btc, 5), e("b", &btc, -10)]).unwrap();
        assert_eq!(ok[&("a".to_string(), "BTC".to_string())], 10);
        // i64 extremes do not overflow the check.
        assert!(check_entries("t", &[e("a", &btc, i64::MAX), e("b", &btc, i64::MAX)]).is_err());
    }
}
