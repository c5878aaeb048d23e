//! The SQLite backend: one write connection (every write transaction is `BEGIN IMMEDIATE`, so
//! writers never deadlock on a lock upgrade) and a small pool of readers, WAL mode.
//!
//! Bulk writes are multi-row `INSERT … VALUES` upserts with bound parameters, in chunks whose
//! sizes are powers of two (so each statement text recurs and stays prepared).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use defpool_control::{Assignment, Batch, Event, ProxyId};
use defpool_core::{Algorithm, Ticker};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::Row;

use crate::error::{corrupt, db, to_i64, to_u64, StoreError};
use crate::fold::{
    first_minute_from, fold_due, fold_tail, fold_until, fold_workers, late_folds, select_users,
    work_in_minutes, Dialect, LateFold, COINS_WITH_WORK, FOLD_HEAD,
};
use crate::migrate::{self, Migration};
use crate::prepare::{prepare, BlockUpdate, Known, Prepared, UserRow, WorkerRow};
use crate::types::*;
use crate::work::{from_limb_sums, limbs};
use crate::{check_entries, clamp_i64, now_ms, run_summaries, RunOutcome, StoreOptions};

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite storage. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    known_users: Known,
    known_workers: Known,
}

/// `SUM` of the four limbs of a table's work, as columns.
const SUM_LIMBS: &str = "COALESCE(SUM(work0), 0), COALESCE(SUM(work1), 0), \
                         COALESCE(SUM(work2), 0), COALESCE(SUM(work3), 0)";
/// [`SUM_LIMBS`] of work rows joined as `w`.
const SUM_W_LIMBS: &str = "COALESCE(SUM(w.work0), 0), COALESCE(SUM(w.work1), 0), \
                           COALESCE(SUM(w.work2), 0), COALESCE(SUM(w.work3), 0)";

/// The `SET` clause adding `excluded`'s limbs to table `t`'s, with carries.
fn add_limbs(t: &str) -> String {
    let a = |i: usize| format!("({t}.work{i} + excluded.work{i})");
    let s0 = a(0);
    let s1 = format!("({} + ({s0} >> 32))", a(1));
    let s2 = format!("({} + ({s1} >> 32))", a(2));
    let s3 = format!("({} + ({s2} >> 32))", a(3));
    format!(
        "work0 = {s0} & 4294967295, work1 = {s1} & 4294967295, \
         work2 = {s2} & 4294967295, work3 = {s3}"
    )
}

fn get<'r, T>(row: &'r SqliteRow, i: usize, what: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(i).map_err(|e| corrupt(what, e))
}

fn get_u64(row: &SqliteRow, i: usize, what: &'static str) -> Result<u64, StoreError> {
    to_u64(what, get(row, i, what)?)
}

fn get_opt_u64(row: &SqliteRow, i: usize, what: &'static str) -> Result<Option<u64>, StoreError> {
    get::<Option<i64>>(row, i, what)?
        .map(|v| to_u64(what, v))
        .transpose()
}

/// Four limb sums starting at column `i`.
fn get_work(row: &SqliteRow, i: usize) -> Result<u128, StoreError> {
    from_limb_sums([
        get(row, i, "work")?,
        get(row, i + 1, "work")?,
        get(row, i + 2, "work")?,
        get(row, i + 3, "work")?,
    ])
}

fn ticker(s: String) -> Result<Ticker, StoreError> {
    Ticker::from_str(&s).map_err(|e| corrupt("coin ticker", e))
}

