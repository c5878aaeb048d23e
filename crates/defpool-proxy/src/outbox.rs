//! The proxy's durable share outbox.
//!
//! A share is acknowledged to the miner only once the record of it is committed here. The server
//! later receives the records in [`Batch`]es keyed `(proxy_id, sequence)` and acknowledges each
//! sequence; only then does the proxy delete the batch. Nothing is ever sealed twice: inserting
//! the batch and marking its rows sealed is one transaction.
//!
//! # Storage
//!
//! One SQLite file in WAL mode with three tables:
//!
//! * `meta` — one row: the owning proxy id, the last sealed and the last acknowledged sequence,
//!   the credited work (decimal `u128` as TEXT) and shares ever sealed and ever acknowledged,
//!   and `sealed_through`: unbatched rows up to that id are sealed and only await deletion;
//! * `unbatched(id, work, shares, body)` — one row per group commit: the credited work and
//!   shares of its (merged) records, and the records as JSON. Ids are the writer's and only
//!   grow;
//! * `batches(sequence, work, shares, body)` — sealed batches as JSON of [`Batch`], awaiting
//!   acknowledgement.
//!
//! Bodies are stored LZ4-compressed since schema 3 (see the `body` module): a few times fewer
//! bytes for every commit, checkpoint and seal to write.
//!
//! What was ever appended is what was ever sealed plus the unsealed rows, summed on read
//! ([`Outbox::totals`]): an append writes one row and nothing else, and the seal, which
//! rewrites `meta` anyway, advances the sealed counters.
//! Schema 1 (a counter of appended work in `meta`, sealed rows deleted inside the seal) and
//! schema 2 (bodies as JSON text, still read as they are) are migrated on open.
//!
//! # Durability
//!
//! With `synchronous=NORMAL` (the default) a commit is in the WAL file, in the operating system's
//! page cache, before [`Outbox::append`] resolves: killing the process (`kill -9`, a panic, an
//! OOM kill) loses nothing that was acknowledged. A power loss or kernel crash may lose the last
//! commits before the next WAL sync (the database itself stays consistent). Set
//! [`OutboxOptions::fsync_each_commit`] for `synchronous=FULL`: every commit waits for an fsync
//! of the WAL, which survives power loss at the price of one fsync per group commit.
//!
//! # Group commit
//!
//! One writer task owns the write connection. It takes the first append, gathers further appends
//! arriving within [`OutboxOptions::commit_interval`] (or until
//! [`OutboxOptions::max_pending_records`] records are pending), merges their records (see
//! [`merge_records`]), writes them as one row with a single INSERT (its own transaction: one trip
//! to the connection's thread), and only then answers every waiting append. Sealing and
//! acknowledgements go through the same task, so every write is serialised; reads
//! ([`Outbox::unacknowledged`], [`Outbox::totals`]) use a separate small pool of read
//! connections and see committed snapshots.
//!
//! Sealing reads, parses and merges the unbatched rows from a read snapshot, the parsing on a
//! blocking thread, and hands the writer only a short transaction to apply; the writer applies
//! it only if no other seal came in between. A second of shares at 20,000/s is ~5 MB of JSON:
//! parsing it inside the writer would stall every append for tens of milliseconds. The seal
//! marks its rows sealed; the sealing timer then has the writer delete them 64 at a time, with
//! appends committing in between. A checkpointing timer of its own copies the WAL into the
//! database file from a read connection every [`CHECKPOINT_EVERY`] (a passive checkpoint, which
//! never waits for the writer), so that each copy is small.
//!
//! Seals and acknowledgements are `BEGIN IMMEDIATE` and read the state they change from `meta`
//! inside the transaction, so even two processes opening the same file by mistake cannot
//! corrupt sequences or counters: they contend for the write lock, and an append of one that
//! collides with the other's row id fails (its shares are not acknowledged).
//!
//! An `append` whose future is dropped after it was queued may still be committed: its shares
//! are then counted although the miner was not answered, never the other way round.

mod body;
mod merge;

pub use merge::{credited, merge_records};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use defpool_control::{Batch, ProxyId, Record};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use merge::Merger;

/// The schema this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Queued commands before `append` waits for room (backpressure on the miners' side).
const COMMAND_QUEUE: usize = 16_384;

/// Bytes the WAL file is truncated to after a checkpoint resets it.
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// Unbatched rows read per query while sealing.
const SEAL_READ_CHUNK: i64 = 64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    proxy_id TEXT NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    acknowledged_sequence INTEGER NOT NULL DEFAULT 0,
    acknowledged_work TEXT NOT NULL DEFAULT '0',
    acknowledged_shares INTEGER NOT NULL DEFAULT 0,
    sealed_through INTEGER NOT NULL DEFAULT 0,
    sealed_work TEXT NOT NULL DEFAULT '0',
    sealed_shares INTEGER NOT NULL DEFAULT 0
);
-- work and shares before the body (here and in batches): reading them then skips the body's
-- overflow pages.
CREATE TABLE IF NOT EXISTS unbatched (
    id INTEGER PRIMARY KEY,
    work TEXT NOT NULL DEFAULT '0',
    shares INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    sequence INTEGER PRIMARY KEY,
    work TEXT NOT NULL,
    shares INTEGER NOT NULL,
    body BLOB NOT NULL
);
PRAGMA user_version = 3;
";

/// From schema 1, which deleted sealed rows in the seal's transaction.
/// The rows' `work` and `shares` and the sealed counters are filled in by [`migrate_1_to_2`].
const MIGRATE_1_TO_2: &str = "
ALTER TABLE meta ADD COLUMN sealed_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meta ADD COLUMN sealed_work TEXT NOT NULL DEFAULT '0';
ALTER TABLE meta ADD COLUMN sealed_shares INTEGER NOT NULL DEFAULT 0;
ALTER TABLE unbatched ADD COLUMN work TEXT NOT NULL DEFAULT '0';
ALTER TABLE unbatched ADD COLUMN shares INTEGER NOT NULL DEFAULT 0;
PRAGMA user_version = 2;
";

/// From schema 2, whose bodies are JSON text: [`body::decode`] reads those as they are, and new
/// bodies are compressed. (Declared TEXT there; SQLite keeps a blob a blob in a TEXT column.)
const MIGRATE_2_TO_3: &str = "PRAGMA user_version = 3;";

/// Pages the WAL may hold before the writer checkpoints it inside a commit. The checkpointing
/// timer's passive checkpoint, from a read connection and concurrent with commits, keeps the
/// WAL far below this; the writer's own checkpoint (SQLite's default is at 1,000 pages, several
/// times a second at 20,000 shares/s) stalled every append waiting on that commit.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// Sealed rows deleted per prune transaction: a few at a time, between appends, instead of
/// all of a second's rows inside the seal (which stalled appends for milliseconds).
const PRUNE_CHUNK: i64 = 64;

