//! The PostgreSQL backend: a connection pool, `READ COMMITTED` transactions, bulk writes as
//! `INSERT … SELECT FROM UNNEST(arrays)` (one statement per table per batch). Work is
//! `NUMERIC(39,0)`, passed in and out as decimal text.
//!
//! Concurrency: the sequence check is a conditional `UPDATE` of the proxy's row (or the
//! first `INSERT`), so two transactions applying the same batch serialise on that row and the
//! second sees the first's sequence; rows are written in key order, so batches of different
//! proxies touching the same users lock them in the same order (a deadlock that still
//! happens is retried by [`crate::Store`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use defpool_control::{Assignment, Batch, Event, ProxyId};
use defpool_core::{Algorithm, Ticker};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use crate::error::{corrupt, db, to_i64, to_u64, StoreError};
use crate::fold::{
    first_minute_from, fold_due, fold_tail, fold_until, fold_workers, late_folds, select_users,
    work_in_minutes, Dialect, LateFold, COINS_WITH_WORK, FOLD_HEAD,
};
use crate::migrate::{self, Migration};
use crate::prepare::{prepare, BlockUpdate, Known, Prepared, UserRow, WorkerRow};
use crate::types::*;
use crate::work::parse_decimal;
use crate::{check_entries, clamp_i64, now_ms, run_summaries, RunOutcome, StoreOptions};

/// PostgreSQL storage. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    known_users: Known,
    known_workers: Known,
}

fn get<'r, T>(row: &'r PgRow, i: usize, what: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i).map_err(|e| corrupt(what, e))
}

fn get_u64(row: &PgRow, i: usize, what: &'static str) -> Result<u64, StoreError> {
    to_u64(what, get(row, i, what)?)
}

fn get_opt_u64(row: &PgRow, i: usize, what: &'static str) -> Result<Option<u64>, StoreError> {
    get::<Option<i64>>(row, i, what)?
        .map(|v| to_u64(what, v))
        .transpose()
}

/// A work column selected as `::text`.
fn get_work(row: &PgRow, i: usize) -> Result<u128, StoreError> {
    parse_decimal("work", get::<Option<String>>(row, i, "work")?.as_deref())
}

fn ticker(s: String) -> Result<Ticker, StoreError> {
    Ticker::from_str(&s).map_err(|e| corrupt("coin ticker", e))
}

