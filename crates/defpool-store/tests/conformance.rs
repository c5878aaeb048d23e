//! One conformance suite, run against SQLite (a temporary file) and PostgreSQL.
//!
//! PostgreSQL: `DEFPOOL_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Each test creates its own schema `defpool_test_<pid>_<n>` and drops it at the end. If
//! PostgreSQL is unreachable the PostgreSQL tests fail, unless `DEFPOOL_SKIP_POSTGRES=1`.
//!
//! The ingest figure: `cargo test -p defpool-store --test conformance -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use defpool_control::{
    Assignment, Batch, BlockState, Event, HealthState, MiningTarget, ProxyId, Record, UpstreamKind,
    UpstreamRef, UserRecord, WorkRecord,
};
use defpool_core::secret::Secret;
use defpool_core::{Algorithm, Ticker};
use defpool_store::*;
use sqlx::Connection;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_n() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh database for one test; removed when dropped (also when the test panics).
struct TestDb {
    store: Store,
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Schema { admin_url: String, schema: String },
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let path = std::env::temp_dir().join(format!(
            "defpool-store-test-{}-{}.db",
            std::process::id(),
            next_n()
        ));
        remove_sqlite(&path);
        let url = format!("sqlite:{}", path.display());
        let store = Store::connect(&url).await.expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        TestDb {
            store,
            url,
            cleanup: Cleanup::File(path),
        }
    }

    /// `None` when PostgreSQL is skipped on purpose.
    async fn postgres() -> Option<TestDb> {
        let db = TestDb::postgres_unmigrated().await?;
        db.store.migrate().await.expect("migrate PostgreSQL");
        Some(db)
    }

    /// A fresh, empty schema (nothing migrated); `None` when PostgreSQL is skipped on purpose.
    async fn postgres_unmigrated() -> Option<TestDb> {
        if std::env::var("DEFPOOL_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("DEFPOOL_SKIP_POSTGRES=1: skipping the PostgreSQL half");
            return None;
        }
        let admin_url =
            std::env::var("DEFPOOL_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_PG.to_string());
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => panic!(
                "PostgreSQL is unreachable ({e}). Start it (pg_ctlcluster … main start), point \
                 DEFPOOL_TEST_POSTGRES at a server, or set DEFPOOL_SKIP_POSTGRES=1 to skip the \
                 PostgreSQL half of the conformance suite."
            ),
        };
        let schema = format!("defpool_test_{}_{}", std::process::id(), next_n());
        sqlx::Executor::execute(
            &mut admin,
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str(),
        )
        .await
        .expect("drop old schema");
        sqlx::Executor::execute(&mut admin, format!("CREATE SCHEMA {schema}").as_str())
            .await
            .expect("create schema");
        admin.close().await.ok();
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
        let store = Store::connect(&url).await.expect("connect PostgreSQL");
        Some(TestDb {
            store,
            url,
            cleanup: Cleanup::Schema { admin_url, schema },
        })
    }
}

fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => remove_sqlite(path),
            Cleanup::Schema { admin_url, schema } => {
                let (url, schema) = (admin_url.clone(), schema.clone());
                // Drop runs inside the test's runtime: clean up on a thread with its own.
                let done = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async move {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                            let _ = sqlx::Executor::execute(&mut c, sql.as_str()).await;
                            let _ = c.close().await;
                        }
                    })
                });
                let _ = done.join();
            }
        }
    }
}

/// Generates `sqlite::<name>` and `postgres::<name>` for each conformance test.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                    db.store.close().await;
                }
            )*
        }
    };
}

conformance!(
    migrations_are_idempotent,
    batches_apply_exactly_once,
    runs_of_batches_apply_as_their_batches_would,
    concurrent_copies_of_a_batch_apply_once,
    bad_batches_change_nothing,
    users_and_workers_upsert,
    worker_figures_are_exact_across_folds,
    worker_totals_hold_under_concurrent_folds,
    work_sums_are_exact_beyond_u64,
    rollups_and_series,
    pplns_window,
    ledger_refuses_unbalanced_and_is_idempotent,
    concurrent_posts_of_a_transaction_apply_once,
    block_phases_are_stored,
    proxy_events_are_stored,
    decisions_assignments_and_admin_state,
    futures_are_send,
);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn t(s: &str) -> Ticker {
    s.parse().unwrap()
}

fn proxy(s: &str) -> ProxyId {
    ProxyId(s.into())
}

const MIN: u64 = 60_000;
/// A base time on a minute boundary.
const T0: u64 = 1_700_000_040_000;

fn work(user: &str, worker: &str, coin: &str, minute: u64, w: u128) -> WorkRecord {
    WorkRecord {
        user: user.into(),
        worker: worker.into(),
        coin: t(coin),
        epoch: 1,
        upstream: format!("{}-solo", coin.to_lowercase()),
        accepted_work: w,
        accepted_shares: 1,
        late_work: 0,
        late_shares: 0,
        rejected: BTreeMap::new(),
        from_ms: T0 + minute * MIN,
        to_ms: T0 + minute * MIN + 1_000,
    }
}

fn batch(p: &str, sequence: u64, records: Vec<Record>) -> Batch {
    Batch {
        proxy_id: proxy(p),
        sequence,
        created_at_ms: T0,
        records,
    }
}

fn works(records: Vec<WorkRecord>) -> Vec<Record> {
    records.into_iter().map(Record::Work).collect()
}

fn applied(o: ApplyOutcome) -> ApplySummary {
    match o {
        ApplyOutcome::Applied(s) => s,
        other => panic!("expected Applied, got {other:?}"),
    }
}

fn entry(account: &str, coin: &str, amount: i64) -> LedgerEntry {
    LedgerEntry {
        account: account.into(),
        coin: t(coin),
        amount,
    }
}

fn assignment(epoch: u64, coin: &str) -> Assignment {
    Assignment {
        epoch,
        group: "default".into(),
        algorithm: Algorithm::Scrypt,
        targets: vec![MiningTarget {
            coin: t(coin),
            merged: vec![t("DOGE")],
            weight: 1,
        }],
        upstreams: vec![UpstreamRef {
            name: format!("{}-solo", coin.to_lowercase()),
            coin: t(coin),
            kind: UpstreamKind::Adapter,
            address: "127.0.0.1:3400".into(),
            authority_public_key: None,
            username: "proxy-1".into(),
            password: Secret::new("x"),
        }],
        standby: vec![],
        issued_at_ms: T0 + epoch,
        reason: format!("epoch {epoch}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

async fn migrations_are_idempotent(db: &TestDb) {
    let s = &db.store;
    // The harness migrated once already.
    let again = s.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.version, 4);
    // A second handle on the same database (a restarted server) finds nothing to do either.
    let other = Store::connect(&db.url).await.unwrap();
    assert!(other.migrate().await.unwrap().applied.is_empty());
    // Concurrent migrators (several servers starting together) agree.
    let (a, b) = tokio::join!(s.migrate(), other.migrate());
    assert!(a.unwrap().applied.is_empty() && b.unwrap().applied.is_empty());
    other.close().await;
    assert_eq!(s.total_work().await.unwrap(), 0);

    match s.backend() {
        Backend::Sqlite => {
            // WAL is a property of the file: a plain connection sees it.
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut c)
                .await
                .unwrap();
            assert_eq!(mode.to_lowercase(), "wal");
            c.close().await.unwrap();
        }
        Backend::Postgres => {}
    }
}

async fn batches_apply_exactly_once(db: &TestDb) {
    let s = &db.store;
    let b1 = batch("p1", 1, works(vec![work("alice", "rig1", "LTC", 0, 1_000)]));
    let sum = applied(s.apply_batch(&b1).await.unwrap());
    assert_eq!(sum.work, 1_000);
    assert_eq!(sum.work_records, 1);
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 1);

    // The same batch again (a lost acknowledgement): acknowledged, nothing doubled.
    let again = s.apply_batch(&b1).await.unwrap();
    assert_eq!(again, ApplyOutcome::Duplicate { last_sequence: 1 });
    assert!(again.acknowledge());
    assert_eq!(s.total_work().await.unwrap(), 1_000);
    assert_eq!(s.workers("alice").await.unwrap()[0].accepted_shares, 1);

    // A gap is refused, and changes nothing.
    let b3 = batch("p1", 3, works(vec![work("alice", "rig1", "LTC", 0, 5)]));
    let gap = s.apply_batch(&b3).await.unwrap();
    assert_eq!(gap, ApplyOutcome::Gap { expected: 2 });
    assert!(!gap.acknowledge());
    assert_eq!(s.total_work().await.unwrap(), 1_000);
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 1);

    // Sequences are per proxy.
    let other = batch("p2", 1, works(vec![work("bob", "rig1", "LTC", 0, 7)]));
    applied(s.apply_batch(&other).await.unwrap());
    assert_eq!(
        s.apply_batch(&batch("p2", 5, vec![])).await.unwrap(),
        ApplyOutcome::Gap { expected: 2 }
    );
    // A new proxy must start at 1.
    assert_eq!(
        s.apply_batch(&batch("p3", 2, vec![])).await.unwrap(),
        ApplyOutcome::Gap { expected: 1 }
    );
    assert_eq!(s.last_sequence(&proxy("p3")).await.unwrap(), 0);

    let b2 = batch("p1", 2, works(vec![work("alice", "rig1", "LTC", 0, 20)]));
    applied(s.apply_batch(&b2).await.unwrap());
    applied(s.apply_batch(&b3).await.unwrap());
    // An old one after newer ones is still a duplicate.
    assert_eq!(
        s.apply_batch(&b1).await.unwrap(),
        ApplyOutcome::Duplicate { last_sequence: 3 }
    );
    // Empty batches advance the sequence too.
    applied(s.apply_batch(&batch("p1", 4, vec![])).await.unwrap());
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 4);
    assert_eq!(s.last_sequence(&proxy("p2")).await.unwrap(), 1);
    assert_eq!(s.total_work().await.unwrap(), 1_000 + 7 + 20 + 5);
}