/// How often the checkpointing timer copies committed WAL pages into the database file. Each
/// copy and its two fsyncs slow the commits running beside it, so many small copies keep the
/// answer-time tail lower than few large ones. At 20,000 shares/s, a copy every 250 ms gave an
/// SV2 p99 of 9.5-10.8 ms and an SV1 p99.9 of 14-16 ms, against 11-17 ms and 20-25 ms with one
/// copy a second; with one every 5 s the SV1 p99 went from about 6 ms to 15-20 ms.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Tuning of an [`Outbox`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxOptions {
    /// How long after the first append of a group was sent the writer commits the group.
    /// Zero commits whatever is queued at once. Tokio's timer fires on the first whole
    /// millisecond after the deadline, so 1 ms means 1 to 2 ms.
    pub commit_interval: Duration,
    /// Commit early once this many records are pending.
    pub max_pending_records: usize,
    /// How often the background task seals unbatched records into batches. Zero disables the
    /// task (seal with [`Outbox::seal`]) and the checkpointing timer with it (the writer then
    /// checkpoints inside a commit once the WAL reaches its limit).
    pub seal_interval: Duration,
    /// At most this many records (after merging) per batch. Above the number of workers
    /// active in a seal interval, so that a worker's records of that interval merge into one
    /// (with fewer, a batch is full before they meet, and the server gets a record per share).
    pub max_batch_records: usize,
    /// `synchronous=FULL`: fsync the WAL on every commit, so acknowledged shares survive power
    /// loss too. Off by default: `synchronous=NORMAL` survives a process kill, which is the
    /// requirement.
    pub fsync_each_commit: bool,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            commit_interval: Duration::from_millis(1),
            max_pending_records: 4096,
            seal_interval: Duration::from_secs(1),
            max_batch_records: 10_000,
            fsync_each_commit: false,
        }
    }
}

/// Counters of an outbox. Work and shares are *credited* work and shares, counted as
/// [`Batch::accepted_work`] counts them: accepted plus late (grace-window).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxTotals {
    /// Work still held: unbatched plus sealed-but-unacknowledged.
    pub held_work: u128,
    pub held_shares: u64,
    /// Work ever appended to this file (persisted, survives restarts).
    pub appended_work: u128,
    pub appended_shares: u64,
    /// Work in batches the server acknowledged (persisted).
    pub acknowledged_work: u128,
    pub acknowledged_shares: u64,
    /// Sequence of the last sealed batch (0: none yet).
    pub last_sequence: u64,
    /// Highest sequence the server acknowledged (0: none yet).
    pub acknowledged_sequence: u64,
    /// Sealed batches awaiting acknowledgement.
    pub unacknowledged_batches: u64,
    /// Group-commit rows not sealed yet.
    pub unbatched_rows: u64,
    /// Append transactions committed through this handle since it was opened.
    pub commits: u64,
    /// `append` calls answered Ok through this handle since it was opened.
    pub appends: u64,
}

/// Why an outbox operation failed. Every variant names the file.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {}: cannot open the database: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<sqlx::Error>,
    },
    #[error("outbox {}: {operation} failed: {source}", .path.display())]
    Database {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: Arc<sqlx::Error>,
    },
    #[error("outbox {} belongs to proxy `{found}`, not `{expected}`", .path.display())]
    ForeignProxy {
        path: PathBuf,
        expected: ProxyId,
        found: ProxyId,
    },
    #[error(
        "outbox {} has schema version {found}; this build understands version {supported}",
        .path.display()
    )]
    UnsupportedSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("outbox {}: corrupt {what}: {detail}", .path.display())]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("outbox {}: cannot encode records: {source}", .path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error(
        "outbox {}: cannot acknowledge sequence {sequence}: last sealed is {last_sequence}",
        .path.display()
    )]
    AcknowledgeBeyondLast {
        path: PathBuf,
        sequence: u64,
        last_sequence: u64,
    },
    #[error("outbox {}: sealing lost the race to other seals {attempts} times", .path.display())]
    SealContended { path: PathBuf, attempts: u32 },
    #[error("outbox {} is closed", .path.display())]
    Closed { path: PathBuf },
}

/// Handle to a durable outbox. Cheap to clone; the writer and the sealing timer stop when the
/// last handle is dropped or [`Outbox::close`] is called.
#[derive(Clone, Debug)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Arc<Ctx>,
    commands: mpsc::Sender<Command>,
    reader: SqlitePool,
    stats: Arc<Stats>,
    sealed: watch::Receiver<u64>,
    /// The sealing and checkpointing timers, stopped on close or drop.
    timers: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn stop_timers(&self) {
        if let Ok(mut timers) = self.timers.lock() {
            for task in timers.drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_timers();
    }
}

#[derive(Debug, Default)]
struct Stats {
    commits: AtomicU64,
    appends: AtomicU64,
}

type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;

#[derive(Debug)]
enum Command {
    Append {
        records: Vec<Record>,
        /// When the append was sent: the commit window runs from the oldest waiting append,
        /// so one that queued behind a commit does not wait a whole window more.
        sent: Instant,
        done: Reply<()>,
    },
    Seal {
        prepared: Box<PreparedSeal>,
        done: Reply<SealOutcome>,
    },
    Acknowledge {
        sequence: u64,
        done: Reply<()>,
    },
    Prune {
        done: Reply<u64>,
    },
    Close {
        done: Reply<()>,
    },
}