fn json(what: &'static str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

impl PgStore {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(db("parsing the PostgreSQL URL"))?;
        // One direct connection first: the pool would retry a refused connection until its
        // timeout and then report only the timeout, not why.
        sqlx::Connection::close(
            <PgConnection as sqlx::Connection>::connect_with(&connect)
                .await
                .map_err(db("connecting to PostgreSQL"))?,
        )
        .await
        .map_err(db("connecting to PostgreSQL"))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await
            .map_err(db("connecting to PostgreSQL"))?;
        Ok(PgStore {
            pool,
            known_users: Known::default(),
            known_workers: Known::default(),
        })
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning migrations"))?;
        // One migrator per schema at a time (several servers may start together).
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('defpool-migrate:' || current_schema()))",
        )
        .execute(&mut *tx)
        .await
        .map_err(db("locking for migrations"))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
             name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(db("creating schema_migrations"))?;
        let rows = sqlx::query("SELECT version, checksum FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading schema_migrations"))?;
        let applied = rows
            .iter()
            .map(|r| {
                Ok((
                    get(r, 0, "migration version")?,
                    get(r, 1, "migration checksum")?,
                ))
            })
            .collect::<Result<Vec<(i64, String)>, StoreError>>()?;
        let pending = migrate::pending(migrate::POSTGRES, &applied)?;
        let mut report = MigrationReport {
            applied: Vec::new(),
            version: migrate::latest(migrate::POSTGRES),
        };
        for m in pending {
            apply_migration(&mut tx, &m).await?;
            report.applied.push(m.version);
        }
        tx.commit().await.map_err(db("committing migrations"))?;
        Ok(report)
    }

    /// Applies a run of consecutive batches of one proxy (see [`Store::apply_batches`]); with
    /// the outcome, the horizon of a fold now due (see [`fold_due`]).
    pub(crate) async fn apply_run(
        &self,
        run: &[Batch],
    ) -> Result<(RunOutcome, Option<i64>), StoreError> {
        let p = prepare(run)?;
        let mut tx = self.pool.begin().await.map_err(db("beginning a batch"))?;
        if let Some(outcome) = advance_sequence(&mut tx, &p).await? {
            tx.rollback().await.map_err(db("ending a refused batch"))?;
            return Ok((RunOutcome::Refused(outcome), None));
        }
        let new_users = self.known_users.unknown(&p.users);
        let new_workers = self.known_workers.unknown(&p.workers);
        write_rows(&mut tx, &p, &new_users, &new_workers).await?;
        // Which rows are late (their minute already folded) is decided last, under the fold
        // lock, so that a fold waits only for batches at this point and not for their rows.
        let folded_before = fold_horizon_locked(&mut tx, false).await?;
        write_late_user_minutes(&mut tx, &p, folded_before).await?;
        write_late_folds(&mut tx, &late_folds(&p.work, folded_before)?).await?;
        write_coin_minutes(&mut tx, &p).await?;
        let mut events = Vec::with_capacity(run.len());
        for (batch, sequence) in run.iter().zip(p.first_sequence..) {
            let (mut n, mut changes) = (0, Vec::new());
            for record in &batch.records {
                if let defpool_control::Record::Event(e) = record {
                    n += 1;
                    if let Some(change) = write_event(&mut tx, &p, sequence, e).await? {
                        changes.push(change);
                    }
                }
            }
            events.push((n, changes));
        }
        tx.commit().await.map_err(db("committing a batch"))?;
        self.known_users.remember(&p.users);
        self.known_workers.remember(&p.workers);
        let fold = fold_due(p.newest_minute_ms, folded_before, clamp_i64(now_ms()));
        Ok((RunOutcome::Applied(run_summaries(&p, events)), fold))
    }

    /// Folds the work rows of unfolded minutes towards `horizon` (one step, see
    /// [`fold_until`]) into the workers' folded columns and the user rollup.
    pub(crate) async fn fold(&self, horizon: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("beginning a fold"))?;
        let from = fold_horizon_locked(&mut tx, true).await?;
        if horizon <= from {
            return Ok(());
        }
        let first: Option<i64> = sqlx::query_scalar(&first_minute_from())
            .bind(from)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("finding the first unfolded minute"))?;
        let until = fold_until(from, first, horizon);
        let folded = sqlx::query(&fold_workers(Dialect::Postgres))
            .bind(from)
            .bind(until)
            .execute(&mut *tx)
            .await
            .map_err(db("folding work into worker totals"))?
            .rows_affected();
        sqlx::query(&format!(
            "WITH RECURSIVE {COINS_WITH_WORK} INSERT INTO user_minute (user_name, minute_ms, \
             coin, work, shares, rejected_shares, stale_shares, last_seen_ms) \
             SELECT w.user_name, w.minute_ms, w.coin, SUM(w.work), \
             SUM(w.accepted_shares + w.late_shares), SUM(w.rejected_shares), \
             SUM(w.stale_shares), MAX(w.last_seen_ms) FROM {} \
             GROUP BY w.user_name, w.minute_ms, w.coin \
             ORDER BY w.user_name, w.minute_ms, w.coin {USER_MINUTE_CONFLICT}",
            work_in_minutes("$1", "$2")
        ))
        .bind(from)
        .bind(until)
        .execute(&mut *tx)
        .await
        .map_err(db("folding work into user rollups"))?;
        sqlx::query("UPDATE work_fold SET folded_before_ms = $1")
            .bind(until)
            .execute(&mut *tx)
            .await
            .map_err(db("moving the fold horizon"))?;
        tx.commit().await.map_err(db("committing a fold"))?;
        tracing::debug!(
            from,
            until,
            workers = folded,
            "folded work into worker totals and user rollups"
        );
        Ok(())
    }

    pub(crate) async fn last_sequence(&self, proxy: &ProxyId) -> Result<u64, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_sequence FROM proxies WHERE proxy_id = $1")
                .bind(&proxy.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a proxy's sequence"))?;
        last.map_or(Ok(0), |v| to_u64("last_sequence", v))
    }

    pub(crate) async fn work_by_coin(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<Ticker, u128>, StoreError> {
        let rows = sqlx::query(
            "SELECT coin, SUM(work)::text FROM coin_minute \
             WHERE minute_ms >= $1 AND minute_ms < $2 GROUP BY coin",
        )
        .bind(clamp_i64(from_ms))
        .bind(clamp_i64(to_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(db("summing work by coin"))?;
        rows.iter()
            .map(|r| Ok((ticker(get(r, 0, "coin")?)?, get_work(r, 1)?)))
            .collect()
    }

    pub(crate) async fn work_by_user(
        &self,
        coin: &Ticker,
        upstream: Option<&str>,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<String, u128>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_name, SUM(work)::text FROM work \
             WHERE coin = $1 AND minute_ms >= $2 AND minute_ms < $3 \
             AND ($4::text IS NULL OR upstream = $4) GROUP BY user_name",
        )
        .bind(coin.as_str())
        .bind(clamp_i64(from_ms))
        .bind(clamp_i64(to_ms))
        .bind(upstream)
        .fetch_all(&self.pool)
        .await
        .map_err(db("summing work by user"))?;
        rows.iter()
            .map(|r| Ok((get(r, 0, "user")?, get_work(r, 1)?)))
            .collect()
    }

    pub(crate) async fn oldest_work_minute(
        &self,
        coin: &Ticker,
        upstream: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT MIN(minute_ms) FROM work WHERE coin = $1 \
             AND ($2::text IS NULL OR upstream = $2)",
        )
        .bind(coin.as_str())
        .bind(upstream)
        .fetch_one(&self.pool)
        .await
        .map_err(db("finding the oldest work"))
    }

    pub(crate) async fn work_by_minute_and_user(
        &self,
        coin: &Ticker,
        upstream: Option<&str>,
        after: i64,
        through: i64,
    ) -> Result<Vec<(i64, String, u128)>, StoreError> {
        let rows = sqlx::query(
            "SELECT minute_ms, user_name, SUM(work)::text FROM work \
             WHERE coin = $1 AND minute_ms > $2 AND minute_ms <= $3 \
             AND ($4::text IS NULL OR upstream = $4) \
             GROUP BY minute_ms, user_name ORDER BY minute_ms DESC, user_name",
        )
        .bind(coin.as_str())
        .bind(after)
        .bind(through)
        .bind(upstream)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the PPLNS window"))?;
        rows.iter()
            .map(|r| Ok((get(r, 0, "minute")?, get(r, 1, "user")?, get_work(r, 2)?)))
            .collect()
    }

    pub(crate) async fn total_work(&self) -> Result<u128, StoreError> {
        let row = sqlx::query("SELECT SUM(work)::text FROM work")
            .fetch_one(&self.pool)
            .await
            .map_err(db("summing all work"))?;
        get_work(&row, 0)
    }

    pub(crate) async fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        let rows = sqlx::query(&select_users(Dialect::Postgres, false))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing users"))?;
        rows.iter().map(user_info).collect()
    }

    pub(crate) async fn user(&self, user: &str) -> Result<Option<UserInfo>, StoreError> {
        let row = sqlx::query(&select_users(Dialect::Postgres, true))
            .bind(user)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a user"))?;
        row.as_ref().map(user_info).transpose()
    }

    pub(crate) async fn workers(&self, user: &str) -> Result<Vec<WorkerInfo>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("beginning a read"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db("starting a snapshot"))?;
        // Folded totals plus the rows after the fold horizon.
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE {COINS_WITH_WORK}, recent AS (SELECT w.worker, \
             MAX(w.last_seen_ms) AS last_seen_ms, MAX(w.last_share_ms) AS last_share_ms, \
             SUM(w.accepted_shares) AS accepted, SUM(w.late_shares) AS late, \
             SUM(w.rejected_shares) AS rejected FROM {} AND w.user_name = $1 \
             GROUP BY w.worker) \
             SELECT r.user_name, r.worker, r.first_seen_ms, \
             COALESCE(GREATEST(r.folded_last_seen_ms, k.last_seen_ms), r.first_seen_ms), \
             GREATEST(r.folded_last_share_ms, k.last_share_ms), \
             (r.folded_accepted_shares + COALESCE(k.accepted, 0))::bigint, \
             (r.folded_late_shares + COALESCE(k.late, 0))::bigint, \
             (r.folded_rejected_shares + COALESCE(k.rejected, 0))::bigint FROM workers r \
             LEFT JOIN recent k ON k.worker = r.worker \
             WHERE r.user_name = $1 ORDER BY r.worker",
            work_in_minutes("(SELECT folded_before_ms FROM work_fold)", "$2")
        ))
        .bind(user)
        .bind(i64::MAX)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("listing workers"))?;
        let rejects =
            sqlx::query("SELECT worker, reason, shares FROM worker_rejects WHERE user_name = $1")
                .bind(user)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("reading rejects"))?;
        tx.rollback().await.map_err(db("ending a read"))?;
        let mut by_worker: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for r in &rejects {
            by_worker
                .entry(get(r, 0, "worker")?)
                .or_default()
                .insert(get(r, 1, "reject reason")?, get_u64(r, 2, "reject count")?);
        }
        rows.iter()
            .map(|r| {
                let worker: String = get(r, 1, "worker")?;
                Ok(WorkerInfo {
                    user: get(r, 0, "user")?,
                    rejected_by_reason: by_worker.remove(&worker).unwrap_or_default(),
                    worker,
                    first_seen_ms: get_u64(r, 2, "first_seen_ms")?,
                    last_seen_ms: get_u64(r, 3, "last_seen_ms")?,
                    last_share_ms: get_opt_u64(r, 4, "last_share_ms")?,
                    accepted_shares: get_u64(r, 5, "accepted_shares")?,
                    late_shares: get_u64(r, 6, "late_shares")?,
                    rejected_shares: get_u64(r, 7, "rejected_shares")?,
                })
            })
            .collect()
    }

    pub(crate) async fn worker_work(
        &self,
        user: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<WorkerWork>, StoreError> {
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE {COINS_WITH_WORK} SELECT w.worker, SUM(w.work)::text, \
             COALESCE(SUM(w.accepted_shares + w.late_shares), 0)::bigint, \
             COALESCE(SUM(w.rejected_shares), 0)::bigint, \
             COALESCE(SUM(w.stale_shares), 0)::bigint FROM {} \
             AND w.user_name = $1 GROUP BY w.worker ORDER BY w.worker",
            work_in_minutes("$2", "$3")
        ))
        .bind(user)
        .bind(clamp_i64(from_ms))
        .bind(clamp_i64(to_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(db("summing work by worker"))?;
        rows.iter()
            .map(|r| {
                Ok(WorkerWork {
                    worker: get(r, 0, "worker")?,
                    work: get_work(r, 1)?,
                    shares: get_u64(r, 2, "shares")?,
                    rejected_shares: get_u64(r, 3, "rejected shares")?,
                    stale_shares: get_u64(r, 4, "stale shares")?,
                })
            })
            .collect()
    }

    pub(crate) async fn hashrate_series(
        &self,
        user: Option<&str>,
        coin: Option<&Ticker>,
        bucket: Bucket,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let size = bucket.millis() as i64;
        let cols = "(minute_ms / $5::bigint) * $5::bigint AS b, coin, SUM(work)::text, \
                    COALESCE(SUM(shares), 0)::bigint, COALESCE(SUM(rejected_shares), 0)::bigint, \
                    COALESCE(SUM(stale_shares), 0)::bigint";
        let tail = "minute_ms >= $2 AND minute_ms < $3 AND ($4::text IS NULL OR coin = $4) \
                    GROUP BY b, coin ORDER BY b, coin";
        let sql = match user {
            // Folded minutes from the user's rollup, later ones from its work rows.
            Some(_) => format!(
                "WITH RECURSIVE {COINS_WITH_WORK}, rows AS (SELECT minute_ms, coin, work, \
                 shares, rejected_shares, stale_shares FROM user_minute \
                 WHERE user_name = $1 AND minute_ms >= $2 AND minute_ms < $3 \
                 AND minute_ms < (SELECT folded_before_ms FROM work_fold) \
                 UNION ALL SELECT w.minute_ms, w.coin, w.work, \
                 w.accepted_shares + w.late_shares, w.rejected_shares, w.stale_shares FROM {} \
                 AND w.user_name = $1) SELECT {cols} FROM rows WHERE {tail}",
                work_in_minutes(
                    "GREATEST($2::bigint, (SELECT folded_before_ms FROM work_fold))",
                    "$3"
                )
            ),
            None => format!("SELECT {cols} FROM coin_minute WHERE $1::text IS NULL AND {tail}"),
        };
        let rows = sqlx::query(&sql)
            .bind(user)
            .bind(clamp_i64(from_ms))
            .bind(clamp_i64(to_ms))
            .bind(coin.map(|c| c.as_str()))
            .bind(size)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading a hashrate series"))?;
        rows.iter()
            .map(|r| {
                Ok(SeriesPoint {
                    bucket_ms: get_u64(r, 0, "bucket")?,
                    coin: ticker(get(r, 1, "coin")?)?,
                    work: get_work(r, 2)?,
                    shares: get_u64(r, 3, "shares")?,
                    rejected_shares: get_u64(r, 4, "rejected shares")?,
                    stale_shares: get_u64(r, 5, "stale shares")?,
                })
            })
            .collect()
    }

    pub(crate) async fn blocks(
        &self,
        coin: Option<&Ticker>,
        limit: u32,
    ) -> Result<Vec<BlockInfo>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE ($1::text IS NULL OR coin = $1) \
             ORDER BY first_seen_ms DESC, block_hash LIMIT $2"
        ))
        .bind(coin.map(|c| c.as_str()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing blocks"))?;
        rows.iter().map(block_info).collect()
    }

    pub(crate) async fn block(&self, hash: &str) -> Result<Option<BlockInfo>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE block_hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a block"))?;
        row.as_ref().map(block_info).transpose()
    }

    pub(crate) async fn block_history(
        &self,
        hash: &str,
    ) -> Result<Vec<BlockEventInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT block_hash, phase, confirmations, detail, at_ms, proxy_id, sequence \
             FROM block_events WHERE block_hash = $1 ORDER BY id",
        )
        .bind(hash)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a block's history"))?;
        rows.iter()
            .map(|r| {
                Ok(BlockEventInfo {
                    block_hash: get(r, 0, "block hash")?,
                    phase: phase(get(r, 1, "block phase")?)?,
                    confirmations: get(r, 2, "confirmations")?,
                    detail: get(r, 3, "detail")?,
                    at_ms: get_u64(r, 4, "at_ms")?,
                    proxy_id: ProxyId(get(r, 5, "proxy id")?),
                    sequence: get_u64(r, 6, "sequence")?,
                })
            })
            .collect()
    }

    pub(crate) async fn upstream_health(
        &self,
        limit: u32,
    ) -> Result<Vec<UpstreamHealthInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT proxy_id, upstream, coin, state, reason, at_ms FROM upstream_health \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading upstream health"))?;
        rows.iter()
            .map(|r| {
                Ok(UpstreamHealthInfo {
                    proxy_id: ProxyId(get(r, 0, "proxy id")?),
                    upstream: get(r, 1, "upstream")?,
                    coin: ticker(get(r, 2, "coin")?)?,
                    state: crate::parse_health(&get::<String>(r, 3, "health state")?)?,
                    reason: get(r, 4, "reason")?,
                    at_ms: get_u64(r, 5, "at_ms")?,
                })
            })
            .collect()
    }

    pub(crate) async fn switch_timings(
        &self,
        limit: u32,
    ) -> Result<Vec<SwitchTimingInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT proxy_id, body::text FROM switch_timings ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading switch timings"))?;
        rows.iter()
            .map(|r| {
                let body: String = get(r, 1, "switch timing")?;
                Ok(SwitchTimingInfo {
                    proxy_id: ProxyId(get(r, 0, "proxy id")?),
                    event: serde_json::from_str(&body).map_err(|e| corrupt("switch timing", e))?,
                })
            })
            .collect()
    }

    // ---- ledger ----

    pub(crate) async fn post_entries(
        &self,
        txn_id: &str,
        entries: &[LedgerEntry],
        memo: &str,
    ) -> Result<PostOutcome, StoreError> {
        let balances = check_entries(txn_id, entries)?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a ledger transaction"))?;
        // A concurrent post of the same id waits here for the first to commit, then sees it.
        let inserted = sqlx::query(
            "INSERT INTO ledger_txns (txn_id, memo, posted_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (txn_id) DO NOTHING",
        )
        .bind(txn_id)
        .bind(memo)
        .bind(clamp_i64(now_ms()))
        .execute(&mut *tx)
        .await
        .map_err(db("recording a ledger transaction"))?
        .rows_affected();
        if inserted == 0 {
            let stored = read_txn(&mut tx, txn_id).await?;
            tx.rollback()
                .await
                .map_err(db("ending a repeated transaction"))?;
            return crate::compare_txn(txn_id, stored, entries, memo);
        }
        let accounts: Vec<&str> = entries.iter().map(|e| e.account.as_str()).collect();
        let coins: Vec<&str> = entries.iter().map(|e| e.coin.as_str()).collect();
        let amounts: Vec<i64> = entries.iter().map(|e| e.amount).collect();
        sqlx::query(
            "INSERT INTO ledger_entries (txn_id, account, coin, amount) \
             SELECT $1, a, c, v FROM UNNEST($2::text[], $3::text[], $4::bigint[]) \
             WITH ORDINALITY AS t(a, c, v, n) ORDER BY n",
        )
        .bind(txn_id)
        .bind(&accounts)
        .bind(&coins)
        .bind(&amounts)
        .execute(&mut *tx)
        .await
        .map_err(db("writing ledger entries"))?;
        let accounts: Vec<&str> = balances.keys().map(|(a, _)| a.as_str()).collect();
        let coins: Vec<&str> = balances.keys().map(|(_, c)| c.as_str()).collect();
        let amounts: Vec<i64> = balances.values().copied().collect();
        sqlx::query(
            "INSERT INTO balances (account, coin, amount) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
             ON CONFLICT (account, coin) DO UPDATE SET amount = balances.amount + EXCLUDED.amount",
        )
        .bind(&accounts)
        .bind(&coins)
        .bind(&amounts)
        .execute(&mut *tx)
        .await
        .map_err(db("updating balances"))?;
        tx.commit()
            .await
            .map_err(db("committing a ledger transaction"))?;
        Ok(PostOutcome::Posted)
    }

    pub(crate) async fn ledger_txn(&self, txn_id: &str) -> Result<Option<LedgerTxn>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("acquiring a connection"))?;
        read_txn(&mut conn, txn_id).await
    }

    pub(crate) async fn balance(&self, account: &str, coin: &Ticker) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT amount FROM balances WHERE account = $1 AND coin = $2")
                .bind(account)
                .bind(coin.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a balance"))?;
        Ok(v.unwrap_or(0))
    }

    pub(crate) async fn balances(
        &self,
        account: &str,
    ) -> Result<BTreeMap<Ticker, i64>, StoreError> {
        let rows = sqlx::query("SELECT coin, amount FROM balances WHERE account = $1")
            .bind(account)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading balances"))?;
        rows.iter()
            .map(|r| Ok((ticker(get(r, 0, "coin")?)?, get(r, 1, "balance")?)))
            .collect()
    }

    pub(crate) async fn account_entries(
        &self,
        account: &str,
        limit: u32,
    ) -> Result<Vec<AccountEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.txn_id, e.coin, e.amount, t.memo, t.posted_at_ms FROM ledger_entries e \
             JOIN ledger_txns t ON t.txn_id = e.txn_id WHERE e.account = $1 \
             ORDER BY e.id DESC LIMIT $2",
        )
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading an account's entries"))?;
        rows.iter()
            .map(|r| {
                Ok(AccountEntry {
                    txn_id: get(r, 0, "txn id")?,
                    coin: ticker(get(r, 1, "coin")?)?,
                    amount: get(r, 2, "amount")?,
                    memo: get(r, 3, "memo")?,
                    posted_at_ms: get_u64(r, 4, "posted_at_ms")?,
                })
            })
            .collect()
    }

    pub(crate) async fn ledger_sums(&self) -> Result<(String, String), StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE((SELECT SUM(amount) FROM ledger_entries), 0)::text, \
             COALESCE((SELECT SUM(amount) FROM balances), 0)::text",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("summing the ledger"))?;
        Ok((get(&row, 0, "ledger sum")?, get(&row, 1, "balance sum")?))
    }

    pub(crate) async fn ledger_sum(&self, coin: &Ticker) -> Result<String, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount), 0)::text FROM ledger_entries WHERE coin = $1",
        )
        .bind(coin.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db("summing the ledger"))
    }

    // ---- server state ----

    pub(crate) async fn record_decision(&self, d: &Decision) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO decisions (group_name, algorithm, epoch, coin, reason, inputs, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) RETURNING id",
        )
        .bind(&d.group)
        .bind(d.algorithm.as_str())
        .bind(to_i64("decision epoch", d.epoch)?)
        .bind(d.coin.as_ref().map(|c| c.as_str()))
        .bind(&d.reason)
        .bind(d.inputs.to_string())
        .bind(to_i64("decision at_ms", d.at_ms)?)
        .fetch_one(&self.pool)
        .await
        .map_err(db("recording a decision"))
    }

    pub(crate) async fn recent_decisions(
        &self,
        limit: u32,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, group_name, algorithm, epoch, coin, reason, inputs::text, at_ms \
             FROM decisions ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading decisions"))?;
        rows.iter()
            .map(|r| {
                let inputs: String = get(r, 6, "decision inputs")?;
                Ok(DecisionRecord {
                    id: get(r, 0, "decision id")?,
                    decision: Decision {
                        group: get(r, 1, "group")?,
                        algorithm: algorithm(get(r, 2, "algorithm")?)?,
                        epoch: get_u64(r, 3, "epoch")?,
                        coin: get::<Option<String>>(r, 4, "coin")?
                            .map(ticker)
                            .transpose()?,
                        reason: get(r, 5, "reason")?,
                        inputs: json("decision inputs", &inputs)?,
                        at_ms: get_u64(r, 7, "at_ms")?,
                    },
                })
            })
            .collect()
    }

    pub(crate) async fn save_assignment(
        &self,
        a: &Assignment,
    ) -> Result<SaveAssignment, StoreError> {
        let body = serde_json::to_string(a).map_err(|e| corrupt("assignment", e))?;
        let epoch = to_i64("assignment epoch", a.epoch)?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning an assignment save"))?;
        let saved = sqlx::query(
            "INSERT INTO assignments (group_name, algorithm, epoch, body, saved_at_ms) \
             VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT (group_name, algorithm) DO UPDATE \
             SET epoch = EXCLUDED.epoch, body = EXCLUDED.body, saved_at_ms = EXCLUDED.saved_at_ms \
             WHERE assignments.epoch < EXCLUDED.epoch",
        )
        .bind(&a.group)
        .bind(a.algorithm.as_str())
        .bind(epoch)
        .bind(&body)
        .bind(clamp_i64(now_ms()))
        .execute(&mut *tx)
        .await
        .map_err(db("saving an assignment"))?
        .rows_affected();
        let outcome = if saved == 1 {
            SaveAssignment::Saved
        } else {
            let row = sqlx::query(
                "SELECT epoch, body::text FROM assignments \
                 WHERE group_name = $1 AND algorithm = $2",
            )
            .bind(&a.group)
            .bind(a.algorithm.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the current assignment"))?;
            let stored: String = get(&row, 1, "assignment")?;
            crate::compare_assignment(a, get_u64(&row, 0, "assignment epoch")?, &stored)?
        };
        tx.commit().await.map_err(db("committing an assignment"))?;
        Ok(outcome)
    }

    pub(crate) async fn current_assignment(
        &self,
        group: &str,
        algorithm: Algorithm,
    ) -> Result<Option<Assignment>, StoreError> {
        let body: Option<String> = sqlx::query_scalar(
            "SELECT body::text FROM assignments WHERE group_name = $1 AND algorithm = $2",
        )
        .bind(group)
        .bind(algorithm.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading an assignment"))?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| corrupt("assignment", e)))
            .transpose()
    }

    pub(crate) async fn assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        let bodies: Vec<String> =
            sqlx::query_scalar("SELECT body::text FROM assignments ORDER BY group_name, algorithm")
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading assignments"))?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(|e| corrupt("assignment", e)))
            .collect()
    }

    pub(crate) async fn coins(&self) -> Result<Vec<CoinSetting>, StoreError> {
        let rows = sqlx::query("SELECT ticker, enabled, updated_at_ms FROM coins ORDER BY ticker")
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading the whitelist"))?;
        rows.iter()
            .map(|r| {
                Ok(CoinSetting {
                    ticker: ticker(get(r, 0, "coin")?)?,
                    enabled: get(r, 1, "enabled")?,
                    updated_at_ms: get_u64(r, 2, "updated_at_ms")?,
                })
            })
            .collect()
    }

    pub(crate) async fn set_coin(
        &self,
        actor: &str,
        coin: &Ticker,
        enabled: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a whitelist change"))?;
        sqlx::query(
            "INSERT INTO coins (ticker, enabled, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (ticker) DO UPDATE SET enabled = EXCLUDED.enabled, \
             updated_at_ms = EXCLUDED.updated_at_ms",
        )
        .bind(coin.as_str())
        .bind(enabled)
        .bind(clamp_i64(now_ms()))
        .execute(&mut *tx)
        .await
        .map_err(db("changing the whitelist"))?;
        audit_in(
            &mut tx,
            actor,
            "set-coin",
            &serde_json::json!({ "coin": coin, "enabled": enabled }),
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing a whitelist change"))
    }

    pub(crate) async fn remove_coin(&self, actor: &str, coin: &Ticker) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a whitelist change"))?;
        let removed = sqlx::query("DELETE FROM coins WHERE ticker = $1")
            .bind(coin.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("removing a coin"))?
            .rows_affected()
            > 0;
        audit_in(
            &mut tx,
            actor,
            "remove-coin",
            &serde_json::json!({ "coin": coin, "removed": removed }),
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing a whitelist change"))?;
        Ok(removed)
    }

    pub(crate) async fn setting(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value::text FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a setting"))?;
        v.map(|v| json("setting", &v)).transpose()
    }

    pub(crate) async fn settings(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        let rows = sqlx::query("SELECT key, value::text FROM settings")
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading settings"))?;
        rows.iter()
            .map(|r| {
                let v: String = get(r, 1, "setting")?;
                Ok((get(r, 0, "setting key")?, json("setting", &v)?))
            })
            .collect()
    }

    pub(crate) async fn set_setting(
        &self,
        actor: &str,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning a settings change"))?;
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at_ms) VALUES ($1, $2::jsonb, $3) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
             updated_at_ms = EXCLUDED.updated_at_ms",
        )
        .bind(key)
        .bind(value.to_string())
        .bind(clamp_i64(now_ms()))
        .execute(&mut *tx)
        .await
        .map_err(db("changing a setting"))?;
        audit_in(
            &mut tx,
            actor,
            "set-setting",
            &serde_json::json!({ "key": key, "value": value }),
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing a settings change"))
    }

    pub(crate) async fn audit(
        &self,
        actor: &str,
        action: &str,
        details: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db("acquiring a connection"))?;
        audit_in(&mut conn, actor, action, details).await
    }

    pub(crate) async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, details::text FROM audit_log \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the audit log"))?;
        rows.iter()
            .map(|r| {
                let details: String = get(r, 4, "audit details")?;
                Ok(AuditRecord {
                    id: get(r, 0, "audit id")?,
                    at_ms: get_u64(r, 1, "at_ms")?,
                    actor: get(r, 2, "actor")?,
                    action: get(r, 3, "action")?,
                    details: json("audit details", &details)?,
                })
            })
            .collect()
    }

    pub(crate) async fn upstreams(&self) -> Result<Vec<UpstreamRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, coin, protocol, fee_bps, payout_scheme, switch_cost_secs, \
             details::text, enabled, updated_at_ms FROM upstreams ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading upstreams"))?;
        rows.iter()
            .map(|r| {
                let details: String = get(r, 6, "upstream details")?;
                Ok(UpstreamRecord {
                    terms: UpstreamTerms {
                        name: get(r, 0, "upstream name")?,
                        coin: ticker(get(r, 1, "coin")?)?,
                        protocol: get(r, 2, "protocol")?,
                        fee_bps: u32::try_from(get::<i32>(r, 3, "fee_bps")?)
                            .map_err(|e| corrupt("fee_bps", e))?,
                        payout_scheme: get(r, 4, "payout scheme")?,
                        switch_cost_secs: u32::try_from(get::<i64>(r, 5, "switch_cost_secs")?)
                            .map_err(|e| corrupt("switch_cost_secs", e))?,
                        details: json("upstream details", &details)?,
                        enabled: get(r, 7, "enabled")?,
                    },
                    updated_at_ms: get_u64(r, 8, "updated_at_ms")?,
                })
            })
            .collect()
    }

    pub(crate) async fn upsert_upstream(
        &self,
        actor: &str,
        u: &UpstreamTerms,
    ) -> Result<(), StoreError> {
        let fee = i32::try_from(u.fee_bps).map_err(|_| StoreError::OutOfRange {
            what: "fee_bps",
            value: u.fee_bps.to_string(),
        })?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning an upstream change"))?;
        sqlx::query(
            "INSERT INTO upstreams (name, coin, protocol, fee_bps, payout_scheme, \
             switch_cost_secs, details, enabled, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9) ON CONFLICT (name) DO UPDATE SET \
             coin = EXCLUDED.coin, protocol = EXCLUDED.protocol, fee_bps = EXCLUDED.fee_bps, \
             payout_scheme = EXCLUDED.payout_scheme, \
             switch_cost_secs = EXCLUDED.switch_cost_secs, details = EXCLUDED.details, \
             enabled = EXCLUDED.enabled, updated_at_ms = EXCLUDED.updated_at_ms",
        )
        .bind(&u.name)
        .bind(u.coin.as_str())
        .bind(&u.protocol)
        .bind(fee)
        .bind(&u.payout_scheme)
        .bind(i64::from(u.switch_cost_secs))
        .bind(u.details.to_string())
        .bind(u.enabled)
        .bind(clamp_i64(now_ms()))
        .execute(&mut *tx)
        .await
        .map_err(db("registering an upstream"))?;
        audit_in(
            &mut tx,
            actor,
            "upsert-upstream",
            &serde_json::to_value(u).map_err(|e| corrupt("upstream", e))?,
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing an upstream change"))
    }

    pub(crate) async fn remove_upstream(
        &self,
        actor: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("beginning an upstream change"))?;
        let removed = sqlx::query("DELETE FROM upstreams WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("removing an upstream"))?
            .rows_affected()
            > 0;
        audit_in(
            &mut tx,
            actor,
            "remove-upstream",
            &serde_json::json!({ "name": name, "removed": removed }),
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing an upstream change"))?;
        Ok(removed)
    }

    // ---- read-only queries for the API (added with the server API) ----

    pub(crate) async fn pool_counts(
        &self,
        active_since_ms: u64,
    ) -> Result<(u64, u64, u64), StoreError> {
        let row = sqlx::query(&format!(
            "WITH RECURSIVE {COINS_WITH_WORK} \
             SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM workers), \
             (SELECT COUNT(*) FROM (SELECT DISTINCT w.user_name, w.worker FROM {} \
              AND w.last_share_ms >= $1) AS active)",
            work_in_minutes("$2", "$3")
        ))
        .bind(crate::clamp_i64(active_since_ms))
        .bind(crate::clamp_i64(crate::prepare::minute_holding(
            active_since_ms,
        )))
        .bind(i64::MAX)
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting users and workers"))?;
        Ok((
            get_u64(&row, 0, "users")?,
            get_u64(&row, 1, "workers")?,
            get_u64(&row, 2, "active workers")?,
        ))
    }

    pub(crate) async fn active_workers(
        &self,
        since_ms: u64,
    ) -> Result<Vec<(Ticker, String, String)>, StoreError> {
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE {COINS_WITH_WORK} \
             SELECT DISTINCT w.coin, w.user_name, w.worker FROM {}",
            work_in_minutes("$1", "$2")
        ))
        .bind(crate::clamp_i64(since_ms))
        .bind(i64::MAX)
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing active workers"))?;
        rows.iter()
            .map(|r| {
                let coin: String = get(r, 0, "coin")?;
                let coin = Ticker::try_from(coin).map_err(|e| corrupt("coin", e))?;
                Ok((coin, get(r, 1, "user")?, get(r, 2, "worker")?))
            })
            .collect()
    }
}