/// A run of a proxy's consecutive batches (what the server applies in one transaction when
/// several are queued) stores exactly what applying them one by one stores, with one outcome
/// per batch; runs that start with duplicates, have a gap or are out of order fall back to
/// batch by batch.
async fn runs_of_batches_apply_as_their_batches_would(db: &TestDb) {
    let s = &db.store;
    let reference = match s.backend() {
        Backend::Sqlite => TestDb::sqlite().await,
        Backend::Postgres => TestDb::postgres()
            .await
            .expect("PostgreSQL as for the test"),
    };
    let hash = "00000000000000000000000000000000000000000000000000000000c0ffee00";
    let mut rejected = work("alice", "rig2", "LTC", 1, 0);
    rejected.accepted_shares = 0;
    rejected.rejected.insert("stale-share".into(), 3);
    let records = |seq: u64| -> Vec<Record> {
        // Every batch repeats workers and minutes of its neighbours, so rows add up across it.
        let mut r = works(vec![
            work("alice", "rig1", "LTC", seq % 2, 1_000 * seq as u128),
            work("alice", "rig2", "LTC", 1, 7),
            work("bob", "rig1", "DOGE", 2, (1u128 << 70) + seq as u128),
        ]);
        match seq {
            1 => r.push(Record::User(UserRecord {
                user: "alice".into(),
                payout_address: Some("bcrt1qalice".into()),
                first_seen_ms: T0,
            })),
            2 => {
                r.push(Record::Work(rejected.clone()));
                r.push(Record::Event(Event::BlockCandidate {
                    coin: t("LTC"),
                    epoch: 1,
                    upstream: "ltc-solo".into(),
                    user: "alice".into(),
                    worker: "rig1".into(),
                    block_hash: hash.into(),
                    height: Some(500),
                    at_ms: T0 + 5,
                }));
            }
            _ => {}
        }
        r
    };
    let run: Vec<Batch> = (1..=8).map(|seq| batch("p1", seq, records(seq))).collect();
    for b in &run {
        applied(reference.store.apply_batch(b).await.unwrap());
    }

    // 1–3 together: one outcome each, with each batch's own counts.
    let outcomes = s.apply_batches(&run[0..3]).await.unwrap();
    let sums: Vec<ApplySummary> = outcomes.into_iter().map(applied).collect();
    assert_eq!(
        sums.iter().map(|x| x.work_records).collect::<Vec<_>>(),
        vec![3, 4, 3]
    );
    assert_eq!(sums[0].user_records, 1);
    assert_eq!(
        sums.iter().map(|x| x.events).collect::<Vec<_>>(),
        vec![0, 1, 0]
    );
    assert_eq!(sums[1].block_changes.len(), 1);
    for (sum, b) in sums.iter().zip(&run) {
        assert_eq!(sum.work, b.accepted_work());
    }
    // One transaction: the run's rows (those of one key added up across it) are counted on its
    // last batch.
    assert_eq!(
        sums.iter().map(|x| x.work_rows).collect::<Vec<_>>(),
        vec![0, 0, 4]
    );
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 3);

    // 2–5: the duplicates are acknowledged again, 4 and 5 applied once.
    let outcomes = s.apply_batches(&run[1..5]).await.unwrap();
    assert_eq!(outcomes[0], ApplyOutcome::Duplicate { last_sequence: 3 });
    assert_eq!(outcomes[1], ApplyOutcome::Duplicate { last_sequence: 3 });
    applied(outcomes[2].clone());
    applied(outcomes[3].clone());
    // A run after a gap changes nothing.
    assert_eq!(
        s.apply_batches(&run[6..8]).await.unwrap(),
        vec![
            ApplyOutcome::Gap { expected: 6 },
            ApplyOutcome::Gap { expected: 6 }
        ]
    );
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 5);
    // Not consecutive: batch by batch (6 applies, 8 is a gap), then 7 and 8.
    let mixed = [run[5].clone(), run[7].clone()];
    let outcomes = s.apply_batches(&mixed).await.unwrap();
    applied(outcomes[0].clone());
    assert_eq!(outcomes[1], ApplyOutcome::Gap { expected: 7 });
    let outcomes = s.apply_batches(&run[6..8]).await.unwrap();
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, ApplyOutcome::Applied(_))));

    // Everything as the reference store has it, batch by batch.
    let (a, r) = (s, &reference.store);
    assert_eq!(a.total_work().await.unwrap(), r.total_work().await.unwrap());
    assert_eq!(a.last_sequence(&proxy("p1")).await.unwrap(), 8);
    for user in ["alice", "bob"] {
        assert_eq!(
            a.workers(user).await.unwrap(),
            r.workers(user).await.unwrap()
        );
        assert_eq!(a.user(user).await.unwrap(), r.user(user).await.unwrap());
        assert_eq!(
            a.hashrate_series(user, None, Bucket::Minute, 0, u64::MAX)
                .await
                .unwrap(),
            r.hashrate_series(user, None, Bucket::Minute, 0, u64::MAX)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        a.work_by_coin(0, u64::MAX).await.unwrap(),
        r.work_by_coin(0, u64::MAX).await.unwrap()
    );
    // The block event keeps the sequence of the batch it came in.
    let history = a.block_history(hash).await.unwrap();
    assert_eq!(history, r.block_history(hash).await.unwrap());
    assert_eq!(history[0].sequence, 2);
    reference.store.close().await;
}