impl Outbox {
    /// Opens (creating if missing) the outbox at `path` for `proxy_id`, and starts the writer
    /// and, unless [`OutboxOptions::seal_interval`] is zero, the sealing and checkpointing
    /// timers. Must be called within a Tokio runtime.
    pub async fn open(
        path: &Path,
        proxy_id: ProxyId,
        opts: OutboxOptions,
    ) -> Result<Outbox, OutboxError> {
        let path = path.to_path_buf();
        let connect = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if opts.fsync_each_commit {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(BUSY_TIMEOUT)
            // After a checkpoint resets it, the WAL file is cut back to this size.
            .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
        let open_err = |e: sqlx::Error| OutboxError::Open {
            path: path.clone(),
            source: Arc::new(e),
        };

        let timer = !opts.seal_interval.is_zero();
        let mut conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(open_err)?;
        let ctx = Arc::new(Ctx {
            path: path.clone(),
            proxy_id,
            max_batch_records: opts.max_batch_records.max(1),
            seal_turn: tokio::sync::Mutex::new(()),
            unsealed: Mutex::new(UnsealedRows::default()),
        });
        let FileState {
            last_sequence,
            next_id,
        } = prepare_send(&mut conn, &ctx).await?;

        let reader = SqlitePoolOptions::new()
            .min_connections(0)
            // The sealer, the checkpointer and the server's reads each get one.
            .max_connections(3)
            .connect_with(connect.create_if_missing(false))
            .await
            .map_err(open_err)?;

        let stats = Arc::new(Stats::default());
        let (sealed_tx, sealed) = watch::channel(last_sequence);
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let writer = Writer {
            conn,
            ctx: ctx.clone(),
            stats: stats.clone(),
            sealed: sealed_tx,
            commit_interval: opts.commit_interval,
            max_pending_records: opts.max_pending_records.max(1),
            next_id,
        };
        tokio::spawn(writer.run(rx));

        let timers = if timer {
            vec![
                tokio::spawn(run_sealer(
                    commands.downgrade(),
                    reader.clone(),
                    ctx.clone(),
                    opts.seal_interval,
                )),
                tokio::spawn(run_checkpointer(
                    commands.downgrade(),
                    reader.clone(),
                    ctx.clone(),
                )),
            ]
        } else {
            Vec::new()
        };

        Ok(Outbox {
            inner: Arc::new(Inner {
                ctx,
                commands,
                reader,
                stats,
                sealed,
                timers: Mutex::new(timers),
            }),
        })
    }

    /// The file this outbox lives in.
    pub fn path(&self) -> &Path {
        &self.inner.ctx.path
    }

    pub fn proxy_id(&self) -> &ProxyId {
        &self.inner.ctx.proxy_id
    }

    /// Durable append: resolves only after the records are committed. Appends arriving within
    /// the commit interval share one transaction; their work records are merged first.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), OutboxError> {
        if records.is_empty() {
            return Ok(());
        }
        let sent = Instant::now();
        self.call(|done| Command::Append {
            records,
            sent,
            done,
        })
        .await
    }

    /// Seals committed-but-unbatched records (at most `max_batch_records` after merging, oldest
    /// first) into the next batch, `sequence` one above the last, in one transaction that also
    /// removes them from the unbatched table. `None` if nothing was waiting.
    ///
    /// The records are read, parsed and merged from a read snapshot off the writer (the
    /// parsing on a blocking thread), so appends keep committing meanwhile; the writer then
    /// applies the result in a short transaction, provided no other seal came in between
    /// (otherwise the preparation is repeated).
    pub async fn seal(&self) -> Result<Option<Batch>, OutboxError> {
        let batch = seal_with(&self.inner.reader, &self.inner.ctx, &self.inner.commands).await?;
        prune(&self.inner.commands, &self.inner.ctx.path).await?;
        Ok(batch)
    }

    /// Sealed batches not yet acknowledged, in sequence order, at most `limit`.
    pub async fn unacknowledged(&self, limit: usize) -> Result<Vec<Batch>, OutboxError> {
        self.unacknowledged_after(0, limit).await
    }

    /// Sealed batches not yet acknowledged with a sequence above `after` (those not sent yet),
    /// in sequence order, at most `limit`.
    pub async fn unacknowledged_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Batch>, OutboxError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT sequence, body FROM batches WHERE sequence > ? ORDER BY sequence LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.inner.reader)
        .await
        .map_err(self.db("reading unacknowledged batches"))?;
        rows.iter()
            .map(|row| {
                let stored: Vec<u8> = get(row, 1, &self.inner.ctx.path, "batch row")?;
                body::decode::<Batch>(&stored).map_err(|detail| OutboxError::Corrupt {
                    path: self.inner.ctx.path.clone(),
                    what: "batch body",
                    detail,
                })
            })
            .collect()
    }

    /// The server acknowledged `sequence`: deletes it and every batch below it. Acknowledging
    /// a sequence again (or a lower one) does nothing. A sequence above the last sealed one is
    /// an error: it means the server and this file disagree about history.
    pub async fn acknowledge(&self, sequence: u64) -> Result<(), OutboxError> {
        self.call(|done| Command::Acknowledge { sequence, done })
            .await
    }

    /// Counters, read from one committed snapshot (plus this handle's commit statistics).
    pub async fn totals(&self) -> Result<OutboxTotals, OutboxError> {
        let path = &self.inner.ctx.path;
        let mut tx = self
            .inner
            .reader
            .begin()
            .await
            .map_err(self.db("beginning a read"))?;
        let meta = read_meta(&mut tx, path).await?;
        // Appended: what was ever sealed, plus the rows not sealed yet (at most a few seconds
        // of commits while sealing keeps up).
        let rows = sqlx::query("SELECT work, shares FROM unbatched WHERE id > ?")
            .bind(meta.sealed_through)
            .fetch_all(&mut *tx)
            .await
            .map_err(self.db("reading unbatched rows"))?;
        let (mut appended_work, mut appended_shares) = (meta.sealed_work, meta.sealed_shares);
        for row in &rows {
            let w: String = get(row, 0, path, "unbatched.work")?;
            appended_work = appended_work.saturating_add(parse_work(path, "unbatched.work", &w)?);
            let n: i64 = get(row, 1, path, "unbatched.shares")?;
            appended_shares = appended_shares.saturating_add(to_u64(path, "unbatched.shares", n)?);
        }
        let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM batches")
            .fetch_one(&mut *tx)
            .await
            .map_err(self.db("counting batches"))?;
        tx.commit().await.map_err(self.db("ending a read"))?;
        let inconsistent = |what, a: u128, b: u128| {
            corrupt(path, what, format!("acknowledged {b} exceeds appended {a}"))
        };
        let held_work = appended_work
            .checked_sub(meta.acknowledged_work)
            .ok_or_else(|| inconsistent("work counters", appended_work, meta.acknowledged_work))?;
        let held_shares = appended_shares
            .checked_sub(meta.acknowledged_shares)
            .ok_or_else(|| {
                inconsistent(
                    "share counters",
                    appended_shares.into(),
                    meta.acknowledged_shares.into(),
                )
            })?;
        Ok(OutboxTotals {
            held_work,
            held_shares,
            appended_work,
            appended_shares,
            acknowledged_work: meta.acknowledged_work,
            acknowledged_shares: meta.acknowledged_shares,
            last_sequence: meta.last_sequence,
            acknowledged_sequence: meta.acknowledged_sequence,
            unacknowledged_batches: count(batches),
            unbatched_rows: count(rows.len() as i64),
            commits: self.inner.stats.commits.load(Ordering::Relaxed),
            appends: self.inner.stats.appends.load(Ordering::Relaxed),
        })
    }

    /// The last sealed sequence; changes whenever a batch is sealed, so a sender can wait on it
    /// instead of polling [`Outbox::unacknowledged`].
    pub fn sealed(&self) -> watch::Receiver<u64> {
        self.inner.sealed.clone()
    }

    /// Stops the sealing and checkpointing timers, commits every append queued before this
    /// call, checkpoints the WAL into the database file and closes it. Other handles still
    /// alive get [`OutboxError::Closed`] afterwards.
    pub async fn close(self) -> Result<(), OutboxError> {
        self.inner.stop_timers();
        self.inner.reader.close().await;
        self.call(|done| Command::Close { done }).await
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, OutboxError> {
        send_command(&self.inner.commands, &self.inner.ctx.path, command).await
    }

    fn db(&self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> OutboxError + '_ {
        db_err(&self.inner.ctx.path, operation)
    }
}