async fn apply_migration(conn: &mut PgConnection, m: &Migration) -> Result<(), StoreError> {
    // A plain `&str` runs through the simple query protocol: several statements in turn.
    sqlx::Executor::execute(&mut *conn, m.sql)
        .await
        .map_err(db("applying a migration"))?;
    sqlx::query(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at_ms) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(m.version)
    .bind(m.name)
    .bind(m.checksum())
    .bind(clamp_i64(now_ms()))
    .execute(&mut *conn)
    .await
    .map_err(db("recording a migration"))?;
    tracing::info!(
        version = m.version,
        name = m.name,
        "applied PostgreSQL migration"
    );
    Ok(())
}

/// The exactly-once rule: `None` to go on applying (the run's first batch is the next one
/// expected; the proxy's sequence moves to its last), or the outcome of a refused first batch.
async fn advance_sequence(
    conn: &mut PgConnection,
    p: &Prepared<'_>,
) -> Result<Option<ApplyOutcome>, StoreError> {
    let now = clamp_i64(now_ms());
    // Waits for a concurrent transaction holding the row, then re-checks against its result.
    let updated = sqlx::query(
        "UPDATE proxies SET last_sequence = $2, last_batch_created_ms = $3, applied_at_ms = $4 \
         WHERE proxy_id = $1 AND last_sequence = $5 - 1",
    )
    .bind(p.proxy_id)
    .bind(p.sequence)
    .bind(p.created_at_ms)
    .bind(now)
    .bind(p.first_sequence)
    .execute(&mut *conn)
    .await
    .map_err(db("advancing a proxy's sequence"))?
    .rows_affected();
    if updated == 1 {
        return Ok(None);
    }
    if p.first_sequence == 1 {
        // A concurrent first batch waits on the key, then does nothing.
        let inserted = sqlx::query(
            "INSERT INTO proxies (proxy_id, last_sequence, last_batch_created_ms, applied_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (proxy_id) DO NOTHING",
        )
        .bind(p.proxy_id)
        .bind(p.sequence)
        .bind(p.created_at_ms)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db("registering a proxy's sequence"))?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
    }
    let last: Option<i64> =
        sqlx::query_scalar("SELECT last_sequence FROM proxies WHERE proxy_id = $1")
            .bind(p.proxy_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("reading a proxy's sequence"))?;
    let last = last.map_or(Ok(0), |v| to_u64("last_sequence", v))?;
    Ok(Some(crate::refused(p.first_sequence as u64, last)))
}