fn json(what: &'static str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(db("parsing the SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.sqlite_fsync_each_commit {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Multi-row statements in several chunk sizes per table, and everything else.
            .statement_cache_capacity(512);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // An in-memory database lives as long as a connection to it: keep one, for everything.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                connect
                    .clone()
                    // The writer walks the work tables' B-trees on every batch: keep them in
                    // memory (64 MiB), keep multi-row statements' journals off disk, and
                    // checkpoint less often (a page changed by many commits is copied once).
                    .pragma("cache_size", "-65536")
                    .pragma("temp_store", "MEMORY")
                    .pragma("wal_autocheckpoint", "4000"),
            )
            .await
            .map_err(db("opening the SQLite database"))?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .connect_with(connect)
                .await
                .map_err(db("opening SQLite read connections"))?
        };
        Ok(SqliteStore {
            writer,
            reader,
            known_users: Known::default(),
            known_workers: Known::default(),
        })
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn write_tx(
        &self,
        what: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(what))
    }

    pub(crate) async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut tx = self.write_tx("beginning migrations").await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, \
             name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)",
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
        let pending = migrate::pending(migrate::SQLITE, &applied)?;
        let mut report = MigrationReport {
            applied: Vec::new(),
            version: migrate::latest(migrate::SQLITE),
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
        let mut tx = self.write_tx("beginning a batch").await?;
        match advance_sequence(&mut tx, &p).await? {
            None => {}
            Some(outcome) => {
                tx.rollback().await.map_err(db("ending a refused batch"))?;
                return Ok((RunOutcome::Refused(outcome), None));
            }
        }
        let folded_before: i64 = sqlx::query_scalar("SELECT folded_before_ms FROM work_fold")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the fold horizon"))?;
        let new_users = self.known_users.unknown(&p.users);
        let new_workers = self.known_workers.unknown(&p.workers);
        write_rows(&mut tx, &p, &new_users, &new_workers, folded_before).await?;
        write_late_folds(&mut tx, &late_folds(&p.work, folded_before)?).await?;
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
        let mut tx = self.write_tx("beginning a fold").await?;
        let from: i64 = sqlx::query_scalar("SELECT folded_before_ms FROM work_fold")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the fold horizon"))?;
        if horizon <= from {
            return Ok(());
        }
        let first: Option<i64> = sqlx::query_scalar(&first_minute_from())
            .bind(from)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("finding the first unfolded minute"))?;
        let until = fold_until(from, first, horizon);
        let folded = sqlx::query(&fold_workers(Dialect::Sqlite))
            .bind(from)
            .bind(until)
            .execute(&mut *tx)
            .await
            .map_err(db("folding work into worker totals"))?
            .rows_affected();
        // Limb sums carried into limbs (each below 2^32).
        let s1 = "(s1 + (s0 >> 32))";
        let s2 = format!("(s2 + ({s1} >> 32))");
        let s3 = format!("(s3 + ({s2} >> 32))");
        sqlx::query(&format!(
            "WITH RECURSIVE {COINS_WITH_WORK} {USER_MINUTE_HEAD} SELECT user_name, minute_ms, \
             coin, s0 & 4294967295, {s1} & 4294967295, {s2} & 4294967295, {s3}, shares, \
             rejected, stale, last_seen FROM (SELECT w.user_name, w.minute_ms, w.coin, \
             SUM(w.work0) AS s0, SUM(w.work1) AS s1, SUM(w.work2) AS s2, SUM(w.work3) AS s3, \
             SUM(w.accepted_shares + w.late_shares) AS shares, \
             SUM(w.rejected_shares) AS rejected, SUM(w.stale_shares) AS stale, \
             MAX(w.last_seen_ms) AS last_seen FROM {} \
             GROUP BY w.user_name, w.minute_ms, w.coin) WHERE true {}",
            work_in_minutes("$1", "$2"),
            user_minute_tail()
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
                .fetch_optional(&self.reader)
                .await
                .map_err(db("reading a proxy's sequence"))?;
        last.map_or(Ok(0), |v| to_u64("last_sequence", v))
    }

    pub(crate) async fn work_by_coin(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<Ticker, u128>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT coin, {SUM_LIMBS} FROM coin_minute \
             WHERE minute_ms >= $1 AND minute_ms < $2 GROUP BY coin"
        ))
        .bind(clamp_i64(from_ms))
        .bind(clamp_i64(to_ms))
        .fetch_all(&self.reader)
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
        let rows = sqlx::query(&format!(
            "SELECT user_name, {SUM_LIMBS} FROM work \
             WHERE coin = $1 AND minute_ms >= $2 AND minute_ms < $3 \
             AND ($4 IS NULL OR upstream = $4) GROUP BY user_name"
        ))
        .bind(coin.as_str())
        .bind(clamp_i64(from_ms))
        .bind(clamp_i64(to_ms))
        .bind(upstream)
        .fetch_all(&self.reader)
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
            "SELECT MIN(minute_ms) FROM work WHERE coin = $1 AND ($2 IS NULL OR upstream = $2)",
        )
        .bind(coin.as_str())
        .bind(upstream)
        .fetch_one(&self.reader)
        .await
        .map_err(db("finding the oldest work"))
    }

    /// Work per (minute, user) with `after < minute_ms <= through`, newest minute first.
    pub(crate) async fn work_by_minute_and_user(
        &self,
        coin: &Ticker,
        upstream: Option<&str>,
        after: i64,
        through: i64,
    ) -> Result<Vec<(i64, String, u128)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT minute_ms, user_name, {SUM_LIMBS} FROM work \
             WHERE coin = $1 AND minute_ms > $2 AND minute_ms <= $3 \
             AND ($4 IS NULL OR upstream = $4) \
             GROUP BY minute_ms, user_name ORDER BY minute_ms DESC, user_name"
        ))
        .bind(coin.as_str())
        .bind(after)
        .bind(through)
        .bind(upstream)
        .fetch_all(&self.reader)
        .await
        .map_err(db("reading the PPLNS window"))?;
        rows.iter()
            .map(|r| Ok((get(r, 0, "minute")?, get(r, 1, "user")?, get_work(r, 2)?)))
            .collect()
    }

    pub(crate) async fn total_work(&self) -> Result<u128, StoreError> {
        let row = sqlx::query(&format!("SELECT {SUM_LIMBS} FROM work"))
            .fetch_one(&self.reader)
            .await
            .map_err(db("summing all work"))?;
        get_work(&row, 0)
    }

    pub(crate) async fn users(&self) -> Result<Vec<UserInfo>, StoreError> {
        let rows = sqlx::query(&select_users(Dialect::Sqlite, false))
            .fetch_all(&self.reader)
            .await
            .map_err(db("listing users"))?;
        rows.iter().map(user_info).collect()
    }

    pub(crate) async fn user(&self, user: &str) -> Result<Option<UserInfo>, StoreError> {
        let row = sqlx::query(&select_users(Dialect::Sqlite, true))
            .bind(user)
            .fetch_optional(&self.reader)
            .await
            .map_err(db("reading a user"))?;
        row.as_ref().map(user_info).transpose()
    }

    pub(crate) async fn workers(&self, user: &str) -> Result<Vec<WorkerInfo>, StoreError> {
        let mut tx = self.reader.begin().await.map_err(db("beginning a read"))?;
        // Folded totals plus the rows after the fold horizon.
        let rows = sqlx::query(&format!(
            "WITH RECURSIVE {COINS_WITH_WORK}, recent AS (SELECT w.worker, \
             MAX(w.last_seen_ms) AS last_seen_ms, MAX(w.last_share_ms) AS last_share_ms, \
             SUM(w.accepted_shares) AS accepted, SUM(w.late_shares) AS late, \
             SUM(w.rejected_shares) AS rejected FROM {} AND w.user_name = $1 \
             GROUP BY w.worker) \
             SELECT r.user_name, r.worker, r.first_seen_ms, \
             COALESCE(max(r.folded_last_seen_ms, k.last_seen_ms), r.folded_last_seen_ms, \
               k.last_seen_ms, r.first_seen_ms), \
             COALESCE(max(r.folded_last_share_ms, k.last_share_ms), r.folded_last_share_ms, \
               k.last_share_ms), \
             r.folded_accepted_shares + COALESCE(k.accepted, 0), \
             r.folded_late_shares + COALESCE(k.late, 0), \
             r.folded_rejected_shares + COALESCE(k.rejected, 0) FROM workers r \
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
            "WITH RECURSIVE {COINS_WITH_WORK} SELECT w.worker, {SUM_W_LIMBS}, \
             COALESCE(SUM(w.accepted_shares + w.late_shares), 0), \
             COALESCE(SUM(w.rejected_shares), 0), COALESCE(SUM(w.stale_shares), 0) FROM {} \
             AND w.user_name = $1 GROUP BY w.worker ORDER BY w.worker",
            work_in_minutes("$2", "$3")
        ))
        .bind(user)
        .bind(clamp_i64(from_ms))
        .bind(clamp_i64(to_ms))
        .fetch_all(&self.reader)
        .await
        .map_err(db("summing work by worker"))?;
        rows.iter()
            .map(|r| {
                Ok(WorkerWork {
                    worker: get(r, 0, "worker")?,
                    work: get_work(r, 1)?,
                    shares: get_u64(r, 5, "shares")?,
                    rejected_shares: get_u64(r, 6, "rejected shares")?,
                    stale_shares: get_u64(r, 7, "stale shares")?,
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
        let tail = "minute_ms >= $2 AND minute_ms < $3 AND ($4 IS NULL OR coin = $4) \
                    GROUP BY b, coin ORDER BY b, coin";
        let cols = format!(
            "(minute_ms / $5) * $5 AS b, coin, {SUM_LIMBS}, COALESCE(SUM(shares), 0), \
             COALESCE(SUM(rejected_shares), 0), COALESCE(SUM(stale_shares), 0)"
        );
        let sql = match user {
            // Folded minutes from the user's rollup, later ones from its work rows.
            Some(_) => format!(
                "WITH RECURSIVE {COINS_WITH_WORK}, rows AS (SELECT minute_ms, coin, work0, \
                 work1, work2, work3, shares, rejected_shares, stale_shares FROM user_minute \
                 WHERE user_name = $1 AND minute_ms >= $2 AND minute_ms < $3 \
                 AND minute_ms < (SELECT folded_before_ms FROM work_fold) \
                 UNION ALL SELECT w.minute_ms, w.coin, w.work0, w.work1, w.work2, w.work3, \
                 w.accepted_shares + w.late_shares, w.rejected_shares, w.stale_shares FROM {} \
                 AND w.user_name = $1) SELECT {cols} FROM rows WHERE {tail}",
                work_in_minutes("max($2, (SELECT folded_before_ms FROM work_fold))", "$3")
            ),
            None => format!("SELECT {cols} FROM coin_minute WHERE $1 IS NULL AND {tail}"),
        };
        let rows = sqlx::query(&sql)
            .bind(user)
            .bind(clamp_i64(from_ms))
            .bind(clamp_i64(to_ms))
            .bind(coin.map(|c| c.as_str()))
            .bind(size)
            .fetch_all(&self.reader)
            .await
            .map_err(db("reading a hashrate series"))?;
        rows.iter().map(series_point).collect()
    }

    pub(crate) async fn blocks(
        &self,
        coin: Option<&Ticker>,
        limit: u32,
    ) -> Result<Vec<BlockInfo>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE ($1 IS NULL OR coin = $1) \
             ORDER BY first_seen_ms DESC, block_hash LIMIT $2"
        ))
        .bind(coin.map(|c| c.as_str()))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(db("listing blocks"))?;
        rows.iter().map(block_info).collect()
    }

    pub(crate) async fn block(&self, hash: &str) -> Result<Option<BlockInfo>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {BLOCK_COLUMNS} FROM blocks WHERE block_hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.reader)
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
        .fetch_all(&self.reader)
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
        .fetch_all(&self.reader)
        .await
        .map_err(db("reading upstream health"))?;
        rows.iter()
            .map(|r| {
                Ok(UpstreamHealthInfo {
                    proxy_id: ProxyId(get(r, 0, "proxy id")?),
                    upstream: get(r, 1, "upstream")?,
                    coin: ticker(get(r, 2, "coin")?)?,
                    state: health(get(r, 3, "health state")?)?,
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
        let rows =
            sqlx::query("SELECT proxy_id, body FROM switch_timings ORDER BY id DESC LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
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
        let mut tx = self.write_tx("beginning a ledger transaction").await?;
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
        insert_values(
            &mut tx,
            "INSERT INTO ledger_entries (txn_id, account, coin, amount)",
            4,
            "",
            &entries.iter().map(|e| (txn_id, e)).collect::<Vec<_>>(),
            |q, (id, e)| {
                q.bind(*id)
                    .bind(&e.account)
                    .bind(e.coin.as_str())
                    .bind(e.amount)
            },
            "writing ledger entries",
        )
        .await?;
        let changes: Vec<_> = balances.iter().collect();
        insert_values(
            &mut tx,
            "INSERT INTO balances (account, coin, amount)",
            3,
            "ON CONFLICT (account, coin) DO UPDATE SET amount = balances.amount + excluded.amount",
            &changes,
            |q, ((account, coin), v)| q.bind(account.as_str()).bind(coin.as_str()).bind(**v),
            "updating balances",
        )
        .await?;
        tx.commit()
            .await
            .map_err(db("committing a ledger transaction"))?;
        Ok(PostOutcome::Posted)
    }

    pub(crate) async fn ledger_txn(&self, txn_id: &str) -> Result<Option<LedgerTxn>, StoreError> {
        let mut conn = self
            .reader
            .acquire()
            .await
            .map_err(db("acquiring a reader"))?;
        read_txn(&mut conn, txn_id).await
    }

    pub(crate) async fn balance(&self, account: &str, coin: &Ticker) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT amount FROM balances WHERE account = $1 AND coin = $2")
                .bind(account)
                .bind(coin.as_str())
                .fetch_optional(&self.reader)
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
            .fetch_all(&self.reader)
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
        .fetch_all(&self.reader)
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
            "SELECT CAST(COALESCE((SELECT SUM(amount) FROM ledger_entries), 0) AS TEXT), \
             CAST(COALESCE((SELECT SUM(amount) FROM balances), 0) AS TEXT)",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(db("summing the ledger"))?;
        Ok((get(&row, 0, "ledger sum")?, get(&row, 1, "balance sum")?))
    }

    pub(crate) async fn ledger_sum(&self, coin: &Ticker) -> Result<String, StoreError> {
        sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS TEXT) FROM ledger_entries WHERE coin = $1",
        )
        .bind(coin.as_str())
        .fetch_one(&self.reader)
        .await
        .map_err(db("summing the ledger"))
    }

    // ---- server state ----

    pub(crate) async fn record_decision(&self, d: &Decision) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO decisions (group_name, algorithm, epoch, coin, reason, inputs, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&d.group)
        .bind(d.algorithm.as_str())
        .bind(to_i64("decision epoch", d.epoch)?)
        .bind(d.coin.as_ref().map(|c| c.as_str()))
        .bind(&d.reason)
        .bind(d.inputs.to_string())
        .bind(to_i64("decision at_ms", d.at_ms)?)
        .fetch_one(&self.writer)
        .await
        .map_err(db("recording a decision"))
    }

    pub(crate) async fn recent_decisions(
        &self,
        limit: u32,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, group_name, algorithm, epoch, coin, reason, inputs, at_ms FROM decisions \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
        let mut tx = self.write_tx("beginning an assignment save").await?;
        let saved = sqlx::query(
            "INSERT INTO assignments (group_name, algorithm, epoch, body, saved_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (group_name, algorithm) DO UPDATE SET \
             epoch = excluded.epoch, body = excluded.body, saved_at_ms = excluded.saved_at_ms \
             WHERE assignments.epoch < excluded.epoch",
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
                "SELECT epoch, body FROM assignments WHERE group_name = $1 AND algorithm = $2",
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
            "SELECT body FROM assignments WHERE group_name = $1 AND algorithm = $2",
        )
        .bind(group)
        .bind(algorithm.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(db("reading an assignment"))?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| corrupt("assignment", e)))
            .transpose()
    }

    pub(crate) async fn assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        let bodies: Vec<String> =
            sqlx::query_scalar("SELECT body FROM assignments ORDER BY group_name, algorithm")
                .fetch_all(&self.reader)
                .await
                .map_err(db("reading assignments"))?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(|e| corrupt("assignment", e)))
            .collect()
    }

    pub(crate) async fn coins(&self) -> Result<Vec<CoinSetting>, StoreError> {
        let rows = sqlx::query("SELECT ticker, enabled, updated_at_ms FROM coins ORDER BY ticker")
            .fetch_all(&self.reader)
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
        let mut tx = self.write_tx("beginning a whitelist change").await?;
        sqlx::query(
            "INSERT INTO coins (ticker, enabled, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (ticker) DO UPDATE SET enabled = excluded.enabled, \
             updated_at_ms = excluded.updated_at_ms",
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
        let mut tx = self.write_tx("beginning a whitelist change").await?;
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
        let v: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(db("reading a setting"))?;
        v.map(|v| json("setting", &v)).transpose()
    }

    pub(crate) async fn settings(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        let rows = sqlx::query("SELECT key, value FROM settings")
            .fetch_all(&self.reader)
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
        let mut tx = self.write_tx("beginning a settings change").await?;
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             updated_at_ms = excluded.updated_at_ms",
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
        let mut tx = self.write_tx("beginning an audit line").await?;
        let id = audit_in(&mut tx, actor, action, details).await?;
        tx.commit().await.map_err(db("committing an audit line"))?;
        Ok(id)
    }

    pub(crate) async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, details FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
            "SELECT name, coin, protocol, fee_bps, payout_scheme, switch_cost_secs, details, \
             enabled, updated_at_ms FROM upstreams ORDER BY name",
        )
        .fetch_all(&self.reader)
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
                        fee_bps: u32::try_from(get::<i64>(r, 3, "fee_bps")?)
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
        let mut tx = self.write_tx("beginning an upstream change").await?;
        sqlx::query(
            "INSERT INTO upstreams (name, coin, protocol, fee_bps, payout_scheme, \
             switch_cost_secs, details, enabled, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO UPDATE SET \
             coin = excluded.coin, protocol = excluded.protocol, fee_bps = excluded.fee_bps, \
             payout_scheme = excluded.payout_scheme, \
             switch_cost_secs = excluded.switch_cost_secs, details = excluded.details, \
             enabled = excluded.enabled, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&u.name)
        .bind(u.coin.as_str())
        .bind(&u.protocol)
        .bind(i64::from(u.fee_bps))
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
        let mut tx = self.write_tx("beginning an upstream change").await?;
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
              AND w.last_share_ms >= $1))",
            work_in_minutes("$2", "$3")
        ))
        .bind(crate::clamp_i64(active_since_ms))
        .bind(crate::clamp_i64(crate::prepare::minute_holding(
            active_since_ms,
        )))
        .bind(i64::MAX)
        .fetch_one(&self.reader)
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
        .fetch_all(&self.reader)
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