/// Sends a command to the writer and waits for its answer.
async fn send_command<T>(
    commands: &mpsc::Sender<Command>,
    path: &Path,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, OutboxError> {
    let (done, answer) = oneshot::channel();
    let closed = || OutboxError::Closed {
        path: path.to_path_buf(),
    };
    commands.send(command(done)).await.map_err(|_| closed())?;
    answer.await.map_err(|_| closed())?
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn db_err<'a>(
    path: &'a Path,
    operation: &'static str,
) -> impl FnOnce(sqlx::Error) -> OutboxError + 'a {
    move |e| OutboxError::Database {
        path: path.to_path_buf(),
        operation,
        source: Arc::new(e),
    }
}

fn get<'r, T>(
    row: &'r sqlx::sqlite::SqliteRow,
    index: usize,
    path: &Path,
    what: &'static str,
) -> Result<T, OutboxError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(index).map_err(|e| OutboxError::Corrupt {
        path: path.to_path_buf(),
        what,
        detail: e.to_string(),
    })
}

fn corrupt(path: &Path, what: &'static str, detail: impl ToString) -> OutboxError {
    OutboxError::Corrupt {
        path: path.to_path_buf(),
        what,
        detail: detail.to_string(),
    }
}

fn parse_work(path: &Path, what: &'static str, s: &str) -> Result<u128, OutboxError> {
    s.parse()
        .map_err(|e| corrupt(path, what, format!("`{s}`: {e}")))
}

fn to_u64(path: &Path, what: &'static str, v: i64) -> Result<u64, OutboxError> {
    u64::try_from(v).map_err(|_| corrupt(path, what, format!("negative value {v}")))
}