/// Every row a batch adds but the coin rollups, in one statement (one round trip): a
/// data-modifying CTE per table, each an `INSERT … SELECT FROM UNNEST(arrays) ON CONFLICT DO
/// UPDATE` in key order. An empty array inserts nothing. `users` are the batch's users that may change a stored one.
const WRITE_ROWS: &str = "WITH \
    ins_users AS (INSERT INTO users (user_name, payout_address, first_seen_ms) \
      SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
      ON CONFLICT (user_name) DO UPDATE SET \
      payout_address = COALESCE(users.payout_address, EXCLUDED.payout_address), \
      first_seen_ms = LEAST(users.first_seen_ms, EXCLUDED.first_seen_ms) \
      WHERE (users.payout_address IS NULL AND EXCLUDED.payout_address IS NOT NULL) \
      OR EXCLUDED.first_seen_ms < users.first_seen_ms), \
    ins_workers AS (INSERT INTO workers (user_name, worker, first_seen_ms) \
      SELECT * FROM UNNEST($4::text[], $5::text[], $6::bigint[]) \
      ON CONFLICT (user_name, worker) DO UPDATE SET \
      first_seen_ms = LEAST(workers.first_seen_ms, EXCLUDED.first_seen_ms) \
      WHERE EXCLUDED.first_seen_ms < workers.first_seen_ms), \
    ins_rejects AS (INSERT INTO worker_rejects (user_name, worker, reason, shares) \
      SELECT * FROM UNNEST($7::text[], $8::text[], $9::text[], $10::bigint[]) \
      ON CONFLICT (user_name, worker, reason) DO UPDATE SET \
      shares = worker_rejects.shares + EXCLUDED.shares), \
    ins_work AS (INSERT INTO work (user_name, worker, coin, epoch, upstream, minute_ms, work, \
      accepted_shares, late_shares, rejected_shares, stale_shares, first_seen_ms, \
      last_seen_ms, last_share_ms) \
      SELECT u, w, c, e, up, m, wk::numeric, a, l, r, s, f, ls, lsh FROM UNNEST($11::text[], \
      $12::text[], $13::text[], $14::bigint[], $15::text[], $16::bigint[], $17::text[], \
      $18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], \
      $23::bigint[], $24::bigint[]) \
      AS t(u, w, c, e, up, m, wk, a, l, r, s, f, ls, lsh) \
      ON CONFLICT (coin, minute_ms, user_name, worker, epoch, upstream) DO UPDATE SET \
      work = work.work + EXCLUDED.work, \
      accepted_shares = work.accepted_shares + EXCLUDED.accepted_shares, \
      late_shares = work.late_shares + EXCLUDED.late_shares, \
      rejected_shares = work.rejected_shares + EXCLUDED.rejected_shares, \
      stale_shares = work.stale_shares + EXCLUDED.stale_shares, \
      first_seen_ms = LEAST(work.first_seen_ms, EXCLUDED.first_seen_ms), \
      last_seen_ms = GREATEST(work.last_seen_ms, EXCLUDED.last_seen_ms), \
      last_share_ms = GREATEST(work.last_share_ms, EXCLUDED.last_share_ms)) \
    SELECT 1";