async fn apply_migration(conn: &mut SqliteConnection, m: &Migration) -> Result<(), StoreError> {
    // Through `Executor` with a plain `&str` (several statements run in turn); `raw_sql` would
    // make the future's `Send` unprovable.
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
        "applied SQLite migration"
    );
    Ok(())
}

/// The exactly-once rule: `None` to go on applying (the run's first batch is the next one
/// expected; the proxy's sequence moves to its last), or the outcome of a refused first batch.
async fn advance_sequence(
    conn: &mut SqliteConnection,
    p: &Prepared<'_>,
) -> Result<Option<ApplyOutcome>, StoreError> {
    let now = clamp_i64(now_ms());
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

type SqliteQuery<'a> = sqlx::query::Query<'a, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'a>>;

/// Rows per multi-row statement at most: 512 rows of up to 14 columns stay well below SQLite's
/// 32,766 parameters.
const CHUNK: usize = 512;

/// `{head} VALUES (?, …), … {tail}` over `rows`, in chunks whose sizes are powers of two, so
/// only a few statement texts ever occur and each stays prepared in the connection's cache.
async fn insert_values<T>(
    conn: &mut SqliteConnection,
    head: &str,
    width: usize,
    tail: &str,
    rows: &[T],
    bind: impl for<'a> Fn(SqliteQuery<'a>, &'a T) -> SqliteQuery<'a>,
    what: &'static str,
) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let n = if rest.len() >= CHUNK {
            CHUNK
        } else {
            // The largest power of two not above the rows left.
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, after) = rest.split_at(n);
        let row = format!("({})", vec!["?"; width].join(", "));
        let sql = format!("{head} VALUES {} {tail}", vec![row.as_str(); n].join(", "));
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = bind(q, r);
        }
        q.execute(&mut *conn).await.map_err(db(what))?;
        rest = after;
    }
    Ok(())
}