fn to_i64(path: &Path, what: &'static str, v: u64) -> Result<i64, OutboxError> {
    i64::try_from(v).map_err(|_| corrupt(path, what, format!("{v} exceeds the storable range")))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the writer, the sealing and the migration need to know about the file.
#[derive(Debug)]
struct Ctx {
    path: PathBuf,
    proxy_id: ProxyId,
    max_batch_records: usize,
    /// One seal prepared at a time: seals prepared side by side from one snapshot would all but
    /// one go stale, and could starve each other.
    seal_turn: tokio::sync::Mutex<()>,
    /// The records of committed unbatched rows, as the writer had them, so that sealing does
    /// not parse them back from JSON. Only a shortcut: a row missing here is read from the file.
    unsealed: Mutex<UnsealedRows>,
}

impl Ctx {
    fn unsealed(&self) -> std::sync::MutexGuard<'_, UnsealedRows> {
        // A panic while holding it cannot leave it inconsistent in a way that matters: every
        // entry is only a shortcut for a row in the file.
        self.unsealed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records held for [`UnsealedRows::take`] at most (about 10 s of shares at 20,000/s), so an
/// outbox that is sealed rarely or never (`seal_interval` zero) does not grow without bound.
const UNSEALED_RECORDS_HELD: usize = 200_000;

/// Committed unbatched rows' records by row id. The writer adds a row's records as it writes the
/// row and forgets rows as it seals them; a seal being prepared takes entries out, and puts back
/// those of rows it did not reach (before it hands the seal to the writer, and seals take
/// turns, so those rows are unchanged). An entry therefore always describes the committed row
/// of its id; a seal that takes entries and then fails reads those rows from the file next time.
#[derive(Debug, Default)]
struct UnsealedRows {
    rows: HashMap<i64, Vec<Record>>,
    records: usize,
}

impl UnsealedRows {
    /// Holds a row's records, unless that would exceed [`UNSEALED_RECORDS_HELD`].
    fn hold(&mut self, id: i64, records: Vec<Record>) {
        if let Some(old) = self.rows.remove(&id) {
            self.records -= old.len();
        }
        if self.records + records.len() <= UNSEALED_RECORDS_HELD {
            self.records += records.len();
            self.rows.insert(id, records);
        }
    }

    fn take(&mut self, id: i64) -> Option<Vec<Record>> {
        let records = self.rows.remove(&id)?;
        self.records -= records.len();
        Some(records)
    }

    /// Forgets rows with an id up to `through` and the row `also` (sealed, or rewritten by a
    /// seal). Ids can be reused once a table is empty, so nothing stale may stay.
    fn forget(&mut self, through: Option<i64>, also: Option<i64>) {
        let through = through.unwrap_or(i64::MIN);
        let records = &mut self.records;
        self.rows.retain(|id, r| {
            let keep = *id > through && Some(*id) != also;
            if !keep {
                *records -= r.len();
            }
            keep
        });
    }
}

/// The `meta` row.
#[derive(Debug)]
struct Meta {
    last_sequence: u64,
    acknowledged_sequence: u64,
    acknowledged_work: u128,
    acknowledged_shares: u64,
    /// Unbatched rows with an id up to this one are sealed, awaiting deletion.
    sealed_through: i64,
    /// Credited work and shares ever sealed into batches.
    sealed_work: u128,
    sealed_shares: u64,
}

async fn read_meta(conn: &mut SqliteConnection, path: &Path) -> Result<Meta, OutboxError> {
    let row = sqlx::query(
        "SELECT last_sequence, acknowledged_sequence, acknowledged_work, acknowledged_shares, \
         sealed_through, sealed_work, sealed_shares FROM meta WHERE id = 1",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err(path, "reading the meta row"))?;
    let int =
        |i, what| -> Result<u64, OutboxError> { to_u64(path, what, get(&row, i, path, what)?) };
    let work = |i, what| -> Result<u128, OutboxError> {
        let s: String = get(&row, i, path, what)?;
        parse_work(path, what, &s)
    };
    Ok(Meta {
        last_sequence: int(0, "meta.last_sequence")?,
        acknowledged_sequence: int(1, "meta.acknowledged_sequence")?,
        acknowledged_work: work(2, "meta.acknowledged_work")?,
        acknowledged_shares: int(3, "meta.acknowledged_shares")?,
        sealed_through: get(&row, 4, path, "meta.sealed_through")?,
        sealed_work: work(5, "meta.sealed_work")?,
        sealed_shares: int(6, "meta.sealed_shares")?,
    })
}

/// Schema 2 keeps each unbatched row's credited work and shares beside it, so that an append is
/// one INSERT (no counter row rewritten per commit), and counts work in `meta` when it is sealed
/// instead of when it is appended. Migrated files keep the unused `appended_*` columns, and
/// their rows' new columns after the body.
async fn migrate_1_to_2(conn: &mut SqliteConnection, path: &Path) -> Result<(), OutboxError> {
    sqlx::Executor::execute(&mut *conn, MIGRATE_1_TO_2)
        .await
        .map_err(db_err(path, "migrating the schema from version 1"))?;
    let row = sqlx::query("SELECT appended_work, appended_shares FROM meta WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err(path, "reading the appended counters to migrate"))?;
    let appended_work: String = get(&row, 0, path, "meta.appended_work")?;
    let appended_work = parse_work(path, "meta.appended_work", &appended_work)?;
    let appended_shares: i64 = get(&row, 1, path, "meta.appended_shares")?;
    let appended_shares = to_u64(path, "meta.appended_shares", appended_shares)?;
    let (mut unsealed_work, mut unsealed_shares) = (0u128, 0u64);
    let rows = sqlx::query("SELECT id, body FROM unbatched")
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(path, "reading unbatched rows to migrate"))?;
    for row in &rows {
        let id: i64 = get(row, 0, path, "unbatched.id")?;
        let body: String = get(row, 1, path, "unbatched.body")?;
        let records: Vec<Record> = serde_json::from_str(&body)
            .map_err(|e| corrupt(path, "unbatched records", format!("row {id}: {e}")))?;
        let (work, shares) = credited(&records);
        unsealed_work = unsealed_work.saturating_add(work);
        unsealed_shares = unsealed_shares.saturating_add(shares);
        sqlx::query("UPDATE unbatched SET work = ?, shares = ? WHERE id = ?")
            .bind(work.to_string())
            .bind(to_i64(path, "unbatched.shares", shares)?)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db_err(path, "migrating an unbatched row"))?;
    }
    // Schema 1 counted rows as appended when written; schema 2 counts them when sealed.
    let (Some(sealed_work), Some(sealed_shares)) = (
        appended_work.checked_sub(unsealed_work),
        appended_shares.checked_sub(unsealed_shares),
    ) else {
        return Err(corrupt(
            path,
            "appended counters",
            format!("the unbatched rows hold {unsealed_work} work in {unsealed_shares} shares, more than the {appended_work} in {appended_shares} ever appended"),
        ));
    };
    sqlx::query("UPDATE meta SET sealed_work = ?, sealed_shares = ? WHERE id = 1")
        .bind(sealed_work.to_string())
        .bind(to_i64(path, "meta.sealed_shares", sealed_shares)?)
        .execute(&mut *conn)
        .await
        .map_err(db_err(path, "migrating the counters"))?;
    Ok(())
}

/// Creates the schema if the file is new (or migrates an older one), checks its version and
/// owner. Returns the last sealed sequence and the id for the next unbatched row.
/// [`prepare`] as a boxed `Send` future: checked with concrete lifetimes, which keeps
/// `Outbox::open` usable inside `tokio::spawn` (sqlx's executor bounds are otherwise not
/// provably `Send` for every lifetime).
fn prepare_send<'a>(
    conn: &'a mut SqliteConnection,
    ctx: &'a Ctx,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<FileState, OutboxError>> + Send + 'a>>
{
    Box::pin(prepare(conn, ctx))
}

/// What the writer starts from.
struct FileState {
    last_sequence: u64,
    /// The id for the next unbatched row.
    next_id: i64,
}

async fn prepare(conn: &mut SqliteConnection, ctx: &Ctx) -> Result<FileState, OutboxError> {
    let path = &ctx.path;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err(path, "reading the journal mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            path = %path.display(),
            journal_mode = %mode,
            "outbox is not in WAL mode (unsupported file system?); commits stay durable but slower"
        );
    }

    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db_err(path, "beginning the schema check"))?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err(path, "reading the schema version"))?;
    match version {
        0 => {
            // Through `Executor` with a plain `&str` (several statements run in turn):
            // `raw_sql` makes the future's `Send` unprovable for every lifetime.
            sqlx::Executor::execute(&mut *tx, SCHEMA)
                .await
                .map_err(db_err(path, "creating the schema"))?;
            sqlx::query("INSERT OR IGNORE INTO meta (id, proxy_id) VALUES (1, ?)")
                .bind(&ctx.proxy_id.0)
                .execute(&mut *tx)
                .await
                .map_err(db_err(path, "writing the meta row"))?;
        }
        1 | 2 => {
            if version == 1 {
                migrate_1_to_2(&mut tx, path).await?;
            }
            sqlx::Executor::execute(&mut *tx, MIGRATE_2_TO_3)
                .await
                .map_err(db_err(path, "migrating the schema from version 2"))?;
        }
        SCHEMA_VERSION => {}
        found => {
            return Err(OutboxError::UnsupportedSchema {
                path: path.clone(),
                found,
                supported: SCHEMA_VERSION,
            })
        }
    }
    let owner: String = sqlx::query_scalar("SELECT proxy_id FROM meta WHERE id = 1")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err(path, "reading the owner"))?;
    if owner != ctx.proxy_id.0 {
        return Err(OutboxError::ForeignProxy {
            path: path.clone(),
            expected: ctx.proxy_id.clone(),
            found: ProxyId(owner),
        });
    }
    let meta = read_meta(&mut tx, path).await?;
    let max_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM unbatched")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err(path, "reading the last unbatched row"))?;
    tx.commit()
        .await
        .map_err(db_err(path, "committing the schema"))?;
    // Ids are the writer's, never SQLite's: once every row is pruned SQLite would reuse ids at
    // or below `sealed_through`, and such a row would count as sealed.
    let next_id = max_id.unwrap_or(0).max(meta.sealed_through) + 1;
    Ok(FileState {
        last_sequence: meta.last_sequence,
        next_id,
    })
}