/// The conflict clause of the user rollup's upserts (the fold's, and a batch's late rows).
const USER_MINUTE_CONFLICT: &str = "ON CONFLICT (user_name, minute_ms, coin) DO UPDATE SET \
      work = user_minute.work + EXCLUDED.work, \
      shares = user_minute.shares + EXCLUDED.shares, \
      rejected_shares = user_minute.rejected_shares + EXCLUDED.rejected_shares, \
      stale_shares = user_minute.stale_shares + EXCLUDED.stale_shares, \
      last_seen_ms = GREATEST(user_minute.last_seen_ms, EXCLUDED.last_seen_ms)";

/// The per-coin rollup, apart and last: every batch of a minute updates the same row, so its
/// lock is taken just before the commit (as a CTE it may run first and hold the row for the
/// whole statement, serialising concurrent batches).
const WRITE_COIN_MINUTES: &str = "INSERT INTO coin_minute (coin, minute_ms, work, shares, \
      rejected_shares, stale_shares) \
      SELECT c, m, wk::numeric, s, r, st FROM UNNEST($1::text[], $2::bigint[], \
      $3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) AS t(c, m, wk, s, r, st) \
      ON CONFLICT (coin, minute_ms) DO UPDATE SET \
      work = coin_minute.work + EXCLUDED.work, \
      shares = coin_minute.shares + EXCLUDED.shares, \
      rejected_shares = coin_minute.rejected_shares + EXCLUDED.rejected_shares, \
      stale_shares = coin_minute.stale_shares + EXCLUDED.stale_shares";