/// Writes the batch's rows; `users` are the batch's users that may change a stored one.
async fn write_rows(
    conn: &mut SqliteConnection,
    p: &Prepared<'_>,
    users: &[UserRow<'_>],
    workers: &[WorkerRow<'_>],
    folded_before: i64,
) -> Result<(), StoreError> {
    insert_values(
        conn,
        "INSERT INTO users (user_name, payout_address, first_seen_ms)",
        3,
        // Known users are left alone unless the batch adds something (no row rewrite).
        "ON CONFLICT (user_name) DO UPDATE SET \
         payout_address = COALESCE(users.payout_address, excluded.payout_address), \
         first_seen_ms = min(users.first_seen_ms, excluded.first_seen_ms) \
         WHERE (users.payout_address IS NULL AND excluded.payout_address IS NOT NULL) \
         OR excluded.first_seen_ms < users.first_seen_ms",
        users,
        |q, u| q.bind(u.user).bind(u.payout_address).bind(u.first_seen_ms),
        "writing users",
    )
    .await?;
    insert_values(
        conn,
        "INSERT INTO workers (user_name, worker, first_seen_ms)",
        3,
        "ON CONFLICT (user_name, worker) DO UPDATE SET \
         first_seen_ms = min(workers.first_seen_ms, excluded.first_seen_ms) \
         WHERE excluded.first_seen_ms < workers.first_seen_ms",
        workers,
        |q, w| q.bind(w.user).bind(w.worker).bind(w.first_seen_ms),
        "writing workers",
    )
    .await?;
    insert_values(
        conn,
        "INSERT INTO worker_rejects (user_name, worker, reason, shares)",
        4,
        "ON CONFLICT (user_name, worker, reason) DO UPDATE SET \
         shares = worker_rejects.shares + excluded.shares",
        &p.rejects,
        |q, ((u, w, r), n)| q.bind(*u).bind(*w).bind(*r).bind(*n),
        "writing rejects",
    )
    .await?;
    let work_tail = format!(
        "ON CONFLICT (coin, minute_ms, user_name, worker, epoch, upstream) DO UPDATE SET \
         {}, accepted_shares = work.accepted_shares + excluded.accepted_shares, \
         late_shares = work.late_shares + excluded.late_shares, \
         rejected_shares = work.rejected_shares + excluded.rejected_shares, \
         stale_shares = work.stale_shares + excluded.stale_shares, \
         first_seen_ms = min(work.first_seen_ms, excluded.first_seen_ms), \
         last_seen_ms = max(work.last_seen_ms, excluded.last_seen_ms), \
         last_share_ms = COALESCE(max(work.last_share_ms, excluded.last_share_ms), \
           work.last_share_ms, excluded.last_share_ms)",
        add_limbs("work")
    );
    insert_values(
        conn,
        "INSERT INTO work (user_name, worker, coin, epoch, upstream, minute_ms, \
         work0, work1, work2, work3, accepted_shares, late_shares, rejected_shares, \
         stale_shares, first_seen_ms, last_seen_ms, last_share_ms)",
        17,
        &work_tail,
        &p.work,
        |q, (k, r)| {
            let l = limbs(r.work);
            q.bind(k.user)
                .bind(k.worker)
                .bind(k.coin)
                .bind(k.epoch)
                .bind(k.upstream)
                .bind(k.minute_ms)
                .bind(l[0])
                .bind(l[1])
                .bind(l[2])
                .bind(l[3])
                .bind(r.accepted)
                .bind(r.late)
                .bind(r.rejected)
                .bind(r.stale)
                .bind(r.first_seen_ms)
                .bind(r.last_seen_ms)
                .bind(r.last_share_ms)
        },
        "writing work",
    )
    .await?;
    // The user rollup holds folded minutes only (later ones are read from the work rows): a
    // batch writes it only for minutes already folded.
    let late_user_minutes: Vec<_> = p
        .user_minutes
        .iter()
        .filter(|((_, minute, _), _)| *minute < folded_before)
        .cloned()
        .collect();
    insert_values(
        conn,
        USER_MINUTE_HEAD,
        11,
        &user_minute_tail(),
        &late_user_minutes,
        |q, ((u, m, c), a)| {
            let l = limbs(a.work);
            q.bind(*u)
                .bind(*m)
                .bind(*c)
                .bind(l[0])
                .bind(l[1])
                .bind(l[2])
                .bind(l[3])
                .bind(a.shares)
                .bind(a.rejected)
                .bind(a.stale)
                .bind(a.last_seen_ms)
        },
        "writing user rollups",
    )
    .await?;
    let coin_tail = format!(
        "ON CONFLICT (coin, minute_ms) DO UPDATE SET {}, \
         shares = coin_minute.shares + excluded.shares, \
         rejected_shares = coin_minute.rejected_shares + excluded.rejected_shares, \
         stale_shares = coin_minute.stale_shares + excluded.stale_shares",
        add_limbs("coin_minute")
    );
    insert_values(
        conn,
        "INSERT INTO coin_minute (coin, minute_ms, work0, work1, work2, work3, \
         shares, rejected_shares, stale_shares)",
        9,
        &coin_tail,
        &p.coin_minutes,
        |q, ((c, m), a)| {
            let l = limbs(a.work);
            q.bind(*c)
                .bind(*m)
                .bind(l[0])
                .bind(l[1])
                .bind(l[2])
                .bind(l[3])
                .bind(a.shares)
                .bind(a.rejected)
                .bind(a.stale)
        },
        "writing coin rollups",
    )
    .await
}

const USER_MINUTE_HEAD: &str = "INSERT INTO user_minute (user_name, minute_ms, coin, work0, \
    work1, work2, work3, shares, rejected_shares, stale_shares, last_seen_ms)";

fn user_minute_tail() -> String {
    format!(
        "ON CONFLICT (user_name, minute_ms, coin) DO UPDATE SET {}, \
         shares = user_minute.shares + excluded.shares, \
         rejected_shares = user_minute.rejected_shares + excluded.rejected_shares, \
         stale_shares = user_minute.stale_shares + excluded.stale_shares, \
         last_seen_ms = max(user_minute.last_seen_ms, excluded.last_seen_ms)",
        add_limbs("user_minute")
    )
}

/// Rows of minutes already folded go to the folded columns too.
async fn write_late_folds(
    conn: &mut SqliteConnection,
    late: &[LateFold<'_>],
) -> Result<(), StoreError> {
    insert_values(
        conn,
        FOLD_HEAD,
        8,
        &fold_tail(Dialect::Sqlite),
        late,
        |q, f| {
            q.bind(f.user)
                .bind(f.worker)
                .bind(f.first_seen_ms)
                .bind(f.accepted)
                .bind(f.late)
                .bind(f.rejected)
                .bind(f.last_seen_ms)
                .bind(f.last_share_ms)
        },
        "adding late work to worker totals",
    )
    .await
}

async fn write_event(
    conn: &mut SqliteConnection,
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
                 VALUES ($1, $2, $3, $4, $5)",
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
                 height = COALESCE(excluded.height, blocks.height), phase = excluded.phase, \
                 reward = COALESCE(excluded.reward, blocks.reward), \
                 adapter = COALESCE(excluded.adapter, blocks.adapter), \
                 found_by = COALESCE(excluded.found_by, blocks.found_by), \
                 upstream = COALESCE(blocks.upstream, excluded.upstream), \
                 user_name = COALESCE(blocks.user_name, excluded.user_name), \
                 worker = COALESCE(blocks.worker, excluded.worker), \
                 epoch = COALESCE(blocks.epoch, excluded.epoch), \
                 confirmations = COALESCE(excluded.confirmations, blocks.confirmations), \
                 reason = COALESCE(excluded.reason, blocks.reason), \
                 first_seen_ms = min(blocks.first_seen_ms, excluded.first_seen_ms), \
                 found_at_ms = COALESCE(blocks.found_at_ms, excluded.found_at_ms), \
                 updated_at_ms = max(blocks.updated_at_ms, excluded.updated_at_ms)",
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

async fn read_txn(
    conn: &mut SqliteConnection,
    txn_id: &str,
) -> Result<Option<LedgerTxn>, StoreError> {
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
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    details: &serde_json::Value,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "INSERT INTO audit_log (at_ms, actor, action, details) VALUES ($1, $2, $3, $4) \
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

fn block_info(r: &SqliteRow) -> Result<BlockInfo, StoreError> {
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

fn user_info(r: &SqliteRow) -> Result<UserInfo, StoreError> {
    Ok(UserInfo {
        user: get(r, 0, "user")?,
        payout_address: get(r, 1, "payout address")?,
        first_seen_ms: get_u64(r, 2, "first_seen_ms")?,
        last_seen_ms: get_u64(r, 3, "last_seen_ms")?,
    })
}

fn series_point(r: &SqliteRow) -> Result<SeriesPoint, StoreError> {
    Ok(SeriesPoint {
        bucket_ms: get_u64(r, 0, "bucket")?,
        coin: ticker(get(r, 1, "coin")?)?,
        work: get_work(r, 2)?,
        shares: get_u64(r, 6, "shares")?,
        rejected_shares: get_u64(r, 7, "rejected shares")?,
        stale_shares: get_u64(r, 8, "stale shares")?,
    })
}

fn phase(s: String) -> Result<BlockPhase, StoreError> {
    BlockPhase::from_str(&s).map_err(|e| corrupt("block phase", e))
}

fn health(s: String) -> Result<defpool_control::HealthState, StoreError> {
    crate::parse_health(&s)
}

fn algorithm(s: String) -> Result<Algorithm, StoreError> {
    Algorithm::from_str(&s).map_err(|e| corrupt("algorithm", e))
}