/// Owns the write connection; every write goes through [`Writer::run`].
struct Writer {
    conn: SqliteConnection,
    ctx: Arc<Ctx>,
    stats: Arc<Stats>,
    sealed: watch::Sender<u64>,
    commit_interval: Duration,
    max_pending_records: usize,
    /// The id of the next unbatched row; ids only grow.
    next_id: i64,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut carried: Option<Command> = None;
        loop {
            let command = match carried.take() {
                Some(c) => c,
                None => match rx.recv().await {
                    Some(c) => c,
                    None => break,
                },
            };
            match command {
                Command::Append {
                    records,
                    sent,
                    done,
                } => {
                    let (group, next) = self.gather(&mut rx, records, sent, done).await;
                    carried = next;
                    self.commit_group(group).await;
                }
                Command::Seal { prepared, done } => {
                    let _ = done.send(self.apply_seal(*prepared).await);
                }
                Command::Acknowledge { sequence, done } => {
                    let _ = done.send(self.acknowledge(sequence).await);
                }
                Command::Prune { done } => {
                    let _ = done.send(self.prune().await);
                }
                Command::Close { done } => {
                    let _ = done.send(self.close().await);
                    return;
                }
            }
        }
        // Every handle is gone: nothing can be pending. Close quietly.
        if let Err(e) = self.close().await {
            tracing::warn!(error = %e, "closing the outbox");
        }
    }

    /// Collects appends after the first until the commit interval has passed since the first
    /// was sent, or enough records are pending. Measured from the send, not from when the
    /// writer got to it: appends that queued during the previous commit have already waited
    /// that long, and (at high rates) would otherwise wait a whole window more. A different
    /// command ends the group and is handed back.
    async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<Command>,
        records: Vec<Record>,
        first_sent: Instant,
        done: Reply<()>,
    ) -> (Vec<(Vec<Record>, Reply<()>)>, Option<Command>) {
        let deadline = first_sent + self.commit_interval;
        let mut pending = records.len();
        let mut group = vec![(records, done)];
        while pending < self.max_pending_records {
            let next = match rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(c)) => c,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            match next {
                Command::Append { records, done, .. } => {
                    pending += records.len();
                    group.push((records, done));
                }
                other => return (group, Some(other)),
            }
        }
        (group, None)
    }

    async fn commit_group(&mut self, mut group: Vec<(Vec<Record>, Reply<()>)>) {
        let mut merger = Merger::unlimited();
        for (records, _) in &mut group {
            for r in std::mem::take(records) {
                if merger.push(r).is_some() {
                    unreachable!("an unlimited merger takes every record");
                }
            }
        }
        let result = self.write_append(merger.into_records()).await;
        if result.is_ok() {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .appends
                .fetch_add(group.len() as u64, Ordering::Relaxed);
        } else if let Err(e) = &result {
            tracing::error!(error = %e, appends = group.len(), "outbox commit failed");
        }
        for (_, done) in group {
            let _ = done.send(result.clone());
        }
    }

    /// One statement, so one transaction and one trip to the connection's thread: the row of
    /// records with its credited work and shares.
    async fn write_append(&mut self, records: Vec<Record>) -> Result<(), OutboxError> {
        let path = &self.ctx.path;
        let (work, shares) = credited(&records);
        let body = body::encode(&records).map_err(|e| OutboxError::Encode {
            path: path.clone(),
            source: Arc::new(e),
        })?;
        let shares = to_i64(path, "unbatched.shares", shares)?;
        let id = self.next_id;
        self.next_id += 1;
        // Held before the commit, so a seal that sees the row finds its records here; taken
        // back if the commit fails.
        self.ctx.unsealed().hold(id, records);
        let committed =
            sqlx::query("INSERT INTO unbatched (id, body, work, shares) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(body)
                .bind(work.to_string())
                .bind(shares)
                .execute(&mut self.conn)
                .await
                .map(|_| ())
                .map_err(db_err(path, "committing an append"));
        if committed.is_err() {
            self.ctx.unsealed().forget(None, Some(id));
        }
        committed
    }

    /// Applies a seal prepared from a snapshot, if nothing was sealed since that snapshot.
    async fn apply_seal(&mut self, prepared: PreparedSeal) -> Result<SealOutcome, OutboxError> {
        let path = &self.ctx.path;
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err(path, "beginning a seal"))?;
        let meta = read_meta(&mut tx, path).await?;
        let sealed_through = meta.sealed_through;
        if meta.last_sequence != prepared.last_sequence || sealed_through != prepared.sealed_through
        {
            tx.rollback()
                .await
                .map_err(db_err(path, "ending a stale seal"))?;
            return Ok(SealOutcome::Stale);
        }
        // Only a seal marks or rewrites unbatched rows, and none happened since the snapshot
        // (the sequence is unchanged), so these rows are exactly the ones prepared. Checked
        // anyway: a mismatch means "prepare again", never a double seal. The rows are only
        // marked sealed here; `prune` deletes them later, a few at a time.
        let new_sealed_through = prepared.consumed_through.unwrap_or(sealed_through);
        if let Some(through) = prepared.consumed_through {
            let rows: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM unbatched WHERE id > ? AND id <= ?")
                    .bind(sealed_through)
                    .bind(through)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err(path, "counting the rows to seal"))?;
            if count(rows) != prepared.consumed_rows {
                tx.rollback()
                    .await
                    .map_err(db_err(path, "ending a stale seal"))?;
                return Ok(SealOutcome::Stale);
            }
        }
        let partial_id = prepared.partial.as_ref().map(|p| p.id);
        if let Some(PartialRow {
            id,
            body,
            work,
            shares,
        }) = prepared.partial
        {
            let updated =
                sqlx::query("UPDATE unbatched SET body = ?, work = ?, shares = ? WHERE id = ?")
                    .bind(body)
                    .bind(work.to_string())
                    .bind(to_i64(path, "unbatched.shares", shares)?)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err(path, "keeping the records left over"))?
                    .rows_affected();
            if updated != 1 {
                tx.rollback()
                    .await
                    .map_err(db_err(path, "ending a stale seal"))?;
                return Ok(SealOutcome::Stale);
            }
        }
        let Some(sealed) = prepared.batch else {
            // Only empty rows were found (never written by this build); they are sealed now.
            sqlx::query("UPDATE meta SET sealed_through = ? WHERE id = 1")
                .bind(new_sealed_through)
                .execute(&mut *tx)
                .await
                .map_err(db_err(path, "marking rows sealed"))?;
            tx.commit()
                .await
                .map_err(db_err(path, "committing a seal"))?;
            self.ctx
                .unsealed()
                .forget(prepared.consumed_through, partial_id);
            return Ok(SealOutcome::Sealed(None));
        };
        let sequence = sealed.batch.sequence;
        let seq_i64 = to_i64(path, "batch sequence", sequence)?;
        sqlx::query("INSERT INTO batches (sequence, body, work, shares) VALUES (?, ?, ?, ?)")
            .bind(seq_i64)
            .bind(sealed.body)
            .bind(sealed.work.to_string())
            .bind(to_i64(path, "batch shares", sealed.shares)?)
            .execute(&mut *tx)
            .await
            .map_err(db_err(path, "inserting a batch"))?;
        sqlx::query(
            "UPDATE meta SET last_sequence = ?, sealed_through = ?, sealed_work = ?, \
             sealed_shares = ? WHERE id = 1",
        )
        .bind(seq_i64)
        .bind(new_sealed_through)
        .bind(meta.sealed_work.saturating_add(sealed.work).to_string())
        .bind(to_i64(
            path,
            "meta.sealed_shares",
            meta.sealed_shares.saturating_add(sealed.shares),
        )?)
        .execute(&mut *tx)
        .await
        .map_err(db_err(path, "advancing the sequence"))?;
        tx.commit()
            .await
            .map_err(db_err(path, "committing a seal"))?;
        self.ctx
            .unsealed()
            .forget(prepared.consumed_through, partial_id);
        self.sealed.send_replace(sequence);
        Ok(SealOutcome::Sealed(Some(sealed.batch)))
    }

    /// Deletes up to [`PRUNE_CHUNK`] sealed rows, oldest first, in one statement (its own
    /// transaction). Returns how many went.
    async fn prune(&mut self) -> Result<u64, OutboxError> {
        let path = &self.ctx.path;
        let deleted = sqlx::query(
            "DELETE FROM unbatched WHERE id IN (SELECT id FROM unbatched \
             WHERE id <= (SELECT sealed_through FROM meta WHERE id = 1) ORDER BY id LIMIT ?)",
        )
        .bind(PRUNE_CHUNK)
        .execute(&mut self.conn)
        .await
        .map_err(db_err(path, "deleting sealed rows"))?
        .rows_affected();
        Ok(deleted)
    }

    async fn acknowledge(&mut self, sequence: u64) -> Result<(), OutboxError> {
        let path = &self.ctx.path;
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err(path, "beginning an acknowledgement"))?;
        let meta = read_meta(&mut tx, path).await?;
        if sequence > meta.last_sequence {
            tx.rollback()
                .await
                .map_err(db_err(path, "ending a refused acknowledgement"))?;
            return Err(OutboxError::AcknowledgeBeyondLast {
                path: path.clone(),
                sequence,
                last_sequence: meta.last_sequence,
            });
        }
        if sequence <= meta.acknowledged_sequence {
            tx.rollback()
                .await
                .map_err(db_err(path, "ending a repeated acknowledgement"))?;
            return Ok(());
        }
        let seq_i64 = to_i64(path, "acknowledged sequence", sequence)?;
        let rows = sqlx::query("SELECT work, shares FROM batches WHERE sequence <= ?")
            .bind(seq_i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err(path, "reading acknowledged batches"))?;
        let (mut work, mut shares) = (0u128, 0u64);
        for row in &rows {
            let w: String = get(row, 0, path, "batches.work")?;
            work = work.saturating_add(parse_work(path, "batches.work", &w)?);
            let s: i64 = get(row, 1, path, "batches.shares")?;
            shares = shares.saturating_add(to_u64(path, "batches.shares", s)?);
        }
        sqlx::query("DELETE FROM batches WHERE sequence <= ?")
            .bind(seq_i64)
            .execute(&mut *tx)
            .await
            .map_err(db_err(path, "deleting acknowledged batches"))?;
        sqlx::query(
            "UPDATE meta SET acknowledged_sequence = ?, acknowledged_work = ?, \
             acknowledged_shares = ? WHERE id = 1",
        )
        .bind(seq_i64)
        .bind(meta.acknowledged_work.saturating_add(work).to_string())
        .bind(to_i64(
            path,
            "meta.acknowledged_shares",
            meta.acknowledged_shares.saturating_add(shares),
        )?)
        .execute(&mut *tx)
        .await
        .map_err(db_err(path, "updating the acknowledged counters"))?;
        tx.commit()
            .await
            .map_err(db_err(path, "committing an acknowledgement"))
    }

    /// Checkpoints the WAL into the main file and closes the connection.
    async fn close(self) -> Result<(), OutboxError> {
        let Writer { mut conn, ctx, .. } = self;
        let path = &ctx.path;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await
            .map_err(db_err(path, "checkpointing"))?;
        conn.close().await.map_err(db_err(path, "closing"))
    }
}