/// Takes the fold lock, then reads the fold horizon. A batch takes the lock shared after
/// writing its work rows and before deciding which are late, and holds it to its commit; a
/// fold takes it exclusively. So a fold sees every batch that decided before it (committed),
/// and a batch whose rows the fold could not see (not committed yet) decides after the fold
/// and folds those rows itself: nothing is missed or counted twice. An advisory lock rather
/// than a row lock, because sharing a row lock writes to the row (a multixact per batch). Two
/// statements: a statement's snapshot is taken when it starts, and the read must see a fold
/// that committed while the lock waited.
async fn fold_horizon_locked(conn: &mut PgConnection, exclusive: bool) -> Result<i64, StoreError> {
    // Advisory locks are per database: the key names this schema's fold.
    let lock = if exclusive {
        "pg_advisory_xact_lock"
    } else {
        "pg_advisory_xact_lock_shared"
    };
    sqlx::query(&format!(
        "SELECT {lock}(hashtextextended(current_schema() || '.work_fold', 0))"
    ))
    .execute(&mut *conn)
    .await
    .map_err(db("taking the fold lock"))?;
    sqlx::query_scalar("SELECT folded_before_ms FROM work_fold")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the fold horizon"))
}

/// Rows of minutes already folded go to the folded columns too.
async fn write_late_folds(
    conn: &mut PgConnection,
    late: &[LateFold<'_>],
) -> Result<(), StoreError> {
    if late.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "{FOLD_HEAD} SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], \
         $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[]) {}",
        fold_tail(Dialect::Postgres)
    ))
    .bind(late.iter().map(|f| f.user).collect::<Vec<_>>())
    .bind(late.iter().map(|f| f.worker).collect::<Vec<_>>())
    .bind(late.iter().map(|f| f.first_seen_ms).collect::<Vec<_>>())
    .bind(late.iter().map(|f| f.accepted).collect::<Vec<_>>())
    .bind(late.iter().map(|f| f.late).collect::<Vec<_>>())
    .bind(late.iter().map(|f| f.rejected).collect::<Vec<_>>())
    .bind(late.iter().map(|f| f.last_seen_ms).collect::<Vec<_>>())
    .bind(late.iter().map(|f| f.last_share_ms).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(db("adding late work to worker totals"))?;
    Ok(())
}