async fn concurrent_copies_of_a_batch_apply_once(db: &TestDb) {
    let s = &db.store;
    for seq in 1..=3u64 {
        let records = works(
            (0..50)
                .map(|i| work(&format!("u{i}"), "w", "LTC", seq, 1 << 70))
                .collect(),
        );
        let b = batch("px", seq, records);
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (s, b) = (s.clone(), b.clone());
                tokio::spawn(async move { s.apply_batch(&b).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        let n_applied = outcomes
            .iter()
            .filter(|o| matches!(o, ApplyOutcome::Applied(_)))
            .count();
        assert_eq!(n_applied, 1, "{outcomes:?}");
        for o in &outcomes {
            match o {
                ApplyOutcome::Applied(_) => {}
                ApplyOutcome::Duplicate { last_sequence } => assert_eq!(*last_sequence, seq),
                ApplyOutcome::Gap { .. } => panic!("a copy saw a gap: {outcomes:?}"),
            }
        }
    }
    assert_eq!(s.total_work().await.unwrap(), 3 * 50 * (1u128 << 70));
    assert_eq!(s.last_sequence(&proxy("px")).await.unwrap(), 3);

    // Different proxies sharing users, concurrently: everything counted once.
    let tasks: Vec<_> = (0..4)
        .map(|p| {
            let s = s.clone();
            tokio::spawn(async move {
                for seq in 1..=5u64 {
                    let records = works(
                        (0..40)
                            .rev()
                            .map(|i| work(&format!("u{i}"), "w", "LTC", 10 + seq, 3))
                            .collect(),
                    );
                    applied(
                        s.apply_batch(&batch(&format!("q{p}"), seq, records))
                            .await
                            .unwrap(),
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        s.total_work().await.unwrap(),
        3 * 50 * (1u128 << 70) + 4 * 5 * 40 * 3
    );

    // Refused batches (a gap, a duplicate) among concurrent ones, which SQLite applies as one
    // group: each refused one changes nothing, the others are applied.
    let before = s.total_work().await.unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|p| {
            let s = s.clone();
            tokio::spawn(async move {
                let px = format!("r{p}");
                let records = |seq: u64| {
                    works(
                        (0..10)
                            .map(|i| work(&format!("u{i}"), &px, "LTC", 20 + seq, 5))
                            .collect(),
                    )
                };
                applied(s.apply_batch(&batch(&px, 1, records(1))).await.unwrap());
                let gap = s.apply_batch(&batch(&px, 3, records(3))).await.unwrap();
                assert!(matches!(gap, ApplyOutcome::Gap { .. }), "{gap:?}");
                applied(s.apply_batch(&batch(&px, 2, records(2))).await.unwrap());
                let again = s.apply_batch(&batch(&px, 1, records(1))).await.unwrap();
                assert!(
                    matches!(again, ApplyOutcome::Duplicate { last_sequence: 2 }),
                    "{again:?}"
                );
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(s.total_work().await.unwrap(), before + 6 * 2 * 10 * 5);
    for p in 0..6 {
        assert_eq!(s.last_sequence(&proxy(&format!("r{p}"))).await.unwrap(), 2);
    }
}

async fn bad_batches_change_nothing(db: &TestDb) {
    let s = &db.store;
    let mut w = work("alice", "rig1", "LTC", 0, 10);
    w.epoch = u64::MAX; // does not fit a signed 64-bit column
    let b = batch("p1", 1, vec![Record::Work(w)]);
    let err = s.apply_batch(&b).await.unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange { .. }), "{err}");
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 0);
    assert_eq!(s.total_work().await.unwrap(), 0);
    assert!(s.users().await.unwrap().is_empty());

    // Work overflowing u128 within one batch is refused whole.
    let b = batch(
        "p1",
        1,
        works(vec![
            work("alice", "rig1", "LTC", 0, u128::MAX),
            work("bob", "rig1", "LTC", 0, 1),
        ]),
    );
    let err = s.apply_batch(&b).await.unwrap_err();
    assert!(matches!(err, StoreError::WorkOverflow { .. }), "{err}");
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 0);

    // Across batches: the row that would overflow is refused by the database, atomically.
    applied(
        s.apply_batch(&batch(
            "p1",
            1,
            works(vec![work("alice", "rig1", "LTC", 0, u128::MAX)]),
        ))
        .await
        .unwrap(),
    );
    let err = s
        .apply_batch(&batch(
            "p1",
            2,
            works(vec![work("alice", "rig1", "LTC", 0, 1)]),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database { .. }), "{err}");
    assert_eq!(s.last_sequence(&proxy("p1")).await.unwrap(), 1);
    assert_eq!(s.total_work().await.unwrap(), u128::MAX);
}

/// Where the fold stands (minutes before it are folded into the workers' totals).
async fn folded_before(db: &TestDb) -> i64 {
    let sql = "SELECT folded_before_ms FROM work_fold";
    match &db.cleanup {
        Cleanup::File(_) => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        }
        Cleanup::Schema { .. } => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        }
    }
}

/// Batches over seven hours, in and out of order, for three workers; after each one every
/// worker's lifetime figures and window sums, and every user's last sighting and hashrate
/// series (per minute and per hour), equal a model kept by the test, whether the rows behind
/// them are folded, recent, or arrived after their minute was folded.
async fn worker_figures_are_exact_across_folds(db: &TestDb) {
    #[derive(Default, Debug, PartialEq)]
    struct Model {
        first_seen_ms: u64,
        last_seen_ms: u64,
        last_share_ms: Option<u64>,
        accepted: u64,
        late: u64,
        rejected: u64,
        work: u128,
    }
    let s = &db.store;
    let workers = [
        ("ltc1qalice", "rig1"),
        ("ltc1qalice", "rig2"),
        ("ltc1qbob", "rig1"),
    ];
    let mut model: BTreeMap<(&str, &str), Model> = BTreeMap::new();
    // Per user and minute: (work, shares, rejected, stale); per user: last sighting.
    let mut minutes: BTreeMap<(&str, u64), (u128, u64, u64, u64)> = BTreeMap::new();
    let mut last_seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut late_batches = 0;
    for seq in 1..=60u64 {
        // Mostly forward in time, one batch in five far in the past.
        let minute = if seq % 5 == 0 {
            next(seq * 7)
        } else {
            seq * 7 + next(5)
        };
        let fold_before_batch = folded_before(db).await;
        if ((T0 + minute * MIN) as i64) < fold_before_batch {
            late_batches += 1;
        }
        let mut records = Vec::new();
        for (i, (user, worker)) in workers.iter().enumerate() {
            if next(4) == 0 {
                continue;
            }
            // Values near 2^63 and 2^95: sums carry across 32-bit limbs and beyond u64.
            let big = u128::from(next(4)) << (62 + 32 * next(2));
            let mut w = work(user, worker, "LTC", minute, big + u128::from(next(1_000)));
            w.accepted_shares = next(3);
            w.late_shares = next(2);
            w.late_work = u128::from(w.late_shares * 10);
            w.from_ms += i as u64 * 1_000;
            w.to_ms = w.from_ms + 1_000 + next(50_000);
            if next(3) == 0 {
                w.rejected.insert("stale-share".into(), 1 + next(2));
            }
            let m = model.entry((*user, *worker)).or_insert_with(|| Model {
                first_seen_ms: w.from_ms,
                ..Model::default()
            });
            m.first_seen_ms = m.first_seen_ms.min(w.from_ms);
            m.last_seen_ms = m.last_seen_ms.max(w.to_ms);
            if w.accepted_shares + w.late_shares > 0 {
                m.last_share_ms = m.last_share_ms.max(Some(w.to_ms));
            }
            m.accepted += w.accepted_shares;
            m.late += w.late_shares;
            m.rejected += w.rejected.values().sum::<u64>();
            m.work += w.accepted_work + w.late_work;
            let stale = w.rejected.get("stale-share").copied().unwrap_or(0);
            let slot = minutes.entry((*user, T0 + minute * MIN)).or_default();
            slot.0 += w.accepted_work + w.late_work;
            slot.1 += w.accepted_shares + w.late_shares;
            slot.2 += stale;
            slot.3 += stale;
            let seen = last_seen.entry(*user).or_default();
            *seen = (*seen).max(w.to_ms);
            records.push(Record::Work(w));
        }
        applied(s.apply_batch(&batch("p1", seq, records)).await.unwrap());

        for user in ["ltc1qalice", "ltc1qbob"] {
            let stored = s.workers(user).await.unwrap();
            let window = s.worker_work(user, T0, T0 + 1_000 * MIN).await.unwrap();
            let expected: Vec<_> = model.iter().filter(|((u, _), _)| *u == user).collect();
            assert_eq!(stored.len(), expected.len(), "batch {seq}");
            assert_eq!(window.len(), expected.len(), "batch {seq}");
            for ((((_, worker), m), got), sums) in expected.iter().zip(&stored).zip(&window) {
                let as_stored = Model {
                    first_seen_ms: got.first_seen_ms,
                    last_seen_ms: got.last_seen_ms,
                    last_share_ms: got.last_share_ms,
                    accepted: got.accepted_shares,
                    late: got.late_shares,
                    rejected: got.rejected_shares,
                    work: sums.work,
                };
                assert_eq!(got.worker, *worker);
                assert_eq!(&as_stored, *m, "{user}.{worker} after batch {seq}");
                assert_eq!(sums.shares, m.accepted + m.late, "{user}.{worker}");
                assert_eq!(sums.rejected_shares, m.rejected, "{user}.{worker}");
            }
            if let Some(seen) = last_seen.get(user) {
                let info = s.user(user).await.unwrap().unwrap();
                assert_eq!(info.last_seen_ms, *seen, "{user} after batch {seq}");
                let listed = s.users().await.unwrap();
                let listed = listed.iter().find(|u| u.user == user).unwrap();
                assert_eq!(
                    listed.last_seen_ms, *seen,
                    "{user} listed after batch {seq}"
                );
            }
            for bucket in [Bucket::Minute, Bucket::Hour] {
                let size = bucket.millis();
                let mut expected: BTreeMap<u64, (u128, u64, u64, u64)> = BTreeMap::new();
                for ((_, t), v) in minutes.range((user, 0)..=(user, u64::MAX)) {
                    let slot = expected.entry(t - t % size).or_default();
                    slot.0 += v.0;
                    slot.1 += v.1;
                    slot.2 += v.2;
                    slot.3 += v.3;
                }
                let series = s
                    .hashrate_series(user, None, bucket, 0, T0 + 1_000 * MIN)
                    .await
                    .unwrap();
                let got: BTreeMap<u64, (u128, u64, u64, u64)> = series
                    .iter()
                    .map(|p| {
                        assert_eq!(p.coin, t("LTC"));
                        (
                            p.bucket_ms,
                            (p.work, p.shares, p.rejected_shares, p.stale_shares),
                        )
                    })
                    .collect();
                assert_eq!(got, expected, "{user} per {bucket:?} after batch {seq}");
            }
        }
    }
    // The run crossed several fold horizons and wrote rows behind them.
    assert!(folded_before(db).await >= (T0 + 5 * 60 * MIN) as i64 - 3_600_000);
    assert!(late_batches >= 5, "{late_batches} late batches");
    let total: u128 = model.values().map(|m| m.work).sum();
    assert_eq!(s.total_work().await.unwrap(), total);
}

/// Four proxies at once, each over five hours with some batches behind the fold horizon: folds
/// run while other batches are in flight, and every share ends up counted exactly once.
async fn worker_totals_hold_under_concurrent_folds(db: &TestDb) {
    // Three rounds, each a new user seven hours on: more folds racing batches.
    for round in 0..3u64 {
        let user = format!("ltc1qpool{round}");
        let tasks: Vec<_> = (0..4u64)
            .map(|p| {
                let s = db.store.clone();
                let user = user.clone();
                tokio::spawn(async move {
                    for seq in 1..=40u64 {
                        // Forward ten minutes a batch; every fourth batch three hours back.
                        let minute = if seq % 4 == 0 {
                            (seq * 10).saturating_sub(180)
                        } else {
                            seq * 10
                        } + p
                            + round * 420;
                        let records = (0..20u64)
                            .map(|k| {
                                let mut w = work(&user, &format!("rig{k}"), "LTC", minute, 1);
                                w.accepted_shares = 1 + p;
                                Record::Work(w)
                            })
                            .collect();
                        let b = batch(&format!("p{p}"), round * 40 + seq, records);
                        applied(s.apply_batch(&b).await.unwrap());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let folded = folded_before(db).await;
        assert!(
            folded > (T0 + (round * 420 + 180) * MIN) as i64,
            "round {round}"
        );
        let workers = db.store.workers(&user).await.unwrap();
        assert_eq!(workers.len(), 20);
        for w in &workers {
            // 40 batches from each proxy p, each with 1 + p shares per worker.
            assert_eq!(
                w.accepted_shares,
                40 * (1 + 2 + 3 + 4),
                "{user}.{}",
                w.worker
            );
        }
        let series = db
            .store
            .hashrate_series(&user, None, Bucket::Hour, 0, T0 + 10_000 * MIN)
            .await
            .unwrap();
        assert_eq!(series.iter().map(|p| p.work).sum::<u128>(), 4 * 40 * 20);
        assert_eq!(series.iter().map(|p| p.shares).sum::<u64>(), 20 * 40 * 10);
    }
}

async fn users_and_workers_upsert(db: &TestDb) {
    let s = &db.store;
    let mut w1 = work("ltc1qalice", "rig1", "LTC", 2, 100);
    w1.rejected.insert("stale-share".into(), 2);
    w1.rejected.insert("duplicate-share".into(), 1);
    w1.late_shares = 3;
    w1.late_work = 30;
    let b1 = batch(
        "p1",
        1,
        vec![
            Record::User(UserRecord {
                user: "ltc1qalice".into(),
                payout_address: Some("bc1qalicepayout".into()),
                first_seen_ms: T0 + 2 * MIN,
            }),
            Record::Work(w1),
            Record::User(UserRecord {
                user: "account-bob".into(),
                payout_address: None,
                first_seen_ms: T0 + 5 * MIN,
            }),
        ],
    );
    let sum = applied(s.apply_batch(&b1).await.unwrap());
    assert_eq!(sum.user_records, 2);
    assert_eq!(sum.work, 130);

    // Another proxy saw alice earlier, with no address; and a worker with only rejects.
    let mut w2 = work("ltc1qalice", "rig1", "LTC", 4, 50);
    w2.rejected.insert("stale-share".into(), 1);
    let mut w3 = work("ltc1qalice", "rig2", "LTC", 1, 0);
    w3.accepted_shares = 0;
    w3.rejected.insert("low-difficulty-share".into(), 4);
    let b2 = batch(
        "p2",
        1,
        vec![
            Record::User(UserRecord {
                user: "ltc1qalice".into(),
                payout_address: None,
                first_seen_ms: T0,
            }),
            Record::Work(w2),
            Record::Work(w3),
        ],
    );
    applied(s.apply_batch(&b2).await.unwrap());

    let users = s.users().await.unwrap();
    assert_eq!(
        users.iter().map(|u| u.user.as_str()).collect::<Vec<_>>(),
        ["account-bob", "ltc1qalice"]
    );
    let alice = s.user("ltc1qalice").await.unwrap().unwrap();
    assert_eq!(alice.payout_address.as_deref(), Some("bc1qalicepayout"));
    assert_eq!(alice.first_seen_ms, T0);
    assert_eq!(alice.last_seen_ms, T0 + 4 * MIN + 1_000);
    assert_eq!(s.user("nobody").await.unwrap(), None);
    let bob = s.user("account-bob").await.unwrap().unwrap();
    assert_eq!(bob.payout_address, None);

    let workers = s.workers("ltc1qalice").await.unwrap();
    assert_eq!(workers.len(), 2);
    let rig1 = &workers[0];
    assert_eq!(rig1.worker, "rig1");
    assert_eq!(rig1.accepted_shares, 2);
    assert_eq!(rig1.late_shares, 3);
    assert_eq!(rig1.rejected_shares, 4);
    assert_eq!(rig1.rejected_by_reason["stale-share"], 3);
    assert_eq!(rig1.rejected_by_reason["duplicate-share"], 1);
    assert_eq!(rig1.first_seen_ms, T0 + 2 * MIN);
    assert_eq!(rig1.last_share_ms, Some(T0 + 4 * MIN + 1_000));
    let rig2 = &workers[1];
    assert_eq!(rig2.accepted_shares, 0);
    assert_eq!(rig2.last_share_ms, None, "rejects only: no share time");
    assert_eq!(rig2.last_seen_ms, T0 + MIN + 1_000);
    assert_eq!(rig2.rejected_by_reason["low-difficulty-share"], 4);

    // A later accepted share sets the time; an older one never moves it back.
    let b3 = batch(
        "p2",
        2,
        works(vec![
            work("ltc1qalice", "rig2", "LTC", 9, 1),
            work("ltc1qalice", "rig1", "LTC", 0, 1),
        ]),
    );
    applied(s.apply_batch(&b3).await.unwrap());
    let workers = s.workers("ltc1qalice").await.unwrap();
    assert_eq!(workers[1].last_share_ms, Some(T0 + 9 * MIN + 1_000));
    assert_eq!(workers[0].last_share_ms, Some(T0 + 4 * MIN + 1_000));
    assert_eq!(workers[0].first_seen_ms, T0);

    // An address learnt later fills a missing one; an earlier sighting moves first_seen back;
    // neither replaces what is known.
    let b4 = batch(
        "p1",
        2,
        vec![
            Record::User(UserRecord {
                user: "account-bob".into(),
                payout_address: Some("bc1qbob".into()),
                first_seen_ms: T0 + 6 * MIN,
            }),
            Record::User(UserRecord {
                user: "ltc1qalice".into(),
                payout_address: Some("bc1qother".into()),
                first_seen_ms: T0 - MIN,
            }),
        ],
    );
    applied(s.apply_batch(&b4).await.unwrap());
    let bob = s.user("account-bob").await.unwrap().unwrap();
    assert_eq!(bob.payout_address.as_deref(), Some("bc1qbob"));
    assert_eq!(bob.first_seen_ms, T0 + 5 * MIN);
    assert_eq!(bob.last_seen_ms, T0 + 5 * MIN, "no workers: first seen");
    let alice = s.user("ltc1qalice").await.unwrap().unwrap();
    assert_eq!(alice.payout_address.as_deref(), Some("bc1qalicepayout"));
    assert_eq!(alice.first_seen_ms, T0 - MIN);
    assert_eq!(alice.last_seen_ms, T0 + 9 * MIN + 1_000);

    let recent = s.worker_work("ltc1qalice", T0, T0 + 5 * MIN).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].worker, "rig1");
    assert_eq!(recent[0].work, 130 + 50 + 1);
    assert_eq!(recent[0].stale_shares, 3);
    assert_eq!(recent[1].work, 0);
    assert_eq!(recent[1].rejected_shares, 4);
}

async fn work_sums_are_exact_beyond_u64(db: &TestDb) {
    let s = &db.store;
    let big = (1u128 << 100) + 0xFFFF_FFFF; // every limb boundary in play
    let mut expected_total = 0u128;
    let mut per_user: BTreeMap<String, u128> = BTreeMap::new();
    for seq in 1..=20u64 {
        let mut records = Vec::new();
        for u in 0..5 {
            // The same key many times: carries across limbs within stored rows.
            let w = big + u128::from(seq) * 0xFFFF_FFFF_FFFF + u as u128;
            records.push(work(&format!("user{u}"), "rig", "BTC", seq % 3, w));
            expected_total += w;
            *per_user.entry(format!("user{u}")).or_insert(0) += w;
        }
        applied(
            s.apply_batch(&batch("p1", seq, works(records)))
                .await
                .unwrap(),
        );
    }
    assert!(expected_total > u64::MAX as u128 * 1_000_000);
    assert_eq!(s.total_work().await.unwrap(), expected_total);
    let by_coin = s.work_by_coin(0, u64::MAX).await.unwrap();
    assert_eq!(by_coin[&t("BTC")], expected_total);
    assert_eq!(
        s.work_by_user(&t("BTC"), None, 0, u64::MAX).await.unwrap(),
        per_user
    );
    assert_eq!(
        s.work_by_user(&t("BTC"), Some("btc-solo"), 0, u64::MAX)
            .await
            .unwrap(),
        per_user
    );
    assert!(s
        .work_by_user(&t("BTC"), Some("elsewhere"), 0, u64::MAX)
        .await
        .unwrap()
        .is_empty());
    // Period bounds are minute starts: [T0 + 1 min, T0 + 2 min) holds minute 1 only.
    let minute1: u128 = (1..=20u64)
        .filter(|seq| seq % 3 == 1)
        .flat_map(|seq| (0..5).map(move |u| big + u128::from(seq) * 0xFFFF_FFFF_FFFF + u as u128))
        .sum();
    assert_eq!(
        s.work_by_coin(T0 + MIN, T0 + 2 * MIN).await.unwrap()[&t("BTC")],
        minute1
    );
    // u128::MAX itself round-trips.
    applied(
        s.apply_batch(&batch(
            "p9",
            1,
            works(vec![work("max", "rig", "DGB", 0, u128::MAX)]),
        ))
        .await
        .unwrap(),
    );
    assert_eq!(
        s.work_by_coin(0, u64::MAX).await.unwrap()[&t("DGB")],
        u128::MAX
    );
    // The total over everything now overflows u128: a typed error, not a wrong number.
    assert!(matches!(
        s.total_work().await,
        Err(StoreError::WorkOverflow { .. })
    ));
}

async fn rollups_and_series(db: &TestDb) {
    let s = &db.store;
    let mut records = Vec::new();
    // alice mines LTC in minutes 0..90 (1 per minute), DOGE in minute 5; bob LTC minute 61.
    for m in 0..90 {
        records.push(work("alice", "rig1", "LTC", m, 10));
    }
    records.push(work("alice", "rig2", "DOGE", 5, 1 << 80));
    let mut stale = work("bob", "rig1", "LTC", 61, 7);
    stale.rejected.insert("stale-share".into(), 2);
    records.push(stale);
    applied(
        s.apply_batch(&batch("p1", 1, works(records)))
            .await
            .unwrap(),
    );

    let minutes = s
        .hashrate_series("alice", Some(&t("LTC")), Bucket::Minute, T0, T0 + 3 * MIN)
        .await
        .unwrap();
    assert_eq!(minutes.len(), 3);
    assert_eq!(minutes[0].bucket_ms, T0);
    assert_eq!(minutes[0].work, 10);
    assert_eq!(minutes[0].shares, 1);

    let hours = s
        .hashrate_series("alice", None, Bucket::Hour, 0, u64::MAX)
        .await
        .unwrap();
    let hour0 = T0 - T0 % 3_600_000;
    let ltc: Vec<_> = hours.iter().filter(|p| p.coin == t("LTC")).collect();
    assert_eq!(ltc.iter().map(|p| p.work).sum::<u128>(), 900);
    assert!(ltc.iter().all(|p| p.bucket_ms % 3_600_000 == 0));
    assert_eq!(ltc[0].bucket_ms, hour0);
    let doge: Vec<_> = hours.iter().filter(|p| p.coin == t("DOGE")).collect();
    assert_eq!(doge.len(), 1);
    assert_eq!(doge[0].work, 1 << 80);

    let days = s
        .pool_series(Some(&t("LTC")), Bucket::Day, 0, u64::MAX)
        .await
        .unwrap();
    assert_eq!(days.iter().map(|p| p.work).sum::<u128>(), 907);
    assert_eq!(days.iter().map(|p| p.stale_shares).sum::<u64>(), 2);
    assert_eq!(days.iter().map(|p| p.rejected_shares).sum::<u64>(), 2);
    let all = s.pool_series(None, Bucket::Day, 0, u64::MAX).await.unwrap();
    assert_eq!(all.iter().map(|p| p.work).sum::<u128>(), 907 + (1 << 80));

    // Minute rollups agree with the work table.
    let by_coin = s.work_by_coin(0, u64::MAX).await.unwrap();
    assert_eq!(by_coin[&t("LTC")], 907);
    assert_eq!(by_coin[&t("DOGE")], 1 << 80);
}

async fn pplns_window(db: &TestDb) {
    let s = &db.store;
    // Minute 0: a 100, b 100. Minute 1: c 300. Minute 3: a 50 (to another upstream too).
    // Minute 10: after the block.
    let mut records = works(vec![
        work("a", "w", "LTC", 0, 100),
        work("b", "w", "LTC", 0, 100),
        work("c", "w", "LTC", 1, 300),
        work("a", "w", "LTC", 3, 50),
        work("z", "w", "LTC", 10, 1_000_000),
        work("q", "w", "DOGE", 2, 999),
    ]);
    let mut pool = work("a", "w", "LTC", 3, 1_000);
    pool.upstream = "viabtc-ltc".into();
    records.push(Record::Work(pool));
    applied(s.apply_batch(&batch("p1", 1, records)).await.unwrap());
    let until = T0 + 3 * MIN + 30_000; // during minute 3
    let solo = Some("ltc-solo");

    // Covered by the newest minutes alone.
    let w = s
        .work_window_before(&t("LTC"), solo, until, 350)
        .await
        .unwrap();
    assert_eq!(w.total, 350);
    assert!(w.complete);
    assert_eq!(
        w.per_user,
        BTreeMap::from([("a".into(), 50), ("c".into(), 300)])
    );
    assert_eq!(w.oldest_minute_ms, Some(T0 + MIN));

    // The boundary minute is shared pro rata: 50 more from minute 0 → a 25, b 25.
    let w = s
        .work_window_before(&t("LTC"), solo, until, 400)
        .await
        .unwrap();
    assert_eq!(w.total, 400);
    assert_eq!(
        w.per_user,
        BTreeMap::from([("a".into(), 75), ("b".into(), 25), ("c".into(), 300)])
    );
    assert_eq!(w.oldest_minute_ms, Some(T0));

    // An odd unit goes to the larger remainder, ties to the smaller name: 51 → a 26, b 25.
    let w = s
        .work_window_before(&t("LTC"), solo, until, 401)
        .await
        .unwrap();
    assert_eq!(w.per_user["a"], 76);
    assert_eq!(w.per_user["b"], 25);
    assert_eq!(w.total, 401);

    // More than all the history: everything, incomplete.
    let w = s
        .work_window_before(&t("LTC"), solo, until, 10_000)
        .await
        .unwrap();
    assert_eq!(w.total, 550);
    assert!(!w.complete);

    // All upstreams: the pool's work counts too.
    let w = s
        .work_window_before(&t("LTC"), None, until, 1_050)
        .await
        .unwrap();
    assert_eq!(w.per_user["a"], 1_050);
    assert_eq!(w.per_user.len(), 1);

    // Before any work; zero window; another coin.
    let w = s
        .work_window_before(&t("LTC"), solo, T0 - 1, 10)
        .await
        .unwrap();
    assert_eq!(w, PplnsWindow::default());
    let w = s
        .work_window_before(&t("LTC"), solo, until, 0)
        .await
        .unwrap();
    assert!(w.complete && w.per_user.is_empty());
    let w = s
        .work_window_before(&t("BTC"), None, until, 10)
        .await
        .unwrap();
    assert_eq!(w.total, 0);

    // A window reaching back over a long gap (days): found through the widening search.
    let mut old = work("old", "w", "LTC", 0, 5);
    old.from_ms = T0 - 40 * 86_400_000;
    old.to_ms = old.from_ms + 1;
    applied(
        s.apply_batch(&batch("p1", 2, vec![Record::Work(old)]))
            .await
            .unwrap(),
    );
    let w = s
        .work_window_before(&t("LTC"), solo, until, 553)
        .await
        .unwrap();
    assert_eq!(w.total, 553);
    assert_eq!(w.per_user["old"], 3);
    assert_eq!(w.oldest_minute_ms, Some(T0 - 40 * 86_400_000));

    // PROP inputs over the same data.
    let prop = s
        .work_by_user(&t("LTC"), solo, T0, T0 + 4 * MIN)
        .await
        .unwrap();
    assert_eq!(
        prop,
        BTreeMap::from([("a".into(), 150), ("b".into(), 100), ("c".into(), 300)])
    );
}

async fn ledger_refuses_unbalanced_and_is_idempotent(db: &TestDb) {
    let s = &db.store;
    let unbalanced = [entry("pool", "LTC", -100), entry("alice", "LTC", 99)];
    let err = s.post_entries("t1", &unbalanced, "bad").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unbalanced { coin, sum: -1, .. } if *coin == t("LTC")),
        "{err}"
    );
    assert_eq!(err.code(), "unbalanced");
    // Balanced in total but not per coin.
    let mixed = [entry("pool", "LTC", -5), entry("alice", "BTC", 5)];
    assert!(matches!(
        s.post_entries("t1", &mixed, "bad").await,
        Err(StoreError::Unbalanced { .. })
    ));
    assert!(matches!(
        s.post_entries("t1", &[], "empty").await,
        Err(StoreError::EmptyTransaction { .. })
    ));
    assert_eq!(s.ledger_txn("t1").await.unwrap(), None);

    let credit = [
        entry("coin:LTC:earnings", "LTC", -1_000),
        entry("user:alice", "LTC", 690),
        entry("user:bob", "LTC", 300),
        entry("pool:fees", "LTC", 10),
    ];
    assert_eq!(
        s.post_entries("block:abc:credit", &credit, "block abc matured")
            .await
            .unwrap(),
        PostOutcome::Posted
    );
    // Again (a retried request): nothing doubles; the order of entries does not matter.
    let mut reordered = credit.to_vec();
    reordered.reverse();
    assert_eq!(
        s.post_entries("block:abc:credit", &reordered, "block abc matured")
            .await
            .unwrap(),
        PostOutcome::AlreadyPosted
    );
    assert_eq!(s.balance("user:alice", &t("LTC")).await.unwrap(), 690);
    // The same id for something else is a conflict.
    let other = [entry("user:alice", "LTC", 1), entry("pool:fees", "LTC", -1)];
    assert!(matches!(
        s.post_entries("block:abc:credit", &other, "block abc matured")
            .await,
        Err(StoreError::TxnConflict { .. })
    ));
    assert!(matches!(
        s.post_entries("block:abc:credit", &credit, "another memo")
            .await,
        Err(StoreError::TxnConflict { .. })
    ));

    // A reversal, a multi-coin transaction, a conversion.
    let reversal: Vec<_> = credit
        .iter()
        .map(|e| LedgerEntry {
            amount: -e.amount,
            ..e.clone()
        })
        .collect();
    s.post_entries("block:abc:reverse", &reversal, "block abc orphaned")
        .await
        .unwrap();
    s.post_entries(
        "convert:1",
        &[
            entry("user:bob", "LTC", -300),
            entry("exchange", "LTC", 300),
            entry("exchange", "BTC", -2_000),
            entry("user:bob", "BTC", 2_000),
            entry("user:bob", "BTC", 1),
            entry("user:bob", "BTC", -1),
        ],
        "conversion",
    )
    .await
    .unwrap();

    assert_eq!(s.balance("user:alice", &t("LTC")).await.unwrap(), 0);
    assert_eq!(s.balance("user:nobody", &t("LTC")).await.unwrap(), 0);
    let bob = s.balances("user:bob").await.unwrap();
    assert_eq!(bob[&t("LTC")], -300);
    assert_eq!(bob[&t("BTC")], 2_000);
    assert_eq!(s.ledger_sum(&t("LTC")).await.unwrap(), 0);
    assert_eq!(s.ledger_sum(&t("BTC")).await.unwrap(), 0);
    assert_eq!(s.ledger_check().await.unwrap(), (0, 0));

    let txn = s.ledger_txn("block:abc:credit").await.unwrap().unwrap();
    assert_eq!(txn.entries, credit.to_vec());
    assert_eq!(txn.memo, "block abc matured");
    let history = s.account_entries("user:bob", 10).await.unwrap();
    assert_eq!(history.len(), 6);
    assert_eq!(history[0].txn_id, "convert:1");
    assert_eq!(history.last().unwrap().amount, 300);
    assert_eq!(history.last().unwrap().memo, "block abc matured");

    // Extremes: i64 amounts balance without overflow in the check.
    s.post_entries(
        "extreme",
        &[entry("x", "DOGE", i64::MAX), entry("y", "DOGE", -i64::MAX)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(s.ledger_sum(&t("DOGE")).await.unwrap(), 0);
}

async fn concurrent_posts_of_a_transaction_apply_once(db: &TestDb) {
    let s = &db.store;
    let entries = vec![entry("a", "LTC", -7), entry("b", "LTC", 7)];
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (s, e) = (s.clone(), entries.clone());
            tokio::spawn(async move { s.post_entries("once", &e, "m").await })
        })
        .collect();
    let mut posted = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            PostOutcome::Posted => posted += 1,
            PostOutcome::AlreadyPosted => {}
        }
    }
    assert_eq!(posted, 1);
    assert_eq!(s.balance("b", &t("LTC")).await.unwrap(), 7);
    assert_eq!(s.ledger_check().await.unwrap(), (0, 0));
}

fn status(hash: &str, state: BlockState, confirmations: i64, at: u64) -> Record {
    Record::Event(Event::BlockStatus {
        coin: t("LTC"),
        adapter: "ltc-adapter".into(),
        height: 432,
        block_hash: hash.into(),
        state,
        confirmations,
        at_ms: at,
    })
}

async fn block_phases_are_stored(db: &TestDb) {
    let s = &db.store;
    let hash = "00000000000000000000000000000000000000000000000000000000deadbeef";
    // The proxy's candidate.
    let candidate = Record::Event(Event::BlockCandidate {
        coin: t("LTC"),
        epoch: 4,
        upstream: "ltc-solo".into(),
        user: "ltc1qalice".into(),
        worker: "rig1".into(),
        block_hash: hash.into(),
        height: Some(432),
        at_ms: T0,
    });
    let sum = applied(
        s.apply_batch(&batch("proxy-1", 1, vec![candidate.clone()]))
            .await
            .unwrap(),
    );
    assert_eq!(
        sum.block_changes,
        vec![BlockChange {
            block_hash: hash.into(),
            coin: t("LTC"),
            from: None,
            to: BlockPhase::Candidate
        }]
    );
    // The adapter: found, then immature, matured, orphaned, over several batches.
    let found = Record::Event(Event::BlockFound {
        coin: t("LTC"),
        adapter: "ltc-adapter".into(),
        height: 432,
        block_hash: hash.into(),
        reward: 625_000_000,
        found_by: "proxy-1".into(),
        at_ms: T0 + 10,
    });
    let sum = applied(
        s.apply_batch(&batch(
            "adapter-ltc",
            1,
            vec![found, status(hash, BlockState::Immature, 1, T0 + 20)],
        ))
        .await
        .unwrap(),
    );
    assert_eq!(
        sum.block_changes
            .iter()
            .map(|c| (c.from, c.to))
            .collect::<Vec<_>>(),
        [
            (Some(BlockPhase::Candidate), BlockPhase::Found),
            (Some(BlockPhase::Found), BlockPhase::Immature)
        ]
    );
    let b = s.block(hash).await.unwrap().unwrap();
    assert_eq!(b.phase, BlockPhase::Immature);
    assert_eq!(b.reward, Some(625_000_000));
    assert_eq!(b.user.as_deref(), Some("ltc1qalice"));
    assert_eq!(b.worker.as_deref(), Some("rig1"));
    assert_eq!(b.epoch, Some(4));
    assert_eq!(b.found_by.as_deref(), Some("proxy-1"));
    assert_eq!(b.adapter.as_deref(), Some("ltc-adapter"));
    assert_eq!(b.height, Some(432));
    assert_eq!(b.first_seen_ms, T0);
    assert_eq!(b.found_at_ms, Some(T0 + 10));
    assert_eq!(b.confirmations, Some(1));

    // A repeated status (the tracker's next poll) changes nothing but confirmations.
    let sum = applied(
        s.apply_batch(&batch(
            "adapter-ltc",
            2,
            vec![status(hash, BlockState::Immature, 50, T0 + 30)],
        ))
        .await
        .unwrap(),
    );
    assert!(sum.block_changes.is_empty());
    assert_eq!(
        s.block(hash).await.unwrap().unwrap().confirmations,
        Some(50)
    );

    applied(
        s.apply_batch(&batch(
            "adapter-ltc",
            3,
            vec![status(hash, BlockState::Matured, 101, T0 + 40)],
        ))
        .await
        .unwrap(),
    );
    assert_eq!(
        s.block(hash).await.unwrap().unwrap().phase,
        BlockPhase::Matured
    );
    // The adapter's batch retransmitted: no second transition.
    assert_eq!(
        s.apply_batch(&batch(
            "adapter-ltc",
            3,
            vec![status(hash, BlockState::Matured, 101, T0 + 40)]
        ))
        .await
        .unwrap(),
        ApplyOutcome::Duplicate { last_sequence: 3 }
    );
    let sum = applied(
        s.apply_batch(&batch(
            "adapter-ltc",
            4,
            vec![status(hash, BlockState::Orphaned, -1, T0 + 50)],
        ))
        .await
        .unwrap(),
    );
    assert_eq!(sum.block_changes[0].from, Some(BlockPhase::Matured));
    assert_eq!(sum.block_changes[0].to, BlockPhase::Orphaned);
    // A late candidate from another proxy never moves the adapter's phase.
    let late = Record::Event(Event::BlockCandidate {
        coin: t("LTC"),
        epoch: 9,
        upstream: "other".into(),
        user: "mallory".into(),
        worker: "x".into(),
        block_hash: hash.into(),
        height: None,
        at_ms: T0 + 60,
    });
    let sum = applied(
        s.apply_batch(&batch("proxy-2", 1, vec![late]))
            .await
            .unwrap(),
    );
    assert!(sum.block_changes.is_empty());
    let b = s.block(hash).await.unwrap().unwrap();
    assert_eq!(b.phase, BlockPhase::Orphaned);
    assert_eq!(
        b.user.as_deref(),
        Some("ltc1qalice"),
        "the first candidate's finder stays"
    );
    assert_eq!(b.confirmations, Some(-1));

    let history = s.block_history(hash).await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.phase).collect::<Vec<_>>(),
        [
            BlockPhase::Candidate,
            BlockPhase::Found,
            BlockPhase::Immature,
            BlockPhase::Immature,
            BlockPhase::Matured,
            BlockPhase::Orphaned,
            BlockPhase::Candidate,
        ]
    );
    assert_eq!(history[1].proxy_id, proxy("adapter-ltc"));
    assert_eq!(history[4].sequence, 3);

    // A found block arriving before its candidate; and a rejected block.
    let other = "00000000000000000000000000000000000000000000000000000000cafebabe";
    let found = Record::Event(Event::BlockFound {
        coin: t("LTC"),
        adapter: "ltc-adapter".into(),
        height: 433,
        block_hash: other.into(),
        reward: 1,
        found_by: "proxy-1".into(),
        at_ms: T0 + 100,
    });
    applied(
        s.apply_batch(&batch("adapter-ltc", 5, vec![found]))
            .await
            .unwrap(),
    );
    let cand = Record::Event(Event::BlockCandidate {
        coin: t("LTC"),
        epoch: 5,
        upstream: "ltc-solo".into(),
        user: "bob".into(),
        worker: "r".into(),
        block_hash: other.into(),
        height: Some(433),
        at_ms: T0 + 99,
    });
    applied(
        s.apply_batch(&batch("proxy-1", 2, vec![cand]))
            .await
            .unwrap(),
    );
    let b = s.block(other).await.unwrap().unwrap();
    assert_eq!(b.phase, BlockPhase::Found);
    assert_eq!(b.user.as_deref(), Some("bob"));
    assert_eq!(b.first_seen_ms, T0 + 99);

    let rejected = "00000000000000000000000000000000000000000000000000000000badbad00";
    let r = Record::Event(Event::BlockRejected {
        coin: t("DOGE"),
        adapter: "doge-adapter".into(),
        height: 7,
        block_hash: rejected.into(),
        reason: "bad-txns".into(),
        at_ms: T0 + 200,
    });
    applied(
        s.apply_batch(&batch("adapter-doge", 1, vec![r]))
            .await
            .unwrap(),
    );
    let b = s.block(rejected).await.unwrap().unwrap();
    assert_eq!(b.phase, BlockPhase::Rejected);
    assert_eq!(b.reason.as_deref(), Some("bad-txns"));
    assert_eq!(b.reward, None);

    let ltc = s.blocks(Some(&t("LTC")), 10).await.unwrap();
    assert_eq!(
        ltc.iter()
            .map(|b| b.block_hash.as_str())
            .collect::<Vec<_>>(),
        [other, hash]
    );
    assert_eq!(s.blocks(None, 10).await.unwrap().len(), 3);
    assert_eq!(s.blocks(None, 1).await.unwrap()[0].block_hash, rejected);
    assert_eq!(s.block("nope").await.unwrap(), None);
}

async fn proxy_events_are_stored(db: &TestDb) {
    let s = &db.store;
    let switch = Event::SwitchTiming {
        algorithm: Algorithm::Scrypt,
        from_epoch: 3,
        to_epoch: 4,
        from_coin: Some(t("LTC")),
        to_coin: t("DOGE"),
        miners: 120,
        first_job_p50_ms: 4,
        first_job_p99_ms: 40,
        first_job_max_ms: 95,
        extranonce_resets: 2,
        reconnects: 0,
        at_ms: T0 + 5,
    };
    let records = vec![
        Record::Event(Event::UpstreamHealth {
            upstream: "viabtc-ltc".into(),
            coin: t("LTC"),
            state: HealthState::Down,
            reason: "connection refused".into(),
            at_ms: T0,
        }),
        Record::Event(switch.clone()),
        Record::Event(Event::UpstreamHealth {
            upstream: "viabtc-ltc".into(),
            coin: t("LTC"),
            state: HealthState::Up,
            reason: String::new(),
            at_ms: T0 + 9,
        }),
    ];
    let sum = applied(
        s.apply_batch(&batch("p1", 1, records.clone()))
            .await
            .unwrap(),
    );
    assert_eq!(sum.events, 3);
    // Exactly once for events too.
    s.apply_batch(&batch("p1", 1, records)).await.unwrap();
    let health = s.upstream_health(10).await.unwrap();
    assert_eq!(health.len(), 2);
    assert_eq!(health[0].state, HealthState::Up);
    assert_eq!(health[1].state, HealthState::Down);
    assert_eq!(health[1].reason, "connection refused");
    assert_eq!(health[1].proxy_id, proxy("p1"));
    let timings = s.switch_timings(10).await.unwrap();
    assert_eq!(timings.len(), 1);
    assert_eq!(timings[0].event, switch);
}

async fn decisions_assignments_and_admin_state(db: &TestDb) {
    let s = &db.store;
    // Decisions.
    let d1 = Decision {
        group: "default".into(),
        algorithm: Algorithm::Scrypt,
        epoch: 1,
        coin: Some(t("LTC")),
        reason: "initial".into(),
        inputs: serde_json::json!({"LTC": {"score": "1.05", "difficulty": 12345.5}, "DOGE": null}),
        at_ms: T0,
    };
    let d2 = Decision {
        coin: None,
        epoch: 2,
        reason: "nothing profitable".into(),
        inputs: serde_json::json!([]),
        at_ms: T0 + 1,
        ..d1.clone()
    };
    let id1 = s.record_decision(&d1).await.unwrap();
    let id2 = s.record_decision(&d2).await.unwrap();
    assert!(id2 > id1);
    let recent = s.recent_decisions(10).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].decision, d2);
    assert_eq!(recent[1].decision, d1);
    assert_eq!(recent[1].id, id1);
    assert_eq!(s.recent_decisions(1).await.unwrap().len(), 1);

    // Assignments: higher epochs win, the same one is unchanged, older ones are stale.
    assert_eq!(
        s.current_assignment("default", Algorithm::Scrypt)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.save_assignment(&assignment(1, "LTC")).await.unwrap(),
        SaveAssignment::Saved
    );
    assert_eq!(
        s.save_assignment(&assignment(1, "LTC")).await.unwrap(),
        SaveAssignment::Unchanged
    );
    assert_eq!(
        s.save_assignment(&assignment(3, "DOGE")).await.unwrap(),
        SaveAssignment::Saved
    );
    assert_eq!(
        s.save_assignment(&assignment(2, "LTC")).await.unwrap(),
        SaveAssignment::Stale { current_epoch: 3 }
    );
    assert_eq!(
        s.save_assignment(&assignment(3, "LTC")).await.unwrap(),
        SaveAssignment::Stale { current_epoch: 3 }
    );
    let current = s
        .current_assignment("default", Algorithm::Scrypt)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current, assignment(3, "DOGE"));
    assert_eq!(current.upstreams[0].password.expose(), "x");
    assert_eq!(
        s.current_assignment("default", Algorithm::Sha256d)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.assignments().await.unwrap(), vec![assignment(3, "DOGE")]);

    // Whitelist.
    s.set_coin("admin", &t("LTC"), true).await.unwrap();
    s.set_coin("admin", &t("DOGE"), true).await.unwrap();
    s.set_coin("ops", &t("LTC"), false).await.unwrap();
    let coins = s.coins().await.unwrap();
    assert_eq!(
        coins
            .iter()
            .map(|c| (c.ticker.as_str(), c.enabled))
            .collect::<Vec<_>>(),
        [("DOGE", true), ("LTC", false)]
    );
    assert!(s.remove_coin("admin", &t("DOGE")).await.unwrap());
    assert!(!s.remove_coin("admin", &t("DOGE")).await.unwrap());
    assert_eq!(s.coins().await.unwrap().len(), 1);

    // Settings.
    assert_eq!(s.setting("hysteresis_percent").await.unwrap(), None);
    s.set_setting("admin", "hysteresis_percent", &serde_json::json!(5.5))
        .await
        .unwrap();
    s.set_setting("admin", "sustain_minutes", &serde_json::json!(10))
        .await
        .unwrap();
    s.set_setting("admin", "pin", &serde_json::json!({"scrypt": "LTC"}))
        .await
        .unwrap();
    s.set_setting("ops", "sustain_minutes", &serde_json::json!(15))
        .await
        .unwrap();
    assert_eq!(
        s.setting("sustain_minutes").await.unwrap(),
        Some(serde_json::json!(15))
    );
    let all = s.settings().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all["hysteresis_percent"], serde_json::json!(5.5));
    assert_eq!(all["pin"], serde_json::json!({"scrypt": "LTC"}));

    // Upstreams.
    let mut terms = UpstreamTerms {
        name: "viabtc-ltc".into(),
        coin: t("LTC"),
        protocol: "sv1".into(),
        fee_bps: 200,
        payout_scheme: "pplns".into(),
        switch_cost_secs: 3_600,
        details: serde_json::json!({"url": "stratum+tcp://ltc.example:3333"}),
        enabled: true,
    };
    s.upsert_upstream("admin", &terms).await.unwrap();
    terms.fee_bps = 150;
    terms.enabled = false;
    s.upsert_upstream("admin", &terms).await.unwrap();
    let solo = UpstreamTerms {
        name: "ltc-solo".into(),
        protocol: "adapter".into(),
        fee_bps: 0,
        payout_scheme: "solo".into(),
        switch_cost_secs: 0,
        details: serde_json::json!({}),
        ..terms.clone()
    };
    s.upsert_upstream("admin", &solo).await.unwrap();
    let ups = s.upstreams().await.unwrap();
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[0].terms, solo);
    assert_eq!(ups[1].terms, terms);
    assert!(matches!(
        s.upsert_upstream(
            "admin",
            &UpstreamTerms {
                fee_bps: 10_001,
                ..terms.clone()
            }
        )
        .await,
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(s.remove_upstream("admin", "ltc-solo").await.unwrap());
    assert_eq!(s.upstreams().await.unwrap().len(), 1);

    // Every admin change above is in the audit log, newest first, with who and what.
    let id = s
        .audit(
            "admin",
            "post-payout",
            &serde_json::json!({"coin": "LTC", "amount": 5}),
        )
        .await
        .unwrap();
    let log = s.audit_log(100).await.unwrap();
    assert_eq!(log[0].id, id);
    assert_eq!(log[0].action, "post-payout");
    let actions: Vec<&str> = log.iter().rev().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "set-coin",
            "set-coin",
            "set-coin",
            "remove-coin",
            "remove-coin",
            "set-setting",
            "set-setting",
            "set-setting",
            "set-setting",
            "upsert-upstream",
            "upsert-upstream",
            "upsert-upstream",
            "remove-upstream",
            "post-payout",
        ]
    );
    let disable = &log[log.len() - 3];
    assert_eq!(disable.actor, "ops");
    assert_eq!(
        disable.details,
        serde_json::json!({"coin": "LTC", "enabled": false})
    );
    assert!(log.iter().all(|a| a.at_ms > 0));
    assert_eq!(s.audit_log(2).await.unwrap().len(), 2);
}