/// Seals every `interval`, and keeps sealing while batches come out full, so a backlog drains;
/// then has the writer delete the sealed rows. Holds only a weak sender: it never keeps the
/// writer alive.
async fn run_sealer(
    commands: mpsc::WeakSender<Command>,
    reader: SqlitePool,
    ctx: Arc<Ctx>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        loop {
            let Some(sender) = commands.upgrade() else {
                return;
            };
            let result = seal_with(&reader, &ctx, &sender).await;
            drop(sender);
            match result {
                Ok(Some(batch)) if batch.records.len() >= ctx.max_batch_records => continue,
                Ok(_) => break,
                Err(OutboxError::Closed { .. }) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "sealing the outbox failed; retrying next tick");
                    break;
                }
            }
        }
        let Some(sender) = commands.upgrade() else {
            return;
        };
        let pruned = prune(&sender, &ctx.path).await;
        drop(sender);
        match pruned {
            Ok(()) => {}
            Err(OutboxError::Closed { .. }) => return,
            Err(e) => {
                tracing::warn!(error = %e, "pruning sealed outbox rows failed; retrying next tick")
            }
        }
    }
}

/// Every [`CHECKPOINT_EVERY`], a PASSIVE WAL checkpoint from a read connection, concurrent with
/// commits: the writer's automatic checkpoint (which runs inside a commit, stalling the appends
/// waiting on it) then does not come due under a steady load. Ends when the writer is gone.
async fn run_checkpointer(commands: mpsc::WeakSender<Command>, reader: SqlitePool, ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if commands.upgrade().is_none() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&reader)
            .await
        {
            tracing::warn!(
                path = %ctx.path.display(),
                error = %e,
                "checkpointing the outbox WAL failed; retrying next tick"
            );
        }
    }
}

/// Deletes every sealed row, [`PRUNE_CHUNK`] per writer command: appends queued meanwhile
/// commit between the chunks.
async fn prune(commands: &mpsc::Sender<Command>, path: &Path) -> Result<(), OutboxError> {
    loop {
        let deleted = send_command(commands, path, |done| Command::Prune { done }).await?;
        if deleted < PRUNE_CHUNK as u64 {
            return Ok(());
        }
    }
}

/// How often a seal is prepared again after losing the race to another seal.
const SEAL_ATTEMPTS: u32 = 16;

/// A seal computed from a read snapshot, for the writer to apply.
#[derive(Debug)]
struct PreparedSeal {
    /// The last sequence in the snapshot; the seal applies only if it is still the last.
    last_sequence: u64,
    /// Rows up to this id were sealed before the snapshot.
    sealed_through: i64,
    /// Rows with an id up to this one went into the batch entirely…
    consumed_through: Option<i64>,
    /// …and there were this many of them.
    consumed_rows: u64,
    /// A row only partly taken, as it is to be rewritten.
    partial: Option<PartialRow>,
    batch: Option<SealedBatch>,
}

/// The records left over in a row a seal took only partly: the row's new contents.
#[derive(Debug)]
struct PartialRow {
    id: i64,
    body: Vec<u8>,
    work: u128,
    shares: u64,
}

#[derive(Debug)]
struct SealedBatch {
    batch: Batch,
    body: Vec<u8>,
    work: u128,
    shares: u64,
}

#[derive(Debug)]
enum SealOutcome {
    Sealed(Option<Batch>),
    /// Another seal came in between: prepare again.
    Stale,
}