async fn write_rows(
    conn: &mut PgConnection,
    p: &Prepared<'_>,
    users: &[UserRow<'_>],
    workers: &[WorkerRow<'_>],
) -> Result<(), StoreError> {
    let rejects = &p.rejects;
    let work = &p.work;
    sqlx::query(WRITE_ROWS)
        .bind(users.iter().map(|u| u.user).collect::<Vec<_>>())
        .bind(users.iter().map(|u| u.payout_address).collect::<Vec<_>>())
        .bind(users.iter().map(|u| u.first_seen_ms).collect::<Vec<_>>())
        .bind(workers.iter().map(|w| w.user).collect::<Vec<_>>())
        .bind(workers.iter().map(|w| w.worker).collect::<Vec<_>>())
        .bind(workers.iter().map(|w| w.first_seen_ms).collect::<Vec<_>>())
        .bind(rejects.iter().map(|((u, _, _), _)| *u).collect::<Vec<_>>())
        .bind(rejects.iter().map(|((_, w, _), _)| *w).collect::<Vec<_>>())
        .bind(rejects.iter().map(|((_, _, r), _)| *r).collect::<Vec<_>>())
        .bind(rejects.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .bind(work.iter().map(|(k, _)| k.user).collect::<Vec<_>>())
        .bind(work.iter().map(|(k, _)| k.worker).collect::<Vec<_>>())
        .bind(work.iter().map(|(k, _)| k.coin).collect::<Vec<_>>())
        .bind(work.iter().map(|(k, _)| k.epoch).collect::<Vec<_>>())
        .bind(work.iter().map(|(k, _)| k.upstream).collect::<Vec<_>>())
        .bind(work.iter().map(|(k, _)| k.minute_ms).collect::<Vec<_>>())
        .bind(
            work.iter()
                .map(|(_, r)| r.work.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(work.iter().map(|(_, r)| r.accepted).collect::<Vec<_>>())
        .bind(work.iter().map(|(_, r)| r.late).collect::<Vec<_>>())
        .bind(work.iter().map(|(_, r)| r.rejected).collect::<Vec<_>>())
        .bind(work.iter().map(|(_, r)| r.stale).collect::<Vec<_>>())
        .bind(
            work.iter()
                .map(|(_, r)| r.first_seen_ms)
                .collect::<Vec<_>>(),
        )
        .bind(work.iter().map(|(_, r)| r.last_seen_ms).collect::<Vec<_>>())
        .bind(
            work.iter()
                .map(|(_, r)| r.last_share_ms)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await
        .map_err(db("writing a batch's rows"))?;
    Ok(())
}

/// The user rollup holds folded minutes only (later ones are read from the work rows): a
/// batch writes it only for minutes already folded.
async fn write_late_user_minutes(
    conn: &mut PgConnection,
    p: &Prepared<'_>,
    folded_before: i64,
) -> Result<(), StoreError> {
    let late: Vec<_> = p
        .user_minutes
        .iter()
        .filter(|((_, minute, _), _)| *minute < folded_before)
        .collect();
    if late.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO user_minute (user_name, minute_ms, coin, work, shares, rejected_shares, \
         stale_shares, last_seen_ms) SELECT u, m, c, wk::numeric, s, r, st, ls \
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
         $6::bigint[], $7::bigint[], $8::bigint[]) AS t(u, m, c, wk, s, r, st, ls) \
         {USER_MINUTE_CONFLICT}"
    ))
    .bind(late.iter().map(|((u, _, _), _)| *u).collect::<Vec<_>>())
    .bind(late.iter().map(|((_, t, _), _)| *t).collect::<Vec<_>>())
    .bind(late.iter().map(|((_, _, c), _)| *c).collect::<Vec<_>>())
    .bind(
        late.iter()
            .map(|(_, a)| a.work.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(late.iter().map(|(_, a)| a.shares).collect::<Vec<_>>())
    .bind(late.iter().map(|(_, a)| a.rejected).collect::<Vec<_>>())
    .bind(late.iter().map(|(_, a)| a.stale).collect::<Vec<_>>())
    .bind(late.iter().map(|(_, a)| a.last_seen_ms).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(db("writing late user rollups"))?;
    Ok(())
}

async fn write_coin_minutes(conn: &mut PgConnection, p: &Prepared<'_>) -> Result<(), StoreError> {
    let coin_minutes = &p.coin_minutes;
    if coin_minutes.is_empty() {
        return Ok(());
    }
    sqlx::query(WRITE_COIN_MINUTES)
        .bind(
            coin_minutes
                .iter()
                .map(|((c, _), _)| *c)
                .collect::<Vec<_>>(),
        )
        .bind(
            coin_minutes
                .iter()
                .map(|((_, t), _)| *t)
                .collect::<Vec<_>>(),
        )
        .bind(
            coin_minutes
                .iter()
                .map(|(_, a)| a.work.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            coin_minutes
                .iter()
                .map(|(_, a)| a.shares)
                .collect::<Vec<_>>(),
        )
        .bind(
            coin_minutes
                .iter()
                .map(|(_, a)| a.rejected)
                .collect::<Vec<_>>(),
        )
        .bind(
            coin_minutes
                .iter()
                .map(|(_, a)| a.stale)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await
        .map_err(db("writing coin rollups"))?;
    Ok(())
}

async fn write_event(
    conn: &mut PgConnection,
    p: &Prepared<'_>,
    sequence: i64,
    e: &Event,
) -> Result<Option<BlockChange>, StoreError> {
    match e {
        Event::UpstreamHealth {
            upstream,
            coin,
            state,
            reason,
            at_ms,
        } => {
            sqlx::query(
                "INSERT INTO upstream_health (proxy_id, upstream, coin, state, reason, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(p.proxy_id)
            .bind(upstream)
            .bind(coin.as_str())
            .bind(crate::health_str(*state))
            .bind(reason)
            .bind(to_i64("event at_ms", *at_ms)?)
            .execute(&mut *conn)
            .await
            .map_err(db("writing upstream health"))?;
            Ok(None)
        }
        Event::SwitchTiming {
            algorithm,
            to_epoch,
            at_ms,
            ..
        } => {
            sqlx::query(
                "INSERT INTO switch_timings (proxy_id, algorithm, to_epoch, at_ms, body) \
                 VALUES ($1, $2, $3, $4, $5::jsonb)",
            )
            .bind(p.proxy_id)
            .bind(algorithm.as_str())
            .bind(to_i64("switch to_epoch", *to_epoch)?)
            .bind(to_i64("event at_ms", *at_ms)?)
            .bind(serde_json::to_string(e).map_err(|e| corrupt("switch timing", e))?)
            .execute(&mut *conn)
            .await
            .map_err(db("writing a switch timing"))?;
            Ok(None)
        }
        _ => {
            let Some(u) = BlockUpdate::of(e) else {
                return Ok(None);
            };
            // One writer per block hash at a time (the row may not exist yet to lock), so the
            // phase decided here from the stored one is the one written.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('defpool-block:' || $1))")
                .bind(&u.block_hash)
                .execute(&mut *conn)
                .await
                .map_err(db("locking a block"))?;
            let current: Option<String> =
                sqlx::query_scalar("SELECT phase FROM blocks WHERE block_hash = $1")
                    .bind(&u.block_hash)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db("reading a block"))?;
            let current = current.map(phase).transpose()?;
            let next = u.next_phase(current);
            sqlx::query(
                "INSERT INTO blocks (block_hash, coin, height, phase, reward, adapter, found_by, \
                 upstream, user_name, worker, epoch, confirmations, reason, first_seen_ms, \
                 found_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $14) \
                 ON CONFLICT (block_hash) DO UPDATE SET \
                 height = COALESCE(EXCLUDED.height, blocks.height), phase = EXCLUDED.phase, \
                 reward = COALESCE(EXCLUDED.reward, blocks.reward), \
                 adapter = COALESCE(EXCLUDED.adapter, blocks.adapter), \
                 found_by = COALESCE(EXCLUDED.found_by, blocks.found_by), \
                 upstream = COALESCE(blocks.upstream, EXCLUDED.upstream), \
                 user_name = COALESCE(blocks.user_name, EXCLUDED.user_name), \
                 worker = COALESCE(blocks.worker, EXCLUDED.worker), \
                 epoch = COALESCE(blocks.epoch, EXCLUDED.epoch), \
                 confirmations = COALESCE(EXCLUDED.confirmations, blocks.confirmations), \
                 reason = COALESCE(EXCLUDED.reason, blocks.reason), \
                 first_seen_ms = LEAST(blocks.first_seen_ms, EXCLUDED.first_seen_ms), \
                 found_at_ms = COALESCE(blocks.found_at_ms, EXCLUDED.found_at_ms), \
                 updated_at_ms = GREATEST(blocks.updated_at_ms, EXCLUDED.updated_at_ms)",
            )
            .bind(&u.block_hash)
            .bind(u.coin.as_str())
            .bind(u.height)
            .bind(next.as_str())
            .bind(u.reward)
            .bind(&u.adapter)
            .bind(&u.found_by)
            .bind(&u.upstream)
            .bind(&u.user)
            .bind(&u.worker)
            .bind(u.epoch)
            .bind(u.confirmations)
            .bind(&u.reason)
            .bind(u.at_ms)
            .bind((u.phase == BlockPhase::Found).then_some(u.at_ms))
            .execute(&mut *conn)
            .await
            .map_err(db("writing a block"))?;
            sqlx::query(
                "INSERT INTO block_events (block_hash, phase, confirmations, detail, at_ms, \
                 proxy_id, sequence) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&u.block_hash)
            .bind(u.phase.as_str())
            .bind(u.confirmations)
            .bind(u.detail())
            .bind(u.at_ms)
            .bind(p.proxy_id)
            .bind(sequence)
            .execute(&mut *conn)
            .await
            .map_err(db("writing a block event"))?;
            Ok((current != Some(next)).then(|| BlockChange {
                block_hash: u.block_hash.clone(),
                coin: u.coin.clone(),
                from: current,
                to: next,
            }))
        }
    }
}

async fn read_txn(conn: &mut PgConnection, txn_id: &str) -> Result<Option<LedgerTxn>, StoreError> {
    let head = sqlx::query("SELECT memo, posted_at_ms FROM ledger_txns WHERE txn_id = $1")
        .bind(txn_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db("reading a ledger transaction"))?;
    let Some(head) = head else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT account, coin, amount FROM ledger_entries WHERE txn_id = $1 ORDER BY id",
    )
    .bind(txn_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading ledger entries"))?;
    Ok(Some(LedgerTxn {
        txn_id: txn_id.to_string(),
        memo: get(&head, 0, "memo")?,
        posted_at_ms: get_u64(&head, 1, "posted_at_ms")?,
        entries: rows
            .iter()
            .map(|r| {
                Ok(LedgerEntry {
                    account: get(r, 0, "account")?,
                    coin: ticker(get(r, 1, "coin")?)?,
                    amount: get(r, 2, "amount")?,
                })
            })
            .collect::<Result<_, StoreError>>()?,
    }))
}

async fn audit_in(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    details: &serde_json::Value,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "INSERT INTO audit_log (at_ms, actor, action, details) VALUES ($1, $2, $3, $4::jsonb) \
         RETURNING id",
    )
    .bind(clamp_i64(now_ms()))
    .bind(actor)
    .bind(action)
    .bind(details.to_string())
    .fetch_one(&mut *conn)
    .await
    .map_err(db("writing an audit line"))
}

const BLOCK_COLUMNS: &str = "block_hash, coin, height, phase, reward, adapter, found_by, \
    upstream, user_name, worker, epoch, confirmations, reason, first_seen_ms, found_at_ms, \
    updated_at_ms";

fn block_info(r: &PgRow) -> Result<BlockInfo, StoreError> {
    Ok(BlockInfo {
        block_hash: get(r, 0, "block hash")?,
        coin: ticker(get(r, 1, "coin")?)?,
        height: get_opt_u64(r, 2, "height")?,
        phase: phase(get(r, 3, "block phase")?)?,
        reward: get_opt_u64(r, 4, "reward")?,
        adapter: get(r, 5, "adapter")?,
        found_by: get(r, 6, "found_by")?,
        upstream: get(r, 7, "upstream")?,
        user: get(r, 8, "user")?,
        worker: get(r, 9, "worker")?,
        epoch: get_opt_u64(r, 10, "epoch")?,
        confirmations: get(r, 11, "confirmations")?,
        reason: get(r, 12, "reason")?,
        first_seen_ms: get_u64(r, 13, "first_seen_ms")?,
        found_at_ms: get_opt_u64(r, 14, "found_at_ms")?,
        updated_at_ms: get_u64(r, 15, "updated_at_ms")?,
    })
}

fn user_info(r: &PgRow) -> Result<UserInfo, StoreError> {
    Ok(UserInfo {
        user: get(r, 0, "user")?,
        payout_address: get(r, 1, "payout address")?,
        first_seen_ms: get_u64(r, 2, "first_seen_ms")?,
        last_seen_ms: get_u64(r, 3, "last_seen_ms")?,
    })
}

fn phase(s: String) -> Result<BlockPhase, StoreError> {
    BlockPhase::from_str(&s).map_err(|e| corrupt("block phase", e))
}

fn algorithm(s: String) -> Result<Algorithm, StoreError> {
    Algorithm::from_str(&s).map_err(|e| corrupt("algorithm", e))
}