/// Every operation's future can move to another thread (the server spawns them).
async fn futures_are_send(db: &TestDb) {
    fn send<F: Future + Send>(f: F) -> F {
        f
    }
    let s = db.store.clone();
    let b = batch("p", 1, vec![]);
    let c = t("LTC");
    let a = assignment(1, "LTC");
    let d = Decision {
        group: "g".into(),
        algorithm: Algorithm::Scrypt,
        epoch: 1,
        coin: None,
        reason: String::new(),
        inputs: serde_json::Value::Null,
        at_ms: 0,
    };
    let u = UpstreamTerms {
        name: "n".into(),
        coin: c.clone(),
        protocol: "sv1".into(),
        fee_bps: 0,
        payout_scheme: "pplns".into(),
        switch_cost_secs: 0,
        details: serde_json::Value::Null,
        enabled: true,
    };
    let v = serde_json::Value::Null;
    tokio::spawn(async move {
        send(s.migrate()).await.unwrap();
        send(s.apply_batch(&b)).await.unwrap();
        send(s.last_sequence(&b.proxy_id)).await.unwrap();
        send(s.work_by_coin(0, 1)).await.unwrap();
        send(s.work_by_user(&c, None, 0, 1)).await.unwrap();
        send(s.work_window_before(&c, None, 0, 1)).await.unwrap();
        send(s.total_work()).await.unwrap();
        send(s.users()).await.unwrap();
        send(s.user("x")).await.unwrap();
        send(s.workers("x")).await.unwrap();
        send(s.worker_work("x", 0, 1)).await.unwrap();
        send(s.hashrate_series("x", None, Bucket::Hour, 0, 1))
            .await
            .unwrap();
        send(s.pool_series(None, Bucket::Hour, 0, 1)).await.unwrap();
        send(s.blocks(None, 1)).await.unwrap();
        send(s.block("x")).await.unwrap();
        send(s.block_history("x")).await.unwrap();
        send(s.upstream_health(1)).await.unwrap();
        send(s.switch_timings(1)).await.unwrap();
        send(s.post_entries("x", &[entry("a", "LTC", 0)], ""))
            .await
            .unwrap();
        send(s.ledger_txn("x")).await.unwrap();
        send(s.balance("a", &c)).await.unwrap();
        send(s.balances("a")).await.unwrap();
        send(s.account_entries("a", 1)).await.unwrap();
        send(s.ledger_sum(&c)).await.unwrap();
        send(s.ledger_check()).await.unwrap();
        send(s.record_decision(&d)).await.unwrap();
        send(s.recent_decisions(1)).await.unwrap();
        send(s.save_assignment(&a)).await.unwrap();
        send(s.current_assignment("g", Algorithm::Scrypt))
            .await
            .unwrap();
        send(s.assignments()).await.unwrap();
        send(s.coins()).await.unwrap();
        send(s.set_coin("a", &c, true)).await.unwrap();
        send(s.remove_coin("a", &c)).await.unwrap();
        send(s.setting("k")).await.unwrap();
        send(s.settings()).await.unwrap();
        send(s.set_setting("a", "k", &v)).await.unwrap();
        send(s.audit("a", "b", &v)).await.unwrap();
        send(s.audit_log(1)).await.unwrap();
        send(s.upstreams()).await.unwrap();
        send(s.upsert_upstream("a", &u)).await.unwrap();
        send(s.remove_upstream("a", "n")).await.unwrap();
        send(Store::connect("sqlite::memory:")).await.unwrap();
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Upgrades
// ---------------------------------------------------------------------------------------------

/// A database written by schema 1 (worker counters on `workers`), on SQLite and on
/// PostgreSQL, keeps every worker figure and each user's last sighting through migration 2,
/// which moves them onto the work rows, and through migration 3, which keys work rows by time
/// and folds old minutes (the first fold after it rebuilds the user rollup without counting
/// anything twice).
#[tokio::test]
async fn worker_figures_survive_the_move_to_work_rows() {
    use sha2::Digest;
    let path = std::env::temp_dir().join(format!(
        "defpool-store-upgrade-{}-{}.db",
        std::process::id(),
        next_n()
    ));
    remove_sqlite(&path);
    let url = format!("sqlite:{}?mode=rwc", path.display());
    let schema1 = include_str!("../migrations/sqlite/0001_initial.sql");
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::Executor::execute(&mut c, schema1).await.unwrap();
    sqlx::Executor::execute(
        &mut c,
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
         checksum TEXT NOT NULL, applied_at_ms INTEGER NOT NULL);
         INSERT INTO users VALUES ('alice', 'bc1qalice', 1000);
         INSERT INTO workers VALUES ('alice', 'rig1', 1000, 125000, 110000, 5, 1, 2);
         INSERT INTO work VALUES ('alice', 'rig1', 'LTC', 1, 'up', 60000, 7, 0, 0, 0, 3, 1, 2, 1);
         INSERT INTO work VALUES ('alice', 'rig1', 'LTC', 1, 'up', 120000, 9, 0, 0, 0, 2, 0, 0, 0);
         INSERT INTO user_minute VALUES ('alice', 'LTC', 60000, 7, 0, 0, 0, 4, 2, 1);
         INSERT INTO user_minute VALUES ('alice', 'LTC', 120000, 9, 0, 0, 0, 2, 0, 0);
         INSERT INTO coin_minute VALUES ('LTC', 60000, 7, 0, 0, 0, 4, 2, 1);
         INSERT INTO coin_minute VALUES ('LTC', 120000, 9, 0, 0, 0, 2, 0, 0);",
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO schema_migrations VALUES (1, 'initial', $1, 0)")
        .bind(hex::encode(sha2::Sha256::digest(schema1.as_bytes())))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    let s = Store::connect(&url).await.unwrap();
    upgraded_figures(&s).await;
    s.close().await;
    remove_sqlite(&path);

    // The same on PostgreSQL, in a schema of its own (dropped when `db` is, also on a failed
    // assertion).
    let Some(db) = TestDb::postgres_unmigrated().await else {
        return;
    };
    let schema1 = include_str!("../migrations/postgres/0001_initial.sql");
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::Executor::execute(&mut c, schema1).await.unwrap();
    sqlx::Executor::execute(
        &mut c,
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
         checksum TEXT NOT NULL, applied_at_ms BIGINT NOT NULL);
         INSERT INTO users VALUES ('alice', 'bc1qalice', 1000);
         INSERT INTO workers VALUES ('alice', 'rig1', 1000, 125000, 110000, 5, 1, 2);
         INSERT INTO work VALUES ('alice', 'rig1', 'LTC', 1, 'up', 60000, 7, 3, 1, 2, 1);
         INSERT INTO work VALUES ('alice', 'rig1', 'LTC', 1, 'up', 120000, 9, 2, 0, 0, 0);
         INSERT INTO user_minute VALUES ('alice', 'LTC', 60000, 7, 4, 2, 1);
         INSERT INTO user_minute VALUES ('alice', 'LTC', 120000, 9, 2, 0, 0);
         INSERT INTO coin_minute VALUES ('LTC', 60000, 7, 4, 2, 1);
         INSERT INTO coin_minute VALUES ('LTC', 120000, 9, 2, 0, 0);",
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO schema_migrations VALUES (1, 'initial', $1, 0)")
        .bind(hex::encode(sha2::Sha256::digest(schema1.as_bytes())))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    upgraded_figures(&db.store).await;
    db.store.close().await;
}

/// A schema-1 database with alice's figures, after migrating and after a fold.
async fn upgraded_figures(s: &Store) {
    assert_eq!(s.migrate().await.unwrap().applied, vec![2, 3, 4]);
    let w = &s.workers("alice").await.unwrap()[0];
    assert_eq!(
        (w.first_seen_ms, w.last_seen_ms, w.last_share_ms),
        (1000, 125_000, Some(110_000))
    );
    assert_eq!(
        (w.accepted_shares, w.late_shares, w.rejected_shares),
        (5, 1, 2)
    );
    assert_eq!(
        s.user("alice").await.unwrap().unwrap().last_seen_ms,
        125_000
    );
    assert_eq!(s.total_work().await.unwrap(), 16);
    let series = |s: Store| async move {
        s.hashrate_series("alice", None, Bucket::Hour, 0, u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|p| (p.work, p.shares, p.rejected_shares))
            .fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2))
    };
    assert_eq!(series(s.clone()).await, (16, 6, 2));

    // Migration 3: a batch three hours on folds the old minutes; nothing counts twice.
    let mut later = work("alice", "rig1", "LTC", 0, 5);
    later.from_ms = 3 * 3_600_000;
    later.to_ms = later.from_ms + 1_000;
    applied(
        s.apply_batch(&batch("p1", 1, vec![Record::Work(later)]))
            .await
            .unwrap(),
    );
    let w = &s.workers("alice").await.unwrap()[0];
    assert_eq!(
        (w.accepted_shares, w.late_shares, w.rejected_shares),
        (6, 1, 2)
    );
    assert_eq!(w.last_seen_ms, 3 * 3_600_000 + 1_000);
    assert_eq!(series(s.clone()).await, (21, 7, 2));
    assert_eq!(s.total_work().await.unwrap(), 21);
}

// ---------------------------------------------------------------------------------------------
// Not conformance: the ingest figure
// ---------------------------------------------------------------------------------------------

/// `N` batches of 1,000 work records (10,000 users with 2 workers each, cycling) per backend,
/// from one proxy and from four at once; prints work records per second and each batch's
/// p50/p99/max time. Two bounds: every batch in a new minute (work rows are inserted; four
/// proxies take turns along one timeline, so the hourly fold comes every 60 batches either
/// way), and every batch in the same minute (each batch updates the rows the previous ones
/// wrote, as a proxy sealing every second does within a minute; no fold). A fold's time counts
/// in the batch after which it runs. `DEFPOOL_INGEST_BATCHES` sets N (default 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn ingest_rows_per_second() {
    let n: u64 = std::env::var("DEFPOOL_INGEST_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for same_minute in [false, true] {
        for proxies in [1, 4] {
            let sqlite = TestDb::sqlite().await;
            ingest(&sqlite, n, proxies, same_minute).await;
            drop(sqlite);
            if let Some(pg) = TestDb::postgres().await {
                ingest(&pg, n, proxies, same_minute).await;
            }
        }
    }
}