async fn seal_with(
    reader: &SqlitePool,
    ctx: &Arc<Ctx>,
    commands: &mpsc::Sender<Command>,
) -> Result<Option<Batch>, OutboxError> {
    let _turn = ctx.seal_turn.lock().await;
    // Within this process seals take turns, so a stale preparation means another process has
    // the same file open (a misconfiguration, but one that must not corrupt anything).
    for _ in 0..SEAL_ATTEMPTS {
        let Some(prepared) = prepare_seal(reader, ctx).await? else {
            return Ok(None);
        };
        let prepared = Box::new(prepared);
        match send_command(commands, &ctx.path, |done| Command::Seal { prepared, done }).await? {
            SealOutcome::Sealed(batch) => return Ok(batch),
            SealOutcome::Stale => continue,
        }
    }
    Err(OutboxError::SealContended {
        path: ctx.path.clone(),
        attempts: SEAL_ATTEMPTS,
    })
}

/// An unbatched row's records: held by the writer, or the row's body read from the file.
enum RowRecords {
    Held(Vec<Record>),
    Stored(Vec<u8>),
}

/// Merging state of a seal being prepared.
struct SealScan {
    merger: Merger,
    consumed_through: Option<i64>,
    consumed_rows: u64,
    partial: Option<(i64, Vec<Record>)>,
}

impl SealScan {
    /// Feeds rows in id order until the batch is full; returns the rows it did not reach.
    fn feed(
        &mut self,
        rows: Vec<(i64, RowRecords)>,
        path: &Path,
    ) -> Result<Vec<(i64, RowRecords)>, OutboxError> {
        let mut rows = rows.into_iter();
        while let Some((id, row)) = rows.next() {
            let records = match row {
                RowRecords::Held(records) => records,
                RowRecords::Stored(stored) => body::decode(&stored)
                    .map_err(|e| corrupt(path, "unbatched records", format!("row {id}: {e}")))?,
            };
            let mut records = records.into_iter();
            while let Some(r) = records.next() {
                if let Some(r) = self.merger.push(r) {
                    let mut rest = vec![r];
                    rest.extend(records);
                    self.partial = Some((id, rest));
                    return Ok(rows.collect());
                }
            }
            self.consumed_through = Some(id);
            self.consumed_rows += 1;
        }
        Ok(Vec::new())
    }
}

/// Runs CPU-bound work (JSON of up to a second of shares) off the async workers.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OutboxError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(OutboxError::Closed {
            path: path.to_path_buf(),
        }),
    }
}

/// Reads the unbatched rows from one snapshot, oldest first, and merges them into at most
/// `max_batch_records` records. `None` if there is nothing to seal.
async fn prepare_seal(
    reader: &SqlitePool,
    ctx: &Arc<Ctx>,
) -> Result<Option<PreparedSeal>, OutboxError> {
    let path = &ctx.path;
    let mut tx = reader
        .begin()
        .await
        .map_err(db_err(path, "beginning a seal read"))?;
    let Meta {
        last_sequence,
        sealed_through,
        ..
    } = read_meta(&mut tx, path).await?;
    let mut scan = SealScan {
        merger: Merger::with_limit(ctx.max_batch_records),
        consumed_through: None,
        consumed_rows: 0,
        partial: None,
    };
    let mut after_id = sealed_through;
    while scan.partial.is_none() {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM unbatched WHERE id > ? ORDER BY id LIMIT ?")
                .bind(after_id)
                .bind(SEAL_READ_CHUNK)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err(path, "reading unbatched row ids"))?;
        let Some(&last_id) = ids.last() else {
            break;
        };
        after_id = last_id;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let held = ctx.unsealed().take(id);
            let row = match held {
                Some(records) => RowRecords::Held(records),
                None => RowRecords::Stored(
                    sqlx::query_scalar("SELECT body FROM unbatched WHERE id = ?")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_err(path, "reading unbatched records"))?,
                ),
            };
            rows.push((id, row));
        }
        let p = path.clone();
        let (s, result) = blocking(path, move || {
            let mut scan = scan;
            let result = scan.feed(rows, &p);
            (scan, result)
        })
        .await?;
        scan = s;
        // Rows past a full batch stay unbatched: their records go back for the next seal.
        for (id, row) in result? {
            if let RowRecords::Held(records) = row {
                ctx.unsealed().hold(id, records);
            }
        }
    }
    tx.rollback()
        .await
        .map_err(db_err(path, "ending a seal read"))?;
    if scan.consumed_rows == 0 && scan.partial.is_none() {
        return Ok(None);
    }

    let ctx = ctx.clone();
    blocking(path, move || {
        let path = &ctx.path;
        let encode = |e| OutboxError::Encode {
            path: path.clone(),
            source: Arc::new(e),
        };
        let partial = match scan.partial {
            Some((id, rest)) => {
                let (work, shares) = credited(&rest);
                Some(PartialRow {
                    id,
                    body: body::encode(&rest).map_err(encode)?,
                    work,
                    shares,
                })
            }
            None => None,
        };
        let batch = if scan.merger.is_empty() {
            None
        } else {
            let batch = Batch {
                proxy_id: ctx.proxy_id.clone(),
                sequence: last_sequence + 1,
                created_at_ms: now_ms(),
                records: scan.merger.into_records(),
            };
            let (work, shares) = credited(&batch.records);
            let body = body::encode(&batch).map_err(encode)?;
            Some(SealedBatch {
                batch,
                body,
                work,
                shares,
            })
        };
        Ok(Some(PreparedSeal {
            last_sequence,
            sealed_through,
            consumed_through: scan.consumed_through,
            consumed_rows: scan.consumed_rows,
            partial,
            batch,
        }))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use defpool_control::UserRecord;

    fn users(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                Record::User(UserRecord {
                    user: format!("u{i}"),
                    payout_address: None,
                    first_seen_ms: 1,
                })
            })
            .collect()
    }

    #[test]
    fn unsealed_rows_stay_within_their_bound_and_count_what_they_hold() {
        let mut rows = UnsealedRows::default();
        rows.hold(1, users(UNSEALED_RECORDS_HELD - 10));
        rows.hold(2, users(11));
        assert!(
            rows.take(2).is_none(),
            "past the bound a row is left to the file"
        );
        rows.hold(3, users(10));
        assert_eq!(rows.records, UNSEALED_RECORDS_HELD);
        // A row written again under the same id (ids restart once the table is empty) never
        // keeps the old records, even when the new ones are not held.
        rows.hold(3, users(11));
        assert!(rows.take(3).is_none());
        assert_eq!(rows.records, UNSEALED_RECORDS_HELD - 10);
        rows.hold(4, users(2));
        rows.hold(5, users(3));
        rows.hold(7, users(4));
        rows.forget(Some(4), Some(7));
        assert_eq!(rows.rows.keys().copied().collect::<Vec<_>>(), [5]);
        assert_eq!(rows.records, 3);
        assert_eq!(rows.take(5).map(|r| r.len()), Some(3));
        assert_eq!(rows.records, 0);
    }
}