/// The writer's pause for an hourly fold at a larger pool: 20,000 workers (10,000 users) with
/// a record every minute for an hour (1.2 million records, loaded by four proxies), then one
/// batch two hours on, whose fold folds that hour. Prints the fold batch's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn fold_pause() {
    let sqlite = TestDb::sqlite().await;
    fold_pause_on(&sqlite).await;
    drop(sqlite);
    if let Some(pg) = TestDb::postgres().await {
        fold_pause_on(&pg).await;
    }
}

async fn fold_pause_on(db: &TestDb) {
    let s = &db.store;
    let record = |k: u64, minute: u64| {
        let mut w = work(
            &format!("ltc1quser{:05}", k / 2),
            &format!("rig{}", k % 2),
            "LTC",
            minute,
            1u128 << 40,
        );
        w.accepted_shares = 30;
        Record::Work(w)
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..4u64)
        .map(|p| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut seq = 0;
                for minute in 0..60u64 {
                    for part in (p * 5)..(p * 5 + 5) {
                        seq += 1;
                        let records = (part * 1_000..part * 1_000 + 1_000)
                            .map(|k| record(k, minute))
                            .collect();
                        applied(
                            s.apply_batch(&batch(&format!("p{p}"), seq, records))
                                .await
                                .unwrap(),
                        );
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let loaded = started.elapsed();
    let t = Instant::now();
    // Two hours on: the hour loaded is folded after this batch.
    applied(
        s.apply_batch(&batch("p9", 1, vec![record(0, 120)]))
            .await
            .unwrap(),
    );
    let fold = t.elapsed();
    let w = s.workers("ltc1quser00000").await.unwrap();
    assert_eq!(w[0].accepted_shares, 61 * 30);
    println!(
        "{:?}: 1,200,000 records (20,000 workers × 60 minutes) loaded in {:.1} s; \
         the batch that folds that hour took {:.2} s",
        s.backend(),
        loaded.as_secs_f64(),
        fold.as_secs_f64()
    );
}

fn ingest_batch(proxy_id: &str, seq: u64, offset: u64, minute: u64) -> Batch {
    let records = (0..1_000u64)
        .map(|i| {
            let k = (offset + i) % 20_000;
            let mut w = work(
                &format!("ltc1quser{:05}", k / 2),
                &format!("rig{}", k % 2),
                "LTC",
                minute,
                (1u128 << 66) + u128::from(k),
            );
            w.accepted_shares = 30;
            if k.is_multiple_of(7) {
                w.rejected.insert("stale-share".into(), 1);
            }
            Record::Work(w)
        })
        .collect();
    batch(proxy_id, seq, records)
}

async fn ingest(db: &TestDb, batches: u64, proxies: u64, same_minute: bool) {
    let s = &db.store;
    let per_proxy = batches / proxies;
    // In the same-minute case every batch covers the same 1,000 workers, so it updates rows.
    let offset = |p: u64, seq: u64| {
        if same_minute {
            p * 1_000
        } else {
            (p * per_proxy + seq) * 1_000
        }
    };
    // New minutes: the proxies take turns along one timeline (a batch per minute, as with one
    // proxy), so the hourly folds come as often.
    let minute = |p: u64, seq: u64| {
        if same_minute {
            0
        } else {
            (seq - 1) * proxies + p + 1
        }
    };
    let prepared: Vec<Vec<Batch>> = (0..proxies)
        .map(|p| {
            (1..=per_proxy)
                .map(|seq| ingest_batch(&format!("bench-{p}"), seq, offset(p, seq), minute(p, seq)))
                .collect()
        })
        .collect();
    let expected: u128 = prepared.iter().flatten().map(|b| b.accepted_work()).sum();
    let started = Instant::now();
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|list| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut took = Vec::with_capacity(list.len());
                for b in &list {
                    let t = Instant::now();
                    applied(s.apply_batch(b).await.unwrap());
                    took.push(t.elapsed());
                }
                took
            })
        })
        .collect();
    // Each batch's time, folds included (a fold runs after the batch that makes it due).
    let mut took = Vec::new();
    for task in tasks {
        took.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    took.sort();
    let ms = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let rows = per_proxy * proxies * 1_000;
    println!(
        "{:?}, {}: {rows} work records in {} batches of 1,000 from {proxies} prox{}: {:.2} s, \
         {:.0} records/s; per batch p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.backend(),
        if same_minute {
            "same minute (updates)"
        } else {
            "new minute per batch (inserts)"
        },
        per_proxy * proxies,
        if proxies == 1 { "y" } else { "ies" },
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    assert_eq!(s.total_work().await.unwrap(), expected);
}
